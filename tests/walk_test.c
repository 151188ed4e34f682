/*
 * walk_test.c - kv.c's list walker against a reference, on random stores.
 *
 * Two fake backends hold the same random keys: one answers scan() in
 * chunks of at most `max` (ordered stores), the other keys() in a shuffled
 * order (unordered stores).  For random prefixes, start keys, delimiters
 * and limits, kv_list and kv_list_all must return exactly what a naive
 * walk over the sorted keys returns.  Keys use a small alphabet with '/',
 * NUL and 0xff so that groups, successors and byte order all get hit.
 */
#include "kv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXK 12

struct key { char p[MAXK]; size_t n; };

static struct key *keys;
static size_t nkeys;
static size_t scans, scanned;  /* calls to scan() and keys it delivered */

struct fake { struct kv_store base; };

static int fake_scan(struct kv_store *s, const char *from, size_t flen, const char *to,
		     size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	(void)s;
	scans++;
	for (size_t i = 0; i < nkeys && max; i++) {
		if (kv_key_cmp(keys[i].p, keys[i].n, from, flen) < 0)
			continue;
		if (to && kv_key_cmp(keys[i].p, keys[i].n, to, tlen) >= 0)
			break;
		max--;
		scanned++;
		int rc = cb(ctx, keys[i].p, keys[i].n, keys[i].n * 10);
		if (rc)
			return rc < 0 ? rc : 0;
	}
	return 0;
}

static int fake_keys(struct kv_store *s, const char *prefix, size_t plen, kv_key_cb *cb,
		     void *ctx)
{
	(void)s;
	/* every matching key once, in a scrambled order */
	for (size_t step = 0; step < 2; step++)
		for (size_t i = step; i < nkeys; i += 2)
			if (keys[i].n >= plen && memcmp(keys[i].p, prefix, plen) == 0) {
				int rc = cb(ctx, keys[i].p, keys[i].n, keys[i].n * 10);
				if (rc)
					return rc < 0 ? rc : 0;
			}
	return 0;
}

static int fake_health(struct kv_store *s, struct kv_health *h)
{
	(void)s;
	(void)h;
	return 0;
}

static const struct kv_backend ordered = { .scheme = "fake", .scan = fake_scan,
					   .health = fake_health };
static const struct kv_backend unordered = { .scheme = "fake", .keys = fake_keys,
					     .health = fake_health };

struct item { char p[MAXK]; size_t n; int prefix; uint64_t size; };
struct items { struct item v[4096]; size_t n; };

static int collect(void *ctx, const struct kv_entry *e)
{
	struct items *it = ctx;

	if (it->n == 4096 || e->key_len > MAXK)
		return -1;
	memcpy(it->v[it->n].p, e->key, e->key_len);
	it->v[it->n].n = e->key_len;
	it->v[it->n].prefix = e->is_prefix;
	it->v[it->n].size = e->size;
	it->n++;
	return 0;
}

/* The reference: every item of the listing, in order, ignoring limit. */
static void reference(const struct kv_list_req *r, struct items *out)
{
	out->n = 0;
	for (size_t i = 0; i < nkeys; i++) {
		const struct key *k = &keys[i];
		struct item e = { .n = k->n, .size = k->n * 10 };
		const char *d;

		if (k->n < r->prefix_len || memcmp(k->p, r->prefix, r->prefix_len))
			continue;
		memcpy(e.p, k->p, k->n);
		d = r->delim ? memchr(k->p + r->prefix_len, r->delim, k->n - r->prefix_len) : NULL;
		if (d) {
			e.n = (size_t)(d - k->p) + 1;
			e.prefix = 1;
			e.size = 0;
			if (out->n && out->v[out->n - 1].prefix && out->v[out->n - 1].n == e.n &&
			    memcmp(out->v[out->n - 1].p, e.p, e.n) == 0)
				continue;
		}
		if (r->start && kv_key_cmp(e.p, e.n, r->start, r->start_len) < 0)
			continue;
		out->v[out->n++] = e;
	}
}

static int cmp_key(const void *a, const void *b)
{
	const struct key *x = a, *y = b;
	return kv_key_cmp(x->p, x->n, y->p, y->n);
}

static uint64_t rnd_state = 88172645463325252u;
static unsigned rnd(unsigned n)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return (unsigned)(rnd_state % n);
}

