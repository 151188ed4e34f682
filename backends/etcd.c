/*
 * etcd.c - an etcd v3 cluster through its JSON gateway (http.h, jansson):
 * "etcd://host:2379[,host:2379...]/[prefix]", "etcd+https://..." for TLS.
 * Every key is its own etcd key, byte for byte after the URL's prefix, so
 * etcdctl sees the keys kvfs shows.  The gateway speaks JSON with keys and
 * values in base64 and int64s as strings.
 *
 * Endpoints.  http.c fails over between them (kv_http_request), and moves
 * on from "no leader" answers too.  A write that failed in transport may
 * still have been applied: puts are idempotent, and a retried delete or
 * cas treats "already gone" and "already holds my value" as its own
 * success.
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

/*
 * -o options, also in the URL's query.  user, password_file: etcd
 * authentication (also $ETCDCTL_USER, $ETCDCTL_PASSWORD).  cacert, cert,
 * key: TLS files (also $ETCDCTL_CACERT, $ETCDCTL_CERT, $ETCDCTL_KEY).
 * max_request_bytes: the cluster's --max-request-bytes, from which the
 * value limit follows.
 */
static const char *const ed_options[] = {
	"user", "password_file", "cacert", "cert", "key", "max_request_bytes", NULL,
};

struct ed_store {
	struct kv_store base;
	struct kv_http http;           /* the endpoints, settings from the URL's ?query */
	char *ns;                      /* namespace prefix from the URL path */
	size_t nslen;
	size_t max_value;
	char *user, *password;         /* kept for re-authentication; never logged */

	pthread_mutex_t tok_lock;
	char *token;                   /* "Authorization:" header line, or NULL */
	unsigned tok_gen;
};

/* int64 fields come as JSON strings ("5"), absent when zero. */
static uint64_t json_u64(json_t *o, const char *name)
{
	json_t *v = json_object_get(o, name);

	/* json_integer_value: 0 for anything but an integer */
	return json_is_string(v) ? strtoull(json_string_value(v), NULL, 10)
				 : (uint64_t)json_integer_value(v);
}

/* A key as base64 JSON; "\0" for the empty key: the start of every range. */
static json_t *b64key(const char *p, size_t n)
{
	return n ? kv_json_base64(p, n) : kv_json_base64("", 1);
}

/* The full etcd key of a kvfs key: namespace + key. */
static json_t *key_json(struct ed_store *s, const char *key, size_t klen)
{
	struct kv_buf full = {0};
	json_t *j = NULL;

	if (!kv_buf_add(&full, s->ns, s->nslen) && !kv_buf_add(&full, key, klen))
		j = b64key(full.p, full.len);
	kv_buf_free(&full);
	return j;
}

/* ---- What an answer says ---- */

#define ED_AUTH 1   /* the token expired: authenticate again */
#define ED_RETRY 2  /* the member cannot serve now (no leader...): try another */

/* etcd's error answer ({"error": "...", "code": N}, or NULL when the answer
 * is no JSON) to ED_AUTH, ED_RETRY or an errno, and why (for logs). */
static int classify(long http, json_t *resp, char *why, size_t wlen)
{
	const char *msg = json_string_value(json_object_get(resp, "error"));
	int code = (int)json_integer_value(json_object_get(resp, "code"));

	if (!resp)
		snprintf(why, wlen, "HTTP %ld with no JSON answer", http);
	else
		snprintf(why, wlen, "HTTP %ld: %s", http, msg ? msg : "(no message)");
	if (!msg)
		msg = "";
	/* an expired token, or none since auth was enabled after we opened */
	if (code == 16 || strstr(msg, "invalid auth token") || strstr(msg, "user name is empty"))
		return ED_AUTH;
	if (strstr(msg, "request is too large") || strstr(msg, "too many operations"))
		return -EFBIG;
	if (strstr(msg, "key is not provided"))
		return -EINVAL;
	if (strstr(msg, "database space exceeded") || code == 8)
		return -ENOSPC;
	if (code == 7 || strstr(msg, "permission denied") || strstr(msg, "authentication failed"))
		return -EACCES;
	if (code == 14 || code == 4 || http >= 500)
		return ED_RETRY;  /* no leader, leader changed, request timed out */
	return -EIO;
}

