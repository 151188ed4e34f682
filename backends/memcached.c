/*
 * memcached.c - one or more memcached servers as a store
 * ("memcached://host[:port][,host[:port]...]", port 11211 by default).
 *
 * Data operations go through libmemcached, which spreads keys over the
 * servers with its ketama consistent hashing (MEMCACHED_BEHAVIOR_KETAMA, the
 * same as pylibmc's ketama=True), so other libmemcached clients with that
 * setting find the same keys on the same servers.  memcached_st is not
 * thread-safe: FUSE's threads borrow one from a libmemcachedutil pool.
 *
 * memcached cannot list keys.  list() walks every server with
 * "lru_crawler metadump hash" (memcached >= 1.6) over a socket of its own
 * and keeps the result, sorted, as a key cache.  Before each use the cache
 * is checked with one "stats" per server: the pair (total_items,
 * curr_items) changes with every item linked or unlinked, so an unchanged
 * pair means no key came or went since the walk.  This mount's own writes
 * update the cache and the expected pair in place, so a copy of many files
 * does not walk the servers again after every file.
 *
 * Keys: memcached keys are 1..250 bytes without spaces or control bytes.
 * A kvfs key that is such a key, and does not begin with "%~" or "%#", is
 * stored as it is ("plain"), so the keys of other clients appear under
 * their own names.  Any other key is stored as "%~" + the key with bytes
 * 0x00-0x20, 0x7f and '%' written as %XX ("escaped"), or, when that is
 * over 250 bytes, as "%#" + the hex SHA-256 of the key ("hashed"), whose
 * value starts with a header "kvfs" + 32-bit big-endian key length + the
 * key, so that a listing can recover the key.  A memcached key that no kvfs
 * key encodes to (a foreign "%~..." that is not canonical, a "%#..." item
 * without a matching header, a key with control bytes, a key on a server
 * ketama would not pick for it) is not shown.
 */
#include "kv.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libmemcached/memcached.h>
#include <libmemcached/util.h>

#define MC_KEY_MAX 250             /* memcached's key limit (text protocol) */
#define MC_MAX_SERVERS 64
#define MC_POOL_MAX 16             /* connections per server at most, one per busy thread */
#define MC_MAX_KEY 2048            /* kvfs keys: a path below a mount point fits */
#define MC_ITEM_SLACK 512          /* item_size_max minus this covers memcached's item
                                      header (48), key (<= 251), "\r\n", flags and CAS */
#define MC_HDR_LEN 8               /* "kvfs" + be32 key length, before a hashed key's value */
#define MC_DEFAULT_ITEM_MAX (1u << 20)

/* ---- SHA-256, for the names of keys too long for memcached ---- */

static const uint32_t sha_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, unsigned n)
{
	return (x >> n) | (x << (32 - n));
}

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
	uint32_t w[64], v[8];

	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	memcpy(v, h, sizeof(v));
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) +
			      ((v[4] & v[5]) ^ (~v[4] & v[6])) + sha_k[i] + w[i];
		uint32_t t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) +
			      ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
		memmove(&v[1], &v[0], 7 * sizeof(v[0]));
		v[4] += t1;
		v[0] = t1 + t2;
	}
	for (int i = 0; i < 8; i++)
		h[i] += v[i];
}

static void sha256_hex(const char *data, size_t n, char out[65])
{
	uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
			 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	unsigned char tail[128] = {0};
	size_t full = n & ~(size_t)63, rest = n - full, tlen;
	uint64_t bits = (uint64_t)n * 8;

	for (size_t o = 0; o < full; o += 64)
		sha256_block(h, (const unsigned char *)data + o);
	memcpy(tail, data + full, rest);
	tail[rest] = 0x80;
	tlen = rest < 56 ? 64 : 128;
	for (int i = 0; i < 8; i++)
		tail[tlen - 1 - i] = (unsigned char)(bits >> (8 * i));
	for (size_t o = 0; o < tlen; o += 64)
		sha256_block(h, tail + o);
	for (int i = 0; i < 8; i++)
		snprintf(out + 8 * i, 9, "%08" PRIx32, h[i]);
}

/* ---- kvfs keys <-> memcached keys ---- */

enum key_form { KF_PLAIN, KF_ESCAPED, KF_HASHED };

struct mckey {
	char k[MC_KEY_MAX + 1];
	size_t n;
	enum key_form form;
};

static bool is_marked(const char *k, size_t n)
{
	return n >= 2 && k[0] == '%' && (k[1] == '~' || k[1] == '#');
}

static bool needs_escape(unsigned char c)
{
	return c <= 0x20 || c == 0x7f || c == '%';
}

static bool is_plain(const char *k, size_t n)
{
	if (n == 0 || n > MC_KEY_MAX || is_marked(k, n))
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)k[i] <= 0x20 || k[i] == 0x7f)
			return false;
	return true;
}

static void key_encode(const char *k, size_t n, struct mckey *out)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 2;

	if (is_plain(k, n)) {
		memcpy(out->k, k, n);
		out->n = n;
		out->form = KF_PLAIN;
		return;
	}
	memcpy(out->k, "%~", 2);
	for (size_t i = 0; i < n && o <= MC_KEY_MAX; i++) {
		unsigned char c = (unsigned char)k[i];
		if (!needs_escape(c)) {
			out->k[o++] = (char)c;
		} else if (o + 3 <= MC_KEY_MAX) {
			out->k[o++] = '%';
			out->k[o++] = hex[c >> 4];
			out->k[o++] = hex[c & 15];
		} else {
			o = MC_KEY_MAX + 1;
		}
	}
	if (o <= MC_KEY_MAX) {
		out->n = o;
		out->form = KF_ESCAPED;
		return;
	}
	memcpy(out->k, "%#", 2);
	sha256_hex(k, n, out->k + 2);
	out->n = 66;
	out->form = KF_HASHED;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
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
		if (i + 2 >= n)
			return -1;
		int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
		if (hi < 0 || lo < 0)
			return -1;
		out[o++] = (char)(hi << 4 | lo);
		i += 2;
	}
	return (ssize_t)o;
}

/* Is (k, n) the kvfs key that memcached key m stands for? */
static bool encodes_to(const char *k, size_t n, const char *m, size_t mn)
{
	struct mckey e;

	key_encode(k, n, &e);
	return e.n == mn && memcmp(e.k, m, mn) == 0;
}

/* ---- the store ---- */

struct mc_server {
	char host[256];
	unsigned port;
	int fd;                      /* our own text-protocol socket (stats, metadump) */
	/* learned from "stats settings" (at open, or once it answers), for .health */
	uint64_t item_size_max;
	bool cas_enabled;
	bool known;
};

/* What "stats" says about a server's key set; equal means no item came or went. */
struct mc_fp {
	uint64_t pid, started, curr, total, flushes;
};

struct mc_item {
	char *key;
	size_t klen;
	uint64_t size;
};

enum change { CH_REPLACED, CH_CREATED, CH_DELETED };

/* One write of this mount, as the key cache must learn it. */
struct mc_change {
	const char *key;
	size_t klen;
	enum change ch;
	uint64_t size;
	size_t srv;       /* the server ketama picks for it */
};

struct mc_store {
	struct kv_store base;
	memcached_st *master;        /* the template of the pool; used alone only at open */
	memcached_pool_st *pool;
	struct mc_server *srv;
	size_t nsrv;
	int timeout_ms;
	/* from the servers' settings (learn_settings), read with __atomic loads */
	pthread_mutex_t settings_lock;
	bool learned;                /* every server has answered "stats settings" */
	uint64_t max_value;          /* from the smallest item_size_max */
	bool cas_enabled;            /* every server keeps CAS uniques (no -C) */
	uint64_t item_overhead;      /* ntotal - value size - key size, for metadump sizes */

