/*
 * sql.c - the operations of the SQL backends (sql.h), built on their
 * exec(): one request on one connection from the toolkit's pool.  A
 * failure that passes is tried again until the timeout.  open() only
 * checks the URL and the files it names; the table is checked (created if
 * missing) on the first connection.
 *
 * ver is a random 63-bit number written with each value: cas is one
 * statement that changes only the row still carrying the version it
 * expects, which the server checks on the latest row, so it is atomic.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sql.h"

#define S(st) kv_store_cast(struct sql_store, st)

static const char *const sql_names[] = {
	[SQL_GET] = "get", [SQL_STAT] = "stat", [SQL_SET] = "set", [SQL_DEL] = "del",
	[SQL_CAS_NEW] = "cas", [SQL_CAS_UPD] = "cas", [SQL_SCAN] = "scan", [SQL_SCAN_TO] = "scan",
	[SQL_HEALTH] = "health", [SQL_CHECK] = "check", [SQL_CREATE] = "create",
};

/* A new version: random, nonzero, positive as a bigint. */
static uint64_t sql_version(void)
{
	uint64_t v = kv_random64() & INT64_MAX;

	return v ? v : 1;
}

/* The kv_pool_fn of every request. */
static int sql_exec(void *conn, void *arg, bool *broken)
{
	struct sql_req *r = arg;
	int rc;

	if (r->id < SQL_NSTMT)
		r->sql = r->s->sql[r->id];
	r->what = r->id == SQL_TEXT ? r->sql : sql_names[r->id];
	r->rows = 0;
	rc = r->s->client->exec(r->s, conn, r, broken);
	/* no such key; a write touched no row */
	return rc || r->rows || r->id >= SQL_SCAN ? rc : -ENOENT;
}

int sql_fail(struct sql_req *r, int e, const char *msg)
{
	const struct sql_client *cl = r->s->client;

	if (r->id == SQL_CHECK && e == -EINVAL)
		kv_why_set("table %s exists but lacks the columns %s", r->s->table, cl->columns);
	else if (r->id == SQL_CHECK || r->id == SQL_CREATE)
		kv_why_set("table %s: %s", r->s->table, msg);
	else if (e == -EAGAIN || r->id == SQL_HEALTH)
		kv_why_set("%s: %s", r->what, msg);
	else
		kv_log(KV_LOG_ERR, "%s: %s %s: %s", cl->name, r->txn ? "apply" : r->what,
		       r->key ? kv_printable(r->key, r->klen) : "", msg);
	/* Only the table's setup finds it missing, lacking columns or made meanwhile. */
	return r->id < SQL_CHECK && (e == -ENOENT || e == -EINVAL || e == -EEXIST) ? -EIO : e;
}

int sql_row(struct sql_req *r, uint64_t n)
{
	struct sql_store *s = r->s;

	r->rows++;
	r->n = n;
	if (r->id == SQL_HEALTH && n < SQL_NFACTS) {
		kv_health_fact(r->h, s->client->facts[n], "%.*s", (int)r->col.len, r->col.p);
		if (n == 0)
			snprintf(r->h->detail, sizeof r->h->detail, "%s%.*s, table %s",
				 s->client->product, (int)r->col.len, r->col.p, s->table);
	}
	return r->cb ? r->cb(r->ctx, r->col.p, r->col.len, n) : 0;
}

static int sql_run(struct kv_store *st, struct sql_req *r, bool idempotent)
{
	r->s = S(st);
	return kv_pool_run(&r->s->pool, kv_deadline(r->s->timeout_ms), idempotent, sql_exec, r);
}

/* What a read may say: what is ours (memory, credentials) or found
 * nothing; anything else went wrong with the store. */
static int sql_read(struct kv_store *st, struct sql_req *r)
{
	int rc = sql_run(st, r, true);

	return rc == -ENOMEM || rc == -EACCES || rc == -ENOENT || rc >= 0 ? rc : -EIO;
}

int sql_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
	    uint64_t *version)
{
	struct sql_req r = { .id = SQL_GET, .key = key, .klen = klen };
	int rc = sql_read(st, &r);

	if (!rc && !(*val = kv_buf_take(&r.col, len)))
		rc = -ENOMEM;
	if (!rc && version)
		*version = r.n;
	kv_buf_free(&r.col);
	return rc;
}

