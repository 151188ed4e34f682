/*
 * redis.c - a Redis database as the store, through hiredis:
 * "redis://[user@]host[:port][/db]" or "redis+unix:///path/to/sock[?db=N]".
 *
 * Every key is a Redis string key holding the value, byte for byte, so
 * redis-cli and every other client see and write exactly the keys kvfs
 * shows.  A key of another type (a hash, a list) written by some other
 * client is listed like any key; reading it is -EACCES, and a write
 * through kvfs replaces it, as SET does.
 *
 * Redis has no order: keys() walks the keyspace with SCAN ... MATCH
 * <prefix>*, the prefix's glob characters escaped, in a Lua script that
 * also sizes each key it found (STRLEN), so one round trip gives a step's
 * keys with exact sizes.  The server still visits every key of the
 * database, so a listing costs O(keys in the database).  An index of our
 * own would hide every key another client writes without updating it.
 *
 * Redis keeps no version per key, so a value's version is the first 64
 * bits of its SHA-1, computed by the server (redis.sha1hex) in the Lua
 * script that reads it and in the one that compares and sets atomically.
 * apply() is one MULTI/EXEC (see rd_apply for why it is all or nothing).
 *
 * hiredis contexts are not thread-safe: each call borrows one from the
 * toolkit's pool (connect, AUTH, SELECT on demand).  A call is bounded by
 * -o timeout, except that the wait for the answer to a large write grows
 * with the bytes sent (RD_COMMIT_RATE): the server writes them to its
 * append-only file before it answers.  "Not now" answers (LOADING, BUSY,
 * a failover's READONLY or MASTERDOWN) and lost connections are retried
 * with backoff within the timeout.
 *
 * The password never comes from the URL: -o password_file=FILE, else
 * REDISCLI_AUTH (redis-cli's own variable).
 */
#include <curl/curl.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kv.h"
#include "toolkit.h"

#define RD_DEFAULT_PORT 6379
#define RD_PASSWORD_ENV "REDISCLI_AUTH"
/* Redis's own bound on one argument (proto-max-bulk-len, 512 MB by
 * default); a smaller setting of the server narrows it when we connect. */
#define RD_MAX_VALUE ((size_t)512 << 20)
/* Redis takes keys as long as values, but a key stands for a path, and a
 * path reaches the kernel whole (PATH_MAX 4096, mount point included):
 * 3 KiB leaves a kilobyte for where the store is mounted. */
#define RD_MAX_KEY ((size_t)3 << 10)
#define RD_POOL 16            /* connections at most; more than FUSE's threads */
#define RD_SCAN_COUNT 1000    /* keys the server visits per SCAN call (-o scan_count) */
/* A database this small is walked with one KEYS (about 0.5 us a key on
 * Redis 7.0, so a stall of 10 ms at most) instead of SCAN steps. */
#define RD_KEYS_MAX "20000"
/* Bytes a second the server is granted to take a written value into its
 * append-only file before it answers, on top of the timeout: a 100 MB
 * value may take 10 s more.  The transfer itself is not timed as a whole:
 * every read and write of the socket is bounded by the timeout, so a
 * transfer fails only when it stops moving. */
#define RD_COMMIT_RATE ((size_t)10 << 20)
#define RD_MAX_ARGS 7

struct rd_store {
	struct kv_store base;
	char *host;           /* NULL for a unix socket */
	int port;
	char *sock;           /* unix socket path, or NULL */
	int db;
	char *user;           /* NULL: AUTH with the password alone */
	char *password;       /* NULL: no AUTH */
	char where[128];      /* host:port or the socket, for messages */
	struct timeval tv;
	int timeout_ms;
	char scan_count[16];  /* SCAN's COUNT, as text */
	size_t max_value;     /* narrowed by the server's proto-max-bulk-len (atomic) */
	size_t max_key;
	bool down;            /* atomic: the last call could not connect; log once */
	struct kv_pool pool;
};

/* Why the last call on this thread failed, for health()'s detail line. */
static __thread char rd_why[400];

/* One command of a pipeline: up to RD_MAX_ARGS binary-safe arguments. */
struct rd_cmd {
	int argc;
	const char *argv[RD_MAX_ARGS];
	size_t len[RD_MAX_ARGS];
};

#define RD_ARG(s) (s), strlen(s)

static void rd_cmd_init(struct rd_cmd *c, int argc, ...)
{
	va_list ap;

	va_start(ap, argc);
	c->argc = argc;
	for (int i = 0; i < argc; i++) {
		const char *p = va_arg(ap, const char *);
		size_t n = va_arg(ap, size_t);
		c->argv[i] = n ? p : "";  /* hiredis would copy from a NULL */
		c->len[i] = n;
	}
	va_end(ap);
}

static void rd_free_replies(redisReply **replies, size_t n)
{
	for (size_t i = 0; i < n; i++)
		freeReplyObject(replies[i]);
}

/* ---- errors ---- */

static bool rd_error_is(const redisReply *r, const char *code)
{
	size_t n = strlen(code);

	return r->type == REDIS_REPLY_ERROR && r->len >= n && strncmp(r->str, code, n) == 0 &&
	       (r->len == n || r->str[n] == ' ');
}

/* An answer that means "not now": the command did not run, and the same
 * command may succeed in a moment (a server loading its data set or busy
 * with a script, a replica during a failover).  READONLY is here because
 * behind an address that moved in a failover the connection may still
 * reach the demoted master; a new connection reaches the new one. */
static bool rd_transient(const redisReply *r)
{
	return rd_error_is(r, "LOADING") || rd_error_is(r, "BUSY") ||
	       rd_error_is(r, "MASTERDOWN") || rd_error_is(r, "TRYAGAIN") ||
	       rd_error_is(r, "READONLY");
}

static bool rd_auth_error(const redisReply *r)
{
	return rd_error_is(r, "NOAUTH") || rd_error_is(r, "WRONGPASS") || rd_error_is(r, "NOPERM");
}

