"""The C conformance suite (tests/conformance.c) on every selected backend.

It is the same program meson runs for lmdb: and memory:, here pointed at
each backend the suite selected, remote servers included, unchanged.
"""
import os
import re
import subprocess

import pytest

import util

pytestmark = [pytest.mark.each_backend("the backend itself"), pytest.mark.smoke]

CONFORMANCE = os.path.join(os.path.dirname(util.KVFS_BIN), "kvfs-conformance")


REFUSED = "refused-by-the-server"


def test_conformance_suite_passes(store):
    if not os.access(CONFORMANCE, os.X_OK):
        pytest.fail("no %s: build it first" % CONFORMANCE)
    args = [CONFORMANCE, store.url]
    for o in store.backend.options:
        args += ["-o", o]
    # Where the server can be made to refuse a key (a SQL constraint), the
    # failed applies fail inside the backend, so its rollback is what runs.
    refuse = getattr(store.raw, "refuse", None)
    if refuse:
        refuse(REFUSED.encode())
        args += ["--refused-key", REFUSED]
    try:
        r = subprocess.run(args, capture_output=True, timeout=900, stdin=subprocess.DEVNULL)
    finally:
        if refuse:
            refuse(None)
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, "%s\n%s" % (out[-6000:], err[-2000:])
    last = out.strip().splitlines()[-1]
    assert " 0 failed" in last, last
    assert not last.startswith("0 passed"), last
    if refuse:
        for name in ("t_apply_is_atomic_on_failure", "t_apply_stops_at_first_error"):
            assert re.search(r"^%s ok$" % name, out, re.M), out[-3000:]
