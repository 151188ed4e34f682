/*
 * mysql.c - a table in MariaDB or MySQL through MariaDB Connector/C:
 * "mysql://[user@]host[:port]/database" (or mariadb://).
 *
 * The password is never taken from the URL, which would put it on the
 * command line: it comes where the mysql client finds it, from MYSQL_PWD
 * or an option file: the default ones (~/.my.cnf, /etc/mysql/my.cnf; the
 * groups [client], [client-server], [client-mariadb] and [kvfs]) or the
 * file given with -o option_file=PATH.
 *
 * Every key is one row of an InnoDB table (default "kv", -o table=NAME),
 * created when missing:
 *
 *     k VARBINARY(3072) PRIMARY KEY, v LONGBLOB NOT NULL, ver BIGINT NOT NULL,
 *     sz BIGINT AS (LENGTH(v)) STORED
 *
 * VARBINARY compares bytewise, so the primary key is the keys' byte order
 * and a prefix is a key range: listing asks for "k >= ? AND k < ? ORDER BY
 * k LIMIT ?" through binary prepared statements, never a LIKE pattern, and
 * skips a group found in the rows by starting the next range at the
 * group's successor, so a directory listing never reads its subtree.  sz
 * is kept by the server so a listing does not read every value off-page
 * (a table without it works too, with LENGTH(v)).  ver is a random 63-bit
 * number written with each value; cas is one statement that updates only
 * the row still carrying the expected ver.
 *
 * Connector/C bounds every socket read and write by the read and write
 * timeouts (whole seconds, rounded up from the timeout); a connection that
 * failed is closed, never reused.  Automatic reconnection is off: the pool
 * opens a new connection itself, and notices before use that the server
 * closed an idle one (a restart).  A server that does not answer at mount
 * time does not stop the mount: the table is checked, and the limits
 * learned (the value limit from the server's max_allowed_packet), on the
 * first connection that succeeds.
 */
#include <errno.h>
#include <mysql.h>
#include <errmsg.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "kv.h"

extern const struct kv_backend kv_backend_mysql;  /* defined at the bottom */

/* InnoDB's longest index key (DYNAMIC rows, 16 kB pages) is 3072 bytes. */
#define MY_MAX_KEY 3072
/* LONGBLOB goes to 4 GB, but a row must fit the server's max_allowed_packet
 * (learned at open) and fs/ holds a whole value in memory. */
#define MY_MAX_VALUE ((size_t)128 << 20)
#define MY_PACKET_SLACK (MY_MAX_KEY + 1024)  /* header, key and ver around a value */
#define MY_POOL 8            /* connections at most, shared by the FUSE threads */
#define MY_PAGE 1000         /* list items when the caller sets no limit */
#define MY_CHUNK 128         /* rows fetched per list query */
#define MY_TRIES 3           /* attempts of an apply that lost a deadlock */
#define MY_DEFAULT_TABLE "kv"
#define MY_OPEN_WAIT_MS 5000 /* at most this for the server at mount; then mount anyway */

enum my_sql { MY_GET, MY_STAT, MY_SET, MY_DEL, MY_CAS_NEW, MY_CAS_UPD, MY_LIST, MY_LIST_HI,
	      MY_NSQL };

/* One connection with its prepared statements, made on first use. */
struct my_conn {
	MYSQL *db;
	MYSQL_STMT *st[MY_NSQL];
	bool broken;
};

struct my_store {
	struct kv_store base;
	char *host, *user, *db, *option_file;
	unsigned port;
	char *table_name;
	int timeout_ms;
	size_t max_key, max_value;  /* atomic: learned when ready */
	char *sql[MY_NSQL];

	/* The table is checked (created if missing), the limits learned and
	 * the SQL built on the first connection that succeeds. */
	pthread_mutex_t ready_lock;
	bool ready;               /* atomic */

	pthread_mutex_t lock;
	pthread_cond_t freed;
	struct my_conn *idle[MY_POOL];
	size_t nidle, nopen;
};

/* ---- Small helpers ---- */

static int64_t my_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A new version: random, nonzero, positive as a BIGINT. */
static long long my_new_version(void)
{
	static __thread uint64_t x;
	uint64_t v;

	if (!x && (getrandom(&x, sizeof x, 0) != sizeof x || !x))
		x = (uint64_t)my_now_ms() * 0x9e3779b97f4a7c15u | 1;
	x ^= x << 13;  /* xorshift64 */
	x ^= x >> 7;
	x ^= x << 17;
	v = x & INT64_MAX;
	return v ? (long long)v : 1;
}

struct my_buf {
	char *p;
	size_t len, cap;
};

static int my_buf_set(struct my_buf *b, const void *p, size_t len, size_t extra)
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
static bool my_successor(struct my_buf *b)
{
	return kv_key_successor(b->p, &b->len);
}

/* A binary string parameter (an empty one must not be a NULL pointer). */
static MYSQL_BIND my_blob(const char *p, size_t len, unsigned long *lenp)
{
	*lenp = len;
	return (MYSQL_BIND){ .buffer_type = MYSQL_TYPE_BLOB, .buffer = (void *)(len ? p : ""),
			     .buffer_length = len, .length = lenp };
}

static MYSQL_BIND my_int(long long *v)
{
	return (MYSQL_BIND){ .buffer_type = MYSQL_TYPE_LONGLONG, .buffer = v };
}

/* Client errors (CR_*) mean the connection is gone or unusable. */
static bool my_client_error(unsigned e)
{
	return e >= CR_MIN_ERROR && e <= CR_MAX_ERROR;
}

