/*
 * memcached.c - one or more memcached servers as a store
 * ("memcached://host[:port][,host[:port]...]", port 11211 by default).
 *
 * Data operations go through libmemcached, which spreads keys over the
 * servers with its ketama consistent hashing (MEMCACHED_BEHAVIOR_KETAMA, as
 * pylibmc's ketama=True), so other libmemcached clients with that setting
 * find the same keys on the same servers.  memcached_st is not thread-safe:
 * FUSE's threads borrow one from a libmemcachedutil pool.
 *
 * memcached has no order, no listing and no transactions: keys() asks
 * every server for "lru_crawler metadump hash" over a text-protocol socket
 * of its own (also used for "stats"), and kv.c sorts and groups what it
 * finds, afresh for each listing; apply is left to kv.c (one by one).
 *
 * Keys (docs/backends.md): a kvfs key that is a memcached key (1..250
 * bytes, no space or control byte) not starting with "%~" or "%#" is
 * stored as it is, so other clients' keys show under their own names; any
 * other key as "%~" + the key with bytes 0x00-0x20, 0x7f and '%' written
 * %XX, or, when that is over 250 bytes, as "%#" + its hex SHA-256, whose
 * value starts with "kvfs", the key's length (be32) and the key.  Memcached
 * keys that no kvfs key encodes to, or on a server ketama would not pick
 * for them, are not shown.
 */
#include "kv.h"
#include "toolkit.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libmemcached/memcached.h>
#include <libmemcached/util.h>
#include <openssl/sha.h>

#define MC_KEY_MAX 250             /* memcached's key limit (text protocol) */
#define MC_MAX_SERVERS 64
#define MC_POOL_MAX 16             /* connections per server at most, one per busy thread */
#define MC_MAX_KEY 2048            /* kvfs keys: a path below a mount point fits */
#define MC_ITEM_SLACK 512          /* item_size_max minus this covers memcached's item
                                      header (48), key (<= 251), "\r\n", flags and CAS */
#define MC_HDR_LEN 8               /* "kvfs" + be32 key length, before a hashed key's value */
#define MC_HASHED_LEN 66           /* "%#" + 64 hex digits */
#define MC_DEFAULT_ITEM_MAX (1u << 20)
#define MC_VALUE_MAX(item_size_max) ((item_size_max) - MC_ITEM_SLACK - MC_HDR_LEN - MC_MAX_KEY)

/* ---- kvfs keys <-> memcached keys ---- */

struct mckey {
	char k[MC_KEY_MAX + 1];
	size_t n;
	bool hashed;        /* "%#" + SHA-256: the value carries the key */
};

static bool is_plain(const char *k, size_t n)
{
	if (n == 0 || n > MC_KEY_MAX || (n >= 2 && k[0] == '%' && (k[1] == '~' || k[1] == '#')))
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)k[i] <= 0x20 || k[i] == 0x7f)
			return false;
	return true;
}

/* The memcached key of a kvfs key.  0 or -ENOMEM. */
static int key_encode(const char *k, size_t n, struct mckey *out)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	size_t o = 2;

	if (is_plain(k, n)) {
		memcpy(out->k, k, n);
		out->n = n;
		out->hashed = false;
		return 0;
	}
	memcpy(out->k, "%~", 2);
	/* o past MC_KEY_MAX: too long, and nothing more is written */
	for (size_t i = 0; i < n && o <= MC_KEY_MAX; i++) {
		unsigned char c = (unsigned char)k[i];
		if (c > 0x20 && c != 0x7f && c != '%')
			out->k[o++] = (char)c;
		else if ((o += 3) <= MC_KEY_MAX)
			snprintf(out->k + o - 3, 4, "%%%02X", c);
	}
	out->n = o;
	out->hashed = o > MC_KEY_MAX;
	if (!out->hashed)
		return 0;
	if (!SHA256((const unsigned char *)k, n, md))
		return -ENOMEM;
	for (size_t i = 0; i < sizeof(md); i++)
		snprintf(out->k + 2 + 2 * i, 3, "%02x", md[i]);
	out->k[1] = '#';
	out->n = MC_HASHED_LEN;
	return 0;
}

/* Undo %XX escapes into out (room for n bytes); its length, or -1. */
static ssize_t unescape(const char *s, size_t n, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] != '%') {
			out[o++] = s[i];
			continue;
		}
		char hex[3] = {i + 2 < n ? s[i + 1] : 0, i + 2 < n ? s[i + 2] : 0, 0};
		if (!isxdigit((unsigned char)hex[0]) || !isxdigit((unsigned char)hex[1]))
			return -1;
		out[o++] = (char)strtol(hex, NULL, 16);
		i += 2;
	}
	return (ssize_t)o;
}

