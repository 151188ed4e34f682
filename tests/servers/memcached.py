"""memcached for the suite: two real /usr/bin/memcached processes, so that
the shared URL spreads keys over two servers (libmemcached's ketama).

Raw(url) is another memcached client: it speaks the text protocol over a
plain socket to the server libmemcached's ketama picks for a key (asked of
libmemcached itself through ctypes, so both always agree), and lists with
"lru_crawler metadump hash" like the backend.  Keys kvfs cannot store as
they are go under the backend's documented names (docs/backends.md,
memcached): "%~" + escaped key, or "%#" + SHA-256 with a header in the value.
"""
import ctypes
import hashlib
import os
import socket
import struct
import urllib.parse

from servers import Server, free_port

MEMCACHED = "/usr/bin/memcached"
KEY_MAX = 250
# memcached evicts when full: the whole suite (migrate copies several 40 MB
# trees into the shared servers) must fit without evictions.  Memory is
# taken as items arrive, not at start.
MEMORY_MB = 512


def server_argv(port):
    argv = [MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(MEMORY_MB),
            "-I", "1m", "-t", "2"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]    # memcached refuses to run as root without it
    return argv


class Pair:
    """Two memcached processes behind one URL; every action applies to both."""
    keeps_data = False    # memory only: a restart forgets everything

    def __init__(self, workdir, n=2):
        self.servers = []
        for i in range(n):
            port = free_port()
            self.servers.append(Server(server_argv(port), port, None,
                                       os.path.join(workdir, "memcached-%d.log" % i)))
        self.url = "memcached://" + ",".join("127.0.0.1:%d" % s.port for s in self.servers)
        self.port = self.servers[0].port

    def start(self):
        for s in self.servers:
            s.start()

    def stop(self):
        for s in self.servers:
            s.stop()

    def kill(self):
        for s in self.servers:
            s.kill()

    def pause(self):
        for s in self.servers:
            s.pause()

    def resume(self):
        for s in self.servers:
            s.resume()

    def restart(self):
        self.stop()
        self.start()


def start(workdir):
    return Pair(workdir)


# ---- the backend's key names (backends/memcached.c) ----

def _is_plain(key):
    return (0 < len(key) <= KEY_MAX and not key.startswith((b"%~", b"%#"))
            and all(c > 0x20 and c != 0x7F for c in key))


def encode_key(key):
    """The memcached key kvfs stores key under, and whether it is hashed."""
    if _is_plain(key):
        return key, False
    esc = b"%~" + b"".join(b"%%%02X" % c if c <= 0x20 or c in (0x25, 0x7F) else bytes([c])
                           for c in key)
    if len(esc) <= KEY_MAX:
        return esc, False
    return b"%#" + hashlib.sha256(key).hexdigest().encode(), True


def _unescape(s):
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] == 0x25:
            h = s[i + 1:i + 3]
            if len(h) != 2 or any(c not in b"0123456789ABCDEFabcdef" for c in h):
                return None
            out.append(int(h, 16))
            i += 3
        else:
            out.append(s[i])
            i += 1
    return bytes(out)


HEADER = b"kvfs"


def wrap_value(key, value):
    return HEADER + struct.pack(">I", len(key)) + key + value


def unwrap_value(mkey, raw):
    """(key, value) of a hashed item, or None if it is not a kvfs one."""
    if raw is None or len(raw) < 8 or raw[:4] != HEADER:
        return None
    n = struct.unpack(">I", raw[4:8])[0]
    if n > len(raw) - 8:
        return None
    key = raw[8:8 + n]
    if encode_key(key) != (mkey, True):
        return None
    return key, raw[8 + n:]


# ---- ketama: ask libmemcached where a key lives ----

class _Ketama:
    BEHAVIOR_KETAMA = 3

    def __init__(self, servers):
        lib = ctypes.CDLL("libmemcached.so.11")
        lib.memcached_create.restype = ctypes.c_void_p
        lib.memcached_create.argtypes = [ctypes.c_void_p]
        lib.memcached_server_add.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint16]
        lib.memcached_behavior_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
        lib.memcached_generate_hash.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.memcached_generate_hash.restype = ctypes.c_uint32
        lib.memcached_free.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.memc = lib.memcached_create(None)
        for host, port in servers:
            lib.memcached_server_add(self.memc, host.encode(), port)
        lib.memcached_behavior_set(self.memc, self.BEHAVIOR_KETAMA, 1)

    def index(self, mkey):
        return self.lib.memcached_generate_hash(self.memc, mkey, len(mkey))

    def __del__(self):
        if getattr(self, "memc", None):
            self.lib.memcached_free(self.memc)


