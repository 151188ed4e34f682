/*
 * kv.c - the dispatch layer between fs/ and the backends.
 *
 * Everything every backend would otherwise repeat lives here, once:
 * finding the backend by URL scheme, checking key and value limits before
 * a call, falling back when an optional operation is missing, tracing, and
 * making sure only the documented errno values come back.
 */
#include "kv.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

/* ---- logging ---- */

static enum kv_log_level log_level = KV_LOG_WARN;
static bool log_syslog;

void kv_log_to_syslog(void)
{
	openlog("kvfs", LOG_PID, LOG_DAEMON);
	log_syslog = true;
}

void kv_log_set_level(enum kv_log_level lvl)
{
	log_level = lvl;
}

void kv_log(enum kv_log_level lvl, const char *fmt, ...)
{
	static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
	char line[1024];
	va_list ap;

	if (lvl > log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (log_syslog) {
		static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
		syslog(prio[lvl], "%s", line);
		return;
	}
	/* One write per line so threads do not interleave. */
	fprintf(stderr, "kvfs: %s: %s\n", names[lvl], line);
}

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
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	switch (toupper((unsigned char)*end)) {
	case '\0': break;
	case 'K': shift = 10; end++; break;
	case 'M': shift = 20; end++; break;
	case 'G': shift = 30; end++; break;
	case 'T': shift = 40; end++; break;
	default: return -EINVAL;
	}
	if (*end == 'i' && shift)
		end++;
	if ((*end == 'B' || *end == 'b') && shift)
		end++;
	if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
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
	v = strtod(s, &end);
	if (errno || v < 0)
		return -EINVAL;
	if (strcmp(end, "ms") == 0)
		;
	else if (strcmp(end, "s") == 0 || *end == '\0')
		v *= 1000;
	else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
		v *= 60000;
	else
		return -EINVAL;
	if (v > 24.0 * 3600 * 1000)
		return -EINVAL;
	*out = (int)v;
	return 0;
}

/* ---- registry lookup ---- */

const struct kv_backend *kv_backend_find(const char *scheme, size_t len)
{
	for (size_t i = 0; kv_backends[i]; i++) {
		const struct kv_backend *be = kv_backends[i];
		if (strlen(be->scheme) == len && strncasecmp(be->scheme, scheme, len) == 0)
			return be;
		for (const char *const *a = be->aliases; a && *a; a++)
			if (strlen(*a) == len && strncasecmp(*a, scheme, len) == 0)
				return be;
	}
	return NULL;
}

/* Endpoint for logs and .health: the URL without "user:password@" and
 * without a query string (which may carry secrets). */
static char *endpoint_of(const char *url)
{
	const char *auth = strstr(url, "://");
	const char *q = strchr(url, '?');
	size_t n = q ? (size_t)(q - url) : strlen(url);
	char *out = malloc(n + 1);

	if (!out)
		return NULL;
	if (auth && (size_t)(auth - url) < n) {
		const char *host = auth + 3;
		const char *slash = memchr(host, '/', n - (size_t)(host - url));
		const char *end = slash ? slash : url + n;
		const char *at = NULL;
		for (const char *p = host; p < end; p++)
			if (*p == '@')
				at = p;
		if (at) {
			size_t head = (size_t)(host - url);
			memcpy(out, url, head);
			memcpy(out + head, at + 1, n - (size_t)(at + 1 - url));
			out[head + n - (size_t)(at + 1 - url)] = '\0';
			return out;
		}
	}
	memcpy(out, url, n);
	out[n] = '\0';
	return out;
}

int kv_open(const char *url, const struct kv_option *opts, size_t nopts, int timeout_ms,
	    struct kv_store **out, char *err, size_t errlen)
{
	const char *colon = strchr(url, ':');
	const struct kv_backend *be;
	struct kv_open_args args;
	struct kv_store *s = NULL;
	int rc;

