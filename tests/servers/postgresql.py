"""The postgresql backend's server for the suite and its raw access.

start() runs a real PostgreSQL 15 from Debian (postgresql-15): initdb in
workdir, then the postmaster on a free 127.0.0.1 port with its socket in
workdir.  PostgreSQL refuses to run as root, so both run as the `postgres`
system user (setpriv, no PAM session) on directories it owns.

Authentication (pg_hba.conf): trust for the superuser `postgres`, the
suite's own mounts (URL postgresql://postgres@127.0.0.1:PORT/kvfs_test);
SCRAM for the role `kvfs_pw` (password PASSWORD below), for the tests that
check a password reaches the server from PGPASSWORD or ~/.pgpass.

Raw is psql, the store's own client, reading and writing rows exactly as
kvfs does (docs/backends.md): binary-safe through hex (decode/encode).
"""
import os
import pwd
import re
import signal
import subprocess
import sys

import servers
from servers.cli_session import MARK, CliSession

PGBIN = "/usr/lib/postgresql/15/bin"
PSQL = "/usr/bin/psql"
DB = "kvfs_test"
PW_USER = "kvfs_pw"
PASSWORD = "kvfs-test-secret-7f3a"
DEFAULT_TABLE = "kv"


def _as_postgres():
    pw = pwd.getpwnam("postgres")
    return ["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid, "--init-groups",
            "--"]


