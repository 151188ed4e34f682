/*
 * consul.c - HashiCorp Consul's KV store over its HTTP API (libcurl, jansson):
 * "consul://host:8500/prefix?dc=dc1", "consul+https://host:8501/prefix", or
 * "consul:" / "consul:///prefix" for the agent named by CONSUL_HTTP_ADDR.
 *
 * Key spelling.  Consul keys are Go strings that travel in URL paths and in
 * JSON, and JSON cannot carry bytes that are not UTF-8 (Consul answers them
 * as U+FFFD).  So a kvfs key is stored as itself except for three spellings:
 * a NUL byte is "%00", a byte that is not part of valid UTF-8 is "%XX"
 * (upper-case hex), and a '%' followed by two upper-case hex digits is
 * "%25".  Every other key, UTF-8 names included, is the same string in
 * Consul, and any Consul client sees and writes the same keys.  A foreign
 * key that this spelling would not produce (say "%41") is not shown; the
 * list logs it once.  Listings are sorted here by the kvfs bytes.
 *
 * Two routes to a key.  The plain KV endpoints (/v1/kv/<key>) are used when
 * the key survives Go's path cleaning: no empty segment, no "." or ".."
 * segment, no leading '/'.  Other keys (and any key a server refuses on
 * the path with 400) go in the JSON body of /v1/txn, where no cleaning
 * happens, so "a/../b" is always its own key and never reaches "b".  Paths
 * are percent-encoded byte by byte ('.' too) and sent as is (PATH_AS_IS).
 *
 * Transactions: apply() is one /v1/txn when it fits Consul's hard limits
 * (64 operations, a 512 KiB body).  A larger apply is split into several
 * transactions run in order, each atomic on its own; a lone set too large
 * for any transaction body goes through PUT /v1/kv.  So big renames are
 * not atomic as a whole; a set always comes before the delete that follows
 * it, so a failure part-way duplicates data but never loses it.
 *
 * The ACL token (CONSUL_HTTP_TOKEN_FILE, else CONSUL_HTTP_TOKEN) is only
 * ever sent in the X-Consul-Token header; URLs with credentials in them are
 * refused.  Every call is bounded by the timeout; handles are pooled so
 * keep-alive connections are reused across FUSE threads.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kv.h"

extern const struct kv_backend kv_backend_consul;  /* defined at the bottom */

#define CS_MAX_VALUE ((size_t)512 << 10)  /* Consul's default kv_max_value_size */
#define CS_TXN_BODY_MAX ((size_t)512 << 10) /* default txn_max_req_len */
#define CS_TXN_MAX_OPS 64                   /* maxTxnOps, hard-coded in Consul */
/* Consul documents no key limit.  A key is a path in the mount, and Linux
 * paths end at 4096 bytes; 2048 leaves room for the mountpoint and keeps
 * any key (escaped, up to 3x) well inside a URL and a transaction body. */
#define CS_MAX_KEY 2048
#define CS_POOL_MAX 64

/* ---- growable byte buffers ---- */

struct buf {
	char *p;
	size_t n, cap;
	bool oom;
};

static void buf_add(struct buf *b, const void *d, size_t n)
{
	if (b->oom)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->n + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
	b->p[b->n] = '\0';
}

static void buf_adds(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void buf_free(struct buf *b)
{
	free(b->p);
	*b = (struct buf){0};
}

static const char HEX[] = "0123456789ABCDEF";

static bool is_uhex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

static int hexval(char c)
{
	return c <= '9' ? c - '0' : c - 'A' + 10;
}

/* ---- key spelling (see the top of the file) ---- */

/* Length of the valid UTF-8 sequence at p (1 for ASCII), 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	unsigned char c = p[0];
	unsigned char lo = 0x80, hi = 0xBF;
	size_t len;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		len = 3;
	else if (c >= 0xF0 && c <= 0xF4)
		len = 4;
	else
		return 0;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;  /* no surrogates */
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (p[i] < 0x80 || p[i] > 0xBF)
			return 0;
	return len;
}

static void key_encode(struct buf *out, const char *key, size_t n)
{
	const unsigned char *k = (const unsigned char *)key;

	for (size_t i = 0; i < n; i++) {
		size_t len;
		char esc[3] = {'%', HEX[k[i] >> 4], HEX[k[i] & 15]};

		if (k[i] == '%' && i + 2 < n && is_uhex(key[i + 1]) && is_uhex(key[i + 2]))
			buf_add(out, esc, 3);
		else if (k[i] == 0 || (k[i] >= 0x80 && !(len = utf8_len(k + i, n - i))))
			buf_add(out, esc, 3);
		else if (k[i] >= 0x80) {
			buf_add(out, key + i, len);
			i += len - 1;
		} else
			buf_add(out, key + i, 1);
	}
}

static void key_decode(struct buf *out, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%' && i + 2 < n && is_uhex(s[i + 1]) && is_uhex(s[i + 2])) {
			char c = (char)(hexval(s[i + 1]) << 4 | hexval(s[i + 2]));
			buf_add(out, &c, 1);
			i += 2;
		} else {
			buf_add(out, s + i, 1);
		}
	}
}

/*
 * The longest prefix of p whose spelling every key starting with p shares:
 * trailing bytes whose spelling depends on what follows (an unfinished
 * UTF-8 sequence, a '%' or "%H" that may become "%25") are cut; the list
 * filters the rest.  The cut part never holds a '/'.
 */
static size_t prefix_cut(const char *p, size_t n)
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

/*
 * Does the Consul key s reach Consul intact as a URL path?  Go's ServeMux
 * redirects paths with empty, "." or ".." segments to their cleaned form.
 * A prefix may be empty or end in '/'.
 */
static bool path_safe(const char *s, size_t n, bool prefix)
{
	size_t start = 0;

	if (n == 0)
		return prefix;
	if (s[0] == '/')
		return false;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && s[i] != '/')
			continue;
		size_t len = i - start;
		if (len == 0 && i < n)
			return false;
		if ((len == 1 && s[start] == '.') ||
		    (len == 2 && s[start] == '.' && s[start + 1] == '.'))
			return false;
		start = i + 1;
	}
	return true;
}

/* ---- base64 (Consul's JSON carries values this way) ---- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_encode(struct buf *out, const unsigned char *p, size_t n)
{
	char q[4];

	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)p[i] << 16;
		if (i + 1 < n)
			v |= (unsigned)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		q[0] = B64[v >> 18 & 63];
		q[1] = B64[v >> 12 & 63];
		q[2] = i + 1 < n ? B64[v >> 6 & 63] : '=';
		q[3] = i + 2 < n ? B64[v & 63] : '=';
		buf_add(out, q, 4);
	}
}

static int b64_value(char c)
{
	const char *p = c ? strchr(B64, c) : NULL;
	return p ? (int)(p - B64) : -1;
}

/* Decode into a malloc'd, NUL-terminated value; -EIO on bad input. */
static int b64_decode(const char *s, size_t n, char **val, size_t *len)
{
	char *out = malloc(n / 4 * 3 + 1);
	size_t o = 0;
	unsigned acc = 0;
	int bits = 0;

	if (!out)
		return -ENOMEM;
	for (size_t i = 0; i < n && s[i] != '='; i++) {
		int v = b64_value(s[i]);
		if (v < 0) {
			free(out);
			return -EIO;
		}
		acc = acc << 6 | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (char)(acc >> bits & 0xFF);
		}
	}
	out[o] = '\0';
	*val = out;
	*len = o;
	return 0;
}

