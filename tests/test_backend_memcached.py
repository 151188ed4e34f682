"""The memcached backend's own rules (docs/backends.md, "memcached"): keys
of plain memcached clients show under their own names, keys spread over
the servers by ketama, the documented names for keys memcached cannot hold,
foreign keys that look like those names are hidden without harm, listings
see other clients' writes within a second, and bad URLs fail with one line.

Each test runs servers of its own (tests/servers/memcached.py).
"""
import errno
import hashlib
import os
import subprocess
import threading
import time

import pytest

import servers
from servers import memcached as mc
import util
from util import read_file, write_file

pytestmark = pytest.mark.skipif("memcached" not in util.compiled_backends(),
                                reason="kvfs built without the memcached backend")

NOCACHE = ["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"]


@pytest.fixture
def pair(workdir):
    srv = mc.start(workdir)
    yield srv
    srv.stop()


@pytest.fixture
def single(workdir):
    port = servers.free_port()
    srv = servers.Server(mc.server_argv(port), port, "memcached://127.0.0.1:%d" % port,
                         os.path.join(workdir, "memcached.log"))
    yield srv
    srv.stop()


def mount(url, opts=()):
    return util.Mount(url, opts=NOCACHE + list(opts)).start()


def send(port, data):
    """What a plain client (`printf ... | nc`) gets back for data."""
    c = mc.Conn("127.0.0.1", port)
    try:
        c.sock.sendall(data)
        return c.line()
    finally:
        c.close()


def test_plain_client_keys_show_under_their_own_names(single):
    assert send(single.port, b"set foo/bar 0 0 3\r\nabc\r\n") == b"STORED"
    assert send(single.port, b"set top 0 0 2\r\nhi\r\n") == b"STORED"
    assert send(single.port, b"set caf\xc3\xa9 5 0 4\r\nlatt\r\n") == b"STORED"
    m = mount(single.url)
    assert sorted(os.listdir(m.path)) == ["caf\xe9", "foo", "top"]
    assert os.listdir(m.p("foo")) == [b"bar"]
    assert read_file(m.p("foo/bar")) == b"abc"
    assert read_file(m.p("top")) == b"hi"
    assert read_file(m.p("caf\xe9")) == b"latt"
    # and what the mount writes, a plain client reads as it is
    write_file(m.p("foo/new"), b"from kvfs")
    c = mc.Conn("127.0.0.1", single.port)
    try:
        assert c.get(b"foo/new") == b"from kvfs"
    finally:
        c.close()


def test_listing_sees_other_clients_within_a_second(single):
    # a walk of the servers answers listings for one second (keycache.c);
    # the mount's own writes show at once, other clients' after that
    m = mount(single.url)
    os.mkdir(m.p("d"))
    write_file(m.p("d/a"), b"1")
    assert os.listdir(m.p("d")) == [b"a"]
    assert send(single.port, b"set d/b 0 0 1\r\n2\r\n") == b"STORED"
    time.sleep(1.1)
    assert sorted(os.listdir(m.p("d"))) == [b"a", b"b"]
    assert send(single.port, b"delete d/a\r\n") == b"DELETED"
    write_file(m.p("d/c"), b"3")
    assert b"c" in os.listdir(m.p("d"))
    time.sleep(1.1)
    assert sorted(os.listdir(m.p("d"))) == [b"b", b"c"]
    # replaced by another client with a new size: the listing says so
    assert send(single.port, b"set d/b 0 0 5\r\n22222\r\n") == b"STORED"
    assert os.stat(m.p("d/b")).st_size == 5


def test_keys_spread_over_both_servers(pair):
    m = mount(pair.url)
    for i in range(60):
        write_file(m.p("f%02d" % i), b"%d" % i)
    per_server = []
    for host, port in mc.parse_url(pair.url):
        c = mc.Conn(host, port)
        try:
            per_server.append(set(c.metadump()))
        finally:
            c.close()
    assert all(len(keys) >= 10 for keys in per_server), [len(k) for k in per_server]
    assert len(per_server[0] | per_server[1]) == 60
    assert sorted(os.listdir(m.path)) == ["f%02d" % i for i in range(60)]
    raw = mc.Raw(pair.url)
    assert raw.get(b"f07") == b"7"
    # every key sits where libmemcached's ketama puts it
    for i, keys in enumerate(per_server):
        assert all(raw.ketama.index(k) == i for k in keys)


