/*
 * etcd.c - an etcd v3 cluster through its JSON gateway (http.h, jansson):
 * "etcd://host:2379[,host:2379...]/[prefix]", "etcd+https://..." for TLS.
 * Every key is its own etcd key, byte for byte after the URL's prefix, so
 * etcdctl sees the keys kvfs shows.  The gateway speaks JSON with keys and
 * values in base64 and int64s as strings.
 *
 * Endpoints.  Calls go to the endpoint that last answered; a transport
 * failure (refused, reset, timed out: a dead or SIGSTOPped member) marks it
 * down for a while and the call moves on to the next one, as do "no leader"
 * answers after a backoff.  When every endpoint has failed, the call starts
 * over after a backoff while its timeout lasts (a restarting cluster), and
 * never lasts longer than timeout_ms times the number of endpoints; while
 * every endpoint is marked down, only one is tried, so a dead cluster costs
 * one timeout per call.  A write that failed in transport may still have
 * been applied: puts are idempotent, and a retried delete or cas treats
 * "already gone" and "already holds my value" as its own success.
 *
 * Scans read ranges with their values (etcd tells a value's size in no
 * other way), ED_SCAN_KEYS at a time, with no sort_order (etcd 3.4 would
 * then read the whole range before applying limit).  Multi-key writes are
 * one txn, so apply is atomic; one over --max-txn-ops or
 * --max-request-bytes fails with -EFBIG rather than being split.
 */
#include "kv.h"
#include "http.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const struct kv_backend kv_backend_etcd;  /* defined at the bottom */

#define ED_DEFAULT_ENDPOINT "127.0.0.1:2379"
#define ED_MAX_REQUEST ((uint64_t)1572864)  /* etcd's default --max-request-bytes */
/* The most -o max_request_bytes may say: fs/ holds a whole value in memory,
 * and a value travels as base64 JSON, a third larger again. */
#define ED_MAX_REQUEST_OPT ((uint64_t)128 << 20)
/* etcd limits a key only by the request size; 3 KiB keeps every key
 * reachable through one absolute path (PATH_MAX 4096) under a mount point. */
#define ED_MAX_KEY ((size_t)3 << 10)
/* Room in a request for everything but the value: a cas names its key twice. */
#define ED_REQUEST_SLACK ((size_t)16 << 10)
#define ED_SCAN_KEYS 64     /* values per range answer of a scan: bounds its size */
#define ED_MAX_ENDPOINTS 16

struct ed_store {
	struct kv_store base;
	struct kv_http http;
	char *eps[ED_MAX_ENDPOINTS];   /* "http://127.0.0.1:2379" */
	size_t neps;
	unsigned cur;                  /* atomic: the endpoint to try first */
	int64_t down_until[ED_MAX_ENDPOINTS];  /* atomic: monotonic ms */
	char *ns;                      /* namespace prefix from the URL path */
	size_t nslen;
	size_t max_value;
	char *user, *password;         /* kept for re-authentication; never logged */

	pthread_mutex_t tok_lock;
	char *token;                   /* "Authorization:" header line, or NULL */
	unsigned tok_gen;

	/* open only: settings from the URL's ?query (-o options win) */
	struct kv_option query[8];
	size_t nquery;
	char *query_text;
};

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

/* The full etcd key of a kvfs key: namespace + key, as base64 JSON
 * ("\0" for the empty key: the start of every range). */
static json_t *key_json(struct ed_store *s, const char *key, size_t klen)
{
	struct kv_buf full = {0};
	json_t *j = NULL;

	if (!kv_buf_add(&full, s->ns, s->nslen) && !kv_buf_add(&full, key, klen))
		j = full.len ? kv_json_base64(full.p, full.len) : kv_json_base64("", 1);
	kv_buf_free(&full);
	return j;
}

/* ---- One attempt: one POST to one endpoint ---- */

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
	else if (code == 7 || strstr(msg, "permission denied") ||
		 strstr(msg, "authentication failed"))
		a->rc = -EACCES;
	else if (code == 14 || code == 4 || http >= 500)
		return ED_RETRY;  /* no leader, leader changed, request timed out */
	return ED_REFUSED;
}

