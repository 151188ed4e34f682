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
 * Redis has no order and no directories: list walks the whole keyspace
 * with SCAN ... MATCH <prefix>*, where the prefix has Redis's glob
 * characters escaped.  MATCH filters on the server, but the server still
 * visits every key of the database, so a listing costs O(keys in the
 * database), whatever the size of the directory.  The keys are sorted and
 * grouped here and handed over in one call (no KV_CAP_ORDERED); their
 * sizes come from STRLEN, pipelined, one round trip per batch.  An index
 * of our own (a sorted set) would make a listing cheap but would hide
 * every key another client writes without updating it, so there is none.
 *
 * Redis keeps no version per key, so a value's version is the first 64
 * bits of its SHA-1, computed by the server (redis.sha1hex) in the Lua
 * script that reads it and in the one that compares and sets atomically.
 * apply() is one MULTI/EXEC: a command the server refuses while queueing
 * (out of memory under maxmemory-policy noeviction, say) aborts the whole
 * transaction, so nothing is applied.
 *
 * hiredis contexts are not thread-safe: each call borrows one from a small
 * pool, made on demand (connect, AUTH, SELECT) and dropped after any I/O
 * error or timeout, so the next call reconnects by itself.  Connect and
 * every read and write are bounded by the timeout.
 *
 * The password never comes from the URL: -o password_file=FILE, else
 * REDISCLI_AUTH (redis-cli's own variable).
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "kv.h"

#define RD_DEFAULT_PORT 6379
#define RD_PASSWORD_ENV "REDISCLI_AUTH"
/* Redis's own bound on one argument (proto-max-bulk-len, 512 MB by
 * default); a smaller setting of the server narrows it at open. */
#define RD_MAX_VALUE ((size_t)512 << 20)
/* Redis takes keys as long as values, but a key stands for a path, and a
 * path reaches the kernel whole (PATH_MAX 4096, mount point included):
 * 3 KiB leaves a kilobyte for where the store is mounted. */
#define RD_MAX_KEY ((size_t)3 << 10)
#define RD_POOL 16            /* connections at most; more than FUSE's threads */
#define RD_SCAN_COUNT 1000    /* keys the server visits per SCAN call (-o scan_count) */
/* A database this small is walked with one KEYS (about 0.5 us a key on
 * Redis 7.0, so a stall of 10 ms at most) instead of SCAN steps, which
 * cost the server about twice as much per key, plus a round trip each. */
#define RD_KEYS_MAX "20000"
#define RD_BATCH 512          /* STRLEN commands per pipelined batch */
#define RD_MAX_ARGS 6

struct rd_store {
	struct kv_store base;
	char *host;           /* NULL for a unix socket */
	int port;
	char *sock;           /* unix socket path, or NULL */
	int db;
	char *user;           /* NULL: AUTH with the password alone */
	char *password;       /* NULL: no AUTH */
	struct timeval tv;
	int timeout_ms;
	char scan_count[16];  /* SCAN's COUNT, as text */
	size_t max_value;     /* narrowed by the server's proto-max-bulk-len (atomic) */
	size_t max_key;
	bool learned;         /* atomic: proto-max-bulk-len was asked */

	pthread_mutex_t lock;
	pthread_cond_t freed; /* a connection went back to the pool */
	redisContext *idle[RD_POOL];
	size_t nidle;
	size_t nopen;         /* idle + borrowed + being connected */
	bool down;            /* the last connect failed: log the next one quietly */
};

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

/* ---- errors ---- */

static bool rd_error_is(const redisReply *r, const char *code)
{
	size_t n = strlen(code);

	return r->len >= n && strncmp(r->str, code, n) == 0 &&
	       (r->len == n || r->str[n] == ' ');
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
	} else if (rd_error_is(r, "NOAUTH") || rd_error_is(r, "WRONGPASS") ||
		   rd_error_is(r, "NOPERM")) {
		e = -EACCES;
	}
	kv_log(lvl, "redis: %s %s: %.*s", op, key ? kv_printable(key, klen) : "",
	       (int)(r->len < 300 ? r->len : 300), r->str);
	return e;
}

/* ---- the connection pool ---- */

static const char *rd_where(const struct rd_store *s, char *buf, size_t len)
{
	if (s->sock)
		snprintf(buf, len, "%s", s->sock);
	else
		snprintf(buf, len, strchr(s->host, ':') ? "[%s]:%d" : "%s:%d", s->host, s->port);
	return buf;
}

/* Run cmds in one round trip on c.  replies[i] gets each reply (error
 * replies included); on an I/O error all are freed and -EIO returned, and
 * c must be dropped. */
static int rd_pipeline(redisContext *c, const struct rd_cmd *cmds, size_t n, redisReply **replies)
{
	size_t i, got = 0;

	for (i = 0; i < n; i++)
		if (redisAppendCommandArgv(c, cmds[i].argc, (const char **)cmds[i].argv,
					   cmds[i].len) != REDIS_OK)
			return -EIO;
	for (got = 0; got < n; got++) {
		void *r = NULL;

		if (redisGetReply(c, &r) != REDIS_OK || !r)
			break;
		replies[got] = r;
	}
	if (got == n)
		return 0;
	while (got > 0)
		freeReplyObject(replies[--got]);
	return -EIO;
}

static void rd_free_replies(redisReply **replies, size_t n)
{
	for (size_t i = 0; i < n; i++)
		freeReplyObject(replies[i]);
}

/* Connect, authenticate and select the database.  err (if not NULL) gets
 * one line on failure; the password never appears in it. */
