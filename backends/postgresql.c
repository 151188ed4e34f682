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
 * btree is the keys' byte order and a prefix is a key range: listing asks
 * for "k >= lo AND k < hi ORDER BY k LIMIT n" with binary parameters, never
 * a LIKE pattern.  With a delimiter, a group found in the rows is skipped by
 * starting the next range at the group's successor, so a directory listing
 * never reads its subtree.  ver is a random 63-bit number written with each
 * value: cas compares it in the UPDATE's WHERE, which PostgreSQL re-checks
 * on the latest row version, so a single statement is an atomic cas.
 *
 * libpq is blocking, so every round trip runs in nonblocking mode and polls
 * the socket against a deadline (the timeout); a connection that misses it
 * is dropped, never reused, and the call is -EIO.  The server also gets a
 * statement_timeout, so it gives up on what the client gave up on.
 * Connections are pooled for the FUSE threads; one that the server closed
 * while idle (a restart) is noticed before use and replaced, so the mount
 * recovers by itself.  A server that does not answer at mount time does
 * not stop the mount either: the table is checked on the first connection
 * that succeeds.
 */
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "kv.h"

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
#define PG_PAGE 1000         /* list items when the caller sets no limit */
#define PG_CHUNK 128         /* rows fetched per list query */
#define PG_TRIES 3           /* attempts of an apply that lost a deadlock */
#define PG_DEFAULT_TABLE "kv"
#define PG_OPEN_WAIT_MS 5000 /* at most this for the server at mount; then mount anyway */

/* Type OIDs of the parameters (pg_type.h, stable since forever). */
#define BYTEAOID 17
#define INT8OID 20

struct pg_store {
	struct kv_store base;
	char *url;
	char *table;              /* quoted identifier, safe to paste into SQL; set when ready */
	char *table_name;         /* as given, for messages and .health */
	int timeout_ms;

	/* The table is checked (created if missing) and the SQL built on the
	 * first connection that succeeds: at open, or later if the server did
	 * not answer then. */
	pthread_mutex_t ready_lock;
	bool ready;               /* atomic */

	pthread_mutex_t lock;
	pthread_cond_t freed;
	PGconn *idle[PG_POOL];
	size_t nidle, nopen;      /* nopen counts idle ones and those in use */

	char sql_get[160], sql_stat[160], sql_set[256], sql_del[160];
	char sql_cas_new[200], sql_cas_upd[200], sql_list[200], sql_list_hi[200];
};

/* ---- Time, randomness, bytes ---- */

static int64_t pg_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A new version: random, nonzero, positive as a bigint. */
static uint64_t pg_new_version(void)
{
	static __thread uint64_t x;
	uint64_t v;

	if (!x && (getrandom(&x, sizeof x, 0) != sizeof x || !x))
		x = (uint64_t)pg_now_ms() * 0x9e3779b97f4a7c15u | 1;
	x ^= x << 13;  /* xorshift64 */
	x ^= x >> 7;
	x ^= x << 17;
	v = x & INT64_MAX;
	return v ? v : 1;
}

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

/* A growable byte buffer. */
struct pg_buf {
	char *p;
	size_t len, cap;
};

static int pg_buf_set(struct pg_buf *b, const void *p, size_t len, size_t extra)
{
	if (len + extra > b->cap) {
		char *q = realloc(b->p, len + extra);

		if (!q)
			return -ENOMEM;
		b->p = q;
		b->cap = len + extra;
	}
	if (len)
		memcpy(b->p, p, len);
	b->len = len;
	return 0;
}

/* The smallest key above every key that starts with b; false if none is. */
static bool pg_successor(struct pg_buf *b)
{
	return kv_key_successor(b->p, &b->len);
}

/* The first line of a libpq message, for one-line logs. */
static const char *pg_msg(const char *m, char *buf, size_t len)
{
	size_t n = m ? strcspn(m, "\n") : 0;

	snprintf(buf, len, "%.*s", (int)n, m ? m : "");
	return buf;
}

/* ---- One round trip with a deadline ---- */

/* Wait until the socket is ready for ev, or the deadline passes. 0, or -EIO. */
static int pg_wait(PGconn *c, short ev, int64_t deadline)
{
	struct pollfd pfd = { .fd = PQsocket(c), .events = ev };
	int64_t left;
	int rc;

	if (pfd.fd < 0)
		return -EIO;
	for (;;) {
		left = deadline - pg_now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		rc = poll(&pfd, 1, left > 60000 ? 60000 : (int)left);
		if (rc > 0)
			return 0;
		if (rc < 0 && errno != EINTR)
			return -EIO;
	}
}