def test_keys_memcached_cannot_hold_get_documented_names(pair):
    m = mount(pair.url)
    raw = mc.Raw(pair.url)
    names = {b"with space": b"%~with%20space", b"new\nline": b"%~new%0Aline",
             b"%~looks marked": b"%~%25~looks%20marked"}
    for name, mkey in names.items():
        write_file(m.p(util.encode_key(name)), b"v:" + name)
        assert raw.get_plain(mkey) == b"v:" + name
    # a path too long for a memcached key even escaped: a hash name and a header
    long_key = b"/".join([b"x" * 200] * 3)
    os.makedirs(m.p(b"x" * 200, b"x" * 200))
    write_file(m.p(long_key), b"long")
    mkey = b"%#" + hashlib.sha256(long_key).hexdigest().encode()
    assert raw.get_plain(mkey) == b"kvfs\x00\x00\x02\x5a" + long_key + b"long"
    assert raw.get(long_key) == b"long"
    files = {k: v for k, v in raw.items().items() if not k.endswith(b"/")}  # no dir markers
    assert files == {**{k: b"v:" + k for k in names}, long_key: b"long"}
    assert read_file(m.p(long_key)) == b"long"
    os.unlink(m.p(long_key))
    assert raw.get_plain(mkey) is None


def test_foreign_keys_that_look_encoded_are_hidden(single):
    junk = {
        b"%~plain": b"not canonical: 'plain' is stored as it is",
        b"%~bad%ZZescape": b"not an escape",
        b"%~lower%0aescape": b"kvfs writes upper-case hex",
        b"%#" + b"0" * 64: b"no kvfs header",
        b"%#" + hashlib.sha256(b"k" * 300).hexdigest().encode(): b"kvfs\x00\x00\x00\x03abcx",
        b"%#short": b"x",
        b"tab\there": b"control byte",
    }
    for k, v in junk.items():
        assert send(single.port, b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v)) == b"STORED"
    assert send(single.port, b"set ok 0 0 1\r\n1\r\n") == b"STORED"
    m = mount(single.url)
    assert sorted(os.listdir(m.path)) == ["ok"]
    assert util.errno_of(read_file, m.p(util.encode_key(b"k" * 300))) == errno.ENOENT
    assert m.health()["status"] == "ok"
    # kvfs's own "%~plain" is a different memcached key, and the junk stays
    write_file(m.p(util.encode_key(b"%~plain")), b"mine")
    assert mc.Raw(single.url).get(b"%~plain") == b"mine"
    assert send(single.port, b"get %~plain\r\n").startswith(b"VALUE")


def test_value_limit_comes_from_item_size_max(workdir):
    port = servers.free_port()
    argv = [a if a != "1m" else "2m" for a in mc.server_argv(port)]
    srv = servers.Server(argv, port, None, os.path.join(workdir, "mc.log"))
    try:
        m = mount("memcached://127.0.0.1:%d" % port)
        limit = m.health()["limits"]["max_value"]
        assert (2 << 20) - 8192 < limit < 2 << 20
        write_file(m.p("f"), b"old")
        assert util.errno_of(write_file, m.p("f"), b"x" * (limit + 1)) == errno.EFBIG
        assert read_file(m.p("f")) == b"old"
        write_file(m.p("f"), b"y" * limit)
        assert os.stat(m.p("f")).st_size == limit
    finally:
        srv.stop()


def test_health_reports_every_server(pair):
    m = mount(pair.url)
    h = m.health()
    assert h["status"] == "ok"
    assert len(h["facts"]) == 2
    for fact in h["facts"].values():
        assert fact.startswith("up, memcached 1."), fact
        assert "item max 1 MiB" in fact and "memory %d MiB" % mc.MEMORY_MB in fact
    pair.servers[1].stop()
    h = m.health()
    assert h["status"] == "down"
    assert "down" in h["facts"]["127.0.0.1:%d" % pair.servers[1].port]
    m.allow_log(r"kvfs: (WARN|ERROR):")
    pair.servers[1].start()
    assert m.health()["status"] == "ok"


