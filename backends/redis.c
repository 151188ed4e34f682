/*
 * redis.c - a Redis database as the store, through hiredis:
 * "redis://[user@]host[:port][/db]" or "redis+unix:///path/to/sock[?db=N]".
 *
 * Every key is a Redis string key holding the value byte for byte, as
 * other clients see it (a key of another type is listed; reading it is
 * -EACCES).  Redis has no order: keys() walks the database with SCAN in a
 * Lua script that also sizes what each step finds.  Each call borrows a
 * hiredis context (not thread-safe) from the toolkit's pool.  The
 * password comes from -o password_file or REDISCLI_AUTH, never the URL.
 */
#include <curl/curl.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kv.h"
#include "toolkit.h"

/* Bytes a second the server is granted, on top of the timeout, to take a
 * written value into its append-only file before it answers (100 MB: 10 s
 * more).  The transfer is not timed as a whole: each read and write of
 * the socket is, so only a transfer that stops moving fails. */
#define RD_COMMIT_RATE ((size_t)10 << 20)
#define RD_DEFAULT_PORT 6379
#define RD_PASSWORD_ENV "REDISCLI_AUTH"
/* Redis's bound on an argument (proto-max-bulk-len), unless the server's is less. */
#define RD_MAX_VALUE ((size_t)512 << 20)
/* A key is a path, and a path reaches the kernel whole (PATH_MAX 4096,
 * mount point included): 3 KiB leaves a kilobyte for the mount point. */
#define RD_MAX_KEY ((size_t)3 << 10)
#define RD_POOL 16            /* connections at most; more than FUSE's threads */
#define RD_SCAN_COUNT 1000    /* keys the server visits per SCAN call (-o scan_count) */
/* A database this small is walked with one KEYS (a stall of 10 ms at most). */
#define RD_KEYS_MAX "20000"
#define RD_MAX_ARGS 7

struct rd_store {
	struct kv_store base;
	char *host, *sock;    /* a host name and port, or a unix socket */
	int port, db;
	char *user, *password;  /* NULL: AUTH without a user; no AUTH */
	char where[128];      /* host:port or the socket, for messages */
	int timeout_ms;
	char scan_count[16];  /* SCAN's COUNT, as text */
	size_t max_value;     /* narrowed by the server's bound (atomic) */
	bool down;            /* atomic: the last call could not connect; log once */
	struct kv_pool pool;
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

static void rd_free_replies(redisReply **replies, size_t n)
{
	for (size_t i = 0; i < n; i++)
		freeReplyObject(replies[i]);
}

/* The error replies that mean something here (by their first word): the
 * call's errno and how loud to log it.  transient: "not now", the command
 * did not run and may work in a moment (a server loading its data or busy
 * in a script, a failover); READONLY too, because behind an address that
 * moved in a failover an old connection may still reach the old master. */
static const struct rd_error {
	const char *code;
	int err;
	enum kv_log_level lvl;
	bool transient;
} rd_errors[] = {
	{ "OOM", -ENOSPC, KV_LOG_WARN, false }, { "READONLY", -EROFS, KV_LOG_WARN, true },
	{ "WRONGTYPE", -EACCES, KV_LOG_INFO, false }, { "NOAUTH", -EACCES, KV_LOG_ERR, false },
	{ "WRONGPASS", -EACCES, KV_LOG_ERR, false }, { "NOPERM", -EACCES, KV_LOG_ERR, false },
	{ "LOADING", -EIO, KV_LOG_ERR, true }, { "BUSY", -EIO, KV_LOG_ERR, true },
	{ "MASTERDOWN", -EIO, KV_LOG_ERR, true }, { "TRYAGAIN", -EIO, KV_LOG_ERR, true },
	{ NULL, -EIO, KV_LOG_ERR, false },  /* any other */
};

/* The entry for an error reply; NULL for a reply that is no error. */
static const struct rd_error *rd_error_of(const redisReply *r)
{
	const struct rd_error *e = rd_errors;

	if (r->type != REDIS_REPLY_ERROR)
		return NULL;
	for (size_t n; e->code; e++)
		if (r->len >= (n = strlen(e->code)) && strncmp(r->str, e->code, n) == 0 &&
		    (r->len == n || r->str[n] == ' '))
			break;
	return e;
}

/* The one place a reply the call cannot use becomes a kv errno value: an
 * error (its text names the condition, never a secret), or a reply of an
 * unexpected shape (a protocol mismatch, not the key's fault). */
static int rd_reply_errno(const redisReply *r, const char *op, const char *key, size_t klen)
{
	const struct rd_error *e = rd_error_of(r);
	const char *k = key ? kv_printable(key, klen) : "";

	if (!e) {
		kv_log(KV_LOG_ERR, "redis: %s %s: unexpected reply type %d", op, k, r->type);
		return -EIO;
	}
	kv_log(e->lvl, "redis: %s %s: %.300s", op, k, r->str);
	return e->err;
}

static struct timeval rd_tv(int64_t ms)
{
	return (struct timeval){ .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
}

/*
 * Send cmds, then read their replies (error replies included).  The
 * socket's timeouts (tv) bound each read and write, so a transfer that
 * keeps moving is never cut; the wait for the first reply is tv plus the
 * time the server is granted to commit what was sent (*waited: the sum,
 * in ms).  0, -EIO (connection lost) or -ETIMEDOUT; c is unusable after.
 */
static int rd_pipeline(redisContext *c, const struct rd_cmd *cmds, size_t n, redisReply **replies,
		       struct timeval tv, int64_t *waited)
{
	int64_t ms = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
	size_t sent = 0, got = 0;
	int done = 0, e;

