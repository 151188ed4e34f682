"""The consul backend's own rules (docs/backends.md, "consul"): the ACL
token only from the environment and only in a header, keys that a URL path
would normalise stay their own keys, no credentials in URLs, ?dc= reaches
every request, and the key spelling for bytes JSON cannot carry.

Each test runs its own test server (tests/servers/consul_server.py).
"""
import base64
import errno
import json
import os
import urllib.error
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
    os.chmod(tf, 0o600)
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


def mount_fails(url, opts=(), env=None):
    """Run kvfs on url; it must refuse to mount with one line and exit 1.
    That line."""
    mnt = util.new_temp_dir()
    base = {"CONSUL_HTTP_TOKEN": None, "CONSUL_HTTP_TOKEN_FILE": None, "CONSUL_HTTP_ADDR": None}
    base.update(env or {})
    e = dict(os.environ)
    for k, v in base.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    r = util.run([util.KVFS_BIN, "-f"] + (["-o", ",".join(opts)] if opts else []) + [url, mnt],
                 timeout=60, env=e)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1 and not util.is_mounted(mnt), (r.returncode, err)
    assert len(err.splitlines()) == 1, err
    return err


def test_token_from_env_and_missing_or_wrong_token_fails_the_mount(acl_server):
    m = mount(acl_server.url, env={"CONSUL_HTTP_TOKEN": TOKEN})
    write_file(m.p("g"), b"env token")
    m.unmount()
    err = mount_fails(acl_server.url)
    assert "refused the credentials" in err and "without a token" in err, err
    err = mount_fails(acl_server.url, env={"CONSUL_HTTP_TOKEN": "not-" + TOKEN})
    assert "refused the credentials" in err and "CONSUL_HTTP_TOKEN" in err, err
    assert TOKEN not in err


def test_lazy_mount_without_token_is_eacces(acl_server):
    m = mount(acl_server.url, opts=["lazy"])
    m.allow_log(r"kvfs: WARN:.*403")
    assert m.health()["status"] == "down"
    assert util.errno_of(read_file, m.p("g")) == errno.EACCES
    assert util.errno_of(write_file, m.p("h"), b"x") == errno.EACCES
    assert util.errno_of(os.listdir, m.path) == errno.EACCES
    m.unmount()
    assert TOKEN not in m.log_text()


def test_token_file_readable_by_others_is_refused(acl_server, workdir):
    tf = os.path.join(workdir, "token")
    write_file(tf, TOKEN.encode() + b"\n")
    os.chmod(tf, 0o644)
    err = mount_fails(acl_server.url, env={"CONSUL_HTTP_TOKEN_FILE": tf})
    assert "chmod 600" in err and TOKEN not in err, err


def test_unreachable_agent_fails_the_mount_and_lazy_mounts(workdir):
    url = "consul://127.0.0.1:%d" % servers.free_port()     # nothing listens there
    err = mount_fails(url, opts=["timeout=1s"])
    assert "cannot reach the store" in err and "-o lazy" in err, err
    m = mount(url, opts=["lazy", "timeout=1s"])
    m.allow_log(r"kvfs: WARN: consul: ")
    assert m.health()["status"] == "down"
    assert util.errno_of(read_file, m.p("f")) == errno.EIO


def test_missing_tls_file_fails_the_mount(server):
    for opt in ("cacert", "cert", "key"):
        err = mount_fails(server.url.replace("consul:", "consul+https:"),
                          opts=["%s=/nonexistent/ca.pem" % opt])
        assert opt in err and "/nonexistent/ca.pem" in err, err
    err = mount_fails(server.url, env={"CONSUL_CACERT": "/nonexistent/ca.pem"})
    assert "cacert" in err, err


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
    err = mount_fails(server.url + "/?dc=elsewhere", opts=["timeout=2s"])
    assert "No path to datacenter" in err, err
    m = mount(server.url + "/?dc=elsewhere", opts=["timeout=2s", "lazy"])
    m.allow_log(r"kvfs: WARN:.*No path to datacenter")
    assert util.errno_of(read_file, m.p("f")) == errno.EIO
    assert m.health()["status"] != "ok"


def test_url_path_is_a_key_prefix(server):
    raw = consul.Raw(server.url)
    raw.put_many({b"app/conf/x": b"1", b"other": b"2"})
    m = mount(server.url + "/app/conf")
    assert os.listdir(m.path) == ["x"]
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
    assert sorted(os.listdir(m.bpath)) == sorted(names)
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


def test_value_too_large_for_a_transaction_body_is_efbig_not_a_crash(server):
    # "a/%/b" is the key "a//b": its empty segment keeps it off the URL
    # path, so it travels in a /v1/txn body, and 400 KiB of base64 does not
    # fit in one (512 KiB).  The daemon once crashed here, reading an
    # uninitialised pointer; -o debug leaves a stack on which that is likely.
    m = util.Mount(server.url, opts=["debug"]).start()
    src = os.path.join(m.path + "-src")
    write_file(src, os.urandom(400 * 1024))
    os.makedirs(m.p("a", "%"))
    for name in "bcdef":        # the garbage differs from call to call
        r = util.run(["cp", src, m.p("a", "%", name)])
        assert m.proc.poll() is None, "the daemon died"
        assert r.returncode != 0 and b"too large" in r.stderr, r.stderr
    assert m.health()["status"] == "ok"
    write_file(m.p("a", "%", "b"), b"small")
    assert consul.Raw(server.url).get(b"a//b") == b"small"


def test_no_transactions_claimed_and_large_renames_apply_in_chunks(server):
    # Consul refuses transactions of more than 64 operations: kvfs says so in
    # .health and hands the backend chunks it can apply atomically.
    m = mount(server.url)
    h = m.health()
    caps = h["capabilities"]
    assert "transactions" not in caps and "cas" in caps and "ordered" in caps, h
    os.mkdir(m.p("d"))
    for i in range(100):                       # a rename of 200 operations
        write_file(m.p("d", "f%03d" % i), b"%d" % i)
    os.rename(m.p("d"), m.p("e"))
    raw = consul.Raw(server.url)
    assert sorted(k for k in raw.items() if not k.endswith(b"/")) == \
        sorted(b"e/f%03d" % i for i in range(100))
    assert raw.get(b"e/f042") == b"42"


def test_test_server_enforces_consuls_transaction_limits(server):
    """The limits kvfs relies on are Consul's (agent/txn_endpoint.go): 64
    operations (maxTxnOps) and a 512 KiB body (txn_max_req_len)."""
    def txn(ops):
        body = json.dumps([{"KV": {"Verb": "set", "Key": "t/%d" % i,
                                   "Value": base64.b64encode(v).decode()}}
                           for i, v in enumerate(ops)]).encode()
        req = urllib.request.Request("http://127.0.0.1:%d/v1/txn" % server.port, data=body,
                                     method="PUT")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    assert txn([b"x"] * 64) == 200
    assert txn([b"x"] * 65) == 413
    assert txn([os.urandom(380 * 1024)]) == 200
    assert txn([os.urandom(390 * 1024)]) == 413      # 520 KiB of base64
