/*
 * mysql.c - a table in MariaDB or MySQL through MariaDB Connector/C:
 * "mysql://[user@]host[:port]/database" (or mariadb://), parsed by libcurl.
 *
 * The password is never taken from the URL, which would put it on the
 * command line: it comes where the mysql client finds it, from MYSQL_PWD
 * or an option file (~/.my.cnf, /etc/mysql/my.cnf: the groups [client],
 * [client-server], [client-mariadb] and [kvfs]; or -o option_file=PATH).
 *
 * Every key is one row of an InnoDB table (default "kv", -o table=NAME),
 * created when missing: k VARBINARY(3072) PRIMARY KEY, v LONGBLOB, ver
 * BIGINT, sz BIGINT AS (LENGTH(v)) STORED.  VARBINARY compares bytewise,
 * so scan() is one range query "k >= ? AND k < ? ORDER BY k LIMIT ?" on
 * the primary key through binary prepared statements.  sz spares a scan
 * reading values off-page (without it, LENGTH(v)).  ver is a random 63-bit
 * number written with each value; cas is one statement that updates only
 * the row still carrying the expected ver.
 *
 * Connector/C bounds every socket read and write by the timeout (whole
 * seconds), so a silent server fails the call while a large value that
 * keeps moving may take longer.  Its automatic reconnection is off:
 * connections come from the toolkit's pool, which replaces one the server
 * closed while idle, and a failure that passes (server gone, connection
 * lost, a deadlock) is tried again until the timeout.  open() only checks
 * the URL and files; the first connection checks the table and learns the
 * limits (the value limit from the server's max_allowed_packet).
 */
#include <curl/curl.h>
#include <errno.h>
#include <mysql.h>
#include <errmsg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "toolkit.h"

extern const struct kv_backend kv_backend_mysql;  /* defined at the bottom */

/* InnoDB's longest index key (DYNAMIC rows, 16 kB pages) is 3072 bytes. */
#define MY_MAX_KEY 3072
/* LONGBLOB goes to 4 GB, but a row must fit the server's max_allowed_packet
 * (learned on the first connection) and fs/ holds a whole value in memory. */
#define MY_MAX_VALUE ((size_t)128 << 20)
#define MY_PACKET_SLACK (MY_MAX_KEY + 1024)  /* header, key and ver around a value */
#define MY_POOL 8            /* connections at most, shared by the FUSE threads */
#define MY_DEFAULT_TABLE "kv"

enum my_sql { MY_GET, MY_STAT, MY_SET, MY_DEL, MY_CAS_NEW, MY_CAS_UPD, MY_SCAN, MY_SCAN_TO,
	      MY_NSQL };

/* Files Connector/C reads for TLS (-o options), checked at open. */
enum { MY_SSL_CA, MY_SSL_CERT, MY_SSL_KEY, MY_NSSL };
static const char *const my_ssl_names[MY_NSSL] = { "ssl_ca", "ssl_cert", "ssl_key" };
static const int my_ssl_opts[MY_NSSL] = { MYSQL_OPT_SSL_CA, MYSQL_OPT_SSL_CERT, MYSQL_OPT_SSL_KEY };

/* One connection with its prepared statements, made on first use. */
struct my_conn {
	MYSQL *db;
	MYSQL_STMT *st[MY_NSQL];
	bool broken;
};

struct my_store {
	struct kv_store base;
	char *host, *user, *db, *option_file, *ssl[MY_NSSL];
	unsigned port;
	char *table_name;
	int timeout_ms;
	size_t max_key, max_value;  /* atomic: learned on the first connection */
	char *sql[MY_NSQL];
	struct kv_once ready;       /* the table checked, the limits learned, the SQL built */
	struct kv_pool pool;        /* of struct my_conn */
};

/* ---- Small helpers ---- */