/* Decoded size of a base64 text, without decoding it. */
static uint64_t b64_size(const char *s, size_t n)
{
	size_t pad = 0;

	while (n && s[n - 1] == '=') {
		n--;
		pad++;
	}
	return (uint64_t)(n + pad) / 4 * 3 - pad;
}

/* JSON string for a Consul key (valid UTF-8 by construction). */
static void json_str(struct buf *out, const char *s, size_t n)
{
	buf_add(out, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			buf_add(out, e, 2);
		} else if (c < 0x20 || c == 0x7f) {
			char e[7] = {'\\', 'u', '0', '0', HEX[c >> 4], HEX[c & 15], 0};
			buf_add(out, e, 6);
		} else {
			buf_add(out, s + i, 1);
		}
	}
	buf_add(out, "\"", 1);
}

/* ---- the store ---- */

struct consul {
	struct kv_store base;
	char *base_url;        /* "http://host:port" */
	char *kprefix;         /* Consul spelling of the URL's path prefix: "" or ".../" */
	size_t kplen;
	char *dc;              /* ?dc= value, percent-encoded, or NULL */
	char *addr;            /* host:port for .health */
	bool tls;
	const char *token_from;   /* which variable gave the token, or NULL */
	char *cacert, *capath, *cert, *key;
	int timeout_ms;
	struct curl_slist *headers;
	pthread_mutex_t lock;
	CURL *idle[CS_POOL_MAX];
	size_t nidle;
	char version[64];      /* agent version, learned by the first health check */
	uint64_t id;           /* unique per open, for the listing snapshots */
	uint64_t writes;       /* bumped by every write (atomic), ends snapshots */
	time_t last_warn;
	bool warned_foreign;
};

struct resp {
	long status;
	struct buf body;
};

static size_t on_data(char *p, size_t size, size_t n, void *ctx)
{
	struct buf *b = ctx;

	buf_add(b, p, size * n);
	return b->oom ? 0 : size * n;
}

/* Transport trouble is logged at most once a second: a dead server under a
 * busy mount would otherwise flood the log. */
static void warn_limited(struct consul *c, const char *fmt, const char *a, const char *b)
{
	time_t now = time(NULL);
	bool say;

	pthread_mutex_lock(&c->lock);
	say = now != c->last_warn;
	c->last_warn = now;
	pthread_mutex_unlock(&c->lock);
	if (say)
		kv_log(KV_LOG_WARN, fmt, a, b);
}

static CURL *handle_get(struct consul *c)
{
	CURL *h = NULL;

	pthread_mutex_lock(&c->lock);
	if (c->nidle)
		h = c->idle[--c->nidle];
	pthread_mutex_unlock(&c->lock);
	if (h || !(h = curl_easy_init()))
		return h;
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)c->timeout_ms);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(h, CURLOPT_PROXY, "");  /* never hand the token to an env proxy */
	curl_easy_setopt(h, CURLOPT_USERAGENT, "kvfs/" KVFS_VERSION);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->headers);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	if (c->cacert)
		curl_easy_setopt(h, CURLOPT_CAINFO, c->cacert);
	if (c->capath)
		curl_easy_setopt(h, CURLOPT_CAPATH, c->capath);
	if (c->cert)
		curl_easy_setopt(h, CURLOPT_SSLCERT, c->cert);
	if (c->key)
		curl_easy_setopt(h, CURLOPT_SSLKEY, c->key);
	return h;
}

static void handle_put(struct consul *c, CURL *h)
{
	pthread_mutex_lock(&c->lock);
	if (c->nidle < CS_POOL_MAX) {
		c->idle[c->nidle++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&c->lock);
	if (h)
		curl_easy_cleanup(h);
}

/*
 * One HTTP exchange.  0 when a response came (any status, in r), -EIO when
 * none did within the timeout.  body NULL: no request body.
 */
static int http(struct consul *c, const char *method, const char *url, const char *body,
		size_t blen, struct resp *r)
{
	CURL *h = handle_get(c);
	CURLcode cc;

	*r = (struct resp){0};
	if (!h)
		return -ENOMEM;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &r->body);
	if (body) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, blen ? body : "");
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	} else {
		curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, strcmp(method, "GET") ? method : NULL);
	}
	cc = curl_easy_perform(h);
	if (cc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
	handle_put(c, h);
	if (r->body.oom) {
		buf_free(&r->body);
		return -ENOMEM;
	}
	if (cc != CURLE_OK) {
		buf_free(&r->body);
		warn_limited(c, "consul: %s: %s", c->addr, curl_easy_strerror(cc));
		return -EIO;
	}
	return 0;
}

/* The errno of an unexpected status; logs what the server said. */
static int status_errno(struct consul *c, const char *what, struct resp *r)
{
	char line[160];
	size_t n = r->body.n < sizeof(line) - 1 ? r->body.n : sizeof(line) - 1;

	memcpy(line, r->body.p ? r->body.p : "", n);
	line[n] = '\0';
	line[strcspn(line, "\r\n")] = '\0';
	switch (r->status) {
	case 404:
		return -ENOENT;
	case 413:
		return -EFBIG;
	case 403:
		kv_log(KV_LOG_WARN, "consul: %s: %s: HTTP 403 %s (the ACL token comes from "
		       "CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN)", c->addr, what, line);
		return -EACCES;
	default:
		kv_log(KV_LOG_WARN, "consul: %s: %s: HTTP %ld %s", c->addr, what, r->status, line);
		return r->status == 400 ? -EINVAL : -EIO;
	}
}

/* URL of an endpoint: base + path + escaped Consul key + ?query [+ &dc=]. */
static void make_url(struct consul *c, struct buf *u, const char *path, const char *ck,
		     size_t cklen, const char *query)
{
	buf_adds(u, c->base_url);
	buf_adds(u, path);
	for (size_t i = 0; i < cklen; i++) {
		unsigned char b = (unsigned char)ck[i];
		if (isalnum(b) || b == '-' || b == '_' || b == '~' || b == '/') {
			buf_add(u, ck + i, 1);
		} else {
			char e[3] = {'%', HEX[b >> 4], HEX[b & 15]};
			buf_add(u, e, 3);
		}
	}
	if (query || c->dc)
		buf_add(u, "?", 1);
	if (query)
		buf_adds(u, query);
	if (c->dc) {
		if (query)
			buf_add(u, "&", 1);
		buf_adds(u, "dc=");
		buf_adds(u, c->dc);
	}
}

