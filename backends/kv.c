/*
 * kv.c - the dispatch layer between fs/ and the backends.
 *
 * Everything every backend would otherwise repeat lives here, once:
 * finding the backend by URL scheme, checking key and value limits before
 * a call, falling back when an optional operation is missing, tracing, and
 * making sure only the documented errno values come back.
 */
#include "kv.h"
#include "keycache.h"
#include "toolkit.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- logging: backends/log.c ---- */

const char *kv_printable(const char *key, size_t klen)
{
	static __thread char buf[200];
	size_t o = 0;

	for (size_t i = 0; i < klen && o + 8 < sizeof(buf); i++) {
		unsigned char c = (unsigned char)key[i];
		if (c >= 0x20 && c < 0x7f && c != '\\')
			buf[o++] = (char)c;
		else
			o += snprintf(buf + o, sizeof(buf) - o, "\\x%02x", c);
	}
	if (o + 8 >= sizeof(buf))
		o += snprintf(buf + o, sizeof(buf) - o, "...");
	buf[o] = '\0';
	return buf;
}

/* ---- small parsers for backends and the program ---- */

const char *kv_option_get(const struct kv_open_args *a, const char *name)
{
	for (size_t i = 0; i < a->nopts; i++)
		if (strcmp(a->opts[i].name, name) == 0)
			return a->opts[i].value;
	return NULL;
}

int kv_key_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);

	if (c)
		return c;
	return alen < blen ? -1 : alen > blen;
}

bool kv_key_successor(char *p, size_t *len)
{
	while (*len && (unsigned char)p[*len - 1] == 0xff)
		(*len)--;
	if (!*len)
		return false;
	p[*len - 1]++;
	return true;
}

void kv_health_fact(struct kv_health *h, const char *name, const char *fmt, ...)
{
	va_list ap;

	if (h->nfacts >= KV_HEALTH_MAX_FACTS)
		return;
	snprintf(h->facts[h->nfacts].name, sizeof(h->facts[0].name), "%s", name);
	va_start(ap, fmt);
	vsnprintf(h->facts[h->nfacts].value, sizeof(h->facts[0].value), fmt, ap);
	va_end(ap);
	h->nfacts++;
}

int kv_parse_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGT";
	const char *u;
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end && (u = strchr(units, toupper((unsigned char)*end)))) {
		shift = 10 * (unsigned)(u - units + 1);  /* "64K", "64Ki", "64KB", "64KiB" */
		end += 1 + (end[1] == 'i');
		end += *end == 'B' || *end == 'b';
	}
	if (errno || *end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

int kv_parse_ms(const char *s, int *out)
{
	char *end;
	double v;

	if (!s || !(isdigit((unsigned char)*s) || *s == '.'))
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);  /* not negative: it starts with a digit or '.' */
	if (strcmp(end, "s") == 0 || *end == '\0')
		v *= 1000;
	else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
		v *= 60000;
	else if (strcmp(end, "ms") != 0)
		return -EINVAL;
	if (errno || v > 24.0 * 3600 * 1000)
		return -EINVAL;
	*out = (int)v;
	return 0;
}

static int option_refused(const struct kv_open_args *a, const char *name, const char *v,
			  const char *example, char *err, size_t errlen)
{
	snprintf(err, errlen, "%.*s: bad %s '%s' (%s)", (int)strcspn(a->url, ":"), a->url, name, v,
		 example);
	return -EINVAL;
}

int kv_option_size(const struct kv_open_args *a, const char *name, uint64_t min, uint64_t max,
		   uint64_t *out, char *err, size_t errlen)
{
	const char *v = kv_option_get(a, name);
	char example[96];
	uint64_t n;

	if (!v)
		return 0;
	if (kv_parse_size(v, &n) || n < min || n > max) {
		if (max < (uint64_t)1 << 40)
			snprintf(example, sizeof example, "a size from %" PRIu64 " to %" PRIu64
				 " bytes, e.g. 64K", min, max);
		else
			snprintf(example, sizeof example, "a size such as 64M, at least %" PRIu64
				 " bytes", min);
		return option_refused(a, name, v, example, err, errlen);
	}
	*out = n;
	return 0;
}

int kv_option_ms(const struct kv_open_args *a, const char *name, int min, int max, int *out,
		 char *err, size_t errlen)
{
	const char *v = kv_option_get(a, name);
	int n;

	if (!v)
		return 0;
	if (kv_parse_ms(v, &n) || n < min || n > max)
		return option_refused(a, name, v, "a time, e.g. 500ms or 5s", err, errlen);
	*out = n;
	return 0;
}

