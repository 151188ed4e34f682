/*
 * etcd.c - an etcd v3 cluster through its JSON gateway (libcurl + jansson):
 * "etcd://host:2379[,host:2379...]/[prefix]", "etcd+https://..." for TLS.
 *
 * Every key is stored as its own etcd key, byte for byte after the URL's
 * prefix, so etcdctl and every other client see the keys kvfs shows.  The
 * gateway speaks JSON with keys and values in base64 and int64s as strings.
 *
 * Endpoints.  Calls go to the endpoint that last answered; a transport
 * failure (refused, reset, timed out: a dead or SIGSTOPped member) marks it
 * down for a while and the call moves on to the next one.  "No leader" and
 * "request timed out" answers also move on, after 50 ms, since an election
 * takes about one election timeout.  A call gives up with -EIO
 * when every endpoint failed or after timeout_ms times the number of
 * endpoints; when every endpoint is marked down, only one is tried, so a
 * dead cluster costs one timeout per call, not one per member.
 *
 * A write that failed in transport may still have been applied.  Puts are
 * idempotent; a delete or cas retried after such a failure treats "already
 * gone" and "already holds my value" as its own success.
 *
 * Listing.  A range with keys_only carries no value sizes, and etcd has no
 * other way to learn a size than to read the value.  So a page is read in
 * two steps: a keys_only range finds the page's names (a group of keys
 * under one delimiter is skipped at once by starting the next range at the
 * group's successor, as lmdb.c does with its cursor), then one read-only
 * txn reads the values of the page's plain keys only, one range per run of
 * adjacent plain keys.  Values inside subdirectories are never read.  No
 * sort_order is sent: etcd returns ranges in key order anyway, and any
 * explicit sort makes etcd 3.4 read the whole range before applying limit.
 *
 * Multi-key writes are one txn, so apply (and thus rename) is atomic.  etcd
 * refuses a txn with more operations than --max-txn-ops (default 128) or a
 * request over --max-request-bytes (default 1.5 MiB); such an apply fails
 * with -EFBIG rather than being split, which would break its atomicity.
 */
#include "kv.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern const struct kv_backend kv_backend_etcd;  /* defined at the bottom */

#define ED_DEFAULT_ENDPOINT "127.0.0.1:2379"
#define ED_MAX_REQUEST ((uint64_t)1572864)  /* etcd's default --max-request-bytes */
/* The most -o max_request_bytes may say: fs/ holds a whole value in memory,
 * and a value travels as base64 JSON, a third larger again. */
#define ED_MAX_REQUEST_OPT ((uint64_t)128 << 20)
/*
 * etcd itself limits a key only by the request size.  3 KiB keeps every
 * key reachable through one absolute path (PATH_MAX is 4096) under a mount
 * point, with room for escapes.
 */
#define ED_MAX_KEY ((size_t)3 << 10)
/* Room in a request for everything but the value: a cas names its key twice. */
#define ED_REQUEST_SLACK ((size_t)16 << 10)
#define ED_PAGE 1000        /* list items when the caller sets no limit */
#define ED_CHUNK 500        /* keys per keys_only range */
#define ED_TXN_READS 128    /* ranges per read-only txn: etcd's default --max-txn-ops */
#define ED_SIZE_KEYS 128    /* values read per txn for sizes: bounds one answer */
#define ED_POOL 16          /* idle curl handles kept (each keeps its connections) */
#define ED_MAX_ENDPOINTS 16

struct ed_buf {
	char *p;
	size_t len, cap;
};

struct ed_store {
	struct kv_store base;
	char *eps[ED_MAX_ENDPOINTS];   /* "http://127.0.0.1:2379" */
	size_t neps;
	unsigned cur;                  /* atomic: the endpoint to try first */
	int64_t down_until[ED_MAX_ENDPOINTS];  /* atomic: monotonic ms */
	char *ns;                      /* namespace prefix from the URL path */
	size_t nslen;
	int timeout_ms;
	size_t max_value;
	char *cacert, *cert, *key;     /* TLS files */
	char *user, *password;         /* kept for re-authentication; never logged */

	pthread_mutex_t tok_lock;
	char *token;                   /* "Authorization:" header line, or NULL */
	unsigned tok_gen;

	pthread_mutex_t pool_lock;
	CURL *pool[ED_POOL];
	size_t npool;

	/* open only: settings from the URL's ?query (-o options win) */
	struct kv_option query[8];
	size_t nquery;
	char *query_text;
};

/* ---- Small helpers ---- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static int buf_add(struct ed_buf *b, const void *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		char *q;

		while (cap < b->len + n + 1)
			cap *= 2;
		if (!(q = realloc(b->p, cap)))
			return -ENOMEM;
		b->p = q;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

/* The first key after every key starting with p[0..*n): etcd's range_end.
 * Empty (*n = 0) when there is none: then the range runs to the end. */
static void successor(char *p, size_t *n)
{
	while (*n && (unsigned char)p[*n - 1] == 0xff)
		(*n)--;
	if (*n)
		p[*n - 1]++;
}

static const char b64chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* A JSON string holding p[0..n) in base64 ("\0" for the empty range end). */
static json_t *b64_json(const char *p, size_t n)
{
	const unsigned char *s = (const unsigned char *)p;
	char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
	json_t *j;

	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
			     (i + 2 < n ? s[i + 2] : 0);
		*o++ = b64chars[v >> 18 & 63];
		*o++ = b64chars[v >> 12 & 63];
		*o++ = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
		*o++ = i + 2 < n ? b64chars[v & 63] : '=';
	}
	j = json_stringn_nocheck(out, (size_t)(o - out));
	free(out);
	return j;
}

/* Decode base64 text (NULL = empty) into a malloc'd buffer plus a NUL. */
static int b64_decode(const char *t, char **out, size_t *len)
{
	size_t n = t ? strlen(t) : 0, o = 0;
	unsigned v = 0, bits = 0;
	char *d = malloc(n / 4 * 3 + 4);

	if (!d)
		return -ENOMEM;
	for (size_t i = 0; i < n && t[i] != '='; i++) {
		const char *c = strchr(b64chars, t[i]);
		if (!c || !t[i]) {
			free(d);
			return -EIO;
		}
		v = v << 6 | (unsigned)(c - b64chars);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			d[o++] = (char)(v >> bits & 0xff);
		}
	}
	d[o] = '\0';
	*out = d;
	*len = o;
	return 0;
}

