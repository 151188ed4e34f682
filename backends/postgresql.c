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
 * pattern.  ver is a random 63-bit number written with each value: cas
 * compares it in the UPDATE's WHERE, which PostgreSQL re-checks on the
 * latest row version, so a single statement is an atomic cas.
 *
 * libpq is blocking, so every round trip runs in nonblocking mode and polls
 * the socket: a wait for the server longer than the timeout drops the
 * connection and fails the call, while a large value that keeps moving
 * may take longer.  The server also gets a statement_timeout, so it gives
 * up on what the client gave up on.  Connections come from the toolkit's
 * pool; a failure that passes (a restart, "the database system is starting
 * up", a deadlock) is tried again until the timeout.  open() only checks
 * the URL and the files it names; the table is checked (created if
 * missing) on the first connection.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "toolkit.h"

extern const struct kv_backend kv_backend_postgresql;  /* defined at the bottom */

/*
 * A btree index entry holds at most 2704 bytes (PostgreSQL 12+, 8 kB pages),
 * the bytea header and tuple overhead included; incompressible keys longer
 * than about 2690 bytes cannot be inserted.  2048 stays clear of it.
 */
#define PG_MAX_KEY 2048
/* bytea takes up to 1 GB, but fs/ holds a whole value in memory and the
 * server needs several copies of it; the same 128 MiB as lmdb. */
#define PG_MAX_VALUE ((size_t)128 << 20)
#define PG_POOL 8            /* connections at most, shared by the FUSE threads */
#define PG_DEFAULT_TABLE "kv"
#define PG_NTLS 4            /* the TLS file options below */

/* Type OIDs of the parameters (pg_type.h, stable since forever). */
#define BYTEAOID 17
#define INT8OID 20

/* Files libpq reads for TLS: -o options, URL parameters or the environment.
 * Checked at open, so a typo fails the mount instead of every call. */
static const char *const pg_tls[PG_NTLS][2] = {
	{ "sslrootcert", "PGSSLROOTCERT" }, { "sslcert", "PGSSLCERT" },
	{ "sslkey", "PGSSLKEY" }, { "sslcrl", "PGSSLCRL" },
};

struct pg_store {
	struct kv_store base;
	/* connection keywords: fallback_application_name, dbname (the URL,
	 * expanded by libpq) and the TLS options given with -o */
	const char *keys[3 + PG_NTLS];
	char *vals[3 + PG_NTLS];
	char *table_name;
	int timeout_ms;
	struct kv_once ready;     /* the table checked or created */
	struct kv_pool pool;      /* of PGconn */
	char sql_get[160], sql_stat[160], sql_set[256], sql_del[160], sql_cas_new[200];
	char sql_cas_upd[200], sql_scan[200], sql_scan_to[200], sql_check[160], sql_create[300];
};

/* One statement: up to four binary parameters. */
struct pg_stmt {
	const char *sql;
	int n;
	const Oid *types;
	const char *vals[4];
	int lens[4];
	int format;               /* of the result: 1 binary, 0 text */
};

static const Oid pg_key_types[] = { BYTEAOID, BYTEAOID, INT8OID, INT8OID };
static const Oid pg_scan_types[] = { BYTEAOID, INT8OID, BYTEAOID };

/* ---- Bytes ---- */

static void pg_put64(char out[8], uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		out[i] = (char)(v & 0xff);
}

static uint64_t pg_get_be(const char *p, int len)
{
	uint64_t v = 0;

	for (int i = 0; i < len; i++)
		v = v << 8 | (unsigned char)p[i];
	return v;
}

/* A new version: random, nonzero, positive as a bigint. */
static void pg_new_version(char out[8])
{
	uint64_t v = kv_random64() & INT64_MAX;

	pg_put64(out, v ? v : 1);
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

/* Failures that pass: the connection is going (class 08, shutdown 57P01,
 * crash 57P02, still starting 57P03) or a transaction lost a deadlock or a
 * serialization conflict and was rolled back. */
static bool pg_passing(const char *state)
{
	return strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
	       strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0 ||
	       strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0;
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
 * Send one statement and collect its result into *out (which may be an
 * error result).  -ETIMEDOUT when the server was silent for timeout_ms,
 * -EAGAIN when the connection failed; then *broken is set.
 */
static int pg_run(PGconn *c, const struct pg_stmt *q, int timeout_ms, PGresult **out, bool *broken)
{
	static const int binary[4] = { 1, 1, 1, 1 };
	int64_t deadline = kv_deadline(timeout_ms);
	PGresult *res = NULL, *r;
	char buf[200];
	int rc = 0;

	*out = NULL;
	if (!PQsendQueryParams(c, q->sql, q->n, q->types, q->vals, q->lens, binary, q->format))
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
		if (!(r = PQgetResult(c)))
			break;
		if (res && PQresultStatus(res) == PGRES_FATAL_ERROR)
			PQclear(r);  /* keep the first error */
		else {
			PQclear(res);
			res = r;
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

/* The errno of a failed statement (an error result), logged once. */
static int pg_failed(const char *what, const char *key, size_t klen, PGresult *res)
{
	char buf[200];
	int e = -EIO;

	if (pg_is(res, "53100"))         /* disk_full */
		e = -ENOSPC;
	else if (pg_is(res, "25006"))    /* read_only_sql_transaction */
		e = -EROFS;
	else if (pg_is(res, "42501"))    /* insufficient_privilege */
		e = -EACCES;
	else if (pg_is(res, "54000"))    /* program_limit_exceeded: index row size */
		e = -ENAMETOOLONG;
	kv_log(KV_LOG_ERR, "postgresql: %s %s: %s", what, key ? kv_printable(key, klen) : "",
	       pg_msg(PQresultErrorMessage(res), buf, sizeof buf));
	return e;
}

/* ---- Connections ---- */

/* The errno of a connection that failed: the SQLSTATE of a server's
 * refusal, from the verbose message, or libpq's own verdict. */
static int pg_connect_errno(PGconn *c, bool before_network)
{
	const char *st = pg_msg_state(PQerrorMessage(c));
	char state[6] = "";

	if (st)
		snprintf(state, sizeof state, "%.5s", st + 3);
	if (strcmp(state, "28P01") == 0 || strcmp(state, "28000") == 0 ||
	    PQconnectionNeedsPassword(c))
		return -EACCES;              /* wrong password, no pg_hba.conf entry */
	if (strcmp(state, "3D000") == 0)
		return -ENOENT;              /* no such database */
	if (before_network && !state[0])
		return -EINVAL;              /* the parameters, e.g. a port out of range */
	return -EIO;                         /* refused, reset, starting up: try again */
}

/* The first connection checks the table (pg_prepare_table). */
struct pg_ready {
	struct pg_store *s;
	PGconn *c;
};

static int pg_prepare_table(void *arg);

/* The pool's connect: libpq reads the URL, PGPASSWORD and ~/.pgpass. */
static int pg_connect(void *ctx, int64_t deadline, void **out)
{
	struct pg_store *s = ctx;
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	struct pg_stmt q = { .sql = NULL };
	struct pg_ready ready;
	char setting[64], buf[200];
	PGresult *res = NULL;
	bool broken = false;
	int rc = 0;
	PGconn *c = PQconnectStartParams(s->keys, (const char *const *)s->vals, 1);

	if (!c)
		return -ENOMEM;
	PQsetErrorVerbosity(c, PQERRORS_VERBOSE);  /* messages carry the SQLSTATE */
	if (PQstatus(c) == CONNECTION_BAD)
		rc = pg_connect_errno(c, true);
	while (!rc && st != PGRES_POLLING_OK) {
		if (st == PGRES_POLLING_FAILED || PQstatus(c) == CONNECTION_BAD) {
			rc = pg_connect_errno(c, false);
		} else if (pg_wait(c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline)) {
			if (!kv_why()[0])  /* else the last attempt's reason says more */
				kv_why_set("no answer to the connection within the timeout "
					   "(-o timeout raises it)");
			PQfinish(c);
			return -EIO;
		} else
			st = PQconnectPoll(c);
	}
	if (rc) {
		kv_why_set("%s", pg_msg(PQerrorMessage(c), buf, sizeof buf));
		kv_log(KV_LOG_DEBUG, "postgresql: %s", kv_why());
		PQfinish(c);
		return rc;
	}
	PQsetErrorVerbosity(c, PQERRORS_DEFAULT);
	if (PQsetnonblocking(c, 1) != 0) {
		PQfinish(c);
		return -EIO;
	}
	/* The server abandons what the client stopped waiting for. */
	snprintf(setting, sizeof setting, "SET statement_timeout = %d", s->timeout_ms);
	q.sql = setting;
	if ((rc = pg_run(c, &q, s->timeout_ms, &res, &broken)) ||
	    PQresultStatus(res) != PGRES_COMMAND_OK) {
		PQclear(res);
		PQfinish(c);
		return -EIO;
	}
	PQclear(res);
	ready = (struct pg_ready){ s, c };
	if ((rc = kv_once(&s->ready, pg_prepare_table, &ready))) {
		PQfinish(c);
		return rc;
	}
	kv_why_set("%s", "");
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

/* ---- Statements through the pool ---- */

struct pg_call {
	const struct pg_stmt *q;
	int timeout_ms;
	PGresult *res;
};

static int pg_call_on(void *conn, void *arg, bool *broken)
{
	struct pg_call *a = arg;
	const char *state;
	char buf[200];
	int rc = pg_run(conn, a->q, a->timeout_ms, &a->res, broken);

	if (rc)
		return rc == -ETIMEDOUT ? -EIO : rc;
	state = PQresultErrorField(a->res, PG_DIAG_SQLSTATE);
	if (PQresultStatus(a->res) == PGRES_FATAL_ERROR && state && pg_passing(state)) {
		kv_why_set("%s",
			 pg_msg(PQresultErrorMessage(a->res), buf, sizeof buf));
		*broken = PQstatus(conn) != CONNECTION_OK;
		PQclear(a->res);
		a->res = NULL;
		return -EAGAIN;
	}
	return 0;
}

/* One statement; *res is a result to check (PQresultStatus) and clear. */
static int pg_exec(struct pg_store *s, const struct pg_stmt *q, bool idempotent, PGresult **res)
{
	struct pg_call a = { .q = q, .timeout_ms = s->timeout_ms };
	int rc = kv_pool_run(&s->pool, kv_deadline(s->timeout_ms), idempotent, pg_call_on, &a);

	*res = a.res;
	return rc;
}

/* A statement about one key: ($1 = key, $2 = value, $3 = new version, $4 = old). */
static struct pg_stmt pg_key_stmt(const char *sql, int n, const char *key, size_t klen,
				  const char *val, size_t vlen, const char ver[8], const char old[8])
{
	return (struct pg_stmt){ .sql = sql, .n = n, .types = pg_key_types, .format = 1,
				 .vals = { klen ? key : "", vlen ? val : "", ver, old },
				 .lens = { (int)klen, (int)vlen, 8, 8 } };
}

/* ---- get, stat, set, del, cas ---- */

static int pg_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	struct pg_stmt q = pg_key_stmt(s->sql_get, 1, key, klen, NULL, 0, NULL, NULL);
	PGresult *res;
	size_t n;
	int rc = pg_exec(s, &q, true, &res);

	if (rc)
		return rc;
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		rc = pg_failed("get", key, klen, res) == -EACCES ? -EACCES : -EIO;
	else if (PQntuples(res) == 0)
		rc = -ENOENT;
	else {
		n = (size_t)PQgetlength(res, 0, 0);
		if (!(*val = malloc(n + 1)))
			rc = -ENOMEM;
		else {
			memcpy(*val, PQgetvalue(res, 0, 0), n);
			(*val)[n] = '\0';
			*len = n;
			if (version)
				*version = pg_get_be(PQgetvalue(res, 0, 1), 8);
		}
	}
	PQclear(res);
	return rc;
}

static int pg_stat(struct kv_store *st, const char *key, size_t klen, uint64_t *size)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	struct pg_stmt q = pg_key_stmt(s->sql_stat, 1, key, klen, NULL, 0, NULL, NULL);
	PGresult *res;
	int rc = pg_exec(s, &q, true, &res);

	if (rc)
		return rc;
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		rc = pg_failed("stat", key, klen, res) == -EACCES ? -EACCES : -EIO;
	else if (PQntuples(res) == 0)
		rc = -ENOENT;
	else
		*size = pg_get_be(PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0));
	PQclear(res);
	return rc;
}

/* A write's outcome: 0, -ENOENT when it touched no row, or the errno. */
static int pg_write(struct pg_store *s, const struct pg_stmt *q, bool idempotent,
		    const char *what, const char *key, size_t klen)
{
	PGresult *res;
	int rc = pg_exec(s, q, idempotent, &res);

	if (rc)
		return rc;
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = pg_failed(what, key, klen, res);
	else if (strcmp(PQcmdTuples(res), "0") == 0)
		rc = -ENOENT;
	PQclear(res);
	return rc;
}

static int pg_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	char ver[8];
	struct pg_stmt q = pg_key_stmt(s->sql_set, 3, key, klen, val, vlen, ver, NULL);

	pg_new_version(ver);
	return pg_write(s, &q, true, "set", key, klen);
}

static int pg_del(struct kv_store *st, const char *key, size_t klen)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	struct pg_stmt q = pg_key_stmt(s->sql_del, 1, key, klen, NULL, 0, NULL, NULL);
	int rc = pg_write(s, &q, true, "del", key, klen);

	return rc == -ENOENT || rc == 0 || rc == -EACCES ? rc : -EIO;
}

/*
 * One statement each way: version 0 inserts unless the key exists, any
 * other version updates only the row that still carries it.  No row
 * touched means someone else got there first.
 */
static int pg_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	char ver[8], old[8];
	struct pg_stmt q = pg_key_stmt(version ? s->sql_cas_upd : s->sql_cas_new, version ? 4 : 3,
				       key, klen, val, vlen, ver, old);
	int rc;

	if (version > INT64_MAX)
		return -ECANCELED;  /* not a version this backend hands out */
	pg_new_version(ver);
	pg_put64(old, version);
	rc = pg_write(s, &q, false, "cas", key, klen);
	return rc == -ENOENT ? -ECANCELED : rc;
}