/* A new version: random, nonzero, positive as a BIGINT. */
static long long my_new_version(void)
{
	uint64_t v = kv_random64() & INT64_MAX;

	return v ? (long long)v : 1;
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

/* The errno of a server error. */
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
	case 1698:  /* ER_ACCESS_DENIED_NO_PASSWORD_ERROR */
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

/* Failures that pass: the connection or the server went away, or a
 * transaction lost a deadlock and was rolled back. */
static bool my_passing(unsigned e)
{
	return e == CR_CONNECTION_ERROR || e == CR_CONN_HOST_ERROR || e == CR_SERVER_GONE_ERROR ||
	       e == CR_SERVER_LOST || e == 2055 /* CR_SERVER_LOST_EXTENDED */ ||
	       e == 1053 /* ER_SERVER_SHUTDOWN */ || e == 1927 /* ER_CONNECTION_KILLED */ ||
	       e == 4031 /* MySQL's idle disconnect */ || e == 1213 /* ER_LOCK_DEADLOCK */;
}

/* What a read may say: a failure that passes, or is ours (memory,
 * credentials); anything else went wrong with the store. */
static int my_read_errno(int e)
{
	return e == -EAGAIN || e == -ENOMEM || e == -EACCES || e == -ENOENT || e >= 0 ? e : -EIO;
}

/*
 * The errno of a failed call: -EAGAIN for a failure that passes (its
 * reason in kv_why), otherwise logged.  A client error (CR_*) means the
 * connection is gone or unusable.
 */
static int my_fail(struct my_conn *c, unsigned code, const char *msg, const char *what,
		   const char *key, size_t klen)
{
	if (code >= CR_MIN_ERROR && code <= CR_MAX_ERROR)
		c->broken = true;
	if (my_passing(code)) {
		kv_why_set("%s: %s", what, msg);
		return -EAGAIN;
	}
	kv_log(KV_LOG_ERR, "mysql: %s %s: %s", what, key ? kv_printable(key, klen) : "", msg);
	return my_errno(code);
}

/* ---- Connections ---- */

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

/* The first connection checks the table (my_prepare_table). */
struct my_ready {
	struct my_store *s;
	struct my_conn *c;
};

static int my_prepare_table(void *arg);

/* The pool's connect; the password comes from MYSQL_PWD or an option file. */
static int my_connect(void *ctx, int64_t deadline, void **out)
{
	struct my_store *s = ctx;
	unsigned secs = (unsigned)((s->timeout_ms + 999) / 1000);
	unsigned csecs = (unsigned)((kv_ms_left(deadline) + 999) / 1000);
	unsigned long packet = 1UL << 30;
	my_bool off = 0, on = 1;
	char init[200];
	unsigned code;
	int rc;
	struct my_conn *c = calloc(1, sizeof(*c));

	if (!c || !(c->db = mysql_init(NULL))) {
		free(c);
		return -ENOMEM;
	}
	/* The server gives up on what the client stopped waiting for;
	 * max_statement_time is MariaDB's (10.1+), a comment to MySQL. */
	snprintf(init, sizeof init, "SET SESSION innodb_lock_wait_timeout = %u"
		 " /*M!100100 , max_statement_time = %u */", secs, secs);
	csecs = csecs ? csecs : 1;
	mysql_optionsv(c->db, MYSQL_OPT_CONNECT_TIMEOUT, &csecs);
	mysql_optionsv(c->db, MYSQL_OPT_READ_TIMEOUT, &secs);
	mysql_optionsv(c->db, MYSQL_OPT_WRITE_TIMEOUT, &secs);
	mysql_optionsv(c->db, MYSQL_OPT_RECONNECT, &off);
	mysql_optionsv(c->db, MYSQL_OPT_MAX_ALLOWED_PACKET, &packet);
	mysql_optionsv(c->db, MYSQL_INIT_COMMAND, init);
	mysql_optionsv(c->db, MYSQL_READ_DEFAULT_GROUP, "kvfs");
	if (s->option_file)
		mysql_optionsv(c->db, MYSQL_READ_DEFAULT_FILE, s->option_file);
	for (int i = 0; i < MY_NSSL; i++)
		if (s->ssl[i])
			mysql_optionsv(c->db, my_ssl_opts[i], s->ssl[i]);
	if (s->ssl[MY_SSL_CA])  /* a CA given: TLS, and the server proves who it is */
		mysql_optionsv(c->db, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &on);
	if (!mysql_real_connect(c->db, s->host, s->user, NULL, s->db, s->port, NULL, 0)) {
		code = mysql_errno(c->db);
		kv_why_set("%s", mysql_error(c->db));
		kv_log(KV_LOG_DEBUG, "mysql: cannot connect: %s", kv_why());
		my_conn_free(c);
		/* A refusal stays; the server down, starting or full passes. */
		return my_errno(code) == -EACCES ? -EACCES : code == 1049 ? -ENOENT : -EIO;
	}
	if ((rc = kv_once(&s->ready, my_prepare_table, &(struct my_ready){ s, c }))) {
		my_conn_free(c);
		return rc;
	}
	kv_why_set("%s", "");
	*out = c;
	return 0;
}

/* An idle connection is still good if the server has not said anything:
 * a shutdown or restart closes it, and the socket turns readable. */
static bool my_usable(void *ctx, void *conn)
{
	struct my_conn *c = conn;

	(void)ctx;
	return !c->broken && kv_socket_idle((int)mysql_get_socket(c->db));
}

static void my_disconnect(void *ctx, void *conn)
{
	(void)ctx;
	my_conn_free(conn);
}

static const struct kv_pool_ops my_pool_ops = {
	.connect = my_connect, .usable = my_usable, .close = my_disconnect,
};

/* ---- Statements ---- */

static const char *const my_sql_names[MY_NSQL] = {
	[MY_GET] = "get", [MY_STAT] = "stat", [MY_SET] = "set", [MY_DEL] = "del",
	[MY_CAS_NEW] = "cas", [MY_CAS_UPD] = "cas", [MY_SCAN] = "scan", [MY_SCAN_TO] = "scan",
};

/*
 * Execute statement id with params on c (preparing it on first use).
 * Returns the statement, or NULL with *e set to its errno (my_fail).
 */
static MYSQL_STMT *my_execute(struct my_store *s, struct my_conn *c, enum my_sql id,
			      MYSQL_BIND *params, const char *key, size_t klen, int *e)
{
	MYSQL_STMT *st = c->st[id];

	if (!st) {
		if (!(st = mysql_stmt_init(c->db))) {
			*e = -ENOMEM;
			return NULL;
		}
		if (mysql_stmt_prepare(st, s->sql[id], strlen(s->sql[id]))) {
			*e = my_fail(c, mysql_stmt_errno(st), mysql_stmt_error(st), my_sql_names[id],
				     NULL, 0);
			mysql_stmt_close(st);
			return NULL;
		}
		c->st[id] = st;
	}
	if (mysql_stmt_bind_param(st, params) || mysql_stmt_execute(st)) {
		*e = my_fail(c, mysql_stmt_errno(st), mysql_stmt_error(st), my_sql_names[id], key,
			     klen);
		mysql_stmt_reset(st);
		return NULL;
	}
	return st;
}

/* One text statement (transactions, health): 0 or -errno. */
static int my_query(struct my_conn *c, const char *sql)
{
	if (mysql_real_query(c->db, sql, strlen(sql)))
		return my_fail(c, mysql_errno(c->db), mysql_error(c->db), sql, NULL, 0);
	return 0;
}

/*
 * Run fn on a pooled connection, again while it fails for a passing
 * reason, within the timeout (kv_pool_run); not after a lost connection
 * when the call is not idempotent (cas).
 */
typedef int my_call_fn(struct my_store *s, struct my_conn *c, void *arg);

struct my_call {
	struct my_store *s;
	my_call_fn *fn;
	void *arg;
};

static int my_call_on(void *conn, void *arg, bool *broken)
{
	struct my_call *m = arg;
	struct my_conn *c = conn;
	int rc = m->fn(m->s, c, m->arg);

	*broken = c->broken;
	return rc;
}

static int my_call(struct my_store *s, my_call_fn *fn, void *arg, bool idempotent)
{
	struct my_call m = { .s = s, .fn = fn, .arg = arg };

	return kv_pool_run(&s->pool, kv_deadline(s->timeout_ms), idempotent, my_call_on, &m);
}

/* ---- get, stat, set, del, cas ---- */

/* One statement about one key, and what it found. */
struct my_key_arg {
	enum my_sql id;
	const char *key, *val;
	size_t klen, vlen;
	uint64_t version;     /* cas: the one expected; get: the one found */
	char *out;            /* get: the value */
	size_t len;           /* get: its length; stat: the size */
};

static int my_get_on(struct my_store *s, struct my_conn *c, void *arg)
{
	struct my_key_arg *a = arg;
	unsigned long klen, vlen = 0;
	long long ver = 0, size = 0;
	MYSQL_BIND p[1] = { my_blob(a->key, a->klen, &klen) };
	MYSQL_BIND r[2] = { { .buffer_type = MYSQL_TYPE_BLOB, .length = &vlen }, my_int(&ver) };
	MYSQL_STMT *st;
	int e = 0, rc;

	if (!(st = my_execute(s, c, a->id, p, a->key, a->klen, &e)))
		return my_read_errno(e);
	if (a->id == MY_STAT)
		r[0] = my_int(&size);
	if (mysql_stmt_bind_result(st, r) || (rc = mysql_stmt_fetch(st)) == 1) {
		e = my_fail(c, mysql_stmt_errno(st), mysql_stmt_error(st), "get", a->key, a->klen);
	} else if (rc == MYSQL_NO_DATA) {
		e = -ENOENT;
	} else if (a->id == MY_STAT) {
		a->len = (size_t)size;
	} else if (!(a->out = malloc(vlen + 1))) {
		e = -ENOMEM;
	} else {
		r[0].buffer = a->out;
		r[0].buffer_length = vlen;
		if (vlen && mysql_stmt_fetch_column(st, &r[0], 0, 0)) {
			e = my_fail(c, mysql_stmt_errno(st), mysql_stmt_error(st), "get", a->key,
				    a->klen);
			free(a->out);
			a->out = NULL;
		} else {
			a->out[vlen] = '\0';
			a->len = vlen;
			a->version = (uint64_t)ver;
		}
	}
	mysql_stmt_free_result(st);
	return my_read_errno(e);
}

static int my_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct my_key_arg a = { .id = MY_GET, .key = key, .klen = klen };
	int rc = my_call(kv_store_cast(struct my_store, st), my_get_on, &a, true);

	if (rc)
		return rc;
	*val = a.out;
	*len = a.len;
	if (version)
		*version = a.version;
	return 0;
}

