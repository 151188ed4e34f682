"""The consul backend's own rules (docs/backends.md, "consul"): the ACL
token only from the environment and only in a header, keys that a URL path
would normalise stay their own keys, no credentials in URLs, ?dc= reaches
every request, and the key spelling for bytes JSON cannot carry.

Each test runs its own test server (tests/servers/consul_server.py).
"""
import errno
import json
import os
import urllib.request

import pytest

import servers
from servers import consul
import util
from util import read_file, write_file

pytestmark = pytest.mark.skipif("consul" not in util.compiled_backends(),
                                reason="kvfs built without the consul backend")

TOKEN = "7f3c1e2a-kvfs-test-secret-token-5b9d"


@pytest.fixture
def server(workdir):
    srv = consul.start(workdir)
    yield srv
    srv.stop()


@pytest.fixture
def acl_server(workdir):
    path = os.path.join(workdir, "server-token")
    write_file(path, TOKEN.encode() + b"\n")
    srv = consul.start(workdir, token_file=path)
    yield srv
    srv.stop()


def mount(url, opts=(), env=None):
    base = {"CONSUL_HTTP_TOKEN": None, "CONSUL_HTTP_TOKEN_FILE": None, "CONSUL_HTTP_ADDR": None}
    base.update(env or {})
    return util.Mount(url, opts=["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"]
                      + list(opts), env=base).start()


def raw_keys(srv, token=None):
    """Every Consul key as Consul spells it (str), by a plain ?keys request."""
    req = urllib.request.Request("http://127.0.0.1:%d/v1/kv/?keys" % srv.port)
    if token:
        req.add_header("X-Consul-Token", token)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_token_file_reaches_server_and_never_shows(acl_server, workdir):
    tf = os.path.join(workdir, "token")
    write_file(tf, b"  " + TOKEN.encode() + b"\n")
    m = mount(acl_server.url, env={"CONSUL_HTTP_TOKEN_FILE": tf})
    write_file(m.p("f"), b"with token")
    assert read_file(m.p("f")) == b"with token"
    assert raw_keys(acl_server, TOKEN) == ["f"]
    health = read_file(m.p(".health"))
    assert json.loads(health)["status"] == "ok"
    assert TOKEN.encode() not in health
    assert b"CONSUL_HTTP_TOKEN_FILE" in health           # where it came from, not what it is
    with open("/proc/%d/cmdline" % m.proc.pid, "rb") as f:
        assert TOKEN.encode() not in f.read()
    r = util.run(["ps", "-ww", "-eo", "args"])
    assert TOKEN not in r.stdout.decode(errors="replace")
    m.unmount()
    assert TOKEN not in m.log_text()


def test_token_from_env_and_missing_token_is_eacces(acl_server):
    m = mount(acl_server.url, env={"CONSUL_HTTP_TOKEN": TOKEN})
    write_file(m.p("g"), b"env token")
    m.unmount()
    m = mount(acl_server.url)
    m.allow_log(r"kvfs: WARN:.*403")
    assert util.errno_of(read_file, m.p("g")) in (errno.EACCES, errno.ENOENT)
    assert util.errno_of(write_file, m.p("h"), b"x") == errno.EACCES
    m.unmount()
    assert TOKEN not in m.log_text()


@pytest.mark.parametrize("key", [b"a/../b", b"a/./b", b"a//b", b"/lead", b"a/.."])
def test_dot_and_empty_segments_stay_their_own_keys(server, key):
    raw = consul.Raw(server.url)
    raw.put_many({b"b": b"plain b", b"a/b": b"plain a/b", b"lead": b"plain lead",
                  key: b"odd key"})
    m = mount(server.url)
    path = m.p(util.encode_key(key).decode("latin-1"))
    assert read_file(path) == b"odd key"
    write_file(path, b"written by kvfs")
    assert raw.get(key) == b"written by kvfs"
    assert raw.get(b"b") == b"plain b" and raw.get(b"a/b") == b"plain a/b"
    assert raw.get(b"lead") == b"plain lead"
    os.unlink(path)
    assert raw.get(key) is None
    assert raw.items() == {b"b": b"plain b", b"a/b": b"plain a/b", b"lead": b"plain lead"}


@pytest.mark.parametrize("url", [
    "consul://kvuser:s3cr3tpw@127.0.0.1:%d",
    "consul://127.0.0.1:%d/?token=s3cr3tpw",
    "consul://127.0.0.1:%d/?dc=dc1&token=s3cr3tpw",
])
def test_credentials_in_url_are_refused(server, workdir, url):
    url = url % server.port
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    r = util.run([util.KVFS_BIN, "-f", url, mnt], timeout=30)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0
    assert not util.is_mounted(mnt)
    assert "s3cr3tpw" not in out
    assert "CONSUL_HTTP_TOKEN" in out, out


def test_unknown_url_parameter_is_refused(server, workdir):
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    r = util.run([util.KVFS_BIN, "-f", "consul://127.0.0.1:%d/?stale" % server.port, mnt],
                 timeout=30)
    assert r.returncode != 0 and b"dc=" in r.stdout + r.stderr


def test_dc_reaches_requests(server):
    m = mount(server.url + "/?dc=dc1")
    write_file(m.p("f"), b"in dc1")
    assert m.health()["status"] == "ok"
    m.unmount()
    m = mount(server.url + "/?dc=elsewhere", opts=["timeout=2s"])
    m.allow_log(r"kvfs: WARN:.*No path to datacenter")
    assert util.errno_of(read_file, m.p("f")) == errno.EIO
    assert m.health()["status"] != "ok"


def test_url_path_is_a_key_prefix(server):
    raw = consul.Raw(server.url)
    raw.put_many({b"app/conf/x": b"1", b"other": b"2"})
    m = mount(server.url + "/app/conf")
    assert os.listdir(m.path) == [b"x"] or sorted(os.listdir(m.path)) == [".health", "x"]
    write_file(m.p("y"), b"3")
    assert raw.get(b"app/conf/y") == b"3"


def test_address_from_consul_http_addr(server):
    m = mount("consul:///pfx", env={"CONSUL_HTTP_ADDR": "http://127.0.0.1:%d" % server.port})
    write_file(m.p("k"), b"v")
    assert consul.Raw(server.url).get(b"pfx/k") == b"v"


def test_key_spelling_for_bytes_json_cannot_carry(server):
    m = mount(server.url)
    names = {b"caf\xc3\xa9": b"utf-8 stays", b"bad\xff": b"escaped", b"50%41": b"pct",
             b"50%": b"lone pct"}
    for n, v in names.items():
        write_file(os.path.join(m.bpath, n), v)
    assert sorted(raw_keys(server)) == sorted(["caf\u00e9", "bad%FF", "50%2541", "50%"])
    assert sorted(os.listdir(m.bpath)) == sorted([b".health"] + list(names)) or \
        sorted(os.listdir(m.bpath)) == sorted(names)
    for n, v in names.items():
        assert read_file(os.path.join(m.bpath, n)) == v


def test_value_limit_is_512k_and_refusal_keeps_old_value(server):
    m = mount(server.url)
    big = os.urandom(512 * 1024)
    write_file(m.p("big"), big)
    assert read_file(m.p("big")) == big
    assert util.errno_of(write_file, m.p("big"), big + b"x") == errno.EFBIG
    assert read_file(m.p("big")) == big
    # a rename of a value too large for one transaction body still moves it
    os.rename(m.p("big"), m.p("moved"))
    assert read_file(m.p("moved")) == big
    assert consul.Raw(server.url).items() == {b"moved": big}