static enum ed_outcome attempt(struct ed_store *s, size_t ep, const char *path, const char *body,
			       const char *token, int64_t deadline, bool bulk, json_t **resp,
			       struct ed_attempt *a)
{
	const char *lines[] = {"Content-Type: application/json", "Expect:", token};
	struct curl_slist *hdr = NULL, *l = NULL;
	struct kv_http_resp r;
	char *url = NULL;
	enum ed_outcome o;
	int rc;

	*resp = NULL;
	a->sent = false;
	for (size_t i = 0; i < 3 && (hdr || !i); i++) {
		l = lines[i] ? curl_slist_append(hdr, lines[i]) : hdr;
		if (!l)
			curl_slist_free_all(hdr);
		hdr = l;
	}
	if (!hdr || asprintf(&url, "%s%s", s->eps[ep], path) < 0) {
		curl_slist_free_all(hdr);
		a->rc = -ENOMEM;
		snprintf(a->why, sizeof(a->why), "out of memory");
		return ED_REFUSED;
	}
	rc = kv_http_request(&s->http, &(struct kv_http_req){
		.method = "POST", .url = url, .body = body, .blen = strlen(body), .headers = hdr,
		.deadline = deadline, .bulk = bulk, .once = true, .quiet = true}, &r);
	curl_slist_free_all(hdr);
	free(url);
	a->sent = r.sent;
	if (rc == -ENOMEM) {
		a->rc = rc;
		snprintf(a->why, sizeof(a->why), "out of memory");
		return ED_REFUSED;
	}
	if (rc) {
		snprintf(a->why, sizeof(a->why), "%s", r.why);
		return ED_DOWN;
	}
	*resp = kv_http_json(&r);
	if (r.status == 200 && json_is_object(*resp)) {
		o = ED_OK;
	} else if (*resp) {
		o = classify_error(r.status, *resp, a);
		json_decref(*resp);
		*resp = NULL;
	} else {
		snprintf(a->why, sizeof(a->why), "HTTP %ld with no JSON answer", r.status);
		a->rc = -EIO;
		o = r.status >= 500 ? ED_RETRY : ED_REFUSED;
	}
	kv_buf_free(&r.body);
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
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL, *line = NULL;
	json_t *resp = NULL;
	enum ed_outcome o;
	const char *t;

	json_decref(req);
	if (!body)
		return -ENOMEM;
	o = attempt(s, ep, "/v3/auth/authenticate", body, NULL, kv_deadline(s->http.timeout_ms),
		    false, &resp, a);
	explicit_bzero(body, strlen(body));  /* it held the password */
	free(body);
	if (o == ED_REFUSED && strstr(a->why, "authentication is not enabled"))
		return 0;  /* a cluster without auth: calls go without a token */
	if (o != ED_OK)
		return o == ED_REFUSED || o == ED_AUTH ? -EACCES : o == ED_DOWN ? -ETIMEDOUT : -EIO;
	t = json_string_value(json_object_get(resp, "token"));
	if (t && asprintf(&line, "Authorization: %s", t) < 0)
		line = NULL;
	json_decref(resp);
	if (!line)
		return t ? -ENOMEM : -EIO;
	pthread_mutex_lock(&s->tok_lock);
	if (s->tok_gen == gen) {
		free(s->token);
		s->token = line;
		s->tok_gen++;
		line = NULL;
	}
	pthread_mutex_unlock(&s->tok_lock);
	free(line);
	return 0;
}

/* ---- One call, over the endpoints ---- */

static bool ep_down(struct ed_store *s, size_t i, int64_t now)
{
	return __atomic_load_n(&s->down_until[i], __ATOMIC_RELAXED) > now;
}

/* A call's options and what it tells besides the answer. */
struct ed_call {
	bool bulk;         /* the answer may hold values: bound waiting, not transfer */
	bool quiet;        /* the caller reports failures itself (health) */
	bool ambiguous;    /* out: an earlier attempt may have been applied */
	size_t answered;   /* out: the endpoint that answered */
	char why[160];     /* out: the last failure */
};

/* The log line of a failed call. */
static void call_failed(const char *path, int rc, bool refused, const char *why)
{
	if (!refused && rc == -EIO)
		kv_log(KV_LOG_ERR, "etcd: %s: no endpoint answered (last: %s)", path,
		       why[0] ? why : "timed out");
	else if (rc == -EFBIG)
		kv_log(KV_LOG_WARN, "etcd: %s refused: %s (see --max-request-bytes and "
		       "--max-txn-ops of the cluster, and -o max_request_bytes)", path, why);
	else if (rc == -EIO)
		kv_log(KV_LOG_ERR, "etcd: %s: %s", path, why);
	else if (rc && rc != -EINVAL)
		kv_log(KV_LOG_WARN, "etcd: %s refused: %s", path, why);
}