static int rd_connect(struct rd_store *s, redisContext **out, char *err, size_t errlen)
{
	char where[300];
	struct rd_cmd cmds[2];
	redisReply *r[2];
	char dbtext[16];
	size_t n = 0;
	redisContext *c;
	int rc;

	rd_where(s, where, sizeof(where));
	c = s->sock ? redisConnectUnixWithTimeout(s->sock, s->tv)
		    : redisConnectWithTimeout(s->host, s->port, s->tv);
	if (!c)
		return -ENOMEM;
	if (c->err || redisSetTimeout(c, s->tv) != REDIS_OK) {
		if (err)
			snprintf(err, errlen, "redis: cannot connect to %s: %s", where, c->errstr);
		redisFree(c);
		return -EIO;
	}
	if (!s->sock)
		redisEnableKeepAlive(c);
	if (s->password && s->user)
		rd_cmd_init(&cmds[n++], 3, RD_ARG("AUTH"), RD_ARG(s->user), RD_ARG(s->password));
	else if (s->password)
		rd_cmd_init(&cmds[n++], 2, RD_ARG("AUTH"), RD_ARG(s->password));
	if (s->db) {
		snprintf(dbtext, sizeof(dbtext), "%d", s->db);
		rd_cmd_init(&cmds[n++], 2, RD_ARG("SELECT"), RD_ARG(dbtext));
	}
	if (n == 0) {
		*out = c;
		return 0;
	}
	if (rd_pipeline(c, cmds, n, r)) {
		if (err)
			snprintf(err, errlen, "redis: %s does not answer: %s", where,
				 c->errstr[0] ? c->errstr : "connection closed");
		redisFree(c);
		return -EIO;
	}
	rc = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		if (r[i]->type != REDIS_REPLY_ERROR)
			continue;
		/* AUTH first: its error is about credentials; SELECT's about the number. */
		rc = (s->password && i == 0) ? -EACCES : -EINVAL;
		if (err)
			snprintf(err, errlen, "redis: %s %s%s: %.*s", where,
				 rc == -EACCES ? "refuses the password" : "has no database ",
				 rc == -EACCES ? (s->user ? " for that user" : "") : dbtext,
				 (int)(r[i]->len < 160 ? r[i]->len : 160), r[i]->str);
	}
	rd_free_replies(r, n);
	if (rc) {
		redisFree(c);
		return rc;
	}
	*out = c;
	return 0;
}

/* An idle connection the server has closed (restart, idle timeout) shows
 * as readable with end of file: poll says so without a round trip. */
static bool rd_conn_alive(redisContext *c)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };

	return poll(&p, 1, 0) == 0;
}

static void rd_deadline(struct timespec *ts, int ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/*
 * The server's proto-max-bulk-len bounds keys and values.  Asked once, on
 * the first call, not at open: a hung server must not hold up the mount.
 * CONFIG may be disabled or renamed, and then Redis's default stands.
 */
static int rd_learn_limits(struct rd_store *s, redisContext *c)
{
	struct rd_cmd cmd;
	redisReply *r;

	rd_cmd_init(&cmd, 3, RD_ARG("CONFIG"), RD_ARG("GET"), RD_ARG("proto-max-bulk-len"));
	if (rd_pipeline(c, &cmd, 1, &r))
		return -EIO;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	    r->element[1]->type == REDIS_REPLY_STRING) {
		unsigned long long v = strtoull(r->element[1]->str, NULL, 10);

		if (v && v < RD_MAX_VALUE)
			__atomic_store_n(&s->max_value, (size_t)v, __ATOMIC_RELAXED);
		if (v && v < RD_MAX_KEY)
			__atomic_store_n(&s->max_key, (size_t)v, __ATOMIC_RELAXED);
	}
	freeReplyObject(r);
	__atomic_store_n(&s->learned, true, __ATOMIC_RELEASE);
	return 0;
}

/* Borrow a connection: an idle one, a new one, or wait (bounded) for one. */
static int rd_borrow(struct rd_store *s, redisContext **out)
{
	struct timespec deadline;
	bool have_deadline = false;
	char err[512] = "", where[300];
	redisContext *c;
	int rc;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		if (s->nidle) {
			c = s->idle[--s->nidle];
			pthread_mutex_unlock(&s->lock);
			if (rd_conn_alive(c)) {
				*out = c;
				return 0;
			}
			redisFree(c);
			pthread_mutex_lock(&s->lock);
			s->nopen--;
			continue;
		}
		if (s->nopen < RD_POOL)
			break;
		if (!have_deadline) {
			rd_deadline(&deadline, s->timeout_ms);
			have_deadline = true;
		}
		if (pthread_cond_timedwait(&s->freed, &s->lock, &deadline) == ETIMEDOUT) {
			pthread_mutex_unlock(&s->lock);
			kv_log(KV_LOG_ERR, "redis: all %d connections busy for %d ms", RD_POOL,
			       s->timeout_ms);
			return -EIO;
		}
	}
	s->nopen++;
	pthread_mutex_unlock(&s->lock);

	rc = rd_connect(s, &c, err, sizeof(err));
	pthread_mutex_lock(&s->lock);
	if (rc) {
		s->nopen--;
		pthread_cond_signal(&s->freed);
		/* During an outage every call fails: say so once, then quietly. */
		kv_log(s->down ? KV_LOG_DEBUG : KV_LOG_ERR, "%s", err[0] ? err : "redis: out of memory");
		s->down = true;
	} else if (s->down) {
		s->down = false;
		kv_log(KV_LOG_INFO, "redis: connected to %s again", rd_where(s, where, sizeof(where)));
	}
	pthread_mutex_unlock(&s->lock);
	if (rc == -EINVAL || rc == -ENOMEM)
		rc = -EIO;  /* the database vanished, or no memory: this call fails */
	if (!rc)
		*out = c;
	return rc;
}

/* Return a borrowed connection; one that failed is dropped. */
static void rd_put(struct rd_store *s, redisContext *c)
{
	bool keep = c->err == 0;

	if (!keep)
		redisFree(c);
	pthread_mutex_lock(&s->lock);
	if (keep)
		s->idle[s->nidle++] = c;
	else
		s->nopen--;
	pthread_cond_signal(&s->freed);
	pthread_mutex_unlock(&s->lock);
}