	pthread_mutex_t scan_lock;   /* one walker; guards the servers' own sockets */
	/* Writes hold it shared from their request until the cache knows the
	 * result; a check of the servers' stats holds it alone, so it never
	 * sees a write of ours that the cache does not expect yet. */
	pthread_rwlock_t write_gate;
	pthread_rwlock_t cache_lock; /* guards everything below */
	bool cache_valid;
	bool scanning;               /* a walk runs: our writes go to the journal too */
	bool scan_spoiled;           /* ... and one of them failed in an unknown way */
	struct mc_change *journal;   /* our writes since the walk's stats, replayed on it */
	size_t njournal, capjournal;
	struct mc_item *items;       /* sorted bytewise by key */
	size_t n, cap;
	struct mc_fp *fp;            /* per server, as the cache expects it now */
};

static void mc_wait_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- libmemcached connections ---- */

static memcached_st *mc_take(struct mc_store *m)
{
	struct timespec rel = {.tv_sec = m->timeout_ms / 1000 + 1};
	memcached_return_t rc;
	memcached_st *c = memcached_pool_fetch(m->pool, &rel, &rc);

	if (!c)
		kv_log(KV_LOG_WARN, "memcached: no free connection: %s", memcached_strerror(NULL, rc));
	return c;
}

static void mc_give(struct mc_store *m, memcached_st *c)
{
	memcached_pool_release(m->pool, c);
}

/*
 * After a failure libmemcached refuses a server until the next second
 * (next_retry < now, in whole seconds) even with RETRY_TIMEOUT 0.  A call
 * refused that way closes this handle's connections, which makes every
 * server new again, and says to try once more: so a server that is back
 * is used at once, and one still down fails by connecting, in bounded time.
 */
static bool mc_retry(memcached_st *c, memcached_return_t rc)
{
	if (rc != MEMCACHED_SERVER_TEMPORARILY_DISABLED && rc != MEMCACHED_SERVER_MARKED_DEAD)
		return false;
	memcached_quit(c);
	return true;
}

/* The one place libmemcached results become errno values. */
static int mc_errno(memcached_st *c, memcached_return_t rc, const char *op, const char *key,
		    size_t klen)
{
	switch (rc) {
	case MEMCACHED_SUCCESS: case MEMCACHED_STORED: case MEMCACHED_DELETED: case MEMCACHED_END:
		return 0;
	case MEMCACHED_NOTFOUND:
		return -ENOENT;
	case MEMCACHED_NOTSTORED: case MEMCACHED_DATA_EXISTS:
		return -ECANCELED;
	case MEMCACHED_E2BIG:
		return -EFBIG;
	case MEMCACHED_MEMORY_ALLOCATION_FAILURE:
		return -ENOMEM;
	case MEMCACHED_SERVER_MEMORY_ALLOCATION_FAILURE:
		return -ENOSPC;
	default:
		kv_log(KV_LOG_WARN, "memcached: %s(%s): %s", op, kv_printable(key, klen),
		       c ? memcached_last_error_message(c) : memcached_strerror(NULL, rc));
		return rc == MEMCACHED_TIMEOUT ? -ETIMEDOUT : -EIO;
	}
}

/* The raw item under a memcached key: *val malloc'd (NUL-terminated). */
static int mc_fetch(struct mc_store *m, const struct mckey *mk, char **val, size_t *len,
		    uint64_t *cas)
{
	memcached_st *c = mc_take(m);
	const char *keys[1] = {mk->k};
	size_t lens[1] = {mk->n};
	memcached_return_t rc;
	memcached_result_st *r;
	int err = -ENOENT;

	if (!c)
		return -EIO;
	rc = memcached_mget(c, keys, lens, 1);
	if (mc_retry(c, rc))
		rc = memcached_mget(c, keys, lens, 1);
	if (rc != MEMCACHED_SUCCESS) {
		err = mc_errno(c, rc, "get", mk->k, mk->n);
		mc_give(m, c);
		return err ? err : -EIO;
	}
	while ((r = memcached_fetch_result(c, NULL, &rc))) {
		size_t n = memcached_result_length(r);
		if (err == -ENOENT) {
			*val = malloc(n + 1);
			if (!*val) {
				err = -ENOMEM;
			} else {
				memcpy(*val, memcached_result_value(r), n);
				(*val)[n] = '\0';
				*len = n;
				*cas = memcached_result_cas(r);
				err = 0;
			}
		}
		memcached_result_free(r);
	}
	if (rc != MEMCACHED_END && rc != MEMCACHED_SUCCESS && rc != MEMCACHED_NOTFOUND) {
		if (err == 0)
			free(*val);
		err = mc_errno(c, rc, "get", mk->k, mk->n);
		if (err == 0 || err == -ENOENT)
			err = -EIO;
	}
	mc_give(m, c);
	return err;
}

static size_t hashed_key_len(const char *v)
{
	return (size_t)(unsigned char)v[4] << 24 | (size_t)(unsigned char)v[5] << 16 |
	       (size_t)(unsigned char)v[6] << 8 | (unsigned char)v[7];
}

/* Does the value of a hashed name start with a well-formed header, naming
 * exactly key when key is given? */
static bool hashed_header_ok(const char *v, size_t n, const char *key, size_t klen)
{
	if (n < MC_HDR_LEN || memcmp(v, "kvfs", 4) != 0 || hashed_key_len(v) > n - MC_HDR_LEN)
		return false;
	return !key || (hashed_key_len(v) == klen && memcmp(v + MC_HDR_LEN, key, klen) == 0);
}

/* Without CAS on the server the version is a hash of the value. */
static uint64_t value_version(const char *v, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)v[i]) * 0x100000001b3ULL;
	return h | 1;
}

/* ---- the key cache ---- */

static size_t cache_find(struct mc_store *m, const char *key, size_t klen, bool *found)
{
	size_t lo = 0, hi = m->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (kv_key_cmp(m->items[mid].key, m->items[mid].klen, key, klen) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < m->n && kv_key_cmp(m->items[lo].key, m->items[lo].klen, key, klen) == 0;
	return lo;
}

static void items_free(struct mc_item *items, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(items[i].key);
	free(items);
}

/* Forget the cache: the next list walks the servers. */
static void cache_drop(struct mc_store *m)
{
	pthread_rwlock_wrlock(&m->cache_lock);
	m->cache_valid = false;
	m->scan_spoiled = true;
	pthread_rwlock_unlock(&m->cache_lock);
}

static size_t server_of(struct mc_store *m, const struct mckey *mk)
{
	uint32_t i = memcached_generate_hash(m->master, mk->k, mk->n);
	return i < m->nsrv ? i : 0;
}

/*
 * Keeping the cache in step with our own writes: a link adds one to
 * total_items, a new key one to curr_items, an unlink takes one from
 * curr_items; so the next check finds the stats as the cache expects
 * unless someone else changed the server too.
 */
static bool cache_apply(struct mc_store *m, const struct mc_change *c)
{
	bool found;
	size_t i = cache_find(m, c->key, c->klen, &found);

	if (c->ch == CH_DELETED) {
		m->fp[c->srv].curr--;
		if (found) {
			free(m->items[i].key);
			memmove(&m->items[i], &m->items[i + 1], (m->n - i - 1) * sizeof(*m->items));
			m->n--;
		}
		return true;
	}
	m->fp[c->srv].total++;
	if (c->ch == CH_CREATED)
		m->fp[c->srv].curr++;
	if (found) {
		m->items[i].size = c->size;
		return true;
	}
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 256;
		struct mc_item *it = realloc(m->items, cap * sizeof(*it));
		if (!it)
			return false;
		m->items = it;
		m->cap = cap;
	}
	char *k = malloc(c->klen ? c->klen : 1);
	if (!k)
		return false;
	memcpy(k, c->key, c->klen);
	memmove(&m->items[i + 1], &m->items[i], (m->n - i) * sizeof(*m->items));
	m->items[i] = (struct mc_item){.key = k, .klen = c->klen, .size = c->size};
	m->n++;
	return true;
}

