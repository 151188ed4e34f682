"""What only the redis backend has: its URLs and credential rules, glob
characters in keys (listing is SCAN MATCH), keys other Redis clients
write, the persistence facts of .health, and the server's own bulk limit.

Each test runs a redis-server of its own (tests/servers/redis.py), so they
skip unless kvfs was built with the redis backend.
"""
import errno
import hashlib
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

import util
from servers import redis as rd

pytestmark = pytest.mark.skipif("redis" not in util.compiled_backends(),
                                reason="kvfs built without the redis backend")

NOCACHE = ["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"]
SECRET = "s3cr3t-Pw-4-kvfs"


@pytest.fixture
def server(workdir):
    srv = rd.start(workdir)
    yield srv
    srv.stop()


@pytest.fixture
def auth_server(workdir):
    """requirepass, and an ACL user kvuser with its own password."""
    srv = rd.start(workdir, config="requirepass %s\nuser kvuser on >%s-user ~* &* +@all\n"
                   % (SECRET, SECRET))
    yield srv
    srv.stop()


def resp(url, password=None):
    return rd.Resp(url, password=password)


def run_kvfs(url, *opts, env=None):
    mnt = util.new_temp_dir("kvfs-mnt-")
    cmd = [util.KVFS_BIN, "-f"] + (["-o", ",".join(opts)] if opts else []) + [url, mnt]
    e = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    e.update(env or {})
    return util.run(cmd, timeout=30, env=e)


def mount(url, opts=(), env=None):
    """A mount of url; REDISCLI_AUTH only if env gives it."""
    env = dict({"REDISCLI_AUTH": None}, **(env or {}))
    return util.Mount(url, opts=NOCACHE + list(opts), env=env).start()


def secret_nowhere(m, secret=SECRET):
    """The password is not in the daemon's argv, its log or .health."""
    with open("/proc/%d/cmdline" % m.proc.pid, "rb") as f:
        assert secret.encode() not in f.read()
    assert secret.encode() not in util.read_file(m.p(".health"))
    assert secret not in m.log_text()


# ---- URLs and passwords ----

@pytest.mark.parametrize("url", ["redis://kvuser:%s@127.0.0.1:1" % SECRET,
                                 "redis://:%s@127.0.0.1:1/2" % SECRET,
                                 "redis+unix:///tmp/x.sock?db=1&password=%s" % SECRET,
                                 "redis://127.0.0.1:1?password=%s" % SECRET])
def test_password_in_url_is_refused_with_one_clear_line(url):
    r = run_kvfs(url)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "REDISCLI_AUTH" in err and "password_file" in err, err
    assert SECRET not in err + r.stdout.decode()


@pytest.mark.parametrize("url,words", [
    ("redis://127.0.0.1:1/abc", "database number"),
    ("redis://127.0.0.1:99999", "bad port"),
    ("redis://127.0.0.1:1?db=2", "no parameters"),
    ("redis+unix://", "no socket path"),
    ("redis+unix:///tmp/x.sock?dbx=1", "unknown URL parameter"),
    ("redis+unix:///tmp/x.sock?db=z", "bad db"),
    ("redis+unix://otherhost/tmp/x.sock", "local"),
    ("redis:127.0.0.1", "expected redis://"),
])
def test_bad_urls_are_one_line_errors(url, words):
    r = run_kvfs(url)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert len(err.strip().splitlines()) == 1, err
    assert words in err, err


def test_user_without_password_is_refused():
    r = run_kvfs("redis://kvuser@127.0.0.1:1", env={"REDISCLI_AUTH": ""})
    assert r.returncode != 0
    assert "no password" in r.stderr.decode()


def test_password_from_rediscli_auth_reaches_the_server(auth_server):
    m = mount(auth_server.url, env={"REDISCLI_AUTH": SECRET})
    util.write_file(m.p("f"), b"authed")
    assert resp(auth_server.url, SECRET).call(b"GET", b"f") == b"authed"
    assert m.health()["status"] == "ok"
    secret_nowhere(m)