static int rd_get(struct rd_store *s, redisContext **out)
{
	int rc = rd_borrow(s, out);

	if (!rc && !__atomic_load_n(&s->learned, __ATOMIC_ACQUIRE) && rd_learn_limits(s, *out)) {
		kv_log(KV_LOG_ERR, "redis: %s", (*out)->errstr[0] ? (*out)->errstr : "connection lost");
		if (!(*out)->err)
			(*out)->err = REDIS_ERR_OTHER;
		rd_put(s, *out);
		rc = -EIO;
	}
	return rc;
}

/*
 * Borrow a connection, run cmds in one round trip, give it back.  An I/O
 * failure or timeout is logged and -EIO; replies are the caller's.
 */
static int rd_run(struct rd_store *s, const char *op, const char *key, size_t klen,
		  const struct rd_cmd *cmds, size_t n, redisReply **replies)
{
	redisContext *c;
	int rc = rd_get(s, &c);

	if (rc)
		return rc;
	rc = rd_pipeline(c, cmds, n, replies);
	if (rc) {
		if (!c->err)
			c->err = REDIS_ERR_OTHER;  /* a half-read pipeline: do not reuse */
		kv_log(KV_LOG_ERR, "redis: %s %s: %s", op, key ? kv_printable(key, klen) : "",
		       c->errstr[0] ? c->errstr : "connection lost");
	}
	rd_put(s, c);
	return rc;
}

/* One command; the reply, or -EIO. */
static int rd_run1(struct rd_store *s, const char *op, const char *key, size_t klen,
		   const struct rd_cmd *cmd, redisReply **reply)
{
	return rd_run(s, op, key, klen, cmd, 1, reply);
}

/* A reply of an unexpected shape: a protocol mismatch, not the key's fault. */
static int rd_unexpected(redisReply *r, const char *op, const char *key, size_t klen)
{
	kv_log(KV_LOG_ERR, "redis: %s %s: unexpected reply type %d", op,
	       key ? kv_printable(key, klen) : "", r->type);
	return -EIO;
}

/* ---- versions ---- */

/*
 * The version of a value is the first 16 hex digits of its SHA-1 (never
 * 0, which cas() reads as "no such key").  Both scripts compute it on the
 * server, so the value never travels just to be hashed.
 */
static const char rd_getv_script[] =
	"local v = redis.call('GET', KEYS[1])\n"
	"if not v then return false end\n"
	"local h = string.sub(redis.sha1hex(v), 1, 16)\n"
	"if h == '0000000000000000' then h = '0000000000000001' end\n"
	"return {v, h}\n";

static const char rd_cas_script[] =
	"local v = redis.call('GET', KEYS[1])\n"
	"if not v then return 0 end\n"
	"local h = string.sub(redis.sha1hex(v), 1, 16)\n"
	"if h == '0000000000000000' then h = '0000000000000001' end\n"
	"if h ~= ARGV[1] then return 0 end\n"
	"redis.call('SET', KEYS[1], ARGV[2])\n"
	"return 1\n";

/* ---- get, stat, set, del, cas, apply ---- */

/* Hand over a string reply's buffer (hiredis keeps a NUL after it). */
static char *rd_take_str(redisReply *r)
{
	char *p = r->str;

	r->str = NULL;
	return p;
}

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
	rc = rd_run1(s, "get", key, klen, &cmd, &r);
	if (rc)
		return rc;
	v = r;
	if (r->type == REDIS_REPLY_NIL) {
		rc = -ENOENT;
	} else if (r->type == REDIS_REPLY_ERROR) {
		rc = rd_reply_errno(r, "get", key, klen);
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
		*val = rd_take_str(v);
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
	rc = rd_run(s, "stat", key, klen, cmds, 2, r);
	if (rc)
		return rc;
	if (r[0]->type == REDIS_REPLY_ERROR)
		rc = rd_reply_errno(r[0], "stat", key, klen) == -EACCES ? -EACCES : -EIO;
	else if (r[0]->type != REDIS_REPLY_INTEGER)
		rc = rd_unexpected(r[0], "stat", key, klen);
	else if (r[0]->integer == 0)
		rc = -ENOENT;
	else
		*size = r[1]->type == REDIS_REPLY_INTEGER ? (uint64_t)r[1]->integer : 0;  /* 0: not a string */
	rd_free_replies(r, 2);
	return rc;
}

/* A write's status reply: OK, or the server's reason. */
static int rd_write_result(redisReply *r, const char *op, const char *key, size_t klen)
{
	int rc = 0;

	if (r->type == REDIS_REPLY_ERROR) {
		rc = rd_reply_errno(r, op, key, klen);
		if (rc == -EACCES && rd_error_is(r, "WRONGTYPE"))
			rc = -EIO;  /* SET never says WRONGTYPE; a script might */
	} else if (r->type != REDIS_REPLY_STATUS) {
		rc = rd_unexpected(r, op, key, klen);
	}
	return rc;
}

static int rd_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd cmd;
	redisReply *r;
	int rc;

	rd_cmd_init(&cmd, 3, RD_ARG("SET"), key, klen, val, vlen);
	rc = rd_run1(s, "set", key, klen, &cmd, &r);
	if (rc)
		return rc;
	rc = rd_write_result(r, "set", key, klen);
	freeReplyObject(r);
	return rc;
}

static int rd_del(struct kv_store *st, const char *key, size_t klen)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd cmd;
	redisReply *r;
	int rc;

	rd_cmd_init(&cmd, 2, RD_ARG("DEL"), key, klen);
	rc = rd_run1(s, "del", key, klen, &cmd, &r);
	if (rc)
		return rc;
	if (r->type == REDIS_REPLY_ERROR)
		rc = rd_reply_errno(r, "del", key, klen);
	else if (r->type != REDIS_REPLY_INTEGER)
		rc = rd_unexpected(r, "del", key, klen);
	else if (r->integer == 0)
		rc = -ENOENT;
	freeReplyObject(r);
	return rc == -EACCES ? -EIO : rc;
}