/* ---- apply: one transaction ---- */

struct pg_apply_arg {
	struct pg_store *s;
	const struct kv_op *ops;
	size_t n;
};

/* One step of the transaction: 0, -EAGAIN to run it all again, or -errno. */
static int pg_step(PGconn *c, const struct pg_stmt *q, int timeout_ms, bool *broken,
		   const char *key, size_t klen)
{
	struct pg_call a = { .q = q, .timeout_ms = timeout_ms };
	int rc = pg_call_on(c, &a, broken);

	if (!rc && PQresultStatus(a.res) != PGRES_COMMAND_OK)
		rc = pg_failed("apply", key, klen, a.res);
	PQclear(a.res);
	return rc;
}

static int pg_apply_on(void *conn, void *arg, bool *broken)
{
	struct pg_apply_arg *a = arg;
	int tmo = a->s->timeout_ms, rc;
	struct pg_stmt q = { .sql = "BEGIN", .format = 1 };
	char ver[8];

	rc = pg_step(conn, &q, tmo, broken, NULL, 0);
	for (size_t i = 0; i < a->n && !rc; i++) {
		const struct kv_op *op = &a->ops[i];

		if (op->type == KV_OP_DEL)
			q = pg_key_stmt(a->s->sql_del, 1, op->key, op->key_len, NULL, 0, NULL, NULL);
		else
			q = pg_key_stmt(a->s->sql_set, 3, op->key, op->key_len, op->val,
					op->val_len, ver, NULL);
		pg_new_version(ver);
		rc = pg_step(conn, &q, tmo, broken, op->key, op->key_len);
	}
	if (*broken)
		return rc;
	q = (struct pg_stmt){ .sql = rc ? "ROLLBACK" : "COMMIT", .format = 1 };
	if (rc) {
		pg_step(conn, &q, tmo, broken, NULL, 0);
		return rc;
	}
	return pg_step(conn, &q, tmo, broken, NULL, 0);
}

