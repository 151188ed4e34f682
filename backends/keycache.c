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

/* Keys in byte order, their bytes in one block. */
struct keyset {
	char *text;
	size_t tlen, tcap;
	struct kent { size_t off, len; uint64_t size; } *e;
	size_t n, cap;
};

/* One walk of the store: every key under prefix, at `at`, before the
 * notes numbered above `seq`. */
struct walked {
	struct keyset ks;
	char *prefix;
	size_t plen;
	int64_t at;
	uint64_t seq, used;
	bool live;
};

/* The last write through this mount to a key. */
struct note {
	char *key;
	size_t klen;
	uint64_t size, seq;
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
	int ms;               /* how long a walk answers */
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

static void keyset_free(struct keyset *k)
{
	free(k->text);
	free(k->e);
	memset(k, 0, sizeof(*k));
}

static void walked_free(struct walked *w)
{
	keyset_free(&w->ks);
	free(w->prefix);
	memset(w, 0, sizeof(*w));
}

static void notes_clear(struct kv_keycache *c)
{
	for (size_t i = 0; i < c->nn; i++)
		free(c->notes[i].key);
	c->nn = 0;
}

void keycache_free(struct kv_keycache *c)
{
	if (!c)
		return;
	for (int i = 0; i < SLOTS; i++)
		walked_free(&c->w[i]);
	notes_clear(c);
	free(c->notes);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* ---- a walk, collected and sorted ---- */

static int keyset_add(void *ctx, const char *key, size_t klen, uint64_t size)
{
	struct keyset *k = ctx;

	if (k->n == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 64;
		void *e = realloc(k->e, cap * sizeof(*k->e));
		if (!e)
			return -ENOMEM;
		k->e = e;
		k->cap = cap;
	}
	if (k->tlen + klen > k->tcap) {
		size_t cap = (k->tlen + klen) * 2 + 64;
		char *t = realloc(k->text, cap);
		if (!t)
			return -ENOMEM;
		k->text = t;
		k->tcap = cap;
	}
	if (klen)
		memcpy(k->text + k->tlen, key, klen);
	k->e[k->n++] = (struct kent){.off = k->tlen, .len = klen, .size = size};
	k->tlen += klen;
	return 0;
}

static int kent_cmp(const void *a, const void *b, void *ctx)
{
	const char *text = ctx;
	const struct kent *x = a, *y = b;

	return kv_key_cmp(text + x->off, x->len, text + y->off, y->len);
}

/* Sort, and keep one of each key (a store's walk may meet one twice). */
static void keyset_sort(struct keyset *k)
{
	size_t o = 0;

	if (k->n < 2)
		return;   /* nothing to order (and k->e may be NULL) */
	qsort_r(k->e, k->n, sizeof(*k->e), kent_cmp, k->text);
	for (size_t i = 0; i < k->n; i++)
		if (!o || kent_cmp(&k->e[o - 1], &k->e[i], k->text) != 0)
			k->e[o++] = k->e[i];
	k->n = o;
}

/* ---- finding and merging ---- */

/* The first entry of k at or after key. */
static size_t keyset_find(const struct keyset *k, const char *key, size_t klen)
{
	size_t lo = 0, hi = k->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (kv_key_cmp(k->text + k->e[mid].off, k->e[mid].len, key, klen) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static size_t notes_find(const struct kv_keycache *c, const char *key, size_t klen)
{
	size_t lo = 0, hi = c->nn;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (kv_key_cmp(c->notes[mid].key, c->notes[mid].klen, key, klen) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool under(const char *key, size_t klen, const char *prefix, size_t plen)
{
	return klen >= plen && memcmp(key, prefix, plen) == 0;
}

/* The keys of walk w under prefix with the notes after it laid over, in
 * order, to cb.  Called locked; cb only copies. */
static int serve(struct kv_keycache *c, struct walked *w, const char *prefix, size_t plen,
		 kv_key_cb *cb, void *ctx)
{
	const struct keyset *k = &w->ks;
	size_t i = keyset_find(k, prefix, plen), j = notes_find(c, prefix, plen);
	int rc = 0;

	w->used = ++c->tick;
	while (rc == 0) {
		const struct kent *e = i < k->n && under(k->text + k->e[i].off, k->e[i].len,
							   prefix, plen) ? &k->e[i] : NULL;
		const struct note *nt = NULL;

		for (; j < c->nn && under(c->notes[j].key, c->notes[j].klen, prefix, plen); j++)
			if (c->notes[j].seq > w->seq) {
				nt = &c->notes[j];
				break;
			}
		if (!e && !nt)
			break;
		int cmp = !nt ? -1 : !e ? 1 : kv_key_cmp(k->text + e->off, e->len, nt->key, nt->klen);
		if (cmp < 0) {
			rc = cb(ctx, k->text + e->off, e->len, e->size);
			i++;
			continue;
		}
		if (cmp == 0)
			i++;   /* the note is newer than the walk */
		if (!nt->gone)
			rc = cb(ctx, nt->key, nt->klen, nt->size);
		j++;
	}
	return rc;
}

static void drop_stale(struct kv_keycache *c)
{
	int64_t now = kv_now_ms();

	for (int i = 0; i < SLOTS; i++)
		if (c->w[i].live && now - c->w[i].at >= c->ms)
			walked_free(&c->w[i]);
}

/* A walk still fresh that holds every key under prefix. */
static struct walked *covering(struct kv_keycache *c, const char *prefix, size_t plen)
{
	drop_stale(c);
	for (int i = 0; i < SLOTS; i++)
		if (c->w[i].live && under(prefix, plen, c->w[i].prefix, c->w[i].plen))
			return &c->w[i];
	return NULL;
}

/* Where a new walk of prefix goes: the slot of the same prefix, a free
 * one, or the one used least lately. */
static struct walked *slot_for(struct kv_keycache *c, const char *prefix, size_t plen)
{
	struct walked *best = &c->w[0];

	for (int i = 0; i < SLOTS; i++) {
		struct walked *w = &c->w[i];
		if (w->live && w->plen == plen && memcmp(w->prefix, prefix, plen) == 0)
			return w;
		if (!w->live)
			best = w;
		else if (best->live && w->used < best->used)
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

struct counted {
	kv_key_cb *cb;
	void *ctx;
	size_t n;
};

static int count(void *ctx, const char *key, size_t klen, uint64_t size)
{
	struct counted *c = ctx;

	c->n++;
	return c->cb(c->ctx, key, klen, size);
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
	uint64_t size = 0;
	char *val = NULL;
	size_t len;
	int rc;

	if (s->be->stat)
		rc = s->be->stat(s, prefix, plen, &size);
	else if ((rc = s->be->get(s, prefix, plen, &val, &len, NULL)) == 0)
		size = len;
	free(val);
	if (rc == -ENOENT)
		return 0;
	return rc ? rc : cb(ctx, prefix, plen, size);
}

int keycache_keys(struct kv_store *s, const char *prefix, size_t plen, char delim, bool probe,
		  kv_key_cb *cb, void *ctx)
{
	struct kv_keycache *c = s->keycache;
	struct walked fresh = {0}, *w;
	size_t wlen = probe ? parent_len(prefix, plen, delim) : plen;
	uint64_t gen;
	int rc;

	if (!c) {   /* a store kept nowhere: one walk, served as it is */
		rc = s->be->keys(s, prefix, plen, keyset_add, &fresh.ks);
		keyset_sort(&fresh.ks);
		for (size_t i = 0; i < fresh.ks.n && rc == 0; i++)
			rc = cb(ctx, fresh.ks.text + fresh.ks.e[i].off, fresh.ks.e[i].len,
				fresh.ks.e[i].size);
		keyset_free(&fresh.ks);
		return rc;
	}
	pthread_mutex_lock(&c->mu);
	if ((w = covering(c, prefix, plen))) {
		struct counted n = {.cb = cb, .ctx = ctx};
		rc = serve(c, w, prefix, plen, count, &n);
		pthread_mutex_unlock(&c->mu);
		return rc || n.n || !probe ? rc : probe_key(s, prefix, plen, cb, ctx);
	}
	fresh.seq = c->seq;
	fresh.at = kv_now_ms();
	gen = c->gen;
	if (!c->flights++)
		c->flight_low = c->seq;
	pthread_mutex_unlock(&c->mu);

	fresh.prefix = malloc(wlen + 1);
	rc = fresh.prefix ? 0 : -ENOMEM;
	if (!rc) {
		memcpy(fresh.prefix, prefix, wlen);
		fresh.plen = wlen;
		rc = s->be->keys(s, prefix, wlen, keyset_add, &fresh.ks);
	}
	if (!rc)
		keyset_sort(&fresh.ks);

	pthread_mutex_lock(&c->mu);
	c->flights--;
	if (!rc) {
		rc = serve(c, &fresh, prefix, plen, cb, ctx);
		if (gen == c->gen) {   /* nothing forgotten meanwhile */
			w = slot_for(c, fresh.prefix, fresh.plen);
			walked_free(w);
			*w = fresh;
			w->live = true;
			fresh = (struct walked){0};
		}
	}
	pthread_mutex_unlock(&c->mu);
	walked_free(&fresh);
	return rc;
}

/* ---- this mount's writes ---- */

static void forget_locked(struct kv_keycache *c)
{
	for (int i = 0; i < SLOTS; i++)
		walked_free(&c->w[i]);
	notes_clear(c);
	c->gen++;
}

void keycache_forget(struct kv_store *s)
{
	struct kv_keycache *c = s->keycache;

	if (!c)
		return;
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
		if (c->w[i].live && c->w[i].seq < low)
			low = c->w[i].seq;
	for (size_t i = 0; i < c->nn; i++) {
		if (c->notes[i].seq > low)
			c->notes[o++] = c->notes[i];
		else
			free(c->notes[i].key);
	}
	c->nn = o;
}

void keycache_note(struct kv_store *s, const char *key, size_t klen, uint64_t size, bool gone)
{
	struct kv_keycache *c = s->keycache;
	size_t at;
	char *k;

	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	if (c->nn >= NOTES_PRUNE)
		prune(c);
	at = notes_find(c, key, klen);
	if (at < c->nn && c->notes[at].klen == klen && memcmp(c->notes[at].key, key, klen) == 0) {
		c->notes[at].size = size;
		c->notes[at].gone = gone;
		c->notes[at].seq = ++c->seq;
		goto out;
	}
	if (c->nn >= NOTES_MAX || !(k = malloc(klen + 1))) {
		forget_locked(c);   /* too much to lay over: walk again */
		goto out;
	}
	if (c->nn == c->ncap) {
		size_t cap = c->ncap ? c->ncap * 2 : 64;
		struct note *n = realloc(c->notes, cap * sizeof(*n));
		if (!n) {
			free(k);
			forget_locked(c);
			goto out;
		}
		c->notes = n;
		c->ncap = cap;
	}
	memcpy(k, key, klen);
	memmove(c->notes + at + 1, c->notes + at, (c->nn - at) * sizeof(*c->notes));
	c->notes[at] = (struct note){.key = k, .klen = klen, .size = size, .gone = gone,
				     .seq = ++c->seq};
	c->nn++;
out:
	pthread_mutex_unlock(&c->mu);
}
