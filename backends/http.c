/*
 * http.c - the HTTP stores' shared machinery (http.h).
 */
#include "kv.h"
#include "http.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A request body larger than this is a bulk transfer (see kv_http_req). */
#define HTTP_BULK_BODY ((size_t)64 << 10)

/* curl_global_init is not thread-safe: once per process, whichever store opens first. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init_once(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- the pool: CURL handles; a handle keeps its connections between calls ---- */

static int handle_new(void *ctx, int64_t deadline, void **conn)
{
	(void)ctx;
	(void)deadline;
	*conn = curl_easy_init();
	return *conn ? 0 : -ENOMEM;
}

static void handle_close(void *ctx, void *conn)
{
	(void)ctx;
	curl_easy_cleanup(conn);
}

/* no usable(): curl replaces a dead connection itself */
static const struct kv_pool_ops handle_ops = {.connect = handle_new, .close = handle_close};

int kv_http_init(struct kv_http *h, const char *name, int timeout_ms, char *err, size_t errlen)
{
	*h = (struct kv_http){.name = name, .timeout_ms = timeout_ms};
	kv_pool_init(&h->pool, name, &handle_ops, h, KV_POOL_MAX);
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_rc != CURLE_OK) {
		snprintf(err, errlen, "%s: libcurl: %s", name, curl_easy_strerror(curl_init_rc));
		return -EIO;
	}
	return kv_http_header(h, "Expect:");
}

void kv_http_destroy(struct kv_http *h)
{
	kv_pool_destroy(&h->pool);
	for (size_t i = 0; i < 4; i++)
		free(h->tls[i]);
	for (struct curl_slist *l = h->headers; l; l = l->next)
		explicit_bzero(l->data, strlen(l->data));
	curl_slist_free_all(h->headers);
	for (size_t i = 0; i < h->neps; i++)
		free(h->eps[i]);
	free(h->query_text);
}

int kv_http_header(struct kv_http *h, const char *fmt, ...)
{
	struct curl_slist *l = NULL;
	char *line;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&line, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -ENOMEM;
	l = curl_slist_append(h->headers, line);  /* copies the line */
	explicit_bzero(line, (size_t)n);
	free(line);
	if (!l)
		return -ENOMEM;
	h->headers = l;
	return 0;
}

static const char *const tls_names[4] = {"cacert", "capath", "cert", "key"};
static const CURLoption tls_options[4] = {CURLOPT_CAINFO, CURLOPT_CAPATH, CURLOPT_SSLCERT,
					  CURLOPT_SSLKEY};

int kv_http_tls(struct kv_http *h, const struct kv_open_args *a, const char *const env[4],
		char *err, size_t errlen)
{
	char line[200];

	for (size_t i = 0; i < 4; i++) {
		const char *path = env[i] ? kv_http_setting(h, a, tls_names[i], env[i]) : NULL;
		int rc;

		if (!path || !*path)
			continue;
		/* a CA directory is left to curl; the files must be there */
		if (i != 1 && (rc = kv_check_file(path, tls_names[i], line, sizeof(line)))) {
			snprintf(err, errlen, "%s: %s", h->name, line);
			return rc;
		}
		if (!(h->tls[i] = strdup(path)))
			return -ENOMEM;
	}
	return 0;
}

/* ---- one request ---- */

static size_t on_data(char *p, size_t size, size_t n, void *ctx)
{
	return kv_buf_add(ctx, p, size * n) ? 0 : size * n;
}

/* A bulk transfer ends when no byte has moved either way for a whole timeout. */
struct xfer {
	int stall_ms;
	int64_t last;
	curl_off_t moved;
	bool stalled;
};

static int on_progress(void *ctx, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	struct xfer *x = ctx;
	int64_t now = kv_now_ms();

	(void)dltotal;
	(void)ultotal;
	if (dlnow + ulnow != x->moved) {
		x->moved = dlnow + ulnow;
		x->last = now;
	}
	x->stalled = now - x->last > x->stall_ms;
	return x->stalled;
}