/*
 * POST req to path, failing over between endpoints as the top of this
 * file describes.  0 and the JSON answer in *resp (the caller frees it), or
 * a negative errno.
 */
static int call(struct ed_store *s, const char *path, json_t *req, json_t **resp,
		struct ed_call *o)
{
	char *body = json_dumps(req, JSON_COMPACT);
	int64_t start = kv_now_ms(), again_until = start + s->http.timeout_ms;
	int64_t deadline = start + (int64_t)s->http.timeout_ms * (int64_t)s->neps;
	unsigned failed = 0, every = (1u << s->neps) - 1;  /* endpoints down in this call */
	struct ed_attempt a = {.rc = -EIO};
	struct ed_call none = {0};
	bool all_down = true, reauthed = false, refused = false;
	size_t tries = 0, skipped = 0, ep = __atomic_load_n(&s->cur, __ATOMIC_RELAXED) % s->neps;
	int rc = -EIO, round = 0;

	o = o ? o : &none;
	o->ambiguous = false;
	*resp = NULL;
	if (!body)
		return -ENOMEM;
	for (size_t i = 0; i < s->neps; i++)
		all_down = all_down && ep_down(s, i, start);
	for (;;) {
		int64_t now = kv_now_ms();
		unsigned gen;
		char *token;
		enum ed_outcome out;

		if (failed == every || (all_down && tries >= 1)) {
			/* Every endpoint failed: start over while the call timeout lasts. */
			if (!kv_backoff(round++, again_until < deadline ? again_until : deadline))
				break;
			failed = 0;
			all_down = false;
			continue;
		}
		if (now >= deadline || tries >= 200)
			break;
		if ((failed & 1u << ep) ||
		    (!all_down && ep_down(s, ep, now) && skipped++ < s->neps)) {
			ep = (ep + 1) % s->neps;  /* failed already, or seen down a moment ago */
			continue;
		}
		token = token_get(s, &gen);
		out = attempt(s, ep, path, body, token, now + s->http.timeout_ms < deadline ?
			      now + s->http.timeout_ms : deadline, o->bulk, resp, &a);
		free(token);
		tries++;
		if (a.sent && out != ED_OK)
			o->ambiguous = true;
		if (out == ED_OK) {
			__atomic_store_n(&s->cur, (unsigned)ep, __ATOMIC_RELAXED);
			__atomic_store_n(&s->down_until[ep], 0, __ATOMIC_RELAXED);
			o->answered = ep;
			rc = 0;
			break;
		}
		if (out == ED_REFUSED || (out == ED_AUTH && (!s->user || reauthed))) {
			rc = out == ED_AUTH ? -EACCES : a.rc;
			refused = true;
			break;
		}
		if (out == ED_AUTH) {
			reauthed = true;
			rc = authenticate(s, ep, gen, &a);
			if (rc == 0)
				continue;  /* same endpoint, new token */
			if (rc != -ETIMEDOUT) {
				refused = true;
				break;
			}
			out = ED_DOWN;
		}
		if (out == ED_DOWN) {
			int hold = s->http.timeout_ms > 1000 ? s->http.timeout_ms : 1000;
			__atomic_store_n(&s->down_until[ep], kv_now_ms() + hold, __ATOMIC_RELAXED);
			failed |= 1u << ep;
			if (failed != every && !all_down && !o->quiet)
				kv_log(KV_LOG_WARN, "etcd: %s: %s; trying the next endpoint",
				       s->eps[ep], a.why);
		} else if (!kv_backoff(round++, deadline)) {  /* "no leader": an election */
			break;
		}
		ep = (ep + 1) % s->neps;
		__atomic_store_n(&s->cur, (unsigned)ep, __ATOMIC_RELAXED);
		rc = -EIO;
	}
	free(body);
	snprintf(o->why, sizeof(o->why), "%s", a.why[0] ? a.why : "timed out");
	if (!o->quiet)
		call_failed(path, rc, refused, a.why);
	return rc;
}

