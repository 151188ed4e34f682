"""What only the mysql backend has: its URL and credential rules, the
table other MariaDB/MySQL clients see, and key order with NUL and high
bytes.

One real MariaDB (tests/servers/mysql.py) serves the module; the tests
skip unless kvfs was built with the mysql backend.  The password tests use
the user kvfs_pw, which has a password: a mount works only if the password
really reached the server.
"""
import errno
import os
import threading

import pytest

import util
from servers import mysql as my

pytestmark = pytest.mark.skipif("mysql" not in util.compiled_backends(),
                                reason="kvfs built without the mysql backend")

NOCACHE = ["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"]


@pytest.fixture(scope="module")
def server():
    srv = my.start(util.new_temp_dir("kvfs-my-", keep=True))
    yield srv
    srv.stop()


@pytest.fixture
def table(request):
    """A table name of this test's own."""
    return "t_" + request.node.name.replace("test_", "")[:40].replace("-", "_").lower()


@pytest.fixture
def home(workdir):
    """An empty HOME, so that no ~/.my.cnf of the machine is read."""
    return workdir


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
    return "mysql://%s@127.0.0.1:%d/%s" % (my.PW_USER, srv.port, my.DB)


def root_sql(srv, sql):
    return my.client(["--socket=" + srv.sock, "-uroot", my.DB], sql)


def assert_secret_nowhere(m, secret):
    """Not on kvfs's command line (ps), in its log or in .health."""
    with open("/proc/%d/cmdline" % m.proc.pid, "rb") as f:
        assert secret.encode() not in f.read()
    assert secret.encode() not in util.read_file(m.p(".health"))
    m.unmount()
    assert secret not in m.log_text()


@pytest.mark.parametrize("url", [
    "mysql://kvfs_pw:s3cr3tpw@127.0.0.1:1/db",
    "mariadb://kvfs_pw:s3cr3tpw@127.0.0.1:1/db",
])
def test_password_in_url_is_refused_with_one_clear_line(url):
    r = run_kvfs(url)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "MYSQL_PWD" in err and "option" in err, err
    assert "s3cr3tpw" not in err + r.stdout.decode()


def test_bad_table_name_is_one_clear_line():
    for name in ("kv;drop", "1kv", "a-b", "x" * 65, "kv`x"):
        r = run_kvfs("mysql://kvfs@127.0.0.1:1/db", "table=" + name)
        err = r.stderr.decode()
        assert r.returncode != 0, name
        assert len(err.strip().splitlines()) == 1, err
        assert "bad table name" in err, err


def test_bad_url_is_one_clear_line():
    for url in ("mysql:nohost", "mysql://", "mysql://127.0.0.1:99999/db",
                "mysql://127.0.0.1/db?ssl=1", "mysql://127.0.0.1:x/db", "mysql://h/a/b"):
        r = run_kvfs(url)
        err = r.stderr.decode()
        assert r.returncode == 1, url
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("url", [
    "mysql://kvfs_pw@x:s3cr3tpw@127.0.0.1:1/db",     # a second '@': not a user "kvfs_pw"
    "mysql://kvfs_pw:s3cr3tpw@x@127.0.0.1:1/db",
    "mysql://kvfs_pw@127.0.0.1:1/db%00s3cr3tpw",
])
def test_malformed_url_is_refused_without_repeating_it(url):
    r = run_kvfs(url)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "s3cr3tpw" not in err + r.stdout.decode(), err


def test_percent_encoded_user_and_database_reach_the_server(server, home):
    url = "mysql://kvfs%%5Fpw@127.0.0.1:%d/kvfs%%5Ftest" % server.port
    m = util.Mount(url, env={"MYSQL_PWD": my.PASSWORD, "HOME": home}).start()
    util.write_file(m.p("pct"), b"x")
    assert my.Raw(server.url).get(b"pct") == b"x"


def test_password_from_mysql_pwd_reaches_the_server(server, home):
    m = util.Mount(pw_url(server), env={"MYSQL_PWD": my.PASSWORD, "HOME": home}).start()
    util.write_file(m.p("f"), b"secret data")
    assert util.read_file(m.p("f")) == b"secret data"
    assert m.health()["status"] == "ok"
    assert_secret_nowhere(m, my.PASSWORD)


