"""What only the mongodb backend has: its URL and credential rules, the
document layout other MongoDB clients see, and key order with NUL and
high bytes.

Each test runs its own protocol test server (tests/servers/mongodb.py),
so they skip unless kvfs was built with the mongodb backend.  Password
checks use the PLAIN mechanism, the one the test server implements
(it has no SCRAM): the password really travels to the server there.
"""
import errno
import os

import pytest

import servers
import util
from servers import mongodb as mg

pytestmark = pytest.mark.skipif("mongodb" not in util.compiled_backends(),
                                reason="kvfs built without the mongodb backend")

NOCACHE = ["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"]


@pytest.fixture
def server(workdir):
    srv = mg.start(workdir)
    yield srv
    srv.stop()


@pytest.fixture
def auth_server(workdir):
    users = os.path.join(workdir, "users")
    util.write_file(users, b"kvuser:right-pw\n")
    srv = mg.start(workdir, users_file=users)
    yield srv
    srv.stop()


def run_kvfs(url, *opts, env=None):
    mnt = util.new_temp_dir("kvfs-mnt-")
    cmd = [util.KVFS_BIN, "-f"] + (["-o", ",".join(opts)] if opts else []) + [url, mnt]
    e = dict(os.environ, **(env or {}))
    return util.run(cmd, timeout=30, env={k: v for k, v in e.items() if v is not None})


def test_password_in_url_is_refused_with_one_clear_line():
    r = run_kvfs("mongodb://kvuser:s3cr3tpw@127.0.0.1:1/db")
    err = r.stderr.decode()
    assert r.returncode != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "KVFS_MONGODB_PASSWORD" in err and "password_file" in err, err
    assert "s3cr3tpw" not in err + r.stdout.decode()


def test_password_without_user_is_refused(workdir):
    r = run_kvfs("mongodb://127.0.0.1:1/db", env={"KVFS_MONGODB_PASSWORD": "pw"})
    assert r.returncode != 0
    assert "names no user" in r.stderr.decode()


def test_missing_password_file_is_a_clear_error(workdir):
    r = run_kvfs("mongodb://kvuser@127.0.0.1:1/db",
                 "password_file=" + os.path.join(workdir, "nope"))
    assert r.returncode != 0
    assert "password_file" in r.stderr.decode()


def test_bad_options_are_one_line_errors():
    for opts in (["w=lots"], ["journal=maybe"], ["collection=a$b"]):
        r = run_kvfs("mongodb://127.0.0.1:1/db", *opts)
        assert r.returncode != 0, opts
        assert len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
    r = run_kvfs("mongodb://127.0.0.1:1/d b")
    assert r.returncode != 0 and "bad URL" in r.stderr.decode()


def auth_url(srv):
    return "mongodb://kvuser@127.0.0.1:%d/kvfs_test?authMechanism=PLAIN" % srv.port


def test_password_from_env_reaches_the_server(auth_server):
    m = util.Mount(auth_url(auth_server), env={"KVFS_MONGODB_PASSWORD": "right-pw"}).start()
    util.write_file(m.p("f"), b"secret data")
    assert util.read_file(m.p("f")) == b"secret data"
    h = util.read_file(m.p(".health"))
    assert b'"ok"' in h and b"right-pw" not in h
    m.unmount()
    assert "right-pw" not in m.log_text()
    assert "authenticated user 'kvuser'" in open(auth_server.log_path).read()


def test_password_from_file_reaches_the_server(auth_server, workdir):
    pw = os.path.join(workdir, "pw")
    util.write_file(pw, b"right-pw\n")
    os.chmod(pw, 0o600)
    m = util.Mount(auth_url(auth_server), opts=["password_file=" + pw],
                   env={"KVFS_MONGODB_PASSWORD": None}).start()
    util.write_file(m.p("f"), b"x")
    assert util.read_file(m.p("f")) == b"x"


def test_password_file_others_may_read_is_refused(auth_server, workdir):
    pw = os.path.join(workdir, "pw")
    util.write_file(pw, b"right-pw\n")
    os.chmod(pw, 0o644)
    r = run_kvfs(auth_url(auth_server), "password_file=" + pw)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, lines
    assert "chmod 600" in lines[0] and "right-pw" not in lines[0], lines


def one_line_failure(r):
    lines = [ln for ln in r.stderr.decode(errors="replace").splitlines() if "mongoc:" not in ln]
    assert r.returncode == 1 and len(lines) == 1, lines
    return lines[0]


def test_wrong_password_fails_the_mount(auth_server):
    r = run_kvfs(auth_url(auth_server), "timeout=2s", env={"KVFS_MONGODB_PASSWORD": "wrong"})
    line = one_line_failure(r)
    assert "refused the credentials" in line and "-o lazy" in line, line
    assert "wrong" not in line, line