/* The Consul key of a kvfs key: URL prefix + spelling. */
static void consul_key(struct consul *c, struct buf *ck, const char *key, size_t klen)
{
	buf_add(ck, c->kprefix, c->kplen);
	key_encode(ck, key, klen);
}

/* ---- /v1/txn ---- */

struct txn {
	struct buf body;
	size_t nops;
};

/*
 * Append one KV operation.  false (and nothing appended) when it would
 * push the body over Consul's limit or the count over 64.
 */
static bool txn_add(struct txn *t, const char *verb, const char *ck, size_t cklen,
		    const char *val, size_t vlen, bool has_val, uint64_t index)
{
	size_t before = t->body.n;
	char num[32];

	if (t->nops == CS_TXN_MAX_OPS)
		return false;
	buf_adds(&t->body, t->nops ? "," : "[");
	buf_adds(&t->body, "{\"KV\":{\"Verb\":\"");
	buf_adds(&t->body, verb);
	buf_adds(&t->body, "\",\"Key\":");
	json_str(&t->body, ck, cklen);
	if (has_val) {
		buf_adds(&t->body, ",\"Value\":\"");
		b64_encode(&t->body, (const unsigned char *)val, vlen);
		buf_adds(&t->body, "\"");
	}
	if (index) {
		snprintf(num, sizeof(num), ",\"Index\":%llu", (unsigned long long)index);
		buf_adds(&t->body, num);
	}
	buf_adds(&t->body, "}}");
	if (!t->body.oom && t->body.n + 1 > CS_TXN_BODY_MAX) {
		t->body.n = before;
		t->body.p[before] = '\0';
		return false;
	}
	t->nops++;
	return true;
}

/*
 * Run a transaction.  0: committed, *root holds the response; 1: Consul
 * rolled it back (409), *root holds the Errors; or a negative errno.
 */
static int txn_run(struct consul *c, struct txn *t, json_t **root)
{
	struct buf u = {0};
	struct resp r;
	int rc;

	*root = NULL;
	if (t->body.oom)
		return -ENOMEM;
	buf_add(&t->body, "]", 1);
	make_url(c, &u, "/v1/txn", "", 0, NULL);
	rc = u.oom ? -ENOMEM : http(c, "PUT", u.p, t->body.p, t->body.n, &r);
	t->body.n--;  /* the caller may add more and run again */
	t->body.p[t->body.n] = '\0';
	buf_free(&u);
	if (rc)
		return rc;
	if (r.status == 200 || r.status == 409) {
		*root = json_loadb(r.body.p ? r.body.p : "", r.body.n, JSON_ALLOW_NUL, NULL);
		rc = *root ? r.status == 409 : -EIO;
		if (!*root)
			kv_log(KV_LOG_WARN, "consul: %s: unreadable transaction response", c->addr);
	} else {
		rc = status_errno(c, "transaction", &r);
		if (rc == -ENOENT)
			rc = -EIO;
	}
	buf_free(&r.body);
	return rc;
}

static void txn_reset(struct txn *t)
{
	t->body.n = 0;
	if (t->body.p)
		t->body.p[0] = '\0';
	t->nops = 0;
}

/* The errno of a rolled-back transaction's first error. */
static int txn_error(json_t *root, int *op_index)
{
	json_t *e = json_array_get(json_object_get(root, "Errors"), 0);
	const char *what = json_string_value(json_object_get(e, "What"));

	if (op_index)
		*op_index = (int)json_integer_value(json_object_get(e, "OpIndex"));
	if (!what)
		return -EIO;
	if (strstr(what, "doesn't exist"))
		return -ENOENT;
	if (strstr(what, "index is stale") || strstr(what, "exists") || strstr(what, "index"))
		return -ECANCELED;
	if (strstr(what, "ermission denied"))
		return -EACCES;
	kv_log(KV_LOG_WARN, "consul: transaction refused: %s", what);
	return -EIO;
}

/* Result i's KV object of a committed transaction. */
static json_t *txn_result(json_t *root, size_t i)
{
	return json_object_get(json_array_get(json_object_get(root, "Results"), i), "KV");
}

/* One-operation transaction for a key the URL path cannot carry. */
static int txn_one(struct consul *c, const char *verb, const char *ck, size_t cklen,
		   const char *val, size_t vlen, bool has_val, uint64_t index, json_t **root)
{
	struct txn t = {0};
	int rc;

	if (!txn_add(&t, verb, ck, cklen, val, vlen, has_val, index))
		rc = t.body.oom ? -ENOMEM : -EFBIG;
	else
		rc = txn_run(c, &t, root);
	buf_free(&t.body);
	return rc;
}

/* Value and ModifyIndex of a KV object from a response. */
static int entry_value(json_t *kv, char **val, size_t *len, uint64_t *version)
{
	json_t *v = json_object_get(kv, "Value");

	if (!kv)
		return -EIO;
	if (version)
		*version = (uint64_t)json_integer_value(json_object_get(kv, "ModifyIndex"));
	if (json_is_string(v))
		return b64_decode(json_string_value(v), json_string_length(v), val, len);
	*val = strdup("");  /* Consul answers null for an empty value */
	*len = 0;
	return *val ? 0 : -ENOMEM;
}

/* ---- open / close ---- */

static char *env_dup(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? strdup(v) : NULL;
}

/* The token: CONSUL_HTTP_TOKEN_FILE wins over CONSUL_HTTP_TOKEN, as in
 * Consul's own api client.  Whitespace around it is dropped. */
static int read_token(struct consul *c, struct buf *tok, char *err, size_t errlen)
{
	const char *file = getenv("CONSUL_HTTP_TOKEN_FILE");
	const char *env = getenv("CONSUL_HTTP_TOKEN");

	if (file && *file) {
		FILE *f = fopen(file, "r");
		char chunk[256];
		size_t n;

		if (!f) {
			snprintf(err, errlen, "consul: cannot read CONSUL_HTTP_TOKEN_FILE %s: %s", file,
				 strerror(errno));
			return -EACCES;
		}
		while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
			buf_add(tok, chunk, n);
		fclose(f);
		c->token_from = "CONSUL_HTTP_TOKEN_FILE";
	} else if (env && *env) {
		buf_adds(tok, env);
		c->token_from = "CONSUL_HTTP_TOKEN";
	}
	if (tok->oom)
		return -ENOMEM;
	while (tok->n && isspace((unsigned char)tok->p[tok->n - 1]))
		tok->p[--tok->n] = '\0';
	size_t lead = 0;
	while (lead < tok->n && isspace((unsigned char)tok->p[lead]))
		lead++;
	if (lead) {
		memmove(tok->p, tok->p + lead, tok->n - lead + 1);
		tok->n -= lead;
	}
	for (size_t i = 0; i < tok->n; i++) {
		if ((unsigned char)tok->p[i] < 0x20 || tok->p[i] == 0x7f) {
			snprintf(err, errlen, "consul: the ACL token from %s has a control character",
				 c->token_from);
			return -EINVAL;
		}
	}
	if (!tok->n)
		c->token_from = NULL;
	return 0;
}