static void journal_free(struct mc_store *m)
{
	for (size_t i = 0; i < m->njournal; i++)
		free((char *)m->journal[i].key);
	free(m->journal);
	m->journal = NULL;
	m->njournal = m->capjournal = 0;
}

/* Remember a write made while a walk runs: the walk may or may not see it. */
static void journal_add(struct mc_store *m, const struct mc_change *c)
{
	char *k = malloc(c->klen ? c->klen : 1);

	if (k && m->njournal == m->capjournal) {
		size_t cap = m->capjournal ? m->capjournal * 2 : 64;
		struct mc_change *j = realloc(m->journal, cap * sizeof(*j));
		if (j) {
			m->journal = j;
			m->capjournal = cap;
		}
	}
	if (!k || m->njournal == m->capjournal) {
		free(k);
		m->scan_spoiled = true;
		return;
	}
	memcpy(k, c->key, c->klen);
	m->journal[m->njournal] = *c;
	m->journal[m->njournal++].key = k;
}

/* This mount replaced, created or deleted a key.  Caller holds write_gate. */
static void cache_note(struct mc_store *m, const struct mckey *mk, const char *key, size_t klen,
		       enum change ch, uint64_t size)
{
	struct mc_change c = {.key = key, .klen = klen, .ch = ch, .size = size,
			      .srv = server_of(m, mk)};

	pthread_rwlock_wrlock(&m->cache_lock);
	if (m->scanning && !m->scan_spoiled)
		journal_add(m, &c);
	if (m->cache_valid && !cache_apply(m, &c))
		m->cache_valid = false;
	pthread_rwlock_unlock(&m->cache_lock);
}

/* Does the cache know key?  Only a hint: it picks replace or add first. */
static bool cache_has(struct mc_store *m, const char *key, size_t klen)
{
	bool found = false;

	pthread_rwlock_rdlock(&m->cache_lock);
	if (m->cache_valid)
		cache_find(m, key, klen, &found);
	pthread_rwlock_unlock(&m->cache_lock);
	return found;
}

/* A read learned a value's exact size (a foreign item with client flags is
 * listed 4 bytes too large until then). */
static void cache_size(struct mc_store *m, const char *key, size_t klen, uint64_t size)
{
	bool found;

	pthread_rwlock_wrlock(&m->cache_lock);
	if (m->cache_valid) {
		size_t i = cache_find(m, key, klen, &found);
		if (found)
			m->items[i].size = size;
	}
	pthread_rwlock_unlock(&m->cache_lock);
}

/* ---- our own text-protocol socket per server (stats, metadump) ---- */

static void raw_close(struct mc_server *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}

static int raw_poll(int fd, short ev, int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = ev};
	int64_t deadline = now_ms() + timeout_ms;

	for (;;) {
		int left = (int)(deadline - now_ms());
		int r = poll(&p, 1, left > 0 ? left : 0);
		if (r > 0)
			return 0;
		if (r == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

static int raw_connect(struct mc_store *m, struct mc_server *s)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
	struct addrinfo *ai, *a;
	char port[8];
	int rc = -EIO;

	snprintf(port, sizeof(port), "%u", s->port);
	if (getaddrinfo(s->host, port, &hints, &ai) != 0)
		return -EIO;
	for (a = ai; a; a = a->ai_next) {
		int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
				a->ai_protocol);
		int err = 0;
		socklen_t el = sizeof(err);

		if (fd < 0)
			continue;
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 ||
		    (errno == EINPROGRESS && raw_poll(fd, POLLOUT, m->timeout_ms) == 0 &&
		     getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0)) {
			s->fd = fd;
			rc = 0;
			break;
		}
		close(fd);
	}
	freeaddrinfo(ai);
	return rc;
}

/* Has a complete answer to stats or metadump arrived? */
static bool raw_complete(const char *b, size_t n)
{
	static const char *const errs[] = {"ERROR", "CLIENT_ERROR", "SERVER_ERROR", "BUSY", NULL};

	if (n >= 5 && memcmp(b + n - 5, "END\r\n", 5) == 0 && (n == 5 || b[n - 6] == '\n'))
		return true;
	for (const char *const *e = errs; *e; e++)
		if (n >= strlen(*e) && memcmp(b, *e, strlen(*e)) == 0)
			return n >= 2 && memcmp(b + n - 2, "\r\n", 2) == 0;
	return false;
}