/*
 * Send one statement (binary parameters of the given types) and collect
 * its result by the deadline.  Returns the result (which may be an error
 * result: see pg_failed) or NULL when the connection failed or the
 * deadline passed; then *broken is set and the connection must go.
 */
static PGresult *pg_run(PGconn *c, const char *sql, int n, const Oid *types,
			const char *const *vals, const int *lens, int result_format,
			int timeout_ms, bool *broken)
{
	static const int binary[4] = { 1, 1, 1, 1 };
	int64_t deadline = pg_now_ms() + timeout_ms;
	PGresult *res = NULL, *r;
	char buf[200];
	int rc;

	*broken = true;
	if (!PQsendQueryParams(c, sql, n, types, vals, lens, binary, result_format))
		goto fail;
	while ((rc = PQflush(c)) == 1) {
		if (pg_wait(c, POLLOUT | POLLIN, deadline) || !PQconsumeInput(c))
			goto fail;
	}
	if (rc < 0)
		goto fail;
	for (;;) {
		while (PQisBusy(c)) {
			if (pg_wait(c, POLLIN, deadline) || !PQconsumeInput(c))
				goto fail;
		}
		r = PQgetResult(c);
		if (!r)
			break;
		if (res && PQresultStatus(res) == PGRES_FATAL_ERROR)
			PQclear(r);  /* keep the first error */
		else {
			PQclear(res);
			res = r;
		}
	}
	if (res && PQstatus(c) == CONNECTION_OK)
		*broken = false;
	return res;
fail:
	kv_log(KV_LOG_WARN, "postgresql: %s", pg_now_ms() >= deadline
	       ? "no answer within the timeout, dropping the connection"
	       : pg_msg(PQerrorMessage(c), buf, sizeof buf));
	PQclear(res);
	return NULL;
}

/* The errno of a failed statement (an error result), logged once. */
static int pg_failed(const char *what, const char *key, size_t klen, PGresult *res)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	char buf[200];
	int e = -EIO;

	if (!state)
		state = "";
	if (strcmp(state, "53100") == 0)        /* disk_full */
		e = -ENOSPC;
	else if (strcmp(state, "25006") == 0)   /* read_only_sql_transaction */
		e = -EROFS;
	else if (strcmp(state, "42501") == 0)   /* insufficient_privilege */
		e = -EACCES;
	else if (strcmp(state, "54000") == 0)   /* program_limit_exceeded: index row size */
		e = -ENAMETOOLONG;
	kv_log(KV_LOG_ERR, "postgresql: %s %s: %s", what, key ? kv_printable(key, klen) : "",
	       pg_msg(PQresultErrorMessage(res), buf, sizeof buf));
	return e;
}

/* A read has no use for write errors: whatever went wrong is -EIO. */
static int pg_read_failed(const char *what, const char *key, size_t klen, PGresult *res)
{
	pg_failed(what, key, klen, res);
	return -EIO;
}

static bool pg_is(PGresult *res, const char *state)
{
	const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	return s && strcmp(s, state) == 0;
}

/* ---- Connections and the pool ---- */

/* Connect by the deadline: libpq reads the URL, PGPASSWORD and ~/.pgpass. */
static PGconn *pg_connect(struct pg_store *s, int timeout_ms, char *err, size_t errlen)
{
	static const char *const keys[] = { "fallback_application_name", "dbname", NULL };
	const char *vals[] = { "kvfs", s->url, NULL };
	int64_t deadline = pg_now_ms() + timeout_ms;
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	char setting[64], buf[200];
	const char *why = NULL;
	PGresult *res;
	PGconn *c;
	bool broken;

	/* expand_dbname: the URL in dbname is parsed as a whole connection string. */
	c = PQconnectStartParams(keys, vals, 1);
	if (!c) {
		snprintf(err, errlen, "postgresql: out of memory");
		return NULL;
	}
	if (PQstatus(c) == CONNECTION_BAD) {  /* before any network: the parameters */
		snprintf(err, errlen, "postgresql: bad connection parameters: %s",
			 pg_msg(PQerrorMessage(c), buf, sizeof buf));
		PQfinish(c);
		return NULL;
	}
	while (PQstatus(c) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		if (pg_wait(c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline)) {
			why = "no answer within the timeout";
			break;
		}
		st = PQconnectPoll(c);
	}
	if (!why && (st != PGRES_POLLING_OK || PQstatus(c) != CONNECTION_OK))
		why = pg_msg(PQerrorMessage(c), buf, sizeof buf);
	if (!why && PQsetnonblocking(c, 1) != 0)
		why = "cannot make the connection nonblocking";
	if (!why) {
		/* The server abandons what the client stopped waiting for. */
		snprintf(setting, sizeof setting, "SET statement_timeout = %d", s->timeout_ms);
		res = pg_run(c, setting, 0, NULL, NULL, NULL, 0, s->timeout_ms, &broken);
		if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
			why = res ? pg_msg(PQresultErrorMessage(res), buf, sizeof buf)
				  : "no answer within the timeout";
		PQclear(res);
	}
	if (why) {
		snprintf(err, errlen, "postgresql: cannot connect to %s: %s", s->base.endpoint
			 ? s->base.endpoint : "the server", why);
		PQfinish(c);
		return NULL;
	}
	return c;
}