/* Percent-decode s[0..n) into out; false on a bad escape. */
static bool pct_decode(struct buf *out, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '%') {
			buf_add(out, s + i, 1);
			continue;
		}
		if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
		    !isxdigit((unsigned char)s[i + 2]))
			return false;
		char c = (char)strtol((char[]){s[i + 1], s[i + 2], 0}, NULL, 16);
		buf_add(out, &c, 1);
		i += 2;
	}
	return true;
}

/* "?dc=x": the only query parameter; a token or anything else is refused. */
static int parse_query(struct consul *c, const char *q, char *err, size_t errlen)
{
	while (q && *q) {
		size_t n = strcspn(q, "&");
		const char *eq = memchr(q, '=', n);
		size_t nlen = eq ? (size_t)(eq - q) : n;

		if (nlen == 2 && strncmp(q, "dc", 2) == 0 && eq && eq + 1 < q + n) {
			struct buf v = {0}, e = {0};
			if (!pct_decode(&v, eq + 1, n - nlen - 1) || v.oom || !v.n) {
				buf_free(&v);
				snprintf(err, errlen, "consul: bad dc= value in the URL");
				return -EINVAL;
			}
			for (size_t i = 0; i < v.n; i++) {
				unsigned char b = (unsigned char)v.p[i];
				char esc[3] = {'%', HEX[b >> 4], HEX[b & 15]};
				if (isalnum(b) || b == '-' || b == '_' || b == '.')
					buf_add(&e, v.p + i, 1);
				else
					buf_add(&e, esc, 3);
			}
			buf_free(&v);
			if (e.oom)
				return -ENOMEM;
			free(c->dc);
			c->dc = e.p;
		} else if ((nlen == 5 && strncmp(q, "token", 5) == 0) ||
			   (nlen == 10 && strncmp(q, "token_file", 10) == 0)) {
			snprintf(err, errlen, "consul: no token in the URL: put the ACL token in "
				 "CONSUL_HTTP_TOKEN_FILE (a file) or CONSUL_HTTP_TOKEN");
			return -EINVAL;
		} else if (n) {
			snprintf(err, errlen, "consul: unknown URL parameter '%.*s' (only dc=)",
				 (int)(nlen < 40 ? nlen : 40), q);
			return -EINVAL;
		}
		q += n + (q[n] == '&');
	}
	return 0;
}

/* host[:port] from the URL or CONSUL_HTTP_ADDR into base_url and addr. */
static int set_address(struct consul *c, const char *hp, size_t n, char *err, size_t errlen)
{
	struct buf a = {0}, u = {0};
	const char *colon;
	bool bracket = n && hp[0] == '[';

	for (size_t i = 0; i < n; i++) {
		unsigned char b = (unsigned char)hp[i];
		if (!(isalnum(b) || strchr("-._:[]%", b))) {
			snprintf(err, errlen, "consul: bad host in '%.*s'", (int)(n < 80 ? n : 80), hp);
			return -EINVAL;
		}
	}
	if (!n) {
		snprintf(err, errlen, "consul: no host in the URL or CONSUL_HTTP_ADDR");
		return -EINVAL;
	}
	buf_add(&a, hp, n);
	colon = bracket ? strstr(a.p ? a.p : "", "]:") : strrchr(a.p ? a.p : "", ':');
	if (bracket && colon)
		colon++;
	if (!colon || (bracket && a.p[a.n - 1] == ']'))
		buf_adds(&a, c->tls ? ":8501" : ":8500");
	buf_adds(&u, c->tls ? "https://" : "http://");
	buf_add(&u, a.p, a.n);
	if (a.oom || u.oom) {
		buf_free(&a);
		buf_free(&u);
		return -ENOMEM;
	}
	c->addr = a.p;
	c->base_url = u.p;
	return 0;
}

/* CONSUL_HTTP_ADDR: "host:port", "http://host:port" or "https://host:port". */
static int address_from_env(struct consul *c, char *err, size_t errlen)
{
	const char *a = getenv("CONSUL_HTTP_ADDR");
	const char *ssl = getenv("CONSUL_HTTP_SSL");

	if (ssl && (strcasecmp(ssl, "true") == 0 || strcmp(ssl, "1") == 0))
		c->tls = true;
	if (!a || !*a)
		a = "127.0.0.1:8500";
	if (strncmp(a, "https://", 8) == 0) {
		c->tls = true;
		a += 8;
	} else if (strncmp(a, "http://", 7) == 0) {
		a += 7;
	} else if (strstr(a, "://")) {
		snprintf(err, errlen, "consul: CONSUL_HTTP_ADDR must be host:port, http:// or "
			 "https:// (unix sockets are not supported)");
		return -EINVAL;
	}
	if (strchr(a, '@')) {
		snprintf(err, errlen, "consul: no credentials in CONSUL_HTTP_ADDR: put the ACL token "
			 "in CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN");
		return -EINVAL;
	}
	return set_address(c, a, strcspn(a, "/"), err, errlen);
}

static void cs_close(struct kv_store *s);

