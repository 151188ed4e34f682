/*
 * keycache.c - the listings of an unordered store, kept for a moment.
 *
 * memcached and Redis can list only by walking every key under a prefix,
 * and a mount lists often: each lookup of a name that is not a key asks
 * whether a directory of that name exists, so `cp -a` of n files into a
 * directory would walk it n times.  Here the last few walks are kept,
 * sorted, for -o list_timeout (the kernel's entry_timeout, 1 s by
 * default).  Writes through this mount are noted as they
 * succeed and laid over every walk taken before them, so the mount always
 * sees its own writes at once; other clients' keys show within that time,
 * as their values' attributes do in the kernel's cache.
 */
#include "keycache.h"
#include "toolkit.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 4
#define NOTES_PRUNE 1024   /* prune notes no walk needs beyond this many */
#define NOTES_MAX 8192     /* and forget every walk beyond this many */

/* A key and its value's size. */
struct kref {
	const char *key;
	size_t len;
	uint64_t size;
};

/* Keys in byte order, their bytes in one block. */
struct keyset {
	struct kv_buf text;
	struct kref *e;
	size_t n, cap;
};

/* One walk of the store: every key under prefix, at `at`, before the
 * notes numbered above `seq`. */
struct walked {
	struct keyset ks;
	struct kv_buf prefix;  /* .p is NULL in a free slot */
	int64_t at;
	uint64_t seq, used;
};

/* The last write through this mount to a key. */
struct note {
	struct kref k;        /* k.key is malloc'd */
	uint64_t seq;
	bool gone;
};

struct kv_keycache {
	pthread_mutex_t mu;
	struct walked w[SLOTS];
	struct note *notes;   /* by key, one per key */
	size_t nn, ncap;
	uint64_t seq, tick, gen;
	unsigned flights;     /* walks under way */
	uint64_t flight_low;  /* no walk under way began before this note */
	int ms;               /* how long a walk answers; 0: a store kept nowhere */
};

struct kv_keycache *keycache_new(int ms)
{
	struct kv_keycache *c = calloc(1, sizeof(*c));

	if (c) {
		pthread_mutex_init(&c->mu, NULL);
		c->ms = ms;
	}
	return c;
}

static void walked_free(struct walked *w)
{
	kv_buf_free(&w->ks.text);
	free(w->ks.e);
	kv_buf_free(&w->prefix);
	memset(w, 0, sizeof(*w));
}

/* Forget every walk and note: the next listing walks again. */
static void forget_locked(struct kv_keycache *c)
{
	for (int i = 0; i < SLOTS; i++)
		walked_free(&c->w[i]);
	for (size_t i = 0; i < c->nn; i++)
		free((char *)c->notes[i].k.key);
	c->nn = 0;
	c->gen++;
}

void keycache_free(struct kv_keycache *c)
{
	if (!c)
		return;
	forget_locked(c);
	free(c->notes);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* The array p of *cap items of `size` bytes with room for `need`; NULL
 * (p untouched) when there is no memory. */
static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
	if (need > *cap) {
		if (!(p = realloc(p, (need * 2 + 32) * size)))
			return NULL;
		*cap = need * 2 + 32;
	}
	return p;
}

/* ---- a walk, collected and sorted ---- */

/* One key of the walk w; a backend may pass keys outside w's prefix too
 * (memcached's metadump has no prefix), and they are passed over here. */
static int keyset_add(void *ctx, const char *key, size_t klen, uint64_t size)
{
	struct walked *w = ctx;
	struct keyset *k = &w->ks;
	struct kref *e;

	if (klen < w->prefix.len || memcmp(key, w->prefix.p, w->prefix.len) != 0)
		return 0;
	if (!(e = grow(k->e, &k->cap, k->n + 1, sizeof(*e))))
		return -ENOMEM;
	k->e = e;
	e[k->n++] = (struct kref){.len = klen, .size = size};   /* .key once the text stays */
	return kv_buf_add(&k->text, key, klen);
}

static int kref_cmp(const void *a, const void *b)
{
	const struct kref *x = a, *y = b;

	return kv_key_cmp(x->key, x->len, y->key, y->len);
}

