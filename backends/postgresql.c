/*
 * postgresql.c - a table in PostgreSQL through libpq:
 * "postgresql://[user@]host[:port]/dbname[?param=value...]" (or postgres://).
 *
 * libpq parses the URL itself, so every connection parameter it documents
 * works (sslmode, application_name, ...).  A password is never taken from
 * the URL, which would put it on the command line: libpq finds it where
 * psql does, in PGPASSWORD or the password file (~/.pgpass, PGPASSFILE).
 *
 * Every key is one row of a table (default "kv", -o table=NAME), created
 * when missing:
 *
 *     k bytea PRIMARY KEY, v bytea NOT NULL, ver bigint NOT NULL
 *
 * bytea compares bytewise (memcmp, then length), so the primary key's
 * btree is the keys' byte order and scan() is one range query "k >= $1
 * AND k < $2 ORDER BY k LIMIT $3" with binary parameters, never a LIKE
 * pattern.  PostgreSQL re-checks a cas's UPDATE ... WHERE ver = $4 on the
 * latest row version.
 *
 * libpq is blocking, so every round trip runs in nonblocking mode and polls
 * the socket: a wait for the server longer than the timeout drops the
 * connection and fails the call, while a large value that keeps moving
 * may take longer.  The server also gets a statement_timeout, so it gives
 * up on what the client gave up on.  Failures that pass (sql.c) are a
 * restart, "the database system is starting up" and a deadlock.
 */
#include <endian.h>
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sql.h"

/*
 * A btree index entry holds at most 2704 bytes (PostgreSQL 12+, 8 kB pages),
 * the bytea header and tuple overhead included; incompressible keys longer
 * than about 2690 bytes cannot be inserted.  2048 stays clear of it.
 */
#define PG_MAX_KEY 2048
/* bytea takes up to 1 GB, but fs/ holds a whole value in memory and the
 * server needs several copies of it; the same 128 MiB as lmdb. */
#define PG_MAX_VALUE ((size_t)128 << 20)

/* Type OIDs of the parameters (pg_type.h, stable since forever). */
#define BYTEAOID 17
#define INT8OID 20

/*
 * The connection keywords, their values in sql.str (libpq skips a NULL one):
 * fallback_application_name, dbname (the URL, expanded by libpq) and from
 * PG_TLS on the files libpq reads for TLS, given as -o options, URL
 * parameters or in the environment.  Those are checked at open, so a typo
 * fails the mount instead of every call.
 */
#define PG_TLS 2
static const char *const pg_keys[] = { "fallback_application_name", "dbname", "sslrootcert",
				       "sslcert", "sslkey", "sslcrl", NULL };
static const char *const pg_tls_env[] = { "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL" };

/* The types of the parameters: $1 key, $2 value, $3 new version, $4 old
 * one; a scan's $1 from, $2 to, $3 limit. */
static const Oid pg_types[] = { BYTEAOID, BYTEAOID, INT8OID, INT8OID };

