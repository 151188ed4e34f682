"""The redis backend's server for the suite and its raw access.

start() runs Debian's real redis-server on a free loopback port (and a unix
socket in workdir), with the settings docs/backends.md asks for: every
write in the append-only file, no RDB snapshots, no eviction.

Raw is the store's own protocol (RESP) spoken over a socket by a few lines
of Python: binary-safe, so keys holding NUL or any other byte go in and out
exactly as kvfs stores them, one Redis string key per key.  redis_cli()
runs the real redis-cli for the tests that want another client's writes.

With KVFS_TEST_REDIS_URL=redis://host:port/db the same suites run on
another server; a password then comes from REDISCLI_AUTH, as for kvfs.
"""
import os
import socket
import subprocess
from urllib.parse import urlsplit, parse_qs

import servers

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


def server_argv(port, workdir, conf=None):
    argv = [REDIS_SERVER]
    if conf:
        argv.append(conf)      # first, as redis-server wants; the flags below win
    return argv + ["--port", str(port), "--bind", "127.0.0.1",
                   "--dir", workdir, "--appendonly", "yes", "--save", "",
                   "--maxmemory-policy", "noeviction", "--daemonize", "no",
                   "--unixsocket", os.path.join(workdir, "redis.sock"),
                   "--unixsocketperm", "700", "--logfile", ""]


def start(workdir, config=""):
    """A redis-server of its own.  config: more redis.conf lines (a
    requirepass, ACL users, other settings), written to a file in workdir
    so that no secret shows in ps."""
    port = servers.free_port()
    conf = None
    if config:
        conf = os.path.join(workdir, "redis.conf")
        with open(conf, "w") as f:
            f.write(config)
        os.chmod(conf, 0o600)
    srv = servers.Server(server_argv(port, workdir, conf), port,
                         "redis://127.0.0.1:%d" % port,
                         os.path.join(workdir, "redis-server.log"))
    srv.keeps_data = True      # appendonly: every write is in the AOF before the reply
    srv.socket_path = os.path.join(workdir, "redis.sock")
    return srv


def glob_escape(b):
    """Bytes b as a literal in a Redis MATCH pattern."""
    return b"".join(b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in b)


class RespError(Exception):
    pass


class Resp:
    """A minimal blocking RESP2 client: one socket, binary-safe."""

    def __init__(self, url, password=None, timeout=30):
        u = urlsplit(url)
        if u.scheme == "redis+unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(u.path)
            db = int(parse_qs(u.query).get("db", ["0"])[0])
        else:
            self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379),
                                                 timeout=timeout)
            db = int(u.path.strip("/") or 0)
        self.buf = b""
        password = password if password is not None else os.environ.get("REDISCLI_AUTH")
        if password:
            if u.username:
                self.call(b"AUTH", u.username, password)
            else:
                self.call(b"AUTH", password)
        if db:
            self.call(b"SELECT", str(db))

    def close(self):
        self.sock.close()

    @staticmethod
    def _b(x):
        return x if isinstance(x, bytes) else str(x).encode()

    def send(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = self._b(a)
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(max(65536, n + 2 - len(self.buf)))
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest
        if t == b"-":
            raise RespError(rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RespError("bad reply %r" % line)

    def call(self, *args):
        self.send(*args)
        return self.reply()

    def pipeline(self, cmds):
        if not cmds:
            return []
        self.sock.sendall(b"".join(
            b"*%d\r\n" % len(c) + b"".join(b"$%d\r\n%s\r\n" % (len(self._b(a)), self._b(a))
                                           for a in c) for c in cmds))
        out = []
        for _ in cmds:
            try:
                out.append(self.reply())
            except RespError as e:
                out.append(e)
        return out

    def scan(self, prefix=b""):
        """Every key starting with prefix (SCAN MATCH, unordered, deduplicated)."""
        keys, cursor = set(), b"0"
        while True:
            cursor, batch = self.call(b"SCAN", cursor, b"MATCH", glob_escape(prefix) + b"*",
                                      b"COUNT", b"1000")
            keys.update(k for k in batch if k.startswith(prefix))
            if cursor == b"0":
                return keys


class Raw:
    """The store through RESP, exactly as kvfs stores it: one string key per key."""

    def __init__(self, url):
        self.url = url

    def _conn(self):
        return Resp(self.url)

    def put_many(self, items):
        c = self._conn()
        try:
            for r in c.pipeline([[b"SET", k, v] for k, v in items.items()]):
                if isinstance(r, Exception):
                    raise r
        finally:
            c.close()

    def get(self, key):
        c = self._conn()
        try:
            return c.call(b"GET", key)
        finally:
            c.close()

    def delete(self, key):
        c = self._conn()
        try:
            return c.call(b"DEL", key) == 1
        finally:
            c.close()

    def items(self, prefix=b""):
        c = self._conn()
        try:
            keys = sorted(c.scan(prefix))
            vals = c.pipeline([[b"GET", k] for k in keys])
            return {k: v for k, v in zip(keys, vals) if isinstance(v, bytes)}
        finally:
            c.close()

    SNAPSHOT = (b"local out = {} "
                b"for _, k in ipairs(redis.call('KEYS', ARGV[1])) do "
                b"  local v = redis.call('GET', k) "
                b"  if v then out[#out + 1] = k; out[#out + 1] = v end "
                b"end return out")

    def snapshots(self):
        """A function giving {key: value} of one consistent read (KEYS and
        GET inside one Lua script, which runs atomically), and a close
        function."""
        c = self._conn()

        def snap(prefix=b""):
            flat = c.call(b"EVAL", self.SNAPSHOT, b"0", glob_escape(prefix) + b"*")
            return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
        return snap, c.close


def redis_cli(url, *args, stdin=None, env=None):
    """Run the real redis-cli on url's server; its CompletedProcess.  A
    password comes from REDISCLI_AUTH in env, never from argv."""
    u = urlsplit(url)
    argv = [REDIS_CLI]
    if u.scheme == "redis+unix":
        argv += ["-s", u.path, "-n", parse_qs(u.query).get("db", ["0"])[0]]
    else:
        argv += ["-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379),
                 "-n", u.path.strip("/") or "0"]
    if u.username:
        argv += ["--user", u.username]
    return subprocess.run(argv + list(args), input=stdin, capture_output=True, timeout=60,
                          env=env)
