/*
 * keycache_test.c - the walks kv.c keeps of an unordered store.
 *
 * A fake unordered store counts its walks (keys() calls).  Checked: a
 * listing within KV_KEYCACHE_MS of a walk does not walk again, and a
 * probe walks the parent directory once for all its siblings; the mount's
 * own writes show at once (also one that lands while a walk is under
 * way); another client's key shows only after the walk ages out, but a
 * directory marker ("d/") another mount wrote shows at once; a write
 * that failed forgets every walk.
 */
#include "kv.h"
#include "keycache.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAXKEYS 64

static char store[MAXKEYS][32];
static size_t nstore, walks, gets;
static int fail_set;                 /* set() of the next key fails with EIO */
static const char *during;           /* a key set through kv.c mid-walk */
static struct kv_store *the_store;

static int find(const char *k, size_t n)
{
	for (size_t i = 0; i < nstore; i++)
		if (strlen(store[i]) == n && memcmp(store[i], k, n) == 0)
			return (int)i;
	return -1;
}

static void put(const char *k, size_t n)
{
	if (find(k, n) < 0 && nstore < MAXKEYS && n < 32)
		memcpy(store[nstore++], k, n), store[nstore - 1][n] = '\0';
}

static int fake_keys(struct kv_store *s, const char *prefix, size_t plen, kv_key_cb *cb,
		     void *ctx)
{
	static char seen[MAXKEYS][32];
	size_t n = nstore;

	(void)s;
	walks++;
	memcpy(seen, store, sizeof(seen));   /* what the walk will deliver */
	if (during) {
		const char *k = during;
		during = NULL;
		if (kv_set(the_store, k, strlen(k), "x", 1) != 0)
			return -EIO;
	}
	for (size_t i = n; i-- > 0;)       /* any order will do */
		if (strncmp(seen[i], prefix, plen) == 0) {
			int rc = cb(ctx, seen[i], strlen(seen[i]), 1);
			if (rc)
				return rc < 0 ? rc : 0;
		}
	return 0;
}

static int fake_set(struct kv_store *s, const char *k, size_t n, const char *v, size_t vl)
{
	(void)s, (void)v, (void)vl;
	if (fail_set) {
		fail_set = 0;
		return -EIO;
	}
	put(k, n);
	return 0;
}

static int fake_get(struct kv_store *s, const char *k, size_t n, char **v, size_t *vl,
		    uint64_t *version)
{
	(void)s, (void)version;
	gets++;
	if (find(k, n) < 0)
		return -ENOENT;
	*v = strdup("x");
	*vl = 1;
	return *v ? 0 : -ENOMEM;
}

static int fake_del(struct kv_store *s, const char *k, size_t n)
{
	int i = find(k, n);

	(void)s;
	if (i < 0)
		return -ENOENT;
	memcpy(store[i], store[--nstore], sizeof(store[i]));
	return 0;
}

static const struct kv_backend fake = {.scheme = "fake", .keys = fake_keys, .get = fake_get,
				       .set = fake_set, .del = fake_del};

static int failures;

struct listed { char v[MAXKEYS][32]; size_t n; };

static int add(void *ctx, const struct kv_entry *e)
{
	struct listed *l = ctx;

	snprintf(l->v[l->n++], 32, "%.*s", (int)e->key_len, e->key);
	return l->n == MAXKEYS;
}

/* The names listed in dir ("d/"), joined by spaces, into out. */
static int names(const char *dir, char *out, size_t outlen)
{
	static struct listed l;
	size_t o = 0;
	int rc;

	l.n = 0;
	rc = kv_list_all(the_store, dir, strlen(dir), '/', add, &l);
	out[0] = '\0';
	for (size_t i = 0; i < l.n && o < outlen; i++)
		o += (size_t)snprintf(out + o, outlen - o, "%s%s", i ? " " : "", l.v[i]);
	return rc;
}

static int one(void *ctx, const struct kv_entry *e)
{
	(void)e;
	*(int *)ctx = 1;
	return 1;
}

static void expect(const char *what, const char *dir, const char *want, size_t want_walks)
{
	char got[1024];
	int rc = names(dir, got, sizeof(got));

	if (rc || strcmp(got, want) != 0 || walks != want_walks) {
		failures++;
		fprintf(stderr, "%s: ls %s: rc %d, got '%s' after %zu walks; expected '%s' "
			"after %zu\n", what, dir, rc, got, walks, want, want_walks);
	}
}

/* Is there a directory name/ under dir?  The probe a lookup makes. */
static int probe(const char *dir_slash)
{
	struct kv_list_req req = {.prefix = dir_slash, .prefix_len = strlen(dir_slash),
				  .delim = '/', .limit = 1};
	int found = 0;
	bool more;

	kv_list(the_store, &req, one, &found, &more);
	return found;
}

int main(void)
{
	struct kv_store s = {.be = &fake, .keycache = keycache_new(KV_KEYCACHE_MS)};

	the_store = &s;
	put("d/a", 3);
	put("d/b/x", 5);
	put("e/z", 3);

	expect("first listing walks", "d/", "d/a d/b/", 1);
	expect("a second one does not", "d/", "d/a d/b/", 1);

	/* lookups of missing names beside each other: one walk of the parent */
	walks = 0;
	keycache_forget(&s);
	if (probe("d/q1/") || probe("d/q2/") || !probe("d/b/") || probe("d/q3/") || walks != 1) {
		failures++;
		fprintf(stderr, "probes: %zu walks, expected 1\n", walks);
	}
	/* a directory another mount made has its marker, read afresh */
	put("d/m/", 4);
	gets = 0;
	if (!probe("d/m/") || walks != 1 || gets != 1) {
		failures++;
		fprintf(stderr, "another mount's directory: not found at once (%zu walks, "
			"%zu gets)\n", walks, gets);
	}
	fake_del(&s, "d/m/", 4);

	/* the mount's own writes show at once, without a walk */
	kv_set(&s, "d/c", 3, "v", 1);
	kv_del(&s, "d/a", 3);
	kv_set(&s, "d/b/y", 5, "v", 1);
	kv_del(&s, "d/b/x", 5);
	expect("own writes", "d/", "d/b/ d/c", 1);
	kv_del(&s, "d/b/y", 5);
	expect("own delete of a directory's last key", "d/", "d/c", 1);

	/* another client's key waits for the walk to age out */
	put("d/other", 7);
	expect("other client, within the cache time", "d/", "d/c", 1);
	usleep((KV_KEYCACHE_MS + 50) * 1000);
	expect("other client, after it", "d/", "d/c d/other", 2);

	/* a write that lands while a walk is under way */
	usleep((KV_KEYCACHE_MS + 50) * 1000);
	during = "d/mid";
	expect("write during a walk", "d/", "d/c d/mid d/other", 3);
	expect("and after it", "d/", "d/c d/mid d/other", 3);

	/* a failed write may have happened: walk again */
	fail_set = 1;
	if (kv_set(&s, "d/failed", 8, "v", 1) != -EIO) {
		failures++;
		fprintf(stderr, "failed set: not EIO\n");
	}
	expect("after a failed write", "d/", "d/c d/mid d/other", 4);

	/* a store with no cache walks every time */
	struct kv_store bare = {.be = &fake};
	the_store = &bare;
	walks = 0;
	expect("no cache", "d/", "d/c d/mid d/other", 1);
	expect("no cache, again", "d/", "d/c d/mid d/other", 2);

	keycache_free(s.keycache);
	printf("%s\n", failures ? "FAIL" : "ok");
	return failures ? 1 : 0;
}
