/*
 * conformance.c - the one suite every kvfs backend must pass.
 *
 *     kvfs-conformance URL [-o name=value ...] [--filter SUBSTR] [-v]
 *
 * It talks only to the dispatch API at the bottom of backends/kv.h, so it
 * checks exactly what fs/ relies on, whichever backend the URL names.
 *
 * The store may be shared and hold other data: every test works under its
 * own prefix "conf-<pid>-<random>/<test name>/" (shown as P in messages),
 * and after each test the runner deletes everything under that prefix and
 * fails the test if anything is left.  The only key outside it is the empty
 * key (t_empty_key_works_or_is_refused_cleanly), which that test touches
 * only when it is absent and removes itself.
 *
 * A test that needs a capability the backend does not declare (kv_caps) is
 * reported as skipped.  Output is one line per test, "NAME ok",
 * "NAME FAIL file:line detail" or "NAME skip reason", then
 * "N passed, N failed, N skipped"; the exit status is 1 if any test failed.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "kv.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* The largest value or key the suite allocates; limits above it are skipped. */
#define MAX_ALLOC ((size_t)64 << 20)

/* ---- The run and one test's context ---- */

struct suite {
	const char *url;
	const struct kv_option *opts;
	size_t nopts;
	int timeout_ms;
	struct kv_store *s;  /* NULL once a test lost the store (a failed reopen) */
	char ns[64];         /* "conf-<pid>-<random>" */
	size_t full_at;      /* --full-at N: the store was set up to refuse a value
	                        of N bytes as full (memory's quota, lmdb's map_size) */
	const char *refused; /* --refused-key NAME: the server was set up to refuse
	                        to write any key ending in NAME (a SQL constraint) */
};

/* Something to release when the test ends, however it ends. */
struct cleanup {
	void (*fn)(void *);
	void *p;
};

enum outcome { T_OK, T_FAIL, T_SKIP };

struct t {
	struct suite *su;
	struct kv_store *s;
	struct kv_limits lim;
	unsigned caps;
	char pfx[192];       /* this test's namespace: ns + "/" + name + "/" */
	size_t plen;
	enum outcome outcome;
	char msg[768];       /* "file:line detail" or the skip reason */
	struct cleanup *cl;
	size_t ncl, capcl;
	char shown[4][160];  /* rotating buffers for show() */
	unsigned nshown;
};

/* A byte string that may hold NULs. */
struct bytes {
	const char *p;
	size_t n;
};

static void die_oom(void)
{
	fputs("kvfs-conformance: out of memory\n", stderr);
	exit(1);
}