def test_password_file_reaches_the_server(auth_server, workdir):
    pwfile = os.path.join(workdir, "pw")
    util.write_file(pwfile, SECRET.encode() + b"\n")
    os.chmod(pwfile, 0o600)
    m = mount(auth_server.url, opts=["password_file=" + pwfile], env={"REDISCLI_AUTH": None})
    util.write_file(m.p("g"), b"from file")
    assert resp(auth_server.url, SECRET).call(b"GET", b"g") == b"from file"
    secret_nowhere(m)


def test_acl_user_authenticates_with_its_own_password(auth_server):
    url = "redis://kvuser@127.0.0.1:%d/3" % auth_server.port
    m = mount(url, env={"REDISCLI_AUTH": SECRET + "-user"})
    util.write_file(m.p("u"), b"acl")
    c = resp(auth_server.url, SECRET)
    c.call(b"SELECT", b"3")
    assert c.call(b"GET", b"u") == b"acl"
    secret_nowhere(m, SECRET + "-user")


def test_wrong_password_fails_the_mount_with_a_clear_line(auth_server):
    r = run_kvfs(auth_server.url, env={"REDISCLI_AUTH": "not-" + SECRET})
    err = r.stderr.decode()
    assert r.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "refused the credentials" in err and "refuses the password" in err, err
    assert SECRET not in err


def test_missing_password_fails_the_mount_with_a_clear_line(auth_server):
    r = run_kvfs(auth_server.url)
    err = r.stderr.decode()
    assert r.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "refused the credentials" in err and "NOAUTH" in err, err
    assert "REDISCLI_AUTH" in err and "-o lazy" in err, err


@pytest.mark.parametrize("password", [None, "not-" + SECRET])
def test_lazy_mount_refused_credentials_are_eacces_everywhere(auth_server, password):
    resp(auth_server.url, SECRET).call(b"SET", b"f", b"v")
    m = mount(auth_server.url, opts=["lazy"], env={"REDISCLI_AUTH": password})
    m.allow_log(r"NOAUTH|refuses the password")
    assert util.errno_of(util.read_file, m.p("f")) == errno.EACCES
    assert util.errno_of(util.write_file, m.p("g"), b"x") == errno.EACCES
    assert util.errno_of(os.listdir, m.path) == errno.EACCES
    assert util.errno_of(os.unlink, m.p("f")) == errno.EACCES
    assert m.health()["status"] != "ok"
    assert resp(auth_server.url, SECRET).call(b"GET", b"f") == b"v"


# ---- the mount contract: open parses, the probe connects ----

def test_unreachable_server_fails_the_mount_with_one_line(server):
    server.stop()
    r = run_kvfs(server.url)
    err = r.stderr.decode()
    assert r.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "cannot reach the store" in err and "-o lazy" in err, err


def test_lazy_mount_of_a_stopped_server_works_when_it_starts(server):
    server.stop()
    m = mount(server.url, opts=["lazy", "timeout=1s"])
    m.allow_log(r"kvfs: ERROR: redis")
    assert util.errno_of(util.write_file, m.p("f"), b"x") == errno.EIO
    assert m.health()["status"] != "ok"
    server.start()
    util.write_file(m.p("f"), b"up")
    assert resp(server.url).call(b"GET", b"f") == b"up"
    assert m.health()["status"] == "ok"


# ---- transient failures cost a delay, not an error ----

def in_thread(fn, *args):
    """Start fn(*args) in a thread; a function giving its errno (None: it
    worked) once it is done."""
    out = {}

    def run():
        out["errno"] = util.errno_of(fn, *args)
    t = threading.Thread(target=run)
    t.start()

    def result():
        t.join(60)
        assert not t.is_alive()
        return out["errno"]
    return result


def test_a_call_while_the_server_restarts_waits_for_it(server):
    m = mount(server.url, opts=["timeout=15s"])
    util.write_file(m.p("f"), b"old")
    m.allow_log(r"kvfs: (ERROR|INFO): redis")
    server.stop()
    done = in_thread(util.write_file, m.p("f"), b"new")   # connection refused, for now
    time.sleep(1.5)
    server.start()
    assert done() is None
    assert resp(server.url).call(b"GET", b"f") == b"new"