static int my_stat(struct kv_store *st, const char *key, size_t klen, uint64_t *size)
{
	struct my_key_arg a = { .id = MY_STAT, .key = key, .klen = klen };
	int rc = my_call(kv_store_cast(struct my_store, st), my_get_on, &a, true);

	if (!rc)
		*size = a.len;
	return rc;
}

/*
 * A set, a delete or a cas: 0, or -ENOENT (a delete found no row), or
 * -ECANCELED (a cas found no row to change: someone else won).  A cas of
 * version 0 inserts unless the key exists ("ON DUPLICATE KEY UPDATE k = k"
 * changes nothing and so reports 0 rows); otherwise it updates only the
 * row that still carries the version.
 */
static int my_write_on(struct my_store *s, struct my_conn *c, void *arg)
{
	struct my_key_arg *a = arg;
	unsigned long kl, vl;
	long long ver = my_new_version(), old = (long long)a->version;
	MYSQL_BIND p[4] = { my_blob(a->key, a->klen, &kl), my_blob(a->val, a->vlen, &vl),
			    my_int(&ver), my_int(&old) };
	MYSQL_BIND q[4] = { p[1], p[2], p[0], p[3] };  /* UPDATE ... SET v, ver WHERE k, ver */
	int e;
	MYSQL_STMT *st = my_execute(s, c, a->id, a->id == MY_CAS_UPD ? q : p,
				    a->key, a->klen, &e);

	if (!st)
		return e;
	if (a->id == MY_SET || mysql_stmt_affected_rows(st))
		return 0;
	return a->id == MY_DEL ? -ENOENT : -ECANCELED;
}