/* Send cmd; *fresh tells whether the socket was connected for it. */
static int raw_send(struct mc_store *m, struct mc_server *s, const char *cmd, bool *fresh)
{
	size_t len = strlen(cmd), done = 0;
	int rc = 0;

	*fresh = s->fd < 0;
	if (s->fd < 0 && (rc = raw_connect(m, s)) < 0)
		return rc;
	while (done < len) {
		ssize_t w = send(s->fd, cmd + done, len - done, MSG_NOSIGNAL);
		if (w > 0)
			done += (size_t)w;
		else if (w < 0 && errno == EAGAIN)
			rc = raw_poll(s->fd, POLLOUT, m->timeout_ms);
		else if (w < 0 && errno != EINTR)
			return -EPIPE;
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Read a whole answer into *out (malloc'd, NUL terminated); each wait is
 * bounded by the timeout.  -EPIPE: the socket was dead before any byte. */
static int raw_recv(struct mc_store *m, struct mc_server *s, char **out, size_t *outlen)
{
	size_t n = 0, cap = 65536;
	char *buf = malloc(cap);
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	while (!raw_complete(buf, n)) {
		if (n + 1 >= cap) {
			char *b = realloc(buf, cap * 2);
			if (!b) {
				rc = -ENOMEM;
				break;
			}
			buf = b;
			cap *= 2;
		}
		ssize_t r = recv(s->fd, buf + n, cap - n - 1, 0);
		if (r > 0)
			n += (size_t)r;
		else if (r < 0 && errno == EAGAIN)
			rc = raw_poll(s->fd, POLLIN, m->timeout_ms);
		else if (r == 0 || errno != EINTR)
			rc = n ? -EIO : -EPIPE;
		if (rc < 0)
			break;
	}
	if (rc < 0) {
		free(buf);
		return rc;
	}
	buf[n] = '\0';
	*out = buf;
	*outlen = n;
	return 0;
}

static void raw_failed(struct mc_server *s, const char *cmd, int rc)
{
	kv_log(KV_LOG_WARN, "memcached: %s:%u: %.*s: %s", s->host, s->port,
	       (int)strcspn(cmd, "\r"), cmd, rc == -ETIMEDOUT ? "no answer in time" :
	       s->fd < 0 ? "cannot connect" : "connection failed");
	raw_close(s);
}

/*
 * Send cmd to every server at once, then collect the answers (out[i],
 * malloc'd).  Any failure closes that server's socket; a kept socket that
 * turns out dead before any answer (the server restarted) is replaced once
 * at once.  Caller holds scan_lock.  0, or the error of a failed server.
 */
static int raw_request_all(struct mc_store *m, const char *cmd, char **out, size_t *outlen)
{
	int err = 0;

	for (size_t i = 0; i < m->nsrv; i++)
		out[i] = NULL;
	for (size_t pass = 0; pass < 2; pass++) {
		int rc[MC_MAX_SERVERS];
		bool fresh[MC_MAX_SERVERS];

		for (size_t i = 0; i < m->nsrv; i++)
			rc[i] = out[i] ? 0 : raw_send(m, &m->srv[i], cmd, &fresh[i]);
		for (size_t i = 0; i < m->nsrv; i++) {
			if (out[i] || rc[i])
				continue;
			rc[i] = raw_recv(m, &m->srv[i], &out[i], &outlen[i]);
		}
		err = 0;
		for (size_t i = 0; i < m->nsrv; i++) {
			if (out[i])
				continue;
			if (pass == 0 && rc[i] == -EPIPE && !fresh[i]) {
				raw_close(&m->srv[i]);   /* try it again in the second pass */
				err = -EPIPE;
				continue;
			}
			raw_failed(&m->srv[i], cmd, rc[i]);
			rc[i] = -EIO;
			if (!err || err == -EPIPE)
				err = rc[i] == -ENOMEM ? -ENOMEM : -EIO;
		}
		if (err != -EPIPE)
			break;
	}
	if (err) {
		for (size_t i = 0; i < m->nsrv; i++) {
			free(out[i]);
			out[i] = NULL;
		}
	}
	return err == -EPIPE ? -EIO : err;
}

/* One request to server i over our own socket (see raw_request_all). */
static int raw_request(struct mc_store *m, size_t i, const char *cmd, char **out, size_t *outlen)
{
	struct mc_server *s = &m->srv[i];
	bool fresh;
	int rc;

	for (int pass = 0; pass < 2; pass++) {
		rc = raw_send(m, s, cmd, &fresh);
		if (rc == 0)
			rc = raw_recv(m, s, out, outlen);
		if (rc == 0)
			return 0;
		if (rc != -EPIPE || fresh)
			break;
		raw_close(s);
	}
	raw_failed(s, cmd, rc);
	return rc == -ENOMEM ? rc : -EIO;
}

static uint64_t stat_u64(const char *stats, const char *name)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "STAT %s ", name);
	p = strstr(stats, pat);
	return p ? strtoull(p + strlen(pat), NULL, 10) : 0;
}

/* Every server's key-set fingerprint, asked of all at once. */
static int fetch_fps(struct mc_store *m, struct mc_fp *fp)
{
	char *b[MC_MAX_SERVERS];
	size_t n[MC_MAX_SERVERS];
	int rc = raw_request_all(m, "stats\r\n", b, n);

	if (rc)
		return rc;
	for (size_t i = 0; rc == 0 && i < m->nsrv; i++) {
		if (strncmp(b[i], "STAT ", 5) != 0) {
			kv_log(KV_LOG_WARN, "memcached: %s:%u: stats: %.80s", m->srv[i].host,
			       m->srv[i].port, b[i]);
			rc = -EIO;
			break;
		}
		fp[i] = (struct mc_fp){
			.pid = stat_u64(b[i], "pid"),
			.started = stat_u64(b[i], "time") - stat_u64(b[i], "uptime"),
			.curr = stat_u64(b[i], "curr_items"),
			.total = stat_u64(b[i], "total_items"),
			.flushes = stat_u64(b[i], "cmd_flush"),
		};
	}
	for (size_t i = 0; i < m->nsrv; i++)
		free(b[i]);
	return rc;
}

/* ---- walking the servers ---- */

struct scan {
	struct mc_item *items;
	size_t n, cap;
	char (*hashed)[67];   /* "%#..." keys whose header names the key */
	size_t nh, caph;
};

static int scan_add(struct scan *sc, const char *key, size_t klen, uint64_t size)
{
	if (sc->n == sc->cap) {
		size_t cap = sc->cap ? sc->cap * 2 : 1024;
		struct mc_item *it = realloc(sc->items, cap * sizeof(*it));
		if (!it)
			return -ENOMEM;
		sc->items = it;
		sc->cap = cap;
	}
	char *k = malloc(klen ? klen : 1);
	if (!k)
		return -ENOMEM;
	memcpy(k, key, klen);
	sc->items[sc->n++] = (struct mc_item){.key = k, .klen = klen, .size = size};
	return 0;
}

/* One metadump line: "key=<uri-encoded> exp=.. la=.. cas=.. fetch=.. cls=.. size=<ntotal>". */
static int scan_line(struct mc_store *m, size_t srv, struct scan *sc, const char *line,
		     size_t len)
{
	char mk[MC_KEY_MAX * 3 + 1], k[MC_KEY_MAX];
	const char *sp = memchr(line, ' ', len), *sz;
	ssize_t mn, kn;
	uint64_t total, size;

	if (len < 4 || memcmp(line, "key=", 4) != 0 || !sp || (size_t)(sp - line - 4) > sizeof(mk))
		return 0;
	mn = unescape(line + 4, (size_t)(sp - line - 4), mk);
	sz = memmem(line, len, " size=", 6);
	if (mn <= 0 || mn > MC_KEY_MAX || !sz)
		return 0;
	total = strtoull(sz + 6, NULL, 10);
	uint64_t over = __atomic_load_n(&m->item_overhead, __ATOMIC_RELAXED) + (uint64_t)mn;
	size = total > over ? total - over : 0;
	/* A key on a server that ketama does not pick for it is unreachable. */
	if (memcached_generate_hash(m->master, mk, (size_t)mn) != srv)
		return 0;
	if (mn == 66 && memcmp(mk, "%#", 2) == 0) {
		if (sc->nh == sc->caph) {
			size_t cap = sc->caph ? sc->caph * 2 : 64;
			char (*h)[67] = realloc(sc->hashed, cap * sizeof(*h));
			if (!h)
				return -ENOMEM;
			sc->hashed = h;
			sc->caph = cap;
		}
		memcpy(sc->hashed[sc->nh], mk, 66);
		sc->hashed[sc->nh++][66] = '\0';
		return 0;
	}
	if (mn >= 2 && memcmp(mk, "%~", 2) == 0) {
		kn = unescape(mk + 2, (size_t)mn - 2, k);
		if (kn < 0 || !encodes_to(k, (size_t)kn, mk, (size_t)mn))
			return 0;
		return scan_add(sc, k, (size_t)kn, size);
	}
	if (!is_plain(mk, (size_t)mn))
		return 0;
	return scan_add(sc, mk, (size_t)mn, size);
}

static int scan_server(struct mc_store *m, size_t i, struct scan *sc)
{
	const char *cmd = "lru_crawler metadump hash\r\n";
	int64_t deadline = now_ms() + m->timeout_ms;
	char *b = NULL;
	size_t n;
	int rc;

	for (;;) {
		if ((rc = raw_request(m, i, cmd, &b, &n)) < 0)
			return rc;
		if (strncmp(b, "BUSY", 4) == 0 && now_ms() < deadline) {
			/* another client's crawl is running: memcached runs one at a time */
			free(b);
			mc_wait_ms(5);
			continue;
		}
		if ((strncmp(b, "CLIENT_ERROR", 12) == 0 || strncmp(b, "ERROR", 5) == 0) &&
		    strstr(cmd, "hash")) {
			free(b);
			cmd = "lru_crawler metadump all\r\n";  /* memcached before 1.6.? */
			continue;
		}
		break;
	}
	if (strncmp(b, "key=", 4) != 0 && strcmp(b, "END\r\n") != 0) {
		kv_log(KV_LOG_WARN, "memcached: %s:%u: cannot list keys: %.*s (is the LRU "
		       "crawler on and dumping allowed, no -X?)", m->srv[i].host, m->srv[i].port,
		       (int)strcspn(b, "\r\n"), b);
		free(b);
		return -EIO;
	}
	rc = 0;
	for (char *p = b; rc == 0 && p < b + n;) {
		char *nl = memchr(p, '\n', (size_t)(b + n - p));
		size_t len = nl ? (size_t)(nl - p) : (size_t)(b + n - p);
		rc = scan_line(m, i, sc, p, len);
		p += len + 1;
	}
	free(b);
	return rc;
}

/* The keys behind the hashed names, read from their headers. */
static int scan_hashed(struct mc_store *m, struct scan *sc)
{
	int rc = 0;

	for (size_t i = 0; i < sc->nh && rc == 0; i++) {
		struct mckey mk = {.n = 66, .form = KF_HASHED};
		char *v;
		size_t len;
		uint64_t cas;

		memcpy(mk.k, sc->hashed[i], 66);
		rc = mc_fetch(m, &mk, &v, &len, &cas);
		if (rc == -ENOENT) {
			rc = 0;   /* deleted since the dump */
			continue;
		}
		if (rc)
			break;
		if (hashed_header_ok(v, len, NULL, 0)) {
			size_t kl = hashed_key_len(v);
			if (encodes_to(v + MC_HDR_LEN, kl, mk.k, mk.n))
				rc = scan_add(sc, v + MC_HDR_LEN, kl, len - MC_HDR_LEN - kl);
		}
		free(v);
	}
	return rc;
}

static int item_cmp(const void *a, const void *b)
{
	const struct mc_item *x = a, *y = b;
	return kv_key_cmp(x->key, x->klen, y->key, y->klen);
}

/*
 * Make the cache current: check every server's stats against what the
 * cache expects, and walk them all again if any differs.
 */
static int cache_refresh(struct mc_store *m)
{
	struct mc_fp *fp = calloc(m->nsrv, sizeof(*fp));
	struct scan sc = {0};
	bool same;
	int rc = 0;

	if (!fp)
		return -ENOMEM;
	pthread_mutex_lock(&m->scan_lock);
	pthread_rwlock_wrlock(&m->write_gate);
	rc = fetch_fps(m, fp);
	pthread_rwlock_wrlock(&m->cache_lock);
	same = rc == 0 && m->cache_valid && memcmp(fp, m->fp, m->nsrv * sizeof(*fp)) == 0;
	if (rc == 0 && !same) {
		/* walk; our writes from now on are journalled and replayed on the result */
		m->cache_valid = false;
		m->scanning = true;
		m->scan_spoiled = false;
		journal_free(m);
	}
	pthread_rwlock_unlock(&m->cache_lock);
	pthread_rwlock_unlock(&m->write_gate);
	if (rc || same)
		goto out;
	for (size_t i = 0; i < m->nsrv && rc == 0; i++)
		rc = scan_server(m, i, &sc);
	if (rc == 0)
		rc = scan_hashed(m, &sc);
	if (rc == 0 && sc.n) {
		qsort(sc.items, sc.n, sizeof(*sc.items), item_cmp);
		/* "metadump all" may show an item twice if it moved between LRUs */
		size_t o = 0;
		for (size_t i = 0; i < sc.n; i++) {
			if (o && item_cmp(&sc.items[o - 1], &sc.items[i]) == 0)
				free(sc.items[i].key);
			else
				sc.items[o++] = sc.items[i];
		}
		sc.n = o;
	}
	pthread_rwlock_wrlock(&m->cache_lock);
	m->scanning = false;
	if (rc == 0) {
		items_free(m->items, m->n);
		m->items = sc.items;
		m->n = sc.n;
		m->cap = sc.cap;
		sc.items = NULL;
		/* the stats from before the walk, plus our writes since */
		memcpy(m->fp, fp, m->nsrv * sizeof(*fp));
		m->cache_valid = !m->scan_spoiled;
		for (size_t i = 0; i < m->njournal && m->cache_valid; i++)
			m->cache_valid = cache_apply(m, &m->journal[i]);
	}
	journal_free(m);
	pthread_rwlock_unlock(&m->cache_lock);
out:
	pthread_mutex_unlock(&m->scan_lock);
	if (sc.items)
		items_free(sc.items, sc.n);
	free(sc.hashed);
	free(fp);
	return rc;
}

/* ---- what the servers allow ---- */

struct settings_ctx {
	struct mc_store *m;
	bool answered[MC_MAX_SERVERS], cas[MC_MAX_SERVERS];
	uint64_t item_max[MC_MAX_SERVERS];
};

static memcached_return_t settings_cb(const memcached_instance_st *inst, const char *key,
				      size_t klen, const char *value, size_t vlen, void *ctx)
{
	struct settings_ctx *sc = ctx;
	const char *name = memcached_server_name(inst);
	in_port_t port = memcached_server_port(inst);

	for (size_t i = 0; i < sc->m->nsrv; i++) {
		struct mc_server *s = &sc->m->srv[i];
		if (s->port != port || strcmp(s->host, name) != 0)
			continue;
		sc->answered[i] = true;
		if (klen == 13 && memcmp(key, "item_size_max", 13) == 0)
			sc->item_max[i] = strtoull(value, NULL, 10);
		else if (klen == 11 && memcmp(key, "cas_enabled", 11) == 0)
			sc->cas[i] = vlen == 3 && memcmp(value, "yes", 3) == 0;
		break;
	}
	return MEMCACHED_SUCCESS;
}

/*
 * Ask every server for its item_size_max and whether it keeps CAS uniques
 * ("stats settings": a round trip that writes nothing), and derive the
 * value limit.  A server that does not answer is taken to allow 1 MiB
 * until it does: set() asks again first while one is unknown.
 */
static void learn_settings(struct mc_store *m, memcached_st *c)
{
	struct settings_ctx *sc = calloc(1, sizeof(*sc));
	uint64_t item_max = 0;
	bool all = true, cas = true;

	if (!sc)
		return;
	sc->m = m;
	memcached_stat_execute(c, "settings", settings_cb, sc);
	pthread_mutex_lock(&m->settings_lock);
	for (size_t i = 0; i < m->nsrv; i++) {
		struct mc_server *s = &m->srv[i];
		if (sc->answered[i]) {
			s->item_size_max = sc->item_max[i] ? sc->item_max[i] : MC_DEFAULT_ITEM_MAX;
			s->cas_enabled = sc->cas[i];
			s->known = true;
		}
		if (!s->known) {
			all = false;
			continue;
		}
		cas &= s->cas_enabled;
		if (!item_max || s->item_size_max < item_max)
			item_max = s->item_size_max;
	}
	if (!item_max || item_max > MC_DEFAULT_ITEM_MAX * 1024)
		item_max = item_max ? MC_DEFAULT_ITEM_MAX * 1024 : MC_DEFAULT_ITEM_MAX;
	__atomic_store_n(&m->max_value, item_max - MC_ITEM_SLACK - MC_HDR_LEN - MC_MAX_KEY,
			 __ATOMIC_RELAXED);
	__atomic_store_n(&m->cas_enabled, cas, __ATOMIC_RELAXED);
	/* memcached's item: a 48-byte header, the key and its NUL, the value
	 * and "\r\n", and the CAS unique when kept */
	__atomic_store_n(&m->item_overhead, 48 + 1 + 2 + (cas ? 8 : 0), __ATOMIC_RELAXED);
	__atomic_store_n(&m->learned, all, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&m->settings_lock);
	free(sc);
}

/* ---- operations ---- */

static int mcs_get(struct kv_store *s, const char *key, size_t klen, char **val, size_t *len,
		   uint64_t *version)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);
	struct mckey mk;
	uint64_t cas;
	int rc;

	key_encode(key, klen, &mk);
	rc = mc_fetch(m, &mk, val, len, &cas);
	if (rc)
		return rc;
	if (mk.form == KF_HASHED) {
		if (!hashed_header_ok(*val, *len, key, klen)) {
			free(*val);
			return -ENOENT;   /* another key's item, or not kvfs's at all */
		}
		*len -= MC_HDR_LEN + klen;
		memmove(*val, *val + MC_HDR_LEN + klen, *len + 1);
	}
	if (version)
		*version = cas ? cas : value_version(*val, *len);
	cache_size(m, key, klen, *len);
	return 0;
}