def test_a_server_loading_its_data_is_waited_for(workdir):
    # 2000 keys loaded 1 ms apiece from the RDB part: LOADING for 2 s
    srv = rd.start(workdir, config="key-load-delay 1000\n"
                   "loading-process-events-interval-bytes 1024\n")
    try:
        rd.Raw(srv.url).put_many({b"k%d" % i: b"v%d" % i for i in range(2000)})
        c = resp(srv.url)      # into the RDB part, loaded with events in between
        c.call(b"BGREWRITEAOF")
        while b"aof_rewrite_in_progress:1" in c.call(b"INFO", b"persistence") or \
                b"aof_rewrite_scheduled:1" in c.call(b"INFO", b"persistence"):
            time.sleep(0.05)
        m = mount(srv.url, opts=["timeout=30s"])
        srv.restart()      # back when its port accepts: loading
        t0 = time.monotonic()
        assert resp(srv.url).pipeline([[b"GET", b"k1"]])[0].args[0].startswith("LOADING")
        assert util.read_file(m.p("k1999")) == b"v1999"
        assert time.monotonic() - t0 > 0.5     # it waited for the loading
        assert util.read_file(m.p("k1")) == b"v1"
        util.write_file(m.p("new"), b"n")
    finally:
        srv.stop()


class Proxy:
    """One address in front of a Redis, as a virtual IP or a load balancer
    is: hold() stops passing requests on (calls in flight wait), switch()
    points it at another server and drops every connection it carries, as
    a failover does."""

    def __init__(self, port):
        self.target = port
        self.held = False
        self.pairs = []
        self.lock = threading.Lock()
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            with self.lock:
                self.pairs.append((c, u))
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src, dst, request):
        try:
            while True:
                data = src.recv(1 << 16)
                while request and self.held:
                    time.sleep(0.01)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold(self):
        self.held = True

    def switch(self, port):
        self.target = port
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for c, u in pairs:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            for s in (c, u):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.held = False

    def close(self):
        self.lsock.close()
        self.switch(self.target)


def test_a_failover_behind_one_address_costs_a_delay_not_an_error():
    a = rd.start(util.new_temp_dir())
    b = rd.start(util.new_temp_dir())
    px = Proxy(a.port)
    try:
        resp(b.url).call(b"REPLICAOF", b"127.0.0.1", str(a.port))
        m = mount("redis://127.0.0.1:%d" % px.port, opts=["timeout=15s"])
        m.allow_log(r"kvfs: (ERROR|WARN|INFO): redis")
        util.write_file(m.p("before"), b"1")
        deadline = time.monotonic() + 20
        while resp(b.url).call(b"GET", b"before") != b"1":
            assert time.monotonic() < deadline, "the replica never caught up"
            time.sleep(0.05)
        px.hold()          # a write is on its way when the master goes
        done = in_thread(util.write_file, m.p("during"), b"2")
        time.sleep(0.5)
        resp(b.url).call(b"REPLICAOF", b"NO", b"ONE")
        resp(a.url).call(b"REPLICAOF", b"127.0.0.1", str(b.port))
        px.switch(b.port)  # its connection is reset; the new one reaches b
        assert done() is None
        assert resp(b.url).call(b"GET", b"during") == b"2"
        assert util.read_file(m.p("before")) == b"1"
        util.write_file(m.p("after"), b"3")
        assert resp(b.url).call(b"GET", b"after") == b"3"
    finally:
        px.close()
        a.stop()
        b.stop()


# ---- timeouts bound waiting for the server, not a transfer ----