/* The errno of a server error; client errors are -EIO. */
static int my_errno(unsigned e)
{
	switch (e) {
	case 1021:  /* ER_DISK_FULL */
	case 1114:  /* ER_RECORD_FILE_FULL */
		return -ENOSPC;
	case 1044:  /* ER_DBACCESS_DENIED_ERROR */
	case 1045:  /* ER_ACCESS_DENIED_ERROR */
	case 1142:  /* ER_TABLEACCESS_DENIED_ERROR */
	case 1227:  /* ER_SPECIFIC_ACCESS_DENIED_ERROR */
		return -EACCES;
	case 1290:  /* ER_OPTION_PREVENTS_STATEMENT (--read-only) */
	case 1792:  /* ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION */
		return -EROFS;
	case 1153:  /* ER_NET_PACKET_TOO_LARGE */
	case 1301:  /* ER_WARN_ALLOWED_PACKET_OVERFLOWED */
		return -EFBIG;
	case 1406:  /* ER_DATA_TOO_LONG: a key over the column */
		return -ENAMETOOLONG;
	default:
		return -EIO;
	}
}

/* ---- Connections and the pool ---- */

static void my_conn_free(struct my_conn *c)
{
	if (!c)
		return;
	for (int i = 0; i < MY_NSQL; i++)
		if (c->st[i])
			mysql_stmt_close(c->st[i]);
	if (c->db)
		mysql_close(c->db);
	free(c);
}

/* Connect with the timeouts; the password comes from MYSQL_PWD or an option file. */
static struct my_conn *my_connect(struct my_store *s, int timeout_ms, char *err, size_t errlen,
				  unsigned *code)
{
	unsigned secs = (unsigned)((s->timeout_ms + 999) / 1000);
	unsigned csecs = (unsigned)((timeout_ms + 999) / 1000);
	unsigned long packet = 1UL << 30;
	my_bool off = 0;
	char init[200];
	struct my_conn *c = calloc(1, sizeof(*c));

	*code = 0;
	if (!c || !(c->db = mysql_init(NULL))) {
		free(c);
		snprintf(err, errlen, "mysql: out of memory");
		return NULL;
	}
	/* The server gives up on what the client stopped waiting for;
	 * max_statement_time is MariaDB's (10.1+), a comment to MySQL. */
	snprintf(init, sizeof init, "SET SESSION innodb_lock_wait_timeout = %u"
		 " /*M!100100 , max_statement_time = %u */", secs, secs);
	mysql_optionsv(c->db, MYSQL_OPT_CONNECT_TIMEOUT, &csecs);
	mysql_optionsv(c->db, MYSQL_OPT_READ_TIMEOUT, &secs);
	mysql_optionsv(c->db, MYSQL_OPT_WRITE_TIMEOUT, &secs);
	mysql_optionsv(c->db, MYSQL_OPT_RECONNECT, &off);
	mysql_optionsv(c->db, MYSQL_OPT_MAX_ALLOWED_PACKET, &packet);
	mysql_optionsv(c->db, MYSQL_INIT_COMMAND, init);
	mysql_optionsv(c->db, MYSQL_READ_DEFAULT_GROUP, "kvfs");
	if (s->option_file)
		mysql_optionsv(c->db, MYSQL_READ_DEFAULT_FILE, s->option_file);
	if (!mysql_real_connect(c->db, s->host, s->user, NULL, s->db, s->port, NULL, 0)) {
		*code = mysql_errno(c->db);
		snprintf(err, errlen, "mysql: cannot connect to %s: %s",
			 s->base.endpoint ? s->base.endpoint : s->host, mysql_error(c->db));
		my_conn_free(c);
		return NULL;
	}
	return c;
}

/* An idle connection is still good if the server has not said anything:
 * a shutdown or restart closes it, and the socket turns readable. */
static bool my_idle_ok(struct my_conn *c)
{
	struct pollfd pfd = { .fd = (int)mysql_get_socket(c->db), .events = POLLIN };

	return !c->broken && pfd.fd >= 0 && poll(&pfd, 1, 0) == 0;
}

static int my_ready(struct my_store *s, struct my_conn *c, char *err, size_t errlen);

