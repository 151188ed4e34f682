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
 * reading values off-page (without it, LENGTH(v)).
 *
 * Connector/C bounds every socket read and write by the timeout (whole
 * seconds), so a silent server fails the call while a large value that
 * keeps moving may take longer.  Its automatic reconnection is off: the
 * pool replaces a connection the server closed while idle.  Failures that
 * pass (sql.c) are the server gone, a connection lost and a deadlock.  The
 * first connection also learns the limits (the value limit from the
 * server's max_allowed_packet).
 */
#include <curl/curl.h>
#include <errno.h>
#include <mysql.h>
#include <errmsg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sql.h"

/* InnoDB's longest index key (DYNAMIC rows, 16 kB pages) is 3072 bytes. */
#define MY_MAX_KEY 3072
/* LONGBLOB goes to 4 GB, but a row must fit the server's max_allowed_packet
 * (learned on the first connection) and fs/ holds a whole value in memory. */
#define MY_MAX_VALUE ((size_t)128 << 20)
#define MY_PACKET_SLACK (MY_MAX_KEY + 1024)  /* header, key and ver around a value */

/* The connection parameters in sql.str; the files among them (-o options)
 * are checked at open. */
enum { MY_HOST, MY_USER, MY_DB, MY_OPTION_FILE, MY_SSL_CA, MY_SSL_CERT, MY_SSL_KEY, MY_PORT };
static const char *const my_files[] = {
	[MY_OPTION_FILE] = "option_file", [MY_SSL_CA] = "ssl_ca", [MY_SSL_CERT] = "ssl_cert",
	[MY_SSL_KEY] = "ssl_key",
};

/* One connection with its prepared statements, made on first use. */
struct my_conn {
	MYSQL *db;
	MYSQL_STMT *st[SQL_CHECK];
	bool broken;
};

/* The statements, for the table (%1$s) and its size column or expression
 * (%2$s: sz, or LENGTH(v) in a table without it).  3072 is MY_MAX_KEY. */
static const char *const my_sql[SQL_NSTMT] = {
	[SQL_GET] = "SELECT v, ver FROM `%1$s` WHERE k = ?",
	[SQL_STAT] = "SELECT k, %2$s FROM `%1$s` WHERE k = ?",
	[SQL_SET] = "INSERT INTO `%1$s` (k, v, ver) VALUES (?, ?, ?) "
		    "ON DUPLICATE KEY UPDATE v = VALUES(v), ver = VALUES(ver)",
	[SQL_DEL] = "DELETE FROM `%1$s` WHERE k = ?",
	[SQL_CAS_NEW] = "INSERT INTO `%1$s` (k, v, ver) VALUES (?, ?, ?) "
			"ON DUPLICATE KEY UPDATE k = k",
	[SQL_CAS_UPD] = "UPDATE `%1$s` SET v = ?, ver = ? WHERE k = ? AND ver = ?",
	[SQL_SCAN] = "SELECT k, %2$s FROM `%1$s` WHERE k >= ? ORDER BY k LIMIT ?",
	[SQL_SCAN_TO] = "SELECT k, %2$s FROM `%1$s` WHERE k >= ? AND k < ? ORDER BY k LIMIT ?",
	[SQL_HEALTH] = "SELECT VERSION(), 0 UNION ALL SELECT DATABASE(), 1 UNION ALL "
		       "SELECT CURRENT_USER(), 2 UNION ALL SELECT @@max_allowed_packet, 3 "
		       "UNION ALL SELECT @@innodb_flush_log_at_trx_commit, 4 UNION ALL "
		       "SELECT @@read_only, 5",
	[SQL_CHECK] = "SELECT k, v, ver FROM `%1$s` LIMIT 0",
	[SQL_CREATE] = "CREATE TABLE IF NOT EXISTS `%1$s` (k VARBINARY(3072) NOT NULL "
		       "PRIMARY KEY, v LONGBLOB NOT NULL, ver BIGINT NOT NULL "
		       "DEFAULT (FLOOR(RAND() * 9e18) + 1), sz BIGINT AS (LENGTH(v)) STORED) "
		       "ENGINE=InnoDB",
};

/* ---- Small helpers ---- */

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
	case 1146:  /* ER_NO_SUCH_TABLE */
		return -ENOENT;
	case 1054:  /* ER_BAD_FIELD_ERROR: a column missing */
		return -EINVAL;
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

/* The errno of a failed call (sql_fail).  A client error (CR_*) means the
 * connection is gone or unusable. */
static int my_fail(struct my_conn *c, struct sql_req *r, unsigned code, const char *msg)
{
	if (code >= CR_MIN_ERROR && code <= CR_MAX_ERROR)
		c->broken = true;
	if (code == 1046)  /* ER_NO_DB_ERROR */
		msg = "no database: name one in the URL (mysql://host/database) "
		      "or as database= in an option file";
	return sql_fail(r, my_passing(code) ? -EAGAIN : my_errno(code), msg);
}

static int my_stmt_fail(struct my_conn *c, MYSQL_STMT *st, struct sql_req *r)
{
	return my_fail(c, r, mysql_stmt_errno(st), mysql_stmt_error(st));
}

/* ---- Connections ---- */

/* The pool's close, and of a connection that failed to open. */
static void my_disconnect(void *ctx, void *conn)
{
	struct my_conn *c = conn;

	(void)ctx;
	for (int i = 0; i < SQL_CHECK; i++)
		if (c->st[i])
			mysql_stmt_close(c->st[i]);
	mysql_close(c->db);
	free(c);
}

/* The pool's connect; the password comes from MYSQL_PWD or an option file. */
static int my_connect(void *ctx, int64_t deadline, void **out)
{
	struct sql_store *s = ctx;
	char **str = s->str;
	unsigned secs = (unsigned)((s->timeout_ms + 999) / 1000);
	unsigned csecs = (unsigned)((kv_ms_left(deadline) + 999) / 1000), code;
	unsigned port = str[MY_PORT] ? (unsigned)strtoul(str[MY_PORT], NULL, 10) : 0;
	unsigned long packet = 1UL << 30;
	my_bool off = 0, on = 1;
	char init[200];
	const struct { enum mysql_option opt; const void *arg; } opts[] = {
		{ MYSQL_OPT_CONNECT_TIMEOUT, &csecs }, { MYSQL_OPT_READ_TIMEOUT, &secs },
		{ MYSQL_OPT_WRITE_TIMEOUT, &secs }, { MYSQL_OPT_RECONNECT, &off },
		{ MYSQL_OPT_MAX_ALLOWED_PACKET, &packet }, { MYSQL_INIT_COMMAND, init },
		{ MYSQL_READ_DEFAULT_GROUP, "kvfs" },
		{ MYSQL_READ_DEFAULT_FILE, str[MY_OPTION_FILE] }, { MYSQL_OPT_SSL_CA, str[MY_SSL_CA] },
		{ MYSQL_OPT_SSL_CERT, str[MY_SSL_CERT] }, { MYSQL_OPT_SSL_KEY, str[MY_SSL_KEY] },
		/* a CA given: TLS, and the server proves who it is */
		{ MYSQL_OPT_SSL_VERIFY_SERVER_CERT, str[MY_SSL_CA] ? &on : NULL },
	};
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
	for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
		if (opts[i].arg)
			mysql_optionsv(c->db, opts[i].opt, opts[i].arg);
	if (!mysql_real_connect(c->db, str[MY_HOST], str[MY_USER], NULL, str[MY_DB], port,
				NULL, 0)) {
		code = mysql_errno(c->db);
		kv_why_set("%s", mysql_error(c->db));
		kv_log(KV_LOG_DEBUG, "mysql: cannot connect: %s", kv_why());
		my_disconnect(s, c);
		/* A refusal stays; the server down, starting or full passes. */
		return my_errno(code) == -EACCES ? -EACCES : code == 1049 ? -ENOENT : -EIO;
	}
	if ((rc = sql_connected(s, c))) {
		my_disconnect(s, c);
		return rc;
	}
	*out = c;
	return 0;
}

/* An idle connection is still good if the server has not said anything:
 * a shutdown or restart closes it, and the socket turns readable. */
static bool my_usable(void *ctx, void *conn)
{
	(void)ctx;
	return kv_socket_idle((int)mysql_get_socket(((struct my_conn *)conn)->db));
}

static const struct kv_pool_ops my_pool_ops = {
	.connect = my_connect, .usable = my_usable, .close = my_disconnect,
};

/* ---- Statements ---- */

/* A text statement (the table's setup, a transaction's ends): 0 or -errno. */
static int my_query(struct my_conn *c, struct sql_req *r)
{
	if (mysql_real_query(c->db, r->sql, strlen(r->sql)))
		return my_fail(c, r, mysql_errno(c->db), mysql_error(c->db));
	mysql_free_result(mysql_store_result(c->db));  /* the check's empty rows */
	return 0;
}

/*
 * A statement of the table: get, stat and scan read rows, a write counts
 * the rows it changed.  A cas of version 0 inserts unless the key exists
 * ("ON DUPLICATE KEY UPDATE k = k" changes nothing and so reports 0 rows);
 * otherwise it updates only the row that still carries the version.
 */
static int my_stmt_on(struct sql_store *s, struct my_conn *c, struct sql_req *r)
{
	bool scan = r->id == SQL_SCAN || r->id == SQL_SCAN_TO, bad;
	unsigned long kl, vl, len = 0;
	long long ver = (long long)(scan ? r->max : r->ver), old = (long long)r->old, n = 0;
	MYSQL_BIND p[4] = { my_blob(r->key, r->klen, &kl), my_blob(r->val, r->vlen, &vl),
			    my_int(&ver), my_int(&old) };
	MYSQL_BIND upd[4] = { p[1], p[2], p[0], p[3] };  /* UPDATE ... SET v, ver WHERE k, ver */
	MYSQL_BIND from[2] = { p[0], p[2] };             /* a scan without upper bound */
	MYSQL_BIND res[2] = { { .buffer_type = MYSQL_TYPE_BLOB, .length = &len }, my_int(&n) };
	MYSQL_BIND col = { .buffer_type = MYSQL_TYPE_BLOB };
	MYSQL_STMT *st = c->st[r->id];
	int e = 0, rc = 0;

	/* prepared on first use */
	if (!st && !(st = mysql_stmt_init(c->db)))
		return -ENOMEM;
	if (!c->st[r->id] && mysql_stmt_prepare(st, s->sql[r->id], strlen(s->sql[r->id]))) {
		e = my_stmt_fail(c, st, r);
		mysql_stmt_close(st);
		return e;
	}
	c->st[r->id] = st;
	if (mysql_stmt_bind_param(st, r->id == SQL_CAS_UPD ? upd : r->id == SQL_SCAN ? from : p) ||
	    mysql_stmt_execute(st)) {
		e = my_stmt_fail(c, st, r);
		mysql_stmt_reset(st);
		return e;
	}
	if (!mysql_stmt_field_count(st)) {
		r->rows = mysql_stmt_affected_rows(st);
		return 0;
	}
	/* A scan's rows all to the client first: a failure after that is not
	 * worth a retry, which would hand the callback the same keys twice. */
	bad = mysql_stmt_bind_result(st, res) || (scan && mysql_stmt_store_result(st));
	while (!bad && !e && ((rc = mysql_stmt_fetch(st)) == 0 || rc == MYSQL_DATA_TRUNCATED)) {
		/* The first column into a buffer of its length: another
		 * client's column may be wider than ours. */
		r->col.len = 0;
		if ((e = kv_buf_reserve(&r->col, len)))
			break;
		col.buffer = r->col.p;
		col.buffer_length = len;
		bad = len && mysql_stmt_fetch_column(st, &col, 0, 0);
		r->col.len = len;
		e = bad ? 0 : sql_row(r, (uint64_t)n);
	}
	if (!e && (bad || rc == 1))
		e = my_stmt_fail(c, st, r);
	mysql_stmt_free_result(st);
	if (e == -EAGAIN && scan && r->rows)
		e = -EIO;
	return e < 0 ? e : 0;
}

static int my_exec(struct sql_store *s, void *conn, struct sql_req *r, bool *broken)
{
	struct my_conn *c = conn;
	int rc = r->id >= SQL_CHECK ? my_query(c, r) : my_stmt_on(s, c, r);

	*broken = c->broken;
	return rc;
}

/* ---- The table, once per store on its first connection ---- */

/* Learn the width of k, whether the table has sz and max_allowed_packet,
 * and word the SQL for them. */
static int my_prepare_table(struct sql_store *s, void *conn)
{
	MYSQL *db = ((struct my_conn *)conn)->db;
	MYSQL_RES *res;
	MYSQL_ROW row;
	long long n[3];
	char sql[400];

	snprintf(sql, sizeof sql, "SELECT MAX(IF(COLUMN_NAME = 'k', CHARACTER_OCTET_LENGTH, NULL)),"
		 " SUM(COLUMN_NAME = 'sz'), @@max_allowed_packet FROM information_schema.COLUMNS"
		 " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '%s'", s->table);
	res = mysql_real_query(db, sql, strlen(sql)) ? NULL : mysql_store_result(db);
	row = res ? mysql_fetch_row(res) : NULL;
	for (int i = 0; i < 3; i++)
		n[i] = row && row[i] ? strtoll(row[i], NULL, 10) : -1;
	mysql_free_result(res);
	__atomic_store_n(&s->max_key, n[0] > 0 && n[0] < MY_MAX_KEY ? (size_t)n[0] : MY_MAX_KEY,
			 __ATOMIC_RELAXED);
	if (n[2] > MY_PACKET_SLACK && (size_t)(n[2] - MY_PACKET_SLACK) < MY_MAX_VALUE)
		__atomic_store_n(&s->max_value, (size_t)(n[2] - MY_PACKET_SLACK), __ATOMIC_RELAXED);
	return n[1] > 0 ? 0 : sql_build(s, "LENGTH(v)");
}

/* ---- open ---- */

/*
 * "//[user@]host[:port][/database]": no password, no query.  libcurl
 * parses it (and percent-decodes the parts); the messages never repeat
 * the URL, which may hold a password.
 */
static int my_parse_url(struct sql_store *s, const struct kv_open_args *a, char *err, size_t errlen)
{
	enum { PW, QUERY, FRAG, HOST, USER, PORT, PATH, NPARTS };
	static const CURLUPart parts[NPARTS] = {
		CURLUPART_PASSWORD, CURLUPART_QUERY, CURLUPART_FRAGMENT, CURLUPART_HOST,
		CURLUPART_USER, CURLUPART_PORT, CURLUPART_PATH,
	};
	char *v[NPARTS] = { NULL }, **str = s->str;
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
		str[MY_HOST] = v[HOST][0] == '[' ? strndup(v[HOST] + 1, strcspn(v[HOST] + 1, "]"))
					    : strdup(v[HOST]);
		str[MY_USER] = v[USER] ? strdup(v[USER]) : NULL;
		str[MY_DB] = v[PATH] && v[PATH][1] ? strdup(v[PATH] + 1) : NULL;
		str[MY_PORT] = v[PORT] ? strdup(v[PORT]) : NULL;  /* libcurl checked it */
		if (!str[MY_HOST] || (v[USER] && !str[MY_USER]) || (v[PORT] && !str[MY_PORT]) ||
		    (v[PATH] && v[PATH][1] && !str[MY_DB]))
			rc = -ENOMEM;
	}
	for (int i = 0; i < NPARTS; i++)
		curl_free(v[i]);
	curl_url_cleanup(u);
	return rc;
}