	if (!colon || colon == url) {
		snprintf(err, errlen, "bad store URL '%s': expected scheme:location (see --backends)", url);
		return -EINVAL;
	}
	be = kv_backend_find(url, (size_t)(colon - url));
	if (!be) {
		snprintf(err, errlen, "unknown store type '%.*s' (see --backends)", (int)(colon - url), url);
		return -EINVAL;
	}
	for (size_t i = 0; i < nopts; i++) {
		bool known = false;
		for (const char *const *o = be->options; o && *o && !known; o++)
			known = strcmp(*o, opts[i].name) == 0;
		if (!known) {
			snprintf(err, errlen, "%s: unknown option '%s'", be->scheme, opts[i].name);
			return -EINVAL;
		}
	}
	args = (struct kv_open_args){
		.location = colon + 1, .url = url, .opts = opts, .nopts = nopts,
		.timeout_ms = timeout_ms > 0 ? timeout_ms : 5000,
	};
	err[0] = '\0';
	rc = be->open(&args, &s, err, errlen);
	if (rc < 0) {
		if (!err[0])
			snprintf(err, errlen, "%s: cannot open store: %s", be->scheme, strerror(-rc));
		return rc;
	}
	s->be = be;
	s->endpoint = endpoint_of(url);
	if (!s->endpoint) {
		be->close(s);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	*out = s;
	return 0;
}

void kv_close(struct kv_store *s)
{
	char *ep;

	if (!s)
		return;
	ep = s->endpoint;
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
	return s->be->caps;
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
	if (rc != 0 && rc != -ENOENT && log_level >= KV_LOG_DEBUG)
		kv_log(KV_LOG_DEBUG, "%s: %s(%s): %s", s->be->scheme, op,
		       key ? kv_printable(key, klen) : "", strerror(-rc));
	return rc;
}

static int check_key(struct kv_store *s, size_t klen)
{
	struct kv_limits l = kv_limits(s);
	return (l.max_key && klen > l.max_key) ? -ENAMETOOLONG : 0;
}

static int check_value(struct kv_store *s, size_t vlen)
{
	struct kv_limits l = kv_limits(s);
	return (l.max_value && vlen > l.max_value) ? -EFBIG : 0;
}

int kv_get(struct kv_store *s, const char *key, size_t klen, char **val, size_t *len,
	   uint64_t *version)
{
	if (check_key(s, klen))
		return -ENOENT;  /* a key over the limit cannot exist */
	return checked(s, "get", key, klen, s->be->get(s, key, klen, val, len, version));
}

int kv_stat(struct kv_store *s, const char *key, size_t klen, uint64_t *size)
{
	char *val;
	size_t len;
	int rc;

	if (check_key(s, klen))
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

int kv_set(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen)
{
	int rc = check_key(s, klen);

	if (!rc)
		rc = check_value(s, vlen);
	if (rc)
		return rc;
	return checked(s, "set", key, klen, s->be->set(s, key, klen, val, vlen));
}

int kv_del(struct kv_store *s, const char *key, size_t klen)
{
	if (check_key(s, klen))
		return -ENOENT;
	return checked(s, "del", key, klen, s->be->del(s, key, klen));
}

/* The caller's callback, watched: its own error passes through unchanged,
 * and a stop it asked for ends kv_list_all's paging too. */
struct watched_cb {
	kv_list_cb *cb;
	void *ctx;
	int rc;
};

static int watched(void *ctx, const struct kv_entry *e)
{
	struct watched_cb *w = ctx;

	w->rc = w->cb(w->ctx, e);
	return w->rc;
}

int kv_list(struct kv_store *s, const struct kv_list_req *req, kv_list_cb *cb, void *ctx,
	    bool *more)
{
	struct watched_cb w = {.cb = cb, .ctx = ctx};
	int rc;

	*more = false;
	rc = s->be->list(s, req, watched, &w, more);
	if (w.rc) {
		*more = false;
		return w.rc < 0 ? w.rc : 0;
	}
	return checked(s, "list", req->prefix, req->prefix_len, rc);
}

/* kv_list_all pages through list(); it remembers the last item to start after it. */
struct page_state {
	kv_list_cb *cb;
	void *ctx;
	char *last;
	size_t last_len, last_cap;
	bool last_is_prefix;
	size_t count;
};

static int page_cb(void *ctx, const struct kv_entry *e)
{
	struct page_state *ps = ctx;
	int rc = ps->cb(ps->ctx, e);

	if (rc)
		return rc;
	if (e->key_len + 1 > ps->last_cap) {
		char *n = realloc(ps->last, e->key_len + 1);
		if (!n)
			return -ENOMEM;
		ps->last = n;
		ps->last_cap = e->key_len + 1;
	}
	memcpy(ps->last, e->key, e->key_len);
	ps->last_len = e->key_len;
	ps->last_is_prefix = e->is_prefix;
	ps->count++;
	return 0;
}

int kv_list_all(struct kv_store *s, const char *prefix, size_t plen, char delim,
		kv_list_cb *cb, void *ctx)
{
	struct page_state ps = {.cb = cb, .ctx = ctx};
	struct kv_list_req req = {.prefix = prefix, .prefix_len = plen, .delim = delim};
	char *start = NULL;
	bool more = true;
	int rc = 0;

	while (more) {
		size_t before = ps.count;
		rc = kv_list(s, &req, page_cb, &ps, &more);
		if (rc || !more || ps.count == before || !(s->be->caps & KV_CAP_ORDERED))
			break;  /* unordered backends return everything at once */
		/* The next page starts just after the last item: after a key K at
		 * K + "\0"; after a group P ending in the delimiter, at P with its
		 * last byte plus one, which skips the whole group. */
		free(start);
		start = malloc(ps.last_len + 1);
		if (!start) {
			rc = -ENOMEM;
			break;
		}
		memcpy(start, ps.last, ps.last_len);
		req.start = start;
		req.start_len = ps.last_len;
		if (ps.last_is_prefix)
			start[ps.last_len - 1]++;
		else
			start[req.start_len++] = '\0';
	}
	free(start);
	free(ps.last);
	return rc;
}

int kv_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
	   const char *val, size_t vlen)
{
	int rc = check_key(s, klen);

	if (!rc)
		rc = check_value(s, vlen);
	if (rc)
		return rc;
	if (!s->be->cas)
		return -ENOTSUP;
	return checked(s, "cas", key, klen, s->be->cas(s, key, klen, version, val, vlen));
}

int kv_apply(struct kv_store *s, const struct kv_op *ops, size_t n)
{
	int rc;

	for (size_t i = 0; i < n; i++) {
		if (ops[i].type != KV_OP_SET)
			continue;  /* a delete of a key over the limit deletes nothing */
		if ((rc = check_key(s, ops[i].key_len)) || (rc = check_value(s, ops[i].val_len)))
			return rc;
	}
	if (s->be->apply)
		return checked(s, "apply", NULL, 0, s->be->apply(s, ops, n));
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