/* A connection for one call (see postgresql.c's pg_acquire).  0 or -EIO. */
static int my_acquire(struct my_store *s, struct my_conn **out, bool *reused)
{
	struct timespec until;
	struct my_conn *c;
	char err[300];
	unsigned code;

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
			if (my_idle_ok(c)) {
				pthread_mutex_unlock(&s->lock);
				*out = c;
				*reused = true;
				return 0;
			}
			my_conn_free(c);
			s->nopen--;
		}
		if (s->nopen < MY_POOL)
			break;
		if (pthread_cond_timedwait(&s->freed, &s->lock, &until) == ETIMEDOUT) {
			pthread_mutex_unlock(&s->lock);
			kv_log(KV_LOG_ERR, "mysql: no connection free within the timeout");
			return -EIO;
		}
	}
	s->nopen++;
	pthread_mutex_unlock(&s->lock);
	c = my_connect(s, s->timeout_ms, err, sizeof err, &code);
	if (c && my_ready(s, c, err, sizeof err)) {
		my_conn_free(c);
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

static void my_release(struct my_store *s, struct my_conn *c)
{
	if (c->broken) {
		my_conn_free(c);
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

/* ---- Statements ---- */

/*
 * Execute statement id with params on c (preparing it on first use).
 * Returns the statement, or NULL with *e set to its errno; a client error
 * marks the connection broken.
 */
static MYSQL_STMT *my_execute(struct my_store *s, struct my_conn *c, enum my_sql id,
			      MYSQL_BIND *params, const char *what, const char *key, size_t klen,
			      int *e)
{
	MYSQL_STMT *st = c->st[id];
	unsigned code;

	if (!st) {
		st = mysql_stmt_init(c->db);
		if (!st) {
			*e = -ENOMEM;
			return NULL;
		}
		if (mysql_stmt_prepare(st, s->sql[id], strlen(s->sql[id]))) {
			code = mysql_stmt_errno(st);
			kv_log(KV_LOG_ERR, "mysql: %s: preparing: %s", what, mysql_stmt_error(st));
			mysql_stmt_close(st);
			c->broken = c->broken || my_client_error(code);
			*e = my_errno(code);
			return NULL;
		}
		c->st[id] = st;
	}
	if (mysql_stmt_bind_param(st, params) || mysql_stmt_execute(st)) {
		code = mysql_stmt_errno(st);
		c->broken = c->broken || my_client_error(code);
		*e = my_errno(code);
		if (code == 1213)  /* ER_LOCK_DEADLOCK: the caller may try again */
			*e = -EAGAIN;
		else
			kv_log(KV_LOG_ERR, "mysql: %s %s: %s", what, key ? kv_printable(key, klen) : "",
			       mysql_stmt_error(st));
		mysql_stmt_reset(st);
		return NULL;
	}
	return st;
}

/* Affected rows of a write, or -errno. */
static long long my_write(struct my_store *s, struct my_conn *c, enum my_sql id,
			  MYSQL_BIND *params, const char *what, const char *key, size_t klen)
{
	MYSQL_STMT *st;
	int e;

	st = my_execute(s, c, id, params, what, key, klen, &e);
	return st ? (long long)mysql_stmt_affected_rows(st) : e;
}

/*
 * Run fn on a pooled connection; a failure of a reused connection that
 * broke it is retried once on a new one when `retry` allows (all but cas).
 */
typedef long long my_call_fn(struct my_store *s, struct my_conn *c, void *arg);

static long long my_call(struct my_store *s, my_call_fn *fn, void *arg, bool retry)
{
	struct my_conn *c;
	bool reused, broken;
	long long rc;

	for (int attempt = 0;; attempt++) {
		if (my_acquire(s, &c, &reused))
			return -EIO;
		rc = fn(s, c, arg);
		broken = c->broken;
		my_release(s, c);
		if (rc >= 0 || !broken || !reused || !retry || attempt > 0)
			return rc;
	}
}

/* ---- get, stat, set, del, cas ---- */

struct my_get_arg {
	const char *key;
	size_t klen;
	char *val;
	size_t len;
	uint64_t version;
	bool size_only;
};

static long long my_get_on(struct my_store *s, struct my_conn *c, void *arg)
{
	struct my_get_arg *a = arg;
	unsigned long klen, vlen = 0;
	long long ver = 0, size = 0;
	MYSQL_BIND p[1] = { my_blob(a->key, a->klen, &klen) };
	MYSQL_BIND r[2] = {
		{ .buffer_type = MYSQL_TYPE_BLOB, .length = &vlen },
		my_int(&ver),
	};
	MYSQL_STMT *st;
	int e = 0, rc;

	st = my_execute(s, c, a->size_only ? MY_STAT : MY_GET, p, "get", a->key, a->klen, &e);
	if (!st)
		return e == -ENOMEM ? e : -EIO;
	if (a->size_only)
		r[0] = my_int(&size);
	if (mysql_stmt_bind_result(st, r)) {
		e = -EIO;
		goto out;
	}
	rc = mysql_stmt_fetch(st);
	if (rc == MYSQL_NO_DATA) {
		e = -ENOENT;
		goto out;
	}
	if (rc == 1) {
		c->broken = c->broken || my_client_error(mysql_stmt_errno(st));
		kv_log(KV_LOG_ERR, "mysql: get %s: %s", kv_printable(a->key, a->klen),
		       mysql_stmt_error(st));
		e = -EIO;
		goto out;
	}
	if (a->size_only) {
		a->len = (size_t)size;
		goto out;
	}
	a->val = malloc(vlen + 1);
	if (!a->val) {
		e = -ENOMEM;
		goto out;
	}
	if (vlen) {
		r[0].buffer = a->val;
		r[0].buffer_length = vlen;
		if (mysql_stmt_fetch_column(st, &r[0], 0, 0)) {
			c->broken = c->broken || my_client_error(mysql_stmt_errno(st));
			free(a->val);
			a->val = NULL;
			e = -EIO;
			goto out;
		}
	}
	a->val[vlen] = '\0';
	a->len = vlen;
	a->version = (uint64_t)ver;
out:
	mysql_stmt_free_result(st);
	return e;
}

static int my_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct my_store *s = kv_store_cast(struct my_store, st);
	struct my_get_arg a = { .key = key, .klen = klen };
	int rc;

	if (klen > s->max_key)
		return -ENOENT;
	rc = (int)my_call(s, my_get_on, &a, true);
	if (rc)
		return rc;
	*val = a.val;
	*len = a.len;
	if (version)
		*version = a.version;
	return 0;
}

static int my_stat(struct kv_store *st, const char *key, size_t klen, uint64_t *size)
{
	struct my_store *s = kv_store_cast(struct my_store, st);
	struct my_get_arg a = { .key = key, .klen = klen, .size_only = true };
	int rc;

	if (klen > s->max_key)
		return -ENOENT;
	rc = (int)my_call(s, my_get_on, &a, true);
	if (!rc)
		*size = a.len;
	return rc;
}

struct my_write_arg {
	const struct kv_op *op;
	uint64_t version;     /* cas */
};

static long long my_set_on(struct my_store *s, struct my_conn *c, void *arg)
{
	const struct kv_op *op = ((struct my_write_arg *)arg)->op;
	unsigned long kl, vl;
	long long ver = my_new_version();
	MYSQL_BIND p[3] = { my_blob(op->key, op->key_len, &kl), my_blob(op->val, op->val_len, &vl),
			    my_int(&ver) };
	long long rc = my_write(s, c, MY_SET, p, "set", op->key, op->key_len);

	return rc < 0 ? rc : 0;
}

static long long my_del_on(struct my_store *s, struct my_conn *c, void *arg)
{
	const struct kv_op *op = ((struct my_write_arg *)arg)->op;
	unsigned long kl;
	MYSQL_BIND p[1] = { my_blob(op->key, op->key_len, &kl) };
	long long rc = my_write(s, c, MY_DEL, p, "del", op->key, op->key_len);

	return rc < 0 ? rc : rc == 0 ? -ENOENT : 0;
}

/* Refusals that need no round trip. */
static int my_check_set(const struct my_store *s, size_t klen, size_t vlen)
{
	if (klen > s->max_key)
		return -ENAMETOOLONG;
	if (vlen > s->max_value)
		return -EFBIG;
	return 0;
}

static int my_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct my_store *s = kv_store_cast(struct my_store, st);
	struct kv_op op = { .type = KV_OP_SET, .key = key, .key_len = klen, .val = val,
			    .val_len = vlen };
	struct my_write_arg a = { .op = &op };
	int rc = my_check_set(s, klen, vlen);

	if (!rc)
		rc = (int)my_call(s, my_set_on, &a, true);
	return rc == -EAGAIN ? -EIO : rc;
}

static int my_del(struct kv_store *st, const char *key, size_t klen)
{
	struct my_store *s = kv_store_cast(struct my_store, st);
	struct kv_op op = { .type = KV_OP_DEL, .key = key, .key_len = klen };
	struct my_write_arg a = { .op = &op };
	int rc;

	if (klen > s->max_key)
		return -ENOENT;
	rc = (int)my_call(s, my_del_on, &a, true);
	return rc == 0 || rc == -ENOENT ? rc : -EIO;
}

/*
 * Version 0: insert unless the key exists ("ON DUPLICATE KEY UPDATE k = k"
 * changes nothing and so reports 0 rows); otherwise update only the row
 * that still carries the version.  No row touched: someone else won.
 */
static long long my_cas_on(struct my_store *s, struct my_conn *c, void *arg)
{
	struct my_write_arg *a = arg;
	const struct kv_op *op = a->op;
	unsigned long kl, vl;
	long long ver = my_new_version(), old = (long long)a->version, rc;
	MYSQL_BIND p[4] = { my_blob(op->key, op->key_len, &kl), my_blob(op->val, op->val_len, &vl),
			    my_int(&ver), my_int(&old) };
	MYSQL_BIND q[4] = { p[1], p[2], p[0], p[3] };  /* UPDATE ... SET v, ver WHERE k, ver */

	if (a->version == 0)
		rc = my_write(s, c, MY_CAS_NEW, p, "cas", op->key, op->key_len);
	else
		rc = my_write(s, c, MY_CAS_UPD, q, "cas", op->key, op->key_len);
	return rc < 0 ? rc : rc == 0 ? -ECANCELED : 0;
}

static int my_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	struct my_store *s = kv_store_cast(struct my_store, st);
	struct kv_op op = { .type = KV_OP_SET, .key = key, .key_len = klen, .val = val,
			    .val_len = vlen };
	struct my_write_arg a = { .op = &op, .version = version };
	int rc = my_check_set(s, klen, vlen);

	if (rc)
		return rc;
	if (version > INT64_MAX)
		return -ECANCELED;  /* not a version this backend hands out */
	rc = (int)my_call(s, my_cas_on, &a, false);
	return rc == -EAGAIN ? -EIO : rc;
}