static int mcs_stat(struct kv_store *s, const char *key, size_t klen, uint64_t *size)
{
	char *v;
	size_t n;
	int rc = mcs_get(s, key, klen, &v, &n, NULL);

	if (rc == 0) {
		*size = n;
		free(v);
	}
	return rc;
}

/* The bytes memcached stores for (key, val): a hashed key carries a header. */
static int mc_value(const struct mckey *mk, const char *key, size_t klen, const char *val,
		    size_t vlen, const char **out, size_t *outlen, char **owned)
{
	*owned = NULL;
	*out = val;
	*outlen = vlen;
	if (mk->form != KF_HASHED)
		return 0;
	char *b = malloc(MC_HDR_LEN + klen + vlen + 1);
	if (!b)
		return -ENOMEM;
	memcpy(b, "kvfs", 4);
	b[4] = (char)(klen >> 24);
	b[5] = (char)(klen >> 16);
	b[6] = (char)(klen >> 8);
	b[7] = (char)klen;
	memcpy(b + MC_HDR_LEN, key, klen);
	if (vlen)
		memcpy(b + MC_HDR_LEN + klen, val, vlen);
	*owned = b;
	*out = b;
	*outlen = MC_HDR_LEN + klen + vlen;
	return 0;
}

enum store_how { SH_SET, SH_ADD, SH_REPLACE, SH_CAS };