static int pg_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	struct pg_apply_arg a = { .s = s, .ops = ops, .n = n };

	/* Sets are upserts and a missing key's delete is no error here:
	 * running it all again after a lost connection is harmless. */
	return n ? kv_pool_run(&s->pool, kv_deadline(s->timeout_ms), true, pg_apply_on, &a) : 0;
}

/* ---- scan ---- */

static int pg_scan(struct kv_store *st, const char *from, size_t flen, const char *to,
		   size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	char lim[8];
	struct pg_stmt q = { .sql = to ? s->sql_scan_to : s->sql_scan, .n = to ? 3 : 2,
			     .types = pg_scan_types, .format = 1,
			     .vals = { flen ? from : "", lim, to && tlen ? to : "" },
			     .lens = { (int)flen, 8, (int)tlen } };
	PGresult *res;
	int rc, n;

	pg_put64(lim, max);
	if ((rc = pg_exec(s, &q, true, &res)))
		return rc;
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		rc = pg_failed("scan", from, flen, res) == -EACCES ? -EACCES : -EIO;
		PQclear(res);
		return rc;
	}
	n = PQntuples(res);
	for (int i = 0; i < n && !rc; i++)
		rc = cb(ctx, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0),
			pg_get_be(PQgetvalue(res, i, 1), PQgetlength(res, i, 1)));
	PQclear(res);
	return rc < 0 ? rc : 0;
}