def test_password_from_option_file_option_reaches_the_server(server, workdir, home):
    cnf = os.path.join(workdir, "kvfs.cnf")
    util.write_file(cnf, ("[client]\npassword=%s\n" % my.PASSWORD).encode())
    os.chmod(cnf, 0o600)
    m = util.Mount(pw_url(server), opts=["option_file=" + cnf],
                   env={"MYSQL_PWD": None, "HOME": home}).start()
    util.write_file(m.p("g"), b"x")
    assert util.read_file(m.p("g")) == b"x"
    assert_secret_nowhere(m, my.PASSWORD)


def test_password_from_home_my_cnf_reaches_the_server(server, home):
    cnf = os.path.join(home, ".my.cnf")
    util.write_file(cnf, ("[client]\npassword=%s\n" % my.PASSWORD).encode())
    os.chmod(cnf, 0o600)
    m = util.Mount(pw_url(server), env={"MYSQL_PWD": None, "HOME": home}).start()
    util.write_file(m.p("h"), b"y")
    assert util.read_file(m.p("h")) == b"y"
    assert_secret_nowhere(m, my.PASSWORD)


def test_wrong_or_missing_password_fails_to_mount_with_one_line(server, home):
    for env in ({"MYSQL_PWD": "wrong-pw", "HOME": home}, {"MYSQL_PWD": None, "HOME": home}):
        r = run_kvfs(pw_url(server), env=env)
        err = r.stderr.decode()
        assert r.returncode == 1
        assert len(err.strip().splitlines()) == 1, err
        assert "refused the credentials" in err and "Access denied" in err, err
        assert "wrong-pw" not in err


def test_wrong_password_is_eacces_on_every_operation(server, home):
    m = util.Mount(pw_url(server), opts=["lazy"] + NOCACHE,
                   env={"MYSQL_PWD": "wrong-pw", "HOME": home}).start()
    m.allow_log(r"kvfs: ERROR: mysql: the store refused the credentials")
    util.assert_errno(errno.EACCES, util.read_file, m.p("f"))
    util.assert_errno(errno.EACCES, util.write_file, m.p("f"), b"x")
    util.assert_errno(errno.EACCES, os.listdir, m.path)
    util.assert_errno(errno.EACCES, os.unlink, m.p("f"))
    h = m.health()
    assert h["status"] == "down" and "Access denied" in repr(h), h
    assert "wrong-pw" not in repr(h)


@pytest.mark.parametrize("option", ["ssl_ca", "ssl_cert", "ssl_key", "option_file"])
def test_missing_file_option_fails_the_mount_with_one_line(server, option):
    r = run_kvfs(server.url, "%s=/nonexistent/file.pem" % option)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert len(err.strip().splitlines()) == 1, err
    assert option in err and "/nonexistent/file.pem" in err, err


def test_keys_written_with_the_mariadb_client_show_up(server):
    keys = {b"cli/a": b"one", b"cli/dir/b": b"\x00\x01two\xff", b"cli/e": b""}
    my.Raw(server.url).put_many(keys)
    m = util.Mount(server.url, opts=NOCACHE + ["root=cli"]).start()
    assert sorted(os.listdir(m.bpath)) == [b"a", b"dir", b"e"]
    assert util.read_file(m.p("dir/b")) == b"\x00\x01two\xff"
    assert os.stat(m.p("dir/b")).st_size == 6
    assert util.read_file(m.p("e")) == b""
    util.write_file(m.p("dir/c"), b"from kvfs")
    assert my.Raw(server.url).get(b"cli/dir/c") == b"from kvfs"
    os.unlink(m.p("a"))
    assert my.Raw(server.url).get(b"cli/a") is None