static int my_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct my_key_arg a = { .id = MY_SET, .key = key, .klen = klen, .val = val, .vlen = vlen };

	return my_call(kv_store_cast(struct my_store, st), my_write_on, &a, true);
}

static int my_del(struct kv_store *st, const char *key, size_t klen)
{
	struct my_key_arg a = { .id = MY_DEL, .key = key, .klen = klen };
	int rc = my_call(kv_store_cast(struct my_store, st), my_write_on, &a, true);

	return rc == 0 || rc == -ENOENT || rc == -EACCES ? rc : -EIO;
}

static int my_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	struct my_key_arg a = { .id = version ? MY_CAS_UPD : MY_CAS_NEW, .key = key, .klen = klen,
				.val = val, .vlen = vlen, .version = version };

	if (version > INT64_MAX)
		return -ECANCELED;  /* not a version this backend hands out */
	return my_call(kv_store_cast(struct my_store, st), my_write_on, &a, false);
}

/* ---- apply: one transaction ---- */

struct my_apply_arg {
	const struct kv_op *ops;
	size_t n;
};

static int my_apply_on(struct my_store *s, struct my_conn *c, void *arg)
{
	struct my_apply_arg *a = arg;
	int rc = my_query(c, "START TRANSACTION");

	for (size_t i = 0; i < a->n && !rc; i++) {
		const struct kv_op *op = &a->ops[i];
		struct my_key_arg w = { .id = op->type == KV_OP_SET ? MY_SET : MY_DEL, .key = op->key,
					.klen = op->key_len, .val = op->val, .vlen = op->val_len };

		if ((rc = my_write_on(s, c, &w)) == -ENOENT)
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
	struct my_apply_arg a = { .ops = ops, .n = n };

	/* Sets are upserts and a missing key's delete is no error here:
	 * running it all again after a lost connection is harmless. */
	return n ? my_call(kv_store_cast(struct my_store, st), my_apply_on, &a, true) : 0;
}

/* ---- scan ---- */

struct my_scan_arg {
	const char *from, *to;
	size_t flen, tlen, max;
	kv_key_cb *cb;
	void *ctx;
};

static int my_scan_on(struct my_store *s, struct my_conn *c, void *arg)
{
	struct my_scan_arg *a = arg;
	char kbuf[MY_MAX_KEY + 1];
	unsigned long fl, tl, klen = 0;
	long long lim = (long long)a->max, size = 0;
	MYSQL_BIND p[3] = { my_blob(a->from, a->flen, &fl), my_blob(a->to, a->tlen, &tl),
			    my_int(&lim) };
	MYSQL_BIND q[2] = { p[0], p[2] };
	MYSQL_BIND r[2] = { { .buffer_type = MYSQL_TYPE_BLOB, .buffer = kbuf,
			      .buffer_length = sizeof kbuf, .length = &klen }, my_int(&size) };
	struct kv_buf big = { 0 };
	MYSQL_STMT *st;
	int e = 0, rc;

	if (!(st = my_execute(s, c, a->to ? MY_SCAN_TO : MY_SCAN, a->to ? p : q, a->from, a->flen, &e)))
		return my_read_errno(e);
	/* All rows to the client first: a failure after that is not worth a
	 * retry, which would hand the callback the same keys twice. */
	if (mysql_stmt_bind_result(st, r) || mysql_stmt_store_result(st)) {
		e = my_fail(c, mysql_stmt_errno(st), mysql_stmt_error(st), "scan", a->from, a->flen);
		mysql_stmt_free_result(st);
		return e == -EAGAIN ? e : -EIO;
	}
	while (!e && ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED)) {
		if (klen <= sizeof kbuf) {
			e = a->cb(a->ctx, kbuf, klen, (uint64_t)size);
			continue;
		}
		/* A key longer than ours, from another client's wider column. */
		MYSQL_BIND b = { .buffer_type = MYSQL_TYPE_BLOB, .buffer_length = klen };

		if ((e = kv_buf_set(&big, NULL, 0)) || (e = kv_buf_reserve(&big, klen)))
			break;
		b.buffer = big.p;
		if (mysql_stmt_fetch_column(st, &b, 0, 0))
			e = -EIO;
		else
			e = a->cb(a->ctx, big.p, klen, (uint64_t)size);
	}
	if (!e && rc == 1) {
		kv_log(KV_LOG_ERR, "mysql: scan: %s", mysql_stmt_error(st));
		e = -EIO;
	}
	mysql_stmt_free_result(st);
	kv_buf_free(&big);
	return e < 0 ? e : 0;
}