/* ---- health ---- */

static int pg_health(struct kv_store *st, struct kv_health *h)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	static const struct pg_stmt q = { .sql =
		"SELECT current_setting('server_version'), current_database(), current_user,"
		" pg_is_in_recovery()::text, current_setting('synchronous_commit'),"
		" current_setting('fsync')" };
	static const char *const names[] = {
		"server_version", "database", "user", "in_recovery", "synchronous_commit", "fsync",
	};
	char buf[200];
	PGresult *res;
	int rc = pg_exec(s, &q, true, &res);

	if (rc) {
		snprintf(h->detail, sizeof h->detail, "%s", kv_why()[0] ? kv_why() : strerror(-rc));
		return rc;
	}
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		snprintf(h->detail, sizeof h->detail, "%s",
			 pg_msg(PQresultErrorMessage(res), buf, sizeof buf));
		PQclear(res);
		return -EIO;
	}
	snprintf(h->detail, sizeof h->detail, "PostgreSQL %s, table %s", PQgetvalue(res, 0, 0),
		 s->table_name);
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		kv_health_fact(h, names[i], "%s", PQgetvalue(res, 0, (int)i));
	PQclear(res);
	kv_health_fact(h, "connections", "%zu in use of %d", kv_pool_busy(&s->pool), PG_POOL);
	return 0;
}

