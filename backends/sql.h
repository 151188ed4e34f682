/*
 * sql.h - what the SQL backends (postgresql.c, mysql.c) share.  Every key
 * is one row (k, v, ver) of a table, over a pool of client connections.
 * The operations of struct kv_backend live in sql.c; a backend words the
 * statements for its server and runs one request on one connection.
 */
#ifndef KVFS_SQL_H
#define KVFS_SQL_H

#include "kv.h"
#include "toolkit.h"

/* The statements a backend words (struct sql_client.sql), then the others.
 * SQL_HEALTH, the table's setup (SQL_CHECK, SQL_CREATE) and SQL_TEXT take
 * no parameters. */
enum sql_id {
	SQL_GET, SQL_STAT, SQL_SET, SQL_DEL, SQL_CAS_NEW, SQL_CAS_UPD, SQL_SCAN, SQL_SCAN_TO,
	SQL_HEALTH,               /* a row per fact: its value and its index in sql_client.facts */
	SQL_CHECK, SQL_CREATE, SQL_NSTMT,
	SQL_TEXT = SQL_NSTMT,     /* req.sql as it is: START TRANSACTION, COMMIT, ROLLBACK */
};

#define SQL_NFACTS 6      /* the health statement's rows */

struct sql_store;

/* One request on one connection, and what it found. */
struct sql_req {
	struct sql_store *s;
	enum sql_id id;
	const char *what;         /* for log lines: "get", ..., or the text statement */
	bool txn;                 /* a step of apply's transaction */
	const char *sql;          /* the statement (sql.c sets it but for SQL_TEXT) */
	const char *key, *val;    /* scan: from and to (NULL: no upper bound) */
	size_t klen, vlen;
	size_t max;               /* scan: at most max keys, to cb */
	kv_key_cb *cb;
	void *ctx;
	uint64_t ver, old;        /* the new version, and the one cas expects */
	struct kv_health *h;
	/* The rows read (sql_row) or changed; the last one read: its first
	 * column (get: the value, stat and scan: the key, health: a fact) and
	 * its number (get: the version, stat and scan: the size, health: the
	 * fact's index). */
	uint64_t rows, n;
	struct kv_buf col;
};

struct sql_client {
	const char *name;         /* the scheme, for messages */
	size_t max_table;         /* the longest table name the server takes */
	/* formats of the statements: %1$s the table, %2$s size_expr */
	const char *const *sql;
	const char *size_expr;
	const char *columns;      /* ours with their types, for a table that lacks them */
	const char *product;      /* before the server's version in the health detail */
	const char *facts[SQL_NFACTS];  /* the health statement's, the server's version first */
	const struct kv_pool_ops *pool;
	/* The URL and options past the table, at open: 0 or -errno with err set
	 * (empty for -ENOMEM). */
	int (*parse)(struct sql_store *s, const struct kv_open_args *a, char *err, size_t errlen);
	/* What the client learns on the first connection, once the table is
	 * there (NULL: nothing): 0 or -errno with kv_why set. */
	int (*prepare)(struct sql_store *s, void *conn);
	/* Run r on conn: 0 with every row read handed to sql_row() or the
	 * rows changed in r->rows, -EAGAIN (a failure that passes) or -errno
	 * (SQL_CHECK: -ENOENT no such table, -EINVAL a column missing;
	 * SQL_CREATE: -EEXIST made meanwhile); *broken if conn must not be
	 * reused. */
	int (*exec)(struct sql_store *s, void *conn, struct sql_req *r, bool *broken);
};

#define SQL_POOL 8           /* connections at most, shared by the FUSE threads */
#define SQL_NSTR 8

struct sql_store {
	struct kv_store base;
	const struct sql_client *client;
	char *table;
	int timeout_ms;
	char *sql[SQL_NSTMT];
	char *str[SQL_NSTR];      /* the backend's connection parameters, freed with the store */
	struct kv_once ready;     /* the table checked or created */
	struct kv_pool pool;
	/* Limits the backend learns on the first connection, atomic; 0: its
	 * defaults.  A max_value is also a health fact. */
	size_t max_key, max_value;
};

/* A new store of client cl: 0, or -errno with one line in err. */
int sql_open(const struct kv_open_args *a, const struct sql_client *cl, struct kv_store **out,
	     char *err, size_t errlen);
/* (Re)build s->sql from the client's formats. */
int sql_build(struct sql_store *s, const char *size_expr);
/* A failed statement of r, its errno e (-EAGAIN: a failure that passes) and
 * the server's message: the reason in kv_why for a failure that passes, a
 * health check or the table's setup, else one log line.  Returns e, but
 * -EIO where only the setup's -ENOENT, -EINVAL and -EEXIST make sense. */
int sql_fail(struct sql_req *r, int e, const char *msg);
/* A row of r read into r->col, with its number n (health: a fact and its
 * index); what the scan's callback says (nonzero stops), else 0. */
int sql_row(struct sql_req *r, uint64_t n);
/* A new connection is ready once the table is (kv_once); 0 or -errno. */
int sql_connected(struct sql_store *s, void *conn);

/* The operations of every SQL backend's struct kv_backend. */
#define SQL_BACKEND_OPS .persistent = true, .close = sql_close, .get = sql_get, .set = sql_set, \
	.del = sql_del, .scan = sql_scan, .health = sql_health, .stat = sql_stat, .cas = sql_cas, \
	.apply = sql_apply, .store_limits = sql_store_limits

kv_close_fn sql_close;
kv_get_fn sql_get;
kv_stat_fn sql_stat;
kv_set_fn sql_set;
kv_del_fn sql_del;
kv_cas_fn sql_cas;
kv_apply_fn sql_apply;
kv_scan_fn sql_scan;
kv_health_fn sql_health;
void sql_store_limits(struct kv_store *st, struct kv_limits *out);

#endif