/* An idle connection is still good if the server has not said anything:
 * a restart or shutdown closes it, and the socket turns readable. */
static bool pg_idle_ok(PGconn *c)
{
	struct pollfd pfd = { .fd = PQsocket(c), .events = POLLIN };

	if (PQstatus(c) != CONNECTION_OK || pfd.fd < 0)
		return false;
	if (poll(&pfd, 1, 0) == 0)
		return true;
	return PQconsumeInput(c) && PQstatus(c) == CONNECTION_OK && !PQisBusy(c);
}

static int pg_ready(struct pg_store *s, PGconn *c, char *err, size_t errlen);

/*
 * A connection for one call: an idle one that is still good, a new one if
 * the pool has room, or the next one freed within the timeout.  *reused
 * tells the caller a connection failure may be a stale connection worth
 * one retry.  0 or -EIO.
 */
static int pg_acquire(struct pg_store *s, PGconn **out, bool *reused)
{
	struct timespec until;
	char err[300];
	PGconn *c;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += s->timeout_ms / 1000;
	until.tv_nsec += (long)(s->timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (s->nidle) {
			c = s->idle[--s->nidle];
			if (pg_idle_ok(c)) {
				pthread_mutex_unlock(&s->lock);
				*out = c;
				*reused = true;
				return 0;
			}
			PQfinish(c);
			s->nopen--;
		}
		if (s->nopen < PG_POOL)
			break;
		if (pthread_cond_timedwait(&s->freed, &s->lock, &until) == ETIMEDOUT) {
			pthread_mutex_unlock(&s->lock);
			kv_log(KV_LOG_ERR, "postgresql: no connection free within the timeout");
			return -EIO;
		}
	}
	s->nopen++;
	pthread_mutex_unlock(&s->lock);
	c = pg_connect(s, s->timeout_ms, err, sizeof err);
	if (c && pg_ready(s, c, err, sizeof err)) {
		PQfinish(c);
		c = NULL;
	}
	if (!c) {
		kv_log(KV_LOG_ERR, "%s", err);
		pthread_mutex_lock(&s->lock);
		s->nopen--;
		pthread_cond_signal(&s->freed);
		pthread_mutex_unlock(&s->lock);
		return -EIO;
	}
	*out = c;
	*reused = false;
	return 0;
}

/* Give a connection back; a broken one is closed instead. */
static void pg_release(struct pg_store *s, PGconn *c, bool broken)
{
	if (broken || PQstatus(c) != CONNECTION_OK ||
	    PQtransactionStatus(c) != PQTRANS_IDLE) {
		PQfinish(c);
		c = NULL;
	}
	pthread_mutex_lock(&s->lock);
	if (c)
		s->idle[s->nidle++] = c;
	else
		s->nopen--;
	pthread_cond_signal(&s->freed);
	pthread_mutex_unlock(&s->lock);
}

/*
 * One statement on a pooled connection.  A connection failure on a reused
 * connection is retried once on a new one when `retry` says the statement
 * may run twice (everything but cas).  NULL means -EIO.
 */
static PGresult *pg_exec(struct pg_store *s, const char *sql, int n, const Oid *types,
			 const char *const *vals, const int *lens, bool retry)
{
	PGresult *res;
	PGconn *c;
	bool reused, broken;

	for (int attempt = 0;; attempt++) {
		if (pg_acquire(s, &c, &reused))
			return NULL;
		res = pg_run(c, sql, n, types, vals, lens, 1, s->timeout_ms, &broken);
		pg_release(s, c, broken);
		if (res || !reused || !retry || attempt > 0)
			return res;
	}
}

/* ---- get, stat, set, del, cas ---- */