static void set_options(struct kv_http *h, CURL *c, const struct kv_http_req *rq,
			const char *url, const struct curl_slist *headers, int64_t deadline,
			struct kv_http_resp *r, struct xfer *x)
{
	long left = kv_ms_left(deadline);

	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(c, CURLOPT_PROXY, "");  /* never hand a token to an env proxy */
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "kvfs/" KVFS_VERSION);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->body);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	for (size_t i = 0; i < 4; i++)
		if (h->tls[i])
			curl_easy_setopt(c, tls_options[i], h->tls[i]);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, left > 0 ? left : 1L);
	if (rq->bulk || rq->blen > HTTP_BULK_BODY) {
		/* Bound the waiting, not the transfer of a large value. */
		*x = (struct xfer){.stall_ms = h->timeout_ms, .last = kv_now_ms()};
		curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
		curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
	} else {
		curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, left > 0 ? left : 1L);
	}
	if (rq->body) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->blen);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, rq->blen ? rq->body : "");
	}
	/* a body makes curl POST, none GET */
	if (strcmp(rq->method, rq->body ? "POST" : "GET") != 0)
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, rq->method);
}

/*
 * One exchange with endpoint ep on a handle from the pool: 0 (an answer,
 * in r), -ENOMEM, -ETIMEDOUT (no handle came), or -EIO with r->why;
 * *passing when another try may go better, *sent when the request may
 * have reached the store.
 */
static int exchange(struct kv_http *h, size_t ep, const struct kv_http_req *rq, int64_t deadline,
		    struct kv_http_resp *r, bool *passing, bool *sent)
{
	/* the request's own header goes first, on the stack */
	struct curl_slist auth = {.data = (char *)rq->auth, .next = h->headers};
	struct xfer x = {0};
	curl_off_t up = 0;
	CURLcode cc;
	char *url;
	bool reused;
	void *c;

	r->status = 0;
	r->body.len = 0;
	*passing = *sent = false;
	if (kv_pool_get(&h->pool, deadline, &c, &reused)) {
		snprintf(r->why, sizeof(r->why), "no free connection (-o timeout raises it)");
		return -ETIMEDOUT;
	}
	if (asprintf(&url, "%s%s", h->eps[ep], rq->path) < 0) {
		kv_pool_put(&h->pool, c, false);
		return -ENOMEM;
	}
	curl_easy_reset(c);  /* keeps the connections */
	set_options(h, c, rq, url, rq->auth ? &auth : h->headers, deadline, r, &x);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
	curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &up);
	kv_pool_put(&h->pool, c, false);
	free(url);
	*sent = cc == CURLE_OK || up > 0 || cc == CURLE_OPERATION_TIMEDOUT || x.stalled ||
		cc == CURLE_GOT_NOTHING || cc == CURLE_RECV_ERROR;
	/* an answer, or a failure that may pass: refused, or reset before an answer */
	*passing = cc == CURLE_OK || cc == CURLE_COULDNT_CONNECT ||
		   (rq->idempotent && (cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR ||
				       cc == CURLE_GOT_NOTHING));
	if (cc == CURLE_OK)
		return 0;
	if (cc == CURLE_OUT_OF_MEMORY || cc == CURLE_WRITE_ERROR)
		return -ENOMEM;
	if (cc == CURLE_OPERATION_TIMEDOUT || x.stalled)
		snprintf(r->why, sizeof(r->why), "%s for %d ms (-o timeout raises it)",
			 x.stalled ? "the transfer stalled" : "no answer", h->timeout_ms);
	else
		snprintf(r->why, sizeof(r->why), "%s", curl_easy_strerror(cc));
	return -EIO;
}

/* Log transport trouble at most once a second: a dead store under a busy
 * mount would flood the log. */
