"""What only the postgresql backend has: its URL and credential rules, the
table other PostgreSQL clients see, and key order with NUL and high bytes.

One real PostgreSQL 15 (tests/servers/postgresql.py) serves the module;
the tests skip unless kvfs was built with the postgresql backend.  The
password tests use the role kvfs_pw, which pg_hba.conf makes authenticate
with SCRAM: a mount works only if the password really reached the server.
"""
import errno
import os
import threading

import pytest

import util
from servers import postgresql as pg

pytestmark = pytest.mark.skipif("postgresql" not in util.compiled_backends(),
                                reason="kvfs built without the postgresql backend")

NOCACHE = ["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"]


@pytest.fixture(scope="module")
def server():
    srv = pg.start(util.new_temp_dir("kvfs-pg-", keep=True))
    yield srv
    srv.stop()


@pytest.fixture
def table(request):
    """A table name of this test's own (dropped after it)."""
    return "t_" + request.node.name.replace("test_", "")[:40].replace("-", "_").lower()


def run_kvfs(url, *opts, env=None):
    mnt = util.new_temp_dir("kvfs-mnt-")
    cmd = [util.KVFS_BIN, "-f"] + (["-o", ",".join(opts)] if opts else []) + [url, mnt]
    e = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return util.run(cmd, timeout=30, env=e)


def pw_url(srv):
    return "postgresql://%s@127.0.0.1:%d/%s" % (pg.PW_USER, srv.port, pg.DB)


def assert_secret_nowhere(m, secret):
    """Not on kvfs's command line (ps), in its log or in .health."""
    with open("/proc/%d/cmdline" % m.proc.pid, "rb") as f:
        assert secret.encode() not in f.read()
    assert secret.encode() not in util.read_file(m.p(".health"))
    m.unmount()
    assert secret not in m.log_text()


@pytest.mark.parametrize("url", [
    "postgresql://kvfs_pw:s3cr3tpw@127.0.0.1:1/db",
    "postgres://kvfs_pw:s3cr3tpw@127.0.0.1:1/db",
    "postgresql://kvfs_pw@127.0.0.1:1/db?password=s3cr3tpw",
])
def test_password_in_url_is_refused_with_one_clear_line(url):
    r = run_kvfs(url)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "PGPASSWORD" in err and ".pgpass" in err, err
    assert "s3cr3tpw" not in err + r.stdout.decode()


def test_bad_table_name_is_one_clear_line():
    for name in ("kv;drop", "1kv", "a-b", "x" * 64, "kv\"x"):
        r = run_kvfs("postgresql://postgres@127.0.0.1:1/db", "table=" + name)
        err = r.stderr.decode()
        assert r.returncode != 0, name
        assert len(err.strip().splitlines()) == 1, err
        assert "bad table name" in err, err


def test_bad_url_is_one_clear_line():
    for url in ("postgresql:nohost", "postgresql://127.0.0.1:99999999/db",
                "postgresql://127.0.0.1/db?nosuchparam=1"):
        r = run_kvfs(url)
        err = r.stderr.decode()
        assert r.returncode != 0, url
        assert len(err.strip().splitlines()) == 1, err


def test_password_from_pgpassword_reaches_the_server(server):
    m = util.Mount(pw_url(server), env={"PGPASSWORD": pg.PASSWORD, "PGPASSFILE": None}).start()
    util.write_file(m.p("f"), b"secret data")
    assert util.read_file(m.p("f")) == b"secret data"
    assert m.health()["status"] == "ok"
    assert_secret_nowhere(m, pg.PASSWORD)


def test_password_from_pgpass_file_reaches_the_server(server, workdir):
    passfile = os.path.join(workdir, "pgpass")
    util.write_file(passfile, ("127.0.0.1:%d:%s:%s:%s\n" % (server.port, pg.DB, pg.PW_USER,
                                                           pg.PASSWORD)).encode())
    os.chmod(passfile, 0o600)           # libpq ignores a file others can read
    m = util.Mount(pw_url(server), env={"PGPASSWORD": None, "PGPASSFILE": passfile}).start()
    util.write_file(m.p("g"), b"x")
    assert util.read_file(m.p("g")) == b"x"
    assert_secret_nowhere(m, pg.PASSWORD)