static int pg_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	static const Oid types[] = { BYTEAOID };
	const char *vals[] = { klen ? key : "" };
	int lens[] = { (int)klen };
	PGresult *res = pg_exec(s, s->sql_get, 1, types, vals, lens, true);
	size_t n;
	char *buf;
	int rc = 0;

	if (!res)
		return -EIO;
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		rc = pg_read_failed("get", key, klen, res);
	else if (PQntuples(res) == 0)
		rc = -ENOENT;
	else {
		n = (size_t)PQgetlength(res, 0, 0);
		buf = malloc(n + 1);
		if (!buf)
			rc = -ENOMEM;
		else {
			memcpy(buf, PQgetvalue(res, 0, 0), n);
			buf[n] = '\0';
			*val = buf;
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
	static const Oid types[] = { BYTEAOID };
	const char *vals[] = { klen ? key : "" };
	int lens[] = { (int)klen };
	PGresult *res = pg_exec(s, s->sql_stat, 1, types, vals, lens, true);
	int rc = 0;

	if (!res)
		return -EIO;
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		rc = pg_read_failed("stat", key, klen, res);
	else if (PQntuples(res) == 0)
		rc = -ENOENT;
	else
		*size = pg_get_be(PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0));
	PQclear(res);
	return rc;
}

/* Check a set's outcome: 0, or the errno of its failure. */
static int pg_write_result(const char *what, const char *key, size_t klen, PGresult *res)
{
	int rc;

	if (!res)
		return -EIO;
	rc = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : pg_failed(what, key, klen, res);
	return rc;
}

static int pg_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	static const Oid types[] = { BYTEAOID, BYTEAOID, INT8OID };
	char ver[8];
	const char *vals[] = { klen ? key : "", vlen ? val : "", ver };
	int lens[] = { (int)klen, (int)vlen, 8 };
	PGresult *res;
	int rc;

	if (klen > PG_MAX_KEY)
		return -ENAMETOOLONG;
	if (vlen > PG_MAX_VALUE)
		return -EFBIG;
	pg_put64(ver, pg_new_version());
	res = pg_exec(s, s->sql_set, 3, types, vals, lens, true);
	rc = pg_write_result("set", key, klen, res);
	PQclear(res);
	return rc;
}

static int pg_del(struct kv_store *st, const char *key, size_t klen)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	static const Oid types[] = { BYTEAOID };
	const char *vals[] = { klen ? key : "" };
	int lens[] = { (int)klen };
	PGresult *res;
	int rc;

	if (klen > PG_MAX_KEY)
		return -ENOENT;
	res = pg_exec(s, s->sql_del, 1, types, vals, lens, true);
	rc = pg_write_result("del", key, klen, res);
	if (!rc && strcmp(PQcmdTuples(res), "0") == 0)
		rc = -ENOENT;
	PQclear(res);
	return rc == -ENOENT || rc == 0 ? rc : -EIO;
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
	static const Oid types[] = { BYTEAOID, BYTEAOID, INT8OID, INT8OID };
	char ver[8], old[8];
	const char *vals[] = { klen ? key : "", vlen ? val : "", ver, old };
	int lens[] = { (int)klen, (int)vlen, 8, 8 };
	PGresult *res;
	int rc;

	if (klen > PG_MAX_KEY)
		return -ENAMETOOLONG;
	if (vlen > PG_MAX_VALUE)
		return -EFBIG;
	if (version > INT64_MAX)
		return -ECANCELED;  /* not a version this backend hands out */
	pg_put64(ver, pg_new_version());
	pg_put64(old, version);
	if (version == 0)
		res = pg_exec(s, s->sql_cas_new, 3, types, vals, lens, false);
	else
		res = pg_exec(s, s->sql_cas_upd, 4, types, vals, lens, false);
	rc = pg_write_result("cas", key, klen, res);
	if (!rc && strcmp(PQcmdTuples(res), "0") == 0)
		rc = -ECANCELED;
	PQclear(res);
	return rc;
}

/* ---- apply: one transaction ---- */

static PGresult *pg_op(struct pg_store *s, PGconn *c, const struct kv_op *op, bool *broken)
{
	static const Oid types[] = { BYTEAOID, BYTEAOID, INT8OID };
	char ver[8];
	const char *vals[] = { op->key_len ? op->key : "", op->val_len ? op->val : "", ver };
	int lens[] = { (int)op->key_len, (int)op->val_len, 8 };

	if (op->type == KV_OP_DEL)
		return pg_run(c, s->sql_del, 1, types, vals, lens, 1, s->timeout_ms, broken);
	pg_put64(ver, pg_new_version());
	return pg_run(c, s->sql_set, 3, types, vals, lens, 1, s->timeout_ms, broken);
}