	for (size_t i = 0; i < n; i++) {
		if (redisAppendCommandArgv(c, cmds[i].argc, (const char **)cmds[i].argv,
					   cmds[i].len) != REDIS_OK)
			goto fail;
		for (int a = 0; a < cmds[i].argc; a++)
			sent += cmds[i].len[a];
	}
	while (!done)
		if (redisBufferWrite(c, &done) != REDIS_OK)
			goto fail;
	ms += (int64_t)(sent / (RD_COMMIT_RATE / 1000));
	if (sent >= RD_COMMIT_RATE / 10 && redisSetTimeout(c, rd_tv(ms)) != REDIS_OK)
		goto fail;
	for (; got < n; got++) {
		if (redisGetReply(c, (void **)&replies[got]) != REDIS_OK || !replies[got])
			goto fail;
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

/*
 * A new connection: connect, then AUTH, SELECT and CONFIG GET
 * proto-max-bulk-len (the server's bound narrows ours; CONFIG may be
 * disabled or refused, then Redis's default stands) in one round trip,
 * before deadline.  -EIO (refused, reset, no answer, loading: worth a
 * retry), -EACCES (the password is refused) or -EINVAL (no such
 * database); kv_why says which.
 */
static int rd_connect(void *ctx, int64_t deadline, void **out)
{
	struct rd_store *s = ctx;
	struct timeval tv = rd_tv(kv_ms_left(deadline) + 1);
	struct rd_cmd cmds[3];
	redisReply *r[3], *lim;
	unsigned long long v = 0;
	char db[16];
	size_t n = 0;
	redisContext *c = s->sock ? redisConnectUnixWithTimeout(s->sock, tv)
				  : redisConnectWithTimeout(s->host, s->port, tv);
	int64_t waited;
	int rc = 0;

	if (!c)
		return -ENOMEM;
	if (c->err || redisSetTimeout(c, tv) != REDIS_OK)
		goto io;
	if (!s->sock)
		redisEnableKeepAlive(c);
	if (s->password)  /* AUTH [user] password */
		rd_cmd_init(&cmds[n++], 2 + !!s->user, RD_ARG("AUTH"),
			    RD_ARG(s->user ? s->user : s->password), RD_ARG(s->password));
	snprintf(db, sizeof(db), "%d", s->db);
	if (s->db)
		rd_cmd_init(&cmds[n++], 2, RD_ARG("SELECT"), RD_ARG(db));
	rd_cmd_init(&cmds[n++], 3, RD_ARG("CONFIG"), RD_ARG("GET"), RD_ARG("proto-max-bulk-len"));
	if ((rc = rd_pipeline(c, cmds, n, r, tv, &waited)))
		goto io;
	for (size_t i = 0; i + 1 < n && !rc; i++) {
		const struct rd_error *e = rd_error_of(r[i]);
		bool auth = s->password && i == 0;

		if (e && e->transient)
			kv_why_set("%s is not ready: %.120s", s->where, r[i]->str);
		else if (e && auth)
			kv_why_set("%s refuses the password%s: %.120s", s->where,
				   s->user ? " for that user" : "", r[i]->str);
		else if (e)
			kv_why_set("%s has no database %s: %.120s", s->where, db, r[i]->str);
		rc = !e ? 0 : e->transient ? -EIO : auth ? -EACCES : -EINVAL;
	}
	lim = r[n - 1];
	if (!rc && lim->type == REDIS_REPLY_ARRAY && lim->elements == 2 &&
	    lim->element[1]->type == REDIS_REPLY_STRING)
		v = strtoull(lim->element[1]->str, NULL, 10);
	if (v && v < RD_MAX_VALUE)
		__atomic_store_n(&s->max_value, (size_t)v, __ATOMIC_RELAXED);
	rd_free_replies(r, n);
	if (!rc && redisSetTimeout(c, rd_tv(s->timeout_ms)) == REDIS_OK) {
		*out = c;
		return 0;
	}
	redisFree(c);
	return rc ? rc : -EIO;
io:
	kv_why_set(rc == -ETIMEDOUT ? "%s did not answer in time%.0s (-o timeout=T raises the "
		   "limit)" : "cannot reach %s: %s", s->where, c->errstr);
	redisFree(c);
	return -EIO;
}

/* An idle connection the server has closed (restart, idle timeout). */
static bool rd_usable(void *ctx, void *conn)
{
	(void)ctx;
	return kv_socket_idle(((redisContext *)conn)->fd);
}

static void rd_disconnect(void *ctx, void *conn)
{
	(void)ctx;
	redisFree(conn);
}

static const struct kv_pool_ops rd_pool_ops = {
	.connect = rd_connect, .usable = rd_usable, .close = rd_disconnect,
};

/* During an outage every call fails: say so once, and when it is over. */
static void rd_outage(struct rd_store *s, bool down)
{
	if (__atomic_exchange_n(&s->down, down, __ATOMIC_RELAXED) != down)
		kv_log(down ? KV_LOG_ERR : KV_LOG_INFO, "redis: %s",
		       down ? kv_why() : "connected again");
}

enum { RD_ONCE = 1, RD_QUIET = 2 };

/*
 * Run cmds in one round trip on a pooled connection; the replies are the
 * caller's.  Connecting, lost connections and "not now" answers are
 * retried with backoff within the timeout, but a call that may have run is
 * not sent again unless idempotent (RD_ONCE: del, cas are not), nor one
 * the server did not answer in time.  0, -EIO, -EROFS or -EACCES (the
 * password is refused); kv_why says why.  RD_QUIET: no log lines.
 */
static int rd_run(struct rd_store *s, const char *op, const char *key, size_t klen,
		  unsigned flags, const struct rd_cmd *cmds, size_t n, redisReply **r)
{
	int64_t deadline = kv_deadline(s->timeout_ms), waited;
	redisContext *c;
	bool reused;
	int rc;

	kv_why_set("all connections stayed busy");
	for (int attempt = 0;; attempt++) {
		if ((rc = kv_pool_get(&s->pool, deadline, (void **)&c, &reused))) {
			if (!(flags & RD_QUIET))
				rd_outage(s, true);
			return rc == -EACCES ? -EACCES : -EIO;
		}
		if ((rc = rd_pipeline(c, cmds, n, r, rd_tv(s->timeout_ms), &waited)) == -ETIMEDOUT)
			kv_why_set("%s did not answer within %" PRId64 " ms (-o timeout=T "
				   "raises the limit)", s->where, waited);
		else if (rc)
			kv_why_set("%s: %s", s->where, c->errstr[0] ? c->errstr : "connection lost");
		for (size_t i = 0; !rc && i < n; i++) {
			const struct rd_error *e = rd_error_of(r[i]);

			if (e && e->transient) {
				kv_why_set("%s: %.120s", s->where, r[i]->str);
				rc = e->err == -EROFS ? -EROFS : -EAGAIN;
				rd_free_replies(r, n);
			}
		}
		kv_pool_put(&s->pool, c, rc && rc != -EAGAIN);
		if (!rc && !(flags & RD_QUIET) && __atomic_load_n(&s->down, __ATOMIC_RELAXED))
			rd_outage(s, false);
		if (!rc || rc == -ETIMEDOUT || (rc == -EIO && (flags & RD_ONCE)) ||
		    !kv_backoff(attempt, deadline))
			break;
	}
	if (rc && !(flags & RD_QUIET))
		kv_log(rc == -EROFS ? KV_LOG_WARN : KV_LOG_ERR, "redis: %s %s: %s", op,
		       key ? kv_printable(key, klen) : "", kv_why());
	return rc == -EROFS || !rc ? rc : -EIO;
}

/* A value's version: the first 16 hex digits of its SHA-1, never 0 (cas()
 * reads 0 as "no such key"), computed on the server. */
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
	if ((rc = rd_run(s, "get", key, klen, 0, &cmd, 1, &r)))
		return rc;
	v = version && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
	    r->element[1]->type == REDIS_REPLY_STRING ? r->element[0] : r;
	if (r->type == REDIS_REPLY_NIL)
		rc = -ENOENT;
	else if (v->type != REDIS_REPLY_STRING)
		rc = rd_reply_errno(r, "get", key, klen);
	else if (version)
		*version = strtoull(r->element[1]->str, NULL, 16);
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
	if ((rc = rd_run(s, "stat", key, klen, 0, cmds, 2, r)))
		return rc;
	if (r[0]->type != REDIS_REPLY_INTEGER)
		rc = rd_reply_errno(r[0], "stat", key, klen);
	else if (r[0]->integer == 0)
		rc = -ENOENT;
	else  /* STRLEN says WRONGTYPE for a key that is not a string: size 0 */
		*size = r[1]->type == REDIS_REPLY_INTEGER ? (uint64_t)r[1]->integer : 0;
	rd_free_replies(r, 2);
	return rc;
}

/* One write command: 0, -ENOENT for an integer 0 (DEL found no key),
 * -ECANCELED for a nil (SET NX or the cas script: the version moved), or
 * the server's reason. */
static int rd_write(struct kv_store *st, const char *op, const char *key, size_t klen,
		    unsigned flags, const struct rd_cmd *cmd)
{
	redisReply *r;
	int rc = rd_run(kv_store_cast(struct rd_store, st), op, key, klen, flags, cmd, 1, &r);

	if (rc)
		return rc;
	if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
		rc = -ENOENT;
	else if (r->type == REDIS_REPLY_NIL)
		rc = -ECANCELED;
	else if (r->type != REDIS_REPLY_STATUS && r->type != REDIS_REPLY_INTEGER)
		rc = rd_reply_errno(r, op, key, klen);
	freeReplyObject(r);
	return rc;
}

static int rd_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct rd_cmd cmd;