/* Is (k, n) the kvfs key that memcached key m stands for? */
static bool encodes_to(const char *k, size_t n, const char *m, size_t mn)
{
	struct mckey e;

	return key_encode(k, n, &e) == 0 && e.n == mn && memcmp(e.k, m, mn) == 0;
}

/* The key length in a hashed name's value header, or SIZE_MAX if it has none;
 * with key given, SIZE_MAX too unless the header names exactly that key. */
static size_t hashed_key_len(const char *v, size_t n, const char *key, size_t klen)
{
	size_t kl = 0;

	if (n < MC_HDR_LEN || memcmp(v, "kvfs", 4) != 0)
		return SIZE_MAX;
	for (int i = 4; i < 8; i++)
		kl = kl << 8 | (unsigned char)v[i];
	if (kl > n - MC_HDR_LEN || (key && (kl != klen || memcmp(v + MC_HDR_LEN, key, klen))))
		return SIZE_MAX;
	return kl;
}

/* ---- the store ---- */

struct mc_server {
	char host[256];
	unsigned port;
	/* from "stats settings" (learn_settings), atomic; 0: not known yet */
	uint64_t item_size_max;
	bool no_cas;                 /* memcached -C: no CAS uniques */
};

struct mc_store {
	struct kv_store base;
	memcached_st *master;        /* the template of the pool */
	memcached_pool_st *pool;
	struct mc_server srv[MC_MAX_SERVERS];
	size_t nsrv;
	int timeout_ms;
	/* from the servers' settings (learn_settings), read with __atomic loads */
	bool learned;                /* every server has answered "stats settings" */
	uint64_t max_value;          /* from the smallest item_size_max */
	bool cas_enabled;            /* every server keeps CAS uniques (no -C) */
};

/* ---- libmemcached ---- */

enum mc_op { MC_GET, MC_SET, MC_ADD, MC_REPLACE, MC_CAS, MC_DEL };

struct mc_item {
	const char *data;     /* the bytes to store */
	char *val;            /* MC_GET: the value read (malloc'd, NUL-terminated) */
	size_t len;           /* of either */
	uint64_t cas;         /* MC_CAS: expected; MC_GET: found */
};

static memcached_return_t mc_get_once(memcached_st *c, const struct mckey *mk,
				      struct mc_item *it)
{
	memcached_return_t rc = memcached_mget(c, (const char *const[]){mk->k}, &mk->n, 1);
	memcached_result_st *r;

	if (rc != MEMCACHED_SUCCESS)
		return rc;
	while ((r = memcached_fetch_result(c, NULL, &rc))) {
		size_t n = memcached_result_length(r);
		if (!it->val && (it->val = malloc(n + 1))) {
			memcpy(it->val, memcached_result_value(r), n);
			it->val[n] = '\0';
			it->len = n;
			it->cas = memcached_result_cas(r);
		}
		memcached_result_free(r);
	}
	if (rc == MEMCACHED_END || rc == MEMCACHED_SUCCESS || rc == MEMCACHED_NOTFOUND)
		return it->val ? MEMCACHED_SUCCESS : MEMCACHED_NOTFOUND;
	free(it->val);
	it->val = NULL;
	return rc;
}

static memcached_return_t mc_once(memcached_st *c, enum mc_op op, const struct mckey *mk,
				  struct mc_item *it)
{
	switch (op) {
	case MC_GET: return mc_get_once(c, mk, it);
	case MC_SET: return memcached_set(c, mk->k, mk->n, it->data, it->len, 0, 0);
	case MC_ADD: return memcached_add(c, mk->k, mk->n, it->data, it->len, 0, 0);
	case MC_REPLACE: return memcached_replace(c, mk->k, mk->n, it->data, it->len, 0, 0);
	case MC_CAS: return memcached_cas(c, mk->k, mk->n, it->data, it->len, 0, 0, it->cas);
	default: return memcached_delete(c, mk->k, mk->n, 0);
	}
}

/* Failures of the connection rather than of the request. */
static bool mc_transient(memcached_return_t rc)
{
	return rc == MEMCACHED_CONNECTION_FAILURE || rc == MEMCACHED_ERRNO ||
	       rc == MEMCACHED_CONNECTION_SOCKET_CREATE_FAILURE ||
	       rc == MEMCACHED_SERVER_TEMPORARILY_DISABLED || rc == MEMCACHED_SERVER_MARKED_DEAD ||
	       rc == MEMCACHED_READ_FAILURE || rc == MEMCACHED_WRITE_FAILURE ||
	       rc == MEMCACHED_UNKNOWN_READ_FAILURE;
}