/* int64 fields come as JSON strings ("5"), absent when zero. */
static uint64_t json_u64(json_t *o, const char *name)
{
	json_t *v = json_object_get(o, name);

	if (json_is_string(v))
		return strtoull(json_string_value(v), NULL, 10);
	if (json_is_integer(v))
		return (uint64_t)json_integer_value(v);
	return 0;
}

/* The full etcd key of a kvfs key: namespace + key, as base64 JSON. */
static json_t *key_json(struct ed_store *s, const char *key, size_t klen)
{
	char *full = malloc(s->nslen + klen + 1);
	json_t *j;

	if (!full)
		return NULL;
	memcpy(full, s->ns, s->nslen);
	if (klen)
		memcpy(full + s->nslen, key, klen);
	j = b64_json(full, s->nslen + klen);
	free(full);
	return j;
}

/* ---- HTTP: one POST to one endpoint ---- */

static size_t on_body(char *p, size_t size, size_t n, void *ctx)
{
	return buf_add(ctx, p, size * n) ? 0 : size * n;
}

static CURL *handle_get(struct ed_store *s)
{
	CURL *c = NULL;

	pthread_mutex_lock(&s->pool_lock);
	if (s->npool)
		c = s->pool[--s->npool];
	pthread_mutex_unlock(&s->pool_lock);
	return c ? c : curl_easy_init();
}

static void handle_put(struct ed_store *s, CURL *c)
{
	curl_easy_reset(c);  /* keeps the connection cache */
	pthread_mutex_lock(&s->pool_lock);
	if (s->npool < ED_POOL) {
		s->pool[s->npool++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&s->pool_lock);
	if (c)
		curl_easy_cleanup(c);
}

/* How one attempt ended. */
enum ed_outcome {
	ED_OK,          /* HTTP 200 and JSON: *resp set */
	ED_REFUSED,     /* the store answered with an error: rc says which */
	ED_RETRY,       /* the member cannot serve now (no leader...): try another */
	ED_DOWN,        /* transport failure: mark the endpoint down */
	ED_AUTH,        /* the token expired: authenticate again */
};

struct ed_attempt {
	int rc;          /* for ED_REFUSED */
	bool sent;       /* the request may have reached the store */
	char why[160];   /* for logs: no credentials in here */
};

/* etcd's error answer ({"error": "...", "code": N}) to an outcome and errno. */
static enum ed_outcome classify_error(long http, json_t *resp, struct ed_attempt *a)
{
	const char *msg = json_string_value(json_object_get(resp, "error"));
	int code = (int)json_integer_value(json_object_get(resp, "code"));

	snprintf(a->why, sizeof(a->why), "HTTP %ld: %s", http, msg ? msg : "(no message)");
	if (!msg)
		msg = "";
	a->rc = -EIO;
	/* an expired token, or none since auth was enabled after we opened */
	if (code == 16 || strstr(msg, "invalid auth token") || strstr(msg, "user name is empty"))
		return ED_AUTH;
	if (strstr(msg, "request is too large") || strstr(msg, "too many operations"))
		a->rc = -EFBIG;
	else if (strstr(msg, "key is not provided"))
		a->rc = -EINVAL;
	else if (strstr(msg, "database space exceeded") || code == 8)
		a->rc = -ENOSPC;
	else if (code == 7 || strstr(msg, "permission denied"))
		a->rc = -EACCES;
	else if (code == 14 || code == 4 || http >= 500)
		return ED_RETRY;  /* no leader, leader changed, request timed out */
	return ED_REFUSED;
}

static enum ed_outcome attempt(struct ed_store *s, size_t ep, const char *path, const char *body,
			       const char *token, int timeout_ms, json_t **resp,
			       struct ed_attempt *a)
{
	char url[512];
	struct ed_buf out = {0};
	struct curl_slist *hdr = NULL;
	CURL *c = handle_get(s);
	CURLcode cc;
	long http = 0;
	enum ed_outcome o;

	*resp = NULL;
	a->sent = false;
	if (!c) {
		a->rc = -ENOMEM;
		snprintf(a->why, sizeof(a->why), "out of memory");
		return ED_REFUSED;
	}
	snprintf(url, sizeof(url), "%s%s", s->eps[ep], path);
	hdr = curl_slist_append(hdr, "Content-Type: application/json");
	if (token)
		hdr = curl_slist_append(hdr, token);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	if (s->cacert)
		curl_easy_setopt(c, CURLOPT_CAINFO, s->cacert);
	if (s->cert)
		curl_easy_setopt(c, CURLOPT_SSLCERT, s->cert);
	if (s->key)
		curl_easy_setopt(c, CURLOPT_SSLKEY, s->key);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &http);
	if (cc != CURLE_OK) {
		long connected = 0;
		curl_easy_getinfo(c, CURLINFO_CONNECT_TIME_T, &connected);
		a->sent = connected > 0 || cc == CURLE_OPERATION_TIMEDOUT;
		snprintf(a->why, sizeof(a->why), "%s", curl_easy_strerror(cc));
		o = ED_DOWN;
	} else {
		json_error_t je;
		a->sent = true;
		*resp = json_loadb(out.p ? out.p : "", out.len, 0, &je);
		if (http == 200 && *resp) {
			o = ED_OK;
		} else if (*resp) {
			o = classify_error(http, *resp, a);
			json_decref(*resp);
			*resp = NULL;
		} else {
			snprintf(a->why, sizeof(a->why), "HTTP %ld with no JSON answer", http);
			a->rc = -EIO;
			o = http >= 500 ? ED_RETRY : ED_REFUSED;
		}
	}
	curl_slist_free_all(hdr);
	free(out.p);
	handle_put(s, c);
	return o;
}

/* ---- Authentication ---- */

static char *token_get(struct ed_store *s, unsigned *gen)
{
	char *t = NULL;

	pthread_mutex_lock(&s->tok_lock);
	if (s->token)
		t = strdup(s->token);
	*gen = s->tok_gen;
	pthread_mutex_unlock(&s->tok_lock);
	return t;
}