static const char *base_name(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

/* The symbolic name of a return value ("-ENOENT"), for messages. */
static const char *errname(int rc)
{
	static const struct { int err; const char *name; } names[] = {
		{ ENOENT, "-ENOENT" }, { EIO, "-EIO" }, { ENOMEM, "-ENOMEM" },
		{ EACCES, "-EACCES" }, { EINVAL, "-EINVAL" }, { EFBIG, "-EFBIG" },
		{ ENOSPC, "-ENOSPC" }, { EROFS, "-EROFS" }, { ENAMETOOLONG, "-ENAMETOOLONG" },
		{ ENOSYS, "-ENOSYS" }, { ENOTSUP, "-ENOTSUP" }, { ECANCELED, "-ECANCELED" },
		{ ETIMEDOUT, "-ETIMEDOUT" }, { EINTR, "-EINTR" }, { EEXIST, "-EEXIST" },
		{ EBADMSG, "-EBADMSG" }, { EOVERFLOW, "-EOVERFLOW" }, { EAGAIN, "-EAGAIN" }, { EBUSY, "-EBUSY" },
	};
	static __thread char buf[4][24];
	static __thread unsigned next;
	char *out;

	if (rc == 0)
		return "0";
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (rc == -names[i].err)
			return names[i].name;
	out = buf[next++ % 4];
	snprintf(out, sizeof buf[0], "%d", rc);
	return out;
}

static bool fail_at(struct t *t, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Record the test's first failure; returns false so helpers can "return fail_at(...)". */
static bool fail_at(struct t *t, const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->outcome != T_OK)
		return false;
	t->outcome = T_FAIL;
	n = snprintf(t->msg, sizeof t->msg, "%s:%d ", base_name(file), line);
	va_start(ap, fmt);
	vsnprintf(t->msg + n, sizeof t->msg - n, fmt, ap);
	va_end(ap);
	return false;
}

static void skip_because(struct t *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void skip_because(struct t *t, const char *fmt, ...)
{
	va_list ap;

	if (t->outcome != T_OK)
		return;
	t->outcome = T_SKIP;
	va_start(ap, fmt);
	vsnprintf(t->msg, sizeof t->msg, fmt, ap);
	va_end(ap);
}

/*
 * Assertions for test functions, which all name their context `t`.  On
 * failure they record file:line and return from the test; memory the test
 * got from talloc()/keep() is released by the runner either way.
 */
#define FAIL(...) do { fail_at(t, __FILE__, __LINE__, __VA_ARGS__); return; } while (0)
#define EXPECT(cond, ...) do { if (!(cond)) FAIL(__VA_ARGS__); } while (0)
#define EXPECT_RC(expr, want) do {                                              \
		int rc_ = (expr);                                                \
		if (rc_ != (want))                                               \
			FAIL("%s: expected %s, got %s", #expr, errname(want), errname(rc_)); \
	} while (0)
#define SKIP(...) do { skip_because(t, __VA_ARGS__); return; } while (0)
/* For helpers that record their own failure and return false. */
#define TRY(call) do { if (!(call)) return; } while (0)

/* Release p with fn when the test ends. */
static void *keep(struct t *t, void (*fn)(void *), void *p)
{
	if (t->ncl == t->capcl) {
		size_t cap = t->capcl ? 2 * t->capcl : 32;
		struct cleanup *cl = realloc(t->cl, cap * sizeof *cl);

		if (!cl)
			die_oom();
		t->cl = cl;
		t->capcl = cap;
	}
	t->cl[t->ncl++] = (struct cleanup){ fn, p };
	return p;
}

static void *talloc(struct t *t, size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die_oom();
	return keep(t, free, p);
}

/* The key P + suffix (suffix may hold NULs). */
static struct bytes keyn(struct t *t, const void *suffix, size_t n)
{
	char *k = talloc(t, t->plen + n + 1);

	memcpy(k, t->pfx, t->plen);
	if (n)
		memcpy(k + t->plen, suffix, n);
	k[t->plen + n] = '\0';
	return (struct bytes){ k, t->plen + n };
}

static struct bytes key(struct t *t, const char *suffix)
{
	return keyn(t, suffix, strlen(suffix));
}

/* A string literal that may contain NULs. */
#define KEYLIT(lit) keyn(t, (lit), sizeof(lit) - 1)

/* The test's own prefix P, as a list prefix. */
static struct bytes root(struct t *t)
{
	return (struct bytes){ t->pfx, t->plen };
}

/* A printable rendering of a key for messages: P+"rest" when under P. */
static const char *show(struct t *t, const char *k, size_t n)
{
	char *out = t->shown[t->nshown++ % ARRAY_SIZE(t->shown)];
	size_t cap = sizeof t->shown[0], o = 0, i = 0;

	if (n >= t->plen && memcmp(k, t->pfx, t->plen) == 0) {
		memcpy(out, "P+", 2);
		o = 2;
		i = t->plen;
	}
	out[o++] = '"';
	for (; i < n && o + 12 < cap; i++) {
		unsigned char c = k[i];

		if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
			out[o++] = c;
		else
			o += snprintf(out + o, cap - o, "\\x%02x", c);
	}
	if (i < n)
		o += snprintf(out + o, cap - o, "...");
	out[o++] = '"';
	out[o] = '\0';
	return out;
}

#define SHOW(b) show(t, (b).p, (b).n)

/* Deterministic bytes covering every byte value, different per seed. */
static void fill_pattern(char *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)(i * 7 + seed * 13 + (i >> 8));
}

static char *pattern(struct t *t, size_t len, unsigned seed)
{
	char *buf = talloc(t, len + 1);

	fill_pattern(buf, len, seed);
	return buf;
}

static int bytecmp(const char *a, size_t an, const char *b, size_t bn)
{
	size_t n = an < bn ? an : bn;
	int c = n ? memcmp(a, b, n) : 0;

	if (c)
		return c;
	return an < bn ? -1 : an > bn;
}

/*
 * Read key and compare with want: value, length, the NUL after it, a
 * nonzero version, and kv_stat's size.
 */
static bool check_value(struct t *t, const char *file, int line, struct bytes k,
			const void *want, size_t wlen)
{
	char *v = NULL;
	size_t n = 0;
	uint64_t version = 0, size = 0;
	int rc = kv_get(t->s, k.p, k.n, &v, &n, &version);
	bool ok = false;

	if (rc)
		return fail_at(t, file, line, "kv_get %s: expected 0, got %s", SHOW(k), errname(rc));
	if (!v)
		fail_at(t, file, line, "kv_get %s: returned 0 with a NULL value", SHOW(k));
	else if (n != wlen)
		fail_at(t, file, line, "kv_get %s: %zu bytes, expected %zu", SHOW(k), n, wlen);
	else if (n && memcmp(v, want, n) != 0)
		fail_at(t, file, line, "kv_get %s: value differs from what was written", SHOW(k));
	else if (v[n] != '\0')
		fail_at(t, file, line, "kv_get %s: no NUL byte after the value", SHOW(k));
	else if (version == 0)
		fail_at(t, file, line, "kv_get %s: version is 0", SHOW(k));
	else
		ok = true;
	free(v);
	if (!ok)
		return false;
	rc = kv_stat(t->s, k.p, k.n, &size);
	if (rc)
		return fail_at(t, file, line, "kv_stat %s: expected 0, got %s", SHOW(k), errname(rc));
	if (size != wlen)
		return fail_at(t, file, line, "kv_stat %s: size %" PRIu64 ", expected %zu",
			       SHOW(k), size, wlen);
	return true;
}

static bool check_missing(struct t *t, const char *file, int line, struct bytes k)
{
	char *v = NULL;
	size_t n = 0;
	uint64_t size = 0;
	int rc = kv_get(t->s, k.p, k.n, &v, &n, NULL);

	if (rc == 0)
		free(v);
	if (rc != -ENOENT)
		return fail_at(t, file, line, "kv_get %s: expected -ENOENT, got %s", SHOW(k),
			       errname(rc));
	rc = kv_stat(t->s, k.p, k.n, &size);
	if (rc != -ENOENT)
		return fail_at(t, file, line, "kv_stat %s: expected -ENOENT, got %s", SHOW(k),
			       errname(rc));
	return true;
}

static bool check_version(struct t *t, const char *file, int line, struct bytes k,
			  uint64_t *version)
{
	char *v = NULL;
	size_t n = 0;
	int rc = kv_get(t->s, k.p, k.n, &v, &n, version);

	if (rc)
		return fail_at(t, file, line, "kv_get %s: expected 0, got %s", SHOW(k), errname(rc));
	free(v);
	if (*version == 0)
		return fail_at(t, file, line, "kv_get %s: version is 0", SHOW(k));
	return true;
}

#define EXPECT_VALUE(k, want, wlen) TRY(check_value(t, __FILE__, __LINE__, (k), (want), (wlen)))
#define EXPECT_STR(k, str) EXPECT_VALUE((k), (str), strlen(str))
#define EXPECT_MISSING(k) TRY(check_missing(t, __FILE__, __LINE__, (k)))
#define GET_VERSION(k, vp) TRY(check_version(t, __FILE__, __LINE__, (k), (vp)))
#define SET(k, v, vn) EXPECT_RC(kv_set(t->s, (k).p, (k).n, (v), (vn)), 0)
#define SET_STR(k, str) SET((k), (str), strlen(str))

/* ---- Listings ---- */

struct item {
	char *key;
	size_t len;
	uint64_t size;
	bool is_prefix;
};

struct items {
	struct item *v;
	size_t n, cap;
	size_t calls;    /* callback invocations */
	size_t stop_at;  /* nonzero: return stop_rc from this call on */
	int stop_rc;
};

static void items_free(void *p)
{
	struct items *it = p;

	for (size_t i = 0; i < it->n; i++)
		free(it->v[i].key);
	free(it->v);
	free(it);
}

static struct items *items_new(struct t *t)
{
	struct items *it = calloc(1, sizeof *it);

	if (!it)
		die_oom();
	return keep(t, items_free, it);
}

static int items_add(struct items *it, const char *key, size_t len, uint64_t size, bool is_prefix)
{
	char *k;

	if (it->n == it->cap) {
		size_t cap = it->cap ? 2 * it->cap : 64;
		struct item *v = realloc(it->v, cap * sizeof *v);

		if (!v)
			return -ENOMEM;
		it->v = v;
		it->cap = cap;
	}
	k = malloc(len + 1);
	if (!k)
		return -ENOMEM;
	if (len)
		memcpy(k, key, len);
	k[len] = '\0';
	it->v[it->n++] = (struct item){ k, len, size, is_prefix };
	return 0;
}

static int item_cmp(const void *x, const void *y)
{
	const struct item *a = x, *b = y;

	return bytecmp(a->key, a->len, b->key, b->len);
}

/* No test lists more; beyond it a listing that never ends is failed, not run out of memory. */
#define MAX_ITEMS 200000

/* kv_list_cb that copies every item (they are valid only during the call). */
static int collect_cb(void *ctx, const struct kv_entry *e)
{
	struct items *it = ctx;

	it->calls++;
	if (it->stop_at && it->calls >= it->stop_at)
		return it->stop_rc;
	if (it->n >= MAX_ITEMS)
		return -EOVERFLOW;
	return items_add(it, e->key, e->key_len, e->size, e->is_prefix);
}

/* Sort and drop repeated items (a group produced by several keys). */
static void items_sort_unique(struct items *it)
{
	size_t o = 0;

	if (it->n > 1)
		qsort(it->v, it->n, sizeof *it->v, item_cmp);
	for (size_t i = 0; i < it->n; i++) {
		if (o && item_cmp(&it->v[o - 1], &it->v[i]) == 0)
			free(it->v[i].key);
		else
			it->v[o++] = it->v[i];
	}
	it->n = o;
}

/*
 * What a listing of prefix with delim must return for a store holding
 * exactly keys[] (with value sizes sizes[]) under it: the reference model.
 */
static struct items *model_listing(struct t *t, const struct bytes *keys, const uint64_t *sizes,
				   size_t n, struct bytes prefix, char delim)
{
	struct items *it = items_new(t);

	for (size_t i = 0; i < n; i++) {
		const char *d;
		int rc;

		if (keys[i].n < prefix.n || memcmp(keys[i].p, prefix.p, prefix.n) != 0)
			continue;
		d = delim ? memchr(keys[i].p + prefix.n, delim, keys[i].n - prefix.n) : NULL;
		if (d)
			rc = items_add(it, keys[i].p, d - keys[i].p + 1, 0, true);
		else
			rc = items_add(it, keys[i].p, keys[i].n, sizes[i], false);
		if (rc)
			die_oom();
	}
	items_sort_unique(it);
	return it;
}

/* An expected item, relative to P. */
struct want {
	const char *suffix;
	size_t n;
	bool is_prefix;
	uint64_t size;
};

#define WK(lit, size) { (lit), sizeof(lit) - 1, false, (size) }
#define WP(lit) { (lit), sizeof(lit) - 1, true, 0 }

static struct items *want_items(struct t *t, const struct want *w, size_t n)
{
	struct items *it = items_new(t);

	for (size_t i = 0; i < n; i++) {
		struct bytes k = keyn(t, w[i].suffix, w[i].n);

		if (items_add(it, k.p, k.n, w[i].size, w[i].is_prefix))
			die_oom();
	}
	items_sort_unique(it);
	return it;
}

/*
 * Compare a listing with the expected items (sorted, unique): every
 * backend's listing comes in byte order (kv.c's walker), each item once.
 */
static bool compare_items(struct t *t, const char *file, int line, const char *what,
			  struct items *got, const struct items *want)
{
	size_t i = 0, j = 0;

	for (size_t k = 1; k < got->n; k++) {
		const struct item *a = &got->v[k - 1], *b = &got->v[k];
		int c = item_cmp(a, b);

		if (c == 0)
			return fail_at(t, file, line, "%s: %s returned twice", what,
				       show(t, b->key, b->len));
		if (c > 0)
			return fail_at(t, file, line, "%s: %s returned after %s: not in byte order",
				       what, show(t, b->key, b->len), show(t, a->key, a->len));
	}
	while (i < got->n || j < want->n) {
		const struct item *g = i < got->n ? &got->v[i] : NULL;
		const struct item *w = j < want->n ? &want->v[j] : NULL;
		int c = !g ? 1 : !w ? -1 : item_cmp(g, w);

		if (c < 0)
			return fail_at(t, file, line, "%s: unexpected %s %s (%zu items, expected %zu)",
				       what, g->is_prefix ? "prefix" : "key", show(t, g->key, g->len),
				       got->n, want->n);
		if (c > 0)
			return fail_at(t, file, line, "%s: missing %s %s (%zu items, expected %zu)",
				       what, w->is_prefix ? "prefix" : "key", show(t, w->key, w->len),
				       got->n, want->n);
		if (g->is_prefix != w->is_prefix)
			return fail_at(t, file, line, "%s: %s has is_prefix %d, expected %d", what,
				       show(t, g->key, g->len), g->is_prefix, w->is_prefix);
		if (g->size != w->size)
			return fail_at(t, file, line, "%s: %s has size %" PRIu64 ", expected %" PRIu64,
				       what, show(t, g->key, g->len), g->size, w->size);
		i++;
		j++;
	}
	return true;
}

/*
 * The next start after item it: for a key K, K + "\0"; for a group P ending
 * in the delimiter, P with its last byte incremented (past every key in the
 * group).  malloc'd; NULL when nothing can follow (a group of 0xff bytes).
 */
static char *successor(const struct item *it, size_t *len)
{
	char *s = malloc(it->len + 1);
	size_t n = it->len;

	if (!s)
		die_oom();
	memcpy(s, it->key, it->len);
	if (!it->is_prefix) {
		s[n++] = '\0';
	} else {
		while (n && (unsigned char)s[n - 1] == 0xff)
			n--;
		if (!n) {
			free(s);
			return NULL;
		}
		s[n - 1]++;
	}
	*len = n;
	return s;
}

static const char *delim_name(char delim)
{
	return delim == '\0' ? "no delim" : delim == '/' ? "delim '/'" : "delim ?";
}

/*
 * List prefix page by page, limit items a call, each call starting at the
 * successor of the previous page's last item, appending to out.  Checks
 * what paging promises (limit, start, progress) on the way.
 */
static bool list_paged(struct t *t, const char *file, int line, const char *what,
		       struct bytes prefix, char delim, size_t limit, struct items *out)
{
	char *start = NULL;
	size_t slen = 0;
	bool ok = true;

	for (size_t page = 0; ok; page++) {
		struct kv_list_req req = {
			.prefix = prefix.p, .prefix_len = prefix.n,
			.start = start, .start_len = slen,
			.delim = delim, .limit = limit,
		};
		size_t first = out->n, got;
		bool more = false;
		int rc = kv_list(t->s, &req, collect_cb, out, &more);

		got = out->n - first;
		if (rc)
			ok = fail_at(t, file, line, "%s: page %zu: %s", what, page, errname(rc));
		else if (limit && got > limit)
			ok = fail_at(t, file, line, "%s: page %zu has %zu items, limit %zu",
				     what, page, got, limit);
		else if (start && got &&
			 bytecmp(out->v[first].key, out->v[first].len, start, slen) < 0)
			ok = fail_at(t, file, line, "%s: page %zu begins with %s, before start %s",
				     what, page, show(t, out->v[first].key, out->v[first].len),
				     show(t, start, slen));
		else if (!more)
			break;
		else if (got == 0)
			ok = fail_at(t, file, line, "%s: page %zu has no items but *more is true",
				     what, page);
		else if (page >= 100000)
			ok = fail_at(t, file, line, "%s: still more after %zu pages", what, page);
		else {
			free(start);
			start = successor(&out->v[out->n - 1], &slen);
			if (!start)
				break;
		}
	}
	free(start);
	return ok;
}

/*
 * The listing of prefix with delim must be exactly want, through
 * kv_list_all, through kv_list with the backend's page size, and through
 * kv_list in pages of 3.
 */
static bool check_listing(struct t *t, const char *file, int line, struct bytes prefix,
			  char delim, const struct items *want)
{
	static const size_t limits[] = { 0, 3 };
	struct items *got = items_new(t);
	char what[256];
	int rc;

	snprintf(what, sizeof what, "kv_list_all(%s, %s)", SHOW(prefix), delim_name(delim));
	rc = kv_list_all(t->s, prefix.p, prefix.n, delim, collect_cb, got);
	if (rc)
		return fail_at(t, file, line, "%s: %s", what, errname(rc));
	if (!compare_items(t, file, line, what, got, want))
		return false;
	for (size_t i = 0; i < ARRAY_SIZE(limits); i++) {
		got = items_new(t);
		snprintf(what, sizeof what, "kv_list(%s, %s, limit %zu)", SHOW(prefix),
			 delim_name(delim), limits[i]);
		if (!list_paged(t, file, line, what, prefix, delim, limits[i], got) ||
		    !compare_items(t, file, line, what, got, want))
			return false;
	}
	return true;
}

#define EXPECT_LISTING_ITEMS(prefix, delim, items) \
	TRY(check_listing(t, __FILE__, __LINE__, (prefix), (delim), (items)))
#define EXPECT_LISTING(prefix, delim, want) \
	EXPECT_LISTING_ITEMS((prefix), (delim), want_items(t, (want), ARRAY_SIZE(want)))
#define EXPECT_EMPTY_LISTING(prefix, delim) \
	EXPECT_LISTING_ITEMS((prefix), (delim), want_items(t, NULL, 0))

/* Write a batch of keys with values of the given sizes, through kv_apply. */
static bool put_keys(struct t *t, const char *file, int line, const struct bytes *keys,
		     const uint64_t *sizes, size_t n)
{
	enum { BATCH = 250 };
	struct kv_op ops[BATCH];
	size_t maxsize = 0;
	char *val;

	for (size_t i = 0; i < n; i++)
		if (sizes[i] > maxsize)
			maxsize = sizes[i];
	val = pattern(t, maxsize, 1);
	for (size_t i = 0; i < n; i += BATCH) {
		size_t m = n - i < BATCH ? n - i : BATCH;
		int rc;

		for (size_t j = 0; j < m; j++)
			ops[j] = (struct kv_op){ .type = KV_OP_SET, .key = keys[i + j].p,
				.key_len = keys[i + j].n, .val = val, .val_len = sizes[i + j] };
		rc = kv_apply(t->s, ops, m);
		if (rc)
			return fail_at(t, file, line, "kv_apply of %zu sets: %s", m, errname(rc));
	}
	return true;
}

#define PUT_KEYS(keys, sizes, n) TRY(put_keys(t, __FILE__, __LINE__, (keys), (sizes), (n)))

/* ---- Basic operations ---- */

static void t_get_missing_key_is_enoent(struct t *t)
{
	struct bytes k = key(t, "missing");
	char *v = NULL;
	size_t n = 0;
	uint64_t version = 0;

	EXPECT_RC(kv_get(t->s, k.p, k.n, &v, &n, &version), -ENOENT);
	EXPECT_MISSING(k);
	/* A prefix of existing keys is not a key itself. */
	SET_STR(key(t, "dir/x"), "x");
	EXPECT_MISSING(key(t, "dir"));
	EXPECT_MISSING(key(t, "dir/"));
	EXPECT_MISSING(key(t, "dir/x/"));
	EXPECT_MISSING(KEYLIT("dir/x\0"));
}

static void t_del_missing_key_is_enoent(struct t *t)
{
	struct bytes k = key(t, "k");

	EXPECT_RC(kv_del(t->s, k.p, k.n), -ENOENT);
	SET_STR(key(t, "k/child"), "c");
	EXPECT_RC(kv_del(t->s, k.p, k.n), -ENOENT);
	EXPECT_STR(key(t, "k/child"), "c");
	SET_STR(k, "v");
	EXPECT_RC(kv_del(t->s, k.p, k.n), 0);
	EXPECT_RC(kv_del(t->s, k.p, k.n), -ENOENT);
	EXPECT_STR(key(t, "k/child"), "c");
}

static void t_set_then_get_returns_value(struct t *t)
{
	struct bytes k = key(t, "k");
	char *v = NULL;
	size_t n = 0;

	SET_STR(k, "hello");
	EXPECT_STR(k, "hello");
	/* version is optional for the caller. */
	EXPECT_RC(kv_get(t->s, k.p, k.n, &v, &n, NULL), 0);
	free(v);
	EXPECT(n == 5, "kv_get without version: %zu bytes, expected 5", n);
}

static void t_empty_value_is_stored(struct t *t)
{
	static const struct want want[] = { WK("e", 0), WK("f", 3) };
	struct bytes e = key(t, "e"), f = key(t, "f");

	SET(e, "", 0);
	EXPECT_VALUE(e, "", 0);
	SET(f, "abc", 3);
	SET(f, "", 0);
	EXPECT_VALUE(f, "", 0);
	SET(f, "abc", 3);
	EXPECT_STR(f, "abc");
	EXPECT_LISTING(root(t), '\0', want);
}

/*
 * kv.h says keys may be empty, so the empty key must work like any other.
 * A backend that cannot store it (LMDB refuses zero-length keys natively)
 * may refuse it instead, but cleanly: kv_set, kv_cas and kv_apply return
 * -EINVAL and write nothing, kv_get/kv_stat/kv_del answer -ENOENT (a key
 * that cannot exist does not exist).  The empty key cannot live under the
 * test's prefix, so on a shared store the test only creates it when it is
 * absent (with cas version 0 when available, never clobbering another
 * user's value) and deletes it at the end.
 */
static void del_empty_key(void *store)
{
	kv_del(store, "", 0);
}

static void t_empty_key_works_or_is_refused_cleanly(struct t *t)
{
	static const char val[] = "empty key";
	struct bytes e = { "", 0 };
	struct kv_op op = { .type = KV_OP_SET, .key = "", .key_len = 0, .val = val,
			    .val_len = sizeof val - 1 };
	char *v = NULL;
	size_t n = 0;
	int rc = kv_get(t->s, "", 0, &v, &n, NULL);

	if (rc == 0) {
		free(v);
		SKIP("the store already holds a value under the empty key; not touching it");
	}
	EXPECT(rc == -ENOENT, "kv_get of the empty key: expected -ENOENT, got %s", errname(rc));
	if (t->caps & KV_CAP_CAS)
		rc = kv_cas(t->s, "", 0, 0, val, sizeof val - 1);
	else
		rc = kv_set(t->s, "", 0, val, sizeof val - 1);
	if (rc == -EINVAL) {
		fprintf(stderr, "# %s refuses the empty key with -EINVAL\n", kv_name(t->s));
		EXPECT_MISSING(e);
		EXPECT_RC(kv_set(t->s, "", 0, val, sizeof val - 1), -EINVAL);
		EXPECT_RC(kv_apply(t->s, &op, 1), -EINVAL);
		if (t->caps & KV_CAP_CAS)
			EXPECT_RC(kv_cas(t->s, "", 0, 0, val, sizeof val - 1), -EINVAL);
		EXPECT_MISSING(e);
		EXPECT_RC(kv_del(t->s, "", 0), -ENOENT);
		return;
	}
	EXPECT(rc == 0, "writing the empty key: expected 0 or -EINVAL, got %s", errname(rc));
	keep(t, del_empty_key, t->s);
	EXPECT_VALUE(e, val, sizeof val - 1);
	{
		/* The empty key sorts before every other key of the store. */
		struct items *got = items_new(t);
		struct kv_list_req req = { .prefix = "", .prefix_len = 0, .limit = 1 };
		bool more;

		EXPECT_RC(kv_list(t->s, &req, collect_cb, got, &more), 0);
		EXPECT(got->n == 1 && got->v[0].len == 0 && !got->v[0].is_prefix &&
		       got->v[0].size == sizeof val - 1,
		       "kv_list from the start with limit 1 did not return the empty key first");
	}
	EXPECT_RC(kv_del(t->s, "", 0), 0);
	EXPECT_MISSING(e);
}

static void t_overwrite_replaces_value(struct t *t)
{
	static const struct want want[] = { WK("k", 3) };
	struct bytes k = key(t, "k");
	char *big = pattern(t, 5000, 2);

	SET_STR(k, "first value");
	EXPECT_STR(k, "first value");
	SET(k, big, 5000);
	EXPECT_VALUE(k, big, 5000);
	SET_STR(k, "3rd");
	EXPECT_STR(k, "3rd");
	EXPECT_LISTING(root(t), '\0', want);
}

static void t_set_del_get_is_enoent(struct t *t)
{
	struct bytes k = key(t, "k"), other = key(t, "k2");

	SET_STR(k, "v");
	SET_STR(other, "other");
	EXPECT_RC(kv_del(t->s, k.p, k.n), 0);
	EXPECT_MISSING(k);
	EXPECT_STR(other, "other");
	{
		static const struct want want[] = { WK("k2", 5) };

		EXPECT_LISTING(root(t), '\0', want);
	}
	SET_STR(k, "again");
	EXPECT_STR(k, "again");
}

static void t_stat_matches_value_size(struct t *t)
{
	static const size_t sizes[] = { 0, 1, 255, 4096, 100000 };
	uint64_t size = 0;

	for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
		char suffix[16];
		struct bytes k;

		if (t->lim.max_value && sizes[i] > t->lim.max_value)
			continue;
		snprintf(suffix, sizeof suffix, "s%zu", sizes[i]);
		k = key(t, suffix);
		SET(k, pattern(t, sizes[i], i), sizes[i]);
		EXPECT_RC(kv_stat(t->s, k.p, k.n, &size), 0);
		EXPECT(size == sizes[i], "kv_stat %s: %" PRIu64 ", expected %zu", SHOW(k), size, sizes[i]);
	}
	SET_STR(key(t, "s1"), "longer now");
	EXPECT_RC(kv_stat(t->s, key(t, "s1").p, key(t, "s1").n, &size), 0);
	EXPECT(size == 10, "kv_stat after overwrite: %" PRIu64 ", expected 10", size);
	EXPECT_RC(kv_stat(t->s, key(t, "nope").p, key(t, "nope").n, &size), -ENOENT);
}