def _children(pid):
    """Processes whose parent is pid (the postmaster's backends)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


def _signal_all(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


class PgServer(servers.Server):
    """pause and resume stop the postmaster and every backend (each backend
    runs in a session of its own, so the process group is not enough, and a
    stopped postmaster alone would leave established connections answering).

    start() returns when a session runs a query: the port opens while the
    server still answers "the database system is starting up"."""

    def query_argv(self):
        return [PSQL, "-X", "-q", "-A", "-t", "-d",
                "postgresql://postgres@127.0.0.1:%d/postgres" % self.port, "-c", "SELECT 1"]

    def pause(self):
        _signal_all([self.proc.pid], signal.SIGSTOP)      # first: no new backends
        _signal_all(_children(self.proc.pid), signal.SIGSTOP)

    def resume(self):
        _signal_all(_children(self.proc.pid), signal.SIGCONT)
        _signal_all([self.proc.pid], signal.SIGCONT)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            kids = _children(self.proc.pid)
            _signal_all([self.proc.pid] + kids, signal.SIGKILL)
            _signal_all([self.proc.pid] + kids, signal.SIGCONT)
            self.proc.wait(timeout=30)

    def stop(self):
        """Fast shutdown (SIGINT): clients are disconnected, not waited for."""
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def start(workdir):
    os.chmod(workdir, 0o755)      # the postgres user walks into it
    data = os.path.join(workdir, "pgdata")
    sock = os.path.join(workdir, "pgsock")
    pw = pwd.getpwnam("postgres")
    for d in (data, sock):
        os.makedirs(d, exist_ok=True)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        os.chmod(d, 0o700)
    log = os.path.join(workdir, "postgresql.log")
    r = subprocess.run(_as_postgres() + [PGBIN + "/initdb", "-D", data, "-U", "postgres",
                                         "-A", "trust", "-E", "UTF8", "--no-sync",
                                         "--locale=C"],
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    if r.returncode != 0:
        raise RuntimeError("initdb failed: %s" % r.stderr.decode(errors="replace"))
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("local all all trust\n"
                "host all %s 127.0.0.1/32 scram-sha-256\n"
                "host all all 127.0.0.1/32 trust\n" % PW_USER)
    os.chown(os.path.join(data, "pg_hba.conf"), pw.pw_uid, pw.pw_gid)
    port = servers.free_port()
    argv = _as_postgres() + [PGBIN + "/postgres", "-D", data, "-p", str(port), "-k", sock,
                             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
                             "-c", "shared_buffers=64MB", "-c", "fsync=off",
                             "-c", "full_page_writes=off", "-c", "logging_collector=off"]
    srv = PgServer(argv, port, "postgresql://postgres@127.0.0.1:%d/%s" % (port, DB), log)
    srv.keeps_data = True
    srv.sock = sock
    # The role's password goes in on stdin, not on a command line.
    psql(srv.url.rsplit("/", 1)[0] + "/postgres",
         "CREATE ROLE %s LOGIN PASSWORD '%s';\nCREATE DATABASE %s OWNER %s;\n"
         % (PW_USER, PASSWORD, DB, PW_USER))
    return srv


def psql(url, sql, env=None):
    """Run sql through psql on url; its output (unaligned, tuples only)."""
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run([PSQL, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url],
                       input=sql.encode(), capture_output=True, timeout=60, env=e)
    if r.returncode != 0:
        raise RuntimeError("psql: %s" % r.stderr.decode(errors="replace"))
    return r.stdout.decode()


def _split_url(url):
    """(libpq URL without our own scheme alias, table) from a kvfs URL."""
    url = re.sub(r"^postgres(ql)?:", "postgresql:", url)
    return url, DEFAULT_TABLE


def _hex(b):
    return "decode('%s', 'hex')" % b.hex()


class Raw:
    """psql on the store's table, everything through hex: one psql session
    for the Raw's life (see cli_session.py for why)."""

    def __init__(self, url, table=DEFAULT_TABLE):
        self.url, _ = _split_url(url)
        self.table = table
        self.session = CliSession(["stdbuf", "-oL", PSQL, "-X", "-q", "-A", "-t", "-v",
                                   "ON_ERROR_STOP=1", "-d", self.url], "SELECT '%s';" % MARK)

    def sql(self, text):
        return "\n".join(self.session.query(text))

    def put_many(self, items):
        if not items:
            return
        rows = ",\n".join("(%s, %s, floor(random() * 9e18)::bigint + 1)" % (_hex(k), _hex(v))
                          for k, v in items.items())
        self.sql("CREATE TABLE IF NOT EXISTS %s (k bytea PRIMARY KEY, v bytea NOT NULL, "
             "ver bigint NOT NULL DEFAULT (floor(random() * 9e18)::bigint + 1));\n"
             "INSERT INTO %s (k, v, ver) VALUES %s ON CONFLICT (k) DO UPDATE "
             "SET v = EXCLUDED.v, ver = EXCLUDED.ver;\n" % (self.table, self.table, rows))

    def refuse(self, suffix):
        """Make the server refuse to write any key ending in suffix (a CHECK
        constraint: SQLSTATE 23514); refuse(None) lifts it."""
        self.put_many({b"kvfs-test-refuse": b""})     # the table exists
        self.sql("DELETE FROM %s WHERE k = %s;\n"
                 "ALTER TABLE %s DROP CONSTRAINT IF EXISTS kvfs_test_refused;\n"
                 % (self.table, _hex(b"kvfs-test-refuse"), self.table))
        if suffix:
            self.sql("ALTER TABLE %s ADD CONSTRAINT kvfs_test_refused CHECK "
                     "(substring(k from length(k) - %d) <> %s);\n"
                     % (self.table, len(suffix) - 1, _hex(suffix)))

    def get(self, key):
        out = self.sql("SELECT 'x' || encode(v, 'hex') FROM %s WHERE k = %s;\n"
                   % (self.table, _hex(key))).strip()
        return bytes.fromhex(out[1:]) if out.startswith("x") else None

    def delete(self, key):
        out = self.sql("DELETE FROM %s WHERE k = %s RETURNING 1;\n"
                   % (self.table, _hex(key))).strip()
        return out == "1"

    def items(self, prefix=b""):
        # a range on the primary key, like kvfs's own listing
        cond = "k >= %s" % _hex(prefix)
        hi = bytearray(prefix)
        while hi and hi[-1] == 0xff:
            hi.pop()
        if hi:
            hi[-1] += 1
            cond += " AND k < %s" % _hex(bytes(hi))
        out = self.sql("SELECT 'x' || encode(k, 'hex') || ' ' || encode(v, 'hex') FROM %s "
                   "WHERE %s ORDER BY k;\n" % (self.table, cond))
        res = {}
        for line in out.splitlines():
            if line.startswith("x"):
                k, _, v = line[1:].partition(" ")
                res[bytes.fromhex(k)] = bytes.fromhex(v)
        return res

    def snapshots(self):
        """A function giving {key: value} of one consistent snapshot, and a
        close function: one SELECT sees one snapshot (MVCC)."""
        return self.items, lambda: None


if __name__ == "__main__":
    print(psql(sys.argv[1], sys.argv[2]))