/* For http.c: an answer to try again (at another member, after a backoff). */
static bool ed_transient(long status, const struct kv_buf *body)
{
	char why[160];
	json_t *resp;
	bool again;

	if (status == 200)
		return false;
	resp = kv_http_json(body);
	again = classify(status, resp, why, sizeof(why)) == ED_RETRY;
	json_decref(resp);
	return again;
}

/* A call's options and what it tells besides the answer. */
struct ed_call {
	bool bulk;            /* the answer may hold values: bound waiting, not transfer */
	bool quiet;           /* the caller reports failures itself (health) */
	bool ambiguous;       /* out: an earlier attempt may have been applied */
	bool answered;        /* out: an endpoint answered */
	const char *endpoint; /* out: the one that answered */
	char why[160];        /* out: the last failure */
};

/*
 * One POST of req to path over the endpoints (http.c fails over between
 * them).  0 and the JSON object answered in *resp; else ED_AUTH, ED_RETRY
 * or a negative errno, with o->why.
 */
static int post(struct ed_store *s, const char *path, const char *token, json_t *req,
		json_t **resp, struct ed_call *o)
{
	struct kv_http_req rq = {.method = "POST", .path = path, .auth = token, .bulk = o->bulk,
				 .idempotent = true, .quiet = o->quiet, .transient = ed_transient};
	struct kv_http_resp r = {0};
	int rc;

	rc = kv_http_json_request(&s->http, rq, req, 0, &r, resp);
	o->answered = rc == 0;
	o->ambiguous = o->ambiguous || r.ambiguous;
	o->endpoint = r.endpoint;
	if (rc == 0 && (r.status != 200 || !json_is_object(*resp))) {
		rc = classify(r.status, *resp, o->why, sizeof(o->why));
		json_decref(*resp);
		*resp = NULL;
	} else if (rc) {
		snprintf(o->why, sizeof(o->why), "%s", rc == -ENOMEM ? "out of memory" : r.why);
	}
	kv_buf_free(&r.body);
	return rc;
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

/* Ask for a token; 0 and the header line in s->token, or -EACCES, -EIO,
 * -ENOMEM with o->why. */
static int authenticate(struct ed_store *s, unsigned gen, struct ed_call *o)
{
	json_t *req = json_pack("{s:s, s:s}", "name", s->user, "password", s->password);
	json_t *resp = NULL;
	char *line = NULL;
	const char *t;
	int rc = post(s, "/v3/auth/authenticate", NULL, req, &resp, o);

	json_decref(req);
	if (rc == -EIO && o->answered && strstr(o->why, "authentication is not enabled"))
		return 0;  /* a cluster without auth: calls go without a token */
	if (rc)
		return !o->answered || rc == ED_RETRY ? -EIO : rc == -ENOMEM ? rc : -EACCES;
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

/* ---- One call ---- */

/*
 * POST req (taken; NULL: -ENOMEM) to path with the token, authenticating
 * again once when it expired.  0 and the JSON answer in *resp if resp is
 * not NULL (the caller frees it), or a negative errno.  A refusal is logged here unless quiet;
 * no answer at all by http.c.
 */
static int call(struct ed_store *s, const char *path, json_t *req, json_t **resp,
		struct ed_call *o)
{
	struct ed_call none = {0};
	bool reauthed = false;
	json_t *ans;
	unsigned gen;
	int rc;

	o = o ? o : &none;
	for (;;) {
		char *token = token_get(s, &gen);

		rc = post(s, path, token, req, &ans, o);
		free(token);
		if (rc != ED_AUTH || !s->user || reauthed)
			break;
		reauthed = true;
		if ((rc = authenticate(s, gen, o)))
			break;
	}
	json_decref(req);
	if (resp)
		*resp = ans;
	else
		json_decref(ans);
	rc = rc == ED_AUTH ? -EACCES : rc == ED_RETRY ? -EIO : rc;
	if (!rc || !o->answered || o->quiet)
		return rc;
	if (rc == -EFBIG)
		kv_log(KV_LOG_WARN, "etcd: %s refused: %s (see --max-request-bytes and "
		       "--max-txn-ops of the cluster, and -o max_request_bytes)", path, o->why);
	else if (rc == -EIO)
		kv_log(KV_LOG_ERR, "etcd: %s: %s", path, o->why);
	else if (rc && rc != -EINVAL)
		kv_log(KV_LOG_WARN, "etcd: %s refused: %s", path, o->why);
	return rc;
}

/* ---- Single-key operations ---- */

static int ed_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	json_t *resp, *kv;
	int rc;

	if (s->nslen + klen == 0)
		return -ENOENT;  /* etcd has no empty key */
	rc = call(s, "/v3/kv/range", json_pack("{s:o}", "key", key_json(s, key, klen)), &resp,
		  &(struct ed_call){.bulk = true});
	if (rc)
		return rc == -EINVAL ? -EIO : rc;
	kv = json_array_get(json_object_get(resp, "kvs"), 0);
	rc = kv ? kv_json_unbase64(json_object_get(kv, "value"), val, len) : -ENOENT;
	if (kv && version)
		*version = json_u64(kv, "mod_revision");
	json_decref(resp);
	return rc;
}

static json_t *put_op(struct ed_store *s, const char *key, size_t klen, const char *val,
		      size_t vlen)
{
	return json_pack("{s:{s:o, s:o}}", "request_put", "key", key_json(s, key, klen),
			 "value", kv_json_base64(val, vlen));
}

static int ed_set(struct kv_store *st, const char *key, size_t klen, const char *val,
		  size_t vlen)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);

	if (s->nslen + klen == 0)
		return -EINVAL;
	return call(s, "/v3/kv/put", json_pack("{s:o, s:o}", "key", key_json(s, key, klen),
					       "value", kv_json_base64(val, vlen)), NULL, NULL);
}