/* The options (files that must be there), then the URL. */
static int my_parse(struct sql_store *s, const struct kv_open_args *a, char *err, size_t errlen)
{
	const char *file;
	char why[300];
	int rc;

	for (int i = MY_OPTION_FILE; i <= MY_SSL_KEY; i++) {
		if (!(file = kv_option_get(a, my_files[i])))
			continue;
		if ((rc = kv_check_file(file, my_files[i], why, sizeof why))) {
			snprintf(err, errlen, "mysql: %s", why);
			return rc;
		}
		if (!(s->str[i] = strdup(file)))
			return -ENOMEM;
	}
	if ((rc = my_parse_url(s, a, err, errlen)))
		return rc;
	s->max_key = MY_MAX_KEY;
	s->max_value = MY_MAX_VALUE;
	mysql_library_init(0, NULL, NULL);  /* once, before the FUSE threads */
	return 0;
}

static const struct sql_client my_client = {
	.name = "mysql", .max_table = 64, .sql = my_sql, .size_expr = "sz", .pool = &my_pool_ops,
	.columns = "k VARBINARY, v LONGBLOB, ver BIGINT", .product = "",
	.facts = { "server_version", "database", "user", "max_allowed_packet",
		   "innodb_flush_log_at_trx_commit", "read_only" },
	.parse = my_parse, .prepare = my_prepare_table, .exec = my_exec,
};

static int my_open(const struct kv_open_args *args, struct kv_store **out, char *err,
		   size_t errlen)
{
	return sql_open(args, &my_client, out, err, errlen);
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
	.limits = { .max_key = MY_MAX_KEY, .max_value = MY_MAX_VALUE },
	.open = my_open,
	SQL_BACKEND_OPS,
};