static int rd_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	char hex[17];
	struct rd_cmd cmd;
	redisReply *r;
	int rc;

	if (version == 0) {
		rd_cmd_init(&cmd, 4, RD_ARG("SET"), key, klen, val, vlen, RD_ARG("NX"));
	} else {
		snprintf(hex, sizeof(hex), "%016" PRIx64, version);
		rd_cmd_init(&cmd, 6, RD_ARG("EVAL"), RD_ARG(rd_cas_script), RD_ARG("1"), key, klen,
			    RD_ARG(hex), val, vlen);
	}
	rc = rd_run1(s, "cas", key, klen, &cmd, &r);
	if (rc)
		return rc;
	if (r->type == REDIS_REPLY_NIL || (r->type == REDIS_REPLY_INTEGER && r->integer == 0))
		rc = -ECANCELED;
	else if (r->type == REDIS_REPLY_INTEGER)
		rc = 0;
	else
		rc = rd_write_result(r, "cas", key, klen);
	freeReplyObject(r);
	return rc;
}

/*
 * MULTI, the sets and deletes, EXEC, in one round trip.  A command the
 * server refuses while queueing makes EXEC fail (EXECABORT) and nothing is
 * applied; its own error says why.
 */
static int rd_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd *cmds;
	redisReply **r, *exec;
	int rc;

	if (n == 0)
		return 0;
	cmds = calloc(n + 2, sizeof(*cmds));
	r = calloc(n + 2, sizeof(*r));
	if (!cmds || !r) {
		free(cmds);
		free(r);
		return -ENOMEM;
	}
	rd_cmd_init(&cmds[0], 1, RD_ARG("MULTI"));
	for (size_t i = 0; i < n; i++) {
		if (ops[i].type == KV_OP_SET)
			rd_cmd_init(&cmds[i + 1], 3, RD_ARG("SET"), ops[i].key, ops[i].key_len,
				    ops[i].val, ops[i].val_len);
		else
			rd_cmd_init(&cmds[i + 1], 2, RD_ARG("DEL"), ops[i].key, ops[i].key_len);
	}
	rd_cmd_init(&cmds[n + 1], 1, RD_ARG("EXEC"));
	rc = rd_run(s, "apply", NULL, 0, cmds, n + 2, r);
	free(cmds);
	if (rc) {
		free(r);
		return rc;
	}
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
	} else {
		/* Runtime errors inside EXEC are not rolled back; SET and DEL have none
		 * but out of memory, which the server checks while queueing. */
		for (size_t i = 0; i < n && !rc; i++)
			if (exec->element[i]->type == REDIS_REPLY_ERROR)
				rc = rd_reply_errno(exec->element[i], "apply", ops[i].key, ops[i].key_len);
	}
	rd_free_replies(r, n + 2);
	free(r);
	return rc == -EACCES ? -EIO : rc;
}

/* ---- list ---- */

/*
 * The items of one listing, each once: SCAN may return a key more than
 * once, and every key of a group gives the same prefix item.  Open
 * addressing on copies of the item keys; slots hold index + 1, 0 = empty.
 */
struct rd_seen {
	struct kv_entry *v;  /* keys malloc'd; size RD_GONE: deleted meanwhile */
	size_t n;
	size_t *slots;
	size_t nslots;       /* a power of two, at least twice n */
};

#define RD_GONE UINT64_MAX

static uint64_t rd_hash(const char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325u;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 0x100000001b3u;
	return h;
}

static size_t *seen_slot(struct rd_seen *s, const char *key, size_t len)
{
	size_t i = rd_hash(key, len) & (s->nslots - 1);

	while (s->slots[i] && !(s->v[s->slots[i] - 1].key_len == len &&
				memcmp(s->v[s->slots[i] - 1].key, key, len) == 0))
		i = (i + 1) & (s->nslots - 1);
	return &s->slots[i];
}

static int seen_grow(struct rd_seen *s)
{
	size_t ns = s->nslots ? s->nslots * 2 : 256;
	size_t *slots = calloc(ns, sizeof(*slots));
	struct kv_entry *v = realloc(s->v, (ns / 2) * sizeof(*v));

	if (!slots || !v) {
		free(slots);
		if (v)
			s->v = v;
		return -ENOMEM;
	}
	s->v = v;
	free(s->slots);
	s->slots = slots;
	s->nslots = ns;
	for (size_t i = 0; i < s->n; i++)
		*seen_slot(s, s->v[i].key, s->v[i].key_len) = i + 1;
	return 0;
}

/* Remember e (copying its key): 1 if it is new, 0 if seen before, or -ENOMEM. */
static int seen_add(struct rd_seen *s, const struct kv_entry *e)
{
	size_t *slot;
	char *k;

	if (s->n + 1 > s->nslots / 2 && seen_grow(s))
		return -ENOMEM;
	slot = seen_slot(s, e->key, e->key_len);
	if (*slot)
		return 0;
	k = malloc(e->key_len + 1);
	if (!k)
		return -ENOMEM;
	memcpy(k, e->key, e->key_len);
	s->v[s->n] = *e;
	s->v[s->n].key = k;
	*slot = ++s->n;
	return 1;
}

static void seen_free(struct rd_seen *s)
{
	for (size_t i = 0; i < s->n; i++)
		free((char *)s->v[i].key);
	free(s->v);
	free(s->slots);
}

static int entry_cmp(const void *pa, const void *pb)
{
	const struct kv_entry *a = pa, *b = pb;

	return kv_key_cmp(a->key, a->key_len, b->key, b->key_len);
}

/* The MATCH pattern of every key starting with prefix: the prefix with
 * Redis's glob characters escaped, then '*'.  malloc'd, length in *len. */