/* Ask endpoint ep for a token; 0 and the header line in s->token. */
static int authenticate(struct ed_store *s, size_t ep, unsigned gen, struct ed_attempt *a)
{
	json_t *req = json_pack("{s:s, s:s}", "name", s->user, "password", s->password);
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_t *resp = NULL;
	enum ed_outcome o;
	int rc = -EIO;

	json_decref(req);
	if (!body)
		return -ENOMEM;
	o = attempt(s, ep, "/v3/auth/authenticate", body, NULL, s->timeout_ms, &resp, a);
	memset(body, 0, strlen(body));  /* it held the password */
	free(body);
	if (o == ED_OK) {
		const char *t = json_string_value(json_object_get(resp, "token"));
		char *line = t ? malloc(strlen(t) + 16) : NULL;
		if (line) {
			sprintf(line, "Authorization: %s", t);
			pthread_mutex_lock(&s->tok_lock);
			if (s->tok_gen == gen) {
				free(s->token);
				s->token = line;
				s->tok_gen++;
				line = NULL;
			}
			pthread_mutex_unlock(&s->tok_lock);
			free(line);
			rc = 0;
		}
		json_decref(resp);
	} else if (o == ED_REFUSED && strstr(a->why, "authentication is not enabled")) {
		rc = 0;  /* a cluster without auth: calls go without a token */
	} else if (o == ED_REFUSED || o == ED_AUTH) {
		rc = -EACCES;
	} else {
		rc = o == ED_DOWN ? -ETIMEDOUT : -EIO;  /* let the caller try elsewhere */
	}
	return rc;
}

/* ---- One call, over the endpoints ---- */

static bool ep_down(struct ed_store *s, size_t i, int64_t now)
{
	return __atomic_load_n(&s->down_until[i], __ATOMIC_RELAXED) > now;
}

/*
 * POST body to path, failing over between endpoints as the top of this
 * file describes.  0 and the JSON answer in *resp (the caller frees it), or
 * a negative errno.  *ambiguous (if not NULL) tells whether an earlier
 * attempt may have been applied by the store before it failed.
 */
static int call(struct ed_store *s, const char *path, json_t *req, json_t **resp,
		bool *ambiguous, size_t *answered)
{
	char *body = json_dumps(req, JSON_COMPACT);
	int64_t start = now_ms(), deadline = start + (int64_t)s->timeout_ms * (int64_t)s->neps;
	unsigned failed = 0, every = (1u << s->neps) - 1;  /* endpoints down in this call */
	struct ed_attempt a = {.rc = -EIO};
	bool all_down = true, reauthed = false, refused = false;
	size_t tries = 0, skipped = 0, ep = __atomic_load_n(&s->cur, __ATOMIC_RELAXED) % s->neps;
	int rc = -EIO;

	if (ambiguous)
		*ambiguous = false;
	if (!body)
		return -ENOMEM;
	for (size_t i = 0; i < s->neps; i++)
		all_down = all_down && ep_down(s, i, start);
	for (;;) {
		int64_t now = now_ms();
		int left = (int)(deadline - now);
		unsigned gen;
		char *token;
		enum ed_outcome o;

		if (left <= 0 || failed == every || (all_down && tries >= 1) || tries >= 200)
			break;
		if ((failed & 1u << ep) ||
		    (!all_down && ep_down(s, ep, now) && skipped++ < s->neps)) {
			ep = (ep + 1) % s->neps;  /* failed already, or seen down a moment ago */
			continue;
		}
		token = token_get(s, &gen);
		o = attempt(s, ep, path, body, token, left < s->timeout_ms ? left : s->timeout_ms,
			    resp, &a);
		free(token);
		tries++;
		if (a.sent && o != ED_OK && ambiguous)
			*ambiguous = true;
		if (o == ED_OK) {
			__atomic_store_n(&s->cur, (unsigned)ep, __ATOMIC_RELAXED);
			__atomic_store_n(&s->down_until[ep], 0, __ATOMIC_RELAXED);
			if (answered)
				*answered = ep;
			rc = 0;
			break;
		}
		if (o == ED_REFUSED) {
			rc = a.rc;
			refused = true;
			break;
		}
		if (o == ED_AUTH && s->user && !reauthed) {
			reauthed = true;
			rc = authenticate(s, ep, gen, &a);
			if (rc == 0)
				continue;  /* same endpoint, new token */
			if (rc != -ETIMEDOUT) {
				refused = true;
				break;
			}
			o = ED_DOWN;
		} else if (o == ED_AUTH) {
			rc = -EACCES;
			refused = true;
			break;
		}
		if (o == ED_DOWN) {
			int hold = s->timeout_ms > 1000 ? s->timeout_ms : 1000;
			__atomic_store_n(&s->down_until[ep], now_ms() + hold, __ATOMIC_RELAXED);
			failed |= 1u << ep;
			if (failed != every && !all_down)
				kv_log(KV_LOG_WARN, "etcd: %s: %s; trying the next endpoint",
				       s->eps[ep], a.why);
		} else {
			sleep_ms(50);  /* "no leader": give the election a moment */
		}
		ep = (ep + 1) % s->neps;
		__atomic_store_n(&s->cur, (unsigned)ep, __ATOMIC_RELAXED);
		rc = -EIO;
	}
	free(body);
	if (!refused && rc == -EIO)
		kv_log(KV_LOG_ERR, "etcd: %s: no endpoint answered (last: %s)", path,
		       a.why[0] ? a.why : "timed out");
	else if (rc == -EFBIG)
		kv_log(KV_LOG_WARN, "etcd: %s refused: %s (see --max-request-bytes and "
		       "--max-txn-ops of the cluster, and -o max_request_bytes)", path, a.why);
	else if (rc == -EIO)
		kv_log(KV_LOG_ERR, "etcd: %s: %s", path, a.why);
	else if (rc && rc != -EINVAL)
		kv_log(KV_LOG_WARN, "etcd: %s refused: %s", path, a.why);
	return rc;
}

/* ---- Single-key operations ---- */

/* The first kv of a range answer, or NULL. */
static json_t *first_kv(json_t *resp)
{
	return json_array_get(json_object_get(resp, "kvs"), 0);
}

static int ed_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	json_t *req, *resp, *kv;
	int rc;

	if (s->nslen + klen == 0)
		return -ENOENT;  /* etcd has no empty key */
	req = json_pack("{s:o}", "key", key_json(s, key, klen));
	if (!req)
		return -ENOMEM;
	rc = call(s, "/v3/kv/range", req, &resp, NULL, NULL);
	json_decref(req);
	if (rc)
		return rc == -EINVAL ? -EIO : rc;
	kv = first_kv(resp);
	if (!kv) {
		rc = -ENOENT;
	} else {
		rc = b64_decode(json_string_value(json_object_get(kv, "value")), val, len);
		if (version)
			*version = json_u64(kv, "mod_revision");
	}
	json_decref(resp);
	return rc;
}

static json_t *put_op(struct ed_store *s, const char *key, size_t klen, const char *val,
		      size_t vlen)
{
	return json_pack("{s:{s:o, s:o}}", "request_put", "key", key_json(s, key, klen),
			 "value", b64_json(val, vlen));
}