/* The statements; the table is a plain identifier: double quotes make it one to SQL. */
static const char *const pg_sql[SQL_NSTMT] = {
	[SQL_GET] = "SELECT v, ver FROM \"%1$s\" WHERE k = $1",
	[SQL_STAT] = "SELECT k, %2$s FROM \"%1$s\" WHERE k = $1",
	[SQL_SET] = "INSERT INTO \"%1$s\" (k, v, ver) VALUES ($1, $2, $3) "
		    "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, ver = EXCLUDED.ver",
	[SQL_DEL] = "DELETE FROM \"%1$s\" WHERE k = $1",
	[SQL_CAS_NEW] = "INSERT INTO \"%1$s\" (k, v, ver) VALUES ($1, $2, $3) "
			"ON CONFLICT (k) DO NOTHING",
	[SQL_CAS_UPD] = "UPDATE \"%1$s\" SET v = $2, ver = $3 WHERE k = $1 AND ver = $4",
	[SQL_SCAN] = "SELECT k, %2$s FROM \"%1$s\" WHERE k >= $1 ORDER BY k LIMIT $3",
	[SQL_SCAN_TO] = "SELECT k, %2$s FROM \"%1$s\" WHERE k >= $1 AND k < $2 "
			"ORDER BY k LIMIT $3",
	[SQL_HEALTH] = "SELECT current_setting('server_version'), 0 UNION ALL "
		       "SELECT current_database()::text, 1 UNION ALL SELECT current_user::text, 2 "
		       "UNION ALL SELECT pg_is_in_recovery()::text, 3 UNION ALL "
		       "SELECT current_setting('synchronous_commit'), 4 UNION ALL "
		       "SELECT current_setting('fsync'), 5",
	[SQL_CHECK] = "SELECT k, v, ver FROM \"%1$s\" LIMIT 0",
	[SQL_CREATE] = "CREATE TABLE IF NOT EXISTS \"%1$s\" (k bytea PRIMARY KEY, "
		       "v bytea NOT NULL, ver bigint NOT NULL "
		       "DEFAULT (floor(random() * 9e18)::bigint + 1))",
};

/* ---- Bytes and messages ---- */

/* A binary int8 (or shorter) column, big-endian. */
static uint64_t pg_int(const PGresult *res, int row, int col)
{
	const char *p = PQgetvalue(res, row, col);
	uint64_t v = 0;

	for (int i = 0; i < PQgetlength(res, row, col); i++)
		v = v << 8 | (unsigned char)p[i];
	return v;
}