static char *rd_pattern(const char *prefix, size_t plen, size_t *len)
{
	char *p = malloc(2 * plen + 2), *o = p;

	if (!p)
		return NULL;
	for (size_t i = 0; i < plen; i++) {
		if (prefix[i] && strchr("*?[]\\", prefix[i]))
			*o++ = '\\';
		*o++ = prefix[i];
	}
	*o++ = '*';
	*len = (size_t)(o - p);
	return p;
}

/* The new items of one SCAN step (indexes into the seen set), and the
 * arguments of the script that sizes them, off the FUSE thread's stack. */
struct rd_step {
	size_t item[RD_BATCH];
	size_t n;
	const char *argv[RD_BATCH + 3];
	size_t len[RD_BATCH + 3];
	size_t idx[RD_BATCH];
};

/* The item a key gives: itself, or its group when the delimiter follows
 * the prefix.  req->start is ignored: without KV_CAP_ORDERED every item
 * comes in one call. */
static bool rd_item_of(const struct kv_list_req *req, const char *key, size_t len,
		       struct kv_entry *e)
{
	const char *d = NULL;

	if (len < req->prefix_len || memcmp(key, req->prefix, req->prefix_len))
		return false;  /* the server's glob said yes; trust only bytes */
	if (req->delim)
		d = memchr(key + req->prefix_len, req->delim, len - req->prefix_len);
	*e = (struct kv_entry){ .key = key, .key_len = d ? (size_t)(d - key) + 1 : len,
				.is_prefix = d != NULL };
	return true;
}

/*
 * The sizes of a batch of keys in one script, so that a key deleted since
 * SCAN saw it reads as gone (-1) rather than as an empty value, as two
 * separate commands could.  A key of another type shows as empty.
 */
static const char rd_sizes_script[] =
	"local out = {}\n"
	"for i, k in ipairs(KEYS) do\n"
	"  local t = redis.call('TYPE', k)['ok']\n"
	"  if t == 'none' then out[i] = -1\n"
	"  elseif t == 'string' then out[i] = redis.call('STRLEN', k)\n"
	"  else out[i] = 0 end\n"
	"end\n"
	"return out\n";

/* Fill in the sizes of the new key items of st, in one round trip. */
static int rd_sizes(redisContext *c, struct rd_seen *seen, struct rd_step *st)
{
	char nkeys[24];
	size_t m = 0;
	redisReply *r;
	int rc = 0;

	st->argv[0] = "EVAL";
	st->len[0] = 4;
	st->argv[1] = rd_sizes_script;
	st->len[1] = sizeof(rd_sizes_script) - 1;
	for (size_t i = 0; i < st->n; i++) {
		struct kv_entry *e = &seen->v[st->item[i]];

		if (e->is_prefix)
			continue;
		st->idx[m] = st->item[i];
		st->argv[3 + m] = e->key;
		st->len[3 + m] = e->key_len;
		m++;
	}
	if (m == 0)
		return 0;
	snprintf(nkeys, sizeof(nkeys), "%zu", m);
	st->argv[2] = nkeys;
	st->len[2] = strlen(nkeys);
	if (redisAppendCommandArgv(c, (int)m + 3, st->argv, st->len) != REDIS_OK ||
	    redisGetReply(c, (void **)&r) != REDIS_OK || !r)
		return -EIO;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != m) {
		if (r->type == REDIS_REPLY_ERROR)
			rd_reply_errno(r, "list", NULL, 0);
		else
			rd_unexpected(r, "list", NULL, 0);
		rc = -EIO;
	}
	for (size_t j = 0; !rc && j < m; j++) {
		long long v = r->element[j]->type == REDIS_REPLY_INTEGER ? r->element[j]->integer : 0;

		seen->v[st->idx[j]].size = v < 0 ? RD_GONE : (uint64_t)v;
	}
	freeReplyObject(r);
	return rc;
}

/* Give the step's new items to cb, as found. */
static void rd_stream(struct rd_seen *seen, struct rd_step *st, kv_list_cb *cb, void *ctx,
		      int *stop)
{
	for (size_t j = 0; j < st->n && !*stop; j++)
		if (seen->v[st->item[j]].size != RD_GONE)
			*stop = cb(ctx, &seen->v[st->item[j]]);
}

/*
 * The first step of a walk: all of it with KEYS when the database is
 * small, else the first SCAN step; either way a reply shaped like SCAN's.
 */
static const char rd_walk_script[] =
	"if redis.call('DBSIZE') <= tonumber(ARGV[3]) then\n"
	"  return {'0', redis.call('KEYS', ARGV[1])}\n"
	"end\n"
	"return redis.call('SCAN', '0', 'MATCH', ARGV[1], 'COUNT', ARGV[2])\n";

/*
 * One SCAN ... MATCH step from *cursor, which becomes the next cursor
 * ("0" at the end).  New items join seen, sized; with stream set they go
 * to cb at once and *stop gets what cb returned, if nonzero.
 */
static int rd_scan_step(redisContext *c, const struct kv_list_req *req, const char *count,
			const char *pat, size_t patlen, char *cursor, size_t cursor_size,
			struct rd_seen *seen, struct rd_step *st, bool stream, kv_list_cb *cb,
			void *ctx, int *stop)
{
	struct rd_cmd cmd;
	redisReply *r, *keys;
	int rc = 0;

	if (strcmp(cursor, "0") == 0)
		rd_cmd_init(&cmd, 6, RD_ARG("EVAL"), RD_ARG(rd_walk_script), RD_ARG("0"), pat, patlen,
			    RD_ARG(count), RD_ARG(RD_KEYS_MAX));
	else
		rd_cmd_init(&cmd, 6, RD_ARG("SCAN"), RD_ARG(cursor), RD_ARG("MATCH"), pat, patlen,
			    RD_ARG("COUNT"), RD_ARG(count));
	if (rd_pipeline(c, &cmd, 1, &r))
		return -EIO;
	if (r->type == REDIS_REPLY_ERROR) {
		rd_reply_errno(r, "list", req->prefix, req->prefix_len);
		freeReplyObject(r);
		return -EIO;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= cursor_size ||
	    r->element[1]->type != REDIS_REPLY_ARRAY) {
		rc = rd_unexpected(r, "list", req->prefix, req->prefix_len);
		freeReplyObject(r);
		return rc;
	}
	memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
	keys = r->element[1];
	st->n = 0;
	for (size_t i = 0; i <= keys->elements && !rc && !*stop; i++) {
		redisReply *k = i < keys->elements ? keys->element[i] : NULL;
		struct kv_entry e;

		if (k && k->type == REDIS_REPLY_STRING && rd_item_of(req, k->str, k->len, &e)) {
			rc = seen_add(seen, &e);
			if (rc < 0)
				break;
			if (rc)
				st->item[st->n++] = seen->n - 1;
			rc = 0;
		}
		if (st->n == RD_BATCH || (!k && st->n)) {
			rc = rd_sizes(c, seen, st);
			if (!rc && stream)
				rd_stream(seen, st, cb, ctx, stop);
			st->n = 0;
		}
	}
	freeReplyObject(r);
	return rc;
}