/* curl_global_init is not thread-safe: once per process, from the first open. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init_once(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int cs_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	struct consul *c = calloc(1, sizeof(*c));
	const char *loc = a->location, *path, *q;
	struct buf tok = {0}, hdr = {0}, pfx = {0};
	int rc;

	if (!c)
		return -ENOMEM;
	static uint64_t next_id;
	pthread_mutex_init(&c->lock, NULL);
	c->id = __atomic_add_fetch(&next_id, 1, __ATOMIC_SEQ_CST);
	c->timeout_ms = a->timeout_ms > 0 ? a->timeout_ms : 5000;
	c->tls = strncasecmp(a->url, "consul+https:", 13) == 0;
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_rc != CURLE_OK) {
		snprintf(err, errlen, "consul: libcurl: %s", curl_easy_strerror(curl_init_rc));
		rc = -EIO;
		goto fail;
	}
	q = strchr(loc, '?');
	if ((rc = parse_query(c, q ? q + 1 : NULL, err, errlen)))
		goto fail;
	size_t loclen = q ? (size_t)(q - loc) : strlen(loc);
	if (loclen >= 2 && loc[0] == '/' && loc[1] == '/') {
		const char *host = loc + 2;
		size_t hlen = strcspn(host, "/?");
		if (memchr(host, '@', hlen)) {
			snprintf(err, errlen, "consul: no credentials in the URL: put the ACL token in "
				 "CONSUL_HTTP_TOKEN_FILE (a file) or CONSUL_HTTP_TOKEN");
			rc = -EINVAL;
			goto fail;
		}
		rc = hlen ? set_address(c, host, hlen, err, errlen) : address_from_env(c, err, errlen);
		path = host + hlen;
	} else {
		rc = address_from_env(c, err, errlen);
		path = loc;
	}
	if (rc)
		goto fail;
	/* The path names a key prefix: "/app/" and "/app" both mean "app/". */
	while (path < loc + loclen && *path == '/')
		path++;
	if (!pct_decode(&pfx, path, (size_t)(loc + loclen - path))) {
		snprintf(err, errlen, "consul: bad %%-escape in the URL path");
		rc = -EINVAL;
		goto fail;
	}
	{
		struct buf kp = {0};
		key_encode(&kp, pfx.p ? pfx.p : "", pfx.n);
		if (kp.n && kp.p[kp.n - 1] != '/')
			buf_add(&kp, "/", 1);
		buf_add(&kp, "", 0);
		c->kprefix = kp.p;
		c->kplen = kp.n;
		buf_free(&pfx);
		if (kp.oom) {
			rc = -ENOMEM;
			goto fail;
		}
	}
	if ((rc = read_token(c, &tok, err, errlen)))
		goto fail;
	c->cacert = env_dup("CONSUL_CACERT");
	c->capath = env_dup("CONSUL_CAPATH");
	c->cert = env_dup("CONSUL_CLIENT_CERT");
	c->key = env_dup("CONSUL_CLIENT_KEY");
	/* Expect: off, so a PUT body goes at once instead of after 1 s. */
	c->headers = curl_slist_append(NULL, "Expect:");
	if (c->headers && tok.n) {
		buf_adds(&hdr, "X-Consul-Token: ");
		buf_add(&hdr, tok.p, tok.n);
		struct curl_slist *l = hdr.oom ? NULL : curl_slist_append(c->headers, hdr.p);
		if (!l)
			rc = -ENOMEM;
		c->headers = l ? l : c->headers;
	}
	if (hdr.p)
		explicit_bzero(hdr.p, hdr.n);
	if (tok.p)
		explicit_bzero(tok.p, tok.n);
	buf_free(&hdr);
	buf_free(&tok);
	if (!c->headers)
		rc = -ENOMEM;
	if (rc)
		goto fail;
	*out = &c->base;
	return 0;
fail:
	buf_free(&tok);
	cs_close(&c->base);
	return rc;
}

static void cs_close(struct kv_store *s)
{
	struct consul *c = kv_store_cast(struct consul, s);

	for (size_t i = 0; i < c->nidle; i++)
		curl_easy_cleanup(c->idle[i]);
	for (struct curl_slist *l = c->headers; l; l = l->next)
		explicit_bzero(l->data, strlen(l->data));
	curl_slist_free_all(c->headers);
	free(c->base_url);
	free(c->addr);
	free(c->kprefix);
	free(c->dc);
	free(c->cacert);
	free(c->capath);
	free(c->cert);
	free(c->key);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* ---- single keys ---- */

/* The Consul key of key, or -EINVAL for a key Consul cannot hold (empty). */
static int key_of(struct consul *c, struct buf *ck, const char *key, size_t klen)
{
	consul_key(c, ck, key, klen);
	if (ck->oom)
		return -ENOMEM;
	return ck->n ? 0 : -EINVAL;
}

static int get_by_txn(struct consul *c, struct buf *ck, char **val, size_t *len,
		      uint64_t *version)
{
	json_t *root;
	int rc = txn_one(c, "get", ck->p, ck->n, NULL, 0, false, 0, &root);

	if (rc == 0)
		rc = entry_value(txn_result(root, 0), val, len, version);
	else if (rc == 1)
		rc = txn_error(root, NULL);
	json_decref(root);
	return rc == -EFBIG ? -ENOENT : rc;  /* a key too long for a body cannot exist */
}

static int cs_get(struct kv_store *s, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct buf ck = {0}, u = {0};
	struct resp r = {0};
	int rc = key_of(c, &ck, key, klen);

	if (rc) {
		buf_free(&ck);
		return rc == -EINVAL ? -ENOENT : rc;
	}
	if (!path_safe(ck.p, ck.n, false)) {
		rc = get_by_txn(c, &ck, val, len, version);
		goto out;
	}
	/* Without a version the raw form saves the base64 round. */
	make_url(c, &u, "/v1/kv/", ck.p, ck.n, version ? NULL : "raw");
	if (u.oom || (rc = http(c, "GET", u.p, NULL, 0, &r)))
		rc = rc ? rc : -ENOMEM;
	else if (r.status == 200 && !version) {
		buf_add(&r.body, "", 0);
		if (r.body.oom) {
			rc = -ENOMEM;
		} else {
			*val = r.body.p;
			*len = r.body.n;
			r.body = (struct buf){0};
		}
	} else if (r.status == 200) {
		json_t *root = json_loadb(r.body.p ? r.body.p : "", r.body.n, 0, NULL);
		rc = entry_value(json_array_get(root, 0), val, len, version);
		json_decref(root);
	} else if (r.status == 400) {
		rc = get_by_txn(c, &ck, val, len, version);  /* a server stricter about paths */
	} else {
		rc = status_errno(c, "get", &r);
	}
	buf_free(&r.body);
out:
	buf_free(&u);
	buf_free(&ck);
	return rc;
}

static int cs_stat(struct kv_store *s, const char *key, size_t klen, uint64_t *size)
{
	char *v;
	size_t n;
	int rc = cs_get(s, key, klen, &v, &n, NULL);

	if (rc == 0) {
		*size = n;
		free(v);
	}
	return rc;
}

/*
 * PUT /v1/kv/<key>[?cas=N] with the raw value, or the same through /v1/txn
 * for a key the path cannot carry.  With cas, version is Consul's
 * ModifyIndex, and 0 means "only if missing" in both forms.
 */
static int put_key(struct consul *c, struct buf *ck, const char *val, size_t vlen, bool cas,
		   uint64_t version)
{
	struct buf u = {0};
	struct resp r = {0};
	char q[40];
	int rc;

	if (path_safe(ck->p, ck->n, false)) {
		if (cas)
			snprintf(q, sizeof(q), "cas=%llu", (unsigned long long)version);
		make_url(c, &u, "/v1/kv/", ck->p, ck->n, cas ? q : NULL);
		rc = u.oom ? -ENOMEM : http(c, "PUT", u.p, val, vlen, &r);
		buf_free(&u);
		if (rc)
			return rc;
		if (r.status == 200)
			rc = strncmp(r.body.p ? r.body.p : "", "true", 4) == 0 ? 0 : -ECANCELED;
		else if (r.status != 400)
			rc = status_errno(c, cas ? "cas" : "set", &r);
		else
			rc = 1;  /* refused on the path: try the body */
		buf_free(&r.body);
		if (rc != 1)
			return rc == -ENOENT ? -EIO : rc;
	}
	json_t *root;
	rc = txn_one(c, cas ? "cas" : "set", ck->p, ck->n, val, vlen, true, cas ? version : 0, &root);
	if (rc == 1)
		rc = txn_error(root, NULL);
	json_decref(root);
	if (rc == -EFBIG && vlen <= CS_MAX_VALUE)
		kv_log(KV_LOG_INFO, "consul: a key with empty, '.' or '..' segments travels in a "
		       "transaction, which holds values up to about 383 KiB");
	return rc == -ENOENT ? -ECANCELED : rc;
}

static int cs_set(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct buf ck = {0};
	int rc = key_of(c, &ck, key, klen);

	if (rc == 0)
		rc = put_key(c, &ck, val, vlen, false, 0);
	buf_free(&ck);
	__atomic_add_fetch(&c->writes, 1, __ATOMIC_SEQ_CST);
	return rc;
}

static int cs_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct buf ck = {0};
	int rc = key_of(c, &ck, key, klen);

	if (rc == 0)
		rc = put_key(c, &ck, val, vlen, true, version);
	buf_free(&ck);
	__atomic_add_fetch(&c->writes, 1, __ATOMIC_SEQ_CST);
	return rc;
}