/* Where a verbose libpq message has its SQLSTATE (":  28P01: "), or NULL. */
static const char *pg_msg_state(const char *m)
{
	const char *st = m ? strstr(m, ":  ") : NULL;

	if (st && strspn(st + 3, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 5 &&
	    st[8] == ':' && st[9] == ' ')
		return st;
	return NULL;
}

/* The first line of a libpq message, without the SQLSTATE that verbose
 * messages carry ("FATAL:  28P01: password ..."), for one-line logs. */
static const char *pg_msg(const char *m, char *buf, size_t len)
{
	const char *st = pg_msg_state(m);
	size_t n = m ? strcspn(m, "\n") : 0;

	if (st && st + 10 < m + n)
		snprintf(buf, len, "%.*s%.*s", (int)(st + 3 - m), m, (int)(m + n - st - 10), st + 10);
	else
		snprintf(buf, len, "%.*s", (int)n, m ? m : "");
	return buf;
}

static bool pg_is(const PGresult *res, const char *state)
{
	const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	return s && strcmp(s, state) == 0;
}

/*
 * The errno of a failed statement, from its SQLSTATE.  Failures that pass
 * (-EAGAIN): the connection is going (class 08, shutdown 57P01, crash
 * 57P02, still starting 57P03) or a transaction lost a deadlock or a
 * serialization conflict and was rolled back.
 */
static int pg_errno(const PGresult *res)
{
	const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	if (st && (strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 ||
		   strcmp(st, "57P02") == 0 || strcmp(st, "57P03") == 0 ||
		   strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0))
		return -EAGAIN;
	return pg_is(res, "53100") ? -ENOSPC            /* disk_full */
	       : pg_is(res, "25006") ? -EROFS           /* read_only_sql_transaction */
	       : pg_is(res, "42501") ? -EACCES          /* insufficient_privilege */
	       : pg_is(res, "54000") ? -ENAMETOOLONG    /* program_limit_exceeded: index row size */
	       : pg_is(res, "42P01") ? -ENOENT          /* undefined_table */
	       : pg_is(res, "42703") ? -EINVAL          /* undefined_column */
	       : pg_is(res, "42P07") || pg_is(res, "23505") ? -EEXIST  /* made meanwhile */
	       : -EIO;
}

/* ---- One round trip ---- */

/*
 * Wait until the socket is ready for ev.  The wait for the server is
 * bounded by *deadline; the caller moves it on whenever data moved, so the
 * timeout bounds a silent server, not a large transfer.  0, -ETIMEDOUT or
 * -EIO.
 */
static int pg_wait(PGconn *c, short ev, int64_t deadline)
{
	struct pollfd pfd = { .fd = PQsocket(c), .events = ev };
	int left, rc;

	if (pfd.fd < 0)
		return -EIO;
	for (;;) {
		if (!(left = kv_ms_left(deadline)))
			return -ETIMEDOUT;
		rc = poll(&pfd, 1, left);
		if (rc > 0)
			return 0;
		if (rc < 0 && errno != EINTR)
			return -EIO;
	}
}

/*
 * Send r's statement with its binary parameters (pg_types; the health
 * statement, the setup and text take none) and collect its binary result
 * into *out (which may be an error result).  -ETIMEDOUT when the server
 * was silent for timeout_ms, -EAGAIN when the connection failed; then
 * *broken is set.
 */
static int pg_run(PGconn *c, const struct sql_req *r, int timeout_ms, PGresult **out,
		  bool *broken)
{
	static const int binary[4] = { 1, 1, 1, 1 };
	uint64_t ver = htobe64(r->id == SQL_SCAN || r->id == SQL_SCAN_TO ? r->max : r->ver);
	uint64_t old = htobe64(r->old);
	const char *vals[4] = { r->klen ? r->key : "", r->vlen ? r->val : "", (const char *)&ver,
				(const char *)&old };
	int lens[4] = { (int)r->klen, (int)r->vlen, 8, 8 };
	int64_t deadline = kv_deadline(timeout_ms);
	PGresult *res = NULL, *next;
	char buf[200];
	int rc = 0;

	*out = NULL;
	if (!PQsendQueryParams(c, r->sql, r->id < SQL_HEALTH ? 4 : 0, pg_types, vals, lens,
			       binary, 1))
		goto fail;
	while ((rc = PQflush(c)) == 1) {
		if ((rc = pg_wait(c, POLLOUT | POLLIN, deadline)) || !PQconsumeInput(c))
			goto fail;
		deadline = kv_deadline(timeout_ms);  /* it moved */
	}
	if (rc < 0)
		goto fail;
	for (;;) {
		while (PQisBusy(c)) {
			if ((rc = pg_wait(c, POLLIN, deadline)) || !PQconsumeInput(c))
				goto fail;
			deadline = kv_deadline(timeout_ms);
		}
		if (!(next = PQgetResult(c)))
			break;
		if (res && PQresultStatus(res) == PGRES_FATAL_ERROR)
			PQclear(next);  /* keep the first error */
		else {
			PQclear(res);
			res = next;
		}
	}
	if (!res || PQstatus(c) != CONNECTION_OK)
		goto fail;
	*out = res;
	return 0;
fail:
	PQclear(res);
	*broken = true;
	if (rc == -ETIMEDOUT) {
		kv_why_set("no answer from the server for %d ms "
			 "(-o timeout raises it)", timeout_ms);
		return -ETIMEDOUT;
	}
	kv_why_set("%s", pg_msg(PQerrorMessage(c), buf, sizeof buf));
	return -EAGAIN;
}

/* ---- Requests ---- */

/* Run r on conn: one statement, its rows handed to sql_row() or the rows
 * it changed counted. */
static int pg_exec(struct sql_store *s, void *conn, struct sql_req *r, bool *broken)
{
	char buf[200];
	PGresult *res;
	int rc = pg_run(conn, r, s->timeout_ms, &res, broken);

	if (rc)
		return rc;
	if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK) {
		*broken = PQstatus(conn) != CONNECTION_OK;
		rc = sql_fail(r, pg_errno(res), pg_msg(PQresultErrorMessage(res), buf, sizeof buf));
	} else if (PQresultStatus(res) == PGRES_COMMAND_OK) {
		r->rows = strtoull(PQcmdTuples(res), NULL, 10);  /* "" for a text statement */
	} else {
		for (int i = 0; i < PQntuples(res) && !rc; i++) {
			rc = kv_buf_set(&r->col, PQgetvalue(res, i, 0), PQgetlength(res, i, 0));
			if (!rc)
				rc = sql_row(r, pg_int(res, i, 1));
		}
		rc = rc < 0 ? rc : 0;
	}
	PQclear(res);
	return rc;
}