/* ---- apply: one transaction ---- */

struct my_apply_arg {
	const struct kv_op *ops;
	size_t n;
};

static long long my_query(struct my_conn *c, const char *sql)
{
	if (mysql_real_query(c->db, sql, strlen(sql))) {
		unsigned code = mysql_errno(c->db);

		c->broken = c->broken || my_client_error(code);
		kv_log(KV_LOG_ERR, "mysql: %s: %s", sql, mysql_error(c->db));
		return code == 1213 ? -EAGAIN : my_errno(code);
	}
	return 0;
}

static long long my_apply_on(struct my_store *s, struct my_conn *c, void *arg)
{
	struct my_apply_arg *a = arg;
	struct my_write_arg w;
	long long rc;
	size_t i;

	rc = my_query(c, "START TRANSACTION");
	for (i = 0; i < a->n && !rc; i++) {
		w = (struct my_write_arg){ .op = &a->ops[i] };
		if (a->ops[i].type == KV_OP_SET)
			rc = my_set_on(s, c, &w);
		else if (a->ops[i].key_len <= s->max_key && (rc = my_del_on(s, c, &w)) == -ENOENT)
			rc = 0;
	}
	if (c->broken)
		return rc ? rc : -EIO;
	if (rc) {
		/* ROLLBACK undoes what InnoDB may have kept of the failed statement */
		my_query(c, "ROLLBACK");
		return rc;
	}
	return my_query(c, "COMMIT");
}

static int my_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	struct my_store *s = kv_store_cast(struct my_store, st);
	struct my_apply_arg a = { .ops = ops, .n = n };
	long long rc = -EAGAIN;
	size_t i;

	for (i = 0; i < n; i++) {
		if (ops[i].type != KV_OP_SET)
			continue;
		rc = my_check_set(s, ops[i].key_len, ops[i].val_len);
		if (rc)
			return (int)rc;
	}
	if (!n)
		return 0;
	rc = -EAGAIN;
	for (int tries = 0; rc == -EAGAIN && tries < MY_TRIES; tries++)
		rc = my_call(s, my_apply_on, &a, true);
	if (rc == -EAGAIN) {
		kv_log(KV_LOG_ERR, "mysql: apply of %zu operations kept deadlocking", n);
		rc = -EIO;
	}
	return (int)rc;
}

/* ---- list ---- */

/* Rows of one list query (at most MY_CHUNK), copied out of the statement. */
struct my_chunk {
	struct my_buf text;
	size_t off[MY_CHUNK], len[MY_CHUNK];
	uint64_t size[MY_CHUNK];
	size_t n;
};