/* ---- The table, once per store on its first connection ---- */

static int pg_prepare_table(void *arg)
{
	struct pg_ready *a = arg;
	struct pg_store *s = a->s;
	struct pg_stmt check = { .sql = s->sql_check }, create = { .sql = s->sql_create };
	char buf[200];
	PGresult *res = NULL;
	bool broken = false;
	int rc;

	for (int tries = 0; tries < 2; tries++) {
		if ((rc = pg_run(a->c, &check, s->timeout_ms, &res, &broken)))
			return -EIO;
		if (PQresultStatus(res) == PGRES_TUPLES_OK) {
			PQclear(res);
			return 0;
		}
		if (!pg_is(res, "42P01"))  /* undefined_table */
			break;
		PQclear(res);
		if ((rc = pg_run(a->c, &create, s->timeout_ms, &res, &broken)))
			return -EIO;
		/* Two mounts creating it at once: one loses on the catalog; look again. */
		if (PQresultStatus(res) != PGRES_COMMAND_OK && !pg_is(res, "23505") &&
		    !pg_is(res, "42P07"))
			break;
		kv_log(KV_LOG_INFO, "postgresql: created table %s", s->table_name);
		PQclear(res);
		res = NULL;
	}
	if (pg_is(res, "42703"))
		kv_why_set("table %s exists but lacks the columns "
			 "k bytea, v bytea, ver bigint", s->table_name);
	else
		kv_why_set("table %s: %s", s->table_name,
			 pg_msg(PQresultErrorMessage(res), buf, sizeof buf));
	rc = pg_is(res, "42501") ? -EACCES : pg_is(res, "42703") ? -EINVAL : -EIO;
	PQclear(res);
	return rc;
}

/* The table is a plain identifier: double quotes make it one to SQL. */
static void pg_build_sql(struct pg_store *s)
{
	char t[70];

	snprintf(t, sizeof t, "\"%s\"", s->table_name);
	snprintf(s->sql_get, sizeof s->sql_get, "SELECT v, ver FROM %s WHERE k = $1", t);
	snprintf(s->sql_stat, sizeof s->sql_stat, "SELECT octet_length(v)::int8 FROM %s WHERE k = $1", t);
	snprintf(s->sql_set, sizeof s->sql_set,
		 "INSERT INTO %s (k, v, ver) VALUES ($1, $2, $3) "
		 "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, ver = EXCLUDED.ver", t);
	snprintf(s->sql_del, sizeof s->sql_del, "DELETE FROM %s WHERE k = $1", t);
	snprintf(s->sql_cas_new, sizeof s->sql_cas_new,
		 "INSERT INTO %s (k, v, ver) VALUES ($1, $2, $3) ON CONFLICT (k) DO NOTHING", t);
	snprintf(s->sql_cas_upd, sizeof s->sql_cas_upd,
		 "UPDATE %s SET v = $2, ver = $3 WHERE k = $1 AND ver = $4", t);
	snprintf(s->sql_scan, sizeof s->sql_scan,
		 "SELECT k, octet_length(v)::int8 FROM %s WHERE k >= $1 ORDER BY k LIMIT $2", t);
	snprintf(s->sql_scan_to, sizeof s->sql_scan_to,
		 "SELECT k, octet_length(v)::int8 FROM %s WHERE k >= $1 AND k < $3 "
		 "ORDER BY k LIMIT $2", t);
	snprintf(s->sql_check, sizeof s->sql_check, "SELECT k, v, ver FROM %s LIMIT 0", t);
	snprintf(s->sql_create, sizeof s->sql_create,
		 "CREATE TABLE IF NOT EXISTS %s (k bytea PRIMARY KEY, v bytea NOT NULL, "
		 "ver bigint NOT NULL DEFAULT (floor(random() * 9e18)::bigint + 1))", t);
}

