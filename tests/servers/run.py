"""Run one of the suite's servers for something else (scripts/bench):

    /usr/bin/python3 tests/servers/run.py SCHEME DIR

starts servers/<SCHEME>.py's server with its data under DIR, prints its URL
on one line, and stops it when standard input closes or on SIGTERM.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import servers  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: run.py SCHEME DIR")
    scheme, workdir = sys.argv[1], sys.argv[2]
    mod = servers.module(scheme)
    if mod is None:
        sys.exit("run.py: no server for %s" % scheme)
    srv = mod.start(workdir)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    try:
        print(srv.url, flush=True)
        sys.stdin.read()
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