/* ---- Binary safety ---- */

static void t_binary_keys_all_byte_values(struct t *t)
{
	struct bytes keys[2 * 256 + 2];
	uint64_t sizes[ARRAY_SIZE(keys)];
	size_t n = 0;

	for (unsigned b = 0; b < 256; b++) {
		char mid[3] = { 'm', (char)b, 'm' }, end[2] = { 'e', (char)b };

		keys[n] = keyn(t, mid, sizeof mid);
		sizes[n++] = 1 + b;
		keys[n] = keyn(t, end, sizeof end);
		sizes[n++] = 256 - b;
	}
	keys[n] = KEYLIT("\0\0\0");
	sizes[n++] = 3;
	if (!t->lim.max_key || t->plen + 259 <= t->lim.max_key) {
		char all[259] = "all";

		for (unsigned b = 0; b < 256; b++)
			all[3 + b] = (char)b;
		keys[n] = keyn(t, all, sizeof all);
		sizes[n++] = 256;
	}
	for (size_t i = 0; i < n; i++) {
		char *v = pattern(t, sizes[i], i);

		SET(keys[i], v, sizes[i]);
	}
	for (size_t i = 0; i < n; i++)
		EXPECT_VALUE(keys[i], pattern(t, sizes[i], i), sizes[i]);
	EXPECT_LISTING_ITEMS(root(t), '\0', model_listing(t, keys, sizes, n, root(t), '\0'));
	EXPECT_LISTING_ITEMS(root(t), '/', model_listing(t, keys, sizes, n, root(t), '/'));
	/* Prefixes ending in a NUL or 0xff byte. */
	EXPECT_LISTING_ITEMS(KEYLIT("m\0"), '\0',
			     model_listing(t, keys, sizes, n, KEYLIT("m\0"), '\0'));
	EXPECT_LISTING_ITEMS(KEYLIT("m\xff"), '\0',
			     model_listing(t, keys, sizes, n, KEYLIT("m\xff"), '\0'));
	for (size_t i = 0; i < n; i += 37)
		EXPECT_RC(kv_del(t->s, keys[i].p, keys[i].n), 0);
	for (size_t i = 0; i < n; i++) {
		if (i % 37 == 0)
			EXPECT_MISSING(keys[i]);
		else
			EXPECT_VALUE(keys[i], pattern(t, sizes[i], i), sizes[i]);
	}
}

static void t_binary_values_all_byte_values(struct t *t)
{
	char all[256], nuls[256];
	size_t big = (size_t)1 << 20;

	for (unsigned b = 0; b < 256; b++)
		all[b] = (char)b;
	memset(nuls, 0, sizeof nuls);
	SET(key(t, "all"), all, sizeof all);
	SET(key(t, "nuls"), nuls, sizeof nuls);
	SET(key(t, "lead"), "\0abc", 4);
	SET(key(t, "trail"), "abc\0", 4);
	SET(key(t, "one-nul"), "\0", 1);
	EXPECT_VALUE(key(t, "all"), all, sizeof all);
	EXPECT_VALUE(key(t, "nuls"), nuls, sizeof nuls);
	EXPECT_VALUE(key(t, "lead"), "\0abc", 4);
	EXPECT_VALUE(key(t, "trail"), "abc\0", 4);
	EXPECT_VALUE(key(t, "one-nul"), "\0", 1);
	if (!t->lim.max_value || t->lim.max_value >= big) {
		char *v = pattern(t, big, 9);

		SET(key(t, "big"), v, big);
		EXPECT_VALUE(key(t, "big"), v, big);
	}
}

static void t_keys_differing_after_nul_are_distinct(struct t *t)
{
	static const struct want want[] = {
		WK("n", 1), WK("n\0", 2), WK("n\0\0", 3), WK("n\0a", 4), WK("n\x01", 5),
	};

	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		SET(keyn(t, want[i].suffix, want[i].n), pattern(t, want[i].size, i), want[i].size);
	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		EXPECT_VALUE(keyn(t, want[i].suffix, want[i].n), pattern(t, want[i].size, i),
			     want[i].size);
	EXPECT_LISTING(root(t), '\0', want);
	EXPECT_RC(kv_del(t->s, KEYLIT("n\0").p, KEYLIT("n\0").n), 0);
	EXPECT_MISSING(KEYLIT("n\0"));
	EXPECT_VALUE(KEYLIT("n"), pattern(t, 1, 0), 1);
	EXPECT_VALUE(KEYLIT("n\0\0"), pattern(t, 3, 2), 3);
}

/* ---- Limits ---- */

/*
 * Every way of writing a value of biglen > max_value bytes to k (which
 * holds old) and to the missing key fresh is refused with -EFBIG and
 * changes nothing.  Records a failure like a test body does.
 */
static void expect_value_refused(struct t *t, struct bytes k, struct bytes fresh,
				 const char *old, size_t oldlen, const char *big, size_t biglen)
{
	struct kv_op op = { .type = KV_OP_SET, .key = k.p, .key_len = k.n, .val = big,
			    .val_len = biglen };
	uint64_t version;

	EXPECT_RC(kv_set(t->s, k.p, k.n, big, biglen), -EFBIG);
	EXPECT_VALUE(k, old, oldlen);
	EXPECT_RC(kv_set(t->s, fresh.p, fresh.n, big, biglen), -EFBIG);
	EXPECT_MISSING(fresh);
	EXPECT_RC(kv_apply(t->s, &op, 1), -EFBIG);
	EXPECT_VALUE(k, old, oldlen);
	if (t->caps & KV_CAP_CAS) {
		GET_VERSION(k, &version);
		EXPECT_RC(kv_cas(t->s, k.p, k.n, version, big, biglen), -EFBIG);
		EXPECT_RC(kv_cas(t->s, fresh.p, fresh.n, 0, big, biglen), -EFBIG);
		EXPECT_VALUE(k, old, oldlen);
		EXPECT_MISSING(fresh);
	}
}

static void t_value_at_max_value_and_one_over(struct t *t)
{
	size_t max = t->lim.max_value;
	struct bytes k = key(t, "v");
	char *buf;

	if (!max)
		SKIP("no value limit (max_value 0)");
	if (max >= MAX_ALLOC)
		SKIP("max_value %zu is above the %zu MiB the suite allocates", max, MAX_ALLOC >> 20);
	buf = pattern(t, max + 1, 3);
	SET(k, buf, max);
	EXPECT_VALUE(k, buf, max);
	expect_value_refused(t, k, key(t, "fresh"), buf, max, buf, max + 1);
}

struct mapping {
	void *p;
	size_t n;
};

static void unmap(void *arg)
{
	struct mapping *m = arg;

	munmap(m->p, m->n);
	free(m);
}

/*
 * n readable zero bytes that cost no memory until read, for values over a
 * large max_value (refused before anyone should read them).  NULL if the
 * address space will not have it.
 */