/* The one place libmemcached results become errno values. */
static int mc_errno(memcached_return_t rc)
{
	switch (rc) {
	case MEMCACHED_SUCCESS: case MEMCACHED_STORED: case MEMCACHED_DELETED: return 0;
	case MEMCACHED_NOTFOUND: return -ENOENT;
	case MEMCACHED_NOTSTORED: case MEMCACHED_DATA_EXISTS: return -ECANCELED;
	case MEMCACHED_E2BIG: return -EFBIG;
	case MEMCACHED_MEMORY_ALLOCATION_FAILURE: return -ENOMEM;
	case MEMCACHED_SERVER_MEMORY_ALLOCATION_FAILURE: return -ENOSPC;
	case MEMCACHED_TIMEOUT: return -ETIMEDOUT;
	default: return -EIO;
	}
}

/*
 * One operation on a handle from the pool.  A failure of the connection
 * (refused, reset, a server restarting) is tried again with backoff until
 * deadline, after closing the handle's connections: libmemcached otherwise
 * refuses a failed server until the next second, even with RETRY_TIMEOUT
 * 0.  A timeout is not retried: it used the time.
 */
static int mc_call(struct mc_store *m, enum mc_op op, const struct mckey *mk,
		   struct mc_item *it, int64_t deadline)
{
	static const char *const names[] = {"get", "set", "add", "replace", "cas", "delete"};
	struct timespec rel = {.tv_sec = m->timeout_ms / 1000 + 1};
	memcached_return_t rc;
	memcached_st *c = memcached_pool_fetch(m->pool, &rel, &rc);
	int attempt = 0, err;

	if (!c) {
		kv_log(KV_LOG_ERR, "memcached: all %d connections stayed busy for the whole "
		       "timeout (-o timeout raises it)", MC_POOL_MAX);
		return -EIO;
	}
	while (mc_transient(rc = mc_once(c, op, mk, it)) && kv_backoff(attempt++, deadline))
		memcached_quit(c);
	err = mc_errno(rc);
	if (err == -EIO || err == -ETIMEDOUT)
		kv_log(KV_LOG_WARN, "memcached: %s(%s): %s", names[op], kv_printable(mk->k, mk->n),
		       err == -ETIMEDOUT ? "no answer within the timeout (-o timeout raises it)"
		       : memcached_last_error_message(c));
	memcached_pool_release(m->pool, c);
	return err;
}

/* ---- a text-protocol socket of our own per request: metadump and stats ---- */

/* A blocking socket whose connect, each send and each receive wait at most
 * the timeout (SO_SNDTIMEO bounds connect() too): its fd, -ETIMEDOUT or -EIO. */
static int raw_connect(struct mc_store *m, const struct mc_server *s)
{
	struct timeval tv = {.tv_sec = m->timeout_ms / 1000,
			     .tv_usec = (m->timeout_ms % 1000) * 1000};
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai, *a;
	char port[8];
	int fd = -1, e = EIO;

	snprintf(port, sizeof(port), "%u", s->port);
	if (getaddrinfo(s->host, port, &hints, &ai) != 0)
		return -EIO;
	for (a = ai; a && fd < 0; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd >= 0 && (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) ||
				setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
				connect(fd, a->ai_addr, a->ai_addrlen))) {
			e = errno;
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(ai);
	return fd >= 0 ? fd : e == EINPROGRESS || e == EAGAIN ? -ETIMEDOUT : -EIO;
}

/* Has a complete answer arrived: lines ending in END, or one error line
 * (ERROR, CLIENT_ERROR, SERVER_ERROR, BUSY)? */
static bool raw_complete(const char *b, size_t n)
{
	if (n >= 5 && memcmp(b + n - 5, "END\r\n", 5) == 0 && (n == 5 || b[n - 6] == '\n'))
		return true;
	return n >= 2 && memcmp(b + n - 2, "\r\n", 2) == 0 && strncmp(b, "key=", 4) != 0 &&
	       strncmp(b, "STAT ", 5) != 0;
}

/* Send cmd and read the whole answer into out; each wait for the server is
 * bounded by the timeout, not the transfer.  0, -ETIMEDOUT, -EIO, -ENOMEM. */