	rd_cmd_init(&cmd, 3, RD_ARG("SET"), key, klen, val, vlen);
	return rd_write(st, "set", key, klen, 0, &cmd);
}

static int rd_del(struct kv_store *st, const char *key, size_t klen)
{
	struct rd_cmd cmd;

	rd_cmd_init(&cmd, 2, RD_ARG("DEL"), key, klen);
	return rd_write(st, "del", key, klen, RD_ONCE, &cmd);
}

static int rd_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	char hex[17];
	struct rd_cmd cmd;

	snprintf(hex, sizeof(hex), "%016" PRIx64, version);
	if (version == 0)
		rd_cmd_init(&cmd, 4, RD_ARG("SET"), key, klen, val, vlen, RD_ARG("NX"));
	else
		rd_cmd_init(&cmd, 6, RD_ARG("EVAL"), RD_ARG(rd_cas_script), RD_ARG("1"), key, klen,
			    RD_ARG(hex), val, vlen);
	return rd_write(st, "cas", key, klen, RD_ONCE, &cmd);
}

/*
 * MULTI, the sets and deletes, EXEC, in one round trip: all or nothing.
 * Redis does not roll back a command that fails while EXEC runs, but SET
 * key value and DEL key cannot fail there: memory (maxmemory), a replica
 * and a failed disk (MISCONF) are checked as each command is queued and
 * for EXEC as a whole, never between the commands of a running EXEC (so a
 * transaction may take Redis past maxmemory rather than stop halfway).  A
 * refused command aborts it all (EXECABORT), its own error says why.  The
 * append-only file holds it whole; cut short by a crash, Redis drops it
 * when it loads.  Sent again after a lost connection: the same result.
 */
static int rd_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
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
	if ((rc = rd_run(kv_store_cast(struct rd_store, st), "apply", NULL, 0, 0, cmds, n + 2, r)))
		goto out;
	exec = r[n + 1];
	/* The queued command's own error names the cause; EXEC's only "aborted". */
	for (size_t i = 0; i <= n && !rc && rd_error_of(exec); i++)
		if (rd_error_of(r[i]))
			rc = rd_reply_errno(r[i], "apply", i ? ops[i - 1].key : NULL,
					    i ? ops[i - 1].key_len : 0);
	if (!rc && (exec->type != REDIS_REPLY_ARRAY || exec->elements != n))
		rc = rd_reply_errno(exec, "apply", NULL, 0);
	for (size_t i = 0; !rc && i < n; i++)  /* cannot fail (see above), or we would say so */
		if (rd_error_of(exec->element[i]))
			rc = rd_reply_errno(exec->element[i], "apply, applied in part,", ops[i].key,
					    ops[i].key_len);
	rd_free_replies(r, n + 2);
out:
	free(cmds);
	free(r);
	return rc;
}

