"""One long-lived session of a store's command-line client (psql, mariadb)
for the Raw accessors of tests/servers/postgresql.py and mysql.py.

Why not one client process per call: starting a process while a test holds
a file on the mount open closes that descriptor in the child (close-on-exec),
and FUSE turns every close into a flush, which commits the file: a test
that checks a write is not committed before close (F3) would see it
committed by its own check.  So the client is started once, when the Raw is
made (before any file is open), and gets its statements on a pipe.

Each call sends its SQL and then a marker query; the output up to the
marker's line is the answer.  A client that died (a server restart, an SQL
error: both clients stop on the first error) is started again on the next
call, and the failing call raises with its error output.
"""
import os
import select
import subprocess
import threading
import time

MARK = "kvfs-cli-session-end"


class CliSession:
    def __init__(self, argv, mark_sql, env=None, timeout=60):
        self.argv = argv
        self.mark_sql = mark_sql      # a statement that prints MARK on a line of its own
        self.env = env
        self.timeout = timeout
        self.lock = threading.Lock()
        self.proc = None
        self._start()

    def _start(self):
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=self.env)

    def _stop(self):
        p, self.proc = self.proc, None
        if p is None:
            return ""
        err = b""
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            _, err = p.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            p.kill()
            p.wait()
        return (err or b"").decode(errors="replace")

    def query(self, sql):
        """The client's output lines for sql (up to the marker)."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._stop()
                self._start()
            try:
                self.proc.stdin.write((sql + "\n" + self.mark_sql + "\n").encode())
                self.proc.stdin.flush()
                return self._read_to_mark()
            except (OSError, RuntimeError) as e:
                err = self._stop()
                raise RuntimeError("%s: %s %s" % (os.path.basename(self.argv[0]), e, err.strip()))

    def _read_to_mark(self):
        out = self.proc.stdout
        lines, buf = [], b""
        deadline = time.monotonic() + self.timeout
        fd = out.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("no answer within %ds" % self.timeout)
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the client exited")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text == MARK:
                    return lines
                lines.append(text)

    def close(self):
        with self.lock:
            self._stop()

    def __del__(self):
        try:
            self._stop()
        except Exception:
            pass
