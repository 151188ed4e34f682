"""The mount contract, the same for every network backend
(docs/backends.md, "The mount contract"): a store that cannot be reached,
or that accepts connections and never answers, fails the mount with one
line and exit status 1 within the timeout; `-o lazy` mounts anyway and
`.health` reports the store down.  No server is started: the URLs name a
closed port or a listener that never answers.  Credentials and TLS files
are each backend's own tests (test_backend_*.py)."""
import errno
import os
import subprocess
import time

import pytest

import servers
import util
from util import KVFS_BIN, Blackhole, is_mounted

NETWORK = [s for s, b in util.BACKENDS.items() if b.blackhole_url]


@pytest.fixture(params=NETWORK)
def scheme(request):
    if request.param not in util.compiled_backends():
        pytest.skip("%s not compiled in" % request.param)
    return request.param


def closed_port():
    """A loopback port nothing listens on (connection refused)."""
    return servers.free_port()


def try_mount(url, workdir, *opts):
    mnt = os.path.join(workdir, "mnt")
    os.makedirs(mnt, exist_ok=True)
    cmd = [KVFS_BIN, "-f"] + (["-o", ",".join(opts)] if opts else []) + [url, mnt]
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", mnt], timeout=60)
            pytest.fail("kvfs mounted %s" % url)
    return r, time.monotonic() - t0


def assert_one_line_failure(r, *words):
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvfs: "), err
    for w in words:
        assert w in lines[0], err


def test_unreachable_store_fails_the_mount(scheme, workdir):
    url = util.BACKENDS[scheme].blackhole_url(closed_port())
    r, took = try_mount(url, workdir, "timeout=2s")
    assert_one_line_failure(r, "cannot reach", "-o lazy")
    assert took < 20, "the refused mount took %.1f s" % took


def test_store_that_never_answers_fails_the_mount_in_bounded_time(scheme, workdir):
    hole = Blackhole()
    try:
        r, took = try_mount(util.BACKENDS[scheme].blackhole_url(hole.port), workdir,
                            "timeout=1s")
    finally:
        hole.close()
    assert_one_line_failure(r, "cannot reach")
    assert took < 20, "the refused mount took %.1f s" % took


def test_lazy_mounts_an_unreachable_store_and_health_says_down(scheme):
    url = util.BACKENDS[scheme].blackhole_url(closed_port())
    m = util.Mount(url, opts=["lazy", "timeout=1s", "health_timeout=3s"]).start()
    m.allow_log(r"kvfs: (ERROR|WARN):")
    h = m.health()
    assert h["status"] == "down", h
    assert util.errno_of(os.stat, m.p("f")) == errno.EIO
    m.unmount()