static void warn_limited(struct kv_http *h, const struct kv_http_req *rq, const char *ep,
			 const char *why)
{
	int64_t now = kv_now_ms(), last = __atomic_load_n(&h->last_warn, __ATOMIC_RELAXED);

	if (now - last >= 1000 && __atomic_compare_exchange_n(&h->last_warn, &last, now, false,
							      __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		kv_log(KV_LOG_WARN, "%s: %s %s%s: %s", h->name, rq->method, ep, rq->path, why);
}

static bool ep_down(struct kv_http *h, size_t i, int64_t now)
{
	return __atomic_load_n(&h->down_until[i], __ATOMIC_RELAXED) > now;
}

int kv_http_request(struct kv_http *h, const struct kv_http_req *rq, struct kv_http_resp *r)
{
	int64_t start = kv_now_ms(), again_until = start + h->timeout_ms;
	int64_t deadline = start + (int64_t)h->timeout_ms * (int64_t)h->neps;
	unsigned failed = 0, every = (1u << h->neps) - 1;  /* endpoints failed in this call */
	size_t tries = 0, skipped = 0, ep = __atomic_load_n(&h->cur, __ATOMIC_RELAXED) % h->neps;
	bool all_down = true, passing = true, sent;
	int rc = -EIO, round = 0;

	*r = (struct kv_http_resp){0};
	snprintf(r->why, sizeof(r->why), "timed out");
	for (size_t i = 0; i < h->neps; i++)
		all_down = all_down && ep_down(h, i, start);
	for (;;) {
		int64_t now = kv_now_ms();

		if (failed == every || (all_down && tries >= 1)) {
			/* Every endpoint failed: start over while one timeout lasts. */
			if (!passing || !kv_backoff(round++, again_until < deadline ? again_until
										     : deadline))
				break;
			failed = 0;
			all_down = false;
			continue;
		}
		if (now >= deadline || tries >= 200)
			break;
		if ((failed & 1u << ep) || (!all_down && ep_down(h, ep, now) && skipped++ < h->neps)) {
			ep = (ep + 1) % h->neps;  /* failed already, or seen down a moment ago */
			continue;
		}
		tries++;
		rc = exchange(h, ep, rq, now + h->timeout_ms < deadline ? now + h->timeout_ms
									: deadline, r, &passing, &sent);
		r->endpoint = h->eps[ep];
		if (rc == 0 && !(rq->transient ? rq->transient(r->status, &r->body)
					       : r->status == 503)) {
			__atomic_store_n(&h->cur, (unsigned)ep, __ATOMIC_RELAXED);
			__atomic_store_n(&h->down_until[ep], 0, __ATOMIC_RELAXED);
			break;
		}
		if (rc == -ENOMEM || rc == -ETIMEDOUT || (rc && sent && !rq->idempotent))
			break;
		r->ambiguous = r->ambiguous || sent;
		if (rc == 0) {
			/* "not now": an election */
			if (!kv_backoff(round++, deadline))
				break;
		} else {
			int hold = h->timeout_ms > 1000 ? h->timeout_ms : 1000;
			__atomic_store_n(&h->down_until[ep], kv_now_ms() + hold, __ATOMIC_RELAXED);
			failed |= 1u << ep;
			if (failed != every && !all_down && !rq->quiet)
				kv_log(KV_LOG_WARN, "%s: %s: %s; trying the next endpoint", h->name,
				       h->eps[ep], r->why);
		}
		ep = (ep + 1) % h->neps;
		__atomic_store_n(&h->cur, (unsigned)ep, __ATOMIC_RELAXED);
	}
	rc = rc == -ETIMEDOUT ? -EIO : rc;
	if (rc == -EIO && !rq->quiet)
		warn_limited(h, rq, r->endpoint ? r->endpoint : h->eps[ep], r->why);
	if (rc)
		kv_buf_free(&r->body);
	return rc;
}

int kv_http_json_request(struct kv_http *h, struct kv_http_req rq, const json_t *req, size_t max,
			 struct kv_http_resp *r, json_t **answer)
{
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	int rc;

	*answer = NULL;
	*r = (struct kv_http_resp){0};
	if (!body || (max && strlen(body) > max)) {
		free(body);
		return body ? -EFBIG : -ENOMEM;
	}
	rq.body = body;
	rq.blen = strlen(body);
	rc = kv_http_request(h, &rq, r);
	explicit_bzero(body, rq.blen);
	free(body);
	if (!rc)
		*answer = kv_http_json(&r->body);
	return rc;
}

json_t *kv_http_json(const struct kv_buf *body)
{
	return json_loadb(body->p ? body->p : "", body->len, JSON_DECODE_ANY | JSON_ALLOW_NUL,
			  NULL);
}

/* ---- URLs ---- */

int kv_http_parse(const char *url, unsigned default_port, struct kv_http_url *out)
{
	enum { SCHEME, HOST, PORT, USER, PASSWORD, QUERY, PATH, NPARTS };
	static const CURLUPart what[NPARTS] = {CURLUPART_SCHEME, CURLUPART_HOST, CURLUPART_PORT,
		CURLUPART_USER, CURLUPART_PASSWORD, CURLUPART_QUERY, CURLUPART_PATH};
	CURLU *u = curl_url();
	char *v[NPARTS] = {0}, *dec = NULL, dport[12];
	int rc = u ? 0 : -ENOMEM, n = 0;

	*out = (struct kv_http_url){0};
	if (!rc && curl_url_set(u, CURLUPART_URL, url, CURLU_PATH_AS_IS) != CURLUE_OK)
		rc = -EINVAL;
	for (size_t i = 0; i < NPARTS && !rc; i++)  /* a part the URL lacks stays NULL */
		curl_url_get(u, what[i], &v[i], i == USER ? CURLU_URLDECODE : 0);
	if (!rc && (!v[HOST] || !*v[HOST] || (strcmp(v[SCHEME], "http") &&
					       strcmp(v[SCHEME], "https"))))
		rc = -EINVAL;  /* not http(s) with a host */
	snprintf(dport, sizeof(dport), "%u", default_port);
	if (!rc && asprintf(&out->origin, "%s://%s:%s", v[SCHEME], v[HOST],
			    v[PORT] ? v[PORT] : dport) < 0)
		rc = -ENOMEM;
	out->password = v[PASSWORD] != NULL;
	if (!rc && ((v[USER] && !(out->user = strdup(v[USER]))) ||
		    (v[QUERY] && !(out->query = strdup(v[QUERY])))))
		rc = -ENOMEM;
	/* the path (at least "/") %-decoded, as a key prefix: "/app/" and "/app" mean "app/" */
	if (!rc && !(dec = curl_easy_unescape(NULL, v[PATH] + strspn(v[PATH], "/"), 0, &n)))
		rc = -ENOMEM;
	if (!rc && !(out->prefix = malloc((size_t)n + 2)))
		rc = -ENOMEM;
	if (!rc) {
		memcpy(out->prefix, dec, (size_t)n);
		if (n && dec[n - 1] != '/')
			out->prefix[n++] = '/';
		out->prefix[out->prefix_len = (size_t)n] = '\0';
	}
	curl_free(dec);
	if (v[PASSWORD])
		explicit_bzero(v[PASSWORD], strlen(v[PASSWORD]));
	for (size_t i = 0; i < NPARTS; i++)
		curl_free(v[i]);
	curl_url_cleanup(u);
	if (rc)
		kv_http_url_free(out);
	return rc;
}

void kv_http_url_free(struct kv_http_url *u)
{
	free(u->origin);
	free(u->user);
	free(u->query);
	free(u->prefix);
	*u = (struct kv_http_url){0};
}

int kv_http_query(struct kv_http *h, const char *q, const char *const *allowed, size_t max,
		  char *err, size_t errlen)
{
	char *save = NULL, *tok;

	if (!(h->query_text = strdup(q)))
		return -ENOMEM;
	for (tok = strtok_r(h->query_text, "&", &save); tok; tok = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(tok, '='), *v = NULL;
		bool known = false;
		int len = 0;

		if (eq)
			*eq = '\0';
		for (const char *const *o = allowed; *o && !known; o++)
			known = strcmp(*o, tok) == 0;
		if (known && eq && h->nquery < max)
			v = curl_easy_unescape(NULL, eq + 1, 0, &len);
		if (!v || !len || memchr(v, 0, (size_t)len)) {
			curl_free(v);
			snprintf(err, errlen, "%s: unknown or bad URL parameter '%.40s'", h->name, tok);
			return -EINVAL;
		}
		memcpy(eq + 1, v, (size_t)len + 1);  /* never longer than the escaped text */
		curl_free(v);
		h->query[h->nquery++] = (struct kv_option){.name = tok, .value = eq + 1};
	}
	return 0;
}

const char *kv_http_setting(const struct kv_http *h, const struct kv_open_args *a,
			    const char *name, const char *env)
{
	const char *v = kv_option_get(a, name);

	for (size_t i = 0; !v && i < h->nquery; i++)
		if (strcmp(h->query[i].name, name) == 0)
			v = h->query[i].value;
	return v ? v : env ? getenv(env) : NULL;
}

char *kv_http_base_url(const char *name, const char *hostport, bool tls, unsigned default_port,
		       char *err, size_t errlen)
{
	struct kv_http_url u;
	char *in, *out = NULL;
	int rc;

	if (asprintf(&in, "%s%s", strstr(hostport, "://") ? "" : tls ? "https://" : "http://",
		     hostport) < 0)
		return NULL;
	rc = kv_http_parse(in, default_port, &u);
	if (rc == -EINVAL)
		snprintf(err, errlen, "%s: bad address '%.80s': expected host:port, http:// or "
			 "https://", name, hostport);
	else if (!rc && (u.user || u.password))
		snprintf(err, errlen, "%s: no credentials in the address '%.80s'", name, hostport);
	else if (!rc && (u.query || u.prefix_len))
		snprintf(err, errlen, "%s: the address '%.80s' has a path or query", name,
			 hostport);
	else if (!rc)
		out = u.origin;
	if (out)
		u.origin = NULL;
	kv_http_url_free(&u);
	free(in);
	return out;
}

int kv_http_add_endpoints(struct kv_http *h, const char *list, size_t n, bool tls,
			  unsigned default_port, char *err, size_t errlen)
{
	char *copy = strndup(list, n), *save = NULL, *one;
	int rc = copy ? 0 : -ENOMEM;

	for (one = copy ? strtok_r(copy, ",", &save) : NULL; one && !rc;
	     one = strtok_r(NULL, ",", &save)) {
		if (h->neps == KV_HTTP_MAX_ENDPOINTS) {
			snprintf(err, errlen, "%s: more than %d endpoints", h->name,
				 KV_HTTP_MAX_ENDPOINTS);
			rc = -EINVAL;
		} else if (!(h->eps[h->neps] = kv_http_base_url(h->name, one, tls, default_port, err,
								errlen))) {
			rc = err[0] ? -EINVAL : -ENOMEM;
		} else {
			h->neps++;
		}
	}
	free(copy);
	return rc;
}

/* ---- binary keys as text ---- */

static const char HEX[] = "0123456789ABCDEF";

static bool is_uhex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

static int hexval(char c)
{
	return c <= '9' ? c - '0' : c - 'A' + 10;
}

/* Length of the valid UTF-8 sequence at p (1 for ASCII), 0 if invalid:
 * no overlong form, no surrogate, nothing past U+10FFFF. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	unsigned char c = p[0];
	size_t len = c < 0x80 ? 1 : c < 0xC2 || c > 0xF4 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
	/* the second byte's range: narrower after E0, ED, F0 and F4 */
	unsigned char lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
	unsigned char hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;

	if (len < 2)
		return len;
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (p[i] < 0x80 || p[i] > 0xBF)
			return 0;
	return len;
}

int kv_key_to_text(struct kv_buf *out, const char *key, size_t n)
{
	const unsigned char *k = (const unsigned char *)key;
	int rc = 0;

	for (size_t i = 0; i < n && !rc; i++) {
		size_t len = 1;
		char esc[3] = {'%', HEX[k[i] >> 4], HEX[k[i] & 15]};

		if ((k[i] == '%' && i + 2 < n && is_uhex(key[i + 1]) && is_uhex(key[i + 2])) ||
		    k[i] == 0 || (k[i] >= 0x80 && !(len = utf8_len(k + i, n - i)))) {
			rc = kv_buf_add(out, esc, 3);
		} else {
			rc = kv_buf_add(out, key + i, len);
			i += len - 1;
		}
	}
	return rc;
}

int kv_key_from_text(struct kv_buf *out, const char *s, size_t n)
{
	int rc = 0;

	for (size_t i = 0; i < n && !rc; i++) {
		if (s[i] == '%' && i + 2 < n && is_uhex(s[i + 1]) && is_uhex(s[i + 2])) {
			char c = (char)(hexval(s[i + 1]) << 4 | hexval(s[i + 2]));
			rc = kv_buf_add(out, &c, 1);
			i += 2;
		} else {
			rc = kv_buf_add(out, s + i, 1);
		}
	}
	return rc;
}

size_t kv_key_text_prefix(const char *p, size_t n)
{
	size_t before;

	do {
		before = n;
		while (n && (unsigned char)p[n - 1] >= 0x80)
			n--;
		if (n >= 1 && p[n - 1] == '%')
			n--;
		else if (n >= 2 && p[n - 2] == '%' && is_uhex(p[n - 1]))
			n -= 2;
	} while (n != before);
	return n;
}

/* ---- base64 ---- */

json_t *kv_json_base64(const void *p, size_t n)
{
	char *out = malloc((n + 2) / 3 * 4 + 1);
	json_t *j;
	int len;

	if (!out)
		return NULL;
	len = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)p, (int)n);
	j = json_stringn_nocheck(out, (size_t)len);
	free(out);
	return j;
}

int kv_json_unbase64(const json_t *s, char **out, size_t *len)
{
	const char *t = json_string_value(s);
	size_t n = t ? json_string_length(s) : 0;
	char *d = malloc(n / 4 * 3 + 4);

	if (!d)
		return -ENOMEM;
	if (n % 4 || (n && EVP_DecodeBlock((unsigned char *)d, (const unsigned char *)t,
					   (int)n) < 0)) {
		free(d);
		return -EIO;
	}
	*len = kv_json_base64_size(s);
	d[*len] = '\0';
	*out = d;
	return 0;
}

uint64_t kv_json_base64_size(const json_t *s)
{
	const char *t = json_string_value(s);
	size_t n = t ? json_string_length(s) : 0, pad = 0;

	while (pad < 2 && n > pad && t[n - 1 - pad] == '=')
		pad++;
	return (uint64_t)n / 4 * 3 - pad;
}