/* ---- keys ---- */

/*
 * One step of the walk: all of it with KEYS when the database is small,
 * else one SCAN step from the cursor ARGV[1].  The next cursor, then each
 * key with its size (-1: gone, as a key that expired meanwhile; 0: a key
 * of another type).  A script runs alone: the sizes are of those keys.
 */
static const char rd_keys_script[] =
	"local r\n"
	"if ARGV[1] == '0' and redis.call('DBSIZE') <= tonumber(ARGV[4]) then\n"
	"  r = {'0', redis.call('KEYS', ARGV[2])}\n"
	"else\n"
	"  r = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])\n"
	"end\n"
	"local out = {r[1]}\n"
	"for _, k in ipairs(r[2]) do\n"
	"  local n = redis.pcall('STRLEN', k)\n"
	"  if type(n) ~= 'number' then n = 0\n"
	"  elseif n == 0 and redis.call('EXISTS', k) == 0 then n = -1 end\n"
	"  out[#out + 1] = k\n"
	"  out[#out + 1] = n\n"
	"end\n"
	"return out\n";

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
		redisReply *r;

		rd_cmd_init(&cmd, 7, RD_ARG("EVAL"), RD_ARG(rd_keys_script), RD_ARG("0"),
			    RD_ARG(cursor), pat.p, pat.len, RD_ARG(s->scan_count), RD_ARG(RD_KEYS_MAX));
		if ((rc = rd_run(s, "list", prefix, plen, 0, &cmd, 1, &r)))
			break;
		if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 == 0 ||
		    r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len >= sizeof(cursor))
			rc = rd_reply_errno(r, "list", prefix, plen);
		else
			memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
		/* the glob's false matches, if any, keycache.c passes over */
		for (size_t i = 1; !rc && !stop && i + 1 < r->elements; i += 2) {
			const redisReply *k = r->element[i], *z = r->element[i + 1];

			if (k->type == REDIS_REPLY_STRING && z->type == REDIS_REPLY_INTEGER &&
			    z->integer >= 0)
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

/* The value of "name:" in an INFO reply, or "unknown". */
static void rd_info_field(const redisReply *r, const char *name, char *out, size_t outlen)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\n%s:", name);
	p = r->type == REDIS_REPLY_STRING ? strstr(r->str, pat) : NULL;
	snprintf(out, outlen, "%.*s", p ? (int)strcspn(p + strlen(pat), "\r\n") : 7,
		 p ? p + strlen(pat) : "unknown");
}