int sql_stat(struct kv_store *st, const char *key, size_t klen, uint64_t *size)
{
	struct sql_req r = { .id = SQL_STAT, .key = key, .klen = klen };
	int rc = sql_read(st, &r);

	if (!rc)
		*size = r.n;
	kv_buf_free(&r.col);
	return rc;
}

int sql_scan(struct kv_store *st, const char *from, size_t flen, const char *to, size_t tlen,
	     size_t max, kv_key_cb *cb, void *ctx)
{
	struct sql_req r = { .id = to ? SQL_SCAN_TO : SQL_SCAN, .key = from, .klen = flen,
			     .val = to, .vlen = tlen, .max = max, .cb = cb, .ctx = ctx };
	int rc = sql_read(st, &r);

	kv_buf_free(&r.col);
	return rc;
}

int sql_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct sql_req r = { .id = SQL_SET, .key = key, .klen = klen, .val = val, .vlen = vlen,
			     .ver = sql_version() };
	int rc = sql_run(st, &r, true);

	return rc == -ENOENT ? 0 : rc;  /* MySQL counts a row rewritten as it was as none */
}

int sql_del(struct kv_store *st, const char *key, size_t klen)
{
	struct sql_req r = { .id = SQL_DEL, .key = key, .klen = klen };
	int rc = sql_run(st, &r, true);

	return rc == -ENOENT || rc == 0 || rc == -EACCES ? rc : -EIO;
}

/*
 * One statement each way: version 0 inserts unless the key exists, any
 * other version updates only the row that still carries it.  No row
 * touched means someone else got there first.
 */
int sql_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
	    const char *val, size_t vlen)
{
	struct sql_req r = { .id = version ? SQL_CAS_UPD : SQL_CAS_NEW, .key = key, .klen = klen,
			     .val = val, .vlen = vlen, .ver = sql_version(), .old = version };
	int rc;

	if (version > INT64_MAX)
		return -ECANCELED;  /* not a version this backend hands out */
	rc = sql_run(st, &r, false);
	return rc == -ENOENT ? -ECANCELED : rc;
}

/* ---- apply: one transaction ---- */

struct sql_txn {
	struct sql_store *s;
	const struct kv_op *ops;
	size_t n;
};

static int sql_apply_on(void *conn, void *arg, bool *broken)
{
	struct sql_txn *t = arg;
	struct sql_req r = { .s = t->s, .id = SQL_TEXT, .sql = "START TRANSACTION", .txn = true };
	int rc = sql_exec(conn, &r, broken), end;

	for (size_t i = 0; i < t->n && !rc; i++) {
		const struct kv_op *op = &t->ops[i];

		r = (struct sql_req){ .s = t->s, .id = op->type == KV_OP_SET ? SQL_SET : SQL_DEL,
				      .txn = true, .key = op->key, .klen = op->key_len,
				      .val = op->val, .vlen = op->val_len, .ver = sql_version() };
		if ((rc = sql_exec(conn, &r, broken)) == -ENOENT)
			rc = 0;  /* a delete of a missing key is no error here */
	}
	if (*broken)
		return rc;
	/* ROLLBACK undoes what the server may have kept of the failed statement */
	r = (struct sql_req){ .s = t->s, .id = SQL_TEXT, .sql = rc ? "ROLLBACK" : "COMMIT",
			      .txn = true };
	end = sql_exec(conn, &r, broken);
	return rc ? rc : end;
}

int sql_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	struct sql_txn t = { .s = S(st), .ops = ops, .n = n };

	/* Sets are upserts and a missing key's delete is no error here:
	 * running it all again after a lost connection is harmless. */
	return kv_pool_run(&t.s->pool, kv_deadline(t.s->timeout_ms), true, sql_apply_on, &t);
}

int sql_health(struct kv_store *st, struct kv_health *h)
{
	struct sql_req r = { .id = SQL_HEALTH, .h = h };
	int rc = sql_run(st, &r, true);
	size_t max_value = __atomic_load_n(&r.s->max_value, __ATOMIC_RELAXED);

	kv_buf_free(&r.col);
	if (rc) {
		snprintf(h->detail, sizeof h->detail, "%s", kv_why()[0] ? kv_why() : strerror(-rc));
		return rc;
	}
	if (max_value)
		kv_health_fact(h, "max_value", "%zu", max_value);
	kv_health_fact(h, "connections", "%zu in use of %d", kv_pool_busy(&r.s->pool), SQL_POOL);
	return 0;
}