/*
 * Every item under the prefix in one call (no KV_CAP_ORDERED).  Without
 * a limit (kv_list_all: readdir) the walk is collected and delivered in
 * byte order, as readdir shows it.  With a limit the caller wants only the
 * first few items, any will do ("is this directory empty?"): they go to
 * cb in the order SCAN finds them, and a callback that stops also stops
 * the walk.  The limit itself is not honoured: *more stays false.
 */
static int rd_list(struct kv_store *st, const struct kv_list_req *req, kv_list_cb *cb, void *ctx,
		   bool *more)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_seen seen = { 0 };
	struct rd_step *step = malloc(sizeof(*step));
	bool stream = req->limit != 0;
	char cursor[32] = "0";
	redisContext *c = NULL;
	size_t patlen;
	char *pat = rd_pattern(req->prefix, req->prefix_len, &patlen);
	int rc, stop = 0;

	*more = false;
	if (!pat || !step) {
		free(pat);
		free(step);
		return -ENOMEM;
	}
	rc = rd_get(s, &c);
	while (!rc) {
		rc = rd_scan_step(c, req, s->scan_count, pat, patlen, cursor, sizeof(cursor), &seen,
				  step, stream, cb, ctx, &stop);
		if (stop || strcmp(cursor, "0") == 0)
			break;
	}
	if (c) {
		if (rc == -EIO && c->err)
			kv_log(KV_LOG_ERR, "redis: list %s: %s",
			       kv_printable(req->prefix, req->prefix_len), c->errstr);
		if (rc && !c->err)
			c->err = REDIS_ERR_OTHER;  /* replies may be pending: do not reuse */
		rd_put(s, c);
	}
	if (!rc && !stream) {
		if (seen.n > 1)
			qsort(seen.v, seen.n, sizeof(*seen.v), entry_cmp);
		for (size_t i = 0; i < seen.n && !stop; i++)
			if (seen.v[i].size != RD_GONE)
				stop = cb(ctx, &seen.v[i]);
	}
	seen_free(&seen);
	free(step);
	free(pat);
	if (rc)
		return rc;
	return stop < 0 ? stop : 0;
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
			size_t len = strcspn(p + n + 1, "\r\n");

			snprintf(out, outlen, "%.*s", (int)len, p + n + 1);
			break;
		}
	}
	return out;
}

static void rd_fact(struct kv_health *h, const char *name, const char *value)
{
	kv_health_fact(h, name, "%s", value);
}

enum { RD_H_PING, RD_H_SERVER, RD_H_REPL, RD_H_MEMORY, RD_H_PERSIST, RD_H_FSYNC, RD_H_DBSIZE, RD_H_N };

/*
 * PING, four INFO sections, CONFIG GET appendfsync and DBSIZE in one round
 * trip; all reads.  INFO gives the persistence and eviction settings even
 * where CONFIG is disabled or renamed; only appendfsync needs CONFIG, and
 * reads "unknown" without it.
 */
static int rd_health(struct kv_store *st, struct kv_health *h)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_cmd cmds[RD_H_N];
	redisReply *r[RD_H_N];
	char ver[32], role[32], mem[32], maxmem[32], policy[64], aof[8], loading[8], fsync[32];
	char keys[32] = "?", where[300];
	const char *warn = "";
	int rc;

	rd_cmd_init(&cmds[RD_H_PING], 1, RD_ARG("PING"));
	rd_cmd_init(&cmds[RD_H_SERVER], 2, RD_ARG("INFO"), RD_ARG("server"));
	rd_cmd_init(&cmds[RD_H_REPL], 2, RD_ARG("INFO"), RD_ARG("replication"));
	rd_cmd_init(&cmds[RD_H_MEMORY], 2, RD_ARG("INFO"), RD_ARG("memory"));
	rd_cmd_init(&cmds[RD_H_PERSIST], 2, RD_ARG("INFO"), RD_ARG("persistence"));
	rd_cmd_init(&cmds[RD_H_FSYNC], 3, RD_ARG("CONFIG"), RD_ARG("GET"), RD_ARG("appendfsync"));
	rd_cmd_init(&cmds[RD_H_DBSIZE], 1, RD_ARG("DBSIZE"));
	rc = rd_run(s, "health", NULL, 0, cmds, RD_H_N, r);
	if (rc) {
		snprintf(h->detail, sizeof(h->detail), "redis at %s does not answer",
			 rd_where(s, where, sizeof(where)));
		return rc;
	}
	if (r[RD_H_PING]->type == REDIS_REPLY_ERROR) {
		snprintf(h->detail, sizeof(h->detail), "redis: %.*s",
			 (int)(r[RD_H_PING]->len < 200 ? r[RD_H_PING]->len : 200), r[RD_H_PING]->str);
		rd_free_replies(r, RD_H_N);
		return -EIO;  /* LOADING, NOAUTH after a restart with a new password, ... */
	}
	rd_info_field(r[RD_H_SERVER], "redis_version", ver, sizeof(ver));
	rd_info_field(r[RD_H_REPL], "role", role, sizeof(role));
	rd_info_field(r[RD_H_MEMORY], "used_memory", mem, sizeof(mem));
	rd_info_field(r[RD_H_MEMORY], "maxmemory", maxmem, sizeof(maxmem));
	rd_info_field(r[RD_H_MEMORY], "maxmemory_policy", policy, sizeof(policy));
	rd_info_field(r[RD_H_PERSIST], "aof_enabled", aof, sizeof(aof));
	rd_info_field(r[RD_H_PERSIST], "loading", loading, sizeof(loading));
	snprintf(fsync, sizeof(fsync), "unknown");
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
	rd_fact(h, "redis_version", ver[0] ? ver : "unknown");
	rd_fact(h, "role", role[0] ? role : "unknown");
	rd_fact(h, "used_memory", mem[0] ? mem : "unknown");
	rd_fact(h, "maxmemory", maxmem[0] ? maxmem : "unknown");
	rd_fact(h, "maxmemory_policy", policy[0] ? policy : "unknown");
	rd_fact(h, "appendonly", !aof[0] ? "unknown" : strcmp(aof, "1") == 0 ? "yes" : "no");
	rd_fact(h, "appendfsync", fsync);
	rd_fact(h, "keys", keys);
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
	rc = rd_run(s, "statfs", NULL, 0, cmds, 2, r);
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