/* ---- registry lookup ---- */

const struct kv_backend *kv_backend_find(const char *scheme, size_t len)
{
	for (size_t i = 0; kv_backends[i]; i++) {
		const struct kv_backend *be = kv_backends[i];
		const char *const *a = be->aliases;

		/* its scheme, then each alias */
		for (const char *name = be->scheme; name; name = a && *a ? *a++ : NULL)
			if (strlen(name) == len && strncasecmp(name, scheme, len) == 0)
				return be;
	}
	return NULL;
}

/* Endpoint for logs and .health: the URL without "user:password@" and
 * without a query string (which may carry secrets). */
static char *endpoint_of(const char *url)
{
	const char *auth = strstr(url, "://");
	size_t n = strcspn(url, "?"), host = n, skip = 0;
	char *out;

	if (auth && (size_t)(auth - url) < n) {
		host = (size_t)(auth + 3 - url);
		for (size_t i = host; i < n && url[i] != '/'; i++)
			if (url[i] == '@')
				skip = i + 1 - host;  /* up to the last '@' before the path */
	}
	out = malloc(n - skip + 1);
	if (out)
		snprintf(out, n - skip + 1, "%.*s%.*s", (int)host, url, (int)(n - host - skip),
			 url + host + skip);
	return out;
}

/*
 * The mount contract, the same for every backend: a store that does not
 * answer, or refuses the credentials, fails the open with one line, unless
 * -o lazy asks to mount anyway (then .health reports the store's state).
 * The probe is the backend's health(): one real round trip that writes
 * nothing.
 */
static int probe(struct kv_store *s, char *err, size_t errlen)
{
	struct kv_health h;
	char logged[300] = "";
	int rc;

	kv_log_capture(logged, sizeof(logged));
	rc = kv_health(s, &h);
	kv_log_capture(NULL, 0);
	if (rc == 0)
		return 0;
	if (rc != -EACCES)
		rc = -EIO;
	if (!h.detail[0])
		snprintf(h.detail, sizeof(h.detail), "%s", strerror(-rc));
	if (strstr(h.detail, logged))
		logged[0] = '\0';  /* said already */
	snprintf(err, errlen, "%s: %s at %s: %s%s%s%s (-o lazy mounts anyway)", s->be->scheme,
		 rc == -EACCES ? "the store refused the credentials" : "cannot reach the store",
		 s->endpoint, h.detail, logged[0] ? " (" : "", logged, logged[0] ? ")" : "");
	return rc;
}

int kv_open(const char *url, const struct kv_option *opts, size_t nopts, int timeout_ms,
	    struct kv_store **out, char *err, size_t errlen)
{
	const char *colon = strchr(url, ':');
	const struct kv_backend *be;
	struct kv_open_args args = {.url = url, .opts = opts, .nopts = nopts,
				    .timeout_ms = timeout_ms > 0 ? timeout_ms : 5000};
	struct kv_store *s = NULL;
	bool lazy = false;
	int rc, walks_ms = KV_KEYCACHE_MS;

	if (!colon || colon == url) {
		snprintf(err, errlen, "bad store URL '%s': expected scheme:location (see --backends)",
			 url);
		return -EINVAL;
	}
	be = kv_backend_find(url, (size_t)(colon - url));
	if (!be) {
		snprintf(err, errlen, "unknown store type '%.*s' (see --backends)",
			 (int)(colon - url), url);
		return -EINVAL;
	}
	/* The dispatch layer's own options; every other one must be the backend's. */
	for (size_t i = 0; i < nopts; i++) {
		const char *const *o = be->options;

		if (strcmp(opts[i].name, "lazy") == 0) {
			lazy = true;
			continue;
		}
		if (strcmp(opts[i].name, "list_timeout") == 0) {
			if (!kv_parse_ms(opts[i].value, &walks_ms))
				continue;
			snprintf(err, errlen, "bad list_timeout '%s' (seconds, e.g. 1 or 0.5)",
				 opts[i].value);
			return -EINVAL;
		}
		while (o && *o && strcmp(*o, opts[i].name))
			o++;
		if (!o || !*o) {
			snprintf(err, errlen, "%s: unknown option '%s'", be->scheme, opts[i].name);
			return -EINVAL;
		}
	}
	args.location = colon + 1;
	err[0] = '\0';
	rc = be->open(&args, &s, err, errlen);
	if (rc < 0) {
		if (!err[0])
			snprintf(err, errlen, "%s: cannot open store: %s", be->scheme, strerror(-rc));
		return rc;
	}
	s->be = be;
	s->endpoint = endpoint_of(url);
	s->keycache = be->keys && walks_ms > 0 ? keycache_new(walks_ms) : NULL;
	if (!s->endpoint || (be->keys && walks_ms > 0 && !s->keycache)) {
		kv_close(s);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (!lazy && (rc = probe(s, err, errlen))) {
		kv_close(s);
		return rc;
	}
	*out = s;
	return 0;
}

void kv_close(struct kv_store *s)
{
	char *ep;

	if (!s)
		return;
	keycache_free(s->keycache);  /* the dispatch layer's: no backend uses it */
	ep = s->endpoint;            /* a backend may log it until it is closed */
	s->be->close(s);
	free(ep);
}

struct kv_limits kv_limits(struct kv_store *s)
{
	struct kv_limits l = s->be->limits;