static int ed_set(struct kv_store *st, const char *key, size_t klen, const char *val,
		  size_t vlen)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	json_t *req, *resp;
	int rc;

	if (s->nslen + klen == 0)
		return -EINVAL;
	req = json_pack("{s:o, s:o}", "key", key_json(s, key, klen), "value", b64_json(val, vlen));
	if (!req)
		return -ENOMEM;
	rc = call(s, "/v3/kv/put", req, &resp, NULL, NULL);
	json_decref(req);
	if (!rc)
		json_decref(resp);
	return rc;
}

static int ed_del(struct kv_store *st, const char *key, size_t klen)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	json_t *req, *resp;
	bool ambiguous;
	int rc;

	if (s->nslen + klen == 0)
		return -ENOENT;
	req = json_pack("{s:o}", "key", key_json(s, key, klen));
	if (!req)
		return -ENOMEM;
	rc = call(s, "/v3/kv/deleterange", req, &resp, &ambiguous, NULL);
	json_decref(req);
	if (rc)
		return rc == -EINVAL ? -EIO : rc;
	/* After a lost answer the first attempt may be the one that deleted it. */
	if (json_u64(resp, "deleted") == 0 && !ambiguous)
		rc = -ENOENT;
	json_decref(resp);
	return rc;
}

static int ed_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	json_t *cmp, *req, *resp;
	bool ambiguous;
	int rc;

	if (s->nslen + klen == 0)
		return -EINVAL;
	/* version 0: the key must not exist, i.e. its create_revision is 0. */
	if (version == 0)
		cmp = json_pack("{s:o, s:s, s:s, s:s}", "key", key_json(s, key, klen),
				"target", "CREATE", "result", "EQUAL", "create_revision", "0");
	else
		cmp = json_pack("{s:o, s:s, s:s, s:I}", "key", key_json(s, key, klen),
				"target", "MOD", "result", "EQUAL", "mod_revision",
				(json_int_t)version);
	req = json_pack("{s:[o], s:[o]}", "compare", cmp, "success", put_op(s, key, klen, val, vlen));
	if (!req)
		return -ENOMEM;
	rc = call(s, "/v3/kv/txn", req, &resp, &ambiguous, NULL);
	json_decref(req);
	if (rc)
		return rc;
	if (!json_is_true(json_object_get(resp, "succeeded")))
		rc = -ECANCELED;
	json_decref(resp);
	if (rc == -ECANCELED && ambiguous) {
		/* Our lost first attempt may have won: then the key holds our value. */
		char *cur;
		size_t clen;
		if (ed_get(st, key, klen, &cur, &clen, NULL) == 0) {
			if (clen == vlen && (vlen == 0 || memcmp(cur, val, vlen) == 0))
				rc = 0;
			free(cur);
		}
	}
	return rc;
}

/* Sort order for apply: by key, then by position, so the last op per key is found. */
static int op_order(const void *x, const void *y, void *ctx)
{
	const struct kv_op *ops = ctx;
	size_t i = *(const size_t *)x, j = *(const size_t *)y;
	int c = kv_key_cmp(ops[i].key, ops[i].key_len, ops[j].key, ops[j].key_len);

	return c ? c : (i > j) - (i < j);
}

/*
 * etcd refuses a txn that names one key twice, so only the last operation
 * on each key is sent: it alone decides the key's final state.  keep[i]
 * says whether ops[i] is one of those.
 */
static int last_per_key(const struct kv_op *ops, size_t n, bool *keep)
{
	size_t *idx = malloc(n * sizeof(*idx));

	if (!idx)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	qsort_r(idx, n, sizeof(*idx), op_order, (void *)ops);
	for (size_t k = 0; k < n; k++) {
		size_t i = idx[k];
		keep[i] = k + 1 == n || kv_key_cmp(ops[i].key, ops[i].key_len, ops[idx[k + 1]].key,
						  ops[idx[k + 1]].key_len) != 0;
	}
	free(idx);
	return 0;
}

static int ed_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	json_t *list, *req, *resp;
	bool *keep;
	int rc;

	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (ops[i].type == KV_OP_SET && s->nslen + ops[i].key_len == 0)
			return -EINVAL;
	keep = calloc(n, sizeof(*keep));
	list = json_array();
	if (!keep || !list || last_per_key(ops, n, keep)) {
		free(keep);
		json_decref(list);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		const struct kv_op *op = &ops[i];
		json_t *o;
		if (!keep[i] || (op->type == KV_OP_DEL && s->nslen + op->key_len == 0))
			continue;
		if (op->type == KV_OP_SET)
			o = put_op(s, op->key, op->key_len, op->val, op->val_len);
		else
			o = json_pack("{s:{s:o}}", "request_delete_range", "key",
				      key_json(s, op->key, op->key_len));
		if (!o || json_array_append_new(list, o)) {
			free(keep);
			json_decref(list);
			return -ENOMEM;
		}
	}
	free(keep);
	req = json_pack("{s:o}", "success", list);
	if (!req)
		return -ENOMEM;
	rc = call(s, "/v3/kv/txn", req, &resp, NULL, NULL);
	json_decref(req);
	if (!rc)
		json_decref(resp);
	return rc;
}

/* ---- list ---- */

/* One item of a page: a key or a group, its text in the page's buffer. */
struct ed_item {
	size_t off, len;   /* full etcd key (namespace included) */
	uint64_t size;
	bool is_prefix;
	bool found;        /* plain key: its value was read */
	size_t run;        /* plain key: which run of adjacent plain keys */
};

struct ed_page {
	struct ed_buf text;
	struct ed_item *items;
	size_t n, cap;
	size_t nruns;
};

static int page_add(struct ed_page *pg, const char *k, size_t klen, bool is_prefix, size_t run)
{
	if (pg->n == pg->cap) {
		size_t cap = pg->cap ? pg->cap * 2 : 64;
		struct ed_item *it = realloc(pg->items, cap * sizeof(*it));
		if (!it)
			return -ENOMEM;
		pg->items = it;
		pg->cap = cap;
	}
	pg->items[pg->n++] = (struct ed_item){.off = pg->text.len, .len = klen,
					      .is_prefix = is_prefix, .run = run};
	return buf_add(&pg->text, k, klen);
}

/* The range [lo, hi) of keys, keys only, at most limit of them. */
static int range_keys(struct ed_store *s, const struct ed_buf *lo, const struct ed_buf *hi,
		      size_t limit, json_t **resp)
{
	json_t *req = json_pack("{s:o, s:o, s:I, s:b}",
				"key", lo->len ? b64_json(lo->p, lo->len) : b64_json("", 1),
				"range_end", hi->len ? b64_json(hi->p, hi->len) : b64_json("", 1),
				"limit", (json_int_t)limit, "keys_only", 1);
	int rc;

	if (!req)
		return -ENOMEM;
	rc = call(s, "/v3/kv/range", req, resp, NULL, NULL);
	json_decref(req);
	return rc == -EINVAL ? -EIO : rc;
}