static memcached_return_t mc_store_once(memcached_st *c, enum store_how how,
					const struct mckey *mk, const char *data, size_t dlen,
					uint64_t cas)
{
	memcached_return_t r = MEMCACHED_FAILURE;

	for (int tries = 0; tries < 2; tries++) {
		if (how == SH_ADD)
			r = memcached_add(c, mk->k, mk->n, data, dlen, 0, 0);
		else if (how == SH_REPLACE)
			r = memcached_replace(c, mk->k, mk->n, data, dlen, 0, 0);
		else if (how == SH_CAS)
			r = memcached_cas(c, mk->k, mk->n, data, dlen, 0, 0, cas);
		else
			r = memcached_set(c, mk->k, mk->n, data, dlen, 0, 0);
		if (!mc_retry(c, r))
			break;
	}
	return r;
}

/*
 * Store a value.  A plain set is done as replace or add (whichever the
 * cache suggests, then the other): memcached unlinks the old item when a
 * "set" cannot get memory, but not when a replace, add or cas cannot, so
 * a refused write leaves the old value intact.
 */
static int mc_store_value(struct mc_store *m, const char *key, size_t klen, const char *val,
			  size_t vlen, enum store_how how, uint64_t cas)
{
	struct mckey mk;
	const char *data;
	size_t dlen;
	char *owned;
	memcached_st *c;
	memcached_return_t r = MEMCACHED_FAILURE;
	enum store_how now = how;
	int rc;

	key_encode(key, klen, &mk);
	if ((rc = mc_value(&mk, key, klen, val, vlen, &data, &dlen, &owned)))
		return rc;
	if (!(c = mc_take(m))) {
		free(owned);
		return -EIO;
	}
	if (!__atomic_load_n(&m->learned, __ATOMIC_ACQUIRE)) {
		learn_settings(m, c);
		if (vlen > __atomic_load_n(&m->max_value, __ATOMIC_RELAXED)) {
			mc_give(m, c);
			free(owned);
			return -EFBIG;
		}
	}
	if (how == SH_SET)
		now = cache_has(m, key, klen) ? SH_REPLACE : SH_ADD;
	pthread_rwlock_rdlock(&m->write_gate);
	for (int tries = 0; tries < 4; tries++) {
		r = mc_store_once(c, now, &mk, data, dlen, cas);
		if (how != SH_SET || r != MEMCACHED_NOTSTORED)
			break;
		now = now == SH_ADD ? SH_REPLACE : SH_ADD;  /* someone else got there first */
	}
	if (how == SH_SET && r == MEMCACHED_NOTSTORED) {
		now = SH_SET;   /* another client keeps adding and deleting it */
		r = mc_store_once(c, now, &mk, data, dlen, cas);
	}
	rc = mc_errno(c, r, how == SH_SET ? "set" : how == SH_ADD ? "add" : "cas", key, klen);
	mc_give(m, c);
	free(owned);
	if (rc == -ENOENT)
		rc = -ECANCELED;   /* cas on a key deleted meanwhile */
	if (rc == 0 && now == SH_SET)
		cache_drop(m);     /* created or replaced: unknown */
	else if (rc == 0)
		cache_note(m, &mk, key, klen, now == SH_ADD ? CH_CREATED : CH_REPLACED, vlen);
	else if (rc != -ECANCELED)
		cache_drop(m);
	pthread_rwlock_unlock(&m->write_gate);
	return rc;
}

static int mcs_set(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen)
{
	return mc_store_value(kv_store_cast(struct mc_store, s), key, klen, val, vlen, SH_SET, 0);
}

static int mcs_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
		   const char *val, size_t vlen)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);

	if (!__atomic_load_n(&m->cas_enabled, __ATOMIC_RELAXED))
		return -ENOTSUP;
	return mc_store_value(m, key, klen, val, vlen, version ? SH_CAS : SH_ADD, version);
}

static int mcs_del(struct kv_store *s, const char *key, size_t klen)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);
	struct mckey mk;
	memcached_st *c;
	memcached_return_t r;
	int rc;

	key_encode(key, klen, &mk);
	if (mk.form == KF_HASHED) {
		/* the item under the hash must be this key's, not a stranger's */
		char *v;
		size_t n;
		if ((rc = mcs_get(s, key, klen, &v, &n, NULL)))
			return rc;
		free(v);
	}
	if (!(c = mc_take(m)))
		return -EIO;
	pthread_rwlock_rdlock(&m->write_gate);
	r = memcached_delete(c, mk.k, mk.n, 0);
	if (mc_retry(c, r))
		r = memcached_delete(c, mk.k, mk.n, 0);
	rc = mc_errno(c, r, "delete", key, klen);
	mc_give(m, c);
	if (rc == 0)
		cache_note(m, &mk, key, klen, CH_DELETED, 0);
	else if (rc != -ENOENT)
		cache_drop(m);
	pthread_rwlock_unlock(&m->write_gate);
	return rc;
}

/*
 * The page is copied out under the lock and delivered after it: callbacks
 * may call back into the store (a directory rename moves keys as it lists).
 */