def test_wrong_or_missing_password_fails_to_mount_with_one_line(server, workdir):
    for env in ({"PGPASSWORD": "wrong-pw", "PGPASSFILE": None},
                {"PGPASSWORD": None, "PGPASSFILE": os.path.join(workdir, "none")}):
        r = run_kvfs(pw_url(server), env=env)
        err = r.stderr.decode()
        assert r.returncode == 1
        assert len(err.strip().splitlines()) == 1, err
        assert "refused the credentials" in err and "password" in err, err
        assert "wrong-pw" not in err


def test_wrong_password_is_eacces_on_every_operation(server):
    m = util.Mount(pw_url(server), opts=["lazy"] + NOCACHE,
                   env={"PGPASSWORD": "wrong-pw", "PGPASSFILE": None}).start()
    m.allow_log(r"kvfs: ERROR: postgresql: the store refused the credentials")
    util.assert_errno(errno.EACCES, util.read_file, m.p("f"))
    util.assert_errno(errno.EACCES, util.write_file, m.p("f"), b"x")
    util.assert_errno(errno.EACCES, os.listdir, m.path)
    util.assert_errno(errno.EACCES, os.unlink, m.p("f"))
    h = m.health()
    assert h["status"] == "down" and "password" in repr(h), h
    assert "wrong-pw" not in repr(h)


@pytest.mark.parametrize("where", ["url", "option"])
def test_missing_tls_file_fails_the_mount_with_one_line(server, where):
    url, opts = server.url, []
    if where == "url":
        url += "?sslmode=verify-full&sslrootcert=/nonexistent/root.crt"
    else:
        opts = ["sslcert=/nonexistent/client.crt"]
    r = run_kvfs(url, *opts)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "/nonexistent/" in err and "No such file" in err, err


def test_keys_written_with_psql_show_up(server):
    keys = {b"psql/a": b"one", b"psql/dir/b": b"\x00\x01two\xff", b"psql/e": b""}
    pg.Raw(server.url).put_many(keys)
    m = util.Mount(server.url, opts=NOCACHE + ["root=psql"]).start()
    assert sorted(os.listdir(m.bpath)) == [b"a", b"dir", b"e"]
    assert util.read_file(m.p("dir/b")) == b"\x00\x01two\xff"
    assert os.stat(m.p("dir/b")).st_size == 6
    assert util.read_file(m.p("e")) == b""
    # and what kvfs writes, psql reads
    util.write_file(m.p("dir/c"), b"from kvfs")
    assert pg.Raw(server.url).get(b"psql/dir/c") == b"from kvfs"
    os.unlink(m.p("a"))
    assert pg.Raw(server.url).get(b"psql/a") is None