/*
 * The one place a server's error reply becomes a kv errno value.  The
 * reply text names the condition (OOM, READONLY, ...), never a secret.
 */
static int rd_reply_errno(const redisReply *r, const char *op, const char *key, size_t klen)
{
	int e = -EIO;
	enum kv_log_level lvl = KV_LOG_ERR;

	if (rd_error_is(r, "OOM")) {
		e = -ENOSPC;
		lvl = KV_LOG_WARN;
	} else if (rd_error_is(r, "READONLY")) {
		e = -EROFS;
		lvl = KV_LOG_WARN;
	} else if (rd_error_is(r, "WRONGTYPE")) {
		e = -EACCES;
		lvl = KV_LOG_INFO;
	} else if (rd_auth_error(r)) {
		e = -EACCES;
	}
	kv_log(lvl, "redis: %s %s: %.*s", op, key ? kv_printable(key, klen) : "",
	       (int)(r->len < 300 ? r->len : 300), r->str);
	return e;
}

/* A reply of an unexpected shape: a protocol mismatch, not the key's fault. */
static int rd_unexpected(const redisReply *r, const char *op, const char *key, size_t klen)
{
	if (r->type == REDIS_REPLY_ERROR)
		return rd_reply_errno(r, op, key, klen);
	kv_log(KV_LOG_ERR, "redis: %s %s: unexpected reply type %d", op,
	       key ? kv_printable(key, klen) : "", r->type);
	return -EIO;
}

/* ---- one round trip ---- */

static struct timeval rd_tv(int64_t ms)
{
	return (struct timeval){ .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
}

/*
 * Send cmds, then read their replies into replies[] (error replies
 * included).  The socket's timeouts bound every read and write, so a
 * transfer that keeps moving is never cut; the wait for the first reply
 * is the timeout (tv) plus the time the server is granted to commit what
 * was sent (*waited gets the sum, in ms).  0, or -EIO (connection lost)
 * or -ETIMEDOUT (no answer in time), after which c is unusable.
 */
static int rd_pipeline(redisContext *c, const struct rd_cmd *cmds, size_t n, redisReply **replies,
		       struct timeval tv, int64_t *waited)
{
	int64_t ms = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
	size_t sent = 0, got = 0;
	int done = 0, e = 0;

	for (size_t i = 0; i < n; i++) {
		if (redisAppendCommandArgv(c, cmds[i].argc, (const char **)cmds[i].argv,
					   cmds[i].len) != REDIS_OK)
			goto fail;
		for (int a = 0; a < cmds[i].argc; a++)
			sent += cmds[i].len[a];
	}
	do {
		if (redisBufferWrite(c, &done) != REDIS_OK)
			goto fail;
	} while (!done);
	ms += (int64_t)(sent / (RD_COMMIT_RATE / 1000));
	if (sent >= RD_COMMIT_RATE / 10 && redisSetTimeout(c, rd_tv(ms)) != REDIS_OK)
		goto fail;
	for (; got < n; got++) {
		void *r = NULL;

		if (redisGetReply(c, &r) != REDIS_OK || !r)
			goto fail;
		replies[got] = r;
		if (got == 0 && sent >= RD_COMMIT_RATE / 10 && redisSetTimeout(c, tv) != REDIS_OK)
			goto fail;
	}
	return 0;
fail:
	e = errno;
	rd_free_replies(replies, got);
	if (!c->err)
		c->err = REDIS_ERR_OTHER;  /* a half-read pipeline: never reuse */
	*waited = ms;
	return c->err == REDIS_ERR_IO && (e == EAGAIN || e == EWOULDBLOCK) ? -ETIMEDOUT : -EIO;
}

/* ---- connections (the toolkit's pool) ---- */

/* The server's proto-max-bulk-len narrows our limits (CONFIG may be
 * disabled, renamed or refused to this user: then Redis's default stands). */
static void rd_learn_limits(struct rd_store *s, const redisReply *r)
{
	unsigned long long v;

	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[1]->type != REDIS_REPLY_STRING)
		return;
	v = strtoull(r->element[1]->str, NULL, 10);
	if (v && v < RD_MAX_VALUE)
		__atomic_store_n(&s->max_value, (size_t)v, __ATOMIC_RELAXED);
	if (v && v < RD_MAX_KEY)
		__atomic_store_n(&s->max_key, (size_t)v, __ATOMIC_RELAXED);
}

/*
 * A new connection: connect, AUTH, SELECT and ask the server's bulk limit,
 * in one round trip, all before deadline.  -EIO (refused, reset, no
 * answer, loading: worth a retry), -EACCES (the password is refused),
 * -EINVAL (no such database); rd_why says which.
 */