static int raw_exchange(int fd, const char *cmd, struct kv_buf *out)
{
	size_t len = strlen(cmd), done = 0;
	ssize_t r;

	while (done < len) {
		if ((r = send(fd, cmd + done, len - done, MSG_NOSIGNAL)) > 0)
			done += (size_t)r;
		else if (errno != EINTR)
			return errno == EAGAIN ? -ETIMEDOUT : -EIO;
	}
	out->len = 0;
	while (!raw_complete(out->p, out->len)) {
		if (kv_buf_reserve(out, 65536))
			return -ENOMEM;
		if ((r = recv(fd, out->p + out->len, out->cap - out->len - 1, 0)) > 0)
			out->p[out->len += (size_t)r] = '\0';
		else if (r == 0 || errno != EINTR)
			return r < 0 && errno == EAGAIN ? -ETIMEDOUT : -EIO;  /* or closed */
	}
	return 0;
}

/*
 * One request to a server over a socket of its own (these are rare: a
 * listing's walk, health, statfs).  A connection refused or broken (a
 * server restarting) is tried again with backoff until deadline; no
 * answer in time is not retried.  0, -ETIMEDOUT, -EIO or -ENOMEM.
 */
static int raw_request(struct mc_store *m, const struct mc_server *s, const char *cmd,
		       struct kv_buf *out, int64_t deadline)
{
	int rc, fd, attempt = 0;

	do {
		fd = raw_connect(m, s);
		rc = fd < 0 ? fd : raw_exchange(fd, cmd, out);
		if (fd >= 0)
			close(fd);
	} while (rc == -EIO && kv_backoff(attempt++, deadline));
	return rc;
}

static const char *raw_error(int rc)
{
	return rc == -ETIMEDOUT ? "no answer within the timeout (-o timeout raises it)" :
	       rc == -ENOMEM ? "out of memory" : "cannot connect";
}

/* ---- keys: every server's metadump ---- */

struct walk {
	struct mc_store *m;
	kv_key_cb *cb;
	void *ctx;
	struct kv_buf hashed;   /* MC_HASHED_LEN-byte names whose values name their keys */
};

/* One metadump line: "key=<uri-encoded> exp=.. la=.. cas=.. fetch=.. cls=.. size=<ntotal>". */
static int walk_line(struct walk *w, size_t srv, const char *line, size_t len)
{
	char mk[MC_KEY_MAX * 3 + 1], k[MC_KEY_MAX];
	const char *sp = memchr(line, ' ', len), *sz = memmem(line, len, " size=", 6);
	ssize_t mn, kn;
	uint64_t total, size;

	if (len < 4 || memcmp(line, "key=", 4) != 0 || !sp || !sz ||
	    (size_t)(sp - line - 4) > sizeof(mk))
		return 0;
	mn = unescape(line + 4, (size_t)(sp - line - 4), mk);
	/* a key on a server that ketama does not pick for it is unreachable */
	if (mn <= 0 || mn > MC_KEY_MAX ||
	    memcached_generate_hash(w->m->master, mk, (size_t)mn) != srv)
		return 0;
	total = strtoull(sz + 6, NULL, 10);
	/* memcached's item: a 48-byte header, the key and its NUL, the value
	 * and "\r\n", and the CAS unique when kept */
	size = 48 + (uint64_t)mn + 1 + 2 +
	       (__atomic_load_n(&w->m->cas_enabled, __ATOMIC_RELAXED) ? 8 : 0);
	size = total > size ? total - size : 0;
	if (mn == MC_HASHED_LEN && memcmp(mk, "%#", 2) == 0)
		return kv_buf_add(&w->hashed, mk, MC_HASHED_LEN);
	if (mn >= 2 && memcmp(mk, "%~", 2) == 0) {
		kn = unescape(mk + 2, (size_t)mn - 2, k);
		if (kn < 0 || !encodes_to(k, (size_t)kn, mk, (size_t)mn))
			return 0;
		return w->cb(w->ctx, k, (size_t)kn, size);
	}
	return is_plain(mk, (size_t)mn) ? w->cb(w->ctx, mk, (size_t)mn, size) : 0;
}

/* Every key of server i, to walk_line. */
static int walk_server(struct walk *w, size_t i, struct kv_buf *b)
{
	struct mc_server *s = &w->m->srv[i];
	const char *cmd = "lru_crawler metadump hash\r\n";
	int64_t deadline = kv_deadline(w->m->timeout_ms);
	int rc, attempt = 0;

	while ((rc = raw_request(w->m, s, cmd, b, deadline)) == 0) {
		if (strncmp(b->p, "BUSY", 4) == 0 && kv_backoff(attempt++, deadline))
			continue;   /* another client's crawl: memcached runs one at a time */
		if (!strstr(cmd, "hash") ||
		    (strncmp(b->p, "CLIENT_ERROR", 12) != 0 && strncmp(b->p, "ERROR", 5) != 0))
			break;
		cmd = "lru_crawler metadump all\r\n";   /* memcached before 1.6 */
	}
	if (rc) {
		kv_log(KV_LOG_WARN, "memcached: %s:%u: cannot list keys: %s", s->host, s->port,
		       raw_error(rc));
		return rc == -ENOMEM ? rc : -EIO;
	}
	if (strncmp(b->p, "key=", 4) != 0 && strcmp(b->p, "END\r\n") != 0) {
		kv_log(KV_LOG_WARN, "memcached: %s:%u: cannot list keys: %.*s (is the LRU "
		       "crawler on and dumping allowed, no -X?)", s->host, s->port,
		       (int)strcspn(b->p, "\r\n"), b->p);
		return -EIO;
	}
	for (char *save, *line = strtok_r(b->p, "\n", &save); line && rc == 0;
	     line = strtok_r(NULL, "\n", &save))
		rc = walk_line(w, i, line, strlen(line));
	return rc;
}