/* Run ops in one transaction on c: 0, 1 to try again (deadlock), or -errno. */
static int pg_apply_once(struct pg_store *s, PGconn *c, const struct kv_op *ops, size_t n,
			 bool *broken)
{
	PGresult *res;
	size_t i;
	int rc = 0;

	res = pg_run(c, "BEGIN", 0, NULL, NULL, NULL, 1, s->timeout_ms, broken);
	if (!res)
		return -EIO;
	PQclear(res);
	for (i = 0; i < n && !rc; i++) {
		if (ops[i].type == KV_OP_DEL && ops[i].key_len > PG_MAX_KEY)
			continue;  /* cannot exist */
		res = pg_op(s, c, &ops[i], broken);
		if (!res)
			return -EIO;
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			rc = pg_is(res, "40P01") || pg_is(res, "40001") ? 1
			     : pg_failed("apply", ops[i].key, ops[i].key_len, res);
		PQclear(res);
	}
	res = pg_run(c, rc ? "ROLLBACK" : "COMMIT", 0, NULL, NULL, NULL, 1, s->timeout_ms, broken);
	if (!res)
		return -EIO;
	if (!rc && PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = pg_is(res, "40001") ? 1 : pg_failed("apply commit", NULL, 0, res);
	PQclear(res);
	return rc;
}

static int pg_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	bool reused, broken;
	PGconn *c;
	size_t i;
	int rc = 1, tries;

	for (i = 0; i < n; i++) {
		if (ops[i].type != KV_OP_SET)
			continue;
		if (ops[i].key_len > PG_MAX_KEY)
			return -ENAMETOOLONG;
		if (ops[i].val_len > PG_MAX_VALUE)
			return -EFBIG;
	}
	if (!n)
		return 0;
	for (tries = 0; rc > 0 && tries < PG_TRIES + 1; tries++) {
		if (pg_acquire(s, &c, &reused))
			return -EIO;
		rc = pg_apply_once(s, c, ops, n, &broken);
		pg_release(s, c, broken);
		/* A stale pooled connection failed before anything was committed. */
		if (rc == -EIO && broken && reused && tries == 0)
			rc = 1;
	}
	if (rc > 0) {
		kv_log(KV_LOG_ERR, "postgresql: apply of %zu operations kept deadlocking", n);
		rc = -EIO;
	}
	return rc;
}

/* ---- list ---- */

/*
 * A walk over the keys of one listing, a chunk of rows at a time.  Rows of
 * a group already reported are skipped in the chunk; when a chunk ends
 * inside a group, the next query starts at the group's successor.
 */
struct pg_walk {
	struct pg_store *s;
	const struct kv_list_req *req;
	PGconn *c;
	bool broken;
	PGresult *res;
	int row, nrows;
	bool exhausted;           /* no rows after this chunk */
	struct pg_buf lo, hi;     /* next query: k >= lo (and k < hi if has_hi) */
	bool has_hi;
	struct pg_buf group;      /* the last group reported */
	bool in_group;
	size_t chunk;
};

static int pg_walk_query(struct pg_walk *w)
{
	static const Oid types[] = { BYTEAOID, INT8OID, BYTEAOID };
	char lim[8];
	const char *vals[] = { w->lo.len ? w->lo.p : "", lim, w->hi.len ? w->hi.p : "" };
	int lens[] = { (int)w->lo.len, 8, (int)w->hi.len };

	PQclear(w->res);
	pg_put64(lim, w->chunk);
	w->res = pg_run(w->c, w->has_hi ? w->s->sql_list_hi : w->s->sql_list, w->has_hi ? 3 : 2,
			types, vals, lens, 1, w->s->timeout_ms, &w->broken);
	if (!w->res)
		return -EIO;
	if (PQresultStatus(w->res) != PGRES_TUPLES_OK)
		return pg_read_failed("list", w->req->prefix, w->req->prefix_len, w->res);
	w->row = 0;
	w->nrows = PQntuples(w->res);
	w->exhausted = (size_t)w->nrows < w->chunk;
	return 0;
}