static int rd_connect(void *ctx, int64_t deadline, void **out)
{
	struct rd_store *s = ctx;
	struct timeval tv = rd_tv(kv_ms_left(deadline) + 1);
	struct rd_cmd cmds[3];
	redisReply *r[3];
	char dbtext[16];
	size_t n = 0, auth = SIZE_MAX, sel = SIZE_MAX;
	int64_t waited;
	redisContext *c;
	int rc = 0;

	c = s->sock ? redisConnectUnixWithTimeout(s->sock, tv)
		    : redisConnectWithTimeout(s->host, s->port, tv);
	if (!c)
		return -ENOMEM;
	if (c->err || redisSetTimeout(c, tv) != REDIS_OK) {
		snprintf(rd_why, sizeof(rd_why), "cannot connect to %s: %s", s->where, c->errstr);
		redisFree(c);
		return -EIO;
	}
	if (!s->sock)
		redisEnableKeepAlive(c);
	if (s->password) {
		auth = n;
		if (s->user)
			rd_cmd_init(&cmds[n++], 3, RD_ARG("AUTH"), RD_ARG(s->user), RD_ARG(s->password));
		else
			rd_cmd_init(&cmds[n++], 2, RD_ARG("AUTH"), RD_ARG(s->password));
	}
	if (s->db) {
		snprintf(dbtext, sizeof(dbtext), "%d", s->db);
		sel = n;
		rd_cmd_init(&cmds[n++], 2, RD_ARG("SELECT"), RD_ARG(dbtext));
	}
	rd_cmd_init(&cmds[n++], 3, RD_ARG("CONFIG"), RD_ARG("GET"), RD_ARG("proto-max-bulk-len"));
	if (rd_pipeline(c, cmds, n, r, tv, &waited)) {
		snprintf(rd_why, sizeof(rd_why), "%s does not answer: %s", s->where,
			 c->errstr[0] ? c->errstr : "connection closed");
		redisFree(c);
		return -EIO;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		if (r[i]->type != REDIS_REPLY_ERROR || (i != auth && i != sel))
			continue;
		rc = rd_transient(r[i]) ? -EIO : i == auth ? -EACCES : -EINVAL;
		snprintf(rd_why, sizeof(rd_why), "%s %s%s: %.*s", s->where,
			 rc == -EIO ? "is not ready" : i == auth ? "refuses the password" :
			 "has no database ", i == sel ? dbtext : i == auth && s->user ? " for that user" : "",
			 (int)(r[i]->len < 120 ? r[i]->len : 120), r[i]->str);
	}
	if (!rc)
		rd_learn_limits(s, r[n - 1]);
	rd_free_replies(r, n);
	if (rc || redisSetTimeout(c, s->tv) != REDIS_OK) {
		redisFree(c);
		return rc ? rc : -EIO;
	}
	*out = c;
	return 0;
}

/* An idle connection the server has closed (restart, idle timeout) shows
 * as readable with end of file: poll says so without a round trip. */
static bool rd_usable(void *ctx, void *conn)
{
	struct pollfd p = { .fd = ((redisContext *)conn)->fd, .events = POLLIN };

	(void)ctx;
	return poll(&p, 1, 0) == 0;
}

static void rd_disconnect(void *ctx, void *conn)
{
	(void)ctx;
	redisFree(conn);
}

static const struct kv_pool_ops rd_pool_ops = {
	.connect = rd_connect, .usable = rd_usable, .close = rd_disconnect,
};

/* During an outage every call fails: say so once, then quietly. */
static void rd_outage(struct rd_store *s, bool down)
{
	if (__atomic_exchange_n(&s->down, down, __ATOMIC_RELAXED) == down)
		kv_log(KV_LOG_DEBUG, "redis: %s", down ? rd_why : "connected");
	else if (down)
		kv_log(KV_LOG_ERR, "redis: %s", rd_why);
	else
		kv_log(KV_LOG_INFO, "redis: connected to %s again", s->where);
}

enum { RD_ONCE = 1, RD_QUIET = 2 };

/* One attempt on a pooled connection: 0, -EAGAIN or -EROFS ("not now"),
 * -EIO (connection lost) or -ETIMEDOUT; rd_why says why. */
static int rd_attempt(struct rd_store *s, void *conn, const struct rd_cmd *cmds, size_t n,
		      redisReply **r)
{
	redisContext *c = conn;
	int64_t waited;
	int rc = rd_pipeline(c, cmds, n, r, s->tv, &waited);

	if (rc == -ETIMEDOUT)
		snprintf(rd_why, sizeof(rd_why), "%s did not answer within %" PRId64 " ms",
			 s->where, waited);
	else if (rc)
		snprintf(rd_why, sizeof(rd_why), "%s: %s", s->where,
			 c->errstr[0] ? c->errstr : "connection lost");
	for (size_t i = 0; !rc && i < n; i++) {
		if (!rd_transient(r[i]))
			continue;
		snprintf(rd_why, sizeof(rd_why), "%s: %.*s", s->where,
			 (int)(r[i]->len < 120 ? r[i]->len : 120), r[i]->str);
		rc = rd_error_is(r[i], "READONLY") ? -EROFS : -EAGAIN;
		rd_free_replies(r, n);
	}
	kv_pool_put(&s->pool, c, rc && rc != -EAGAIN);
	return rc;
}

/*
 * Run cmds in one round trip on a pooled connection; the replies are the
 * caller's.  Connecting, lost connections and "not now" answers are
 * retried with backoff until the timeout.  A call that is not idempotent
 * (RD_ONCE: del, cas) is not sent again once it may have run, and a
 * server that does not answer in time is not asked again.  0, -EIO,
 * -EROFS or -EACCES (the password is refused).  RD_QUIET: no log lines
 * (health: its detail line is the report).
 */
static int rd_run(struct rd_store *s, const char *op, const char *key, size_t klen,
		  unsigned flags, const struct rd_cmd *cmds, size_t n, redisReply **r)
{
	int64_t deadline = kv_deadline(s->timeout_ms);
	enum kv_log_level lvl = KV_LOG_ERR;
	void *conn;
	bool reused;
	int rc;

	rd_why[0] = '\0';
	for (int attempt = 0;; attempt++) {
		rc = kv_pool_get(&s->pool, deadline, &conn, &reused);
		if (rc) {
			if (!rd_why[0])
				snprintf(rd_why, sizeof(rd_why), "all connections stayed busy");
			if (!(flags & RD_QUIET))
				rd_outage(s, true);
			return rc == -EACCES ? -EACCES : -EIO;
		}
		rc = rd_attempt(s, conn, cmds, n, r);
		if (!rc) {
			if (!(flags & RD_QUIET) && __atomic_load_n(&s->down, __ATOMIC_RELAXED))
				rd_outage(s, false);
			return 0;
		}
		if (rc == -ETIMEDOUT || (rc == -EIO && (flags & RD_ONCE)) ||
		    !kv_backoff(attempt, deadline))
			break;
	}
	if (rc == -EROFS)
		lvl = KV_LOG_WARN;
	if (!(flags & RD_QUIET))
		kv_log(lvl, "redis: %s %s: %s%s", op, key ? kv_printable(key, klen) : "", rd_why,
		       rc == -ETIMEDOUT ? " (-o timeout=T raises the limit)" : "");
	return rc == -EROFS ? -EROFS : -EIO;
}