/*
 * A walk over the keys of one listing (see pg_walk in postgresql.c): rows
 * of a group already reported are skipped; when a chunk ends inside a
 * group, the next query starts at the group's successor.
 */
struct my_walk {
	struct my_store *s;
	const struct kv_list_req *req;
	struct my_conn *c;
	struct my_chunk ch;
	size_t row;
	bool exhausted;
	struct my_buf lo, hi, group;
	bool has_hi, in_group;
	long long chunk;
};

/* Room for one more row of len key bytes in ch; *dst is where they go. */
static int my_chunk_add(struct my_chunk *ch, size_t len, uint64_t size, char **dst)
{
	size_t need = ch->text.len + len;

	if (ch->n == MY_CHUNK)
		return -EIO;  /* the server ignored LIMIT */
	if (need > ch->text.cap) {
		char *p = realloc(ch->text.p, need * 2 + 64);

		if (!p)
			return -ENOMEM;
		ch->text.p = p;
		ch->text.cap = need * 2 + 64;
	}
	ch->off[ch->n] = ch->text.len;
	ch->len[ch->n] = len;
	ch->size[ch->n] = size;
	*dst = ch->text.p + ch->text.len;
	ch->text.len = need;
	ch->n++;
	return 0;
}

static int my_walk_query(struct my_walk *w)
{
	char kbuf[MY_MAX_KEY + 1];
	unsigned long lol, hil, klen = 0;
	long long lim = w->chunk, size = 0;
	MYSQL_BIND p[3] = { my_blob(w->lo.p, w->lo.len, &lol), my_blob(w->hi.p, w->hi.len, &hil),
			    my_int(&lim) };
	MYSQL_BIND q[2] = { p[0], p[2] };
	MYSQL_BIND r[2] = {
		{ .buffer_type = MYSQL_TYPE_BLOB, .buffer = kbuf, .buffer_length = sizeof kbuf,
		  .length = &klen },
		my_int(&size),
	};
	MYSQL_STMT *st;
	char *dst;
	int e = 0, rc;

	w->ch.n = 0;
	w->ch.text.len = 0;
	w->row = 0;
	st = my_execute(w->s, w->c, w->has_hi ? MY_LIST_HI : MY_LIST, w->has_hi ? p : q, "list",
			w->req->prefix, w->req->prefix_len, &e);
	if (!st)
		return e == -ENOMEM ? e : -EIO;
	if (mysql_stmt_bind_result(st, r) || mysql_stmt_store_result(st)) {
		w->c->broken = w->c->broken || my_client_error(mysql_stmt_errno(st));
		kv_log(KV_LOG_ERR, "mysql: list: %s", mysql_stmt_error(st));
		mysql_stmt_free_result(st);
		return -EIO;
	}
	while ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED) {
		if ((e = my_chunk_add(&w->ch, klen, (uint64_t)size, &dst)))
			break;
		if (klen <= sizeof kbuf) {
			memcpy(dst, kbuf, klen);
		} else {
			/* A key longer than ours, from another client's wider column. */
			MYSQL_BIND b = { .buffer_type = MYSQL_TYPE_BLOB, .buffer = dst,
					 .buffer_length = klen };

			if (mysql_stmt_fetch_column(st, &b, 0, 0)) {
				e = -EIO;
				break;
			}
		}
	}
	if (!e && rc == 1) {
		w->c->broken = w->c->broken || my_client_error(mysql_stmt_errno(st));
		kv_log(KV_LOG_ERR, "mysql: list: %s", mysql_stmt_error(st));
		e = -EIO;
	}
	mysql_stmt_free_result(st);
	w->exhausted = (long long)w->ch.n < w->chunk;
	return e;
}