def parse_url(url):
    assert url.startswith("memcached://"), url
    out = []
    for part in url[len("memcached://"):].rstrip("/").split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "11211")
        out.append((host.strip("[]"), int(port)))
    return out


class Conn:
    """One text-protocol connection."""

    def __init__(self, host, port, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def _fill(self):
        d = self.sock.recv(1 << 20)
        if not d:
            raise ConnectionError("memcached closed the connection")
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def set(self, mkey, value):
        self.sock.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (mkey, len(value), value))
        r = self.line()
        if r != b"STORED":
            raise RuntimeError("set %r: %r" % (mkey, r))

    def get(self, mkey):
        self.sock.sendall(b"get %s\r\n" % mkey)
        value = None
        while True:
            ln = self.line()
            if ln == b"END":
                return value
            parts = ln.split()
            if parts[0] != b"VALUE":
                raise RuntimeError("get %r: %r" % (mkey, ln))
            value = self.exact(int(parts[3]) + 2)[:-2]

    def delete(self, mkey):
        self.sock.sendall(b"delete %s\r\n" % mkey)
        r = self.line()
        if r not in (b"DELETED", b"NOT_FOUND"):
            raise RuntimeError("delete %r: %r" % (mkey, r))
        return r == b"DELETED"

    def metadump(self):
        """Every memcached key on this server."""
        while True:
            self.sock.sendall(b"lru_crawler metadump hash\r\n")
            first = self.line()
            if not first.startswith(b"BUSY"):
                break
        keys, ln = [], first
        while True:
            # lines end in "\n" only; the last is "END\r\n"
            for item in ln.split(b"\n"):
                if item.startswith(b"key="):
                    k = item.split(b" ", 1)[0][4:]
                    keys.append(urllib.parse.unquote_to_bytes(k))
            if ln.endswith(b"END") or ln == b"END":
                return keys
            ln = self.line()


class Raw:
    """The store's own client on url (see the module's docstring)."""

    def __init__(self, url):
        self.servers = parse_url(url)
        self.ketama = _Ketama(self.servers)

    def _conn(self, mkey):
        return Conn(*self.servers[self.ketama.index(mkey)])

    def set_plain(self, mkey, value):
        """Write a memcached key as any other client would (no kvfs naming)."""
        c = self._conn(mkey)
        try:
            c.set(mkey, value)
        finally:
            c.close()

    def get_plain(self, mkey):
        c = self._conn(mkey)
        try:
            return c.get(mkey)
        finally:
            c.close()

    def put_many(self, items):
        for k, v in items.items():
            mkey, hashed = encode_key(k)
            self.set_plain(mkey, wrap_value(k, v) if hashed else v)

    def get(self, key):
        mkey, hashed = encode_key(key)
        raw = self.get_plain(mkey)
        if not hashed or raw is None:
            return raw
        kv = unwrap_value(mkey, raw)
        return kv[1] if kv and kv[0] == key else None

    def delete(self, key):
        if self.get(key) is None:
            return False
        mkey, _ = encode_key(key)
        c = self._conn(mkey)
        try:
            return c.delete(mkey)
        finally:
            c.close()

    def decode(self, mkey):
        """The kvfs key a memcached key stands for, (key, hashed), or None."""
        if mkey.startswith(b"%#"):
            return (None, True) if len(mkey) == 66 else None
        if mkey.startswith(b"%~"):
            k = _unescape(mkey[2:])
            return (k, False) if k is not None and encode_key(k) == (mkey, False) else None
        return (mkey, False) if _is_plain(mkey) else None

    def items(self, prefix=b""):
        out = {}
        for i, (host, port) in enumerate(self.servers):
            c = Conn(host, port)
            try:
                for mkey in c.metadump():
                    d = self.decode(mkey)
                    if d is None or self.ketama.index(mkey) != i:
                        continue
                    raw = c.get(mkey)
                    if raw is None:
                        continue
                    if d[1]:
                        kv = unwrap_value(mkey, raw)
                        if kv is None:
                            continue
                        key, value = kv
                    else:
                        key, value = d[0], raw
                    if key.startswith(prefix):
                        out[key] = value
            finally:
                c.close()
        return out