/* ---- versions ---- */

/*
 * The version of a value is the first 16 hex digits of its SHA-1 (never
 * 0, which cas() reads as "no such key").  Both scripts compute it on the
 * server, so the value never travels just to be hashed.
 */
#define RD_VERSION_LUA \
	"local v = redis.call('GET', KEYS[1])\n" \
	"if not v then return false end\n" \
	"local h = string.sub(redis.sha1hex(v), 1, 16)\n" \
	"if h == '0000000000000000' then h = '0000000000000001' end\n"

static const char rd_getv_script[] = RD_VERSION_LUA "return {v, h}\n";

static const char rd_cas_script[] = RD_VERSION_LUA
	"if h ~= ARGV[1] then return false end\n"
	"redis.call('SET', KEYS[1], ARGV[2])\n"
	"return 1\n";

/* ---- get, stat, set, del, cas, apply ---- */

static int rd_get_value(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
			uint64_t *version)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd cmd;
	redisReply *r, *v;
	int rc;

	if (version)
		rd_cmd_init(&cmd, 4, RD_ARG("EVAL"), RD_ARG(rd_getv_script), RD_ARG("1"), key, klen);
	else
		rd_cmd_init(&cmd, 2, RD_ARG("GET"), key, klen);
	rc = rd_run(s, "get", key, klen, 0, &cmd, 1, &r);
	if (rc)
		return rc;
	v = r;
	if (r->type == REDIS_REPLY_NIL) {
		rc = -ENOENT;
	} else if (version) {
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
		    r->element[0]->type != REDIS_REPLY_STRING ||
		    r->element[1]->type != REDIS_REPLY_STRING) {
			rc = rd_unexpected(r, "get", key, klen);
		} else {
			v = r->element[0];
			*version = strtoull(r->element[1]->str, NULL, 16);
		}
	} else if (r->type != REDIS_REPLY_STRING) {
		rc = rd_unexpected(r, "get", key, klen);
	}
	if (!rc) {
		*len = v->len;
		*val = v->str;  /* hiredis keeps a NUL after it; the buffer is ours now */
		v->str = NULL;
	}
	freeReplyObject(r);
	return rc;
}

/* EXISTS and STRLEN in one round trip: STRLEN alone says 0 for a missing key. */
static int rd_stat(struct kv_store *st, const char *key, size_t klen, uint64_t *size)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd cmds[2];
	redisReply *r[2];
	int rc;

	rd_cmd_init(&cmds[0], 2, RD_ARG("EXISTS"), key, klen);
	rd_cmd_init(&cmds[1], 2, RD_ARG("STRLEN"), key, klen);
	rc = rd_run(s, "stat", key, klen, 0, cmds, 2, r);
	if (rc)
		return rc;
	if (r[0]->type != REDIS_REPLY_INTEGER)
		rc = rd_unexpected(r[0], "stat", key, klen);
	else if (r[0]->integer == 0)
		rc = -ENOENT;
	else if (rd_auth_error(r[1]))
		rc = rd_reply_errno(r[1], "stat", key, klen);
	else  /* an error here: not a string, size 0 */
		*size = r[1]->type == REDIS_REPLY_INTEGER ? (uint64_t)r[1]->integer : 0;
	rd_free_replies(r, 2);
	return rc;
}

/* A write's reply: OK (or 1 from a script), or the server's reason. */
static int rd_write_result(const redisReply *r, const char *op, const char *key, size_t klen)
{
	if (r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_INTEGER)
		return 0;
	if (r->type == REDIS_REPLY_NIL)
		return -ECANCELED;  /* SET NX or the cas script: the version moved */
	return rd_unexpected(r, op, key, klen);
}

/* One write command and its result. */
static int rd_write(struct rd_store *s, const char *op, const char *key, size_t klen,
		    unsigned flags, const struct rd_cmd *cmd)
{
	redisReply *r;
	int rc = rd_run(s, op, key, klen, flags, cmd, 1, &r);

	if (rc)
		return rc;
	rc = rd_write_result(r, op, key, klen);
	freeReplyObject(r);
	return rc;
}

static int rd_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct rd_cmd cmd;

	rd_cmd_init(&cmd, 3, RD_ARG("SET"), key, klen, val, vlen);
	return rd_write(kv_store_cast(struct rd_store, st), "set", key, klen, 0, &cmd);
}

/* DEL answers how many keys it removed: 0 is -ENOENT. */
static int rd_del(struct kv_store *st, const char *key, size_t klen)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd cmd;
	redisReply *r;
	int rc;

	rd_cmd_init(&cmd, 2, RD_ARG("DEL"), key, klen);
	rc = rd_run(s, "del", key, klen, RD_ONCE, &cmd, 1, &r);
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_INTEGER)
		rc = rd_unexpected(r, "del", key, klen);
	else if (r->integer == 0)
		rc = -ENOENT;
	freeReplyObject(r);
	return rc;
}

static int rd_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	char hex[17];
	struct rd_cmd cmd;

	if (version == 0) {
		rd_cmd_init(&cmd, 4, RD_ARG("SET"), key, klen, val, vlen, RD_ARG("NX"));
	} else {
		snprintf(hex, sizeof(hex), "%016" PRIx64, version);
		rd_cmd_init(&cmd, 6, RD_ARG("EVAL"), RD_ARG(rd_cas_script), RD_ARG("1"), key, klen,
			    RD_ARG(hex), val, vlen);
	}
	return rd_write(kv_store_cast(struct rd_store, st), "cas", key, klen, RD_ONCE, &cmd);
}

/*
 * MULTI, the sets and deletes, EXEC, in one round trip.  Redis does not
 * roll back a command that fails while EXEC runs, but SET key value and
 * DEL key have no such failure: memory (maxmemory), a read-only replica
 * and a failed disk (MISCONF) are checked when a command is queued and
 * again for EXEC as a whole, never between the commands of a running
 * EXEC, so a transaction may take Redis past maxmemory but never stops
 * halfway.  A refused command aborts the whole transaction (EXECABORT),
 * and its own error says why.  The append-only file holds the transaction
 * whole or, cut short by a crash, Redis drops it when it loads the file.
 * Sending it again after a lost connection is harmless: same values.
 */