/* Record in pg the sizes of the runs [r0, r1) from one txn answer. */
static int sizes_from(struct ed_page *pg, size_t r0, json_t *resp)
{
	json_t *responses = json_object_get(resp, "responses");
	size_t i = 0;

	while (i < pg->n && (pg->items[i].is_prefix || pg->items[i].run < r0))
		i++;
	for (size_t r = 0; r < json_array_size(responses); r++) {
		json_t *kvs = json_object_get(json_object_get(json_array_get(responses, r),
							      "response_range"), "kvs");
		for (size_t k = 0; k < json_array_size(kvs); k++) {
			json_t *kv = json_array_get(kvs, k);
			char *key, *val;
			size_t klen, vlen;
			int c = 1;

			if (b64_decode(json_string_value(json_object_get(kv, "key")), &key, &klen))
				return -EIO;
			/* Both sorted: skip items gone since the keys_only read, and new keys. */
			while (i < pg->n && (pg->items[i].is_prefix ||
			       (c = kv_key_cmp(pg->text.p + pg->items[i].off, pg->items[i].len,
					      key, klen)) < 0))
				i++;
			free(key);
			if (i < pg->n && c == 0) {
				if (b64_decode(json_string_value(json_object_get(kv, "value")), &val,
					       &vlen))
					return -EIO;
				free(val);
				pg->items[i].size = vlen;
				pg->items[i].found = true;
				i++;
			}
		}
	}
	return 0;
}

/* Read the values of pg's plain keys (one range per run) to learn their sizes. */
static int page_sizes(struct ed_store *s, struct ed_page *pg)
{
	size_t i = 0, r0 = 0;

	while (r0 < pg->nruns) {
		json_t *ops = json_array(), *req, *resp;
		size_t r = r0, keys = 0;
		int rc;

		if (!ops)
			return -ENOMEM;
		/* Runs until ED_TXN_READS ranges or ED_SIZE_KEYS values (a run has at most that). */
		for (; r < pg->nruns && r - r0 < ED_TXN_READS; r++) {
			size_t first, last, j;
			char *end;
			while (pg->items[i].is_prefix || pg->items[i].run != r)
				i++;
			for (j = i; j < pg->n && !pg->items[j].is_prefix && pg->items[j].run == r; j++)
				;
			if (r > r0 && keys + (j - i) > ED_SIZE_KEYS)
				break;
			keys += j - i;
			first = i;
			last = j - 1;
			i = j;
			/* [first key, last key + "\0"): exactly the run's keys */
			end = malloc(pg->items[last].len + 1);
			if (!end) {
				json_decref(ops);
				return -ENOMEM;
			}
			memcpy(end, pg->text.p + pg->items[last].off, pg->items[last].len);
			end[pg->items[last].len] = '\0';
			json_array_append_new(ops, json_pack("{s:{s:o, s:o}}", "request_range",
				"key", b64_json(pg->text.p + pg->items[first].off, pg->items[first].len),
				"range_end", b64_json(end, pg->items[last].len + 1)));
			free(end);
		}
		req = json_pack("{s:o}", "success", ops);
		if (!req)
			return -ENOMEM;
		rc = call(s, "/v3/kv/txn", req, &resp, NULL, NULL);
		json_decref(req);
		if (rc)
			return rc == -EINVAL ? -EIO : rc;
		rc = sizes_from(pg, r0, resp);
		json_decref(resp);
		if (rc)
			return rc;
		r0 = r;
	}
	return 0;
}

/* Move lo to key[0..klen) + "\0", the first key after it. */
static int lo_after_key(struct ed_buf *lo, const char *key, size_t klen)
{
	lo->len = 0;
	return buf_add(lo, key, klen) ? -ENOMEM : buf_add(lo, "", 1);
}

/* Move lo past every key of the group g[0..glen); *end if nothing can follow. */
static int lo_after_group(struct ed_buf *lo, const char *g, size_t glen, bool *end)
{
	lo->len = 0;
	if (buf_add(lo, g, glen))
		return -ENOMEM;
	successor(lo->p, &lo->len);
	if (!lo->len)
		*end = true;
	return 0;
}

/*
 * Read one page of keys from lo: fill pg with at most want items and move lo
 * past what was read (past a whole group when the page ended inside one).
 * *end: nothing is left in [lo, hi).  *full: a further item was seen.
 */
static int page_read(struct ed_store *s, const struct kv_list_req *req, struct ed_buf *lo,
		     const struct ed_buf *hi, size_t want, struct ed_page *pg, bool *end,
		     bool *full)
{
	size_t plen = s->nslen + req->prefix_len;
	struct ed_buf grp = {0};  /* the group of the keys just seen, if any */
	bool prev_plain = false;
	size_t run_len = 0;
	json_t *resp, *kvs;
	int rc;

	pg->n = pg->nruns = 0;
	pg->text.len = 0;
	*end = *full = false;
	rc = range_keys(s, lo, hi, want + 1 < ED_CHUNK ? want + 1 : ED_CHUNK, &resp);
	if (rc)
		return rc;
	kvs = json_object_get(resp, "kvs");
	*end = !json_is_true(json_object_get(resp, "more"));
	for (size_t k = 0; k < json_array_size(kvs) && !rc && !*full; k++) {
		const char *d = NULL;
		char *key;
		size_t klen;

		rc = b64_decode(json_string_value(json_object_get(json_array_get(kvs, k), "key")),
				&key, &klen);
		if (rc)
			break;
		if (req->delim && klen > plen)
			d = memchr(key + plen, req->delim, klen - plen);
		if (d) {
			size_t gl = (size_t)(d - key) + 1;
			/* Below start, a group was listed by an earlier page. */
			bool below = req->start && kv_key_cmp(key + s->nslen, gl - s->nslen,
							     req->start, req->start_len) < 0;
			prev_plain = false;
			if (grp.len == gl && memcmp(grp.p, key, gl) == 0)
				;  /* more of the group just listed */
			else if (!below && pg->n == want)
				*full = true;
			else {
				if (!below)
					rc = page_add(pg, key, gl, true, 0);
				grp.len = 0;
				rc = rc ? rc : buf_add(&grp, key, gl);
				rc = rc ? rc : lo_after_group(lo, key, gl, end);
			}
		} else if (pg->n == want) {
			*full = true;
		} else {
			grp.len = 0;
			if (!prev_plain || ++run_len == ED_SIZE_KEYS) {
				pg->nruns++;
				run_len = 0;
			}
			prev_plain = true;
			rc = page_add(pg, key, klen, false, pg->nruns - 1);
			rc = rc ? rc : lo_after_key(lo, key, klen);
		}
		free(key);
	}
	free(grp.p);
	json_decref(resp);
	if (!rc && pg->nruns)
		rc = page_sizes(s, pg);
	return rc;
}