/* The keys behind the hashed names, read from their values' headers. */
static int walk_hashed(struct walk *w)
{
	int64_t deadline = kv_deadline(w->m->timeout_ms);
	int rc = 0;

	for (size_t o = 0; o < w->hashed.len && rc == 0; o += MC_HASHED_LEN) {
		struct mckey mk = {.n = MC_HASHED_LEN, .hashed = true};
		struct mc_item it = {0};
		size_t kl;

		memcpy(mk.k, w->hashed.p + o, MC_HASHED_LEN);
		if ((rc = mc_call(w->m, MC_GET, &mk, &it, deadline)) == -ENOENT) {
			rc = 0;   /* deleted since the dump */
			continue;
		}
		kl = rc ? SIZE_MAX : hashed_key_len(it.val, it.len, NULL, 0);
		if (kl != SIZE_MAX && encodes_to(it.val + MC_HDR_LEN, kl, mk.k, mk.n))
			rc = w->cb(w->ctx, it.val + MC_HDR_LEN, kl, it.len - MC_HDR_LEN - kl);
		free(it.val);
	}
	return rc;
}

/*
 * Every key on every server, unsorted: a metadump cannot ask for a prefix,
 * and keycache.c passes over the keys outside it.  "metadump all" (old
 * servers) may show an item twice when it moved between LRUs; kv.c lists
 * a key delivered twice once.  A server that does not answer fails the
 * listing rather than show a directory without its keys.
 */
static int mcs_keys(struct kv_store *s, const char *prefix, size_t plen, kv_key_cb *cb,
		    void *ctx)
{
	struct walk w = {.m = kv_store_cast(struct mc_store, s), .cb = cb, .ctx = ctx};
	struct kv_buf dump = {0};
	int rc = 0;

	(void)prefix;
	(void)plen;
	for (size_t i = 0; i < w.m->nsrv && rc == 0; i++)
		rc = walk_server(&w, i, &dump);
	if (rc == 0)
		rc = walk_hashed(&w);
	kv_buf_free(&dump);
	kv_buf_free(&w.hashed);
	return rc < 0 ? rc : 0;
}

/* ---- what the servers say: "stats" and "stats settings" ---- */

/* Ask server i once (the state now, no retry): 0 or -EIO/-ETIMEDOUT. */
static int server_stats(struct mc_store *m, size_t i, const char *cmd, struct kv_buf *b)
{
	int rc = raw_request(m, &m->srv[i], cmd, b, kv_now_ms());

	return rc ? rc : strncmp(b->p, "STAT ", 5) == 0 ? 0 : -EIO;
}

/* The value of "STAT name value" in b, into out ("" when not there). */
static const char *stat_get(const struct kv_buf *b, const char *name, char *out, size_t n)
{
	char pat[48];
	const char *p;

	snprintf(pat, sizeof(pat), "STAT %s ", name);
	p = strstr(b->p, pat);
	p = p ? p + strlen(pat) : "";
	snprintf(out, n, "%.*s", (int)strcspn(p, "\r\n"), p);
	return out;
}

static uint64_t stat_num(const struct kv_buf *b, const char *name)
{
	char v[32];

	return strtoull(stat_get(b, name, v, sizeof(v)), NULL, 10);
}

/*
 * Ask the servers not asked yet for their item_size_max and whether they
 * keep CAS uniques ("stats settings": a round trip that writes nothing),
 * and derive the value limit.  A server that does not answer counts as
 * 1 MiB until it does: set() and health() ask again while one is unknown.
 */