static const char *lazy_zeros(struct t *t, size_t n)
{
	struct mapping *m = malloc(sizeof *m);
	void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (!m)
		die_oom();
	if (p == MAP_FAILED) {
		free(m);
		return NULL;
	}
	*m = (struct mapping){ p, n };
	keep(t, unmap, m);
	return p;
}

/* Also for limits too large to write a value at: one byte over is refused. */
static void t_value_over_max_value_is_efbig(struct t *t)
{
	size_t max = t->lim.max_value;
	struct bytes k = key(t, "v");
	const char *big;

	if (!max)
		SKIP("no value limit (max_value 0)");
	if (max >= SIZE_MAX / 2 || !(big = lazy_zeros(t, max + 1)))
		SKIP("cannot map max_value + 1 = %zu bytes", max + 1);
	SET_STR(k, "old value");
	expect_value_refused(t, k, key(t, "fresh"), "old value", 9, big, max + 1);
}

static void t_key_at_max_key_and_one_over(struct t *t)
{
	size_t max = t->lim.max_key;
	char *buf;
	struct bytes at, over;
	struct kv_op op;
	struct items *want;

	if (!max)
		SKIP("no key limit (max_key 0)");
	if (max >= MAX_ALLOC)
		SKIP("max_key %zu is above the %zu MiB the suite allocates", max, MAX_ALLOC >> 20);
	if (max <= t->plen + 1)
		SKIP("max_key %zu leaves no room after the %zu-byte test prefix", max, t->plen);
	buf = talloc(t, max + 1);
	memcpy(buf, t->pfx, t->plen);
	for (size_t i = t->plen; i <= max; i++)
		buf[i] = 'a' + i % 26;
	at = (struct bytes){ buf, max };
	/* One byte longer than `at`: a backend that truncates would overwrite it. */
	over = (struct bytes){ buf, max + 1 };
	SET_STR(at, "at the limit");
	EXPECT_STR(at, "at the limit");
	EXPECT_RC(kv_set(t->s, over.p, over.n, "over", 4), -ENAMETOOLONG);
	EXPECT_STR(at, "at the limit");
	EXPECT_MISSING(over);
	EXPECT_RC(kv_del(t->s, over.p, over.n), -ENOENT);
	op = (struct kv_op){ .type = KV_OP_SET, .key = over.p, .key_len = over.n, .val = "over",
			     .val_len = 4 };
	EXPECT_RC(kv_apply(t->s, &op, 1), -ENAMETOOLONG);
	if (t->caps & KV_CAP_CAS)
		EXPECT_RC(kv_cas(t->s, over.p, over.n, 0, "over", 4), -ENAMETOOLONG);
	EXPECT_STR(at, "at the limit");
	want = items_new(t);
	if (items_add(want, at.p, at.n, 12, false))
		die_oom();
	EXPECT_LISTING_ITEMS(root(t), '\0', want);
	/* A key over the limit cannot exist (kv_del says -ENOENT), and a delete
	 * of a missing key in an apply is not an error. */
	op = (struct kv_op){ .type = KV_OP_DEL, .key = over.p, .key_len = over.n };
	EXPECT_RC(kv_apply(t->s, &op, 1), 0);
	EXPECT_STR(at, "at the limit");
}

/* ---- Listing ---- */

/* The prefix edge cases: "a" is a prefix of all, "a/" is a key and a group. */
static const struct want edge_keys[] = {
	WK("a", 1), WK("ab", 2), WK("a/", 3), WK("a/b", 4), WK("a/b/c", 5), WK("a0", 6), WK("a.", 7),
};

static bool put_edge_keys(struct t *t)
{
	for (size_t i = 0; i < ARRAY_SIZE(edge_keys); i++) {
		struct bytes k = keyn(t, edge_keys[i].suffix, edge_keys[i].n);
		int rc = kv_set(t->s, k.p, k.n, pattern(t, edge_keys[i].size, i), edge_keys[i].size);

		if (rc)
			return fail_at(t, __FILE__, __LINE__, "kv_set %s: %s", SHOW(k), errname(rc));
	}
	return true;
}

static void t_list_prefix_a_without_delim(struct t *t)
{
	static const struct want want[] = {
		WK("a", 1), WK("a.", 7), WK("a/", 3), WK("a/b", 4), WK("a/b/c", 5), WK("a0", 6),
		WK("ab", 2),
	};

	TRY(put_edge_keys(t));
	EXPECT_LISTING(key(t, "a"), '\0', want);
	EXPECT_LISTING(root(t), '\0', want);
}

static void t_list_prefix_a_with_delim_groups_once(struct t *t)
{
	/* "a/", "a/b" and "a/b/c" collapse into the one group "a/". */
	static const struct want want[] = {
		WK("a", 1), WK("a.", 7), WP("a/"), WK("a0", 6), WK("ab", 2),
	};

	TRY(put_edge_keys(t));
	EXPECT_LISTING(key(t, "a"), '/', want);
	EXPECT_LISTING(root(t), '/', want);
}

static void t_list_prefix_a_slash_without_delim(struct t *t)
{
	static const struct want want[] = { WK("a/", 3), WK("a/b", 4), WK("a/b/c", 5) };
	static const struct want want_ab[] = { WK("a/b", 4), WK("a/b/c", 5) };

	TRY(put_edge_keys(t));
	EXPECT_LISTING(key(t, "a/"), '\0', want);
	EXPECT_LISTING(key(t, "a/b"), '\0', want_ab);
}

static void t_list_prefix_a_slash_with_delim(struct t *t)
{
	/* The key equal to the prefix is a key item (nothing after the prefix). */
	static const struct want want[] = { WK("a/", 3), WK("a/b", 4), WP("a/b/") };
	static const struct want want_ab[] = { WK("a/b", 4), WP("a/b/") };
	static const struct want want_ab_slash[] = { WK("a/b/c", 5) };

	TRY(put_edge_keys(t));
	EXPECT_LISTING(key(t, "a/"), '/', want);
	EXPECT_LISTING(key(t, "a/b"), '/', want_ab);
	EXPECT_LISTING(key(t, "a/b/"), '/', want_ab_slash);
	EXPECT_EMPTY_LISTING(key(t, "a/b/c/"), '/');
}

static void t_list_missing_prefix_is_empty(struct t *t)
{
	struct items *got = items_new(t);
	struct bytes p = key(t, "nothing/");
	struct kv_list_req req = { .prefix = p.p, .prefix_len = p.n, .delim = '/' };
	bool more = true;

	SET_STR(key(t, "k"), "v");
	EXPECT_RC(kv_list(t->s, &req, collect_cb, got, &more), 0);
	EXPECT(got->n == 0 && !more, "kv_list of an empty prefix: %zu items, more %d", got->n, more);
	EXPECT_EMPTY_LISTING(p, '\0');
	EXPECT_EMPTY_LISTING(key(t, "k/"), '/');
	EXPECT_EMPTY_LISTING(key(t, "kk"), '\0');
	EXPECT_EMPTY_LISTING(KEYLIT("k\0"), '\0');
}

static void t_list_sizes_match_values(struct t *t)
{
	static const struct want want[] = {
		WK("d/x", 100), WK("e", 0), WK("f", 1), WK("g", 70000),
	};
	static const struct want want_delim[] = { WP("d/"), WK("e", 0), WK("f", 1), WK("g", 70000) };

	if (t->lim.max_value && t->lim.max_value < 70000)
		SKIP("max_value %zu is below the 70000 bytes this test writes", t->lim.max_value);
	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		SET(keyn(t, want[i].suffix, want[i].n), pattern(t, want[i].size, i), want[i].size);
	EXPECT_LISTING(root(t), '\0', want);
	EXPECT_LISTING(root(t), '/', want_delim);
}

static void t_list_byte_order_is_unsigned(struct t *t)
{
	static const struct want want[] = {
		WK("\x01", 1), WK("A", 2), WK("a", 3), WK("\x7f", 4), WK("\x80", 5), WK("\xfe", 6),
		WK("\xff", 7), WK("\xff\x00", 8), WK("\xff\xff", 9),
	};
	struct items *got = items_new(t);

	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		SET(keyn(t, want[i].suffix, want[i].n), pattern(t, want[i].size, i), want[i].size);
	EXPECT_RC(kv_list_all(t->s, t->pfx, t->plen, '\0', collect_cb, got), 0);
	EXPECT(got->n == ARRAY_SIZE(want), "kv_list_all: %zu items, expected %zu", got->n,
	       ARRAY_SIZE(want));
	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		EXPECT(bytecmp(got->v[i].key + t->plen, got->v[i].len - t->plen, want[i].suffix,
			       want[i].n) == 0,
		       "item %zu is %s, expected %s (bytes compare unsigned)", i,
		       show(t, got->v[i].key, got->v[i].len),
		       SHOW(keyn(t, want[i].suffix, want[i].n)));
	EXPECT_LISTING(root(t), '\0', want);
}

static void t_list_start_and_limit(struct t *t)
{
	static const char *const names[] = { "k1", "k2", "k3", "k4", "k5" };
	struct bytes k3 = key(t, "k3"), after_k2 = KEYLIT("k2\0"), k9 = key(t, "k9");
	char *end = talloc(t, t->plen);
	struct {
		const char *start;
		size_t start_len;
		size_t limit;
		size_t first, count;  /* the expected items: names[first .. first+count) */
		bool more;            /* *more must be true (items left after a full page) */
	} cases[] = {
		{ k3.p, k3.n, 0, 2, 3, false },             /* start is inclusive */
		{ after_k2.p, after_k2.n, 0, 2, 3, false }, /* K + "\0" is the successor of K */
		{ k9.p, k9.n, 0, 0, 0, false },             /* past the last key */
		{ "\x01", 1, 0, 0, 5, false },              /* before the prefix: from the prefix on */
		{ NULL, 0, 1, 0, 1, true },
		{ k3.p, k3.n, 2, 2, 2, true },
		{ end, t->plen, 0, 0, 0, false },           /* past the whole prefix */
	};

	memcpy(end, t->pfx, t->plen);
	end[t->plen - 1]++;  /* P ends in '/': this sorts after every key under P */
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		SET_STR(key(t, names[i]), names[i]);
	for (size_t c = 0; c < ARRAY_SIZE(cases); c++) {
		struct items *got = items_new(t);
		struct kv_list_req req = {
			.prefix = t->pfx, .prefix_len = t->plen, .start = cases[c].start,
			.start_len = cases[c].start_len, .limit = cases[c].limit,
		};
		bool more = false;

		EXPECT_RC(kv_list(t->s, &req, collect_cb, got, &more), 0);
		EXPECT(got->n == cases[c].count, "case %zu: %zu items, expected %zu", c, got->n,
		       cases[c].count);
		for (size_t i = 0; i < got->n; i++) {
			struct bytes want = key(t, names[cases[c].first + i]);

			EXPECT(bytecmp(got->v[i].key, got->v[i].len, want.p, want.n) == 0,
			       "case %zu: item %zu is %s, expected %s", c, i,
			       show(t, got->v[i].key, got->v[i].len), SHOW(want));
		}
		if (cases[c].more)
			EXPECT(more, "case %zu: *more is false with items left", c);
		if (got->n == 0)
			EXPECT(!more, "case %zu: no items but *more is true", c);
	}
}

static bool put_five_keys(struct t *t)
{
	for (int i = 0; i < 5; i++) {
		char name[16];
		struct bytes k;
		int rc;

		snprintf(name, sizeof name, "k%d", i);
		k = key(t, name);
		rc = kv_set(t->s, k.p, k.n, name, strlen(name));
		if (rc)
			return fail_at(t, __FILE__, __LINE__, "kv_set %s: %s", SHOW(k), errname(rc));
	}
	return true;
}

/* kv.h: list returns "whatever cb returned if negative", any errno. */
static void t_list_callback_error_is_returned(struct t *t)
{
	struct items *got = items_new(t);
	struct kv_list_req req = { .prefix = t->pfx, .prefix_len = t->plen };
	bool more;

	TRY(put_five_keys(t));
	got->stop_at = 2;
	got->stop_rc = -EINTR;
	EXPECT_RC(kv_list(t->s, &req, collect_cb, got, &more), -EINTR);
	EXPECT(got->calls == 2, "kv_list called the callback %zu times after it failed on call 2",
	       got->calls);
	got = items_new(t);
	got->stop_at = 3;
	got->stop_rc = -EINTR;
	EXPECT_RC(kv_list_all(t->s, t->pfx, t->plen, '\0', collect_cb, got), -EINTR);
	EXPECT(got->calls == 3, "kv_list_all called the callback %zu times after it failed on call 3",
	       got->calls);
}