	if (s->be->store_limits)
		s->be->store_limits(s, &l);
	return l;
}

unsigned kv_caps(struct kv_store *s)
{
	const struct kv_backend *be = s->be;

	return (be->scan ? KV_CAP_ORDERED : 0) | (be->cas ? KV_CAP_CAS : 0) |
	       (be->apply && !kv_limits(s).max_ops ? KV_CAP_TXN : 0) |
	       (be->sync ? KV_CAP_SYNC : 0) | (be->persistent ? KV_CAP_PERSIST : 0);
}

const char *kv_name(struct kv_store *s)
{
	return s->be->scheme;
}

const char *kv_endpoint(struct kv_store *s)
{
	return s->endpoint;
}

/*
 * Every backend result passes through here: a value outside the errno set
 * kv.h documents would reach applications as a confusing error, so it is
 * logged and reported as EIO.
 */
static int checked(struct kv_store *s, const char *op, const char *key, size_t klen, int rc)
{
	switch (rc) {
	case 0: case -ENOENT: case -EIO: case -ENOMEM: case -EFBIG: case -ENAMETOOLONG:
	case -ENOSPC: case -EROFS: case -EACCES: case -ECANCELED: case -ETIMEDOUT:
	case -ENOTSUP: case -EINVAL: case -EPERM:
		break;
	default:
		kv_log(KV_LOG_WARN, "%s: %s(%s): unexpected result %d, reported as EIO",
		       s->be->scheme, op, key ? kv_printable(key, klen) : "", rc);
		rc = -EIO;
	}
	if (rc == -ETIMEDOUT)
		rc = -EIO;  /* applications see the store as failed, the log says why */
	if (rc != 0 && rc != -ENOENT && kv_log_enabled(KV_LOG_DEBUG))
		kv_log(KV_LOG_DEBUG, "%s: %s(%s): %s", s->be->scheme, op,
		       key ? kv_printable(key, klen) : "", strerror(-rc));
	return rc;
}

/* A key or value over the store's limits: -ENAMETOOLONG or -EFBIG. */
static int check(struct kv_store *s, size_t klen, size_t vlen)
{
	struct kv_limits l = kv_limits(s);

	if (l.max_key && klen > l.max_key)
		return -ENAMETOOLONG;
	return l.max_value && vlen > l.max_value ? -EFBIG : 0;
}

int kv_get(struct kv_store *s, const char *key, size_t klen, char **val, size_t *len,
	   uint64_t *version)
{
	if (check(s, klen, 0))
		return -ENOENT;  /* a key over the limit cannot exist */
	return checked(s, "get", key, klen, s->be->get(s, key, klen, val, len, version));
}

int kv_stat(struct kv_store *s, const char *key, size_t klen, uint64_t *size)
{
	char *val;
	size_t len;
	int rc;

	if (check(s, klen, 0))
		return -ENOENT;
	if (s->be->stat)
		return checked(s, "stat", key, klen, s->be->stat(s, key, klen, size));
	rc = kv_get(s, key, klen, &val, &len, NULL);
	if (rc == 0) {
		*size = len;
		free(val);
	}
	return rc;
}

/* What a write through the mount did, for the listings of an unordered
 * store: rc 0, it happened; rc > 0, nothing happened; otherwise it may or
 * may not have. */
static void noted(struct kv_store *s, const char *key, size_t klen, uint64_t size, bool gone,
		  int rc)
{
	if (!s->keycache || rc > 0)
		return;
	if (rc == 0)
		keycache_note(s, key, klen, size, gone);
	else
		keycache_forget(s);
}

int kv_set(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen)
{
	int rc = check(s, klen, vlen);

	if (rc)
		return rc;
	rc = checked(s, "set", key, klen, s->be->set(s, key, klen, val, vlen));
	noted(s, key, klen, vlen, false, rc);
	return rc;
}

int kv_del(struct kv_store *s, const char *key, size_t klen)
{
	int rc;

	if (check(s, klen, 0))
		return -ENOENT;
	rc = checked(s, "del", key, klen, s->be->del(s, key, klen));
	noted(s, key, klen, 0, true, rc == -ENOENT ? 0 : rc);
	return rc;
}

/* ---- list: one walker over every backend's scan() or keys() ---- */

/* A chunk of keys copied out of one scan() call, so that no backend holds a
 * transaction, lock or connection while the caller's callback runs. */
struct chunk_key { size_t off, len; uint64_t size; };

struct chunk {
	struct kv_buf text, keys;  /* the keys' bytes; a struct chunk_key for each */
	size_t n, max;
};

static int chunk_add(void *ctx, const char *key, size_t klen, uint64_t size)
{
	struct chunk *c = ctx;
	struct chunk_key k = {.off = c->text.len, .len = klen, .size = size};

	if (kv_buf_add(&c->text, key, klen) || kv_buf_add(&c->keys, &k, sizeof(k)))
		return -ENOMEM;
	c->n++;
	/* keys() of an unordered store delivers everything; scan() stops at max */
	return 0;
}

static const struct chunk_key *chunk_at(const struct chunk *c, size_t i)
{
	return (const struct chunk_key *)(void *)c->keys.p + i;
}

/*
 * The walk of one listing.  Keys come from the store a chunk at a time in
 * byte order; a key with the delimiter after the prefix becomes its group,
 * reported once, and the rest of the group is skipped: inside the chunk by
 * comparison, and beyond it by starting the next scan at the group's
 * successor, so a directory listing never reads a subdirectory's keys.
 */
int kv_list(struct kv_store *s, const struct kv_list_req *req, kv_list_cb *cb, void *ctx,
	    bool *more)
{
	struct kv_buf lo = {0}, hi = {0}, group = {0};
	struct chunk c = {0};
	bool has_hi, ordered = s->be->scan != NULL;
	size_t limit = req->limit ? req->limit : KV_PAGE, done = 0;
	int rc;

	*more = false;
	/* From the greater of prefix and start, below the prefix's successor. */
	if (req->start && kv_key_cmp(req->start, req->start_len, req->prefix, req->prefix_len) > 0)
		rc = kv_buf_set(&lo, req->start, req->start_len);
	else
		rc = kv_buf_set(&lo, req->prefix, req->prefix_len);
	if (rc || (rc = kv_buf_set(&hi, req->prefix, req->prefix_len)))
		goto out;
	has_hi = kv_key_successor(hi.p, &hi.len);
	/* Enough for the caller's page plus one (to know whether more follows),
	 * in chunks that bound the memory a listing holds. */
	c.max = limit < 255 ? (limit + 1 < 16 ? 16 : limit + 1) : 256;
	/* Unordered: every key under the prefix, sorted, from the walk kept or a
	 * new one; the keys below start are passed over like those of a scan. */
	if (!ordered && (rc = keycache_keys(s, req->prefix, req->prefix_len, req->delim,
					    limit <= 2, chunk_add, &c)))
		goto out;
	for (;;) {
		if (ordered && (rc = s->be->scan(s, lo.p, lo.len, has_hi ? hi.p : NULL, hi.len,
						  c.max, chunk_add, &c)))
			goto out;
		for (size_t i = 0; i < c.n; i++) {
			const struct chunk_key *ck = chunk_at(&c, i);
			const char *k = c.text.p + ck->off, *d;
			size_t klen = ck->len;
			struct kv_entry e = {.key = k, .key_len = klen, .size = ck->size};

			/* group.len: the key before was in this group (a group is never empty) */
			if (group.len && klen >= group.len && memcmp(k, group.p, group.len) == 0)
				continue;
			group.len = 0;
			d = req->delim && klen > req->prefix_len
			    ? memchr(k + req->prefix_len, req->delim, klen - req->prefix_len) : NULL;
			if (d) {
				if ((rc = kv_buf_set(&group, k, (size_t)(d - k) + 1)))
					goto out;
				e = (struct kv_entry){.key = group.p, .key_len = group.len,
						      .is_prefix = true};
			}
			if (req->start && kv_key_cmp(e.key, e.key_len, req->start, req->start_len) < 0)
				continue;
			if (done == limit) {
				*more = true;
				goto out;
			}
			done++;
			if ((rc = cb(ctx, &e))) {
				/* the caller stopped: its own error passes through unchanged */
				rc = rc < 0 ? rc : 0;
				goto stopped;
			}
		}
		if (!ordered || c.n < c.max)
			break;  /* the range is exhausted */
		/* Go on after the last key (the smallest key after it appends a NUL
		 * byte), or past the group it was in. */
		if (group.len) {
			if ((rc = kv_buf_set(&lo, group.p, group.len)))
				goto out;
			if (!kv_key_successor(lo.p, &lo.len))
				break;
		} else if ((rc = kv_buf_set(&lo, c.text.p + chunk_at(&c, c.n - 1)->off,
					    chunk_at(&c, c.n - 1)->len)) ||
			   (rc = kv_buf_add(&lo, "", 1))) {
			goto out;
		}
		if (has_hi && kv_key_cmp(lo.p, lo.len, hi.p, hi.len) >= 0)
			break;
		c.n = c.text.len = c.keys.len = 0;
	}
out:
	rc = checked(s, "list", req->prefix, req->prefix_len, rc);
stopped:
	kv_buf_free(&lo);
	kv_buf_free(&hi);
	kv_buf_free(&group);
	kv_buf_free(&c.text);
	kv_buf_free(&c.keys);
	return rc;
}

int kv_list_all(struct kv_store *s, const char *prefix, size_t plen, char delim,
		kv_list_cb *cb, void *ctx)
{
	struct kv_list_req req = {.prefix = prefix, .prefix_len = plen, .delim = delim,
				  .limit = SIZE_MAX};
	bool more;

	return kv_list(s, &req, cb, ctx, &more);
}

int kv_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
	   const char *val, size_t vlen)
{
	int rc = check(s, klen, vlen);

	if (rc)
		return rc;
	if (!s->be->cas)
		return -ENOTSUP;
	rc = checked(s, "cas", key, klen, s->be->cas(s, key, klen, version, val, vlen));
	noted(s, key, klen, vlen, false, rc == -ECANCELED ? 1 : rc);
	return rc;
}