def test_statfs_sums_the_servers(pair):
    m = mount(pair.url)
    write_file(m.p("f"), b"x" * 100000)
    st = os.statvfs(m.path)
    assert st.f_blocks * st.f_frsize == 2 * mc.MEMORY_MB << 20
    assert st.f_bfree < st.f_blocks


@pytest.mark.parametrize("url,words", [
    ("memcached:", "expected memcached://"),
    ("memcached://", "no server"),
    ("memcached://127.0.0.1:0", "bad port"),
    ("memcached://127.0.0.1:99999", "bad port"),
    ("memcached://127.0.0.1:1/path", "no path"),
    ("memcached://a:1,,b:2", "bad server"),
    ("memcached://127.0.0.1:1?x=y", "no '?'"),
    ("memcached://user:secretpw@127.0.0.1:1", "credentials"),
])
def test_bad_urls_fail_with_one_line(url, words, workdir):
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    r = subprocess.run([util.KVFS_BIN, "-f", url, mnt], capture_output=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    # (libmongoc, linked for another backend, may print its own start-up notice)
    err = "".join(ln + "\n" for ln in r.stderr.decode(errors="replace").splitlines()
                  if "mongoc:" not in ln)
    assert r.returncode == 1 and len(err.splitlines()) == 1, err
    assert words in err and "secretpw" not in err, err


def mount_fails(url, opts=()):
    """kvfs's exit status and its stderr lines for a mount that should fail."""
    mnt = util.new_temp_dir("kvfs-mnt-")
    cmd = [util.KVFS_BIN, "-f"] + (["-o", ",".join(opts)] if opts else []) + [url, mnt]
    r = util.run(cmd, timeout=30)
    lines = [ln for ln in r.stderr.decode(errors="replace").splitlines()
             if "mongoc:" not in ln]
    return r.returncode, lines


def test_server_down_fails_the_mount_with_one_line(workdir):
    port = servers.free_port()
    url = "memcached://127.0.0.1:%d" % port
    rc, lines = mount_fails(url, ["timeout=1s"])
    assert rc == 1 and len(lines) == 1, lines
    assert "cannot reach the store" in lines[0] and "127.0.0.1:%d" % port in lines[0], lines
    assert "-o lazy" in lines[0], lines


def test_one_of_two_servers_down_fails_the_mount(single):
    down = servers.free_port()
    rc, lines = mount_fails(single.url + ",127.0.0.1:%d" % down, ["timeout=1s"])
    assert rc == 1 and len(lines) == 1, lines
    assert "1 of 2 memcached servers answer" in lines[0], lines
    assert "127.0.0.1:%d" % down in lines[0], lines


def test_server_restart_costs_a_delay_not_an_error(workdir):
    """A restart between two calls: the kept connections are dead, and the
    server refuses connections for a moment; the call retries within its
    timeout instead of failing."""
    port = servers.free_port()
    srv = servers.Server(mc.server_argv(port), port, None, os.path.join(workdir, "mc.log"))
    try:
        m = mount("memcached://127.0.0.1:%d" % port, ["timeout=5s"])
        m.allow_log(r"kvfs: (WARN|ERROR):")
        write_file(m.p("a"), b"1")
        assert sorted(os.listdir(m.path)) == ["a"]
        srv.stop()
        timer = threading.Timer(0.7, srv.start)
        timer.start()
        try:
            write_file(m.p("b"), b"2")          # waits for the server, then works
            assert sorted(os.listdir(m.path)) == ["b"]   # a is gone: a cache
        finally:
            timer.join()
    finally:
        srv.stop()


def test_lazy_mounts_while_the_server_is_down_and_recovers(workdir):
    port = servers.free_port()
    m = util.Mount("memcached://127.0.0.1:%d" % port,
                   opts=NOCACHE + ["timeout=1s", "health_timeout=1s", "lazy"]).start()
    m.allow_log(r"kvfs: (WARN|ERROR):")
    assert util.errno_of(write_file, m.p("f"), b"x") == errno.EIO
    srv = servers.Server(mc.server_argv(port), port, None, os.path.join(workdir, "mc.log"))
    try:
        write_file(m.p("f"), b"now")
        assert read_file(m.p("f")) == b"now"
        assert m.health()["limits"]["max_value"] > 1000000
    finally:
        srv.stop()