static void rd_free(struct rd_store *s)
{
	while (s->nidle)
		redisFree(s->idle[--s->nidle]);
	if (s->password) {
		explicit_bzero(s->password, strlen(s->password));
		free(s->password);
	}
	free(s->host);
	free(s->sock);
	free(s->user);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->freed);
	free(s);
}

static void rd_close(struct kv_store *st)
{
	rd_free(kv_store_cast(struct rd_store, st));
}

/* A database number: 0 to INT_MAX (the server knows how many it has). */
static int rd_parse_db(const char *text, size_t len, int *db)
{
	long v = 0;

	if (len == 0 || len > 9)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (text[i] < '0' || text[i] > '9')
			return -EINVAL;
		v = v * 10 + (text[i] - '0');
	}
	*db = (int)v;
	return 0;
}

static char *rd_strndup(const char *p, size_t n)
{
	char *d = malloc(n + 1);

	if (d) {
		memcpy(d, p, n);
		d[n] = '\0';
	}
	return d;
}

#define RD_NO_PASSWORD_IN_URL \
	"redis: a password in the URL is refused (it would show in ps and logs): " \
	"put it in " RD_PASSWORD_ENV " or a file named by -o password_file=FILE"

/*
 * The query of a redis+unix URL: "db=N" only.  A password there is
 * refused like one before the '@'.
 */
static int rd_parse_query(struct rd_store *s, const char *q, char *err, size_t errlen)
{
	while (*q) {
		size_t n = strcspn(q, "&");

		if (strncmp(q, "db=", 3) == 0) {
			if (rd_parse_db(q + 3, n - 3, &s->db)) {
				snprintf(err, errlen, "redis: bad db '%.*s' in the URL (a number)",
					 (int)(n - 3 > 20 ? 20 : n - 3), q + 3);
				return -EINVAL;
			}
		} else if (strncasecmp(q, "password=", 9) == 0 || strncasecmp(q, "pass=", 5) == 0) {
			snprintf(err, errlen, RD_NO_PASSWORD_IN_URL);
			return -EINVAL;
		} else {
			snprintf(err, errlen, "redis: unknown URL parameter '%.*s' (only db=N)",
				 (int)strcspn(q, "=&"), q);
			return -EINVAL;
		}
		q += n + (q[n] == '&');
	}
	return 0;
}

/* "user@" in front of host: the user; "user:secret@" is refused. */
static int rd_parse_userinfo(struct rd_store *s, const char *auth, size_t len, const char **rest,
			     char *err, size_t errlen)
{
	const char *at = NULL;

	for (size_t i = 0; i < len; i++)
		if (auth[i] == '@')
			at = auth + i;
	*rest = auth;
	if (!at)
		return 0;
	if (memchr(auth, ':', (size_t)(at - auth))) {
		snprintf(err, errlen, RD_NO_PASSWORD_IN_URL);
		return -EINVAL;
	}
	if (at > auth && !(s->user = rd_strndup(auth, (size_t)(at - auth))))
		return -ENOMEM;
	*rest = at + 1;
	return 0;
}