static int mcs_list(struct kv_store *s, const struct kv_list_req *req, kv_list_cb *cb,
		    void *ctx, bool *more)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);
	size_t limit = req->limit ? req->limit : 1000, count = 0, i;
	struct kv_entry *page;
	bool found;
	int rc = cache_refresh(m);

	if (rc)
		return rc;
	pthread_rwlock_rdlock(&m->cache_lock);
	page = calloc(limit < m->n ? limit : m->n ? m->n : 1, sizeof(*page));
	if (!page) {
		pthread_rwlock_unlock(&m->cache_lock);
		return -ENOMEM;
	}
	i = cache_find(m, req->prefix, req->prefix_len, &found);
	if (req->start && kv_key_cmp(req->start, req->start_len, req->prefix, req->prefix_len) > 0)
		i = cache_find(m, req->start, req->start_len, &found);
	while (i < m->n) {
		struct mc_item *it = &m->items[i];
		struct kv_entry e = {.key_len = it->klen, .size = it->size};
		const char *d = NULL;
		char *k;

		if (it->klen < req->prefix_len || memcmp(it->key, req->prefix, req->prefix_len))
			break;
		if (count == limit) {
			*more = true;
			break;
		}
		if (req->delim)
			d = memchr(it->key + req->prefix_len, req->delim, it->klen - req->prefix_len);
		if (d) {
			e.key_len = (size_t)(d - it->key) + 1;
			e.size = 0;
			e.is_prefix = true;
		}
		if (!(k = malloc(e.key_len ? e.key_len : 1))) {
			rc = -ENOMEM;
			break;
		}
		memcpy(k, it->key, e.key_len);
		e.key = k;
		page[count++] = e;
		i++;
		if (d) {
			/* the whole group: every following key with the same prefix */
			while (i < m->n && m->items[i].klen >= e.key_len &&
			       memcmp(m->items[i].key, e.key, e.key_len) == 0)
				i++;
		}
	}
	pthread_rwlock_unlock(&m->cache_lock);
	for (i = 0; i < count && rc == 0; i++)
		rc = cb(ctx, &page[i]);
	for (i = 0; i < count; i++)
		free((char *)page[i].key);
	free(page);
	return rc < 0 ? rc : 0;
}

/* ---- stats through libmemcached: health and statfs ---- */

struct srv_stats {
	bool answered;
	char version[32];
	uint64_t curr_items, evictions, limit_maxbytes, bytes;
};

struct stats_ctx {
	struct mc_store *m;
	struct srv_stats *st;
};

static memcached_return_t stats_cb(const memcached_instance_st *inst, const char *key,
				   size_t klen, const char *value, size_t vlen, void *ctx)
{
	struct stats_ctx *sc = ctx;
	const char *name = memcached_server_name(inst);
	in_port_t port = memcached_server_port(inst);
	char v[64];

	snprintf(v, sizeof(v), "%.*s", (int)vlen, value);
	for (size_t i = 0; i < sc->m->nsrv; i++) {
		struct srv_stats *st = &sc->st[i];
		if (sc->m->srv[i].port != port || strcmp(sc->m->srv[i].host, name) != 0)
			continue;
		st->answered = true;
#define IS(s) (klen == strlen(s) && memcmp(key, s, klen) == 0)
		if (IS("version"))
			snprintf(st->version, sizeof(st->version), "%.31s", v);
		else if (IS("curr_items"))
			st->curr_items = strtoull(v, NULL, 10);
		else if (IS("evictions"))
			st->evictions = strtoull(v, NULL, 10);
		else if (IS("limit_maxbytes"))
			st->limit_maxbytes = strtoull(v, NULL, 10);
		else if (IS("bytes"))
			st->bytes = strtoull(v, NULL, 10);
#undef IS
		break;
	}
	return MEMCACHED_SUCCESS;
}

/* "stats" on every server; st[i] says which answered.  0 if all did. */
static int all_stats(struct mc_store *m, struct srv_stats *st)
{
	struct stats_ctx sc = {.m = m, .st = st};
	memcached_st *c = mc_take(m);
	int rc = 0;

	if (!c)
		return -EIO;
	memcached_quit(c);   /* every server new: none skipped for an earlier failure */
	if (!__atomic_load_n(&m->learned, __ATOMIC_ACQUIRE))
		learn_settings(m, c);
	memcached_stat_execute(c, NULL, stats_cb, &sc);
	mc_give(m, c);
	for (size_t i = 0; i < m->nsrv; i++)
		if (!st[i].answered)
			rc = -EIO;
	return rc;
}

static void human(uint64_t v, char *out, size_t n)
{
	if (v >= (1u << 20) && v % (1u << 20) == 0)
		snprintf(out, n, "%" PRIu64 " MiB", v >> 20);
	else if (v >= 1024 && v % 1024 == 0)
		snprintf(out, n, "%" PRIu64 " KiB", v >> 10);
	else
		snprintf(out, n, "%" PRIu64 " B", v);
}

static int mcs_health(struct kv_store *s, struct kv_health *h)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);
	struct srv_stats *st = calloc(m->nsrv, sizeof(*st));
	size_t up = 0;
	int rc;

	if (!st)
		return -ENOMEM;
	rc = all_stats(m, st);
	for (size_t i = 0; i < m->nsrv; i++) {
		char mem[24], item[24], line[256];

		up += st[i].answered;
		if (h->nfacts == KV_HEALTH_MAX_FACTS)
			continue;
		snprintf(h->facts[h->nfacts].name, sizeof(h->facts[0].name), "%.24s:%u",
			 m->srv[i].host, m->srv[i].port);
		human(st[i].limit_maxbytes, mem, sizeof(mem));
		pthread_mutex_lock(&m->settings_lock);
		human(m->srv[i].item_size_max, item, sizeof(item));
		pthread_mutex_unlock(&m->settings_lock);
		if (st[i].answered)
			snprintf(line, sizeof(line), "up, memcached %s, %" PRIu64 " items, %" PRIu64
				 " evictions, memory %s, item max %s", st[i].version,
				 st[i].curr_items, st[i].evictions, mem, item);
		else
			snprintf(line, sizeof(line), "down (no answer)");
		size_t ln = strnlen(line, sizeof(h->facts[0].value) - 1);
		memcpy(h->facts[h->nfacts].value, line, ln);
		h->facts[h->nfacts].value[ln] = '\0';
		h->nfacts++;
	}
	snprintf(h->detail, sizeof(h->detail), "%zu of %zu memcached servers answer%s", up,
		 m->nsrv, rc ? "" : "; data is a cache: evicted when full, gone on restart");
	free(st);
	return rc;
}

static int mcs_statfs(struct kv_store *s, struct kv_statfs *out)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);
	struct srv_stats *st = calloc(m->nsrv, sizeof(*st));
	int rc;

	if (!st)
		return -ENOMEM;
	rc = all_stats(m, st);
	for (size_t i = 0; rc == 0 && i < m->nsrv; i++) {
		out->total_bytes += st[i].limit_maxbytes;
		out->free_bytes += st[i].limit_maxbytes > st[i].bytes ?
				   st[i].limit_maxbytes - st[i].bytes : 0;
		out->keys += st[i].curr_items;
	}
	free(st);
	return rc;
}

static void mcs_store_limits(struct kv_store *s, struct kv_limits *out)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);

	out->max_key = MC_MAX_KEY;
	out->max_value = __atomic_load_n(&m->max_value, __ATOMIC_RELAXED);
}

/* ---- open and close ---- */