/* The INFO fields read: all but "loading" are .health's facts, under
 * their own names but for aof_enabled ("appendonly", yes or no). */
static const char *const rd_fields[] = {
	"redis_version", "role", "used_memory", "maxmemory", "maxmemory_policy", "aof_enabled",
	"loading",
};
enum { RD_F_VERSION, RD_F_ROLE, RD_F_USED, RD_F_MAX, RD_F_POLICY, RD_F_AOF, RD_F_LOADING,
       RD_F_N };

/* The server's state: PING, INFO, CONFIG GET appendfsync and DBSIZE in one
 * round trip, all reads.  INFO gives the settings even where CONFIG is
 * disabled or renamed; only appendfsync then reads "unknown".  For
 * health (h), quietly and with the reason of a failure in h->detail. */
struct rd_state {
	char v[RD_F_N][64], fsync[32], keys[32];
};

static int rd_state(struct rd_store *s, struct kv_health *h, struct rd_state *o)
{
	struct rd_cmd cmds[4];
	redisReply *r[4];
	char why[sizeof(h->detail)];
	int rc;

	rd_cmd_init(&cmds[0], 1, RD_ARG("PING"));
	rd_cmd_init(&cmds[1], 1, RD_ARG("INFO"));
	rd_cmd_init(&cmds[2], 3, RD_ARG("CONFIG"), RD_ARG("GET"), RD_ARG("appendfsync"));
	rd_cmd_init(&cmds[3], 1, RD_ARG("DBSIZE"));
	if ((rc = rd_run(s, "statfs", NULL, 0, h ? RD_QUIET : 0, cmds, 4, r))) {
		snprintf(h ? h->detail : why, sizeof(why), "redis: %.240s", kv_why());
		return rc;
	}
	if (rd_error_of(r[0])) {
		rc = rd_error_of(r[0])->err == -EACCES ? -EACCES : -EIO;
		snprintf(h ? h->detail : why, sizeof(why), "redis at %.60s: %.*s%s", s->where,
			 (int)(r[0]->len < 120 ? r[0]->len : 120), r[0]->str,
			 rc == -EACCES && !s->password ? " (no password given: put it in "
			 RD_PASSWORD_ENV " or -o password_file=FILE)" : "");
	}
	for (size_t i = 0; i < RD_F_N; i++)
		rd_info_field(r[1], rd_fields[i], o->v[i], sizeof(o->v[i]));
	snprintf(o->fsync, sizeof(o->fsync), "%s", r[2]->type == REDIS_REPLY_ARRAY &&
		 r[2]->elements == 2 ? r[2]->element[1]->str : "unknown");
	snprintf(o->keys, sizeof(o->keys), r[3]->type == REDIS_REPLY_INTEGER ? "%lld" : "?",
		 r[3]->integer);
	rd_free_replies(r, 4);
	if (strcmp(o->v[RD_F_AOF], "unknown") != 0)
		snprintf(o->v[RD_F_AOF], sizeof(o->v[0]), strcmp(o->v[RD_F_AOF], "1") ? "no" : "yes");
	return rc;
}