/* A positive return stops the listing and is not an error. */
static void t_list_callback_positive_return_stops_quietly(struct t *t)
{
	struct items *got = items_new(t);
	struct kv_list_req req = { .prefix = t->pfx, .prefix_len = t->plen };
	bool more;

	TRY(put_five_keys(t));
	got->stop_at = 1;
	got->stop_rc = 1;
	EXPECT_RC(kv_list(t->s, &req, collect_cb, got, &more), 0);
	EXPECT(got->calls == 1, "kv_list called the callback %zu times after it returned 1",
	       got->calls);
	got = items_new(t);
	got->stop_at = 2;
	got->stop_rc = 1;
	EXPECT_RC(kv_list_all(t->s, t->pfx, t->plen, '\0', collect_cb, got), 0);
	EXPECT(got->calls == 2, "kv_list_all called the callback %zu times after it returned 1",
	       got->calls);
}

static void t_list_delim_collapses_large_subtree_once(struct t *t)
{
	enum { SUBTREE = 3000 };
	static const struct want want[] = { WK("w", 1), WK("x", 2), WP("x/"), WK("y", 3) };
	size_t cap = SUBTREE + SUBTREE / 100 + 3, n = 0;
	struct bytes *keys = talloc(t, cap * sizeof *keys);
	uint64_t *sizes = talloc(t, cap * sizeof *sizes);
	struct items *got;

	keys[n] = key(t, "w"), sizes[n++] = 1;
	keys[n] = key(t, "x"), sizes[n++] = 2;
	keys[n] = key(t, "y"), sizes[n++] = 3;
	for (int i = 0; i < SUBTREE; i++) {
		char name[32];

		snprintf(name, sizeof name, "x/%04d", i);
		keys[n] = key(t, name), sizes[n++] = 4;
		if (i % 100 == 0) {
			snprintf(name, sizeof name, "x/%04d/deep", i);
			keys[n] = key(t, name), sizes[n++] = 5;
		}
	}
	PUT_KEYS(keys, sizes, n);
	EXPECT_LISTING(root(t), '/', want);
	{
		got = items_new(t);
		TRY(list_paged(t, __FILE__, __LINE__, "kv_list limit 1", root(t), '/', 1, got));
		TRY(compare_items(t, __FILE__, __LINE__, "kv_list limit 1", got,
				  want_items(t, want, ARRAY_SIZE(want))));
	}
	EXPECT_LISTING_ITEMS(key(t, "x/"), '/', model_listing(t, keys, sizes, n, key(t, "x/"), '/'));
	EXPECT_LISTING_ITEMS(root(t), '\0', model_listing(t, keys, sizes, n, root(t), '\0'));
}

/* A mixed tree for paging: nested groups, NULs, 0xff bytes. */
static size_t paging_keys(struct t *t, struct bytes *keys, uint64_t *sizes, size_t cap)
{
	static const struct want extra[] = {
		WK("p/05/x/y", 1), WK("p/07/", 2), WK("r", 3), WK("r\0", 4), WK("r\xff", 5),
		WK("r\xff\xff", 6), WK("s/\xff/", 7), WK("s/\0/t", 8), WK("s//", 9), WK("s/", 10),
		WK("t\xff/a", 11), WK("t\xff/b", 12), WK("t\xff\xff", 13),
	};
	size_t n = 0;

	for (int i = 0; i < 30 && n < cap; i++) {
		char name[16];

		snprintf(name, sizeof name, "p/%02d", i);
		keys[n] = key(t, name), sizes[n++] = i;
	}
	for (int i = 0; i < 10 && n < cap; i++) {
		char name[16];

		snprintf(name, sizeof name, "q%d", i);
		keys[n] = key(t, name), sizes[n++] = 100 + i;
	}
	for (size_t i = 0; i < ARRAY_SIZE(extra) && n < cap; i++)
		keys[n] = keyn(t, extra[i].suffix, extra[i].n), sizes[n++] = extra[i].size;
	return n;
}

static void t_list_paging_limit_7_returns_all_once_in_order(struct t *t)
{
	struct bytes keys[64];
	uint64_t sizes[ARRAY_SIZE(keys)];
	size_t n = paging_keys(t, keys, sizes, ARRAY_SIZE(keys));
	const struct bytes prefixes[] = { root(t), key(t, "p/"), key(t, "s/"), key(t, "r"),
					  KEYLIT("t\xff") };

	PUT_KEYS(keys, sizes, n);
	for (size_t i = 0; i < ARRAY_SIZE(prefixes); i++) {
		for (int d = 0; d < 2; d++) {
			char delim = d ? '/' : '\0';
			struct items *want = model_listing(t, keys, sizes, n, prefixes[i], delim);
			struct items *paged = items_new(t), *all = items_new(t);
			char what[256];

			snprintf(what, sizeof what, "kv_list(%s, %s, limit 7)", SHOW(prefixes[i]),
				 delim_name(delim));
			TRY(list_paged(t, __FILE__, __LINE__, what, prefixes[i], delim, 7, paged));
			TRY(compare_items(t, __FILE__, __LINE__, what, paged, want));
			snprintf(what, sizeof what, "kv_list_all(%s, %s)", SHOW(prefixes[i]),
				 delim_name(delim));
			EXPECT_RC(kv_list_all(t->s, prefixes[i].p, prefixes[i].n, delim, collect_cb,
					      all), 0);
			TRY(compare_items(t, __FILE__, __LINE__, what, all, want));
		}
	}
}

static void t_list_all_returns_every_item(struct t *t)
{
	struct bytes keys[64];
	uint64_t sizes[ARRAY_SIZE(keys)];
	size_t n = paging_keys(t, keys, sizes, ARRAY_SIZE(keys));

	PUT_KEYS(keys, sizes, n);
	EXPECT_LISTING_ITEMS(root(t), '\0', model_listing(t, keys, sizes, n, root(t), '\0'));
	EXPECT_LISTING_ITEMS(root(t), '/', model_listing(t, keys, sizes, n, root(t), '/'));
	EXPECT_LISTING_ITEMS(key(t, "p/"), '/', model_listing(t, keys, sizes, n, key(t, "p/"), '/'));
}

/* ---- Compare-and-swap ---- */

static void t_cas_with_current_version_succeeds_stale_fails(struct t *t)
{
	struct bytes k = key(t, "k");
	uint64_t v1, v2, v4;

	SET_STR(k, "one");
	GET_VERSION(k, &v1);
	EXPECT_RC(kv_cas(t->s, k.p, k.n, v1, "two", 3), 0);
	EXPECT_STR(k, "two");
	GET_VERSION(k, &v2);
	EXPECT(v2 != v1, "the version did not change when cas changed the value");
	EXPECT_RC(kv_cas(t->s, k.p, k.n, v1, "three", 5), -ECANCELED);
	EXPECT_STR(k, "two");
	SET_STR(k, "four");
	GET_VERSION(k, &v4);
	EXPECT(v4 != v2, "the version did not change when set changed the value");
	EXPECT_RC(kv_cas(t->s, k.p, k.n, v2, "five", 4), -ECANCELED);
	EXPECT_STR(k, "four");
	EXPECT_RC(kv_cas(t->s, k.p, k.n, v4, "six", 3), 0);
	EXPECT_STR(k, "six");
}

static void t_cas_version_0_creates_only_if_missing(struct t *t)
{
	struct bytes k = key(t, "k"), e = key(t, "empty");

	EXPECT_RC(kv_cas(t->s, k.p, k.n, 0, "new", 3), 0);
	EXPECT_STR(k, "new");
	EXPECT_RC(kv_cas(t->s, k.p, k.n, 0, "again", 5), -ECANCELED);
	EXPECT_STR(k, "new");
	EXPECT_RC(kv_cas(t->s, e.p, e.n, 0, "", 0), 0);
	EXPECT_VALUE(e, "", 0);
	EXPECT_RC(kv_cas(t->s, e.p, e.n, 0, "x", 1), -ECANCELED);
	EXPECT_VALUE(e, "", 0);
}

static void t_cas_on_deleted_key_is_ecanceled(struct t *t)
{
	struct bytes k = key(t, "k");
	uint64_t version;

	SET_STR(k, "v");
	GET_VERSION(k, &version);
	EXPECT_RC(kv_del(t->s, k.p, k.n), 0);
	EXPECT_RC(kv_cas(t->s, k.p, k.n, version, "w", 1), -ECANCELED);
	EXPECT_MISSING(k);
	EXPECT_RC(kv_cas(t->s, k.p, k.n, 0, "w", 1), 0);
	EXPECT_STR(k, "w");
}

struct incrementer {
	struct kv_store *s;
	struct bytes k;
	int count;
	int fail_line;
	char detail[200];
};

/* Add one to a decimal counter `count` times by get + cas, retrying on -ECANCELED. */
static void *incrementer_main(void *arg)
{
	struct incrementer *w = arg;

	for (int i = 0; i < w->count; i++) {
		for (long tries = 0;; tries++) {
			char *v = NULL, next[32];
			size_t n = 0;
			uint64_t version = 0;
			unsigned long value;
			int rc;

			if (tries == 100000) {
				w->fail_line = __LINE__;
				snprintf(w->detail, sizeof w->detail, "no cas succeeded in %ld tries", tries);
				return NULL;
			}
			rc = kv_get(w->s, w->k.p, w->k.n, &v, &n, &version);
			if (rc) {
				w->fail_line = __LINE__;
				snprintf(w->detail, sizeof w->detail, "kv_get: %s", errname(rc));
				return NULL;
			}
			value = strtoul(v, NULL, 10);
			free(v);
			snprintf(next, sizeof next, "%lu", value + 1);
			rc = kv_cas(w->s, w->k.p, w->k.n, version, next, strlen(next));
			if (rc == 0)
				break;
			if (rc != -ECANCELED) {
				w->fail_line = __LINE__;
				snprintf(w->detail, sizeof w->detail, "kv_cas: %s", errname(rc));
				return NULL;
			}
		}
	}
	return NULL;
}

static void t_cas_concurrent_increments_lose_nothing(struct t *t)
{
	enum { THREADS = 4, EACH = 100 };
	struct incrementer w[THREADS];
	pthread_t tid[THREADS];
	int started = 0, err = 0;
	struct bytes counter = key(t, "counter");
	char total[16];

	EXPECT_RC(kv_cas(t->s, counter.p, counter.n, 0, "0", 1), 0);
	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct incrementer){ .s = t->s, .k = counter, .count = EACH };
		err = pthread_create(&tid[i], NULL, incrementer_main, &w[i]);
		if (err)
			break;
		started++;
	}
	for (int i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	EXPECT(started == THREADS, "pthread_create: %s", strerror(err));
	for (int i = 0; i < THREADS; i++)
		if (w[i].fail_line)
			TRY(fail_at(t, __FILE__, w[i].fail_line, "thread %d: %s", i, w[i].detail));
	snprintf(total, sizeof total, "%d", THREADS * EACH);
	EXPECT_STR(counter, total);
}

/* ---- Apply ---- */

static void t_apply_sets_and_deletes_together(struct t *t)
{
	struct bytes k1 = key(t, "k1"), k2 = key(t, "k2"), k3 = key(t, "k3");
	const struct kv_op ops[] = {
		{ .type = KV_OP_SET, .key = k3.p, .key_len = k3.n, .val = "c", .val_len = 1 },
		{ .type = KV_OP_DEL, .key = k1.p, .key_len = k1.n },
		{ .type = KV_OP_SET, .key = k2.p, .key_len = k2.n, .val = "bb\0", .val_len = 3 },
	};

	SET_STR(k1, "a");
	SET_STR(k2, "b");
	EXPECT_RC(kv_apply(t->s, ops, ARRAY_SIZE(ops)), 0);
	EXPECT_MISSING(k1);
	EXPECT_VALUE(k2, "bb\0", 3);
	EXPECT_STR(k3, "c");
}

static void t_apply_delete_of_missing_key_is_not_error(struct t *t)
{
	struct bytes gone = key(t, "gone"), k = key(t, "k");
	const struct kv_op only_del[] = { { .type = KV_OP_DEL, .key = gone.p, .key_len = gone.n } };
	const struct kv_op del_then_set[] = {
		{ .type = KV_OP_DEL, .key = gone.p, .key_len = gone.n },
		{ .type = KV_OP_SET, .key = k.p, .key_len = k.n, .val = "v", .val_len = 1 },
	};

	EXPECT_RC(kv_apply(t->s, only_del, ARRAY_SIZE(only_del)), 0);
	EXPECT_RC(kv_apply(t->s, del_then_set, ARRAY_SIZE(del_then_set)), 0);
	EXPECT_STR(k, "v");
	EXPECT_MISSING(gone);
}