def test_a_100mb_copy_closes_without_error_and_is_whole(server, workdir):
    # appendfsync always: Redis writes and fsyncs 100 MB before it answers,
    # which takes longer than the 1 s timeout; the transfer is not timed
    resp(server.url).call(b"CONFIG", b"SET", b"appendfsync", b"always")
    src = os.path.join(workdir, "big")
    with open(src, "wb") as f:
        for i in range(100):
            f.write(hashlib.sha256(b"%d" % i).digest() * 32768)
    m = mount(server.url, opts=["timeout=1s"])
    r = subprocess.run(["cp", src, m.p("big")], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    c = resp(server.url)
    assert c.call(b"STRLEN", b"big") == 100 << 20
    with open(src, "rb") as f:
        assert hashlib.sha256(c.call(b"GET", b"big")).digest() == \
            hashlib.sha256(f.read()).digest()


def test_a_timeout_says_what_timed_out_and_which_option_raises_it(server):
    m = mount(server.url, opts=["timeout=1s"])
    util.write_file(m.p("f"), b"x")
    m.allow_log(r"kvfs: ERROR: redis")
    server.pause()
    try:
        assert util.errno_of(util.read_file, m.p("f")) == errno.EIO
    finally:
        server.resume()
    log = m.log_text()
    assert "did not answer within 1000 ms" in log and "-o timeout" in log, log


def test_password_file_others_may_read_is_refused(workdir):
    pwfile = os.path.join(workdir, "pw")
    util.write_file(pwfile, SECRET.encode() + b"\n")
    os.chmod(pwfile, 0o644)
    r = run_kvfs("redis://127.0.0.1:1", "password_file=" + pwfile)
    err = r.stderr.decode()
    assert r.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "may be read by others" in err and SECRET not in err


def test_missing_password_file_is_a_clear_error(workdir):
    r = run_kvfs("redis://127.0.0.1:1", "password_file=" + os.path.join(workdir, "nope"))
    assert r.returncode != 0
    assert "password_file" in r.stderr.decode()


def test_unix_socket_and_database_number(server):
    url = "redis+unix://%s?db=5" % server.socket_path
    rd.redis_cli(url, "SET", "in-db-5", "five")
    m = mount(url)
    assert util.read_file(m.p("in-db-5")) == b"five"
    util.write_file(m.p("new"), b"x")
    assert resp(server.url).call(b"EXISTS", b"new") == 0      # not in db 0
    assert resp(url).call(b"GET", b"new") == b"x"
    assert "db 5" in m.health()["detail"]


# ---- keys: glob characters, other clients, other types ----

def test_glob_characters_in_keys_list_exactly(server):
    raw = rd.Raw(server.url)
    keys = {b"a*": b"1", b"a?b": b"2", b"[x]": b"3", b"back\\slash": b"4",
            b"a*/child": b"5", b"ab": b"6", b"aXb": b"7", b"x": b"8",
            b"[x]/in": b"9", b"x]/not": b"10", b"back\\/in": b"11", b"backXslash": b"12"}
    raw.put_many(keys)
    m = mount(server.url)
    files, dirs = util.walk_tree(m.path)
    want_files, want_dirs = util.expected_tree(keys)
    assert files == want_files
    assert dirs == want_dirs
    assert sorted(os.listdir(m.p("a*"))) == [b"%value", b"child"]
    assert sorted(os.listdir(m.p("[x]"))) == [b"%value", b"in"]
    assert os.listdir(m.p("back\\")) == [b"in"]


def test_glob_characters_in_the_mount_root(server):
    raw = rd.Raw(server.url)
    raw.put_many({b"r[1]*?\\/f": b"in", b"r1/f": b"decoy", b"r[1]X?\\/g": b"decoy",
                  b"r[1]*?\\x/h": b"decoy"})
    m = mount(server.url, opts=["root=r[1]*?\\"])
    assert sorted(os.listdir(m.bpath)) == [b"f"]


def test_keys_written_with_redis_cli_show_up(server):
    r = rd.redis_cli(server.url, "-x", "SET", "cli/dir/value", stdin=b"from redis-cli\n")
    assert r.returncode == 0, r.stderr
    assert rd.redis_cli(server.url, "SET", "cli/top", "t").returncode == 0
    m = mount(server.url, opts=["root=cli"])
    assert sorted(os.listdir(m.bpath)) == [b"dir", b"top"]
    assert util.read_file(m.p("dir/value")) == b"from redis-cli\n"
    assert os.stat(m.p("dir/value")).st_size == 15
    # and back: what kvfs writes, redis-cli reads
    util.write_file(m.p("dir/back"), b"from kvfs")
    r = rd.redis_cli(server.url, "--raw", "GET", "cli/dir/back")
    assert r.stdout == b"from kvfs\n"
    assert rd.redis_cli(server.url, "DEL", "cli/top").returncode == 0
    assert sorted(os.listdir(m.bpath)) == [b"dir"]


def test_binary_keys_with_nul_round_trip(server):
    raw = rd.Raw(server.url)
    raw.put_many({b"bin/a\x00b": b"\x00\xff", b"bin/a\x00c": b"z"})
    m = mount(server.url, opts=["root=bin"])
    assert sorted(os.listdir(m.bpath)) == [b"%a%00b", b"%a%00c"]
    assert util.read_file(m.p("%a%00b")) == b"\x00\xff"
    util.write_file(m.p("%n%00"), b"made")
    assert raw.get(b"bin/n\x00") == b"made"


def test_a_key_of_another_type_is_listed_and_unreadable(server):
    c = resp(server.url)
    c.call(b"HSET", b"typed/h", b"field", b"value")
    c.call(b"SET", b"typed/s", b"string")
    m = mount(server.url, opts=["root=typed"])
    m.allow_log(r"WRONGTYPE")
    assert sorted(os.listdir(m.bpath)) == [b"h", b"s"]
    assert util.errno_of(util.read_file, m.p("h")) == errno.EACCES
    assert c.call(b"TYPE", b"typed/h") == b"hash"


# ---- .health and limits ----

def test_health_reports_persistence_and_eviction(server):
    m = mount(server.url)
    h = m.health()
    assert h["status"] == "ok"
    f = h["facts"]
    assert f["appendonly"] == "yes"
    assert f["maxmemory_policy"] == "noeviction"
    assert f["appendfsync"] == "everysec"
    assert f["role"] == "master"
    assert f["redis_version"].count(".") == 2
    assert int(f["used_memory"]) > 0
    assert "warning" not in h["detail"] and "off" not in h["detail"]


def test_health_warns_when_data_is_at_risk(server):
    c = resp(server.url)
    m = mount(server.url)
    c.call(b"CONFIG", b"SET", b"appendonly", b"no")
    h = m.health()
    assert h["facts"]["appendonly"] == "no"
    assert "appendonly is off" in h["detail"]
    c.call(b"CONFIG", b"SET", b"appendonly", b"yes")
    c.call(b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lru")
    deadline = time.monotonic() + 20
    while m.health()["facts"]["appendonly"] != "yes" and time.monotonic() < deadline:
        time.sleep(0.1)   # the AOF rewrite that switches it on takes a moment
    h = m.health()
    assert h["facts"]["maxmemory_policy"] == "allkeys-lru"
    assert "evicts" in h["detail"]


def test_health_writes_nothing(server):
    m = mount(server.url)
    c = resp(server.url)
    before = c.call(b"INFO", b"persistence")
    dirty = [ln for ln in before.split(b"\r\n") if ln.startswith(b"rdb_changes_since_last_save")]
    for _ in range(5):
        assert m.health()["status"] == "ok"
    after = c.call(b"INFO", b"persistence")
    assert dirty == [ln for ln in after.split(b"\r\n")
                     if ln.startswith(b"rdb_changes_since_last_save")]
    assert c.call(b"DBSIZE") == 0


def test_server_bulk_limit_narrows_max_value(server):
    resp(server.url).call(b"CONFIG", b"SET", b"proto-max-bulk-len", b"1048576")
    m = mount(server.url)
    util.write_file(m.p("small"), b"s")     # the first call learns the limit
    assert m.health()["limits"]["max_value"] == 1048576
    util.write_file(m.p("big"), b"old")
    with open(m.p("big"), "wb") as f:
        f.write(b"x" * (1048576 + 1))
        assert util.errno_of(f.close) == errno.EFBIG
    assert util.read_file(m.p("big")) == b"old"


def test_statfs_reports_keys_and_maxmemory(server):
    c = resp(server.url)
    c.call(b"CONFIG", b"SET", b"maxmemory", b"100mb")
    m = mount(server.url)
    util.write_file(m.p("a"), b"1")
    st = os.statvfs(m.path)
    assert st.f_blocks * st.f_frsize == 100 << 20
    assert 0 < st.f_bfree < st.f_blocks