/* ---- Single-key operations ---- */

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
	rc = call(s, "/v3/kv/range", req, &resp, &(struct ed_call){.bulk = true});
	json_decref(req);
	if (rc)
		return rc == -EINVAL ? -EIO : rc;
	kv = json_array_get(json_object_get(resp, "kvs"), 0);
	if (!kv) {
		rc = -ENOENT;
	} else {
		rc = kv_json_unbase64(json_object_get(kv, "value"), val, len);
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
			 "value", kv_json_base64(val, vlen));
}

/* Send req to path, and only tell how it went. */
static int call_done(struct ed_store *s, const char *path, json_t *req)
{
	json_t *resp;
	int rc;

	if (!req)
		return -ENOMEM;
	rc = call(s, path, req, &resp, NULL);
	json_decref(req);
	json_decref(resp);
	return rc;
}

static int ed_set(struct kv_store *st, const char *key, size_t klen, const char *val,
		  size_t vlen)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);

	if (s->nslen + klen == 0)
		return -EINVAL;
	return call_done(s, "/v3/kv/put", json_pack("{s:o, s:o}", "key", key_json(s, key, klen),
						    "value", kv_json_base64(val, vlen)));
}

static int ed_del(struct kv_store *st, const char *key, size_t klen)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	struct ed_call o = {0};
	json_t *req, *resp;
	int rc;

	if (s->nslen + klen == 0)
		return -ENOENT;
	req = json_pack("{s:o}", "key", key_json(s, key, klen));
	if (!req)
		return -ENOMEM;
	rc = call(s, "/v3/kv/deleterange", req, &resp, &o);
	json_decref(req);
	if (rc)
		return rc == -EINVAL ? -EIO : rc;
	/* After a lost answer the first attempt may be the one that deleted it. */
	if (json_u64(resp, "deleted") == 0 && !o.ambiguous)
		rc = -ENOENT;
	json_decref(resp);
	return rc;
}

static int ed_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	struct ed_call o = {0};
	json_t *cmp, *req, *resp;
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
	rc = call(s, "/v3/kv/txn", req, &resp, &o);
	json_decref(req);
	if (rc)
		return rc;
	if (!json_is_true(json_object_get(resp, "succeeded")))
		rc = -ECANCELED;
	json_decref(resp);
	if (rc == -ECANCELED && o.ambiguous) {
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

static int ed_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	json_t *list = json_array();

	for (size_t i = 0; i < n; i++)
		if (ops[i].type == KV_OP_SET && s->nslen + ops[i].key_len == 0)
			return -EINVAL;
	if (!list)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct kv_op *op = &ops[i];
		bool last = true;
		json_t *o;
		/* etcd refuses a txn that names a key twice: the last operation on
		 * a key alone decides its final state */
		for (size_t j = i + 1; j < n && last; j++)
			last = kv_key_cmp(op->key, op->key_len, ops[j].key, ops[j].key_len) != 0;
		if (!last || (op->type == KV_OP_DEL && s->nslen + op->key_len == 0))
			continue;
		if (op->type == KV_OP_SET)
			o = put_op(s, op->key, op->key_len, op->val, op->val_len);
		else
			o = json_pack("{s:{s:o}}", "request_delete_range", "key",
				      key_json(s, op->key, op->key_len));
		if (!o || json_array_append_new(list, o)) {
			json_decref(list);
			return -ENOMEM;
		}
	}
	if (!json_array_size(list)) {
		json_decref(list);
		return 0;
	}
	return call_done(s, "/v3/kv/txn", json_pack("{s:o}", "success", list));
}

/* ---- scan ---- */