/* As kv_open's probe health() logs nothing: its detail line is the report. */
static int rd_health(struct kv_store *st, struct kv_health *h)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);
	struct rd_state o;
	const char *warn = "";
	int rc = rd_state(s, h, &o);

	if (rc)
		return rc;
	if (strcmp(o.v[RD_F_AOF], "yes") != 0)
		warn = "; appendonly is off: writes since the last snapshot die with the server";
	else if (strcmp(o.v[RD_F_POLICY], "noeviction") && strcmp(o.v[RD_F_POLICY], "unknown"))
		warn = "; maxmemory-policy evicts: keys may vanish under memory pressure";
	snprintf(h->detail, sizeof(h->detail), "redis %.20s %.20s, db %d, %s keys%s%s",
		 o.v[RD_F_VERSION], o.v[RD_F_ROLE], s->db, o.keys,
		 strcmp(o.v[RD_F_LOADING], "1") == 0 ? ", loading" : "", warn);
	for (size_t i = 0; i < RD_F_LOADING; i++)
		kv_health_fact(h, i == RD_F_AOF ? "appendonly" : rd_fields[i], "%s", o.v[i]);
	kv_health_fact(h, "appendfsync", "%s", o.fsync);
	kv_health_fact(h, "keys", "%s", o.keys);
	return 0;
}

/* maxmemory as the size, maxmemory - used_memory as free (0: no limit). */
static int rd_statfs(struct kv_store *st, struct kv_statfs *out)
{
	struct rd_state o;
	int rc = rd_state(kv_store_cast(struct rd_store, st), NULL, &o);
	uint64_t u, m;

	if (rc)
		return rc;
	u = strtoull(o.v[RD_F_USED], NULL, 10);
	m = strtoull(o.v[RD_F_MAX], NULL, 10);
	out->keys = strtoull(o.keys, NULL, 10);
	out->total_bytes = m;
	out->free_bytes = u < m ? m - u : 0;
	return 0;
}