int kv_apply(struct kv_store *s, const struct kv_op *ops, size_t n)
{
	int rc;

	/* a delete of a key over the limit deletes nothing */
	for (size_t i = 0; i < n; i++)
		if (ops[i].type == KV_OP_SET && (rc = check(s, ops[i].key_len, ops[i].val_len)))
			return rc;
	if (s->be->apply) {
		size_t max = kv_limits(s).max_ops ? kv_limits(s).max_ops : n;
		/* atomic per chunk; a failed chunk leaves the earlier ones applied */
		for (size_t i = 0; i < n; i += max) {
			size_t m = n - i < max ? n - i : max;
			rc = checked(s, "apply", NULL, 0, s->be->apply(s, ops + i, m));
			for (size_t j = i; j < i + m && rc == 0; j++)
				noted(s, ops[j].key, ops[j].key_len, ops[j].val_len,
				      ops[j].type != KV_OP_SET, 0);
			if (rc) {
				noted(s, NULL, 0, 0, false, rc);
				return rc;
			}
		}
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		if (ops[i].type == KV_OP_SET)
			rc = kv_set(s, ops[i].key, ops[i].key_len, ops[i].val, ops[i].val_len);
		else
			rc = kv_del(s, ops[i].key, ops[i].key_len);
		if (rc && rc != -ENOENT)
			return rc;
	}
	return 0;
}

int kv_sync(struct kv_store *s)
{
	if (!s->be->sync)
		return 0;  /* nothing buffered beyond what set() committed */
	return checked(s, "sync", NULL, 0, s->be->sync(s));
}

int kv_health(struct kv_store *s, struct kv_health *h)
{
	memset(h, 0, sizeof(*h));
	return checked(s, "health", NULL, 0, s->be->health(s, h));
}

int kv_statfs(struct kv_store *s, struct kv_statfs *st)
{
	memset(st, 0, sizeof(*st));
	if (!s->be->statfs)
		return -ENOTSUP;
	return checked(s, "statfs", NULL, 0, s->be->statfs(s, st));
}