static int ed_scan(struct kv_store *st, const char *from, size_t flen, const char *to,
		   size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	struct kv_buf lo = {0}, hi = {0};
	bool more = true;
	size_t done = 0;
	int rc = kv_buf_add(&lo, s->ns, s->nslen) || kv_buf_add(&lo, from, flen) ||
		 kv_buf_add(&hi, s->ns, s->nslen) || (to && kv_buf_add(&hi, to, tlen)) ? -ENOMEM : 0;

	/* [ns + from, ns + to), or to the end of the namespace ("\0": to the end) */
	if (!rc && !to && !kv_key_successor(hi.p, &hi.len))
		hi.len = 0;
	while (!rc && more && done < max) {
		json_t *req, *resp, *kvs, *kv;
		size_t want = max - done < ED_SCAN_KEYS ? max - done : ED_SCAN_KEYS, i;

		req = json_pack("{s:o, s:o, s:I}", "key", lo.len ? kv_json_base64(lo.p, lo.len) :
				kv_json_base64("", 1), "range_end", hi.len ?
				kv_json_base64(hi.p, hi.len) : kv_json_base64("", 1),
				"limit", (json_int_t)want);
		rc = req ? call(s, "/v3/kv/range", req, &resp, &(struct ed_call){.bulk = true})
			 : -ENOMEM;
		json_decref(req);
		if (rc)
			break;
		kvs = json_object_get(resp, "kvs");
		more = json_is_true(json_object_get(resp, "more")) && json_array_size(kvs);
		json_array_foreach(kvs, i, kv) {
			char *key;
			size_t klen;
			if ((rc = kv_json_unbase64(json_object_get(kv, "key"), &key, &klen)))
				break;
			if (klen >= s->nslen)
				rc = cb(ctx, key + s->nslen, klen - s->nslen,
					kv_json_base64_size(json_object_get(kv, "value")));
			done++;
			/* the next range starts just after this key */
			lo.len = 0;
			if (!rc && (kv_buf_add(&lo, key, klen) || kv_buf_add(&lo, "", 1)))
				rc = -ENOMEM;
			free(key);
			if (rc)
				break;
		}
		json_decref(resp);
	}
	kv_buf_free(&lo);
	kv_buf_free(&hi);
	return rc == -EINVAL ? -EIO : rc < 0 ? rc : 0;
}

/* ---- health ---- */

/*
 * The credentials, for the probe: log in if there is a user and no token
 * yet, then read one key (keys only), which a cluster with auth on refuses
 * to a client without a good token.  0, -EACCES or -EIO, with h->detail.
 */
static int check_access(struct ed_store *s, size_t ep, struct kv_health *h)
{
	struct ed_attempt a = {0};
	struct ed_call o = {.quiet = true};
	unsigned gen;
	char *token = token_get(s, &gen);
	json_t *req, *resp = NULL;
	int rc = 0;

	if (s->user && !token && (rc = authenticate(s, ep, gen, &a))) {
		snprintf(h->detail, sizeof(h->detail), "etcd: authentication as %s failed: %s",
			 s->user, a.why);
		return rc == -EACCES || rc == -ENOMEM ? rc : -EIO;
	}
	free(token);
	req = json_pack("{s:o, s:b}", "key", key_json(s, "", 0), "keys_only", 1);
	rc = req ? call(s, "/v3/kv/range", req, &resp, &o) : -ENOMEM;
	json_decref(req);
	json_decref(resp);
	if (rc)
		snprintf(h->detail, sizeof(h->detail), "etcd refused a read%s%s: %s",
			 s->user ? " by user " : " without a user", s->user ? s->user : "", o.why);
	return rc == -EACCES || rc == -ENOMEM || !rc ? rc : -EIO;
}

static int ed_health(struct kv_store *st, struct kv_health *h)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	struct ed_call o = {.quiet = true};
	json_t *req = json_object(), *resp;
	uint64_t leader, self;
	const char *version;
	int rc;

	if (!req)
		return -ENOMEM;
	rc = call(s, "/v3/maintenance/status", req, &resp, &o);
	json_decref(req);
	if (rc) {
		snprintf(h->detail, sizeof(h->detail), "etcd: no endpoint answered (%s)", o.why);
		return -EIO;
	}
	leader = json_u64(resp, "leader");
	self = json_u64(json_object_get(resp, "header"), "member_id");
	version = json_string_value(json_object_get(resp, "version"));
	kv_health_fact(h, "answered_by", "%s", s->eps[o.answered]);
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
			 version ? version : "?", s->eps[o.answered]);
		rc = -EIO;
	} else if (!(rc = check_access(s, o.answered, h))) {
		json_t *errs = json_object_get(resp, "errors");
		snprintf(h->detail, sizeof(h->detail), "etcd %s, %zu endpoint%s, answered by %s%s%s",
			 version ? version : "?", s->neps, s->neps == 1 ? "" : "s",
			 s->eps[o.answered], json_array_size(errs) ? ": " : "",
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

static void ed_close(struct kv_store *st)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);

	if (s->http.name)
		kv_http_destroy(&s->http);
	for (size_t i = 0; i < s->neps; i++)
		free(s->eps[i]);
	if (s->password)
		explicit_bzero(s->password, strlen(s->password));
	if (s->token)
		explicit_bzero(s->token, strlen(s->token));
	free(s->password);
	free(s->token);
	free(s->user);
	free(s->ns);
	free(s->query_text);
	pthread_mutex_destroy(&s->tok_lock);
	free(s);
}