/* ---- Connections ---- */

/* The errno of a connection that failed: the SQLSTATE of a server's
 * refusal, from the verbose message, or libpq's own verdict. */
static int pg_connect_errno(PGconn *c, bool before_network)
{
	const char *state = pg_msg_state(PQerrorMessage(c));

	state = state ? state + 3 : "";      /* five characters, then ':' */
	if (strncmp(state, "28P01", 5) == 0 || strncmp(state, "28000", 5) == 0 ||
	    PQconnectionNeedsPassword(c))
		return -EACCES;              /* wrong password, no pg_hba.conf entry */
	if (strncmp(state, "3D000", 5) == 0)
		return -ENOENT;              /* no such database */
	if (before_network && !state[0])
		return -EINVAL;              /* the parameters, e.g. a port out of range */
	return -EIO;                         /* refused, reset, starting up: try again */
}

/* The pool's connect: libpq reads the URL, PGPASSWORD and ~/.pgpass. */
static int pg_connect(void *ctx, int64_t deadline, void **out)
{
	struct sql_store *s = ctx;
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	char setting[64], buf[200];
	struct sql_req set = { .s = s, .id = SQL_TEXT, .sql = setting, .what = setting };
	bool broken = false;
	int rc = 0;
	PGconn *c = PQconnectStartParams(pg_keys, (const char *const *)s->str, 1);

	if (!c)
		return -ENOMEM;
	PQsetErrorVerbosity(c, PQERRORS_VERBOSE);  /* messages carry the SQLSTATE */
	if (PQstatus(c) == CONNECTION_BAD)
		rc = pg_connect_errno(c, true);
	while (!rc && st != PGRES_POLLING_OK) {
		if (st == PGRES_POLLING_FAILED || PQstatus(c) == CONNECTION_BAD)
			rc = pg_connect_errno(c, false);
		else if (pg_wait(c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline))
			break;
		else
			st = PQconnectPoll(c);
	}
	if (rc) {
		kv_why_set("%s", pg_msg(PQerrorMessage(c), buf, sizeof buf));
		kv_log(KV_LOG_DEBUG, "postgresql: %s", kv_why());
	} else if (st != PGRES_POLLING_OK) {
		if (!kv_why()[0])  /* else the last attempt's reason says more */
			kv_why_set("no answer to the connection within the timeout "
				   "(-o timeout raises it)");
		rc = -EIO;
	} else {
		PQsetErrorVerbosity(c, PQERRORS_DEFAULT);
		/* The server abandons what the client stopped waiting for. */
		snprintf(setting, sizeof setting, "SET statement_timeout = %d", s->timeout_ms);
		if (PQsetnonblocking(c, 1) != 0 || pg_exec(s, c, &set, &broken))
			rc = -EIO;
	}
	if (rc || (rc = sql_connected(s, c))) {
		PQfinish(c);
		return rc;
	}
	*out = c;
	return 0;
}

/* An idle connection is still good if the server has not said anything:
 * a restart or shutdown closes it, and the socket turns readable. */
static bool pg_usable(void *ctx, void *conn)
{
	(void)ctx;
	if (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE)
		return false;
	/* Something to read may also be a notice: then the connection stays good. */
	return kv_socket_idle(PQsocket(conn)) ||
	       (PQconsumeInput(conn) && PQstatus(conn) == CONNECTION_OK && !PQisBusy(conn));
}

static void pg_disconnect(void *ctx, void *conn)
{
	(void)ctx;
	PQfinish(conn);
}

