"""Servers the suite runs for the remote backends, on loopback only.

Each remote backend has a module here, servers/<scheme>.py, defining:

    start(workdir) -> Server
        A new server of its own on a free 127.0.0.1 port, with its data
        (if any) under workdir, running when start returns.  The real
        server where Debian packages it (memcached); otherwise the
        protocol test server written for the suite (tests/servers/*_server.py).

    Raw(url)
        The store's own client (not kvfs) on url: put_many({key: value}),
        get(key) -> bytes or None, delete(key), items(prefix) -> {key: value},
        exactly like util.LmdbRaw.  Keys and values are bytes.

A test may stop, kill, pause (SIGSTOP) and resume a server it started
itself; a server given from outside (KVFS_TEST_<SCHEME>_URL) is never
touched that way: those tests skip.
"""
import importlib
import os
import signal
import socket
import subprocess
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=15):
    """Wait until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with %s before listening" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on 127.0.0.1:%d after %ds" % (port, timeout))


class Server:
    """A server process the suite started.  argv is re-run by restart()."""

    def __init__(self, argv, port, url, log_path, env=None):
        self.argv = argv
        self.port = port
        self.url = url
        self.log_path = log_path
        self.env = env
        self.proc = None
        self.start()

    def start(self, ready=True):
        """ready=False: return when the port opens (a test of what kvfs does
        meanwhile), then call wait_ready()."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=self.env)
        log.close()
        wait_port(self.port, self.proc)
        if ready:
            self.wait_ready()

    def query_argv(self):
        """A client command that prints 1 once the server serves requests
        (SELECT 1), for servers whose port opens before that; None: the
        open port is enough."""
        return None

    def wait_ready(self, timeout=60):
        argv = self.query_argv()
        deadline = time.monotonic() + timeout
        while argv:
            r = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
            if r.returncode == 0 and r.stdout.strip() == b"1":
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("%s on port %d never answered a query: %s"
                                   % (argv[0], self.port, r.stderr.decode(errors="replace")))
            time.sleep(0.05)

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self):
        """Stop it dead (data in memory is gone for memcached)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def restart(self):
        self.stop()
        self.start()


def module(scheme):
    """servers/<scheme>.py, or None for a backend without one."""
    try:
        return importlib.import_module("servers." + scheme)
    except ModuleNotFoundError as e:
        if e.name == "servers." + scheme:
            return None
        raise


def external_url(scheme):
    """A real server named by KVFS_TEST_<SCHEME>_URL, or None."""
    return os.environ.get("KVFS_TEST_%s_URL" % scheme.upper()) or None