/* ---- open and close ---- */

static void pg_free(struct pg_store *s)
{
	kv_pool_destroy(&s->pool);
	kv_once_destroy(&s->ready);
	for (size_t i = 0; i < sizeof s->vals / sizeof s->vals[0]; i++)
		free(s->vals[i]);
	free(s->table_name);
	free(s);
}

static void pg_close(struct kv_store *st)
{
	pg_free(kv_store_cast(struct pg_store, st));
}

/*
 * What can be known without the server: libpq can parse the URL, it holds
 * no password (that would be on the command line and in `ps`), and the
 * TLS files it names (or -o options or the environment name) are there.
 */
static int pg_check_url(const struct kv_open_args *a, char *err, size_t errlen)
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
	for (o = opts; o->keyword && !rc; o++) {
		if (strcmp(o->keyword, "password") == 0 && o->val && *o->val) {
			snprintf(err, errlen, "postgresql: a password in the URL would show in ps: "
				 "remove it and put it in PGPASSWORD or ~/.pgpass (PGPASSFILE)");
			rc = -EINVAL;
		}
		for (int i = 0; i < PG_NTLS && !rc; i++) {
			if (strcmp(o->keyword, pg_tls[i][0]) != 0)
				continue;
			if (!(file = kv_option_get(a, pg_tls[i][0])) && !(file = o->val))
				file = getenv(pg_tls[i][1]);
			if (file && *file && strcmp(file, "system") != 0 &&
			    (rc = kv_check_file(file, pg_tls[i][0], buf, sizeof buf)))
				snprintf(err, errlen, "postgresql: %s", buf);
		}
	}
	PQconninfoFree(opts);
	return rc;
}

static int pg_open(const struct kv_open_args *args, struct kv_store **out, char *err,
		   size_t errlen)
{
	const char *table = kv_option_get(args, "table");
	struct pg_store *s;
	size_t n = 2;
	int rc;

	if (!table)
		table = PG_DEFAULT_TABLE;
	if (!kv_is_identifier(table, 63)) {
		snprintf(err, errlen, "postgresql: bad table name '%s' (letters, digits and _, "
			 "not starting with a digit, at most 63)", table);
		return -EINVAL;
	}
	if ((rc = pg_check_url(args, err, errlen)))
		return rc;
	if (!(s = calloc(1, sizeof(*s)))) {
		snprintf(err, errlen, "postgresql: out of memory");
		return -ENOMEM;
	}
	kv_once_init(&s->ready);
	kv_pool_init(&s->pool, "postgresql", &pg_pool_ops, s, PG_POOL);
	s->timeout_ms = args->timeout_ms;
	s->table_name = strdup(table);
	/* expand_dbname: the URL in dbname is parsed as a whole connection
	 * string, and the keywords after it override what it says. */
	s->keys[0] = "fallback_application_name";
	s->vals[0] = strdup("kvfs");
	s->keys[1] = "dbname";
	s->vals[1] = strdup(args->url);
	rc = !s->table_name || !s->vals[0] || !s->vals[1];
	for (int i = 0; i < PG_NTLS && !rc; i++) {
		const char *v = kv_option_get(args, pg_tls[i][0]);

		if (!v)
			continue;
		s->keys[n] = pg_tls[i][0];
		rc = !(s->vals[n++] = strdup(v));
	}
	if (rc) {
		pg_free(s);
		snprintf(err, errlen, "postgresql: out of memory");
		return -ENOMEM;
	}
	pg_build_sql(s);
	s->base.be = &kv_backend_postgresql;
	*out = &s->base;
	return 0;
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
	.persistent = true,
	.limits = { .max_key = PG_MAX_KEY, .max_value = PG_MAX_VALUE },
	.open = pg_open,
	.close = pg_close,
	.get = pg_get,
	.set = pg_set,
	.del = pg_del,
	.scan = pg_scan,
	.health = pg_health,
	.stat = pg_stat,
	.cas = pg_cas,
	.apply = pg_apply,
};