/* "//host[:port][,host[:port]...][/]" into m->srv. */
static int parse_servers(struct mc_store *m, const char *loc, char *err, size_t errlen)
{
	const char *p = loc, *end;

	if (strncmp(p, "//", 2) != 0) {
		snprintf(err, errlen, "memcached: expected memcached://host[:port][,host[:port]...]");
		return -EINVAL;
	}
	p += 2;
	if (strchr(p, '@')) {
		snprintf(err, errlen, "memcached: credentials in the URL are not accepted, and this "
			 "backend does not support SASL: remove 'user@' from the URL");
		return -EINVAL;
	}
	if (strchr(p, '?')) {
		snprintf(err, errlen, "memcached: the URL takes no '?' parameters");
		return -EINVAL;
	}
	end = p + strcspn(p, "/");
	if (*end == '/' && end[1]) {
		snprintf(err, errlen, "memcached: the URL has no path ('%s'); use -o root=PREFIX "
			 "for a part of the key space", end);
		return -EINVAL;
	}
	while (p < end) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *stop = comma ? comma : end, *hs = p, *he, *colon;
		struct mc_server *s;
		unsigned long port = 11211;

		if (m->nsrv == MC_MAX_SERVERS) {
			snprintf(err, errlen, "memcached: more than %d servers", MC_MAX_SERVERS);
			return -EINVAL;
		}
		if (*p == '[') {
			hs = p + 1;
			he = memchr(hs, ']', (size_t)(stop - hs));
			colon = he && he + 1 < stop && he[1] == ':' ? he + 1 : NULL;
			if (!he || (he + 1 < stop && !colon)) {
				snprintf(err, errlen, "memcached: bad server '%.*s'", (int)(stop - p), p);
				return -EINVAL;
			}
		} else {
			colon = memchr(p, ':', (size_t)(stop - p));
			he = colon ? colon : stop;
		}
		if (he == hs || (size_t)(he - hs) >= sizeof(m->srv[0].host)) {
			snprintf(err, errlen, "memcached: bad server '%.*s' (expected host[:port])",
				 (int)(stop - p), p);
			return -EINVAL;
		}
		if (colon) {
			char *e;
			errno = 0;
			port = strtoul(colon + 1, &e, 10);
			if (e != stop || colon + 1 == stop || errno || port == 0 || port > 65535) {
				snprintf(err, errlen, "memcached: bad port in '%.*s'", (int)(stop - p), p);
				return -EINVAL;
			}
		}
		s = &m->srv[m->nsrv++];
		memcpy(s->host, hs, (size_t)(he - hs));
		s->host[he - hs] = '\0';
		s->port = (unsigned)port;
		s->fd = -1;
		p = comma ? comma + 1 : end;
		if (comma && p == end) {
			snprintf(err, errlen, "memcached: empty server after ','");
			return -EINVAL;
		}
	}
	if (m->nsrv == 0) {
		snprintf(err, errlen, "memcached: no server in the URL");
		return -EINVAL;
	}
	return 0;
}

static void mcs_close(struct kv_store *s)
{
	struct mc_store *m = kv_store_cast(struct mc_store, s);

	if (m->pool)
		memcached_pool_destroy(m->pool);
	if (m->master)
		memcached_free(m->master);
	for (size_t i = 0; i < m->nsrv; i++)
		raw_close(&m->srv[i]);
	items_free(m->items, m->n);
	free(m->fp);
	free(m->srv);
	pthread_mutex_destroy(&m->scan_lock);
	pthread_mutex_destroy(&m->settings_lock);
	pthread_rwlock_destroy(&m->cache_lock);
	pthread_rwlock_destroy(&m->write_gate);
	journal_free(m);
	free(m);
}

static int mcs_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	struct mc_store *m = calloc(1, sizeof(*m));
	int rc;

	if (!m)
		return -ENOMEM;
	pthread_mutex_init(&m->scan_lock, NULL);
	pthread_mutex_init(&m->settings_lock, NULL);
	pthread_rwlock_init(&m->cache_lock, NULL);
	pthread_rwlockattr_t ga;
	pthread_rwlockattr_init(&ga);
	/* checks must not starve behind a stream of writes */
	pthread_rwlockattr_setkind_np(&ga, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&m->write_gate, &ga);
	pthread_rwlockattr_destroy(&ga);
	m->timeout_ms = a->timeout_ms;
	m->srv = calloc(MC_MAX_SERVERS, sizeof(*m->srv));
	m->fp = calloc(MC_MAX_SERVERS, sizeof(*m->fp));
	m->master = memcached_create(NULL);
	if (!m->srv || !m->fp || !m->master) {
		mcs_close(&m->base);
		return -ENOMEM;
	}
	if ((rc = parse_servers(m, a->location, err, errlen))) {
		mcs_close(&m->base);
		return rc;
	}
	for (size_t i = 0; i < m->nsrv; i++) {
		if (memcached_server_add(m->master, m->srv[i].host, (in_port_t)m->srv[i].port) !=
		    MEMCACHED_SUCCESS) {
			snprintf(err, errlen, "memcached: cannot use server %s:%u: %s", m->srv[i].host,
				 m->srv[i].port, memcached_last_error_message(m->master));
			mcs_close(&m->base);
			return -EINVAL;
		}
	}
	static const struct { memcached_behavior_t b; int64_t v; } behaviours[] = {
		{MEMCACHED_BEHAVIOR_KETAMA, 1},
		{MEMCACHED_BEHAVIOR_SUPPORT_CAS, 1},
		{MEMCACHED_BEHAVIOR_TCP_NODELAY, 1},
		{MEMCACHED_BEHAVIOR_NO_BLOCK, 1},
		/* a failed server is tried again at the next call (see mc_retry),
		 * and never given up on: the mount recovers when it is back */
		{MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, 0},
		{MEMCACHED_BEHAVIOR_SERVER_FAILURE_LIMIT, 1u << 30},
		{MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, -1},   /* -1: the timeout in ms */
		{MEMCACHED_BEHAVIOR_POLL_TIMEOUT, -1},
		{MEMCACHED_BEHAVIOR_RCV_TIMEOUT, -2},       /* -2: the timeout in us */
		{MEMCACHED_BEHAVIOR_SND_TIMEOUT, -2},
	};
	for (size_t i = 0; i < sizeof(behaviours) / sizeof(behaviours[0]); i++) {
		int64_t v = behaviours[i].v;
		v = v == -1 ? m->timeout_ms : v == -2 ? (int64_t)m->timeout_ms * 1000 : v;
		memcached_behavior_set(m->master, behaviours[i].b, (uint64_t)v);
	}
	/* What the servers allow, asked with a short timeout: a hung server
	 * must not keep the mount from appearing. */
	memcached_st *probe = memcached_clone(NULL, m->master);
	if (!probe) {
		mcs_close(&m->base);
		return -ENOMEM;
	}
	int probe_ms = m->timeout_ms < 2000 ? m->timeout_ms : 2000;
	memcached_behavior_set(probe, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, (uint64_t)probe_ms);
	memcached_behavior_set(probe, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, (uint64_t)probe_ms);
	memcached_behavior_set(probe, MEMCACHED_BEHAVIOR_RCV_TIMEOUT, (uint64_t)probe_ms * 1000);
	memcached_behavior_set(probe, MEMCACHED_BEHAVIOR_SND_TIMEOUT, (uint64_t)probe_ms * 1000);
	learn_settings(m, probe);
	memcached_free(probe);
	for (size_t i = 0; i < m->nsrv; i++)
		if (!m->srv[i].known)
			kv_log(KV_LOG_WARN, "memcached: %s:%u does not answer yet; taking its item "
			       "size limit as 1 MiB until it does", m->srv[i].host, m->srv[i].port);
	m->pool = memcached_pool_create(m->master, 1, MC_POOL_MAX);
	if (!m->pool) {
		mcs_close(&m->base);
		return -ENOMEM;
	}
	*out = &m->base;
	return 0;
}

const struct kv_backend kv_backend_memcached = {
	.scheme = "memcached",
	.summary = "memcached servers via libmemcached (ketama); a cache: evicts, forgets on restart",
	.usage = "memcached://host[:port][,host[:port]...]",
	.options = NULL,
	.caps = KV_CAP_ORDERED | KV_CAP_CAS | KV_CAP_PERSIST,
	.limits = {.max_key = MC_MAX_KEY, .max_value = 0},
	.open = mcs_open,
	.close = mcs_close,
	.get = mcs_get,
	.set = mcs_set,
	.del = mcs_del,
	.list = mcs_list,
	.health = mcs_health,
	.stat = mcs_stat,
	.cas = mcs_cas,
	.statfs = mcs_statfs,
	.store_limits = mcs_store_limits,
};