static int my_scan(struct kv_store *st, const char *from, size_t flen, const char *to,
		   size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	struct my_scan_arg a = { .from = from, .flen = flen, .to = to, .tlen = tlen, .max = max,
				 .cb = cb, .ctx = ctx };

	return my_call(kv_store_cast(struct my_store, st), my_scan_on, &a, true);
}

/* ---- health ---- */

static int my_health_on(struct my_store *s, struct my_conn *c, void *arg)
{
	static const char *const names[] = {
		"server_version", "database", "user", "max_allowed_packet",
		"innodb_flush_log_at_trx_commit", "read_only",
	};
	struct kv_health *h = arg;
	MYSQL_RES *res;
	MYSQL_ROW row;
	int rc = my_query(c, "SELECT VERSION(), DATABASE(), CURRENT_USER(), @@max_allowed_packet,"
			  " @@innodb_flush_log_at_trx_commit, @@read_only");

	if (rc)
		return rc;
	res = mysql_store_result(c->db);
	if (!(row = res ? mysql_fetch_row(res) : NULL) || mysql_num_fields(res) != 6) {
		rc = my_fail(c, mysql_errno(c->db), mysql_error(c->db), "health", NULL, 0);
		mysql_free_result(res);
		return rc;
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
	int rc = my_call(s, my_health_on, h, true);

	if (rc) {
		snprintf(h->detail, sizeof h->detail, "%s", kv_why()[0] ? kv_why() : strerror(-rc));
		return rc;
	}
	kv_health_fact(h, "connections", "%zu in use of %d", kv_pool_busy(&s->pool), MY_POOL);
	kv_health_fact(h, "max_value", "%zu", s->max_value);
	return 0;
}

static void my_store_limits(struct kv_store *st, struct kv_limits *out)
{
	struct my_store *s = kv_store_cast(struct my_store, st);

	out->max_key = __atomic_load_n(&s->max_key, __ATOMIC_RELAXED);
	out->max_value = __atomic_load_n(&s->max_value, __ATOMIC_RELAXED);
}

/* ---- The table, once per store on its first connection ---- */

/* The statements, for the table (%1$s) and its size column or expression (%2$s). */
static const char *const my_sql_formats[MY_NSQL] = {
	[MY_GET] = "SELECT v, ver FROM `%1$s` WHERE k = ?",
	[MY_STAT] = "SELECT %2$s FROM `%1$s` WHERE k = ?",
	[MY_SET] = "INSERT INTO `%1$s` (k, v, ver) VALUES (?, ?, ?) "
		   "ON DUPLICATE KEY UPDATE v = VALUES(v), ver = VALUES(ver)",
	[MY_DEL] = "DELETE FROM `%1$s` WHERE k = ?",
	[MY_CAS_NEW] = "INSERT INTO `%1$s` (k, v, ver) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE k = k",
	[MY_CAS_UPD] = "UPDATE `%1$s` SET v = ?, ver = ? WHERE k = ? AND ver = ?",
	[MY_SCAN] = "SELECT k, %2$s FROM `%1$s` WHERE k >= ? ORDER BY k LIMIT ?",
	[MY_SCAN_TO] = "SELECT k, %2$s FROM `%1$s` WHERE k >= ? AND k < ? ORDER BY k LIMIT ?",
};

static int my_build_sql(struct my_store *s, bool has_sz)
{
	char buf[300];

	for (int i = 0; i < MY_NSQL; i++) {
		snprintf(buf, sizeof buf, my_sql_formats[i], s->table_name, has_sz ? "sz" : "LENGTH(v)");
		free(s->sql[i]);
		if (!(s->sql[i] = strdup(buf)))
			return -ENOMEM;
	}
	return 0;
}

/* One text statement on the first connection: the server's error number,
 * or 0 (its result read and dropped). */
static unsigned my_setup_query(struct my_conn *c, const char *sql)
{
	if (mysql_real_query(c->db, sql, strlen(sql)))
		return mysql_errno(c->db);
	mysql_free_result(mysql_store_result(c->db));
	return 0;
}

/* One number from a one-row query, or -1. */
static long long my_setup_number(struct my_conn *c, const char *sql)
{
	MYSQL_RES *res;
	MYSQL_ROW row;
	long long n = -1;

	if (mysql_real_query(c->db, sql, strlen(sql)))
		return -1;
	res = mysql_store_result(c->db);
	if ((row = res ? mysql_fetch_row(res) : NULL) && row[0])
		n = strtoll(row[0], NULL, 10);
	mysql_free_result(res);
	return n;
}

/*
 * Make sure the table is there (create it if missing), learn whether it has
 * sz, the width of k and max_allowed_packet, and build the SQL.
 */
static int my_prepare_table(void *arg)
{
	struct my_ready *a = arg;
	struct my_store *s = a->s;
	struct my_conn *c = a->c;
	char sql[400];
	unsigned code;
	long long n;
	bool has_sz;

	snprintf(sql, sizeof sql, "SELECT k, v, ver FROM `%s` LIMIT 0", s->table_name);
	code = my_setup_query(c, sql);
	if (code == 1146) {  /* ER_NO_SUCH_TABLE */
		snprintf(sql, sizeof sql,
			 "CREATE TABLE IF NOT EXISTS `%s` (k VARBINARY(%d) NOT NULL PRIMARY KEY, "
			 "v LONGBLOB NOT NULL, ver BIGINT NOT NULL DEFAULT (FLOOR(RAND() * 9e18) + 1), "
			 "sz BIGINT AS (LENGTH(v)) STORED) ENGINE=InnoDB", s->table_name, MY_MAX_KEY);
		if (!(code = my_setup_query(c, sql)))
			kv_log(KV_LOG_INFO, "mysql: created table %s", s->table_name);
	}
	if (code) {
		kv_why_set("table %s: %s", s->table_name,
			   code == 1054 ? "exists but lacks the columns k VARBINARY, v LONGBLOB, ver BIGINT"
			   : code == 1046 ? "no database: name one in the URL (mysql://host/database) "
					    "or as database= in an option file"
			   : mysql_error(c->db));
		return code >= CR_MIN_ERROR && code <= CR_MAX_ERROR ? -EIO
		       : my_errno(code) == -EACCES ? -EACCES : -EINVAL;
	}
	snprintf(sql, sizeof sql, "SELECT sz FROM `%s` LIMIT 0", s->table_name);
	has_sz = my_setup_query(c, sql) == 0;
	snprintf(sql, sizeof sql, "SELECT CHARACTER_OCTET_LENGTH FROM information_schema.COLUMNS "
		 "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '%s' AND COLUMN_NAME = 'k'",
		 s->table_name);
	n = my_setup_number(c, sql);
	__atomic_store_n(&s->max_key, n > 0 && n < MY_MAX_KEY ? (size_t)n : MY_MAX_KEY,
			 __ATOMIC_RELAXED);
	n = my_setup_number(c, "SELECT @@max_allowed_packet");
	if (n > MY_PACKET_SLACK && (size_t)(n - MY_PACKET_SLACK) < MY_MAX_VALUE)
		__atomic_store_n(&s->max_value, (size_t)(n - MY_PACKET_SLACK), __ATOMIC_RELAXED);
	return my_build_sql(s, has_sz);
}

/* ---- open and close ---- */

static void my_free(struct my_store *s)
{
	kv_pool_destroy(&s->pool);
	kv_once_destroy(&s->ready);
	for (int i = 0; i < MY_NSQL; i++)
		free(s->sql[i]);
	for (int i = 0; i < MY_NSSL; i++)
		free(s->ssl[i]);
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

/*
 * "//[user@]host[:port][/database]": no password, no query.  libcurl
 * parses it (and percent-decodes the parts); the messages never repeat
 * the URL, which may hold a password.
 */
static int my_parse_url(struct my_store *s, const struct kv_open_args *a, char *err, size_t errlen)
{
	enum { PW, QUERY, FRAG, HOST, USER, PORT, PATH, NPARTS };
	static const CURLUPart parts[NPARTS] = {
		CURLUPART_PASSWORD, CURLUPART_QUERY, CURLUPART_FRAGMENT, CURLUPART_HOST,
		CURLUPART_USER, CURLUPART_PORT, CURLUPART_PATH,
	};
	char *v[NPARTS] = { NULL };
	CURLU *u = curl_url();
	CURLUcode cu = u ? curl_url_set(u, CURLUPART_URL, a->url, CURLU_NON_SUPPORT_SCHEME)
			 : CURLUE_OUT_OF_MEMORY;
	int rc = -EINVAL;

	if (strncmp(a->location ? a->location : "", "//", 2) != 0)
		cu = CURLUE_MALFORMED_INPUT;
	for (int i = 0; i < NPARTS && !cu; i++) {
		cu = curl_url_get(u, parts[i], &v[i], CURLU_URLDECODE);
		if (cu != CURLUE_OUT_OF_MEMORY && cu != CURLUE_URLDECODE)
			cu = CURLUE_OK;  /* CURLUE_NO_*: a part that is not there */
	}
	if (cu == CURLUE_OUT_OF_MEMORY)
		rc = -ENOMEM;
	else if (cu)
		snprintf(err, errlen, "mysql: expected mysql://[user@]host[:port][/database]: %s",
			 curl_url_strerror(cu));
	else if (v[PW])
		snprintf(err, errlen, "mysql: a password in the URL would show in ps: remove it "
			 "and put it in MYSQL_PWD or an option file (~/.my.cnf, -o option_file=)");
	else if (v[QUERY] || v[FRAG] || (v[PATH] && strchr(v[PATH] + 1, '/')))
		snprintf(err, errlen, "mysql: the URL takes nothing after the database: use -o options "
			 "(table, option_file, ssl_ca, ...) and option files for the rest");
	else if (!v[HOST] || !v[HOST][0])
		snprintf(err, errlen, "mysql: expected mysql://[user@]host[:port][/database]");
	else
		rc = 0;
	if (!rc) {
		/* [ipv6]: Connector/C takes it bare */
		s->host = v[HOST][0] == '[' ? strndup(v[HOST] + 1, strcspn(v[HOST] + 1, "]"))
					    : strdup(v[HOST]);
		s->user = v[USER] ? strdup(v[USER]) : NULL;
		s->db = v[PATH] && v[PATH][1] ? strdup(v[PATH] + 1) : NULL;
		s->port = v[PORT] ? (unsigned)strtoul(v[PORT], NULL, 10) : 0;  /* libcurl checked it */
		if (!s->host || (v[USER] && !s->user) || (v[PATH] && v[PATH][1] && !s->db))
			rc = -ENOMEM;
	}
	for (int i = 0; i < NPARTS; i++)
		curl_free(v[i]);
	curl_url_cleanup(u);
	return rc;
}

/* The options: the table name, and files that must be there. */
static int my_parse_options(struct my_store *s, const struct kv_open_args *a, char *err,
			    size_t errlen)
{
	const char *table = kv_option_get(a, "table"), *file;
	char why[300];
	int rc;

	if (!table)
		table = MY_DEFAULT_TABLE;
	if (!kv_is_identifier(table, 64)) {
		snprintf(err, errlen, "mysql: bad table name '%s' (letters, digits and _, "
			 "not starting with a digit, at most 64)", table);
		return -EINVAL;
	}
	if (!(s->table_name = strdup(table)))
		return -ENOMEM;
	for (int i = -1; i < MY_NSSL; i++) {
		const char *name = i < 0 ? "option_file" : my_ssl_names[i];
		char **dst = i < 0 ? &s->option_file : &s->ssl[i];

		if (!(file = kv_option_get(a, name)))
			continue;
		if ((rc = kv_check_file(file, name, why, sizeof why))) {
			snprintf(err, errlen, "mysql: %s", why);
			return rc;
		}
		if (!(*dst = strdup(file)))
			return -ENOMEM;
	}
	return 0;
}

static int my_open(const struct kv_open_args *args, struct kv_store **out, char *err,
		   size_t errlen)
{
	struct my_store *s = calloc(1, sizeof(*s));
	int rc;

	if (!s) {
		snprintf(err, errlen, "mysql: out of memory");
		return -ENOMEM;
	}
	kv_once_init(&s->ready);
	kv_pool_init(&s->pool, "mysql", &my_pool_ops, s, MY_POOL);
	s->max_key = MY_MAX_KEY;
	s->max_value = MY_MAX_VALUE;
	s->timeout_ms = args->timeout_ms;
	err[0] = '\0';
	if ((rc = my_parse_options(s, args, err, errlen)) || (rc = my_parse_url(s, args, err, errlen))) {
		if (!err[0])
			snprintf(err, errlen, "mysql: out of memory");
		my_free(s);
		return rc;
	}
	mysql_library_init(0, NULL, NULL);  /* once, before the FUSE threads */
	s->base.be = &kv_backend_mysql;
	*out = &s->base;
	return 0;
}

/*
 * table: the table of keys in the URL's database (default kv), created if
 * missing.  option_file: an option file read before the default ones' [client]
 * groups, e.g. for the password (MYSQL_READ_DEFAULT_FILE).  ssl_ca,
 * ssl_cert, ssl_key: TLS files (a CA also makes the server's certificate
 * checked).
 */
static const char *const my_options[] = { "table", "option_file", "ssl_ca", "ssl_cert", "ssl_key",
					  NULL };
static const char *const my_aliases[] = { "mariadb", NULL };

const struct kv_backend kv_backend_mysql = {
	.scheme = "mysql",
	.aliases = my_aliases,
	.summary = "a table in MariaDB/MySQL (Connector/C; password from MYSQL_PWD or ~/.my.cnf)",
	.usage = "mysql://[user@]host[:port]/database",
	.options = my_options,
	.persistent = true,
	.limits = { .max_key = MY_MAX_KEY, .max_value = MY_MAX_VALUE },
	.open = my_open,
	.close = my_close,
	.get = my_get,
	.set = my_set,
	.del = my_del,
	.scan = my_scan,
	.health = my_health,
	.stat = my_stat,
	.cas = my_cas,
	.apply = my_apply,
	.store_limits = my_store_limits,
};