/* Add the endpoints of a list "host[:port],http(s)://host[:port],...". */
static int add_endpoints(struct ed_store *s, const char *list, size_t n, bool tls, char *err,
			 size_t errlen)
{
	char *copy = strndup(list, n), *save = NULL, *one;
	int rc = copy ? 0 : -ENOMEM;

	for (one = copy ? strtok_r(copy, ",", &save) : NULL; one && !rc;
	     one = strtok_r(NULL, ",", &save)) {
		if (s->neps == ED_MAX_ENDPOINTS) {
			snprintf(err, errlen, "etcd: more than %d endpoints", ED_MAX_ENDPOINTS);
			rc = -EINVAL;
		} else if (!(s->eps[s->neps] = kv_http_base_url("etcd", one, tls, 2379, err, errlen))) {
			rc = err[0] ? -EINVAL : -ENOMEM;
		} else {
			s->neps++;
		}
	}
	free(copy);
	return rc;
}

/* A setting from -o, else from the URL's query, else from the environment. */
static const char *setting(struct ed_store *s, const struct kv_open_args *a, const char *name,
			   const char *env)
{
	return kv_http_setting(a, s->query, s->nquery, name, env);
}

/*
 * "//[user@]h1:p1,h2:p2/prefix?query" (or "" / "///prefix": the endpoints
 * from $ETCDCTL_ENDPOINTS).  curl_url() parses the URL with its first host;
 * the others are endpoints of their own.
 */
static int parse_location(struct ed_store *s, const struct kv_open_args *a, char *err,
			  size_t errlen)
{
	const char *loc = a->location ? a->location : "", *env = getenv("ETCDCTL_ENDPOINTS");
	bool tls = strncasecmp(a->url, "etcd+https:", 11) == 0;
	bool hosts = loc[0] == '/' && loc[1] == '/';
	size_t hlen = hosts ? strcspn(loc + 2, "/?") : 0, first = hosts ? strcspn(loc + 2, ",/?") : 0;
	struct kv_http_url u = {0};
	char *in = NULL;
	int rc = 0;

	if (*loc && !hosts)
		rc = -EINVAL;
	else if (asprintf(&in, "http://%.*s%s", hlen ? (int)first : 9, hlen ? loc + 2 : "localhost",
			  hosts ? loc + 2 + hlen : "") < 0)
		rc = -ENOMEM;
	if (!rc)
		rc = kv_http_parse(in, 2379, &u);
	if (rc == -EINVAL)
		snprintf(err, errlen, "etcd: expected etcd://host:port[,host:port...]/[prefix]");
	if (!rc && u.password) {
		snprintf(err, errlen, "etcd: no password in the URL: put it in a file "
			 "(-o password_file=PATH) or in $ETCDCTL_PASSWORD");
		rc = -EINVAL;
	}
	s->user = u.user;
	s->ns = u.prefix;
	s->nslen = u.prefix_len;
	u.user = u.prefix = NULL;
	if (!rc && u.query)   /* the same settings as -o (not secrets) */
		rc = kv_http_query("etcd", u.query, kv_backend_etcd.options, s->query,
				   sizeof(s->query) / sizeof(s->query[0]), &s->nquery,
				   &s->query_text, err, errlen);
	/* The endpoints: the URL's hosts (without user@), else $ETCDCTL_ENDPOINTS. */
	if (!rc && hlen) {
		const char *at = memchr(loc + 2, '@', hlen), *h = at ? at + 1 : loc + 2;
		rc = add_endpoints(s, h, hlen - (size_t)(h - loc - 2), tls, err, errlen);
	} else if (!rc) {
		env = env && *env ? env : ED_DEFAULT_ENDPOINT;
		rc = add_endpoints(s, env, strlen(env), tls, err, errlen);
	}
	if (!rc && !s->neps) {
		snprintf(err, errlen, "etcd: no endpoint in the URL");
		rc = -EINVAL;
	}
	if (!rc && s->nslen >= ED_MAX_KEY / 2) {
		snprintf(err, errlen, "etcd: the URL's key prefix is too long");
		rc = -EINVAL;
	}
	kv_http_url_free(&u);
	free(in);
	return rc;
}