static int my_walk_next(struct my_walk *w, struct kv_entry *e)
{
	const struct kv_list_req *r = w->req;
	const char *k, *d;
	size_t klen;
	int rc;

	for (;;) {
		if (w->row == w->ch.n) {
			if (w->exhausted)
				return 1;
			if (w->in_group) {
				if ((rc = my_buf_set(&w->lo, w->group.p, w->group.len, 1)))
					return rc;
				if (!my_successor(&w->lo))
					return 1;
			} else {
				k = w->ch.text.p + w->ch.off[w->ch.n - 1];
				if ((rc = my_buf_set(&w->lo, k, w->ch.len[w->ch.n - 1], 1)))
					return rc;
				w->lo.p[w->lo.len++] = '\0';  /* the smallest key after it */
			}
			if ((rc = my_walk_query(w)))
				return rc;
			continue;
		}
		k = w->ch.text.p + w->ch.off[w->row];
		klen = w->ch.len[w->row];
		if (w->in_group && klen >= w->group.len && memcmp(k, w->group.p, w->group.len) == 0) {
			w->row++;
			continue;
		}
		w->in_group = false;
		*e = (struct kv_entry){ .key = k, .key_len = klen, .size = w->ch.size[w->row] };
		w->row++;
		d = r->delim && klen > r->prefix_len
		    ? memchr(k + r->prefix_len, r->delim, klen - r->prefix_len) : NULL;
		if (d) {
			if ((rc = my_buf_set(&w->group, k, (size_t)(d - k) + 1, 0)))
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

static int my_list(struct kv_store *st, const struct kv_list_req *req, kv_list_cb *cb, void *ctx,
		   bool *more)
{
	struct my_store *s = kv_store_cast(struct my_store, st);
	struct my_walk w = { .s = s, .req = req };
	size_t limit = req->limit ? req->limit : MY_PAGE, done = 0;
	struct kv_entry e;
	bool reused;
	int rc, stop;

	*more = false;
	w.chunk = limit + 1 < MY_CHUNK ? (limit + 1 < 8 ? 8 : (long long)limit + 1) : MY_CHUNK;
	if (req->start && kv_key_cmp(req->start, req->start_len, req->prefix, req->prefix_len) > 0)
		rc = my_buf_set(&w.lo, req->start, req->start_len, 1);
	else
		rc = my_buf_set(&w.lo, req->prefix, req->prefix_len, 1);
	if (!rc)
		rc = my_buf_set(&w.hi, req->prefix, req->prefix_len, 0);
	if (rc)
		goto out_free;
	w.has_hi = my_successor(&w.hi);
	if ((rc = my_acquire(s, &w.c, &reused)))
		goto out_free;
	rc = my_walk_query(&w);
	if (rc && w.c->broken && reused) {  /* a stale pooled connection: once more */
		my_release(s, w.c);
		if ((rc = my_acquire(s, &w.c, &reused)))
			goto out_free;
		rc = my_walk_query(&w);
	}
	while (!rc && done < limit && !(rc = my_walk_next(&w, &e))) {
		done++;
		stop = cb(ctx, &e);
		if (stop) {
			*more = true;
			rc = stop < 0 ? stop : 0;
			goto out;
		}
	}
	if (rc == 0 && done == limit) {
		rc = my_walk_next(&w, &e);
		*more = rc == 0;
	}
	if (rc == 1)
		rc = 0;
out:
	my_release(s, w.c);
out_free:
	free(w.lo.p);
	free(w.hi.p);
	free(w.group.p);
	free(w.ch.text.p);
	return rc;
}

/* ---- health ---- */

static const char my_health_sql[] =
	"SELECT VERSION(), DATABASE(), CURRENT_USER(), @@max_allowed_packet,"
	" @@innodb_flush_log_at_trx_commit, @@read_only";

static long long my_health_on(struct my_store *s, struct my_conn *c, void *arg)
{
	static const char *const names[] = {
		"server_version", "database", "user", "max_allowed_packet",
		"innodb_flush_log_at_trx_commit", "read_only",
	};
	struct kv_health *h = arg;
	MYSQL_RES *res;
	MYSQL_ROW row;
	long long rc;

	(void)s;
	rc = my_query(c, my_health_sql);
	if (rc)
		return rc;
	res = mysql_store_result(c->db);
	row = res ? mysql_fetch_row(res) : NULL;
	if (!row || mysql_num_fields(res) != 6) {
		c->broken = c->broken || my_client_error(mysql_errno(c->db));
		mysql_free_result(res);
		return -EIO;
	}
	h->nfacts = 0;
	snprintf(h->detail, sizeof h->detail, "%s, table %s", row[0] ? row[0] : "?",
		 s->table_name);
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		kv_health_fact(h, names[i], "%s", row[i] ? row[i] : "NULL");
	mysql_free_result(res);
	return 0;
}

static int my_health(struct kv_store *st, struct kv_health *h)
{
	struct my_store *s = kv_store_cast(struct my_store, st);
	size_t inuse;

	if (my_call(s, my_health_on, h, true)) {
		snprintf(h->detail, sizeof h->detail, "mysql: the server does not answer");
		return -EIO;
	}
	pthread_mutex_lock(&s->lock);
	inuse = s->nopen - s->nidle;
	pthread_mutex_unlock(&s->lock);
	kv_health_fact(h, "connections", "%zu in use of %d", inuse, MY_POOL);
	kv_health_fact(h, "max_value", "%zu", s->max_value);
	return 0;
}

static void my_store_limits(struct kv_store *st, struct kv_limits *out)
{
	struct my_store *s = kv_store_cast(struct my_store, st);

	out->max_key = __atomic_load_n(&s->max_key, __ATOMIC_RELAXED);
	out->max_value = __atomic_load_n(&s->max_value, __ATOMIC_RELAXED);
}

/* ---- open and close ---- */

static void my_free(struct my_store *s)
{
	while (s->nidle)
		my_conn_free(s->idle[--s->nidle]);
	for (int i = 0; i < MY_NSQL; i++)
		free(s->sql[i]);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->ready_lock);
	pthread_cond_destroy(&s->freed);
	free(s->host);
	free(s->user);
	free(s->db);
	free(s->option_file);
	free(s->table_name);
	free(s);
}

static void my_close(struct kv_store *st)
{
	my_free(kv_store_cast(struct my_store, st));
}

static bool my_valid_identifier(const char *t)
{
	size_t n = strlen(t);

	if (n == 0 || n > 64 || !((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') || *t == '_'))
		return false;
	return strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == n;
}

/* %XX escapes of a URL part, in place; false on a bad escape. */
static bool my_unescape(char *p)
{
	char *o = p;
	unsigned x;

	for (; *p; p++) {
		if (*p != '%') {
			*o++ = *p;
			continue;
		}
		if (sscanf(p + 1, "%2x", &x) != 1 || !p[1] || !p[2] || x == 0)
			return false;
		*o++ = (char)x;
		p += 2;
	}
	*o = '\0';
	return true;
}

/* "//[user@]host[:port]/database": no password, no query. */
static int my_parse_url(struct my_store *s, const struct kv_open_args *a, char *err, size_t errlen)
{
	const char *loc = a->location ? a->location : "";
	const char *auth, *slash, *at, *colon, *hostend;
	char *end;
	unsigned long port;

	if (strncmp(loc, "//", 2) != 0)
		goto bad;
	auth = loc + 2;
	slash = strchr(auth, '/');
	if (!slash)
		slash = auth + strlen(auth);  /* no database: an option file's, if any */
	if (*slash && strpbrk(slash + 1, "?/#")) {
		snprintf(err, errlen, "mysql: the URL takes no parameters: use -o options "
			 "(table, option_file) and option files for the rest");
		return -EINVAL;
	}
	at = memchr(auth, '@', (size_t)(slash - auth));
	if (at && memchr(auth, ':', (size_t)(at - auth))) {
		snprintf(err, errlen, "mysql: a password in the URL would show in ps: remove it "
			 "and put it in MYSQL_PWD or an option file (~/.my.cnf, -o option_file=)");
		return -EINVAL;
	}
	if (at) {
		s->user = strndup(auth, (size_t)(at - auth));
		if (!s->user || !my_unescape(s->user))
			goto bad;
		auth = at + 1;
	}
	hostend = slash;
	if (*auth == '[') {  /* [ipv6] */
		const char *rb = memchr(auth, ']', (size_t)(slash - auth));

		if (!rb)
			goto bad;
		s->host = strndup(auth + 1, (size_t)(rb - auth - 1));
		colon = rb + 1 < slash && rb[1] == ':' ? rb + 1 : NULL;
		if (!colon && rb + 1 != slash)
			goto bad;
	} else {
		colon = memchr(auth, ':', (size_t)(slash - auth));
		s->host = strndup(auth, (size_t)((colon ? colon : hostend) - auth));
	}
	if (!s->host || !*s->host)
		goto bad;
	if (colon) {
		port = strtoul(colon + 1, &end, 10);
		if (end != slash || colon + 1 == slash || port == 0 || port > 65535)
			goto bad;
		s->port = (unsigned)port;
	}
	if (*slash && slash[1]) {
		s->db = strdup(slash + 1);
		if (!s->db || !my_unescape(s->db))
			goto bad;
	}
	return 0;
bad:
	snprintf(err, errlen, "mysql: expected mysql://[user@]host[:port][/database], got '%s'",
		 a->url);
	return -EINVAL;
}

static int my_build_sql(struct my_store *s, bool has_sz)
{
	const char *t = s->table_name, *sz = has_sz ? "sz" : "LENGTH(v)";
	char buf[300];

	for (int i = 0; i < MY_NSQL; i++) {
		switch ((enum my_sql)i) {
		case MY_GET:
			snprintf(buf, sizeof buf, "SELECT v, ver FROM `%s` WHERE k = ?", t);
			break;
		case MY_STAT:
			snprintf(buf, sizeof buf, "SELECT %s FROM `%s` WHERE k = ?", sz, t);
			break;
		case MY_SET:
			snprintf(buf, sizeof buf, "INSERT INTO `%s` (k, v, ver) VALUES (?, ?, ?) "
				 "ON DUPLICATE KEY UPDATE v = VALUES(v), ver = VALUES(ver)", t);
			break;
		case MY_DEL:
			snprintf(buf, sizeof buf, "DELETE FROM `%s` WHERE k = ?", t);
			break;
		case MY_CAS_NEW:
			snprintf(buf, sizeof buf, "INSERT INTO `%s` (k, v, ver) VALUES (?, ?, ?) "
				 "ON DUPLICATE KEY UPDATE k = k", t);
			break;
		case MY_CAS_UPD:
			snprintf(buf, sizeof buf, "UPDATE `%s` SET v = ?, ver = ? WHERE k = ? AND ver = ?",
				 t);
			break;
		case MY_LIST:
			snprintf(buf, sizeof buf,
				 "SELECT k, %s FROM `%s` WHERE k >= ? ORDER BY k LIMIT ?", sz, t);
			break;
		case MY_LIST_HI:
			snprintf(buf, sizeof buf,
				 "SELECT k, %s FROM `%s` WHERE k >= ? AND k < ? ORDER BY k LIMIT ?", sz, t);
			break;
		case MY_NSQL:
			break;
		}
		if (!(s->sql[i] = strdup(buf)))
			return -ENOMEM;
	}
	return 0;
}

/* One text statement at open; the server's error number, 0, or -1 on no answer. */
static long my_open_query(struct my_conn *c, const char *sql, char *err, size_t errlen)
{
	if (mysql_real_query(c->db, sql, strlen(sql)) == 0)
		return 0;
	snprintf(err, errlen, "%s", mysql_error(c->db));
	return (long)mysql_errno(c->db);
}

/* One number from a one-row query, or -1. */
static long long my_open_number(struct my_conn *c, const char *sql)
{
	char err[8];
	MYSQL_RES *res;
	MYSQL_ROW row;
	long long n = -1;

	if (my_open_query(c, sql, err, sizeof err))
		return -1;
	res = mysql_store_result(c->db);
	row = res ? mysql_fetch_row(res) : NULL;
	if (row && row[0])
		n = strtoll(row[0], NULL, 10);
	mysql_free_result(res);
	return n;
}

/*
 * Make sure the table is there (create it if missing), learn whether it has
 * sz, the width of k and max_allowed_packet.
 */
static int my_prepare_table(struct my_store *s, struct my_conn *c, char *err, size_t errlen)
{
	char sql[400], why[200];
	long code;
	long long n;
	bool has_sz = true;

	snprintf(sql, sizeof sql, "SELECT k, v, ver FROM `%s` LIMIT 0", s->table_name);
	code = my_open_query(c, sql, why, sizeof why);
	if (code == 1146) {  /* ER_NO_SUCH_TABLE */
		snprintf(sql, sizeof sql,
			 "CREATE TABLE IF NOT EXISTS `%s` (k VARBINARY(%d) NOT NULL PRIMARY KEY, "
			 "v LONGBLOB NOT NULL, ver BIGINT NOT NULL DEFAULT (FLOOR(RAND() * 9e18) + 1), "
			 "sz BIGINT AS (LENGTH(v)) STORED) ENGINE=InnoDB", s->table_name, MY_MAX_KEY);
		code = my_open_query(c, sql, why, sizeof why);
		if (!code)
			kv_log(KV_LOG_INFO, "mysql: created table %s", s->table_name);
	} else if (!code) {
		mysql_free_result(mysql_store_result(c->db));
	}
	if (code) {
		snprintf(err, errlen, "mysql: table %s: %s", s->table_name,
			 code == 1054 ? "exists but lacks the columns k VARBINARY, v LONGBLOB, ver BIGINT"
			 : code == 1046 ? "no database: name one in the URL (mysql://host/database) "
					  "or as database= in an option file"
			 : why);
		return my_client_error((unsigned)code) ? -EIO
		       : my_errno((unsigned)code) == -EACCES ? -EACCES : -EINVAL;
	}
	snprintf(sql, sizeof sql, "SELECT sz FROM `%s` LIMIT 0", s->table_name);
	if (my_open_query(c, sql, why, sizeof why))
		has_sz = false;
	else
		mysql_free_result(mysql_store_result(c->db));
	snprintf(sql, sizeof sql, "SELECT CHARACTER_OCTET_LENGTH FROM information_schema.COLUMNS "
		 "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '%s' AND COLUMN_NAME = 'k'",
		 s->table_name);
	n = my_open_number(c, sql);
	__atomic_store_n(&s->max_key, n > 0 && n < MY_MAX_KEY ? (size_t)n : MY_MAX_KEY,
			 __ATOMIC_RELAXED);
	n = my_open_number(c, "SELECT @@max_allowed_packet");
	if (n > MY_PACKET_SLACK && (size_t)(n - MY_PACKET_SLACK) < MY_MAX_VALUE)
		__atomic_store_n(&s->max_value, (size_t)(n - MY_PACKET_SLACK), __ATOMIC_RELAXED);
	if (my_build_sql(s, has_sz)) {
		snprintf(err, errlen, "mysql: out of memory");
		return -ENOMEM;
	}
	return 0;
}

/* Once per store, on the first connection: check or create the table and
 * learn the limits.  0, or -errno with the reason in err. */
static int my_ready(struct my_store *s, struct my_conn *c, char *err, size_t errlen)
{
	int rc = 0;

	if (__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&s->ready_lock);
	if (!s->ready) {
		rc = my_prepare_table(s, c, err, errlen);
		if (!rc)
			__atomic_store_n(&s->ready, true, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&s->ready_lock);
	return rc;
}

/* Connection failures that a later try may not meet: the server or the
 * network is down, as opposed to a refusal (password, database). */
static bool my_unreachable(unsigned code)
{
	return code == CR_CONNECTION_ERROR || code == CR_CONN_HOST_ERROR ||
	       code == CR_SERVER_GONE_ERROR || code == CR_SERVER_LOST;
}

static int my_open(const struct kv_open_args *args, struct kv_store **out, char *err,
		   size_t errlen)
{
	const char *table = kv_option_get(args, "table");
	const char *option_file = kv_option_get(args, "option_file");
	pthread_condattr_t ca;
	struct my_store *s;
	struct my_conn *c;
	unsigned code;
	int rc;

	if (!table)
		table = MY_DEFAULT_TABLE;
	if (!my_valid_identifier(table)) {
		snprintf(err, errlen, "mysql: bad table name '%s' (letters, digits and _, "
			 "not starting with a digit, at most 64)", table);
		return -EINVAL;
	}
	if (option_file && !*option_file) {
		snprintf(err, errlen, "mysql: option_file needs a path");
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "mysql: out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->ready_lock, NULL);
	s->max_key = MY_MAX_KEY;
	s->max_value = MY_MAX_VALUE;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->freed, &ca);
	pthread_condattr_destroy(&ca);
	s->timeout_ms = args->timeout_ms;
	s->table_name = strdup(table);
	s->option_file = option_file ? strdup(option_file) : NULL;
	if (!s->table_name || (option_file && !s->option_file)) {
		my_free(s);
		snprintf(err, errlen, "mysql: out of memory");
		return -ENOMEM;
	}
	rc = my_parse_url(s, args, err, errlen);
	if (rc) {
		my_free(s);
		return rc;
	}
	mysql_library_init(0, NULL, NULL);  /* once, before the FUSE threads */
	/* A server that does not answer now may later: mount anyway. */
	c = my_connect(s, s->timeout_ms < MY_OPEN_WAIT_MS ? s->timeout_ms : MY_OPEN_WAIT_MS,
		       err, errlen, &code);
	if (!c && my_unreachable(code)) {
		kv_log(KV_LOG_WARN, "%s; mounting anyway, calls fail until it answers", err);
		err[0] = '\0';
	} else if (!c) {
		my_free(s);
		return code == 1045 || code == 1044 ? -EACCES : code == 1049 ? -ENOENT : -EIO;
	} else if ((rc = my_ready(s, c, err, errlen))) {
		my_conn_free(c);
		my_free(s);
		return rc;
	} else {
		s->idle[s->nidle++] = c;
		s->nopen = 1;
	}
	s->base.be = &kv_backend_mysql;
	*out = &s->base;
	return 0;
}

/*
 * table: the table of keys in the URL's database (default kv), created if
 * missing.  option_file: an option file read before the default ones' [client]
 * groups, e.g. for the password (MYSQL_READ_DEFAULT_FILE).
 */
static const char *const my_options[] = { "table", "option_file", NULL };
static const char *const my_aliases[] = { "mariadb", NULL };

const struct kv_backend kv_backend_mysql = {
	.scheme = "mysql",
	.aliases = my_aliases,
	.summary = "a table in MariaDB/MySQL (Connector/C; password from MYSQL_PWD or ~/.my.cnf)",
	.usage = "mysql://[user@]host[:port]/database",
	.options = my_options,
	.caps = KV_CAP_ORDERED | KV_CAP_CAS | KV_CAP_TXN | KV_CAP_PERSIST,
	.limits = { .max_key = MY_MAX_KEY, .max_value = MY_MAX_VALUE },
	.open = my_open,
	.close = my_close,
	.get = my_get,
	.set = my_set,
	.del = my_del,
	.list = my_list,
	.health = my_health,
	.stat = my_stat,
	.cas = my_cas,
	.apply = my_apply,
	.store_limits = my_store_limits,
};