static int rd_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd *cmds = calloc(n + 2, sizeof(*cmds));
	redisReply **r = calloc(n + 2, sizeof(*r)), *exec;
	int rc = -ENOMEM;

	if (!cmds || !r)
		goto out;
	rd_cmd_init(&cmds[0], 1, RD_ARG("MULTI"));
	for (size_t i = 0; i < n; i++) {
		if (ops[i].type == KV_OP_SET)
			rd_cmd_init(&cmds[i + 1], 3, RD_ARG("SET"), ops[i].key, ops[i].key_len,
				    ops[i].val, ops[i].val_len);
		else
			rd_cmd_init(&cmds[i + 1], 2, RD_ARG("DEL"), ops[i].key, ops[i].key_len);
	}
	rd_cmd_init(&cmds[n + 1], 1, RD_ARG("EXEC"));
	rc = rd_run(s, "apply", NULL, 0, 0, cmds, n + 2, r);
	if (rc)
		goto out;
	exec = r[n + 1];
	if (exec->type == REDIS_REPLY_ERROR) {
		/* The queued command's own error names the cause; EXEC's only "aborted". */
		for (size_t i = 0; i <= n && !rc; i++)
			if (r[i]->type == REDIS_REPLY_ERROR)
				rc = rd_reply_errno(r[i], "apply", i ? ops[i - 1].key : NULL,
						    i ? ops[i - 1].key_len : 0);
		if (!rc)
			rc = rd_reply_errno(exec, "apply", NULL, 0);
	} else if (exec->type != REDIS_REPLY_ARRAY || exec->elements != n) {
		rc = rd_unexpected(exec, "apply", NULL, 0);
	}
	for (size_t i = 0; !rc && i < n; i++)
		if (exec->element[i]->type == REDIS_REPLY_ERROR) {  /* cannot happen: see above */
			kv_log(KV_LOG_ERR, "redis: apply: applied in part, the server failed "
			       "operation %zu of %zu", i + 1, n);
			rc = rd_reply_errno(exec->element[i], "apply", ops[i].key, ops[i].key_len);
		}
	rd_free_replies(r, n + 2);
out:
	free(cmds);
	free(r);
	return rc;
}

/* ---- keys ---- */

/*
 * One step of the walk: all of it with KEYS when the database is small,
 * else one SCAN step from the cursor ARGV[1]; the keys found, with their
 * sizes (-1: gone, as a key that expired in the meantime; 0 for a key of
 * another type).  A script runs alone, so the sizes are of those keys.
 */
static const char rd_keys_script[] =
	"local r\n"
	"if ARGV[1] == '0' and redis.call('DBSIZE') <= tonumber(ARGV[4]) then\n"
	"  r = {'0', redis.call('KEYS', ARGV[2])}\n"
	"else\n"
	"  r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])\n"
	"end\n"
	"local sizes = {}\n"
	"for i, k in ipairs(r[2]) do\n"
	"  local n = redis.pcall('STRLEN', k)\n"
	"  if type(n) ~= 'number' then n = 0\n"
	"  elseif n == 0 and redis.call('EXISTS', k) == 0 then n = -1 end\n"
	"  sizes[i] = n\n"
	"end\n"
	"r[3] = sizes\n"
	"return r\n";

/* The MATCH pattern of every key starting with prefix: the prefix with
 * Redis's glob characters escaped, then '*'. */
static int rd_pattern(struct kv_buf *b, const char *prefix, size_t plen)
{
	int rc = kv_buf_reserve(b, 2 * plen + 1);

	for (size_t i = 0; i < plen && !rc; i++) {
		if (prefix[i] && strchr("*?[]\\", prefix[i]))
			b->p[b->len++] = '\\';
		b->p[b->len++] = prefix[i];
	}
	return rc ? rc : kv_buf_add(b, "*", 1);
}

/*
 * Every key under prefix, with its size, one script step at a time; each
 * step is a call of its own (a cursor survives a reconnect).  SCAN may
 * give a key twice; the dispatch layer keeps one.
 */
static int rd_keys(struct kv_store *st, const char *prefix, size_t plen, kv_key_cb *cb, void *ctx)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct kv_buf pat = { 0 };
	char cursor[32] = "0";
	int rc = rd_pattern(&pat, prefix, plen), stop = 0;

	while (!rc && !stop) {
		struct rd_cmd cmd;
		redisReply *r, *keys, *sizes;

		rd_cmd_init(&cmd, 7, RD_ARG("EVAL"), RD_ARG(rd_keys_script), RD_ARG("0"),
			    RD_ARG(cursor), pat.p, pat.len, RD_ARG(s->scan_count), RD_ARG(RD_KEYS_MAX));
		rc = rd_run(s, "list", prefix, plen, 0, &cmd, 1, &r);
		if (rc)
			break;
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
		    r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= sizeof(cursor) ||
		    r->element[1]->type != REDIS_REPLY_ARRAY || r->element[2]->type != REDIS_REPLY_ARRAY ||
		    r->element[1]->elements != r->element[2]->elements) {
			rc = rd_unexpected(r, "list", prefix, plen);
			freeReplyObject(r);
			break;
		}
		memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
		keys = r->element[1];
		sizes = r->element[2];
		for (size_t i = 0; i < keys->elements && !stop; i++) {
			const redisReply *k = keys->element[i], *z = sizes->element[i];

			/* the server's glob said yes; trust only bytes */
			if (k->type == REDIS_REPLY_STRING && k->len >= plen &&
			    memcmp(k->str, prefix, plen) == 0 &&
			    z->type == REDIS_REPLY_INTEGER && z->integer >= 0)
				stop = cb(ctx, k->str, k->len, (uint64_t)z->integer);
		}
		freeReplyObject(r);
		if (strcmp(cursor, "0") == 0)
			break;
	}
	kv_buf_free(&pat);
	return rc ? rc : stop < 0 ? stop : 0;
}