static void t_apply_ops_take_effect_in_order(struct t *t)
{
	struct bytes k = key(t, "k"), j = key(t, "j");
	const struct kv_op set_set[] = {
		{ .type = KV_OP_SET, .key = k.p, .key_len = k.n, .val = "a", .val_len = 1 },
		{ .type = KV_OP_SET, .key = k.p, .key_len = k.n, .val = "b", .val_len = 1 },
	};
	const struct kv_op set_del[] = {
		{ .type = KV_OP_SET, .key = j.p, .key_len = j.n, .val = "x", .val_len = 1 },
		{ .type = KV_OP_DEL, .key = j.p, .key_len = j.n },
	};
	const struct kv_op del_set[] = {
		{ .type = KV_OP_DEL, .key = k.p, .key_len = k.n },
		{ .type = KV_OP_SET, .key = k.p, .key_len = k.n, .val = "c", .val_len = 1 },
	};

	EXPECT_RC(kv_apply(t->s, set_set, ARRAY_SIZE(set_set)), 0);
	EXPECT_STR(k, "b");
	EXPECT_RC(kv_apply(t->s, set_del, ARRAY_SIZE(set_del)), 0);
	EXPECT_MISSING(j);
	EXPECT_RC(kv_apply(t->s, del_set, ARRAY_SIZE(del_set)), 0);
	EXPECT_STR(k, "c");
}

static void t_apply_of_nothing_succeeds(struct t *t)
{
	struct kv_op none[1] = { { .type = KV_OP_DEL } };

	EXPECT_RC(kv_apply(t->s, none, 0), 0);
}

/*
 * An operation the store must refuse, to make an apply fail: with
 * --refused-key, a write the server refuses (EIO); with --full-at, a value
 * the store itself refuses as full (either way the refusal comes from
 * inside the backend's apply, so its rollback runs); else a value one
 * byte over max_value, else a key one byte over max_key (refused by the
 * dispatch layer before the backend runs).  Returns the expected errno, or
 * 0 when there is no way to make the store refuse.
 */
static int over_limit_op(struct t *t, struct kv_op *op)
{
	if (t->su->refused) {
		struct bytes k = key(t, t->su->refused);

		*op = (struct kv_op){ .type = KV_OP_SET, .key = k.p, .key_len = k.n,
			.val = "v", .val_len = 1 };
		return -EIO;
	}
	if (t->su->full_at && t->su->full_at < MAX_ALLOC) {
		struct bytes k = key(t, "full");

		*op = (struct kv_op){ .type = KV_OP_SET, .key = k.p, .key_len = k.n,
			.val = pattern(t, t->su->full_at, 5), .val_len = t->su->full_at };
		return -ENOSPC;
	}
	if (t->lim.max_value && t->lim.max_value < MAX_ALLOC) {
		struct bytes k = key(t, "over");

		*op = (struct kv_op){ .type = KV_OP_SET, .key = k.p, .key_len = k.n,
			.val = pattern(t, t->lim.max_value + 1, 5), .val_len = t->lim.max_value + 1 };
		return -EFBIG;
	}
	if (t->lim.max_key && t->lim.max_key < MAX_ALLOC && t->lim.max_key >= t->plen) {
		char *k = talloc(t, t->lim.max_key + 1);

		memcpy(k, t->pfx, t->plen);
		memset(k + t->plen, 'o', t->lim.max_key + 1 - t->plen);
		*op = (struct kv_op){ .type = KV_OP_SET, .key = k, .key_len = t->lim.max_key + 1,
			.val = "v", .val_len = 1 };
		return -ENAMETOOLONG;
	}
	return 0;
}

static void t_apply_is_atomic_on_failure(struct t *t)
{
	struct bytes k1 = key(t, "k1"), k2 = key(t, "k2"), k3 = key(t, "k3"), k4 = key(t, "k4");
	struct kv_op ops[] = {
		{ .type = KV_OP_SET, .key = k1.p, .key_len = k1.n, .val = "new", .val_len = 3 },
		{ .type = KV_OP_SET, .key = k2.p, .key_len = k2.n, .val = "x", .val_len = 1 },
		{ .type = KV_OP_DEL, .key = k3.p, .key_len = k3.n },
		{ .type = KV_OP_SET },  /* the refused one, filled below */
		{ .type = KV_OP_SET, .key = k4.p, .key_len = k4.n, .val = "y", .val_len = 1 },
	};
	int want = over_limit_op(t, &ops[3]);

	if (!want)
		SKIP("no key or value limit to make an apply fail");
	struct bytes refused = { ops[3].key, ops[3].key_len };

	SET_STR(k1, "old");
	SET_STR(k3, "keep");
	if (want == -ENOSPC)  /* the refused write replaces a value, which must stay */
		SET_STR(refused, "small");
	EXPECT_RC(kv_apply(t->s, ops, ARRAY_SIZE(ops)), want);
	EXPECT_STR(k1, "old");
	EXPECT_MISSING(k2);
	EXPECT_STR(k3, "keep");
	EXPECT_MISSING(k4);
	if (want == -ENOSPC)
		EXPECT_STR(refused, "small");
	else
		EXPECT_MISSING(refused);
}

/* Without KV_CAP_TXN an apply runs in order and stops at the first error. */
static void t_apply_stops_at_first_error(struct t *t)
{
	struct bytes k1 = key(t, "k1"), k2 = key(t, "k2");
	struct kv_op ops[] = {
		{ .type = KV_OP_SET, .key = k1.p, .key_len = k1.n, .val = "a", .val_len = 1 },
		{ .type = KV_OP_SET },
		{ .type = KV_OP_SET, .key = k2.p, .key_len = k2.n, .val = "b", .val_len = 1 },
	};
	int want = over_limit_op(t, &ops[1]);

	if (!want)
		SKIP("no key or value limit to make an apply fail");
	EXPECT_RC(kv_apply(t->s, ops, ARRAY_SIZE(ops)), want);
	EXPECT_MISSING(k2);
	if (t->caps & KV_CAP_TXN)
		EXPECT_MISSING(k1);
}

/* ---- Health, statfs, sync ---- */

static void t_health_answers_and_fills_detail(struct t *t)
{
	struct kv_health h;

	memset(&h, 0, sizeof h);
	memset(h.detail, 'X', sizeof h.detail);
	EXPECT_RC(kv_health(t->s, &h), 0);
	EXPECT(memchr(h.detail, '\0', sizeof h.detail), "detail is not NUL-terminated");
	EXPECT(h.detail[0] != '\0', "detail is empty");
	EXPECT(h.nfacts <= KV_HEALTH_MAX_FACTS, "nfacts is %zu", h.nfacts);
	for (size_t i = 0; i < h.nfacts; i++) {
		EXPECT(memchr(h.facts[i].name, '\0', sizeof h.facts[i].name) && h.facts[i].name[0],
		       "fact %zu has an empty or unterminated name", i);
		EXPECT(memchr(h.facts[i].value, '\0', sizeof h.facts[i].value),
		       "fact %zu has an unterminated value", i);
	}
}

static void t_statfs_succeeds_or_enotsup(struct t *t)
{
	struct kv_statfs st;
	int rc;

	memset(&st, 0, sizeof st);
	rc = kv_statfs(t->s, &st);
	EXPECT(rc == 0 || rc == -ENOTSUP, "kv_statfs: expected 0 or -ENOTSUP, got %s", errname(rc));
	if (rc == 0 && st.total_bytes)
		EXPECT(st.free_bytes <= st.total_bytes, "free_bytes %" PRIu64 " > total_bytes %" PRIu64,
		       st.free_bytes, st.total_bytes);
}

static void t_sync_succeeds_or_enotsup(struct t *t)
{
	int rc = kv_sync(t->s);

	if (t->caps & KV_CAP_SYNC)
		EXPECT(rc == 0, "kv_sync with KV_CAP_SYNC: expected 0, got %s", errname(rc));
	else
		EXPECT(rc == 0 || rc == -ENOTSUP, "kv_sync: expected 0 or -ENOTSUP, got %s",
		       errname(rc));
}

static void t_sync_after_writes_keeps_them(struct t *t)
{
	SET_STR(key(t, "a"), "1");
	EXPECT_RC(kv_del(t->s, key(t, "a").p, key(t, "a").n), 0);
	SET_STR(key(t, "b"), "2");
	EXPECT_RC(kv_sync(t->s), 0);
	EXPECT_MISSING(key(t, "a"));
	EXPECT_STR(key(t, "b"), "2");
}

/* ---- Many threads at once ---- */

enum { NTHREADS = 8, NOPS = 500, OWN_KEYS = 16, SHARED_KEYS = 8, TVAL_MAX = 8 + 600 };

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* A value that names its writer (tag) and checks itself, so torn reads show. */
static size_t tval_len(uint64_t tag)
{
	return 8 + mix64(tag) % (TVAL_MAX - 8);
}

static size_t tval_make(uint64_t tag, char *buf)
{
	size_t len = tval_len(tag);
	uint64_t h = mix64(tag ^ 0x5bd1e995);

	for (size_t i = 0; i < 8; i++)
		buf[i] = (char)(tag >> (8 * i));
	for (size_t i = 8; i < len; i++)
		buf[i] = (char)((h >> (8 * (i % 8))) ^ i);
	return len;
}

static bool tval_valid(const char *v, size_t len)
{
	char want[TVAL_MAX];
	uint64_t tag = 0;

	if (len < 8)
		return false;
	for (size_t i = 0; i < 8; i++)
		tag |= (uint64_t)(unsigned char)v[i] << (8 * i);
	return tval_make(tag, want) == len && memcmp(v, want, len) == 0;
}

struct worker {
	struct kv_store *s;
	const char *pfx;
	size_t plen;
	int id;
	uint64_t rng;
	uint32_t seq;
	struct { bool present; uint64_t tag; } own[OWN_KEYS];
	int fail_line;
	char detail[320];
};

#define WFAIL(w, ...) do {                                               \
		(w)->fail_line = __LINE__;                               \
		snprintf((w)->detail, sizeof (w)->detail, __VA_ARGS__);  \
		return false;                                            \
	} while (0)

static uint32_t worker_rand(struct worker *w)
{
	w->rng ^= w->rng << 13;
	w->rng ^= w->rng >> 7;
	w->rng ^= w->rng << 17;
	return (uint32_t)(w->rng >> 16);
}