static int ed_list(struct kv_store *st, const struct kv_list_req *req, kv_list_cb *cb,
		   void *ctx, bool *more)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	size_t limit = req->limit ? req->limit : ED_PAGE, done = 0;
	struct ed_buf lo = {0}, hi = {0};
	struct ed_page pg = {0};
	bool end = false, full = false;
	int rc = 0;

	*more = false;
	/* [namespace + max(prefix, start), successor(namespace + prefix)) */
	rc = buf_add(&hi, s->ns, s->nslen);
	rc = rc ? rc : buf_add(&hi, req->prefix, req->prefix_len);
	rc = rc ? rc : buf_add(&lo, s->ns, s->nslen);
	if (!rc && req->start && kv_key_cmp(req->start, req->start_len, req->prefix,
					   req->prefix_len) > 0)
		rc = buf_add(&lo, req->start, req->start_len);
	else if (!rc)
		rc = buf_add(&lo, req->prefix, req->prefix_len);
	if (!rc)
		successor(hi.p, &hi.len);
	if (!rc && hi.len && kv_key_cmp(lo.p, lo.len, hi.p, hi.len) >= 0)
		end = true;  /* start lies beyond the prefix */
	while (!rc && !end && done < limit) {
		rc = page_read(s, req, &lo, &hi, limit - done, &pg, &end, &full);
		for (size_t i = 0; !rc && i < pg.n; i++) {
			struct ed_item *it = &pg.items[i];
			struct kv_entry e = {.key = pg.text.p + it->off + s->nslen,
					     .key_len = it->len - s->nslen, .size = it->size,
					     .is_prefix = it->is_prefix};
			int stop;
			if (!it->is_prefix && !it->found)
				continue;  /* deleted since its name was read */
			stop = cb(ctx, &e);
			done++;
			if (stop) {
				*more = true;
				rc = stop < 0 ? stop : 0;
				goto out;
			}
		}
		if (full)
			break;
	}
	*more = !rc && (full || (!end && done >= limit));
out:
	free(lo.p);
	free(hi.p);
	free(pg.text.p);
	free(pg.items);
	return rc;
}

/* ---- health ---- */

static int ed_health(struct kv_store *st, struct kv_health *h)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	json_t *req = json_object(), *resp;
	size_t ep = 0;
	uint64_t leader, self;
	const char *version;
	int rc;

	if (!req)
		return -ENOMEM;
	rc = call(s, "/v3/maintenance/status", req, &resp, NULL, &ep);
	json_decref(req);
	if (rc) {
		snprintf(h->detail, sizeof(h->detail), "etcd: no endpoint answered (%s)", strerror(-rc));
		return -EIO;
	}
	leader = json_u64(resp, "leader");
	self = json_u64(json_object_get(resp, "header"), "member_id");
	version = json_string_value(json_object_get(resp, "version"));
	kv_health_fact(h, "answered_by", "%s", s->eps[ep]);
	kv_health_fact(h, "version", "%s", version ? version : "?");
	kv_health_fact(h, "leader", "%016llx%s", (unsigned long long)leader,
	     leader && leader == self ? " (this member)" : "");
	kv_health_fact(h, "raft_index", "%llu", (unsigned long long)json_u64(resp, "raftIndex"));
	kv_health_fact(h, "raft_term", "%llu", (unsigned long long)json_u64(resp, "raftTerm"));
	kv_health_fact(h, "db_size", "%llu", (unsigned long long)json_u64(resp, "dbSize"));
	kv_health_fact(h, "revision", "%llu",
	     (unsigned long long)json_u64(json_object_get(resp, "header"), "revision"));
	kv_health_fact(h, "endpoints", "%zu", s->neps);
	if (!leader) {
		snprintf(h->detail, sizeof(h->detail), "etcd %s at %s: no leader (no quorum)",
			 version ? version : "?", s->eps[ep]);
		rc = -EIO;
	} else {
		json_t *errs = json_object_get(resp, "errors");
		snprintf(h->detail, sizeof(h->detail), "etcd %s, %zu endpoint%s, answered by %s%s%s",
			 version ? version : "?", s->neps, s->neps == 1 ? "" : "s", s->eps[ep],
			 json_array_size(errs) ? ": " : "",
			 json_array_size(errs) ? json_string_value(json_array_get(errs, 0)) : "");
	}
	json_decref(resp);
	return rc;
}

static void ed_store_limits(struct kv_store *st, struct kv_limits *out)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);

	out->max_key = ED_MAX_KEY - s->nslen;
	out->max_value = s->max_value;
}

/* ---- open and close ---- */

static void ed_free(struct ed_store *s)
{
	for (size_t i = 0; i < s->neps; i++)
		free(s->eps[i]);
	while (s->npool)
		curl_easy_cleanup(s->pool[--s->npool]);
	if (s->password) {
		memset(s->password, 0, strlen(s->password));
		free(s->password);
	}
	if (s->token) {
		memset(s->token, 0, strlen(s->token));
		free(s->token);
	}
	free(s->user);
	free(s->ns);
	free(s->query_text);
	free(s->cacert);
	free(s->cert);
	free(s->key);
	pthread_mutex_destroy(&s->tok_lock);
	pthread_mutex_destroy(&s->pool_lock);
	free(s);
}

static void ed_close(struct kv_store *st)
{
	ed_free(kv_store_cast(struct ed_store, st));
}