/* The server's bound narrows both (keys are arguments too). */
static void rd_store_limits(struct kv_store *st, struct kv_limits *out)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);

	out->max_value = __atomic_load_n(&s->max_value, __ATOMIC_RELAXED);
	out->max_key = out->max_value < RD_MAX_KEY ? out->max_value : RD_MAX_KEY;
}

/* ---- open and close ---- */

static void rd_close(struct kv_store *st)
{
	struct rd_store *s = kv_store_cast(struct rd_store, st);

	kv_pool_destroy(&s->pool);
	if (s->password)
		explicit_bzero(s->password, strlen(s->password));
	free(s->password);
	free(s->host);
	free(s->sock);
	free(s->user);
	free(s);
}

/* A database number: 0 to 999999999 (the server knows how many it has). */
static bool rd_db(const char *text, int *db)
{
	size_t n = strspn(text, "0123456789");

	*db = atoi(text);  /* unused when false: the URL is refused */
	return n && n <= 9 && !text[n];
}

#define RD_NO_PASSWORD_IN_URL \
	"redis: a password in the URL is refused (it would show in ps and logs): " \
	"put it in " RD_PASSWORD_ENV " or a file named by -o password_file=FILE"

/* The query of a URL: "db=N" of a unix socket; a password is refused. */
static const char *rd_query(struct rd_store *s, char *q)
{
	char *save = NULL;

	for (char *p = strtok_r(q, "&", &save); p; p = strtok_r(NULL, "&", &save)) {
		if (strncasecmp(p, "password=", 9) == 0 || strncasecmp(p, "pass=", 5) == 0)
			return RD_NO_PASSWORD_IN_URL;
		if (!s->sock)
			return "redis: a redis:// URL takes no parameters (the database is its path: "
			       "redis://host/2)";
		if (strncmp(p, "db=", 3) != 0)
			return "redis: unknown URL parameter (only db=N)";
		if (!rd_db(p + 3, &s->db))
			return "redis: bad db in the URL (a number)";
	}
	return NULL;
}

enum { RD_U_PASSWORD, RD_U_USER, RD_U_HOST, RD_U_PORT, RD_U_PATH, RD_U_QUERY, RD_U_N };
static const CURLUPart rd_url_part[RD_U_N] = {
	CURLUPART_PASSWORD, CURLUPART_USER, CURLUPART_HOST, CURLUPART_PORT, CURLUPART_PATH,
	CURLUPART_QUERY,
};

/* Host, port, socket, database and user from the URL's parts (u[i] of
 * rd_url_part[i], NULL if absent); NULL, or what is wrong. */
static const char *rd_url_parts(struct rd_store *s, char **u, bool unix_sock)
{
	const char *host = u[RD_U_HOST] ? u[RD_U_HOST] : "";
	const char *path = u[RD_U_PATH] ? u[RD_U_PATH] : "";

	s->port = u[RD_U_PORT] ? atoi(u[RD_U_PORT]) : RD_DEFAULT_PORT;
	if (u[RD_U_PASSWORD])
		return RD_NO_PASSWORD_IN_URL;
	if (s->port < 1 || s->port > 65535)
		return "redis: bad port in the URL (1 to 65535)";
	if (unix_sock && host[0] && strcmp(host, "localhost") != 0)
		return "redis: a unix socket is local: use redis+unix:///path/to/socket";
	if (unix_sock && strlen(path) < 2)
		return "redis: no socket path: use redis+unix:///path/to/socket[?db=N]";
	if (!unix_sock && strlen(path) > 1 && !rd_db(path + 1, &s->db))
		return "redis: the path of a redis:// URL is a database number; for a unix "
		       "socket use redis+unix:///path/to/socket";
	if (unix_sock)
		s->sock = strdup(path);
	else if (host[0] == '[')  /* [v6 address] */
		s->host = strndup(host + 1, strlen(host) - 2);
	else
		s->host = strdup(host[0] ? host : "127.0.0.1");
	if ((!s->sock && !s->host) ||
	    (u[RD_U_USER] && u[RD_U_USER][0] && !(s->user = strdup(u[RD_U_USER]))))
		return "redis: out of memory";
	snprintf(s->where, sizeof(s->where), s->sock ? "%s" : strchr(s->host, ':') ? "[%s]:%d"
		 : "%s:%d", s->sock ? s->sock : s->host, s->port);
	return u[RD_U_QUERY] ? rd_query(s, u[RD_U_QUERY]) : NULL;
}