/* Consul's DELETE answers true for a missing key; a transaction of
 * "get, delete" fails when it is missing, which gives ENOENT atomically. */
static int cs_del(struct kv_store *s, const char *key, size_t klen)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct buf ck = {0};
	struct txn t = {0};
	json_t *root = NULL;
	int rc = key_of(c, &ck, key, klen);

	if (rc) {
		buf_free(&ck);
		return rc == -EINVAL ? -ENOENT : rc;
	}
	if (!txn_add(&t, "get", ck.p, ck.n, NULL, 0, false, 0) ||
	    !txn_add(&t, "delete", ck.p, ck.n, NULL, 0, false, 0))
		rc = t.body.oom ? -ENOMEM : -ENOENT;
	else
		rc = txn_run(c, &t, &root);
	if (rc == 1)
		rc = txn_error(root, NULL);
	json_decref(root);
	buf_free(&t.body);
	buf_free(&ck);
	__atomic_add_fetch(&c->writes, 1, __ATOMIC_SEQ_CST);
	return rc == -ECANCELED ? -EIO : rc;
}

/* ---- apply ---- */

static int apply_flush(struct consul *c, struct txn *t)
{
	json_t *root;
	int rc;

	if (!t->nops)
		return 0;
	rc = txn_run(c, t, &root);
	if (rc == 1)
		rc = txn_error(root, NULL);
	json_decref(root);
	txn_reset(t);
	return rc == -ENOENT || rc == -ECANCELED ? -EIO : rc;
}

static int cs_apply(struct kv_store *s, const struct kv_op *ops, size_t n)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct buf *cks = calloc(n ? n : 1, sizeof(*cks));
	struct txn t = {0};
	int rc = cks ? 0 : -ENOMEM;

	/* Every key first, so a key Consul cannot hold refuses the whole apply. */
	for (size_t i = 0; i < n && !rc; i++) {
		rc = key_of(c, &cks[i], ops[i].key, ops[i].key_len);
		if (rc == -EINVAL && ops[i].type == KV_OP_DEL)
			rc = 0;  /* deleting a key that cannot exist deletes nothing */
	}
	for (size_t i = 0; i < n && !rc; i++) {
		const struct kv_op *op = &ops[i];
		bool set = op->type == KV_OP_SET;

		if (!cks[i].n)
			continue;
		if (txn_add(&t, set ? "set" : "delete", cks[i].p, cks[i].n, op->val, op->val_len,
			    set, 0))
			continue;
		if (t.body.oom) {
			rc = -ENOMEM;
			break;
		}
		if ((rc = apply_flush(c, &t)))
			break;
		if (txn_add(&t, set ? "set" : "delete", cks[i].p, cks[i].n, op->val, op->val_len,
			    set, 0))
			continue;
		/* Too big for any transaction body: a set of a large value, alone. */
		rc = set ? put_key(c, &cks[i], op->val, op->val_len, false, 0) : -EIO;
	}
	if (!rc)
		rc = apply_flush(c, &t);
	__atomic_add_fetch(&c->writes, 1, __ATOMIC_SEQ_CST);
	buf_free(&t.body);
	for (size_t i = 0; cks && i < n; i++)
		buf_free(&cks[i]);
	free(cks);
	return rc;
}

/* ---- list ---- */

struct litem {
	char *key;          /* kvfs key (without the URL prefix) */
	size_t len;
	bool is_prefix;
	bool sized;
	bool gone;          /* vanished between the names and the sizes */
	uint64_t size;
	char *ck;           /* Consul key, for the size lookup */
	size_t cklen;
};

struct lset {
	struct litem *v;
	size_t n, cap;
};

static int lset_add(struct lset *l, const char *key, size_t len, bool is_prefix, const char *ck,
		    size_t cklen, bool sized, uint64_t size)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		struct litem *v = realloc(l->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	struct litem *it = &l->v[l->n];
	*it = (struct litem){.len = len, .is_prefix = is_prefix, .sized = sized || is_prefix,
			     .size = size, .cklen = cklen};
	it->key = malloc(len + 1);
	it->ck = is_prefix ? NULL : malloc(cklen + 1);
	if (!it->key || (!is_prefix && !it->ck)) {
		free(it->key);
		free(it->ck);
		return -ENOMEM;
	}
	if (len)
		memcpy(it->key, key, len);
	if (!is_prefix && cklen)
		memcpy(it->ck, ck, cklen);
	l->n++;
	return 0;
}

static void lset_free(struct lset *l)
{
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].key);
		free(l->v[i].ck);
	}
	free(l->v);
}

static int bytes_cmp(const char *a, size_t an, const char *b, size_t bn)
{
	int r = memcmp(a, b, an < bn ? an : bn);
	return r ? r : (an > bn) - (an < bn);
}

static int litem_cmp(const void *x, const void *y)
{
	const struct litem *a = x, *b = y;
	return bytes_cmp(a->key, a->len, b->key, b->len);
}

/*
 * Take one Consul key from a listing: back to kvfs bytes, within the
 * requested prefix, grouped at the delimiter.  Foreign spellings are skipped.
 */
static int take_key(struct consul *c, struct lset *l, const struct kv_list_req *req,
		    const char *ck, size_t cklen, bool sized, uint64_t size)
{
	struct buf k = {0}, back = {0};
	int rc = 0;

	if (cklen < c->kplen || memcmp(ck, c->kprefix, c->kplen) != 0)
		return 0;
	key_decode(&k, ck + c->kplen, cklen - c->kplen);
	buf_add(&k, "", 0);  /* never NULL, even for the empty key */
	key_encode(&back, k.p ? k.p : "", k.n);
	buf_add(&back, "", 0);
	if (k.oom || back.oom) {
		rc = -ENOMEM;
	} else if (back.n != cklen - c->kplen || memcmp(back.p, ck + c->kplen, back.n) != 0) {
		if (!c->warned_foreign)
			kv_log(KV_LOG_WARN, "consul: key '%s' is spelled with %%-escapes kvfs does not "
			       "use and is not shown", kv_printable(ck, cklen));
		c->warned_foreign = true;
	} else if (k.n >= req->prefix_len && memcmp(k.p, req->prefix, req->prefix_len) == 0) {
		const char *d = req->delim ? memchr(k.p + req->prefix_len, req->delim,
						    k.n - req->prefix_len) : NULL;
		if (d)
			rc = lset_add(l, k.p, (size_t)(d - k.p) + 1, true, NULL, 0, true, 0);
		else
			rc = lset_add(l, k.p, k.n, false, ck, cklen, sized, size);
	}
	buf_free(&k);
	buf_free(&back);
	return rc;
}