/* The next item into *e (valid until the next call): 0, 1 at the end, or -errno. */
static int pg_walk_next(struct pg_walk *w, struct kv_entry *e)
{
	const struct kv_list_req *r = w->req;
	const char *k, *d;
	size_t klen;
	int rc;

	for (;;) {
		if (w->row == w->nrows) {
			if (w->exhausted)
				return 1;
			/* Go on after the last row, or past the group it was in. */
			if (w->in_group) {
				if ((rc = pg_buf_set(&w->lo, w->group.p, w->group.len, 1)))
					return rc;
				if (!pg_successor(&w->lo))
					return 1;
			} else {
				k = PQgetvalue(w->res, w->nrows - 1, 0);
				klen = (size_t)PQgetlength(w->res, w->nrows - 1, 0);
				if ((rc = pg_buf_set(&w->lo, k, klen, 1)))
					return rc;
				w->lo.p[w->lo.len++] = '\0';  /* the smallest key after it */
			}
			if ((rc = pg_walk_query(w)))
				return rc;
			continue;
		}
		k = PQgetvalue(w->res, w->row, 0);
		klen = (size_t)PQgetlength(w->res, w->row, 0);
		if (w->in_group && klen >= w->group.len && memcmp(k, w->group.p, w->group.len) == 0) {
			w->row++;
			continue;
		}
		w->in_group = false;
		*e = (struct kv_entry){ .key = k, .key_len = klen,
					.size = pg_get_be(PQgetvalue(w->res, w->row, 1),
							  PQgetlength(w->res, w->row, 1)) };
		w->row++;
		d = r->delim && klen > r->prefix_len
		    ? memchr(k + r->prefix_len, r->delim, klen - r->prefix_len) : NULL;
		if (d) {
			if ((rc = pg_buf_set(&w->group, k, (size_t)(d - k) + 1, 0)))
				return rc;
			w->in_group = true;
			*e = (struct kv_entry){ .key = w->group.p, .key_len = w->group.len,
						.is_prefix = true };
		}
		if (r->start && kv_key_cmp(e->key, e->key_len, r->start, r->start_len) < 0)
			continue;
		return 0;
	}
}

static int pg_list(struct kv_store *st, const struct kv_list_req *req, kv_list_cb *cb, void *ctx,
		   bool *more)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	struct pg_walk w = { .s = s, .req = req };
	size_t limit = req->limit ? req->limit : PG_PAGE, done = 0;
	struct kv_entry e;
	bool reused;
	int rc, stop;

	*more = false;
	w.chunk = limit + 1 < PG_CHUNK ? (limit + 1 < 8 ? 8 : limit + 1) : PG_CHUNK;
	/* From the greater of prefix and start, below the prefix's successor. */
	if (req->start && kv_key_cmp(req->start, req->start_len, req->prefix, req->prefix_len) > 0)
		rc = pg_buf_set(&w.lo, req->start, req->start_len, 1);
	else
		rc = pg_buf_set(&w.lo, req->prefix, req->prefix_len, 1);
	if (!rc)
		rc = pg_buf_set(&w.hi, req->prefix, req->prefix_len, 0);
	if (rc)
		goto out_free;
	w.has_hi = pg_successor(&w.hi);
	if ((rc = pg_acquire(s, &w.c, &reused)))
		goto out_free;
	rc = pg_walk_query(&w);
	if (rc && w.broken && reused) {  /* a stale pooled connection: once more */
		pg_release(s, w.c, true);
		if ((rc = pg_acquire(s, &w.c, &reused)))
			goto out_free;
		rc = pg_walk_query(&w);
	}
	while (!rc && done < limit && !(rc = pg_walk_next(&w, &e))) {
		done++;
		stop = cb(ctx, &e);
		if (stop) {
			/* The caller stopped: whether more follows is only a guess. */
			*more = true;
			rc = stop < 0 ? stop : 0;
			goto out;
		}
	}
	if (rc == 0 && done == limit) {
		rc = pg_walk_next(&w, &e);
		*more = rc == 0;
	}
	if (rc == 1)
		rc = 0;
out:
	PQclear(w.res);
	pg_release(s, w.c, w.broken);
out_free:
	free(w.lo.p);
	free(w.hi.p);
	free(w.group.p);
	return rc;
}

/* ---- health ---- */

static int pg_health(struct kv_store *st, struct kv_health *h)
{
	struct pg_store *s = kv_store_cast(struct pg_store, st);
	static const char sql[] =
		"SELECT current_setting('server_version'), current_database(), current_user,"
		" pg_is_in_recovery()::text, current_setting('synchronous_commit'),"
		" current_setting('fsync')";
	static const char *const names[] = {
		"server_version", "database", "user", "in_recovery", "synchronous_commit", "fsync",
	};
	char buf[200];
	PGresult *res;
	PGconn *c;
	bool reused, broken;
	size_t inuse;

	if (pg_acquire(s, &c, &reused)) {
		snprintf(h->detail, sizeof h->detail, "postgresql: cannot reach the server");
		return -EIO;
	}
	res = pg_run(c, sql, 0, NULL, NULL, NULL, 0, s->timeout_ms, &broken);
	if (!res && reused) {
		pg_release(s, c, true);
		if (pg_acquire(s, &c, &reused)) {
			snprintf(h->detail, sizeof h->detail, "postgresql: cannot reach the server");
			return -EIO;
		}
		res = pg_run(c, sql, 0, NULL, NULL, NULL, 0, s->timeout_ms, &broken);
	}
	pg_release(s, c, broken);
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		snprintf(h->detail, sizeof h->detail, "postgresql: %s",
			 res ? pg_msg(PQresultErrorMessage(res), buf, sizeof buf) : "no answer");
		PQclear(res);
		return -EIO;
	}
	snprintf(h->detail, sizeof h->detail, "PostgreSQL %s, table %s", PQgetvalue(res, 0, 0),
		 s->table_name);
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		kv_health_fact(h, names[i], "%s", PQgetvalue(res, 0, (int)i));
	PQclear(res);
	pthread_mutex_lock(&s->lock);
	inuse = s->nopen - s->nidle;
	pthread_mutex_unlock(&s->lock);
	kv_health_fact(h, "connections", "%zu in use of %d", inuse, PG_POOL);
	return 0;
}