static void learn_settings(struct mc_store *m)
{
	struct kv_buf b = {0};
	uint64_t item_max = 0, im;
	bool all = true, cas = true;
	char v[8];

	for (size_t i = 0; i < m->nsrv; i++) {
		struct mc_server *s = &m->srv[i];
		if (!__atomic_load_n(&s->item_size_max, __ATOMIC_ACQUIRE) &&
		    server_stats(m, i, "stats settings\r\n", &b) == 0) {
			im = stat_num(&b, "item_size_max");
			__atomic_store_n(&s->no_cas, strcmp(stat_get(&b, "cas_enabled", v, sizeof(v)),
							    "no") == 0, __ATOMIC_RELAXED);
			__atomic_store_n(&s->item_size_max, im ? im : MC_DEFAULT_ITEM_MAX,
					 __ATOMIC_RELEASE);
		}
		im = __atomic_load_n(&s->item_size_max, __ATOMIC_ACQUIRE);
		all &= im != 0;
		cas &= !im || !__atomic_load_n(&s->no_cas, __ATOMIC_RELAXED);
		item_max = im && (!item_max || im < item_max) ? im : item_max;
	}
	kv_buf_free(&b);
	item_max = !item_max ? MC_DEFAULT_ITEM_MAX : item_max < 4096 ? 4096 :  /* -I 1k: EFBIG */
		   item_max > MC_DEFAULT_ITEM_MAX * 1024 ? MC_DEFAULT_ITEM_MAX * 1024 : item_max;
	__atomic_store_n(&m->max_value, MC_VALUE_MAX(item_max), __ATOMIC_RELAXED);
	__atomic_store_n(&m->cas_enabled, cas, __ATOMIC_RELAXED);
	__atomic_store_n(&m->learned, all, __ATOMIC_RELEASE);
}

/* ---- operations ---- */

static int mcs_get(struct kv_store *s, const char *key, size_t klen, char **val, size_t *len,
		   uint64_t *version)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);
	struct mc_item it = {0};
	struct mckey mk;
	int rc = key_encode(key, klen, &mk);

	if (rc || (rc = mc_call(m, MC_GET, &mk, &it, kv_deadline(m->timeout_ms))))
		return rc;
	if (mk.hashed) {
		if (hashed_key_len(it.val, it.len, key, klen) == SIZE_MAX) {
			free(it.val);
			return -ENOENT;   /* another key's item, or not kvfs's at all */
		}
		it.len -= MC_HDR_LEN + klen;
		memmove(it.val, it.val + MC_HDR_LEN + klen, it.len + 1);
	}
	*val = it.val;
	*len = it.len;
	if (version)
		*version = it.cas ? it.cas : kv_value_version(it.val, it.len)  /* memcached -C */;
	return 0;
}

/*
 * Store a value (a hashed key's with its header in front).  A plain set is
 * a replace, else an add: memcached unlinks the old item when a "set"
 * cannot get memory, but not when a replace, add or cas cannot, so a
 * refused write leaves the old value intact.
 */
static int mc_store_value(struct mc_store *m, const char *key, size_t klen, const char *val,
			  size_t vlen, enum mc_op op, uint64_t cas)
{
	int64_t deadline = kv_deadline(m->timeout_ms);
	unsigned char hdr[MC_HDR_LEN] = {'k', 'v', 'f', 's', (unsigned char)(klen >> 24),
					 (unsigned char)(klen >> 16), (unsigned char)(klen >> 8),
					 (unsigned char)klen};
	struct mc_item it = {.data = val, .len = vlen, .cas = cas};
	struct kv_buf d = {0};
	struct mckey mk;
	int rc;

	if (!__atomic_load_n(&m->learned, __ATOMIC_ACQUIRE))
		learn_settings(m);
	if (vlen > __atomic_load_n(&m->max_value, __ATOMIC_RELAXED))
		return -EFBIG;
	if ((rc = key_encode(key, klen, &mk)))
		return rc;
	if (mk.hashed) {
		if (kv_buf_add(&d, hdr, sizeof(hdr)) || kv_buf_add(&d, key, klen) ||
		    kv_buf_add(&d, val, vlen)) {
			kv_buf_free(&d);
			return -ENOMEM;
		}
		it.data = d.p;
		it.len = d.len;
	}
	rc = mc_call(m, op == MC_SET ? MC_REPLACE : op, &mk, &it, deadline);
	if (op == MC_SET && rc == -ECANCELED)   /* not there */
		rc = mc_call(m, MC_ADD, &mk, &it, deadline);
	if (op == MC_SET && rc == -ECANCELED)   /* another client was first: its turn is over */
		rc = mc_call(m, MC_SET, &mk, &it, deadline);
	kv_buf_free(&d);
	return rc == -ENOENT ? -ECANCELED : rc;   /* cas on a key deleted meanwhile */
}

static int mcs_set(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen)
{
	return mc_store_value(kv_store_cast(struct mc_store, s), key, klen, val, vlen, MC_SET, 0);
}