/* Entries with values (?recurse or get-tree): names and sizes at once. */
static int take_entries(struct consul *c, struct lset *l, const struct kv_list_req *req,
			json_t *arr, bool txn)
{
	size_t i;
	json_t *e;
	int rc = 0;

	json_array_foreach(arr, i, e) {
		json_t *kv = txn ? json_object_get(e, "KV") : e;
		json_t *key = json_object_get(kv, "Key"), *v = json_object_get(kv, "Value");
		if (!json_is_string(key))
			continue;
		uint64_t size = json_is_string(v) ? b64_size(json_string_value(v), json_string_length(v)) : 0;
		if ((rc = take_key(c, l, req, json_string_value(key), json_string_length(key), true,
				   size)))
			break;
	}
	return rc;
}

/* Names under the Consul prefix cp: ?keys[&separator=/], or ?recurse when
 * every value is wanted anyway; get-tree for a prefix the path cannot carry. */
static int fetch_names(struct consul *c, struct lset *l, const struct kv_list_req *req,
		       const char *cp, size_t cplen, bool recurse)
{
	struct buf u = {0};
	struct resp r = {0};
	json_t *root = NULL;
	int rc;

	if (path_safe(cp, cplen, true)) {
		make_url(c, &u, "/v1/kv/", cp, cplen,
			 recurse ? "recurse" : req->delim == '/' ? "keys&separator=%2F" : "keys");
		rc = u.oom ? -ENOMEM : http(c, "GET", u.p, NULL, 0, &r);
		buf_free(&u);
		if (rc)
			return rc;
		if (r.status == 404) {
			rc = 0;
		} else if (r.status == 200) {
			root = json_loadb(r.body.p ? r.body.p : "", r.body.n, JSON_ALLOW_NUL, NULL);
			size_t i;
			json_t *e;
			rc = json_is_array(root) ? 0 : -EIO;
			if (recurse && !rc)
				rc = take_entries(c, l, req, root, false);
			else
				json_array_foreach(root, i, e) {
					if (rc || !json_is_string(e))
						continue;
					rc = take_key(c, l, req, json_string_value(e),
						      json_string_length(e), false, 0);
				}
		} else if (r.status != 400) {
			rc = status_errno(c, "list", &r);
		} else {
			rc = 1;
		}
		buf_free(&r.body);
		json_decref(root);
		if (rc != 1)
			return rc;
	}
	rc = txn_one(c, "get-tree", cp, cplen, NULL, 0, false, 0, &root);
	if (rc == 0)
		rc = take_entries(c, l, req, json_object_get(root, "Results"), true);
	else if (rc == 1)
		rc = txn_error(root, NULL);
	json_decref(root);
	return rc;
}

/* Sizes of the unsized keys in v[0..n): "get" transactions of up to 64. */
static int fetch_sizes(struct consul *c, struct litem *v, size_t n)
{
	struct txn t = {0};
	size_t *idx = malloc(CS_TXN_MAX_OPS * sizeof(*idx));
	size_t i = 0;
	int rc = idx ? 0 : -ENOMEM;

	while (!rc && i < n) {
		size_t m = 0, next = i;
		json_t *root = NULL;

		txn_reset(&t);
		for (; next < n; next++) {
			if (v[next].sized || v[next].gone)
				continue;
			if (!txn_add(&t, "get", v[next].ck, v[next].cklen, NULL, 0, false, 0))
				break;
			idx[m++] = next;
		}
		if (t.body.oom) {
			rc = -ENOMEM;
			break;
		}
		if (!m) {
			if (next < n)
				v[next++].gone = true;  /* a key too long for any body */
			i = next;
			continue;
		}
		rc = txn_run(c, &t, &root);
		if (rc == 0) {
			for (size_t j = 0; j < m; j++) {
				json_t *val = json_object_get(txn_result(root, j), "Value");
				v[idx[j]].sized = true;
				v[idx[j]].size = json_is_string(val) ?
					b64_size(json_string_value(val), json_string_length(val)) : 0;
			}
			i = next;
		} else if (rc == 1) {
			/* A key went away since the names came: drop it, ask again. */
			int op = -1;
			rc = txn_error(root, &op);
			if (rc == -ENOENT && op >= 0 && (size_t)op < m) {
				v[idx[op]].gone = true;
				rc = 0;
			} else if (rc == -ENOENT || rc == -ECANCELED) {
				rc = -EIO;
			}
		}
		json_decref(root);
	}
	free(idx);
	buf_free(&t.body);
	return rc;
}

/*
 * A paged listing's later pages come from the first page's snapshot, kept
 * per thread: Consul has no paging, so otherwise every page would fetch
 * and sort the whole prefix again.  The snapshot ends after SNAP_MS, at any
 * write through this store, and at a listing of another prefix or delimiter.
 */
#define SNAP_MS 1000

struct snapshot {
	uint64_t store_id, writes;
	struct timespec at;
	char delim;
	char *prefix;
	size_t plen;
	struct lset l;
};

static pthread_key_t snap_key;
static pthread_once_t snap_once = PTHREAD_ONCE_INIT;

static void snap_free(void *p)
{
	struct snapshot *sn = p;

	if (sn) {
		lset_free(&sn->l);
		free(sn->prefix);
		free(sn);
	}
}

static void snap_init(void)
{
	pthread_key_create(&snap_key, snap_free);
}

static bool snap_fits(struct consul *c, struct snapshot *sn, const struct kv_list_req *req)
{
	struct timespec now;

	if (!sn || !req->start || sn->store_id != c->id || sn->delim != req->delim ||
	    sn->writes != __atomic_load_n(&c->writes, __ATOMIC_SEQ_CST) ||
	    sn->plen != req->prefix_len || memcmp(sn->prefix, req->prefix, sn->plen) != 0)
		return false;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - sn->at.tv_sec) * 1000 + (now.tv_nsec - sn->at.tv_nsec) / 1000000 < SNAP_MS;
}

/* Every item under the prefix, sorted by kvfs bytes, each once. */
static int list_fetch(struct consul *c, const struct kv_list_req *req, bool recurse,
		      struct lset *l)
{
	struct buf cp = {0};
	size_t o = 0;
	int rc;