static const struct kv_pool_ops pg_pool_ops = {
	.connect = pg_connect, .usable = pg_usable, .close = pg_disconnect,
};

/* ---- open ---- */

/*
 * What can be known without the server: libpq can parse the URL, it holds
 * no password (that would be on the command line and in `ps`), and the
 * TLS files it names (or -o options or the environment name) are there.
 * Then the connection keywords.
 */
static int pg_parse(struct sql_store *s, const struct kv_open_args *a, char *err, size_t errlen)
{
	PQconninfoOption *opts, *o;
	const char *file;
	char *msg = NULL, buf[200];
	int rc = 0;

	if (strncmp(a->location ? a->location : "", "//", 2) != 0) {
		snprintf(err, errlen,
			 "postgresql: expected postgresql://[user@]host[:port]/dbname, got '%s'", a->url);
		return -EINVAL;
	}
	if (!(opts = PQconninfoParse(a->url, &msg))) {
		snprintf(err, errlen, "postgresql: bad URL: %s",
			 msg ? pg_msg(msg, buf, sizeof buf) : "out of memory");
		PQfreemem(msg);
		return -EINVAL;
	}
	/* expand_dbname: the URL in dbname is parsed as a whole connection
	 * string, and the keywords after it override what it says. */
	if (!(s->str[0] = strdup("kvfs")) || !(s->str[1] = strdup(a->url)))
		rc = -ENOMEM;
	for (o = opts; o->keyword && !rc; o++) {
		if (strcmp(o->keyword, "password") == 0 && o->val && *o->val) {
			snprintf(err, errlen, "postgresql: a password in the URL would show in ps: "
				 "remove it and put it in PGPASSWORD or ~/.pgpass (PGPASSFILE)");
			rc = -EINVAL;
		}
		for (int i = PG_TLS; pg_keys[i] && !rc; i++) {
			if (strcmp(o->keyword, pg_keys[i]) != 0)
				continue;
			if ((file = kv_option_get(a, pg_keys[i])))
				rc = (s->str[i] = strdup(file)) ? 0 : -ENOMEM;
			else if (!(file = o->val))
				file = getenv(pg_tls_env[i - PG_TLS]);
			if (!rc && file && *file && strcmp(file, "system") != 0 &&
			    (rc = kv_check_file(file, pg_keys[i], buf, sizeof buf)))
				snprintf(err, errlen, "postgresql: %s", buf);
		}
	}
	PQconninfoFree(opts);
	return rc;
}

static const struct sql_client pg_client = {
	.name = "postgresql", .max_table = 63, .sql = pg_sql, .size_expr = "octet_length(v)::int8",
	.columns = "k bytea, v bytea, ver bigint", .product = "PostgreSQL ",
	.facts = { "server_version", "database", "user", "in_recovery", "synchronous_commit",
		   "fsync" },
	.pool = &pg_pool_ops, .parse = pg_parse, .exec = pg_exec,
};

static int pg_open(const struct kv_open_args *args, struct kv_store **out, char *err,
		   size_t errlen)
{
	return sql_open(args, &pg_client, out, err, errlen);
}

/*
 * table: the table of keys in the URL's database (default kv), created if
 * missing.  sslrootcert, sslcert, sslkey, sslcrl: libpq's TLS files, as
 * the URL parameters of the same names.
 */
static const char *const pg_options[] = { "table", "sslrootcert", "sslcert", "sslkey", "sslcrl",
					  NULL };
static const char *const pg_aliases[] = { "postgres", NULL };

const struct kv_backend kv_backend_postgresql = {
	.scheme = "postgresql",
	.aliases = pg_aliases,
	.summary = "a table in PostgreSQL (libpq; password from PGPASSWORD or ~/.pgpass)",
	.usage = "postgresql://[user@]host[:port]/dbname",
	.options = pg_options,
	.limits = { .max_key = PG_MAX_KEY, .max_value = PG_MAX_VALUE },
	.open = pg_open,
	SQL_BACKEND_OPS,
};