/* The URL, parsed by libcurl.  A unix socket's URL gets the host name
 * "localhost" when it has none: curl reads "x:///run/s" as the host "run". */
static int rd_parse_url(struct rd_store *s, const char *url, char *err, size_t errlen)
{
	const char *loc = strchr(url, ':') + 1, *why = NULL;
	bool unix_sock = loc - url == 11 && strncasecmp(url, "redis+unix:", 11) == 0;
	bool authority = strncmp(loc, "//", 2) == 0 && loc[2] != '/';
	char *fixed = NULL, *u[RD_U_N] = { 0 };
	CURLU *h = curl_url();
	CURLUcode uc;

	if (!unix_sock && !authority)
		why = "redis: expected redis://[user@]host[:port][/db] or "
		      "redis+unix:///path/to/socket[?db=N]";
	else if (!h || (unix_sock && !authority && asprintf(&fixed, "redis+unix://localhost%s",
							  loc + 2 * (strncmp(loc, "//", 2) == 0)) < 0))
		why = "redis: out of memory";
	else if ((uc = curl_url_set(h, CURLUPART_URL, fixed ? fixed : url,
				    CURLU_NON_SUPPORT_SCHEME | CURLU_NO_AUTHORITY)))
		why = uc == CURLUE_BAD_PORT_NUMBER ? "redis: bad port in the URL (1 to 65535)"
						   : curl_url_strerror(uc);
	for (size_t i = 0; !why && i < RD_U_N; i++)
		curl_url_get(h, rd_url_part[i], &u[i],
			     i == RD_U_USER || i == RD_U_PATH ? CURLU_URLDECODE : 0);
	if (!why)
		why = rd_url_parts(s, u, unix_sock);
	if (why)
		snprintf(err, errlen, "%s%s", strncmp(why, "redis: ", 7) ? "redis: bad URL: " : "",
			 why);
	for (size_t i = 0; i < RD_U_N; i++)
		curl_free(u[i]);
	free(fixed);
	curl_url_cleanup(h);
	return !why ? 0 : strstr(why, "out of memory") ? -ENOMEM : -EINVAL;
}

/*
 * Parse and check only: the first call connects (kv_open's probe, unless
 * -o lazy), so a server that is down does not fail the open itself.  The
 * password: -o password_file=FILE (its first line), else $REDISCLI_AUTH,
 * else none.
 */
static int rd_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	struct rd_store *s = calloc(1, sizeof(*s));
	const char *file = kv_option_get(a, "password_file"), *env = getenv(RD_PASSWORD_ENV);
	const char *count = kv_option_get(a, "scan_count");
	uint64_t n = RD_SCAN_COUNT;
	char why[300] = "out of memory";
	int rc;

	if (!s)
		return -ENOMEM;  /* kv_open says so */
	s->max_value = RD_MAX_VALUE;
	s->timeout_ms = a->timeout_ms;
	kv_pool_init(&s->pool, "redis", &rd_pool_ops, s, RD_POOL);
	env = env && env[0] ? env : NULL;
	if ((rc = rd_parse_url(s, a->url, err, errlen)) == 0) {
		if (count && (kv_parse_size(count, &n) || n < 10 || n > 1000000))
			snprintf(err, errlen, "redis: bad scan_count (10 to 1000000)");
		else if (file)
			s->password = kv_read_secret(file, "password_file", why, sizeof(why));
		else if (env)
			s->password = strdup(env);
		else if (s->user)
			snprintf(err, errlen, "redis: a user but no password: set " RD_PASSWORD_ENV
				 " or -o password_file=FILE");
		if (!err[0] && (file || env) && !s->password)
			snprintf(err, errlen, "redis: %s", why);
		rc = err[0] ? -EINVAL : 0;
	}
	snprintf(s->scan_count, sizeof(s->scan_count), "%" PRIu64, n);
	if (rc)
		rd_close(&s->base);
	else
		*out = &s->base;
	return rc;
}

/* scan_count: larger means fewer round trips for a listing, but longer
 * stalls of the server for its other clients. */
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