	consul_key(c, &cp, req->prefix, prefix_cut(req->prefix, req->prefix_len));
	rc = cp.oom ? -ENOMEM : fetch_names(c, l, req, cp.p ? cp.p : "", cp.n, recurse);
	buf_free(&cp);
	if (rc)
		return rc;
	if (l->n > 1)
		qsort(l->v, l->n, sizeof(*l->v), litem_cmp);
	for (size_t i = 0; i < l->n; i++) {  /* a group comes once per key in it */
		if (o && litem_cmp(&l->v[o - 1], &l->v[i]) == 0) {
			free(l->v[i].key);
			free(l->v[i].ck);
		} else {
			l->v[o++] = l->v[i];
		}
	}
	l->n = o;
	return 0;
}

/*
 * Consul lists a whole prefix in one answer, without paging and ordered by
 * its own spelling; so the names come in one request, are sorted here by
 * kvfs bytes and cut to start/limit, and only the page's keys are sized.
 */
static int cs_list(struct kv_store *s, const struct kv_list_req *req, kv_list_cb *cb, void *ctx,
		   bool *more)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct snapshot *sn;
	struct lset own = {0}, *l = &own;
	size_t first = 0, end;
	uint64_t writes = __atomic_load_n(&c->writes, __ATOMIC_SEQ_CST);
	int rc = 0;

	pthread_once(&snap_once, snap_init);
	sn = pthread_getspecific(snap_key);
	if (snap_fits(c, sn, req))
		l = &sn->l;
	else if ((rc = list_fetch(c, req, req->delim == '\0' && req->limit == 0, l)))
		goto out;
	while (req->start && first < l->n &&
	       bytes_cmp(l->v[first].key, l->v[first].len, req->start, req->start_len) < 0)
		first++;
	end = req->limit && l->n - first > req->limit ? first + req->limit : l->n;
	*more = end < l->n;
	if ((rc = fetch_sizes(c, l->v + first, end - first)))
		goto out;
	if (*more && l == &own) {
		/* Keep it for the next page. */
		struct snapshot *next = calloc(1, sizeof(*next));
		char *p = malloc(req->prefix_len + 1);
		if (next && p) {
			memcpy(p, req->prefix, req->prefix_len);
			*next = (struct snapshot){.store_id = c->id, .writes = writes,
						  .delim = req->delim, .prefix = p,
						  .plen = req->prefix_len, .l = own};
			clock_gettime(CLOCK_MONOTONIC, &next->at);
			own = (struct lset){0};
			l = &next->l;
			snap_free(sn);
			pthread_setspecific(snap_key, next);
			sn = next;
		} else {
			free(next);
			free(p);
		}
	}
	for (size_t i = first; i < end; i++) {
		struct litem *it = &l->v[i];
		if (it->gone)
			continue;
		struct kv_entry e = {.key = it->key, .key_len = it->len, .size = it->size,
				     .is_prefix = it->is_prefix};
		if ((rc = cb(ctx, &e)))
			break;
	}
out:
	lset_free(&own);
	return rc < 0 ? rc : 0;
}

/* ---- health ---- */

static void fact(struct kv_health *h, const char *name, const char *value)
{
	kv_health_fact(h, name, "%s", value);
}

/* The agent's version, once: /v1/agent/self needs agent:read, which a KV
 * token may lack, so failing here only leaves the fact out. */
static void learn_version(struct consul *c)
{
	struct buf u = {0};
	struct resp r = {0};

	buf_adds(&u, c->base_url);
	buf_adds(&u, "/v1/agent/self");
	if (!u.oom && http(c, "GET", u.p, NULL, 0, &r) == 0 && r.status == 200) {
		json_t *root = json_loadb(r.body.p ? r.body.p : "", r.body.n, 0, NULL);
		const char *v = json_string_value(json_object_get(json_object_get(root, "Config"),
								  "Version"));
		pthread_mutex_lock(&c->lock);
		snprintf(c->version, sizeof(c->version), "%s", v ? v : "unknown");
		pthread_mutex_unlock(&c->lock);
		json_decref(root);
	}
	buf_free(&r.body);
	buf_free(&u);
}

/* GET /v1/status/leader: answers from the agent without touching the KV. */
static int cs_health(struct kv_store *s, struct kv_health *h)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct buf u = {0};
	struct resp r = {0};
	char leader[96] = "", version[64];
	int rc;

	make_url(c, &u, "/v1/status/leader", "", 0, NULL);
	rc = u.oom ? -ENOMEM : http(c, "GET", u.p, NULL, 0, &r);
	buf_free(&u);
	if (rc) {
		snprintf(h->detail, sizeof(h->detail), "consul at %s does not answer", c->addr);
		return rc == -ENOMEM ? rc : -EIO;
	}
	if (r.status == 200) {
		json_t *root = json_loadb(r.body.p ? r.body.p : "", r.body.n, JSON_DECODE_ANY, NULL);
		snprintf(leader, sizeof(leader), "%s", json_string_value(root) ? json_string_value(root) : "");
		json_decref(root);
	}
	buf_free(&r.body);
	if (r.status != 200) {
		snprintf(h->detail, sizeof(h->detail), "consul at %s: HTTP %ld from /v1/status/leader",
			 c->addr, r.status);
		return -EIO;
	}
	pthread_mutex_lock(&c->lock);
	bool known = c->version[0];
	pthread_mutex_unlock(&c->lock);
	if (!known)
		learn_version(c);
	pthread_mutex_lock(&c->lock);
	snprintf(version, sizeof(version), "%s", c->version);
	pthread_mutex_unlock(&c->lock);
	if (!leader[0]) {
		snprintf(h->detail, sizeof(h->detail), "consul at %s: no cluster leader", c->addr);
		return -EIO;
	}
	snprintf(h->detail, sizeof(h->detail), "consul at %s, leader %s", c->addr, leader);
	fact(h, "leader", leader);
	if (version[0])
		fact(h, "consul_version", version);
	fact(h, "datacenter", c->dc ? c->dc : "(the agent's)");
	fact(h, "tls", c->tls ? "on, verified" : "off");
	fact(h, "token", c->token_from ? c->token_from : "none");
	fact(h, "key_prefix", c->kplen ? c->kprefix : "(none)");
	fact(h, "max_value", "524288");
	return 0;
}

const struct kv_backend kv_backend_consul = {
	.scheme = "consul",
	.aliases = (const char *const[]){"consul+https", NULL},
	.summary = "HashiCorp Consul's KV store over HTTP(S); consul+https:, consul: uses $CONSUL_HTTP_ADDR",
	.usage = "consul://host:8500/[prefix][?dc=DC]",
	.options = NULL,
	.caps = KV_CAP_ORDERED | KV_CAP_CAS | KV_CAP_TXN | KV_CAP_PERSIST,
	.limits = {.max_key = CS_MAX_KEY, .max_value = CS_MAX_VALUE},
	.open = cs_open,
	.close = cs_close,
	.get = cs_get,
	.set = cs_set,
	.del = cs_del,
	.list = cs_list,
	.health = cs_health,
	.stat = cs_stat,
	.cas = cs_cas,
	.apply = cs_apply,
};