void sql_store_limits(struct kv_store *st, struct kv_limits *out)
{
	struct sql_store *s = S(st);
	size_t max_key = __atomic_load_n(&s->max_key, __ATOMIC_RELAXED);
	size_t max_value = __atomic_load_n(&s->max_value, __ATOMIC_RELAXED);

	out->max_key = max_key ? max_key : out->max_key;
	out->max_value = max_value ? max_value : out->max_value;
}

/* ---- The table, once per store on its first connection ---- */

struct sql_ready {
	struct sql_store *s;
	void *conn;
};

/*
 * The table checked, created if missing: two mounts creating it at once,
 * one loses on the catalog (-EEXIST) and looks again.  A connection that
 * failed is worth another try (-EIO), what the server refused is not.
 */
static int sql_prepare(void *arg)
{
	struct sql_ready *p = arg;
	struct sql_store *s = p->s;
	struct sql_req r = { .s = s, .id = SQL_CHECK };
	bool broken = false;
	int rc;

	for (int i = 0; (rc = sql_exec(p->conn, &r, &broken)) == -ENOENT && i < 2; i++) {
		r.id = SQL_CREATE;
		if ((rc = sql_exec(p->conn, &r, &broken)) && rc != -EEXIST)
			break;
		if (!rc)
			kv_log(KV_LOG_INFO, "%s: created table %s", s->client->name, s->table);
		r.id = SQL_CHECK;
	}
	if (rc == -EACCES)
		return rc;
	if (rc)
		return broken || rc == -EAGAIN || rc == -ETIMEDOUT ? -EIO : -EINVAL;
	return s->client->prepare ? s->client->prepare(s, p->conn) : 0;
}

int sql_connected(struct sql_store *s, void *conn)
{
	int rc = kv_once(&s->ready, sql_prepare, &(struct sql_ready){ s, conn });

	if (!rc)
		kv_why_set("%s", "");
	return rc;
}

int sql_build(struct sql_store *s, const char *size_expr)
{
	char buf[400];

	for (int i = 0; i < SQL_NSTMT; i++) {
		snprintf(buf, sizeof buf, s->client->sql[i], s->table, size_expr);
		free(s->sql[i]);
		if (!(s->sql[i] = strdup(buf)))
			return -ENOMEM;
	}
	return 0;
}

/* ---- open and close ---- */

void sql_close(struct kv_store *st)
{
	struct sql_store *s = S(st);

	kv_pool_destroy(&s->pool);
	kv_once_destroy(&s->ready);
	for (int i = 0; i < SQL_NSTMT; i++)
		free(s->sql[i]);
	for (int i = 0; i < SQL_NSTR; i++)
		free(s->str[i]);
	free(s->table);
	free(s);
}

int sql_open(const struct kv_open_args *a, const struct sql_client *cl, struct kv_store **out,
	     char *err, size_t errlen)
{
	const char *table = kv_option_get(a, "table");
	struct sql_store *s;
	int rc = -ENOMEM;

	if (!table)
		table = "kv";
	if (!kv_is_identifier(table, cl->max_table)) {
		snprintf(err, errlen, "%s: bad table name '%s' (letters, digits and _, "
			 "not starting with a digit, at most %zu)", cl->name, table, cl->max_table);
		return -EINVAL;
	}
	if ((s = calloc(1, sizeof(*s)))) {
		s->client = cl;
		s->timeout_ms = a->timeout_ms;
		kv_once_init(&s->ready);
		kv_pool_init(&s->pool, cl->name, cl->pool, s, SQL_POOL);
		if ((s->table = strdup(table)) && !(rc = cl->parse(s, a, err, errlen)))
			rc = sql_build(s, cl->size_expr);
	}
	if (rc) {
		if (!err[0])
			snprintf(err, errlen, "%s: out of memory", cl->name);
		if (s)
			sql_close(&s->base);
		return rc;
	}
	*out = &s->base;
	return 0;
}