/* ---- open and close ---- */

static void pg_free(struct pg_store *s)
{
	while (s->nidle)
		PQfinish(s->idle[--s->nidle]);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->ready_lock);
	pthread_cond_destroy(&s->freed);
	free(s->url);
	PQfreemem(s->table);
	free(s->table_name);
	free(s);
}

static void pg_close(struct kv_store *st)
{
	pg_free(kv_store_cast(struct pg_store, st));
}

/* A table name is an SQL identifier we never have to guess about. */
static bool pg_valid_identifier(const char *t)
{
	size_t n = strlen(t);

	if (n == 0 || n > 63 || !((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') || *t == '_'))
		return false;
	return strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == n;
}

/*
 * Refuse what cannot work before connecting: no "//", or a password in
 * the URL (it would be on the command line and in `ps`).
 */
static int pg_check_url(const struct kv_open_args *a, char *err, size_t errlen)
{
	PQconninfoOption *opts, *o;
	char *msg = NULL, buf[200];
	bool password = false;

	if (strncmp(a->location ? a->location : "", "//", 2) != 0) {
		snprintf(err, errlen,
			 "postgresql: expected postgresql://[user@]host[:port]/dbname, got '%s'", a->url);
		return -EINVAL;
	}
	opts = PQconninfoParse(a->url, &msg);
	if (!opts) {
		snprintf(err, errlen, "postgresql: bad URL: %s",
			 msg ? pg_msg(msg, buf, sizeof buf) : "out of memory");
		PQfreemem(msg);
		return -EINVAL;
	}
	for (o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val && *o->val)
			password = true;
	PQconninfoFree(opts);
	if (password) {
		snprintf(err, errlen, "postgresql: a password in the URL would show in ps: "
			 "remove it and put it in PGPASSWORD or ~/.pgpass (PGPASSFILE)");
		return -EINVAL;
	}
	return 0;
}

static void pg_build_sql(struct pg_store *s)
{
	const char *t = s->table;

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
	snprintf(s->sql_list, sizeof s->sql_list,
		 "SELECT k, octet_length(v)::int8 FROM %s WHERE k >= $1 ORDER BY k LIMIT $2", t);
	snprintf(s->sql_list_hi, sizeof s->sql_list_hi,
		 "SELECT k, octet_length(v)::int8 FROM %s WHERE k >= $1 AND k < $3 "
		 "ORDER BY k LIMIT $2", t);
}

/* Make sure the table is there with our columns; create it if missing. */
static int pg_prepare_table(struct pg_store *s, PGconn *c, char *err, size_t errlen)
{
	char sql[300], buf[200];
	PGresult *res;
	bool broken;
	int rc = 0;

	for (int tries = 0; tries < 2; tries++) {
		snprintf(sql, sizeof sql, "SELECT k, v, ver FROM %s LIMIT 0", s->table);
		res = pg_run(c, sql, 0, NULL, NULL, NULL, 0, s->timeout_ms, &broken);
		if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
			PQclear(res);
			return 0;
		}
		if (!res || !pg_is(res, "42P01"))
			break;  /* 42P01: undefined_table */
		PQclear(res);
		snprintf(sql, sizeof sql,
			 "CREATE TABLE IF NOT EXISTS %s (k bytea PRIMARY KEY, v bytea NOT NULL, "
			 "ver bigint NOT NULL DEFAULT (floor(random() * 9e18)::bigint + 1))", s->table);
		res = pg_run(c, sql, 0, NULL, NULL, NULL, 0, s->timeout_ms, &broken);
		if (!res)
			break;
		/* Two mounts creating it at once: one loses on the catalog; look again. */
		if (PQresultStatus(res) != PGRES_COMMAND_OK && !pg_is(res, "23505") &&
		    !pg_is(res, "42P07"))
			break;
		kv_log(KV_LOG_INFO, "postgresql: created table %s", s->table_name);
		PQclear(res);
		res = NULL;
	}
	if (!res)
		snprintf(err, errlen, "postgresql: table %s: no answer within the timeout",
			 s->table_name);
	else if (pg_is(res, "42703"))
		snprintf(err, errlen, "postgresql: table %s exists but lacks the columns "
			 "k bytea, v bytea, ver bigint", s->table_name);
	else
		snprintf(err, errlen, "postgresql: table %s: %s", s->table_name,
			 pg_msg(PQresultErrorMessage(res), buf, sizeof buf));
	rc = res && pg_is(res, "42501") ? -EACCES : res && pg_is(res, "42703") ? -EINVAL : -EIO;
	PQclear(res);
	return rc;
}

/* Once per store, on the first connection: quote the name, build the SQL,
 * check or create the table.  0, or -errno with the reason in err. */
static int pg_ready(struct pg_store *s, PGconn *c, char *err, size_t errlen)
{
	int rc = 0;

	if (__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&s->ready_lock);
	if (!s->ready) {
		if (!s->table)
			s->table = PQescapeIdentifier(c, s->table_name, strlen(s->table_name));
		if (!s->table) {
			snprintf(err, errlen, "postgresql: cannot quote the table name '%s'",
				 s->table_name);
			rc = -EINVAL;
		} else {
			pg_build_sql(s);
			rc = pg_prepare_table(s, c, err, errlen);
		}
		if (!rc)
			__atomic_store_n(&s->ready, true, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&s->ready_lock);
	return rc;
}

/* libpq says why a connection failed only in words. */
static int pg_connect_errno(const char *err)
{
	if (strstr(err, "bad connection parameters"))
		return -EINVAL;
	if (strstr(err, "password authentication failed") || strstr(err, "no password supplied") ||
	    strstr(err, "permission denied") || strstr(err, "no pg_hba.conf entry"))
		return -EACCES;
	if (strstr(err, "does not exist"))
		return -ENOENT;
	return -EIO;
}

static int pg_open(const struct kv_open_args *args, struct kv_store **out, char *err,
		   size_t errlen)
{
	const char *table = kv_option_get(args, "table");
	struct pg_store *s;
	PGconn *c;
	int rc;

	if (!table)
		table = PG_DEFAULT_TABLE;
	if (!pg_valid_identifier(table)) {
		snprintf(err, errlen, "postgresql: bad table name '%s' (letters, digits and _, "
			 "not starting with a digit, at most 63)", table);
		return -EINVAL;
	}
	rc = pg_check_url(args, err, errlen);
	if (rc)
		return rc;
	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "postgresql: out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->ready_lock, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&s->freed, &ca);
		pthread_condattr_destroy(&ca);
	}
	s->timeout_ms = args->timeout_ms;
	s->url = strdup(args->url);
	s->table_name = strdup(table);
	if (!s->url || !s->table_name) {
		pg_free(s);
		snprintf(err, errlen, "postgresql: out of memory");
		return -ENOMEM;
	}
	/*
	 * A server that does not answer now may later: mount anyway (calls
	 * are EIO until then).  One that answers with a refusal (password,
	 * database, table) is a mistake to report now.
	 */
	c = pg_connect(s, s->timeout_ms < PG_OPEN_WAIT_MS ? s->timeout_ms : PG_OPEN_WAIT_MS,
		       err, errlen);
	if (!c) {
		rc = pg_connect_errno(err);
		if (rc != -EIO) {
			pg_free(s);
			return rc;
		}
		kv_log(KV_LOG_WARN, "%s; mounting anyway, calls fail until it answers", err);
		err[0] = '\0';
	} else if ((rc = pg_ready(s, c, err, errlen))) {
		PQfinish(c);
		pg_free(s);
		return rc;
	} else {
		s->idle[s->nidle++] = c;
		s->nopen = 1;
	}
	s->base.be = &kv_backend_postgresql;
	*out = &s->base;
	return 0;
}

/* table: the table of keys in the URL's database (default kv), created if missing. */
static const char *const pg_options[] = { "table", NULL };
static const char *const pg_aliases[] = { "postgres", NULL };

const struct kv_backend kv_backend_postgresql = {
	.scheme = "postgresql",
	.aliases = pg_aliases,
	.summary = "a table in PostgreSQL (libpq; password from PGPASSWORD or ~/.pgpass)",
	.usage = "postgresql://[user@]host[:port]/dbname",
	.options = pg_options,
	.caps = KV_CAP_ORDERED | KV_CAP_CAS | KV_CAP_TXN | KV_CAP_PERSIST,
	.limits = { .max_key = PG_MAX_KEY, .max_value = PG_MAX_VALUE },
	.open = pg_open,
	.close = pg_close,
	.get = pg_get,
	.set = pg_set,
	.del = pg_del,
	.list = pg_list,
	.health = pg_health,
	.stat = pg_stat,
	.cas = pg_cas,
	.apply = pg_apply,
};