static int mcs_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
		   const char *val, size_t vlen)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);

	if (!__atomic_load_n(&m->cas_enabled, __ATOMIC_RELAXED))
		return -ENOTSUP;
	return mc_store_value(m, key, klen, val, vlen, version ? MC_CAS : MC_ADD, version);
}

static int mcs_del(struct kv_store *s, const char *key, size_t klen)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);
	struct mc_item it = {0};
	struct mckey mk;
	char *v;
	size_t n;
	int rc;

	if ((rc = key_encode(key, klen, &mk)))
		return rc;
	if (mk.hashed) {
		/* the item under a hash must be this key's, not a stranger's */
		if ((rc = mcs_get(s, key, klen, &v, &n, NULL)))
			return rc;
		free(v);
	}
	return mc_call(m, MC_DEL, &mk, &it, kv_deadline(m->timeout_ms));
}

/* ---- health and statfs ---- */

static void human(uint64_t v, char *out, size_t n)
{
	const char *unit = v && v % (1u << 20) == 0 ? "MiB" : v && v % 1024 == 0 ? "KiB" : "B";

	snprintf(out, n, "%" PRIu64 " %s", v >> (*unit == 'M' ? 20 : *unit == 'K' ? 10 : 0), unit);
}

/* "stats" on every server, once each: the state now.  Per server a fact
 * (up and its figures, or down and why); fails unless all answer. */
static int mcs_health(struct kv_store *s, struct kv_health *h)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);
	struct kv_buf b = {0};
	char why[128] = "", name[32], ver[32], mem[24], item[24];
	size_t up = 0;
	int rc;

	if (!__atomic_load_n(&m->learned, __ATOMIC_ACQUIRE))
		learn_settings(m);
	for (size_t i = 0; i < m->nsrv; i++) {
		snprintf(name, sizeof(name), "%.24s:%u", m->srv[i].host, m->srv[i].port);
		if ((rc = server_stats(m, i, "stats\r\n", &b))) {
			if (!why[0])
				snprintf(why, sizeof(why), ": %s: %s", name, raw_error(rc));
			kv_health_fact(h, name, "down (%s)", raw_error(rc));
			continue;
		}
		up++;
		human(stat_num(&b, "limit_maxbytes"), mem, sizeof(mem));
		human(__atomic_load_n(&m->srv[i].item_size_max, __ATOMIC_ACQUIRE), item, sizeof(item));
		kv_health_fact(h, name, "up, memcached %s, %" PRIu64 " items, %" PRIu64
			       " evictions, memory %s, item max %s",
			       stat_get(&b, "version", ver, sizeof(ver)), stat_num(&b, "curr_items"),
			       stat_num(&b, "evictions"), mem, item);
	}
	kv_buf_free(&b);
	snprintf(h->detail, sizeof(h->detail), "%zu of %zu memcached servers answer%s", up,
		 m->nsrv, up < m->nsrv ? why : "; data is a cache: evicted when full, gone on restart");
	return up < m->nsrv ? -EIO : 0;
}

static int mcs_statfs(struct kv_store *s, struct kv_statfs *out)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);
	struct kv_buf b = {0};
	int rc = 0;

	for (size_t i = 0; i < m->nsrv && rc == 0; i++) {
		if ((rc = server_stats(m, i, "stats\r\n", &b)))
			break;
		uint64_t max = stat_num(&b, "limit_maxbytes"), used = stat_num(&b, "bytes");
		out->total_bytes += max;
		out->free_bytes += max > used ? max - used : 0;
		out->keys += stat_num(&b, "curr_items");
	}
	kv_buf_free(&b);
	return rc ? -EIO : 0;
}

static void mcs_store_limits(struct kv_store *s, struct kv_limits *out)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);

	out->max_key = MC_MAX_KEY;
	out->max_value = __atomic_load_n(&m->max_value, __ATOMIC_RELAXED);
}

/* ---- open and close ---- */

/* "//host[:port][,host[:port]...][/]" ("[v6]:port" too) into m->srv and
 * m->master's server list; one line in err if not. */
