"""The mysql backend's server for the suite and its raw access.

start() runs a real MariaDB from Debian (mariadb-server): mariadb-install-db
in workdir, then mariadbd on a free 127.0.0.1 port with its socket in
workdir, as root (--user=root: the suite runs as root, and the data stays
in workdir).  Grants stay on: the suite's own mounts use the user `kvfs`
without a password (URL mysql://kvfs@127.0.0.1:PORT/kvfs_test); the user
`kvfs_pw` has the password PASSWORD below, for the tests that check a
password reaches the server from MYSQL_PWD or an option file.

Raw is the mariadb command-line client, the store's own, reading and
writing rows exactly as kvfs does (docs/backends.md), binary-safe through
HEX()/UNHEX().
"""
import os
import re
import subprocess
import sys

import servers
from servers.cli_session import MARK, CliSession

MARIADB = "/usr/bin/mariadb"
DB = "kvfs_test"
USER = "kvfs"
PW_USER = "kvfs_pw"
PASSWORD = "kvfs-test-secret-2b9c"
DEFAULT_TABLE = "kv"
CREATE = ("CREATE TABLE IF NOT EXISTS `%s` (k VARBINARY(3072) NOT NULL PRIMARY KEY, "
          "v LONGBLOB NOT NULL, ver BIGINT NOT NULL DEFAULT (FLOOR(RAND() * 9e18) + 1), "
          "sz BIGINT AS (LENGTH(v)) STORED) ENGINE=InnoDB")


class MyServer(servers.Server):
    """start() returns when a session runs a query, not when the port opens."""

    def __init__(self, argv, port, url, log_path, sock):
        self.sock = sock          # start(), run by the constructor, asks on it
        super().__init__(argv, port, url, log_path)

    def query_argv(self):
        return [MARIADB, "--no-defaults", "--batch", "--skip-column-names",
                "--socket=" + self.sock, "-uroot", "-e", "SELECT 1"]