/* ---- health, statfs ---- */

/* The value of "name:" in an INFO reply, or "" if absent. */
static const char *rd_info_field(const redisReply *r, const char *name, char *out, size_t outlen)
{
	size_t n = strlen(name);
	const char *p;

	out[0] = '\0';
	if (!r || r->type != REDIS_REPLY_STRING)
		return out;
	for (p = r->str; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, name, n) == 0 && p[n] == ':') {
			snprintf(out, outlen, "%.*s", (int)strcspn(p + n + 1, "\r\n"), p + n + 1);
			break;
		}
	}
	return out;
}

enum { RD_H_PING, RD_H_SERVER, RD_H_REPL, RD_H_MEMORY, RD_H_PERSIST, RD_H_FSYNC, RD_H_DBSIZE, RD_H_N };

/*
 * PING, four INFO sections, CONFIG GET appendfsync and DBSIZE in one round
 * trip; all reads.  INFO gives the persistence and eviction settings even
 * where CONFIG is disabled or renamed; only appendfsync needs CONFIG, and
 * reads "unknown" without it.  It is also kv_open's probe, so it logs
 * nothing itself: its detail line is the report.
 */
static int rd_health(struct kv_store *st, struct kv_health *h)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd cmds[RD_H_N];
	redisReply *r[RD_H_N];
	char ver[32], role[32], mem[32], maxmem[32], policy[64], aof[8], loading[8], fsync[32] = "unknown";
	char keys[32] = "?";
	const char *warn = "";
	int rc;

	rd_cmd_init(&cmds[RD_H_PING], 1, RD_ARG("PING"));
	rd_cmd_init(&cmds[RD_H_SERVER], 2, RD_ARG("INFO"), RD_ARG("server"));
	rd_cmd_init(&cmds[RD_H_REPL], 2, RD_ARG("INFO"), RD_ARG("replication"));
	rd_cmd_init(&cmds[RD_H_MEMORY], 2, RD_ARG("INFO"), RD_ARG("memory"));
	rd_cmd_init(&cmds[RD_H_PERSIST], 2, RD_ARG("INFO"), RD_ARG("persistence"));
	rd_cmd_init(&cmds[RD_H_FSYNC], 3, RD_ARG("CONFIG"), RD_ARG("GET"), RD_ARG("appendfsync"));
	rd_cmd_init(&cmds[RD_H_DBSIZE], 1, RD_ARG("DBSIZE"));
	rc = rd_run(s, NULL, NULL, 0, RD_QUIET, cmds, RD_H_N, r);
	if (rc) {
		snprintf(h->detail, sizeof(h->detail), "redis: %.240s", rd_why);
		return rc;
	}
	if (r[RD_H_PING]->type == REDIS_REPLY_ERROR) {
		rc = rd_auth_error(r[RD_H_PING]) ? -EACCES : -EIO;
		snprintf(h->detail, sizeof(h->detail), "redis at %s: %.*s%s", s->where,
			 (int)(r[RD_H_PING]->len < 120 ? r[RD_H_PING]->len : 120), r[RD_H_PING]->str,
			 rc == -EACCES && !s->password ? " (no password given: put it in "
			 RD_PASSWORD_ENV " or -o password_file=FILE)" : "");
		rd_free_replies(r, RD_H_N);
		return rc;
	}
	rd_info_field(r[RD_H_SERVER], "redis_version", ver, sizeof(ver));
	rd_info_field(r[RD_H_REPL], "role", role, sizeof(role));
	rd_info_field(r[RD_H_MEMORY], "used_memory", mem, sizeof(mem));
	rd_info_field(r[RD_H_MEMORY], "maxmemory", maxmem, sizeof(maxmem));
	rd_info_field(r[RD_H_MEMORY], "maxmemory_policy", policy, sizeof(policy));
	rd_info_field(r[RD_H_PERSIST], "aof_enabled", aof, sizeof(aof));
	rd_info_field(r[RD_H_PERSIST], "loading", loading, sizeof(loading));
	if (r[RD_H_FSYNC]->type == REDIS_REPLY_ARRAY && r[RD_H_FSYNC]->elements == 2 &&
	    r[RD_H_FSYNC]->element[1]->type == REDIS_REPLY_STRING)
		snprintf(fsync, sizeof(fsync), "%s", r[RD_H_FSYNC]->element[1]->str);
	if (r[RD_H_DBSIZE]->type == REDIS_REPLY_INTEGER)
		snprintf(keys, sizeof(keys), "%lld", r[RD_H_DBSIZE]->integer);
	rd_free_replies(r, RD_H_N);

	if (strcmp(aof, "1") != 0)
		warn = "; appendonly is off: writes since the last snapshot die with the server";
	else if (policy[0] && strcmp(policy, "noeviction") != 0)
		warn = "; maxmemory-policy evicts: keys may vanish under memory pressure";
	snprintf(h->detail, sizeof(h->detail), "redis %s %s, db %d, %s keys%s%s",
		 ver[0] ? ver : "(version unknown)", role[0] ? role : "(role unknown)", s->db, keys,
		 strcmp(loading, "1") == 0 ? ", loading" : "", warn);
	kv_health_fact(h, "redis_version", "%s", ver[0] ? ver : "unknown");
	kv_health_fact(h, "role", "%s", role[0] ? role : "unknown");
	kv_health_fact(h, "used_memory", "%s", mem[0] ? mem : "unknown");
	kv_health_fact(h, "maxmemory", "%s", maxmem[0] ? maxmem : "unknown");
	kv_health_fact(h, "maxmemory_policy", "%s", policy[0] ? policy : "unknown");
	kv_health_fact(h, "appendonly", "%s", !aof[0] ? "unknown" : strcmp(aof, "1") == 0 ? "yes" : "no");
	kv_health_fact(h, "appendfsync", "%s", fsync);
	kv_health_fact(h, "keys", "%s", keys);
	return 0;
}