def test_rows_without_ver_or_sz_from_other_clients_work(server, table):
    # a table made by hand, as small as kvfs can use: k, v, ver
    root_sql(server, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (k VARBINARY(200) PRIMARY KEY, "
                     "v LONGBLOB NOT NULL, ver BIGINT NOT NULL DEFAULT 1);\n"
                     "INSERT INTO %s (k, v) VALUES ('hand/x', 'by hand');\n"
             % (table, table, table))
    m = util.Mount(server.url, opts=NOCACHE + ["table=" + table]).start()
    assert os.listdir(m.p("hand")) == [b"x"]
    assert os.stat(m.p("hand/x")).st_size == 7
    assert util.read_file(m.p("hand/x")) == b"by hand"
    # the column's width is the key limit
    util.assert_errno(errno.ENAMETOOLONG, util.write_file, m.p("a" * 201), b"")
    util.write_file(m.p("a" * 200), b"fits")
    m.unmount()
    root_sql(server, "DROP TABLE %s;\n" % table)


def test_table_is_created_if_missing_with_the_documented_columns(server, table):
    root_sql(server, "DROP TABLE IF EXISTS %s;\n" % table)
    m = util.Mount(server.url, opts=["table=" + table]).start()
    util.write_file(m.p("k"), b"v")
    cols = root_sql(server, "SELECT CONCAT(COLUMN_NAME, ' ', COLUMN_TYPE, ' ', COLUMN_KEY) "
                            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '%s' AND "
                            "TABLE_NAME = '%s' ORDER BY ORDINAL_POSITION;\n" % (my.DB, table))
    assert cols.split("\n")[:4] == ["k varbinary(3072) PRI", "v longblob ", "ver bigint(20) ",
                                    "sz bigint(20) "], cols
    assert my.Raw(server.url, table=table).get(b"k") == b"v"
    assert my.Raw(server.url).get(b"k") is None
    m.unmount()
    root_sql(server, "DROP TABLE %s;\n" % table)


def test_table_without_our_columns_is_one_clear_line(server, table):
    root_sql(server, "DROP TABLE IF EXISTS %s; CREATE TABLE %s (name TEXT);\n" % (table, table))
    r = run_kvfs(server.url, "table=" + table)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert len(err.strip().splitlines()) == 1 and "lacks the columns" in err, err
    root_sql(server, "DROP TABLE %s;\n" % table)


def test_nul_space_and_high_byte_keys_list_in_byte_order(server):
    keys = {b"o/\x00": b"0", b"o/\x00\x00": b"00", b"o/\x01": b"1", b"o/\x01\x02": b"12",
            b"o/A": b"A", b"o/A ": b"A-space", b"o/\x7f": b"7f", b"o/\x80": b"80",
            b"o/\xc3\xa9": b"e-acute", b"o/\xff": b"ff", b"o/\xff\x00": b"ff00"}
    raw = my.Raw(server.url)
    raw.put_many(keys)
    assert list(raw.items(b"o/")) == sorted(keys)    # VARBINARY: bytes, no pad
    m = util.Mount(server.url, opts=NOCACHE + ["root=o"]).start()
    files, dirs = util.walk_tree(m.path)
    want_files, want_dirs = util.expected_tree({k[2:]: v for k, v in keys.items()})
    assert files == want_files
    assert dirs == want_dirs


def test_value_limit_follows_max_allowed_packet(server):
    m = util.Mount(server.url, opts=["root=packet"]).start()
    facts = repr(m.health())
    assert "67108864" in facts                     # the server's --max-allowed-packet=64M
    util.write_file(m.p("f"), b"old")
    big = b"x" * (64 << 20)
    util.assert_errno(errno.EFBIG, util.write_file, m.p("f"), big)
    assert util.read_file(m.p("f")) == b"old"


def test_health_reports_server_facts_and_writes_nothing(server):
    m = util.Mount(server.url, opts=["root=healthcheck"]).start()
    before = my.Raw(server.url).items()
    h = m.health()
    assert h["status"] == "ok"
    assert "MariaDB" in repr(h) and my.DB in repr(h)
    assert my.Raw(server.url).items() == before


def test_server_down_at_mount_fails_the_mount_with_one_line():
    import servers
    r = run_kvfs("mysql://kvfs@127.0.0.1:%d/db" % servers.free_port(), "timeout=1s")
    err = r.stderr.decode()
    assert r.returncode == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "cannot reach the store" in err and "-o lazy" in err, err


def test_server_down_at_a_lazy_mount_mounts_and_health_says_down():
    import servers
    port = servers.free_port()
    m = util.Mount("mysql://kvfs@127.0.0.1:%d/db" % port,
                   opts=["lazy", "timeout=1s", "health_timeout=3s"]).start()
    m.allow_log(r"kvfs: ERROR: mysql: Can't connect")
    util.assert_errno(errno.EIO, util.read_file, m.p("f"))
    h = m.health()
    assert h["status"] == "down" and "Can't connect" in repr(h), h


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
    assert util.read_file(m.p("f")) == b"before"
    util.write_file(m.p("f"), b"after")
    assert util.read_file(m.p("f")) == b"after"
    with pytest.raises(OSError) as e:
        util.read_file(m.p("missing"))
    assert e.value.errno == errno.ENOENT


def test_a_restart_during_a_call_costs_a_delay_not_an_error(server):
    # The call meets a refused connection until the server is back.
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