static int ed_del(struct kv_store *st, const char *key, size_t klen)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	struct ed_call o = {0};
	json_t *resp;
	int rc;

	if (s->nslen + klen == 0)
		return -ENOENT;
	rc = call(s, "/v3/kv/deleterange", json_pack("{s:o}", "key", key_json(s, key, klen)),
		  &resp, &o);
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
	json_t *cmp, *resp;
	char *cur;
	size_t clen;
	int rc;

	if (s->nslen + klen == 0)
		return -EINVAL;
	/* version 0: the key must not exist, i.e. its create_revision is 0. */
	cmp = json_pack("{s:o, s:s, s:s, s:o}", "key", key_json(s, key, klen), "target",
			version ? "MOD" : "CREATE", "result", "EQUAL",
			version ? "mod_revision" : "create_revision",
			version ? json_integer((json_int_t)version) : json_string("0"));
	rc = call(s, "/v3/kv/txn", json_pack("{s:[o], s:[o]}", "compare", cmp, "success",
					     put_op(s, key, klen, val, vlen)), &resp, &o);
	if (rc)
		return rc;
	if (!json_is_true(json_object_get(resp, "succeeded")))
		rc = -ECANCELED;
	json_decref(resp);
	/* Our lost first attempt may have won: then the key holds our value. */
	if (rc == -ECANCELED && o.ambiguous && ed_get(st, key, klen, &cur, &clen, NULL) == 0) {
		if (clen == vlen && (vlen == 0 || memcmp(cur, val, vlen) == 0))
			rc = 0;
		free(cur);
	}
	return rc;
}