/* Add one endpoint, "host[:port]" or "http(s)://host[:port]". */
static int add_endpoint(struct ed_store *s, const char *p, size_t n, bool tls, char *err,
			size_t errlen)
{
	const char *scheme = tls ? "https://" : "http://";
	bool port = false;
	char *ep;

	if (n > 7 && strncmp(p, "http://", 7) == 0) {
		scheme = "http://";
		p += 7, n -= 7;
	} else if (n > 8 && strncmp(p, "https://", 8) == 0) {
		scheme = "https://";
		p += 8, n -= 8;
	}
	while (n && p[n - 1] == '/')
		n--;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == ':' && !memchr(p + i + 1, ']', n - i - 1))
			port = true;
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]_",
			    p[i]) || !p[i]) {
			snprintf(err, errlen, "etcd: bad endpoint '%.*s': expected host:port", (int)n, p);
			return -EINVAL;
		}
	}
	if (n == 0 || n > 255) {
		snprintf(err, errlen, "etcd: empty or overlong endpoint in the URL");
		return -EINVAL;
	}
	if (s->neps == ED_MAX_ENDPOINTS) {
		snprintf(err, errlen, "etcd: more than %d endpoints", ED_MAX_ENDPOINTS);
		return -EINVAL;
	}
	ep = malloc(strlen(scheme) + n + 8);
	if (!ep)
		return -ENOMEM;
	sprintf(ep, "%s%.*s%s", scheme, (int)n, p, port ? "" : ":2379");
	s->eps[s->neps++] = ep;
	return 0;
}

static int add_endpoints(struct ed_store *s, const char *list, size_t n, bool tls, char *err,
			 size_t errlen)
{
	const char *p = list, *e = list + n;
	int rc = 0;

	while (!rc && p < e) {
		const char *c = memchr(p, ',', (size_t)(e - p));
		size_t len = c ? (size_t)(c - p) : (size_t)(e - p);
		if (len)
			rc = add_endpoint(s, p, len, tls, err, errlen);
		p += len + 1;
	}
	return rc;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	       c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* %-decode p[0..n) in place; its new length, or SIZE_MAX on a bad escape. */
static size_t pct_decode(char *p, size_t n)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		int hi, lo;
		if (p[i] != '%') {
			p[o++] = p[i];
			continue;
		}
		if (i + 2 >= n)
			return SIZE_MAX;
		hi = hexval(p[i + 1]);
		lo = hi >= 0 ? hexval(p[i + 2]) : -1;
		if (lo < 0)
			return SIZE_MAX;
		p[o++] = (char)(hi << 4 | lo);
		i += 2;
	}
	p[o] = '\0';
	return o;
}

/* The URL path, %-decoded, as the namespace: "app" and "app/" both mean "app/". */
static int set_namespace(struct ed_store *s, const char *path, size_t max, char *err,
			 size_t errlen)
{
	size_t n = strnlen(path, max);

	s->ns = malloc(n + 2);
	if (!s->ns)
		return -ENOMEM;
	memcpy(s->ns, path, n);
	n = pct_decode(s->ns, n);
	if (n == SIZE_MAX) {
		snprintf(err, errlen, "etcd: bad %%-escape in the URL path");
		return -EINVAL;
	}
	if (n && s->ns[n - 1] != '/')
		s->ns[n++] = '/';
	s->ns[n] = '\0';
	s->nslen = n;
	if (s->nslen >= ED_MAX_KEY / 2) {
		snprintf(err, errlen, "etcd: the URL's key prefix is too long");
		return -EINVAL;
	}
	return 0;
}

/* "?name=value&..." after the path: the same settings as -o (not secrets). */
static int parse_query(struct ed_store *s, const char *q, char *err, size_t errlen)
{
	char *save = NULL, *tok;

	s->query_text = strdup(q);
	if (!s->query_text)
		return -ENOMEM;
	for (tok = strtok_r(s->query_text, "&", &save); tok; tok = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(tok, '=');
		bool known = false;
		if (!eq || s->nquery == sizeof(s->query) / sizeof(s->query[0])) {
			snprintf(err, errlen, "etcd: bad URL query: expected name=value&...");
			return -EINVAL;
		}
		*eq = '\0';
		for (const char *const *o = kv_backend_etcd.options; *o && !known; o++)
			known = strcmp(*o, tok) == 0;
		if (!known || pct_decode(eq + 1, strlen(eq + 1)) == SIZE_MAX) {
			snprintf(err, errlen, "etcd: unknown or bad URL query setting '%s'", tok);
			return -EINVAL;
		}
		s->query[s->nquery++] = (struct kv_option){.name = tok, .value = eq + 1};
	}
	return 0;
}

/* A setting from -o, else from the URL's query. */
static const char *setting(struct ed_store *s, const struct kv_open_args *a, const char *name)
{
	const char *v = kv_option_get(a, name);

	for (size_t i = 0; !v && i < s->nquery; i++)
		if (strcmp(s->query[i].name, name) == 0)
			v = s->query[i].value;
	return v;
}

/* "//[user@]h1:p1,h2:p2/prefix" (or "" / "///prefix": $ETCDCTL_ENDPOINTS). */
static int parse_location(struct ed_store *s, const struct kv_open_args *a, char *err,
			  size_t errlen)
{
	const char *loc = a->location ? a->location : "";
	bool tls = strncasecmp(a->url, "etcd+https:", 11) == 0;
	const char *hosts, *slash, *at, *env;
	size_t hlen;
	int rc;
	const char *q = strchr(loc, '?');

	if (q) {
		rc = parse_query(s, q + 1, err, errlen);
		if (rc)
			return rc;
	}
	if (strncmp(loc, "//", 2) != 0) {
		if (*loc) {
			snprintf(err, errlen, "etcd: expected etcd://host:port[,host:port...]/[prefix]");
			return -EINVAL;
		}
		loc = "//";
	}
	hosts = loc + 2;
	hlen = q ? (size_t)(q - hosts) : strlen(hosts);
	slash = memchr(hosts, '/', hlen);
	if (slash)
		hlen = (size_t)(slash - hosts);
	at = memchr(hosts, '@', hlen);
	if (at) {
		if (memchr(hosts, ':', (size_t)(at - hosts))) {
			snprintf(err, errlen, "etcd: no password in the URL: put it in a file "
				 "(-o password_file=PATH) or in $ETCDCTL_PASSWORD");
			return -EINVAL;
		}
		s->user = strndup(hosts, (size_t)(at - hosts));
		if (!s->user)
			return -ENOMEM;
		hlen -= (size_t)(at + 1 - hosts);
		hosts = at + 1;
	}
	rc = add_endpoints(s, hosts, hlen, tls, err, errlen);
	if (!rc && s->neps == 0 && (env = getenv("ETCDCTL_ENDPOINTS")) && *env)
		rc = add_endpoints(s, env, strlen(env), tls, err, errlen);
	if (!rc && s->neps == 0)
		rc = add_endpoint(s, ED_DEFAULT_ENDPOINT, strlen(ED_DEFAULT_ENDPOINT), tls, err,
				  errlen);
	if (!rc)
		rc = set_namespace(s, slash ? slash + 1 : "", q ? (size_t)(q - slash - 1) : SIZE_MAX,
				   err, errlen);
	return rc;
}