static int rd_statfs(struct kv_store *st, struct kv_statfs *out)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd cmds[2];
	redisReply *r[2];
	char used[32], max[32];
	uint64_t u, m;
	int rc;

	rd_cmd_init(&cmds[0], 2, RD_ARG("INFO"), RD_ARG("memory"));
	rd_cmd_init(&cmds[1], 1, RD_ARG("DBSIZE"));
	rc = rd_run(s, "statfs", NULL, 0, 0, cmds, 2, r);
	if (rc)
		return rc;
	rd_info_field(r[0], "used_memory", used, sizeof(used));
	rd_info_field(r[0], "maxmemory", max, sizeof(max));
	if (r[1]->type == REDIS_REPLY_INTEGER && r[1]->integer > 0)
		out->keys = (uint64_t)r[1]->integer;
	rd_free_replies(r, 2);
	u = strtoull(used, NULL, 10);
	m = strtoull(max, NULL, 10);
	if (m) {  /* maxmemory 0: no limit, nothing to report */
		out->total_bytes = m;
		out->free_bytes = u < m ? m - u : 0;
	}
	return 0;
}

static void rd_store_limits(struct kv_store *st, struct kv_limits *out)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);

	out->max_key = __atomic_load_n(&s->max_key, __ATOMIC_RELAXED);
	out->max_value = __atomic_load_n(&s->max_value, __ATOMIC_RELAXED);
}

/* ---- open and close ---- */

static void rd_close(struct kv_store *st)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);

	kv_pool_destroy(&s->pool);
	if (s->password) {
		explicit_bzero(s->password, strlen(s->password));
		free(s->password);
	}
	free(s->host);
	free(s->sock);
	free(s->user);
	free(s);
}

/* A database number: 0 to 999999999 (the server knows how many it has). */
static int rd_parse_db(const char *text, int *db)
{
	size_t n = strlen(text);

	if (n == 0 || n > 9 || strspn(text, "0123456789") != n)
		return -EINVAL;
	*db = atoi(text);
	return 0;
}

#define RD_NO_PASSWORD_IN_URL \
	"redis: a password in the URL is refused (it would show in ps and logs): " \
	"put it in " RD_PASSWORD_ENV " or a file named by -o password_file=FILE"

/* The query of a URL: "db=N" only, for a unix socket.  A password there
 * is refused like one before the '@'. */
static int rd_parse_query(struct rd_store *s, char *q, char *err, size_t errlen)
{
	char *save = NULL;

	for (char *p = strtok_r(q, "&", &save); p; p = strtok_r(NULL, "&", &save)) {
		if (strncasecmp(p, "password=", 9) == 0 || strncasecmp(p, "pass=", 5) == 0) {
			snprintf(err, errlen, RD_NO_PASSWORD_IN_URL);
			return -EINVAL;
		} else if (!s->sock) {
			snprintf(err, errlen, "redis: a redis:// URL takes no parameters (the database "
				 "is its path: redis://host/2)");
			return -EINVAL;
		} else if (strncmp(p, "db=", 3) != 0) {
			snprintf(err, errlen, "redis: unknown URL parameter '%.*s' (only db=N)",
				 (int)strcspn(p, "="), p);
			return -EINVAL;
		} else if (rd_parse_db(p + 3, &s->db)) {
			snprintf(err, errlen, "redis: bad db '%.20s' in the URL (a number)", p + 3);
			return -EINVAL;
		}
	}
	return 0;
}

/* Host, port, socket, database and user from the URL's parts. */
static int rd_url_parts(struct rd_store *s, CURLU *u, bool unix_sock, char *err, size_t errlen)
{
	char *pw = NULL, *user = NULL, *host = NULL, *port = NULL, *path = NULL, *query = NULL;
	int rc = -EINVAL;

	if (curl_url_get(u, CURLUPART_PASSWORD, &pw, 0) == CURLUE_OK) {
		snprintf(err, errlen, RD_NO_PASSWORD_IN_URL);
		goto out;
	}
	curl_url_get(u, CURLUPART_USER, &user, CURLU_URLDECODE);
	curl_url_get(u, CURLUPART_PORT, &port, 0);
	curl_url_get(u, CURLUPART_QUERY, &query, 0);
	if (curl_url_get(u, CURLUPART_HOST, &host, CURLU_URLDECODE) ||
	    curl_url_get(u, CURLUPART_PATH, &path, CURLU_URLDECODE)) {
		rc = -ENOMEM;
		goto out;
	}
	s->port = port ? atoi(port) : RD_DEFAULT_PORT;
	if (s->port < 1 || s->port > 65535) {
		snprintf(err, errlen, "redis: bad port '%s' in the URL (1 to 65535)", port);
		goto out;
	}
	if (unix_sock && host[0] && strcmp(host, "localhost") != 0) {
		snprintf(err, errlen, "redis: a unix socket is local: use redis+unix:///path/to/socket");
		goto out;
	}
	if (unix_sock && (!path[0] || strcmp(path, "/") == 0)) {
		snprintf(err, errlen, "redis: no socket path: use redis+unix:///path/to/socket[?db=N]");
		goto out;
	}
	if (!unix_sock && path[0] && strcmp(path, "/") != 0 && rd_parse_db(path + 1, &s->db)) {
		snprintf(err, errlen, "redis: the path of a redis:// URL is a database number, "
			 "not '%.40s'; for a unix socket use redis+unix:///path/to/socket", path + 1);
		goto out;
	}
	if (unix_sock)
		s->sock = strdup(path);
	else if (host[0] == '[')  /* [v6 address] */
		s->host = strndup(host + 1, strlen(host) - 2);
	else
		s->host = strdup(host[0] ? host : "127.0.0.1");
	if ((user && user[0] && !(s->user = strdup(user))) || (!s->sock && !s->host)) {
		rc = -ENOMEM;
		goto out;
	}
	rc = query ? rd_parse_query(s, query, err, errlen) : 0;
	if (s->sock)
		snprintf(s->where, sizeof(s->where), "%s", s->sock);
	else
		snprintf(s->where, sizeof(s->where), strchr(s->host, ':') ? "[%s]:%d" : "%s:%d",
			 s->host, s->port);
out:
	curl_free(pw);
	curl_free(user);
	curl_free(host);
	curl_free(port);
	curl_free(path);
	curl_free(query);
	return rc;
}