static int parse_servers(struct mc_store *m, const char *loc, char *err, size_t errlen)
{
	const char *p = loc + 2, *end;

	if (strncmp(loc, "//", 2) != 0) {
		snprintf(err, errlen, "memcached: expected memcached://host[:port][,host[:port]...]");
		return -EINVAL;
	}
	end = p + strcspn(p, "/");
	if (strchr(p, '@'))
		snprintf(err, errlen, "memcached: credentials in the URL are not accepted, and this "
			 "backend does not support SASL: remove 'user@' from the URL");
	else if (strchr(p, '?'))
		snprintf(err, errlen, "memcached: the URL takes no '?' parameters");
	else if (*end == '/' && end[1])
		snprintf(err, errlen, "memcached: the URL has no path ('%s'); use -o root=PREFIX "
			 "for a part of the key space", end);
	else if (p == end)
		snprintf(err, errlen, "memcached: no server in the URL");
	for (const char *stop; !err[0] && p <= end; p = stop + 1) {
		struct mc_server *s = &m->srv[m->nsrv < MC_MAX_SERVERS ? m->nsrv : 0];
		char tok[300];
		int h = -1, e = -1;

		stop = p + strcspn(p, ",/");
		snprintf(tok, sizeof(tok), "%.*s", (int)(stop - p), p);
		s->port = 11211;
		sscanf(tok, *tok == '[' ? "[%255[^]]]%n:%5u%n" : "%255[^:]%n:%5u%n", s->host, &h,
		       &s->port, &e);
		if (m->nsrv++ == MC_MAX_SERVERS)
			snprintf(err, errlen, "memcached: more than %d servers", MC_MAX_SERVERS);
		else if (h < 0 || (tok[h] && tok[h] != ':'))
			snprintf(err, errlen, "memcached: bad server '%s' (expected host[:port])", tok);
		else if (tok[h] && (e < 0 || tok[e] || s->port == 0 || s->port > 65535))
			snprintf(err, errlen, "memcached: bad port in '%s' (1-65535)", tok);
		else if (memcached_server_add(m->master, s->host, (in_port_t)s->port) !=
			 MEMCACHED_SUCCESS)
			snprintf(err, errlen, "memcached: cannot use server %s:%u: %s", s->host,
				 s->port, memcached_last_error_message(m->master));
	}
	return err[0] ? -EINVAL : 0;
}

static void mcs_close(struct kv_store *s)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);

	if (m->pool)
		memcached_pool_destroy(m->pool);
	if (m->master)
		memcached_free(m->master);
	free(m);
}

/* No round trip here: kv_open probes with health() (unless -o lazy). */
static int mcs_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	struct mc_store *m = calloc(1, sizeof(*m));
	uint64_t ms = (uint64_t)a->timeout_ms;
	const struct { memcached_behavior_t b; uint64_t v; } behaviors[] = {
		{MEMCACHED_BEHAVIOR_KETAMA, 1}, {MEMCACHED_BEHAVIOR_SUPPORT_CAS, 1},
		{MEMCACHED_BEHAVIOR_TCP_NODELAY, 1}, {MEMCACHED_BEHAVIOR_NO_BLOCK, 1},
		/* a failed server is tried again at the next call (see mc_call), and
		 * never given up on: the mount recovers when it is back */
		{MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, 0},
		{MEMCACHED_BEHAVIOR_SERVER_FAILURE_LIMIT, 1u << 30},
		{MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, ms}, {MEMCACHED_BEHAVIOR_POLL_TIMEOUT, ms},
		{MEMCACHED_BEHAVIOR_RCV_TIMEOUT, ms * 1000},
		{MEMCACHED_BEHAVIOR_SND_TIMEOUT, ms * 1000},
	};
	int rc = -ENOMEM;

	if (!m)
		return -ENOMEM;
	m->timeout_ms = a->timeout_ms;
	m->max_value = MC_VALUE_MAX(MC_DEFAULT_ITEM_MAX);   /* until the servers answer */
	m->cas_enabled = true;
	if (!(m->master = memcached_create(NULL)) ||
	    (rc = parse_servers(m, a->location, err, errlen)))
		goto fail;
	for (size_t i = 0; i < sizeof(behaviors) / sizeof(behaviors[0]); i++)
		memcached_behavior_set(m->master, behaviors[i].b, behaviors[i].v);
	if (!(m->pool = memcached_pool_create(m->master, 1, MC_POOL_MAX))) {
		rc = -ENOMEM;
		goto fail;
	}
	*out = &m->base;
	return 0;
fail:
	mcs_close(&m->base);
	return rc;
}

const struct kv_backend kv_backend_memcached = {
	.scheme = "memcached",
	.summary = "memcached servers via libmemcached (ketama); a cache: evicts, forgets on restart",
	.usage = "memcached://host[:port][,host[:port]...]",
	.persistent = true,
	.limits = {.max_key = MC_MAX_KEY},
	.open = mcs_open,
	.close = mcs_close,
	.get = mcs_get,
	.set = mcs_set,
	.del = mcs_del,
	.keys = mcs_keys,
	.health = mcs_health,
	.cas = mcs_cas,
	.statfs = mcs_statfs,
	.store_limits = mcs_store_limits,
};
