"""What only the redis backend has: its URLs and credential rules, glob
characters in keys (listing is SCAN MATCH), keys other Redis clients
write, the persistence facts of .health, and the server's own bulk limit.

Each test runs a redis-server of its own (tests/servers/redis.py), so they
skip unless kvfs was built with the redis backend.
"""
import errno
import os
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
    assert r.returncode != 0
    assert "refuses the password" in err, err
    assert SECRET not in err


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
    assert sorted(n for n in os.listdir(m.bpath) if n != b".health") == [b"f"]


def test_keys_written_with_redis_cli_show_up(server):
    r = rd.redis_cli(server.url, "-x", "SET", "cli/dir/value", stdin=b"from redis-cli\n")
    assert r.returncode == 0, r.stderr
    assert rd.redis_cli(server.url, "SET", "cli/top", "t").returncode == 0
    m = mount(server.url, opts=["root=cli"])
    assert sorted(os.listdir(m.bpath)) == [b".health", b"dir", b"top"]
    assert util.read_file(m.p("dir/value")) == b"from redis-cli\n"
    assert os.stat(m.p("dir/value")).st_size == 15
    # and back: what kvfs writes, redis-cli reads
    util.write_file(m.p("dir/back"), b"from kvfs")
    r = rd.redis_cli(server.url, "--raw", "GET", "cli/dir/back")
    assert r.stdout == b"from kvfs\n"
    assert rd.redis_cli(server.url, "DEL", "cli/top").returncode == 0
    assert sorted(os.listdir(m.bpath)) == [b".health", b"dir"]


def test_binary_keys_with_nul_round_trip(server):
    raw = rd.Raw(server.url)
    raw.put_many({b"bin/a\x00b": b"\x00\xff", b"bin/a\x00c": b"z"})
    m = mount(server.url, opts=["root=bin"])
    assert sorted(os.listdir(m.bpath)) == [b"%a%00b", b"%a%00c", b".health"]
    assert util.read_file(m.p("%a%00b")) == b"\x00\xff"
    util.write_file(m.p("%n%00"), b"made")
    assert raw.get(b"bin/n\x00") == b"made"


def test_a_key_of_another_type_is_listed_and_unreadable(server):
    c = resp(server.url)
    c.call(b"HSET", b"typed/h", b"field", b"value")
    c.call(b"SET", b"typed/s", b"string")
    m = mount(server.url, opts=["root=typed"])
    m.allow_log(r"WRONGTYPE")
    assert sorted(os.listdir(m.bpath)) == [b".health", b"h", b"s"]
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