def test_table_is_created_if_missing_with_the_documented_columns(server, table):
    base = server.url.rsplit("/", 1)[0] + "/" + pg.DB
    pg.psql(base, "DROP TABLE IF EXISTS %s;\n" % table)
    m = util.Mount(server.url, opts=["table=" + table]).start()
    util.write_file(m.p("k"), b"v")
    cols = pg.psql(base, "SELECT column_name || ' ' || data_type FROM information_schema.columns "
                         "WHERE table_name = '%s' ORDER BY ordinal_position;\n" % table)
    assert cols.split("\n")[:3] == ["k bytea", "v bytea", "ver bigint"], cols
    pk = pg.psql(base, "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON "
                       "a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                       "WHERE i.indrelid = '%s'::regclass AND i.indisprimary;\n" % table)
    assert pk.strip() == "k"
    assert pg.Raw(server.url, table=table).get(b"k") == b"v"
    assert pg.Raw(server.url).get(b"k") is None       # not in the default table
    m.unmount()
    pg.psql(base, "DROP TABLE %s;\n" % table)


def test_table_without_our_columns_is_one_clear_line(server, table):
    base = server.url.rsplit("/", 1)[0] + "/" + pg.DB
    pg.psql(base, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (name text);\n" % (table, table))
    r = run_kvfs(server.url, "table=" + table)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert len(err.strip().splitlines()) == 1 and "lacks the columns" in err, err
    pg.psql(base, "DROP TABLE %s;\n" % table)


def test_nul_and_high_byte_keys_list_in_byte_order(server):
    keys = {b"o/\x00": b"0", b"o/\x00\x00": b"00", b"o/\x01": b"1", b"o/\x01\x02": b"12",
            b"o/A": b"A", b"o/\x7f": b"7f", b"o/\x80": b"80", b"o/\xc3\xa9": b"e-acute",
            b"o/\xff": b"ff", b"o/\xff\x00": b"ff00"}
    raw = pg.Raw(server.url)
    raw.put_many(keys)
    assert list(raw.items(b"o/")) == sorted(keys)       # bytea order is byte order
    m = util.Mount(server.url, opts=NOCACHE + ["root=o"]).start()
    files, dirs = util.walk_tree(m.path)
    want_files, want_dirs = util.expected_tree({k[2:]: v for k, v in keys.items()})
    assert files == want_files
    assert dirs == want_dirs


def test_health_reports_server_facts_and_writes_nothing(server):
    m = util.Mount(server.url, opts=["root=healthcheck"]).start()
    before = pg.Raw(server.url).items()
    h = m.health()
    assert h["status"] == "ok"
    text = repr(h)
    assert "15." in text and pg.DB in text
    assert pg.Raw(server.url).items() == before


def test_server_down_at_mount_fails_the_mount_with_one_line():
    import servers
    r = run_kvfs("postgresql://postgres@127.0.0.1:%d/db" % servers.free_port(), "timeout=1s")
    err = r.stderr.decode()
    assert r.returncode == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "cannot reach the store" in err and "-o lazy" in err, err


def test_server_down_at_a_lazy_mount_mounts_and_health_says_down():
    import servers
    port = servers.free_port()
    m = util.Mount("postgresql://postgres@127.0.0.1:%d/db" % port,
                   opts=["lazy", "timeout=1s", "health_timeout=3s"]).start()
    m.allow_log(r"kvfs: ERROR: postgresql: connection to server")
    util.assert_errno(errno.EIO, util.read_file, m.p("f"))
    h = m.health()
    assert h["status"] == "down" and "refused" in repr(h), h


def test_refusal_at_mount_is_one_clear_line(server):
    r = run_kvfs(server.url.rsplit("/", 1)[0] + "/no_such_db")
    err = r.stderr.decode()
    assert r.returncode != 0
    assert len(err.strip().splitlines()) == 1 and "no_such_db" in err, err


def test_stale_connections_after_a_restart_are_replaced(server):
    m = util.Mount(server.url, opts=NOCACHE + ["root=restart"]).start()
    util.write_file(m.p("f"), b"before")
    server.stop()
    server.start()
    # the pooled connection died with the old server: no error for the user
    assert util.read_file(m.p("f")) == b"before"
    util.write_file(m.p("f"), b"after")
    assert util.read_file(m.p("f")) == b"after"
    with pytest.raises(OSError) as e:
        util.read_file(m.p("missing"))
    assert e.value.errno == errno.ENOENT


def test_a_restart_during_a_call_costs_a_delay_not_an_error(server):
    # The call meets a refused connection, then (the server's port open
    # before it takes sessions) "the database system is starting up": both
    # pass, and are tried again within the timeout.
    m = util.Mount(server.url, opts=NOCACHE + ["root=restart2", "timeout=30s"]).start()
    util.write_file(m.p("f"), b"kept")
    server.stop()
    t = threading.Timer(1.0, server.start, kwargs={"ready": False})
    t.start()
    try:
        assert util.read_file(m.p("f")) == b"kept"
    finally:
        t.join()
        server.wait_ready()
    util.write_file(m.p("g"), b"new")
    assert util.read_file(m.p("g")) == b"new"