static int ed_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	json_t *list = json_array(), *o;
	int rc = list ? 0 : -ENOMEM;

	for (size_t i = 0; i < n && !rc; i++) {
		const struct kv_op *op = &ops[i];
		bool last = true, empty = s->nslen + op->key_len == 0;

		if (empty && op->type == KV_OP_SET)
			rc = -EINVAL;
		/* etcd refuses a txn that names a key twice: the last operation on
		 * a key alone decides its final state */
		for (size_t j = i + 1; j < n && last; j++)
			last = kv_key_cmp(op->key, op->key_len, ops[j].key, ops[j].key_len) != 0;
		if (rc || !last || empty)
			continue;
		if (op->type == KV_OP_SET)
			o = put_op(s, op->key, op->key_len, op->val, op->val_len);
		else
			o = json_pack("{s:{s:o}}", "request_delete_range", "key",
				      key_json(s, op->key, op->key_len));
		if (!o || json_array_append_new(list, o))
			rc = -ENOMEM;
	}
	if (!rc && json_array_size(list))
		return call(s, "/v3/kv/txn", json_pack("{s:o}", "success", list), NULL, NULL);
	json_decref(list);
	return rc;
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
		json_t *resp, *kvs, *kv;
		size_t want = max - done < ED_SCAN_KEYS ? max - done : ED_SCAN_KEYS, i;

		rc = call(s, "/v3/kv/range", json_pack("{s:o, s:o, s:I}", "key", b64key(lo.p, lo.len),
						       "range_end", b64key(hi.p, hi.len),
						       "limit", (json_int_t)want),
			  &resp, &(struct ed_call){.bulk = true});
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
static int check_access(struct ed_store *s, struct kv_health *h)
{
	struct ed_call o = {.quiet = true};
	unsigned gen;
	char *token = token_get(s, &gen);
	bool login = s->user && !token;
	int rc;

	free(token);
	if (login && (rc = authenticate(s, gen, &o))) {
		snprintf(h->detail, sizeof(h->detail), "etcd: authentication as %s failed: %s",
			 s->user, o.why);
		return rc == -EACCES || rc == -ENOMEM ? rc : -EIO;
	}
	rc = call(s, "/v3/kv/range", json_pack("{s:o, s:b}", "key", key_json(s, "", 0),
					       "keys_only", 1), NULL, &o);
	if (rc)
		snprintf(h->detail, sizeof(h->detail), "etcd refused a read%s%s: %s",
			 s->user ? " by user " : " without a user", s->user ? s->user : "", o.why);
	return rc == -EACCES || rc == -ENOMEM || !rc ? rc : -EIO;
}