static size_t rnd_bytes(char *p, size_t max)
{
	static const char alphabet[] = { 'a', 'b', '/', '\0', (char)0xff, 'a', '/' };
	size_t n = rnd((unsigned)max + 1);

	for (size_t i = 0; i < n; i++)
		p[i] = alphabet[rnd(sizeof alphabet)];
	return n;
}

static void make_store(size_t n)
{
	keys = realloc(keys, n * sizeof(*keys));
	nkeys = 0;
	for (size_t i = 0; i < n; i++) {
		keys[nkeys].n = rnd_bytes(keys[nkeys].p, MAXK);
		nkeys++;
	}
	qsort(keys, nkeys, sizeof(*keys), cmp_key);
	size_t u = 0;  /* unique */
	for (size_t i = 0; i < nkeys; i++)
		if (!u || cmp_key(&keys[u - 1], &keys[i]))
			keys[u++] = keys[i];
	nkeys = u;
}

static int same(const struct item *a, const struct item *b)
{
	return a->n == b->n && !memcmp(a->p, b->p, a->n) && a->prefix == b->prefix &&
	       a->size == b->size;
}

static int failures;

static void check(const struct kv_backend *be, const struct kv_list_req *req, int round)
{
	static struct items want, got, all;
	struct kv_store s = { .be = be };
	bool more;
	int rc;

	reference(req, &want);
	got.n = 0;
	rc = kv_list(&s, req, collect, &got, &more);
	size_t limit = req->limit ? req->limit : KV_PAGE;
	size_t expect = want.n < limit ? want.n : limit;
	int ok = rc == 0 && got.n == expect && more == (want.n > limit);
	for (size_t i = 0; ok && i < got.n; i++)
		ok = same(&got.v[i], &want.v[i]);
	all.n = 0;
	if (!req->start) {
		rc = kv_list_all(&s, req->prefix, req->prefix_len, req->delim, collect, &all);
		ok = ok && rc == 0 && all.n == want.n;
		for (size_t i = 0; ok && i < all.n; i++)
			ok = same(&all.v[i], &want.v[i]);
	}
	if (!ok) {
		failures++;
		fprintf(stderr, "round %d (%s): prefix len %zu, start %s, delim %d, limit %zu: "
			"got %zu (more %d, rc %d, all %zu), expected %zu of %zu\n", round,
			be->scan ? "scan" : "keys", req->prefix_len, req->start ? "set" : "none",
			req->delim, req->limit, got.n, more, rc, all.n, expect, want.n);
	}
}

int main(void)
{
	char prefix[MAXK], start[MAXK];

	for (int round = 0; round < 3000; round++) {
		if (round % 100 == 0)
			make_store(rnd(2) ? 40 : 700);
		struct kv_list_req req = {
			.prefix = prefix, .prefix_len = rnd_bytes(prefix, 3),
			.delim = rnd(3) ? '/' : rnd(2) ? '\0' : 'a',
			.limit = rnd(4) == 0 ? 0 : 1 + rnd(rnd(2) ? 5 : 400),
		};
		if (rnd(3) == 0) {
			req.start = start;
			req.start_len = rnd_bytes(start, 6);
		}
		check(&ordered, &req, round);
		check(&unordered, &req, round);
		if (failures > 10)
			break;
	}
	/* A listing of one directory of a big tree reads its own keys, not the
	 * subtrees: one group of 10,000 keys costs one chunk, not 10,000 keys. */
	keys = realloc(keys, 10002 * sizeof(*keys));
	nkeys = 0;
	keys[nkeys++] = (struct key){ "a", 1 };
	for (int i = 0; i < 10000; i++)
		nkeys++, keys[nkeys - 1].n = (size_t)snprintf(keys[nkeys - 1].p, MAXK, "b/%05d", i);
	keys[nkeys++] = (struct key){ "c", 1 };
	struct kv_store s = { .be = &ordered };
	struct items got = { .n = 0 };
	scans = scanned = 0;
	if (kv_list_all(&s, "", 0, '/', collect, &got) || got.n != 3 || scanned > 600) {
		failures++;
		fprintf(stderr, "big subtree: %zu items, %zu keys scanned in %zu scans\n", got.n,
			scanned, scans);
	}
	free(keys);
	printf("%s\n", failures ? "FAIL" : "ok");
	return failures ? 1 : 0;
}