def start(workdir):
    data = os.path.join(workdir, "mariadb-data")
    sock = os.path.join(workdir, "mariadb.sock")
    r = subprocess.run(["mariadb-install-db", "--no-defaults", "--datadir=" + data,
                        "--user=root", "--auth-root-authentication-method=normal",
                        "--skip-test-db", "--skip-name-resolve"],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    if r.returncode != 0:
        raise RuntimeError("mariadb-install-db failed: %s%s" % (
            r.stdout.decode(errors="replace")[-2000:], r.stderr.decode(errors="replace")))
    port = servers.free_port()
    argv = ["/usr/sbin/mariadbd", "--no-defaults", "--datadir=" + data, "--socket=" + sock,
            "--port=%d" % port, "--bind-address=127.0.0.1", "--user=root",
            "--skip-name-resolve", "--pid-file=" + os.path.join(workdir, "mariadb.pid"),
            "--max-connections=300", "--max-allowed-packet=64M",
            "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=64M",
            "--innodb-flush-log-at-trx-commit=2", "--skip-log-bin"]
    srv = MyServer(argv, port, "mysql://%s@127.0.0.1:%d/%s" % (USER, port, DB),
                   os.path.join(workdir, "mariadb.log"), sock)
    srv.keeps_data = True
    # Users and the password go in on stdin, not on a command line.
    client(["--socket=" + sock, "-uroot"],
           "CREATE DATABASE IF NOT EXISTS %s;\n"
           "CREATE USER '%s'@'%%';\n"
           "CREATE USER '%s'@'%%' IDENTIFIED BY '%s';\n"
           "GRANT ALL ON %s.* TO '%s'@'%%';\n"
           "GRANT ALL ON %s.* TO '%s'@'%%';\n"
           % (DB, USER, PW_USER, PASSWORD, DB, USER, DB, PW_USER))
    return srv


def client(args, sql, env=None):
    """Run sql through the mariadb client; its output (batch, no headers)."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([MARIADB, "--no-defaults", "--batch", "--skip-column-names", "--raw"]
                       + args, input=sql.encode(), capture_output=True, timeout=60, env=e)
    if r.returncode != 0:
        raise RuntimeError("mariadb: %s" % r.stderr.decode(errors="replace"))
    return r.stdout.decode()


def parse_url(url):
    m = re.match(r"^(?:mysql|mariadb)://(?:([^@/]*)@)?([^:/]+)(?::(\d+))?/([^?/]+)$", url)
    if not m:
        raise ValueError("not a mysql URL: %r" % url)
    return m.group(1) or USER, m.group(2), int(m.group(3) or 3306), m.group(4)


def _hex(b):
    return "UNHEX('%s')" % b.hex()


class Raw:
    """The mariadb client on the store's table, everything through hex: one
    client session for the Raw's life (see cli_session.py for why)."""

    def __init__(self, url, table=DEFAULT_TABLE):
        user, host, port, db = parse_url(url)
        self.table = table
        self.session = CliSession([MARIADB, "--no-defaults", "--batch", "--skip-column-names",
                                   "--raw", "--unbuffered", "-h", host, "-P", str(port),
                                   "-u", user, "--protocol=tcp", db], "SELECT '%s';" % MARK)

    def sql(self, text):
        return "\n".join(self.session.query(text))

    def put_many(self, items):
        if not items:
            return
        rows = ",\n".join("(%s, %s, FLOOR(RAND() * 9e18) + 1)" % (_hex(k), _hex(v))
                          for k, v in items.items())
        self.sql((CREATE % self.table) + ";\n"
                 "INSERT INTO `%s` (k, v, ver) VALUES %s ON DUPLICATE KEY UPDATE "
                 "v = VALUES(v), ver = VALUES(ver);\n" % (self.table, rows))

    def refuse(self, suffix):
        """Make the server refuse to write any key ending in suffix (a CHECK
        constraint: error 4025); refuse(None) lifts it."""
        self.sql((CREATE % self.table) + ";\n"
                 "ALTER TABLE `%s` DROP CONSTRAINT IF EXISTS kvfs_test_refused;\n"
                 % self.table)
        if suffix:
            self.sql("ALTER TABLE `%s` ADD CONSTRAINT kvfs_test_refused CHECK "
                     "(RIGHT(k, %d) <> %s);\n" % (self.table, len(suffix), _hex(suffix)))

    def get(self, key):
        out = self.sql("SELECT CONCAT('x', HEX(v)) FROM `%s` WHERE k = %s;\n"
                       % (self.table, _hex(key))).strip()
        return bytes.fromhex(out[1:]) if out.startswith("x") else None

    def delete(self, key):
        out = self.sql("DELETE FROM `%s` WHERE k = %s; SELECT ROW_COUNT();\n"
                       % (self.table, _hex(key))).strip()
        return out == "1"

    def items(self, prefix=b""):
        cond = "k >= %s" % _hex(prefix)
        hi = bytearray(prefix)
        while hi and hi[-1] == 0xff:
            hi.pop()
        if hi:
            hi[-1] += 1
            cond += " AND k < %s" % _hex(bytes(hi))
        out = self.sql("SELECT CONCAT('x', HEX(k), ' ', HEX(v)) FROM `%s` WHERE %s ORDER BY k;\n"
                       % (self.table, cond))
        res = {}
        for line in out.splitlines():
            if line.startswith("x"):
                k, _, v = line[1:].partition(" ")
                res[bytes.fromhex(k)] = bytes.fromhex(v)
        return res

    def snapshots(self):
        """A function giving {key: value} of one consistent snapshot, and a
        close function: one SELECT is one consistent read (InnoDB MVCC)."""
        return self.items, lambda: None


if __name__ == "__main__":
    print(Raw(sys.argv[1]).sql(sys.argv[2]))