/* "//[user@]host[:port][/db]" */
static int rd_parse_tcp(struct rd_store *s, const char *loc, char *err, size_t errlen)
{
	const char *auth, *hostp, *end, *portp = NULL, *hend;
	size_t alen;
	int rc;

	if (strncmp(loc, "//", 2) != 0) {
		snprintf(err, errlen, "redis: expected redis://[user@]host[:port][/db] "
			 "or redis+unix:///path/to/socket[?db=N]");
		return -EINVAL;
	}
	auth = loc + 2;
	alen = strcspn(auth, "/?#");
	rc = rd_parse_userinfo(s, auth, alen, &hostp, err, errlen);
	if (rc)
		return rc;
	end = auth + alen;
	if (*hostp == '[') {  /* [v6 address] */
		hend = memchr(hostp, ']', (size_t)(end - hostp));
		if (!hend) {
			snprintf(err, errlen, "redis: unclosed '[' in the host of the URL");
			return -EINVAL;
		}
		s->host = rd_strndup(hostp + 1, (size_t)(hend - hostp - 1));
		if (hend + 1 < end && hend[1] == ':')
			portp = hend + 2;
		else if (hend + 1 != end) {
			snprintf(err, errlen, "redis: bad host in the URL");
			return -EINVAL;
		}
	} else {
		hend = memchr(hostp, ':', (size_t)(end - hostp));
		if (hend)
			portp = hend + 1;
		else
			hend = end;
		s->host = hend > hostp ? rd_strndup(hostp, (size_t)(hend - hostp)) : strdup("127.0.0.1");
	}
	if (!s->host)
		return -ENOMEM;
	s->port = RD_DEFAULT_PORT;
	if (portp) {
		char *pe;
		long p = strtol(portp, &pe, 10);

		if (portp == end || pe != end || p < 1 || p > 65535) {
			snprintf(err, errlen, "redis: bad port '%.*s' in the URL", (int)(end - portp),
				 portp);
			return -EINVAL;
		}
		s->port = (int)p;
	}
	if (*end == '?' || *end == '#') {
		if (strncasecmp(end, "?password=", 10) == 0 || strstr(end, "&password=")) {
			snprintf(err, errlen, RD_NO_PASSWORD_IN_URL);
			return -EINVAL;
		}
		snprintf(err, errlen, "redis: a redis:// URL takes no parameters (the database is "
			 "its path: redis://host/2)");
		return -EINVAL;
	}
	if (*end == '/' && end[1] && rd_parse_db(end + 1, strlen(end + 1), &s->db)) {
		snprintf(err, errlen, "redis: the path of a redis:// URL is a database number, "
			 "not '%.40s'; for a unix socket use redis+unix:///path/to/socket", end + 1);
		return -EINVAL;
	}
	return 0;
}

/* "///path", "//[user@][localhost]/path" or "/path", then "?db=N" */
static int rd_parse_unix(struct rd_store *s, const char *loc, char *err, size_t errlen)
{
	const char *path = loc;
	size_t plen;
	int rc;

	if (strncmp(loc, "//", 2) == 0) {
		const char *auth = loc + 2;
		size_t alen = strcspn(auth, "/?");
		const char *host;

		rc = rd_parse_userinfo(s, auth, alen, &host, err, errlen);
		if (rc)
			return rc;
		if (host != auth + alen && strncmp(host, "localhost", 9) != 0) {
			snprintf(err, errlen, "redis: a unix socket is local: use "
				 "redis+unix:///path/to/socket");
			return -EINVAL;
		}
		path = auth + alen;
	}
	plen = strcspn(path, "?");
	if (plen == 0 || path[0] != '/') {
		snprintf(err, errlen, "redis: no socket path: use redis+unix:///path/to/socket[?db=N]");
		return -EINVAL;
	}
	s->sock = rd_strndup(path, plen);
	if (!s->sock)
		return -ENOMEM;
	return path[plen] == '?' ? rd_parse_query(s, path + plen + 1, err, errlen) : 0;
}

/* -o password_file=FILE (its first line), else $REDISCLI_AUTH, else none. */
static int rd_password(struct rd_store *s, const struct kv_open_args *a, char *err, size_t errlen)
{
	const char *file = kv_option_get(a, "password_file");
	const char *env = getenv(RD_PASSWORD_ENV);
	char buf[1024];
	size_t n;
	FILE *f;

	if (file) {
		f = fopen(file, "re");
		if (!f) {
			snprintf(err, errlen, "redis: cannot read password_file %s: %s", file,
				 strerror(errno));
			return errno == EACCES ? -EACCES : -EINVAL;
		}
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = '\0';
		buf[strcspn(buf, "\r\n")] = '\0';
		if (!buf[0]) {
			snprintf(err, errlen, "redis: password_file %s is empty", file);
			return -EINVAL;
		}
		s->password = strdup(buf);
		explicit_bzero(buf, sizeof(buf));
	} else if (env && env[0]) {
		s->password = strdup(env);
	} else if (s->user) {
		snprintf(err, errlen, "redis: user '%s' given but no password: set " RD_PASSWORD_ENV
			 " or -o password_file=FILE", s->user);
		return -EINVAL;
	} else {
		return 0;
	}
	return s->password ? 0 : -ENOMEM;
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

static int rd_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	struct rd_store *s = calloc(1, sizeof(*s));
	size_t slen = strcspn(a->url, ":");
	bool unix_sock = slen == 10 && strncasecmp(a->url, "redis+unix", 10) == 0;
	pthread_condattr_t ca;
	redisContext *c;
	int rc;

	if (!s) {
		snprintf(err, errlen, "redis: out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->freed, &ca);
	pthread_condattr_destroy(&ca);
	s->max_value = RD_MAX_VALUE;
	s->max_key = RD_MAX_KEY;
	s->timeout_ms = a->timeout_ms;
	s->tv = (struct timeval){ .tv_sec = a->timeout_ms / 1000,
				  .tv_usec = (a->timeout_ms % 1000) * 1000 };

	rc = unix_sock ? rd_parse_unix(s, a->location, err, errlen)
		       : rd_parse_tcp(s, a->location, err, errlen);
	if (!rc)
		rc = rd_scan_count(s, a, err, errlen);
	if (!rc)
		rc = rd_password(s, a, err, errlen);
	if (!rc) {
		/* Fail at mount time, with the reason, rather than at the first ls. */
		rc = rd_connect(s, &c, err, errlen);
		if (!rc) {
			s->idle[s->nidle++] = c;
			s->nopen = 1;
		}
	}
	if (rc) {
		if (rc == -ENOMEM && !err[0])
			snprintf(err, errlen, "redis: out of memory");
		rd_free(s);
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
	.caps = KV_CAP_CAS | KV_CAP_TXN | KV_CAP_PERSIST,
	.limits = { .max_key = RD_MAX_KEY, .max_value = RD_MAX_VALUE },
	.open = rd_open,
	.close = rd_close,
	.get = rd_get_value,
	.set = rd_set,
	.del = rd_del,
	.list = rd_list,
	.health = rd_health,
	.stat = rd_stat,
	.cas = rd_cas,
	.apply = rd_apply,
	.statfs = rd_statfs,
	.store_limits = rd_store_limits,
};