/* The first line of a file (a password), or NULL with err set. */
static char *read_secret(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	char line[1024];
	char *nl;

	if (!f) {
		snprintf(err, errlen, "etcd: cannot read password_file %s: %s", path, strerror(errno));
		return NULL;
	}
	if (!fgets(line, sizeof(line), f))
		line[0] = '\0';
	fclose(f);
	if ((nl = strpbrk(line, "\r\n")))
		*nl = '\0';
	nl = strdup(line);
	memset(line, 0, sizeof(line));
	return nl;
}

/* -o user / password_file, $ETCDCTL_USER ("user" or "user:password"), $ETCDCTL_PASSWORD. */
static int parse_credentials(struct ed_store *s, const struct kv_open_args *a, char *err,
			     size_t errlen)
{
	const char *user = setting(s, a, "user"), *pwfile = setting(s, a, "password_file");
	const char *env = getenv("ETCDCTL_USER");
	const char *envpw = getenv("ETCDCTL_PASSWORD");

	if (user) {
		free(s->user);
		if (!(s->user = strdup(user)))
			return -ENOMEM;
	}
	if (!s->user && env && *env) {
		const char *c = strchr(env, ':');
		s->user = c ? strndup(env, (size_t)(c - env)) : strdup(env);
		if (!s->user)
			return -ENOMEM;
		if (c && !(s->password = strdup(c + 1)))
			return -ENOMEM;
	}
	if (pwfile) {
		free(s->password);
		if (!(s->password = read_secret(pwfile, err, errlen)))
			return err[0] ? -EACCES : -ENOMEM;
	} else if (!s->password && envpw) {
		if (!(s->password = strdup(envpw)))
			return -ENOMEM;
	}
	if (s->password && !s->user) {
		snprintf(err, errlen, "etcd: a password but no user: give -o user=NAME or $ETCDCTL_USER");
		return -EINVAL;
	}
	if (s->user && !s->password) {
		snprintf(err, errlen, "etcd: user %s needs a password: -o password_file=PATH, "
			 "$ETCDCTL_USER=user:password or $ETCDCTL_PASSWORD", s->user);
		return -EINVAL;
	}
	return 0;
}

static int parse_options(struct ed_store *s, const struct kv_open_args *a, char *err,
			 size_t errlen)
{
	static const struct { const char *opt, *env; size_t off; } files[] = {
		{"cacert", "ETCDCTL_CACERT", offsetof(struct ed_store, cacert)},
		{"cert", "ETCDCTL_CERT", offsetof(struct ed_store, cert)},
		{"key", "ETCDCTL_KEY", offsetof(struct ed_store, key)},
	};
	const char *v = setting(s, a, "max_request_bytes");
	uint64_t req = ED_MAX_REQUEST;

	if (v && (kv_parse_size(v, &req) || req < 4 * ED_REQUEST_SLACK || req > ED_MAX_REQUEST_OPT)) {
		snprintf(err, errlen, "etcd: bad max_request_bytes '%s' (etcd's --max-request-bytes, "
			 "64K to 128M)", v);
		return -EINVAL;
	}
	s->max_value = (size_t)req - ED_REQUEST_SLACK;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		const char *f = setting(s, a, files[i].opt);
		char **slot = (char **)(void *)((char *)s + files[i].off);
		if (!f)
			f = getenv(files[i].env);
		if (f && *f && !(*slot = strdup(f)))
			return -ENOMEM;
	}
	return parse_credentials(s, a, err, errlen);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_start(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int ed_open(const struct kv_open_args *args, struct kv_store **out, char *err,
		   size_t errlen)
{
	struct ed_store *s = calloc(1, sizeof(*s));
	struct ed_attempt a = {0};
	int rc;

	if (!s)
		return -ENOMEM;
	pthread_once(&curl_once, curl_start);
	pthread_mutex_init(&s->tok_lock, NULL);
	pthread_mutex_init(&s->pool_lock, NULL);
	s->timeout_ms = args->timeout_ms > 0 ? args->timeout_ms : 5000;
	rc = parse_location(s, args, err, errlen);
	if (!rc)
		rc = parse_options(s, args, err, errlen);
	/* Log in now, so that a wrong password is an error at mount time. */
	for (size_t i = 0; !rc && s->user && i < s->neps; i++) {
		rc = authenticate(s, i, 0, &a);
		if (rc == -ETIMEDOUT || rc == -EIO)
			rc = i + 1 < s->neps ? 0 : -EIO;
		else
			break;
	}
	if (rc == -EACCES && !err[0])
		snprintf(err, errlen, "etcd: authentication as %s failed: %s", s->user, a.why);
	else if (rc == -EIO && !err[0])
		snprintf(err, errlen, "etcd: cannot reach any endpoint to authenticate (%s)", a.why);
	if (rc) {
		ed_free(s);
		return rc;
	}
	s->base.be = &kv_backend_etcd;
	*out = &s->base;
	return 0;
}

/*
 * -o options.  user, password_file: etcd authentication (also $ETCDCTL_USER,
 * $ETCDCTL_PASSWORD).  cacert, cert, key: TLS files (also $ETCDCTL_CACERT,
 * $ETCDCTL_CERT, $ETCDCTL_KEY).  max_request_bytes: the cluster's
 * --max-request-bytes, from which the value limit follows.
 */
static const char *const ed_options[] = {
	"user", "password_file", "cacert", "cert", "key", "max_request_bytes", NULL,
};

/*
 * Every write is committed to a quorum's fsynced log before etcd answers,
 * so KV_CAP_SYNC holds with no sync of our own.
 */
const struct kv_backend kv_backend_etcd = {
	.scheme = "etcd",
	.aliases = (const char *const[]){"etcd+https", NULL},
	.summary = "etcd v3 cluster through its JSON gateway, with failover between members",
	.usage = "etcd://host:2379[,host:2379...]/[prefix]",
	.options = ed_options,
	.caps = KV_CAP_ORDERED | KV_CAP_CAS | KV_CAP_TXN | KV_CAP_SYNC | KV_CAP_PERSIST,
	/* the widest a store may be; each store narrows it (ed_store_limits) */
	.limits = {.max_key = ED_MAX_KEY, .max_value = ED_MAX_REQUEST_OPT - ED_REQUEST_SLACK},
	.open = ed_open,
	.close = ed_close,
	.get = ed_get,
	.set = ed_set,
	.del = ed_del,
	.list = ed_list,
	.health = ed_health,
	.cas = ed_cas,
	.apply = ed_apply,
	.store_limits = ed_store_limits,
};