/* The URL, parsed by libcurl.  A unix socket's URL gets the host name
 * "localhost" when it has none: curl would read "x:///run/s" as the host
 * "run". */
static int rd_parse_url(struct rd_store *s, const char *url, char *err, size_t errlen)
{
	const char *loc = strchr(url, ':') + 1;
	bool unix_sock = loc - url == 11 && strncasecmp(url, "redis+unix:", 11) == 0;
	bool authority = strncmp(loc, "//", 2) == 0 && loc[2] != '/';
	CURLU *u = curl_url();
	char *fixed = NULL;
	CURLUcode uc;
	int rc;

	if (!u)
		return -ENOMEM;
	if (!unix_sock && !authority) {
		snprintf(err, errlen, "redis: expected redis://[user@]host[:port][/db] "
			 "or redis+unix:///path/to/socket[?db=N]");
		curl_url_cleanup(u);
		return -EINVAL;
	}
	if (unix_sock && !authority &&
	    asprintf(&fixed, "redis+unix://localhost%s", loc + (loc[0] == '/' && loc[1] == '/' ? 2 : 0)) < 0) {
		curl_url_cleanup(u);
		return -ENOMEM;
	}
	uc = curl_url_set(u, CURLUPART_URL, fixed ? fixed : url,
			  CURLU_NON_SUPPORT_SCHEME | CURLU_NO_AUTHORITY);
	free(fixed);
	if (uc == CURLUE_OUT_OF_MEMORY) {
		rc = -ENOMEM;
	} else if (uc) {
		snprintf(err, errlen, uc == CURLUE_BAD_PORT_NUMBER ? "redis: bad port in the URL (%s)"
			 : "redis: bad URL: %s", curl_url_strerror(uc));
		rc = -EINVAL;
	} else {
		rc = rd_url_parts(s, u, unix_sock, err, errlen);
	}
	curl_url_cleanup(u);
	return rc;
}

/* -o password_file=FILE (its first line), else $REDISCLI_AUTH, else none. */
static int rd_password(struct rd_store *s, const struct kv_open_args *a, char *err, size_t errlen)
{
	const char *file = kv_option_get(a, "password_file");
	const char *env = getenv(RD_PASSWORD_ENV);
	char why[300];

	if (file) {
		s->password = kv_read_secret(file, "password_file", why, sizeof(why));
		if (!s->password) {
			snprintf(err, errlen, "redis: %s", why);
			return -EINVAL;
		}
	} else if (env && env[0]) {
		if (!(s->password = strdup(env)))
			return -ENOMEM;
	} else if (s->user) {
		snprintf(err, errlen, "redis: user '%s' given but no password: set " RD_PASSWORD_ENV
			 " or -o password_file=FILE", s->user);
		return -EINVAL;
	}
	return 0;
}

/* -o scan_count=N: how many keys the server visits per SCAN call. */
static int rd_scan_count(struct rd_store *s, const struct kv_open_args *a, char *err,
			 size_t errlen)
{
	const char *v = kv_option_get(a, "scan_count");
	uint64_t n = RD_SCAN_COUNT;

	if (v && (kv_parse_size(v, &n) || n < 10 || n > 1000000)) {
		snprintf(err, errlen, "redis: bad scan_count '%s' (10 to 1000000)", v);
		return -EINVAL;
	}
	snprintf(s->scan_count, sizeof(s->scan_count), "%" PRIu64, n);
	return 0;
}

/* Parse and check only: the first call connects (kv_open's probe, unless
 * -o lazy), so a server that is down does not fail the open itself. */
static int rd_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	struct rd_store *s = calloc(1, sizeof(*s));
	int rc;

	if (!s) {
		snprintf(err, errlen, "redis: out of memory");
		return -ENOMEM;
	}
	s->max_value = RD_MAX_VALUE;
	s->max_key = RD_MAX_KEY;
	s->timeout_ms = a->timeout_ms;
	s->tv = rd_tv(a->timeout_ms);
	kv_pool_init(&s->pool, "redis", &rd_pool_ops, s, RD_POOL);
	rc = rd_parse_url(s, a->url, err, errlen);
	if (!rc)
		rc = rd_scan_count(s, a, err, errlen);
	if (!rc)
		rc = rd_password(s, a, err, errlen);
	if (rc) {
		if (rc == -ENOMEM)
			snprintf(err, errlen, "redis: out of memory");
		rd_close(&s->base);
		return rc;
	}
	*out = &s->base;
	return 0;
}

/*
 * -o options.  password_file: a file whose first line is the password
 * (else $REDISCLI_AUTH).  scan_count: keys the server visits per SCAN
 * call when listing (default 1000): larger means fewer round trips but
 * longer stalls of the server for its other clients.
 */
static const char *const rd_options[] = { "password_file", "scan_count", NULL };

const struct kv_backend kv_backend_redis = {
	.scheme = "redis",
	.aliases = (const char *const[]){ "redis+unix", NULL },
	.summary = "Redis string keys via hiredis (or redis+unix:///socket?db=N); ls SCANs all keys",
	.usage = "redis://[user@]host[:port][/db]",
	.options = rd_options,
	.persistent = true,
	.limits = { .max_key = RD_MAX_KEY, .max_value = RD_MAX_VALUE },
	.open = rd_open,
	.close = rd_close,
	.get = rd_get_value,
	.set = rd_set,
	.del = rd_del,
	.keys = rd_keys,
	.health = rd_health,
	.stat = rd_stat,
	.cas = rd_cas,
	.apply = rd_apply,
	.statfs = rd_statfs,
	.store_limits = rd_store_limits,
};
