"""The C conformance suite (tests/conformance.c) on every selected backend.

It is the same program meson runs for lmdb: and memory:, here pointed at
each backend the suite selected, remote servers included, unchanged.
"""
import os
import subprocess

import pytest

import util

pytestmark = [pytest.mark.each_backend("the backend itself"), pytest.mark.smoke]

CONFORMANCE = os.path.join(os.path.dirname(util.KVFS_BIN), "kvfs-conformance")


def test_conformance_suite_passes(store):
    if not os.access(CONFORMANCE, os.X_OK):
        pytest.fail("no %s: build it first" % CONFORMANCE)
    args = [CONFORMANCE, store.url]
    for o in store.backend.options:
        args += ["-o", o]
    r = subprocess.run(args, capture_output=True, timeout=900, stdin=subprocess.DEVNULL)
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, "%s\n%s" % (out[-6000:], err[-2000:])
    last = out.strip().splitlines()[-1]
    assert " 0 failed" in last, last
    assert not last.startswith("0 passed"), last
