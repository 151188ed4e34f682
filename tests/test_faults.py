"""A dead or hung store gives a clear error in bounded time and never hangs
the mount; the mount recovers by itself when the store comes back.

Each test runs a server of its own (tests/servers/<scheme>.py) so that it
can stop it; with a server given from outside they skip.  The file
operations run in a child process with a generous limit, so a hang shows
as a failure instead of hanging the suite.
"""
import errno
import json
import os
import subprocess
import sys

import pytest

import servers
import util

pytestmark = pytest.mark.each_backend(
    "how the backend fails and reconnects when its server dies or hangs",
    where=lambda b: b.shared)

PROBE = r"""
import errno, json, os, sys
out = []
for op, path, data in json.loads(sys.argv[1]):
    try:
        if op == "write":
            with open(path, "wb") as f:
                f.write(data.encode())
            out.append(0)
        elif op == "read":
            with open(path, "rb") as f:
                out.append(f.read().decode())
        elif op == "list":
            out.append(sorted(os.listdir(path)))
        elif op == "health":
            with open(path, "rb") as f:
                out.append(json.loads(f.read())["status"])
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
print(json.dumps(out))
"""


def run_ops(ops, limit=90):
    """Run file operations in a child; their results, or a failure if the
    child did not finish within limit seconds (a hung mount)."""
    ops = [[op, os.fsdecode(path), data] for op, path, data in ops]  # Mount.p() gives bytes
    try:
        r = subprocess.run(["/usr/bin/python3", "-c", PROBE, json.dumps(ops)],
                           capture_output=True, timeout=limit, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("file operations on the mount hung for %ds: %r" % (limit, ops))
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return json.loads(r.stdout)


@pytest.fixture
def own_server(backend, workdir):
    if not backend.backend.shared:
        pytest.skip("%s is not a network backend" % backend.scheme)
    if backend.scheme not in util.compiled_backends():
        pytest.skip("%s is not compiled in" % backend.scheme)
    if backend.url:
        pytest.skip("server given from outside (%s): not stopping it" % backend.url)
    mod = servers.module(backend.scheme)
    srv = mod.start(workdir)
    yield srv
    srv.stop()      # resumes a paused server first


def fault_mount(backend, srv):
    m = util.Mount(srv.url, opts=list(backend.backend.options) +
                   ["timeout=2s", "health_timeout=1s", "attr_timeout=0",
                    "entry_timeout=0", "negative_timeout=0"]).start()
    m.allow_log(r"kvfs: (ERROR|WARN):")
    return m


@pytest.mark.smoke
def test_fault_dead_server_gives_eio_then_recovers(backend, own_server):
    srv = own_server
    m = fault_mount(backend, srv)
    assert run_ops([["write", m.p("before"), "kept"]]) == [0]

    srv.stop()
    got = run_ops([["write", m.p("during"), "x"], ["read", m.p("before"), ""],
                   ["list", m.path, ""], ["health", m.p(".health"), ""]])
    assert got[0] == "EIO", got
    assert got[1] == "EIO", got
    assert got[2] == "EIO", got
    assert got[3] in ("down", "unresponsive"), got

    srv.start()
    got = run_ops([["write", m.p("after"), "back"], ["read", m.p("after"), ""],
                   ["health", m.p(".health"), ""]])
    assert got == [0, "back", "ok"], got
    if getattr(srv, "keeps_data", True):
        assert run_ops([["read", m.p("before"), ""]]) == ["kept"]


def test_fault_hung_server_does_not_hang_the_mount(backend, own_server):
    srv = own_server
    m = fault_mount(backend, srv)
    assert run_ops([["write", m.p("f"), "v1"]]) == [0]

    srv.pause()          # accepts connections, never answers
    try:
        got = run_ops([["read", m.p("f"), ""], ["write", m.p("g"), "x"],
                       ["health", m.p(".health"), ""]])
    finally:
        srv.resume()
    assert got[0] == "EIO" and got[1] == "EIO", got
    assert got[2] in ("down", "unresponsive"), got

    got = run_ops([["read", m.p("f"), ""], ["write", m.p("g"), "y"], ["read", m.p("g"), ""]])
    assert got == ["v1", 0, "y"], got