/* P + a formatted suffix into buf (the threads use ASCII keys only). */
static size_t worker_key(const struct worker *w, char *buf, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static size_t worker_key(const struct worker *w, char *buf, size_t cap, const char *fmt, ...)
{
	va_list ap;
	int n;

	memcpy(buf, w->pfx, w->plen);
	va_start(ap, fmt);
	n = vsnprintf(buf + w->plen, cap - w->plen, fmt, ap);
	va_end(ap);
	return w->plen + n;
}

/* Parse a whole decimal suffix below limit; -1 if it is anything else. */
static int parse_index(const char *s, size_t n, unsigned limit)
{
	unsigned v = 0;

	if (n == 0 || n > 4 || (n > 1 && s[0] == '0'))
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v < limit ? (int)v : -1;
}

enum wlist_kind { L_OWN, L_SHARED, L_ROOT };

struct wlist {
	const struct worker *w;
	enum wlist_kind kind;
	size_t plen;         /* length of the listed prefix */
	uint32_t seen;       /* bit per key index, or per group for L_ROOT */
	char bad[200];
};

static int wlist_cb(void *ctx, const struct kv_entry *e)
{
	struct wlist *l = ctx;
	const char *rest;
	size_t rn;
	int idx = -1;

	if (e->key_len < l->plen) {
		snprintf(l->bad, sizeof l->bad, "an item shorter than the prefix");
		return -EBADMSG;
	}
	rest = e->key + l->plen;
	rn = e->key_len - l->plen;
	if (l->kind == L_ROOT) {
		/* Only the groups "shared/" (bit 0) and "own-<i>/" (bit i + 1) live here. */
		if (rn == 7 && memcmp(rest, "shared/", 7) == 0) {
			idx = 0;
		} else if (rn > 5 && memcmp(rest, "own-", 4) == 0 && rest[rn - 1] == '/') {
			idx = parse_index(rest + 4, rn - 5, NTHREADS);
			if (idx >= 0)
				idx++;
		}
		if (idx < 0 || !e->is_prefix) {
			snprintf(l->bad, sizeof l->bad, "unexpected item %.*s (is_prefix %d)",
				 (int)(rn > 40 ? 40 : rn), rest, e->is_prefix);
			return -EBADMSG;
		}
	} else {
		idx = parse_index(rest, rn, l->kind == L_OWN ? OWN_KEYS : SHARED_KEYS);
		if (idx < 0 || e->is_prefix) {
			snprintf(l->bad, sizeof l->bad, "unexpected item %.*s (is_prefix %d)",
				 (int)(rn > 40 ? 40 : rn), rest, e->is_prefix);
			return -EBADMSG;
		}
		if (l->kind == L_OWN && (!l->w->own[idx].present ||
					 e->size != tval_len(l->w->own[idx].tag))) {
			snprintf(l->bad, sizeof l->bad, "own key %d listed with size %" PRIu64
				 " but it is %s", idx, e->size,
				 l->w->own[idx].present ? "of another size" : "deleted");
			return -EBADMSG;
		}
		if (l->kind == L_SHARED && (e->size < 8 || e->size >= TVAL_MAX)) {
			snprintf(l->bad, sizeof l->bad, "shared key %d listed with size %" PRIu64,
				 idx, e->size);
			return -EBADMSG;
		}
	}
	if (l->seen & (1u << idx)) {
		snprintf(l->bad, sizeof l->bad, "item %.*s listed twice", (int)(rn > 40 ? 40 : rn), rest);
		return -EBADMSG;
	}
	l->seen |= 1u << idx;
	return 0;
}

static bool worker_list(struct worker *w, enum wlist_kind kind, char delim)
{
	char p[512];
	size_t plen;
	struct wlist l = { .w = w, .kind = kind };
	int rc;

	if (kind == L_OWN)
		plen = worker_key(w, p, sizeof p, "own-%d/", w->id);
	else if (kind == L_SHARED)
		plen = worker_key(w, p, sizeof p, "shared/");
	else
		plen = w->plen, memcpy(p, w->pfx, plen);
	l.plen = plen;
	rc = kv_list_all(w->s, p, plen, delim, wlist_cb, &l);
	if (l.bad[0])
		WFAIL(w, "listing %s: %s", kind == L_OWN ? "own keys" : kind == L_SHARED ?
		      "shared keys" : "the test prefix", l.bad);
	if (rc)
		WFAIL(w, "kv_list_all: %s", errname(rc));
	if (kind == L_OWN) {
		for (unsigned j = 0; j < OWN_KEYS; j++)
			if (w->own[j].present && !(l.seen & (1u << j)))
				WFAIL(w, "own key %u is missing from the listing", j);
	} else if (kind == L_ROOT) {
		bool any = false;

		for (unsigned j = 0; j < OWN_KEYS; j++)
			any |= w->own[j].present;
		if (any != !!(l.seen & (1u << (w->id + 1))))
			WFAIL(w, "group own-%d/ is %s the listing", w->id, any ? "missing from" : "in");
	}
	return true;
}

static size_t own_key(const struct worker *w, unsigned j, char *buf, size_t cap)
{
	return worker_key(w, buf, cap, "own-%d/%u", w->id, j);
}

static size_t shared_key(const struct worker *w, unsigned j, char *buf, size_t cap)
{
	return worker_key(w, buf, cap, "shared/%u", j);
}

/* Write a fresh self-checking value to own key j or shared key j. */
static bool worker_set(struct worker *w, bool own, unsigned j)
{
	char k[512], v[TVAL_MAX];
	size_t klen = own ? own_key(w, j, k, sizeof k) : shared_key(w, j, k, sizeof k);
	uint64_t tag = (uint64_t)(w->id + 1) << 32 | ++w->seq;
	int rc = kv_set(w->s, k, klen, v, tval_make(tag, v));

	if (rc)
		WFAIL(w, "kv_set of %s key %u: %s", own ? "own" : "shared", j, errname(rc));
	if (own) {
		w->own[j].present = true;
		w->own[j].tag = tag;
	}
	return true;
}

/* Own key j holds exactly what this thread wrote last, or is missing. */
static bool worker_check_own(struct worker *w, unsigned j)
{
	char k[512], want[TVAL_MAX], *v = NULL;
	size_t klen = own_key(w, j, k, sizeof k), n = 0;
	int rc = kv_get(w->s, k, klen, &v, &n, NULL);

	if (!w->own[j].present) {
		if (rc == 0)
			free(v);
		if (rc != -ENOENT)
			WFAIL(w, "kv_get of deleted own key %u: expected -ENOENT, got %s", j, errname(rc));
		return true;
	}
	if (rc)
		WFAIL(w, "kv_get of own key %u: %s", j, errname(rc));
	if (n != tval_make(w->own[j].tag, want) || memcmp(v, want, n) != 0) {
		free(v);
		WFAIL(w, "own key %u does not hold the value this thread wrote last", j);
	}
	free(v);
	return true;
}

static bool worker_del_own(struct worker *w, unsigned j)
{
	char k[512];
	size_t klen = own_key(w, j, k, sizeof k);
	int rc = kv_del(w->s, k, klen);

	if (rc != (w->own[j].present ? 0 : -ENOENT))
		WFAIL(w, "kv_del of own key %u (%s): got %s", j,
		      w->own[j].present ? "present" : "absent", errname(rc));
	w->own[j].present = false;
	return true;
}

/* Shared key j holds some thread's whole value, or is missing. */
static bool worker_check_shared(struct worker *w, unsigned j)
{
	char k[512], *v = NULL;
	size_t klen = shared_key(w, j, k, sizeof k), n = 0;
	int rc = kv_get(w->s, k, klen, &v, &n, NULL);
	bool ok;

	if (rc == -ENOENT)
		return true;
	if (rc)
		WFAIL(w, "kv_get of shared key %u: %s", j, errname(rc));
	ok = tval_valid(v, n);
	free(v);
	if (!ok)
		WFAIL(w, "shared key %u holds a value no thread wrote (%zu bytes)", j, n);
	return true;
}

static bool worker_del_shared(struct worker *w, unsigned j)
{
	char k[512];
	size_t klen = shared_key(w, j, k, sizeof k);
	int rc = kv_del(w->s, k, klen);

	if (rc != 0 && rc != -ENOENT)
		WFAIL(w, "kv_del of shared key %u: %s", j, errname(rc));
	return true;
}

static bool worker_step(struct worker *w)
{
	unsigned r = worker_rand(w) % 100, j = worker_rand(w);

	if (r < 25)
		return worker_set(w, true, j % OWN_KEYS);
	if (r < 40)
		return worker_check_own(w, j % OWN_KEYS);
	if (r < 50)
		return worker_del_own(w, j % OWN_KEYS);
	if (r < 65)
		return worker_set(w, false, j % SHARED_KEYS);
	if (r < 77)
		return worker_check_shared(w, j % SHARED_KEYS);
	if (r < 85)
		return worker_del_shared(w, j % SHARED_KEYS);
	if (r < 92)
		return worker_list(w, L_OWN, '\0');
	if (r < 97)
		return worker_list(w, L_SHARED, j % 2 ? '/' : '\0');
	return worker_list(w, L_ROOT, '/');
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	for (int i = 0; i < NOPS; i++)
		if (!worker_step(w))
			break;
	return NULL;
}

static void t_threads_mixed_ops_keep_state_consistent(struct t *t)
{
	struct worker *w = talloc(t, NTHREADS * sizeof *w);
	pthread_t tid[NTHREADS];
	int started = 0, err = 0;

	for (int i = 0; i < NTHREADS; i++) {
		w[i] = (struct worker){ .s = t->s, .pfx = t->pfx, .plen = t->plen, .id = i,
					.rng = 0x9e3779b97f4a7c15ULL * (i + 1) ^ (uint64_t)time(NULL) };
		err = pthread_create(&tid[i], NULL, worker_main, &w[i]);
		if (err)
			break;
		started++;
	}
	for (int i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	EXPECT(started == NTHREADS, "pthread_create: %s", strerror(err));
	for (int i = 0; i < NTHREADS; i++)
		if (w[i].fail_line)
			TRY(fail_at(t, __FILE__, w[i].fail_line, "thread %d: %s", i, w[i].detail));
	/* The final state: each thread's own keys as it left them, shared keys whole. */
	for (int i = 0; i < NTHREADS; i++) {
		bool ok = worker_list(&w[i], L_OWN, '\0') && worker_list(&w[i], L_ROOT, '/') &&
			  worker_list(&w[i], L_SHARED, '\0');

		for (unsigned j = 0; ok && j < OWN_KEYS; j++)
			ok = worker_check_own(&w[i], j);
		for (unsigned j = 0; ok && j < SHARED_KEYS; j++)
			ok = worker_check_shared(&w[i], j);
		if (!ok)
			TRY(fail_at(t, __FILE__, w[i].fail_line, "after the threads, thread %d's state: %s",
				    i, w[i].detail));
	}
}

/* ---- Opening and the store as a whole ---- */

static void t_store_reports_name_caps_and_limits(struct t *t)
{
	const char *colon = strchr(t->su->url, ':');
	const struct kv_backend *be;

	EXPECT(colon, "the URL has no scheme");
	be = kv_backend_find(t->su->url, colon - t->su->url);
	EXPECT(be, "kv_backend_find does not know the scheme of the URL that opened");
	EXPECT(kv_name(t->s) && strcmp(kv_name(t->s), be->scheme) == 0,
	       "kv_name is \"%s\", the backend's scheme is \"%s\"", kv_name(t->s) ? kv_name(t->s) : "(null)",
	       be->scheme);
	EXPECT(kv_endpoint(t->s), "kv_endpoint is NULL");
	EXPECT((t->caps & ~((KV_CAP_PERSIST << 1) - 1u)) == 0, "kv_caps has unknown bits: 0x%x", t->caps);
	EXPECT(!t->lim.max_key || !be->limits.max_key || t->lim.max_key <= be->limits.max_key,
	       "the store's max_key %zu is wider than the backend's %zu", t->lim.max_key,
	       be->limits.max_key);
	EXPECT(!t->lim.max_value || !be->limits.max_value || t->lim.max_value <= be->limits.max_value,
	       "the store's max_value %zu is wider than the backend's %zu", t->lim.max_value,
	       be->limits.max_value);
}

static void t_open_unknown_scheme_is_einval(struct t *t)
{
	static const char *const urls[] = { "no-such-backend-conformance:/x", "no-colon-at-all" };

	for (size_t i = 0; i < ARRAY_SIZE(urls); i++) {
		struct kv_store *s = NULL;
		char err[256] = "";
		int rc = kv_open(urls[i], NULL, 0, t->su->timeout_ms, &s, err, sizeof err);

		if (rc == 0)
			kv_close(s);
		EXPECT(rc == -EINVAL, "kv_open(\"%s\"): expected -EINVAL, got %s", urls[i], errname(rc));
		EXPECT(err[0], "kv_open(\"%s\") failed without a message", urls[i]);
	}
}

static void t_open_unknown_option_is_einval(struct t *t)
{
	struct kv_option *opts = talloc(t, (t->su->nopts + 1) * sizeof *opts);
	struct kv_store *s = NULL;
	char err[256] = "";
	int rc;

	if (t->su->nopts)
		memcpy(opts, t->su->opts, t->su->nopts * sizeof *opts);
	opts[t->su->nopts] = (struct kv_option){ "no-such-option-conformance", "1" };
	rc = kv_open(t->su->url, opts, t->su->nopts + 1, t->su->timeout_ms, &s, err, sizeof err);
	if (rc == 0)
		kv_close(s);
	EXPECT(rc == -EINVAL, "kv_open with an unknown option: expected -EINVAL, got %s", errname(rc));
	EXPECT(err[0], "kv_open with an unknown option failed without a message");
}

/* Last in the table: it closes the store and opens it again. */
static void t_reopen_keeps_data(struct t *t)
{
	struct bytes k = key(t, "k"), gone = key(t, "gone");
	char err[256] = "";
	struct kv_store *s = NULL;
	int rc;

	SET_STR(k, "persists");
	SET_STR(gone, "x");
	EXPECT_RC(kv_del(t->s, gone.p, gone.n), 0);
	kv_close(t->s);
	t->s = t->su->s = NULL;
	rc = kv_open(t->su->url, t->su->opts, t->su->nopts, t->su->timeout_ms, &s, err, sizeof err);
	EXPECT(rc == 0, "reopening %s: %s: %s", t->su->url, errname(rc), err);
	t->s = t->su->s = s;
	EXPECT_STR(k, "persists");
	EXPECT_MISSING(gone);
}

/* ---- The runner ---- */

struct test {
	const char *name;
	void (*fn)(struct t *t);
	unsigned needs;  /* kv_caps bits the test needs */
};

#define TEST(fn, needs) { #fn, fn, needs }

static const struct test tests[] = {
	TEST(t_store_reports_name_caps_and_limits, 0),
	TEST(t_get_missing_key_is_enoent, 0),
	TEST(t_del_missing_key_is_enoent, 0),
	TEST(t_set_then_get_returns_value, 0),
	TEST(t_empty_value_is_stored, 0),
	TEST(t_empty_key_works_or_is_refused_cleanly, 0),
	TEST(t_overwrite_replaces_value, 0),
	TEST(t_set_del_get_is_enoent, 0),
	TEST(t_stat_matches_value_size, 0),
	TEST(t_binary_keys_all_byte_values, 0),
	TEST(t_binary_values_all_byte_values, 0),
	TEST(t_keys_differing_after_nul_are_distinct, 0),
	TEST(t_value_at_max_value_and_one_over, 0),
	TEST(t_value_over_max_value_is_efbig, 0),
	TEST(t_key_at_max_key_and_one_over, 0),
	TEST(t_list_prefix_a_without_delim, 0),
	TEST(t_list_prefix_a_with_delim_groups_once, 0),
	TEST(t_list_prefix_a_slash_without_delim, 0),
	TEST(t_list_prefix_a_slash_with_delim, 0),
	TEST(t_list_missing_prefix_is_empty, 0),
	TEST(t_list_sizes_match_values, 0),
	TEST(t_list_byte_order_is_unsigned, 0),
	TEST(t_list_start_and_limit, 0),
	TEST(t_list_callback_error_is_returned, 0),
	TEST(t_list_callback_positive_return_stops_quietly, 0),
	TEST(t_list_delim_collapses_large_subtree_once, 0),
	TEST(t_list_paging_limit_7_returns_all_once_in_order, 0),
	TEST(t_list_all_returns_every_item, 0),
	TEST(t_cas_with_current_version_succeeds_stale_fails, KV_CAP_CAS),
	TEST(t_cas_version_0_creates_only_if_missing, KV_CAP_CAS),
	TEST(t_cas_on_deleted_key_is_ecanceled, KV_CAP_CAS),
	TEST(t_cas_concurrent_increments_lose_nothing, KV_CAP_CAS),
	TEST(t_apply_sets_and_deletes_together, 0),
	TEST(t_apply_delete_of_missing_key_is_not_error, 0),
	TEST(t_apply_ops_take_effect_in_order, 0),
	TEST(t_apply_of_nothing_succeeds, 0),
	TEST(t_apply_is_atomic_on_failure, KV_CAP_TXN),
	TEST(t_apply_stops_at_first_error, 0),
	TEST(t_health_answers_and_fills_detail, 0),
	TEST(t_statfs_succeeds_or_enotsup, 0),
	TEST(t_sync_succeeds_or_enotsup, 0),
	TEST(t_sync_after_writes_keeps_them, KV_CAP_SYNC),
	TEST(t_threads_mixed_ops_keep_state_consistent, 0),
	TEST(t_open_unknown_scheme_is_einval, 0),
	TEST(t_open_unknown_option_is_einval, 0),
	TEST(t_reopen_keeps_data, KV_CAP_PERSIST),
};

static const char *cap_name(unsigned cap)
{
	switch (cap) {
	case KV_CAP_ORDERED: return "KV_CAP_ORDERED";
	case KV_CAP_CAS: return "KV_CAP_CAS";
	case KV_CAP_TXN: return "KV_CAP_TXN";
	case KV_CAP_SYNC: return "KV_CAP_SYNC";
	case KV_CAP_PERSIST: return "KV_CAP_PERSIST";
	default: return "an unknown capability";
	}
}

/* Collect every key under prefix, delete them in batches, and count what is left. */
static int delete_prefix(struct kv_store *s, const char *prefix, size_t plen, size_t *left,
			 char *sample, size_t samplen)
{
	enum { BATCH = 256 };
	struct items *it = calloc(1, sizeof *it);
	struct kv_op ops[BATCH];
	int rc;

	if (!it)
		die_oom();
	rc = kv_list_all(s, prefix, plen, '\0', collect_cb, it);
	for (size_t i = 0; rc == 0 && i < it->n; i += BATCH) {
		size_t m = it->n - i < BATCH ? it->n - i : BATCH;

		for (size_t j = 0; j < m; j++)
			ops[j] = (struct kv_op){ .type = KV_OP_DEL, .key = it->v[i + j].key,
						 .key_len = it->v[i + j].len };
		if (kv_apply(s, ops, m) != 0)
			for (size_t j = 0; j < m; j++)
				kv_del(s, ops[j].key, ops[j].key_len);
	}
	items_free(it);
	if (rc)
		return rc;
	it = calloc(1, sizeof *it);
	if (!it)
		die_oom();
	rc = kv_list_all(s, prefix, plen, '\0', collect_cb, it);
	*left = it->n;
	if (it->n)
		snprintf(sample, samplen, "%.*s", (int)(it->v[0].len - plen), it->v[0].key + plen);
	items_free(it);
	return rc;
}

static enum outcome run_test(struct suite *su, const struct test *tc, char *msg, size_t msglen)
{
	struct t *t = calloc(1, sizeof *t);
	enum outcome out;

	if (!t)
		die_oom();
	t->su = su;
	t->s = su->s;
	if (!t->s) {
		skip_because(t, "the store was lost by an earlier test");
	} else {
		t->lim = kv_limits(t->s);
		t->caps = kv_caps(t->s);
		t->plen = snprintf(t->pfx, sizeof t->pfx, "%s/%s/", su->ns, tc->name);
		if ((t->caps & tc->needs) != tc->needs)
			skip_because(t, "backend lacks %s", cap_name(tc->needs & ~t->caps));
		else
			tc->fn(t);
	}
	if (su->s && t->plen) {
		size_t left = 0;
		char sample[64] = "";
		int rc = delete_prefix(su->s, t->pfx, t->plen, &left, sample, sizeof sample);

		if (rc)
			fail_at(t, __FILE__, __LINE__, "cleanup: listing the test prefix: %s",
				errname(rc));
		else if (left)
			fail_at(t, __FILE__, __LINE__, "cleanup: %zu keys left under the test prefix, "
				"e.g. P+\"%s\"", left, sample);
	}
	for (size_t i = t->ncl; i-- > 0;)
		t->cl[i].fn(t->cl[i].p);
	free(t->cl);
	out = t->outcome;
	snprintf(msg, msglen, "%s", t->msg);
	free(t);
	return out;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvfs-conformance URL [-o name=value[,name=value...]] [--filter SUBSTR] [-v]\n"
		"Runs the backend conformance suite against the store at URL (e.g. memory: or\n"
		"lmdb:/path/to/dir).  Keys are written under conf-<pid>-<random>/ and removed.\n"
		"  -o name=value   a backend option; -o timeout=5s sets the per-call timeout\n"
		"  --filter SUBSTR run only the tests whose name contains SUBSTR\n"
		"  --full-at N     the store is set up to refuse a value of N bytes as full\n"
		"                  (memory: -o quota, lmdb: -o map_size): failed applies then\n"
		"                  fail inside the backend\n"
		"  --refused-key NAME  the server is set up to refuse to write keys ending in\n"
		"                  NAME (e.g. a CHECK constraint): failed applies fail there\n"
		"  -v              debug tracing from the backend layer\n");
}

/* Add "-o a=1,b=2" to opts; "timeout" is the generic per-call timeout. */
static int add_options(char *arg, struct kv_option **opts, size_t *nopts, int *timeout_ms)
{
	for (char *save = NULL, *o = strtok_r(arg, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(o, '=');
		const char *value = "";
		struct kv_option *grown;

		if (eq) {
			*eq = '\0';
			value = eq + 1;
		}
		if (strcmp(o, "timeout") == 0) {
			if (kv_parse_ms(value, timeout_ms) != 0) {
				fprintf(stderr, "kvfs-conformance: bad timeout \"%s\"\n", value);
				return -1;
			}
			continue;
		}
		grown = realloc(*opts, (*nopts + 1) * sizeof **opts);
		if (!grown)
			die_oom();
		*opts = grown;
		(*opts)[(*nopts)++] = (struct kv_option){ o, value };
	}
	return 0;
}

static void make_namespace(char *ns, size_t len)
{
	uint64_t r = 0;

	if (getrandom(&r, sizeof r, 0) != sizeof r)
		r = mix64((uint64_t)time(NULL) ^ (uint64_t)clock() << 32);
	snprintf(ns, len, "conf-%ld-%016" PRIx64, (long)getpid(), r);
}

static void caps_string(unsigned caps, char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	for (unsigned bit = 1; bit <= KV_CAP_PERSIST; bit <<= 1)
		if (caps & bit)
			o += snprintf(buf + o, len - o, "%s%s", o ? "," : "", cap_name(bit) + 7);
	if (!o)
		snprintf(buf, len, "none");
}

static size_t count_matching(const char *filter)
{
	size_t n = 0;

	for (size_t i = 0; i < ARRAY_SIZE(tests); i++)
		n += strstr(tests[i].name, filter) != NULL;
	return n;
}

int main(int argc, char **argv)
{
	struct suite su = { .timeout_ms = 5000 };
	struct kv_option *opts = NULL;
	size_t nopts = 0;
	const char *filter = NULL;
	char err[512] = "", caps[96], msg[768];
	int passed = 0, failed = 0, skipped = 0, rc;
	struct kv_limits lim;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "-v") == 0) {
			kv_log_set_level(KV_LOG_DEBUG);
		} else if (strcmp(a, "-o") == 0 && i + 1 < argc) {
			if (add_options(argv[++i], &opts, &nopts, &su.timeout_ms))
				return 2;
		} else if (strncmp(a, "-o", 2) == 0 && a[2]) {
			if (add_options(argv[i] + 2, &opts, &nopts, &su.timeout_ms))
				return 2;
		} else if (strcmp(a, "--filter") == 0 && i + 1 < argc) {
			filter = argv[++i];
		} else if (strncmp(a, "--filter=", 9) == 0) {
			filter = a + 9;
		} else if (strcmp(a, "--refused-key") == 0 && i + 1 < argc) {
			su.refused = argv[++i];
		} else if (strcmp(a, "--full-at") == 0 && i + 1 < argc) {
			uint64_t n;
			if (kv_parse_size(argv[++i], &n)) {
				usage(stderr);
				return 2;
			}
			su.full_at = (size_t)n;
		} else if (a[0] != '-' && !su.url) {
			su.url = a;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!su.url) {
		usage(stderr);
		return 2;
	}
	if (filter && !count_matching(filter)) {
		fprintf(stderr, "kvfs-conformance: no test name contains \"%s\"\n", filter);
		free(opts);
		return 2;
	}
	su.opts = opts;
	su.nopts = nopts;
	rc = kv_open(su.url, opts, nopts, su.timeout_ms, &su.s, err, sizeof err);
	if (rc) {
		fprintf(stderr, "kvfs-conformance: cannot open %s: %s (%s)\n", su.url, err, errname(rc));
		free(opts);
		return 1;
	}
	make_namespace(su.ns, sizeof su.ns);
	lim = kv_limits(su.s);
	caps_string(kv_caps(su.s), caps, sizeof caps);
	fprintf(stderr, "# %s (%s at %s): caps %s, max_key %zu, max_value %zu, keys under %s/\n",
		su.url, kv_name(su.s), kv_endpoint(su.s), caps, lim.max_key, lim.max_value, su.ns);

	for (size_t i = 0; i < ARRAY_SIZE(tests); i++) {
		if (filter && !strstr(tests[i].name, filter))
			continue;
		switch (run_test(&su, &tests[i], msg, sizeof msg)) {
		case T_OK:
			printf("%s ok\n", tests[i].name);
			passed++;
			break;
		case T_FAIL:
			printf("%s FAIL %s\n", tests[i].name, msg);
			failed++;
			break;
		case T_SKIP:
			printf("%s skip %s\n", tests[i].name, msg);
			skipped++;
			break;
		}
		fflush(stdout);
	}
	if (su.s) {
		size_t left = 0;
		char sample[64] = "";

		rc = delete_prefix(su.s, su.ns, strlen(su.ns), &left, sample, sizeof sample);
		if (rc || left)
			fprintf(stderr, "# cleanup of %s/: %s, %zu keys left\n", su.ns, errname(rc), left);
		kv_close(su.s);
	}
	free(opts);
	printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed ? 1 : 0;
}