/* -o user / password_file, $ETCDCTL_USER ("user" or "user:password"), $ETCDCTL_PASSWORD. */
static int parse_credentials(struct ed_store *s, const struct kv_open_args *a, char *err,
			     size_t errlen)
{
	const char *user = setting(s, a, "user", NULL), *pwfile = setting(s, a, "password_file", NULL);
	const char *env = getenv("ETCDCTL_USER"), *envpw = getenv("ETCDCTL_PASSWORD");
	char why[200];

	if (user) {
		free(s->user);
		if (!(s->user = strdup(user)))
			return -ENOMEM;
	}
	if (!s->user && env && *env) {
		const char *c = strchr(env, ':');
		s->user = c ? strndup(env, (size_t)(c - env)) : strdup(env);
		if (!s->user || (c && !(s->password = strdup(c + 1))))
			return -ENOMEM;
	}
	if (pwfile) {
		free(s->password);
		if (!(s->password = kv_read_secret(pwfile, "password_file", why, sizeof(why)))) {
			snprintf(err, errlen, "etcd: %s", why);
			return -EACCES;
		}
	} else if (!s->password && envpw && !(s->password = strdup(envpw))) {
		return -ENOMEM;
	}
	if (!s->password != !s->user)
		snprintf(err, errlen, s->user ? "etcd: user %s needs a password: -o password_file="
			 "PATH, $ETCDCTL_USER=user:password or $ETCDCTL_PASSWORD" : "etcd: a password "
			 "but no user%s: give -o user=NAME or $ETCDCTL_USER", s->user ? s->user : "");
	return !s->password != !s->user ? -EINVAL : 0;
}

static int ed_open(const struct kv_open_args *args, struct kv_store **out, char *err,
		   size_t errlen)
{
	struct ed_store *s = calloc(1, sizeof(*s));
	uint64_t req = ED_MAX_REQUEST;
	const char *v;
	int rc;

	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->tok_lock, NULL);
	rc = parse_location(s, args, err, errlen);
	v = rc ? NULL : setting(s, args, "max_request_bytes", NULL);
	if (v && (kv_parse_size(v, &req) || req < 4 * ED_REQUEST_SLACK || req > ED_MAX_REQUEST_OPT)) {
		snprintf(err, errlen, "etcd: bad max_request_bytes '%s' (etcd's --max-request-bytes, "
			 "64K to 128M)", v);
		rc = -EINVAL;
	}
	s->max_value = (size_t)req - ED_REQUEST_SLACK;
	if (!rc)
		rc = parse_credentials(s, args, err, errlen);
	if (!rc)
		rc = kv_http_init(&s->http, "etcd", args->timeout_ms, &(struct kv_http_tls){
			.cacert = setting(s, args, "cacert", "ETCDCTL_CACERT"),
			.cert = setting(s, args, "cert", "ETCDCTL_CERT"),
			.key = setting(s, args, "key", "ETCDCTL_KEY")}, err, errlen);
	if (rc) {
		ed_close(&s->base);
		return rc;
	}
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

/* Every write is committed to a quorum's fsynced log before etcd answers:
 * nothing is left for a sync to do. */
static int ed_sync(struct kv_store *st)
{
	(void)st;
	return 0;
}

const struct kv_backend kv_backend_etcd = {
	.scheme = "etcd",
	.aliases = (const char *const[]){"etcd+https", NULL},
	.summary = "etcd v3 cluster through its JSON gateway, with failover between members",
	.usage = "etcd://host:2379[,host:2379...]/[prefix]",
	.options = ed_options,
	.persistent = true,
	/* the widest a store may be; each store narrows it (ed_store_limits) */
	.limits = {.max_key = ED_MAX_KEY, .max_value = ED_MAX_REQUEST_OPT - ED_REQUEST_SLACK},
	.open = ed_open,
	.close = ed_close,
	.get = ed_get,
	.set = ed_set,
	.del = ed_del,
	.scan = ed_scan,
	.health = ed_health,
	.cas = ed_cas,
	.apply = ed_apply,
	.sync = ed_sync,
	.store_limits = ed_store_limits,
};