def test_missing_credentials_fail_the_mount(auth_server):
    """ping needs no login: the probe reads the collection too."""
    r = run_kvfs("mongodb://127.0.0.1:%d/kvfs_test" % auth_server.port, "timeout=2s",
                 env={"KVFS_MONGODB_PASSWORD": None})
    assert "refused the credentials" in one_line_failure(r)


def test_wrong_password_with_lazy_mounts_and_gives_eacces(auth_server):
    m = util.Mount(auth_url(auth_server), opts=["timeout=2s", "lazy"],
                   env={"KVFS_MONGODB_PASSWORD": "wrong"}).start()
    m.allow_log(r"kvfs: ERROR: mongodb: .*(uthentication|Authentication failed)")
    util.assert_errno(errno.EACCES, util.read_file, m.p("f"))
    assert m.health()["status"] != "ok"


def test_unreachable_server_fails_the_mount_unless_lazy():
    port = servers.free_port()
    url = "mongodb://127.0.0.1:%d/kvfs_test" % port
    line = one_line_failure(run_kvfs(url, "timeout=1s"))
    assert "cannot reach the store" in line and "127.0.0.1:%d" % port in line, line
    m = util.Mount(url, opts=["timeout=1s", "health_timeout=1s", "lazy"] + NOCACHE).start()
    m.allow_log(r"kvfs: (ERROR|WARN): mongodb")
    util.assert_errno(errno.EIO, util.read_file, m.p("f"))


def test_missing_tls_file_fails_the_mount(workdir):
    missing = os.path.join(workdir, "no-ca.pem")
    line = one_line_failure(run_kvfs("mongodb://127.0.0.1:1/db?tls=true&tlsCAFile=" + missing))
    assert "tlsCAFile" in line and missing in line, line


def test_documents_are_laid_out_as_documented(server):
    m = util.Mount(server.url).start()
    os.mkdir(m.p("dir"))
    util.write_file(m.p("dir/file"), b"\x00\x01value\xff")
    raw = mg.Raw(server.url)
    doc = raw.coll.find_one({"_id": "dir/file"})
    assert doc is not None, list(raw.coll.find())
    assert doc["v"] == b"\x00\x01value\xff"          # BinData subtype 0 decodes to bytes
    assert type(doc["ver"]).__name__ == "Int64" and doc["ver"] > 0
    assert set(doc) == {"_id", "v", "ver"}


def test_nul_and_high_byte_keys_list_in_byte_order(server):
    keys = {b"k/\x00": b"0", b"k/\x00\x00": b"00", b"k/\x01": b"1", b"k/\x01\x02": b"12",
            b"k/\x02": b"2", b"k/A": b"A", b"k/\x7f": b"7f", b"k/\x80": b"80",
            b"k/\xc3\xa9": b"e-acute", b"k/\xff": b"ff", b"k/\xff\x00": b"ff00"}
    raw = mg.Raw(server.url)
    raw.put_many(keys)
    # the server's own _id order is the keys' byte order
    assert list(raw.items(b"k/")) == sorted(keys)
    m = util.Mount(server.url, opts=NOCACHE).start()
    files, dirs = util.walk_tree(m.path)
    want_files, want_dirs = util.expected_tree(keys)
    assert files == want_files
    assert dirs == want_dirs


def test_documents_written_by_other_clients_show_up(server):
    raw = mg.Raw(server.url)
    # by hand, as in mongosh: a plain string _id, no ver, even a string value
    raw.coll.insert_many([{"_id": "hand/bin", "v": b"from pymongo"},
                          {"_id": "hand/str", "v": "a string"},
                          {"_id": 12345, "v": b"not a kvfs key: ignored"},
                          {"_id": "hand/\x01bad", "v": b"bad escape: skipped"}])
    m = util.Mount(server.url, opts=NOCACHE).start()
    m.allow_log(r"kvfs: WARN: mongodb: list: skipping")
    assert sorted(os.listdir(m.p("hand"))) == [b"bin", b"str"]
    assert util.read_file(m.p("hand/bin")) == b"from pymongo"
    assert util.read_file(m.p("hand/str")) == b"a string"
    assert os.stat(m.p("hand/bin")).st_size == len(b"from pymongo")
    util.write_file(m.p("hand/bin"), b"rewritten")      # a document without ver
    assert raw.get(b"hand/bin") == b"rewritten"


def test_collection_option_picks_the_collection(server):
    m = util.Mount(server.url, opts=["collection=other"]).start()
    util.write_file(m.p("f"), b"in other")
    raw = mg.Raw(server.url)
    assert raw.get(b"f") is None
    assert raw.client["kvfs_test"]["other"].find_one({"_id": "f"})["v"] == b"in other"


def test_health_reports_server_facts(server):
    m = util.Mount(server.url).start()
    h = m.health()
    assert h["status"] == "ok"
    text = repr(h)
    assert "6.0.0-kvfs-test-server" in text and "kvfs_test" in text