/* Point at the keys, sort, and keep one of each (a walk may meet one twice). */
static void keyset_sort(struct keyset *k)
{
	size_t o = 0, off = 0;

	if (!k->n)
		return;   /* k->e may be NULL */
	for (size_t i = 0; i < k->n; i++) {
		k->e[i].key = k->text.p + off;
		off += k->e[i].len;
	}
	qsort(k->e, k->n, sizeof(*k->e), kref_cmp);
	for (size_t i = 0; i < k->n; i++)
		if (!o || kref_cmp(&k->e[o - 1], &k->e[i]) != 0)
			k->e[o++] = k->e[i];
	k->n = o;
}

/* ---- finding and merging ---- */

/* The first of n entries (stride bytes apart, each starting with a kref)
 * at or after key. */
static size_t find(const void *base, size_t n, size_t stride, const char *key, size_t klen)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct kref *r = (const void *)((const char *)base + mid * stride);
		if (kv_key_cmp(r->key, r->len, key, klen) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool under(const struct kref *r, const char *prefix, size_t plen)
{
	return r->len >= plen && memcmp(r->key, prefix, plen) == 0;
}

/* The keys of walk w under prefix with the notes after it laid over, in
 * order, to cb; *n counts them.  Called locked; cb only copies. */
static int serve(struct kv_keycache *c, struct walked *w, const char *prefix, size_t plen,
		 kv_key_cb *cb, void *ctx, size_t *n)
{
	const struct keyset *k = &w->ks;
	size_t i = find(k->e, k->n, sizeof(*k->e), prefix, plen);
	size_t j = find(c->notes, c->nn, sizeof(*c->notes), prefix, plen);
	int rc = 0;

	w->used = ++c->tick;
	for (*n = 0; rc == 0;) {
		const struct kref *e = i < k->n && under(&k->e[i], prefix, plen) ? &k->e[i] : NULL;
		const struct note *nt = NULL;

		for (; j < c->nn && under(&c->notes[j].k, prefix, plen); j++)
			if (c->notes[j].seq > w->seq) {
				nt = &c->notes[j];
				break;
			}
		if (!e && !nt)
			break;
		int cmp = !nt ? -1 : !e ? 1 : kref_cmp(e, &nt->k);
		if (cmp < 0 || !nt->gone) {
			const struct kref *r = cmp < 0 ? e : &nt->k;
			++*n;
			rc = cb(ctx, r->key, r->len, r->size);
		}
		i += cmp <= 0;   /* 0: the note is newer than the walk */
		j += cmp >= 0;
	}
	return rc;
}

static void drop_stale(struct kv_keycache *c)
{
	int64_t now = kv_now_ms();

	for (int i = 0; i < SLOTS; i++)
		if (c->w[i].prefix.p && now - c->w[i].at >= c->ms)
			walked_free(&c->w[i]);
}

/* A walk still fresh that holds every key under prefix. */
static struct walked *covering(struct kv_keycache *c, const char *prefix, size_t plen)
{
	drop_stale(c);
	for (int i = 0; i < SLOTS; i++)
		if (c->w[i].prefix.p && c->w[i].prefix.len <= plen &&
		    memcmp(prefix, c->w[i].prefix.p, c->w[i].prefix.len) == 0)
			return &c->w[i];
	return NULL;
}

/* Where a new walk of prefix goes: the slot of the same prefix, a free
 * one, or the one used least lately. */
static struct walked *slot_for(struct kv_keycache *c, const struct kv_buf *prefix)
{
	struct walked *best = &c->w[0];

	for (struct walked *w = c->w; w < c->w + SLOTS; w++) {
		if (w->prefix.p && w->prefix.len == prefix->len &&
		    memcmp(w->prefix.p, prefix->p, prefix->len) == 0)
			return w;
		if (w->used < best->used)   /* a free slot's is 0 */
			best = w;
	}
	return best;
}

/* The prefix a probe of prefix walks: its parent directory's. */
static size_t parent_len(const char *prefix, size_t plen, char delim)
{
	if (!delim || !plen || prefix[plen - 1] != delim)
		return plen;
	for (size_t i = plen - 1; i > 0; i--)
		if (prefix[i - 1] == delim)
			return i;
	return 0;
}

/*
 * A probe the kept walk says no to: the key equal to the prefix, read
 * afresh.  A directory made through another mount has that key (its
 * marker, "d/"), so it shows at once, as it would on an ordered store;
 * only keys another client wrote deeper without a marker wait for the
 * next walk.
 */
static int probe_key(struct kv_store *s, const char *prefix, size_t plen, kv_key_cb *cb,
		     void *ctx)
{
	uint64_t size;
	int rc = kv_stat(s, prefix, plen, &size);

	if (rc == -ENOENT)
		return 0;
	return rc ? rc : cb(ctx, prefix, plen, size);
}

int keycache_keys(struct kv_store *s, const char *prefix, size_t plen, char delim, bool probe,
		  kv_key_cb *cb, void *ctx)
{
	/* a store kept nowhere: its walks are served once, then dropped */
	struct kv_keycache bare = {.mu = PTHREAD_MUTEX_INITIALIZER};
	struct kv_keycache *c = s->keycache ? s->keycache : &bare;
	struct walked fresh = {0}, *w;
	size_t n;
	uint64_t gen;
	int rc;

	pthread_mutex_lock(&c->mu);
	if ((w = covering(c, prefix, plen))) {
		rc = serve(c, w, prefix, plen, cb, ctx, &n);
		pthread_mutex_unlock(&c->mu);
		return rc || n || !probe ? rc : probe_key(s, prefix, plen, cb, ctx);
	}
	fresh.seq = c->seq;
	fresh.at = kv_now_ms();
	gen = c->gen;
	if (!c->flights++)
		c->flight_low = c->seq;
	pthread_mutex_unlock(&c->mu);

	rc = kv_buf_set(&fresh.prefix, prefix, probe && c->ms ? parent_len(prefix, plen, delim)
							    : plen);
	if (!rc)
		rc = s->be->keys(s, fresh.prefix.p, fresh.prefix.len, keyset_add, &fresh);
	if (!rc)
		keyset_sort(&fresh.ks);

	pthread_mutex_lock(&c->mu);
	c->flights--;
	if (!rc) {
		rc = serve(c, &fresh, prefix, plen, cb, ctx, &n);
		if (gen == c->gen && c->ms) {   /* nothing forgotten meanwhile */
			w = slot_for(c, &fresh.prefix);
			walked_free(w);
			*w = fresh;
			fresh = (struct walked){0};
		}
	}
	pthread_mutex_unlock(&c->mu);
	walked_free(&fresh);
	return rc;
}

/* ---- this mount's writes ---- */

void keycache_forget(struct kv_store *s)
{
	struct kv_keycache *c = s->keycache;

	pthread_mutex_lock(&c->mu);
	forget_locked(c);
	pthread_mutex_unlock(&c->mu);
}

/* Drop the notes every walk (kept or under way) already saw. */
static void prune(struct kv_keycache *c)
{
	uint64_t low = c->flights ? c->flight_low : c->seq;
	size_t o = 0;

	drop_stale(c);
	for (int i = 0; i < SLOTS; i++)
		if (c->w[i].prefix.p && c->w[i].seq < low)
			low = c->w[i].seq;
	for (size_t i = 0; i < c->nn; i++) {
		if (c->notes[i].seq > low)
			c->notes[o++] = c->notes[i];
		else
			free((char *)c->notes[i].k.key);
	}
	c->nn = o;
}

void keycache_note(struct kv_store *s, const char *key, size_t klen, uint64_t size, bool gone)
{
	struct kv_keycache *c = s->keycache;
	struct note *nt;
	size_t at;
	char *k;

	pthread_mutex_lock(&c->mu);
	if (c->nn >= NOTES_PRUNE)
		prune(c);
	at = find(c->notes, c->nn, sizeof(*c->notes), key, klen);
	if (at == c->nn || kv_key_cmp(c->notes[at].k.key, c->notes[at].k.len, key, klen) != 0) {
		nt = c->nn < NOTES_MAX ? grow(c->notes, &c->ncap, c->nn + 1, sizeof(*nt)) : NULL;
		if (nt)
			c->notes = nt;
		if (!nt || !(k = malloc(klen + 1))) {
			forget_locked(c);   /* too much to lay over: walk again */
			pthread_mutex_unlock(&c->mu);
			return;
		}
		memcpy(k, key, klen);
		memmove(nt + at + 1, nt + at, (c->nn - at) * sizeof(*nt));
		c->nn++;
		nt[at] = (struct note){.k = {.key = k, .len = klen}};
	}
	c->notes[at].k.size = size;
	c->notes[at].gone = gone;
	c->notes[at].seq = ++c->seq;
	pthread_mutex_unlock(&c->mu);
}