static int ed_health(struct kv_store *st, struct kv_health *h)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);
	struct ed_call o = {.quiet = true};
	json_t *resp, *header, *errs;
	uint64_t leader;
	const char *version;
	int rc = call(s, "/v3/maintenance/status", json_object(), &resp, &o);

	if (rc) {
		snprintf(h->detail, sizeof(h->detail), "etcd: no endpoint answered (%s)", o.why);
		return rc == -ENOMEM ? rc : -EIO;
	}
	header = json_object_get(resp, "header");
	leader = json_u64(resp, "leader");
	version = json_string_value(json_object_get(resp, "version")) ?: "?";
	kv_health_fact(h, "answered_by", "%s", o.endpoint);
	kv_health_fact(h, "version", "%s", version);
	kv_health_fact(h, "leader", "%016llx%s", (unsigned long long)leader,
		       leader && leader == json_u64(header, "member_id") ? " (this member)" : "");
	kv_health_fact(h, "raft_index", "%llu", (unsigned long long)json_u64(resp, "raftIndex"));
	kv_health_fact(h, "raft_term", "%llu", (unsigned long long)json_u64(resp, "raftTerm"));
	kv_health_fact(h, "db_size", "%llu", (unsigned long long)json_u64(resp, "dbSize"));
	kv_health_fact(h, "revision", "%llu", (unsigned long long)json_u64(header, "revision"));
	kv_health_fact(h, "endpoints", "%zu", s->http.neps);
	errs = json_object_get(resp, "errors");
	if (!leader) {
		snprintf(h->detail, sizeof(h->detail), "etcd %s at %s: no leader (no quorum)",
			 version, o.endpoint);
		rc = -EIO;
	} else if (!(rc = check_access(s, h))) {
		snprintf(h->detail, sizeof(h->detail), "etcd %s, %zu endpoint%s, answered by %s%s%s",
			 version, s->http.neps, s->http.neps == 1 ? "" : "s", o.endpoint,
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

static void ed_close(struct kv_store *st)
{
	struct ed_store *s = kv_store_cast(struct ed_store, st);

	kv_http_destroy(&s->http);
	if (s->password)
		explicit_bzero(s->password, strlen(s->password));
	if (s->token)
		explicit_bzero(s->token, strlen(s->token));
	free(s->password);
	free(s->token);
	free(s->user);
	free(s->ns);
	pthread_mutex_destroy(&s->tok_lock);
	free(s);
}

/*
 * "//[user@]h1:p1,h2:p2/prefix?query" (or "" / "///prefix": the endpoints
 * from $ETCDCTL_ENDPOINTS).  curl_url() parses the URL with its first host;
 * the others are endpoints of their own.
 */
static int parse_location(struct ed_store *s, const struct kv_open_args *a, char *err,
			  size_t errlen)
{
	const char *loc = a->location, *env = getenv("ETCDCTL_ENDPOINTS");
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
		rc = kv_http_query(&s->http, u.query, ed_options, 8, err, errlen);
	/* The endpoints: the URL's hosts (without user@), else $ETCDCTL_ENDPOINTS. */
	if (!rc && hlen) {
		const char *at = memchr(loc + 2, '@', hlen), *h = at ? at + 1 : loc + 2;
		rc = kv_http_add_endpoints(&s->http, h, hlen - (size_t)(h - loc - 2), tls, 2379, err,
					   errlen);
	} else if (!rc) {
		env = env && *env ? env : ED_DEFAULT_ENDPOINT;
		rc = kv_http_add_endpoints(&s->http, env, strlen(env), tls, 2379, err, errlen);
	}
	if (!rc && !s->http.neps) {
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
	const char *user = kv_http_setting(&s->http, a, "user", NULL);
	const char *pwfile = kv_http_setting(&s->http, a, "password_file", NULL);
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
	static const char *const tls_env[4] = {"ETCDCTL_CACERT", NULL, "ETCDCTL_CERT",
					       "ETCDCTL_KEY"};
	struct ed_store *s = calloc(1, sizeof(*s));
	uint64_t req = ED_MAX_REQUEST;
	const char *v;
	int rc;

	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->tok_lock, NULL);
	rc = kv_http_init(&s->http, "etcd", args->timeout_ms, err, errlen);
	if (!rc)
		rc = kv_http_header(&s->http, "Content-Type: application/json");
	if (!rc)
		rc = parse_location(s, args, err, errlen);
	v = rc ? NULL : kv_http_setting(&s->http, args, "max_request_bytes", NULL);
	if (v && (kv_parse_size(v, &req) || req < 4 * ED_REQUEST_SLACK || req > ED_MAX_REQUEST_OPT)) {
		snprintf(err, errlen, "etcd: bad max_request_bytes '%s' (etcd's --max-request-bytes, "
			 "64K to 128M)", v);
		rc = -EINVAL;
	}
	s->max_value = (size_t)req - ED_REQUEST_SLACK;
	if (!rc)
		rc = parse_credentials(s, args, err, errlen);
	if (!rc)
		rc = kv_http_tls(&s->http, args, tls_env, err, errlen);
	if (rc)
		ed_close(&s->base);
	else
		*out = &s->base;
	return rc;
}

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
