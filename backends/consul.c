/*
 * consul.c - HashiCorp Consul's KV store over its HTTP API (http.h, jansson):
 * "consul://host:8500/prefix?dc=dc1", "consul+https://host:8501/prefix", or
 * "consul:" / "consul:///prefix" for the agent named by CONSUL_HTTP_ADDR.
 *
 * Key spelling.  JSON cannot carry bytes that are not UTF-8, so a kvfs key
 * is stored as itself except that a NUL byte is "%00", a byte outside valid
 * UTF-8 is "%XX" and a '%' before two upper-case hex digits is "%25"; any
 * Consul client sees the same keys.  A foreign key this spelling would not
 * produce (say "%41") is not shown (logged once).
 *
 * Two routes to a key: /v1/kv/<key> when the key survives Go's path
 * cleaning (no empty, "." or ".." segment, no leading '/'), else the JSON
 * body of /v1/txn, so "a/../b" is always its own key and never reaches "b".
 *
 * Scans: Consul lists a prefix in one answer, without paging or sizes and
 * in its own order; a scan reads the names under the range's common prefix
 * (?keys), sorts them by kvfs bytes and sizes those it returns with "get"
 * transactions.  Transactions: at most 64 operations (maxTxnOps) and a
 * 512 KiB body, so limits.max_ops is 64 and each chunk kv.c hands over is
 * one atomic /v1/txn, unless its values cannot fit in one body (see
 * apply_in_order).  The ACL token (CONSUL_HTTP_TOKEN_FILE, else
 * CONSUL_HTTP_TOKEN) only ever travels in the X-Consul-Token header.
 */
#include "kv.h"
#include "http.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CS_MAX_VALUE ((size_t)512 << 10)    /* Consul's default kv_max_value_size */
#define CS_TXN_BODY_MAX ((size_t)512 << 10) /* default txn_max_req_len */
#define CS_TXN_MAX_OPS 64                   /* maxTxnOps, hard-coded in Consul */
/* Consul documents no key limit.  A key is a path in the mount, and Linux
 * paths end at 4096 bytes; 2048 leaves room for the mountpoint and keeps
 * any key (escaped, up to 3x) well inside a URL and a transaction body. */
#define CS_MAX_KEY 2048

/*
 * Does the Consul key s (not empty) reach Consul intact as a URL path?
 * Go's ServeMux redirects paths with empty, "." or ".." segments (a
 * leading '/' makes an empty one) to their cleaned form; a trailing '/'
 * is kept.
 */
static bool path_safe(const char *s, size_t n)
{
	for (size_t i = 0, start = 0; i <= n; i++) {
		if (i < n && s[i] != '/')
			continue;
		size_t len = i - start;
		bool dots = (len == 1 || len == 2) && strncmp(s + start, "..", len) == 0;
		if ((len == 0 && i < n) || dots)
			return false;
		start = i + 1;
	}
	return true;
}

/* ---- the store ---- */

struct consul {
	struct kv_store base;
	struct kv_http http;   /* one endpoint: "http://host:port" */
	char *kprefix;         /* Consul spelling of the URL's path prefix: "" or ".../" */
	size_t kplen;
	char *dc;              /* ?dc= value, percent-encoded, or NULL */
	const char *token_from;   /* which variable gave the token, or NULL */
	bool warned_foreign;
};

/* An answer that means "not now": no leader yet, or one just lost. */
static bool cs_transient(long status, const struct kv_buf *body)
{
	const char *b = body->p ? body->p : "";

	return status == 503 || status == 429 ||
	       (status == 500 && (strstr(b, "No cluster leader") || strstr(b, "leadership lost") ||
				  strstr(b, "rpc error")));
}

/* path + escaped Consul key + ?query [&dc=], malloc'd, or NULL. */
static char *cs_path(struct consul *c, const char *path, const char *ck, size_t cklen,
		     const char *query)
{
	/* Every byte but the unreserved ones escaped, '/' too: Consul takes the
	 * key from the decoded path. */
	char *e = cklen ? curl_easy_escape(NULL, ck, (int)cklen) : NULL, *out = NULL;

	if ((!cklen || e) && asprintf(&out, "%s%s%s%s%s%s%s", path, e ?: "",
				      query || c->dc ? "?" : "", query ?: "",
				      query && c->dc ? "&" : "", c->dc ? "dc=" : "", c->dc ?: "") < 0)
		out = NULL;
	curl_free(e);
	return out;
}

/*
 * One request (rq: method, body and flags) to cs_path(...).  0 when an
 * answer came (in r), -EIO when none did, -ENOMEM.  A key the path cannot
 * carry is not sent: it answers 400 at once, as a stricter server says.
 */
static int cs_call(struct consul *c, struct kv_http_req rq, const char *path, const char *ck,
		   size_t cklen, const char *query, struct kv_http_resp *r)
{
	int rc;

	*r = (struct kv_http_resp){0};
	if (cklen && !path_safe(ck, cklen)) {
		r->status = 400;
		return 0;
	}
	if (!(rq.path = cs_path(c, path, ck, cklen, query)))
		return -ENOMEM;
	rq.transient = cs_transient;
	rc = kv_http_request(&c->http, &rq, r);
	free((char *)rq.path);
	return rc;
}

/* The errno of an unexpected status; logs what the server said. */
static int status_errno(struct consul *c, const char *what, struct kv_http_resp *r)
{
	const char *b = r->body.p ? r->body.p : "";
	int n = (int)strcspn(b, "\r\n");

	if (r->status == 404 || r->status == 413)
		return r->status == 404 ? -ENOENT : -EFBIG;
	kv_log(KV_LOG_WARN, "consul: %s: %s: HTTP %ld %.*s%s", c->base.endpoint, what, r->status,
	       n > 120 ? 120 : n, b, r->status != 403 ? "" : " (the ACL token comes from "
	       "CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN)");
	return r->status == 403 ? -EACCES : r->status == 400 ? -EINVAL : -EIO;
}

/* The Consul key of a kvfs key: URL prefix + spelling; -EINVAL for the
 * empty key, which Consul cannot hold. */
static int key_of(struct consul *c, struct kv_buf *ck, const char *key, size_t klen)
{
	if (kv_buf_add(ck, c->kprefix, c->kplen) || kv_key_to_text(ck, key, klen))
		return -ENOMEM;
	return ck->len ? 0 : -EINVAL;
}

/* ---- /v1/txn ---- */

/* One KV operation of a transaction, or NULL. */
static json_t *txn_op(const char *verb, const char *ck, size_t cklen, const char *val,
		      size_t vlen, bool has_val, uint64_t index)
{
	json_t *v = has_val ? kv_json_base64(val, vlen) : NULL;

	if (has_val && !v)
		return NULL;
	return json_pack("{s:{s:s, s:s%, s:o*, s:o*}}", "KV", "Verb", verb, "Key", ck, cklen,
			 "Value", v, "Index", index ? json_integer((json_int_t)index) : NULL);
}

#define KEY_OP(verb, ck, cklen) txn_op(verb, ck, cklen, NULL, 0, false, 0)

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
	if (strstr(what, "index"))
		return -ECANCELED;  /* "index is stale", "current modify index" */
	if (strstr(what, "ermission denied"))
		return -EACCES;
	kv_log(KV_LOG_WARN, "consul: transaction refused: %s", what);
	return -EIO;
}

/*
 * Run a transaction (ops: an array, or NULL when building it failed).
 * 0: committed, and *root (if root is not NULL) holds the answer for the
 * caller to free; else a negative errno: -EFBIG when it does not fit in one
 * body, or the first error of a transaction Consul rolled back (409; the
 * operation's index in *op_index if not NULL).
 */
static int txn_run(struct consul *c, json_t *ops, bool idempotent, json_t **root,
		   int *op_index)
{
	struct kv_http_req rq = {.method = "PUT", .path = cs_path(c, "/v1/txn", "", 0, NULL),
				 .bulk = true, .idempotent = idempotent, .transient = cs_transient};
	struct kv_http_resp r = {0};
	json_t *ans = NULL;
	int rc = -ENOMEM;

	if (rq.path)
		rc = kv_http_json_request(&c->http, rq, ops, CS_TXN_BODY_MAX, &r, &ans);
	json_decref(ops);
	free((char *)rq.path);
	if (rc == 0 && r.status != 200 && r.status != 409) {
		rc = status_errno(c, "transaction", &r);
		rc = rc == -ENOENT ? -EIO : rc;
	} else if (rc == 0 && !ans) {
		kv_log(KV_LOG_WARN, "consul: %s: unreadable transaction answer", c->base.endpoint);
		rc = -EIO;
	} else if (rc == 0 && r.status == 409) {
		rc = txn_error(ans, op_index);
	}
	kv_buf_free(&r.body);
	if (rc || !root)
		json_decref(ans);
	if (root)
		*root = rc ? NULL : ans;
	return rc;
}

/* Result i's KV object of a committed transaction. */
static json_t *txn_result(json_t *root, size_t i)
{
	return json_object_get(json_array_get(json_object_get(root, "Results"), i), "KV");
}

/* Value and ModifyIndex of a KV object from an answer. */
static int entry_value(json_t *kv, char **val, size_t *len, uint64_t *version)
{
	if (!kv)
		return -EIO;
	if (version)
		*version = (uint64_t)json_integer_value(json_object_get(kv, "ModifyIndex"));
	return kv_json_unbase64(json_object_get(kv, "Value"), val, len);  /* null: empty */
}

/* ---- single keys ---- */

static int get_by_txn(struct consul *c, struct kv_buf *ck, char **val, size_t *len,
		      uint64_t *version)
{
	json_t *root;
	int rc = txn_run(c, json_pack("[o]", KEY_OP("get", ck->p, ck->len)), true, &root, NULL);

	if (rc == 0)
		rc = entry_value(txn_result(root, 0), val, len, version);
	json_decref(root);
	return rc == -EFBIG ? -ENOENT : rc;  /* a key too long for a body cannot exist */
}

static int cs_get(struct kv_store *s, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct kv_buf ck = {0};
	struct kv_http_resp r = {0};
	int rc = key_of(c, &ck, key, klen);

	/* Without a version the raw form saves the base64 round. */
	if (!rc)
		rc = cs_call(c, (struct kv_http_req){.method = "GET", .bulk = true,
			     .idempotent = true}, "/v1/kv/", ck.p, ck.len, version ? NULL : "raw", &r);
	if (rc)
		rc = rc == -EINVAL ? -ENOENT : rc;
	else if (r.status == 200 && !version) {
		*val = kv_buf_take(&r.body, len);
		rc = *val ? 0 : -ENOMEM;
	} else if (r.status == 200) {
		json_t *root = kv_http_json(&r.body);
		rc = entry_value(json_array_get(root, 0), val, len, version);
		json_decref(root);
	} else if (r.status == 400) {
		rc = get_by_txn(c, &ck, val, len, version);
	} else {
		rc = status_errno(c, "get", &r);
	}
	kv_buf_free(&r.body);
	kv_buf_free(&ck);
	return rc;
}

/*
 * PUT /v1/kv/<key>[?cas=N] with the raw value, or the same through /v1/txn
 * for a key the path cannot carry.  With cas, version is Consul's
 * ModifyIndex, and 0 means "only if missing" in both forms.
 */
static int put(struct consul *c, const char *key, size_t klen, const char *val, size_t vlen,
	       bool cas, uint64_t version)
{
	struct kv_http_resp r = {0};
	struct kv_buf ck = {0};
	char q[40];
	int rc = key_of(c, &ck, key, klen);

	snprintf(q, sizeof(q), "cas=%llu", (unsigned long long)version);
	if (!rc)
		rc = cs_call(c, (struct kv_http_req){.method = "PUT", .body = val, .blen = vlen,
			     .bulk = true, .idempotent = !cas}, "/v1/kv/", ck.p, ck.len,
			     cas ? q : NULL, &r);
	if (rc)
		;
	else if (r.status == 200)
		rc = strncmp(r.body.p ? r.body.p : "", "true", 4) == 0 ? 0 : -ECANCELED;
	else if (r.status != 400)
		rc = status_errno(c, cas ? "cas" : "set", &r);
	else
		rc = txn_run(c, json_pack("[o]", txn_op(cas ? "cas" : "set", ck.p, ck.len, val,
							 vlen, true, cas ? version : 0)), !cas,
			     NULL, NULL);
	if (r.status == 400 && rc == -EFBIG && vlen <= CS_MAX_VALUE)
		kv_log(KV_LOG_INFO, "consul: a key with empty, '.' or '..' segments travels in a "
		       "transaction, which holds values up to about 383 KiB");
	kv_buf_free(&r.body);
	kv_buf_free(&ck);
	/* missing: a refused cas in a transaction, a store fault on the path */
	return rc != -ENOENT ? rc : r.status == 400 ? -ECANCELED : -EIO;
}

static int cs_set(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen)
{
	return put(kv_store_cast(struct consul, s), key, klen, val, vlen, false, 0);
}

static int cs_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	return put(kv_store_cast(struct consul, s), key, klen, val, vlen, true, version);
}

/* Consul's DELETE answers true for a missing key; a transaction of
 * "get, delete" fails when it is missing, which gives ENOENT atomically. */
static int cs_del(struct kv_store *s, const char *key, size_t klen)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct kv_buf ck = {0};
	int rc = key_of(c, &ck, key, klen);

	if (rc) {
		kv_buf_free(&ck);
		return rc == -EINVAL ? -ENOENT : rc;
	}
	rc = txn_run(c, json_pack("[o, o]", KEY_OP("get", ck.p, ck.len),
				  KEY_OP("delete", ck.p, ck.len)), false, NULL, NULL);
	kv_buf_free(&ck);
	return rc == -ECANCELED ? -EIO : rc == -EFBIG ? -ENOENT : rc;
}

/* ---- apply ---- */

/*
 * A chunk whose values do not fit in one transaction body (a value over
 * ~383 KiB travels as more than 512 KiB of base64) cannot be atomic in
 * Consul at all: its operations are applied one by one, in order, so a
 * set comes before the delete that follows it, and a failure part-way
 * duplicates data but never loses it.
 */
static int apply_in_order(struct consul *c, const struct kv_op *ops, struct kv_buf *cks,
			  size_t n)
{
	int rc = 0;

	kv_log(KV_LOG_INFO, "consul: %zu operations do not fit in one transaction: applied "
	       "one by one", n);
	for (size_t i = 0; i < n && !rc; i++) {
		if (!cks[i].len)
			continue;
		if (ops[i].type == KV_OP_SET)
			rc = put(c, ops[i].key, ops[i].key_len, ops[i].val, ops[i].val_len, false, 0);
		else
			rc = txn_run(c, json_pack("[o]", KEY_OP("delete", cks[i].p, cks[i].len)), true,
				     NULL, NULL);
	}
	return rc;
}

/* Up to 64 operations (limits.max_ops): one transaction, all or nothing. */
static int cs_apply(struct kv_store *s, const struct kv_op *ops, size_t n)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct kv_buf *cks = calloc(n ? n : 1, sizeof(*cks));
	json_t *txn = json_array(), *op;
	int rc = cks && txn ? 0 : -ENOMEM;

	/* Every key first, so a key Consul cannot hold refuses the whole apply. */
	for (size_t i = 0; i < n && !rc; i++) {
		bool set = ops[i].type == KV_OP_SET;
		rc = key_of(c, &cks[i], ops[i].key, ops[i].key_len);
		if (rc == -EINVAL && !set) {
			rc = 0;  /* deleting a key that cannot exist deletes nothing */
			continue;
		}
		op = rc ? NULL : txn_op(set ? "set" : "delete", cks[i].p, cks[i].len, ops[i].val,
					ops[i].val_len, set, 0);
		if (!rc && (!op || json_array_append_new(txn, op)))
			rc = -ENOMEM;
	}
	if (!rc && json_array_size(txn)) {
		rc = txn_run(c, json_incref(txn), true, NULL, NULL);
		rc = rc == -ENOENT || rc == -ECANCELED ? -EIO : rc;
	}
	if (rc == -EFBIG)
		rc = apply_in_order(c, ops, cks, n);
	json_decref(txn);
	for (size_t i = 0; cks && i < n; i++)
		kv_buf_free(&cks[i]);
	free(cks);
	return rc;
}

/* ---- scan ---- */

/* Keys found by a scan: kvfs key and Consul key of each in text, and in
 * keys an array of struct fkey. */
struct found {
	struct kv_buf text, keys;
};

struct fkey {
	size_t off, len, ckoff, cklen;
	uint64_t size;
	bool sized, gone;
};

struct range {
	const char *from, *to;
	size_t flen, tlen;
};

static int fkey_cmp(const void *x, const void *y, void *ctx)
{
	const struct fkey *a = x, *b = y;
	const char *t = ctx;

	return kv_key_cmp(t + a->off, a->len, t + b->off, b->len);
}

/* Take one Consul key from a listing: back to kvfs bytes, kept if in the
 * range.  Foreign spellings are skipped. */
static int take_key(struct consul *c, struct found *f, const struct range *r, const char *ck,
		    size_t cklen, bool sized, uint64_t size)
{
	struct kv_buf k = {0}, back = {0};
	int rc = 0;

	if (cklen < c->kplen || memcmp(ck, c->kprefix, c->kplen) != 0)
		return 0;
	if (kv_key_from_text(&k, ck + c->kplen, cklen - c->kplen) || kv_buf_add(&k, "", 0) ||
	    kv_key_to_text(&back, k.p, k.len) || kv_buf_add(&back, "", 0)) {
		rc = -ENOMEM;
	} else if (back.len != cklen - c->kplen || memcmp(back.p, ck + c->kplen, back.len) != 0) {
		if (!c->warned_foreign)
			kv_log(KV_LOG_WARN, "consul: key '%s' is spelled with %%-escapes kvfs does not "
			       "use and is not shown", kv_printable(ck, cklen));
		c->warned_foreign = true;
	} else if (kv_key_cmp(k.p, k.len, r->from, r->flen) >= 0 &&
		   (!r->to || kv_key_cmp(k.p, k.len, r->to, r->tlen) < 0)) {
		struct fkey fk = {.off = f->text.len, .len = k.len, .ckoff = f->text.len + k.len,
				  .cklen = cklen, .size = size, .sized = sized};
		rc = kv_buf_add(&f->text, k.p, k.len) || kv_buf_add(&f->text, ck, cklen) ||
		     kv_buf_add(&f->keys, &fk, sizeof(fk)) ? -ENOMEM : 0;
	}
	kv_buf_free(&k);
	kv_buf_free(&back);
	return rc;
}

/* Names under the Consul prefix cp: ?keys, or get-tree (with values) for a
 * prefix the path cannot carry. */
static int fetch_names(struct consul *c, struct found *f, const struct range *rg,
		       const char *cp, size_t cplen)
{
	struct kv_http_resp r;
	json_t *root = NULL, *e;
	size_t i;
	int rc = cs_call(c, (struct kv_http_req){.method = "GET", .bulk = true, .idempotent = true},
			 "/v1/kv/", cp, cplen, "keys", &r);

	if (!rc && r.status == 200) {
		root = kv_http_json(&r.body);
		rc = json_is_array(root) ? 0 : -EIO;
		json_array_foreach(root, i, e) {
			if (!rc && json_is_string(e))
				rc = take_key(c, f, rg, json_string_value(e), json_string_length(e),
					      false, 0);
		}
	} else if (!rc && r.status != 404 && r.status != 400) {
		rc = status_errno(c, "list", &r);
	}
	kv_buf_free(&r.body);
	json_decref(root);
	if (rc || r.status != 400)
		return rc;
	rc = txn_run(c, json_pack("[o]", KEY_OP("get-tree", cp, cplen)), true, &root, NULL);
	json_array_foreach(rc ? NULL : json_object_get(root, "Results"), i, e) {
		json_t *kv = json_object_get(e, "KV"), *key = json_object_get(kv, "Key");
		if (!rc && json_is_string(key))
			rc = take_key(c, f, rg, json_string_value(key), json_string_length(key), true,
				      kv_json_base64_size(json_object_get(kv, "Value")));
	}
	json_decref(root);
	return rc;
}

/* Sizes of the unsized keys in v[0..n) (at most 64): one "get" transaction;
 * a key gone since its name came is marked gone and the rest asked again. */
static int fetch_sizes(struct consul *c, const char *text, struct fkey *v, size_t n)
{
	for (;;) {
		json_t *ops = json_array(), *root;
		size_t idx[CS_TXN_MAX_OPS], m = 0;
		int rc = 0, op = -1;

		for (size_t i = 0; i < n && ops; i++)
			if (!v[i].sized && !v[i].gone) {
				idx[m++] = i;
				if (json_array_append_new(ops, KEY_OP("get", text + v[i].ckoff,
								      v[i].cklen)))
					rc = -ENOMEM;
			}
		if (!m || rc) {
			json_decref(ops);
			return ops ? rc : -ENOMEM;
		}
		rc = txn_run(c, ops, true, &root, &op);
		for (size_t j = 0; rc == 0 && j < m; j++) {
			v[idx[j]].sized = true;
			v[idx[j]].size = kv_json_base64_size(json_object_get(txn_result(root, j),
									     "Value"));
		}
		json_decref(root);
		if (rc != -ENOENT || op < 0 || (size_t)op >= m)
			return rc == -ENOENT || rc == -ECANCELED ? -EIO : rc;
		v[idx[op]].gone = true;  /* ask again without it */
	}
}

/* The longest prefix every key in [from, to) starts with. */
static size_t range_prefix(const struct range *r)
{
	size_t l = 0;

	if (!r->to)
		return 0;
	while (l < r->flen && l < r->tlen && r->from[l] == r->to[l])
		l++;
	/* to = the successor of from[0..l+1): every key in the range has that prefix */
	if (r->tlen == l + 1 && l < r->flen &&
	    (unsigned char)r->to[l] == (unsigned char)r->from[l] + 1)
		l++;
	return l;
}

static int cs_scan(struct kv_store *s, const char *from, size_t flen, const char *to,
		   size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct range rg = {.from = from, .flen = flen, .to = to, .tlen = tlen};
	struct found f = {0};
	struct kv_buf cp = {0};
	struct fkey *v;
	size_t i = 0, done = 0, n;
	int rc;

	rc = kv_buf_add(&cp, c->kprefix, c->kplen) ||
	     kv_key_to_text(&cp, from, kv_key_text_prefix(from, range_prefix(&rg))) ||
	     kv_buf_add(&cp, "", 0) ? -ENOMEM : 0;
	if (!rc)
		rc = fetch_names(c, &f, &rg, cp.p, cp.len);
	v = (struct fkey *)(void *)f.keys.p;
	n = f.keys.len / sizeof(*v);
	if (!rc && n > 1)
		qsort_r(v, n, sizeof(*v), fkey_cmp, f.text.p);
	/* Size and hand over a transaction's worth at a time, until max. */
	while (!rc && i < n && done < max) {
		size_t m = n - i < CS_TXN_MAX_OPS ? n - i : CS_TXN_MAX_OPS;
		m = m < max - done ? m : max - done;
		rc = fetch_sizes(c, f.text.p, v + i, m);
		for (size_t j = i; j < i + m && !rc; j++) {
			if (v[j].gone)
				continue;
			rc = cb(ctx, f.text.p + v[j].off, v[j].len, v[j].size);
			done++;
		}
		i += m;
	}
	kv_buf_free(&cp);
	kv_buf_free(&f.text);
	kv_buf_free(&f.keys);
	return rc < 0 ? rc : 0;
}

/* ---- health ---- */

/* The health check reports its own failures (in .health, or as the mount's one line). */
#define HEALTH_GET ((struct kv_http_req){.method = "GET", .idempotent = true, .quiet = true})

/*
 * GET /v1/status/leader (a leader is known; no ACL needed), then a KV read
 * the token must be good for: -EACCES when it is refused.  The agent's
 * version needs agent:read, which a KV token may lack: then it is left out.
 */
static int cs_health(struct kv_store *s, struct kv_health *h)
{
	struct consul *c = kv_store_cast(struct consul, s);
	struct kv_http_resp r;
	struct kv_buf probe = {0};
	char leader[96] = "";
	json_t *root = NULL;
	const char *v;
	int rc = cs_call(c, HEALTH_GET, "/v1/status/leader", "", 0, NULL, &r);

	if (!rc && r.status == 200 && (root = kv_http_json(&r.body)))
		snprintf(leader, sizeof(leader), "%s", json_string_value(root) ?: "");
	json_decref(root);
	if (!rc && !leader[0]) {
		snprintf(h->detail, sizeof(h->detail), "consul: %s (HTTP %ld from /v1/status/leader)",
			 r.status == 200 ? "no cluster leader" : r.body.p ?: "", r.status);
		kv_buf_free(&r.body);
		return -EIO;
	}
	kv_buf_free(&r.body);
	if (!rc)
		rc = kv_buf_printf(&probe, "%s.kvfs-probe", c->kprefix) ? -ENOMEM :
		     cs_call(c, HEALTH_GET, "/v1/kv/", probe.p, probe.len, "keys", &r);
	kv_buf_free(&probe);
	if (rc)
		snprintf(h->detail, sizeof(h->detail), "consul does not answer (%s)", r.why);
	else if (r.status != 200 && r.status != 404)
		snprintf(h->detail, sizeof(h->detail), "consul %s the KV read%s%s: HTTP %ld %.80s",
			 r.status == 403 ? "refused" : "failed", c->token_from ?
			 " with the token from " : " without a token", c->token_from ?: "",
			 r.status, r.body.p ?: "");
	rc = rc ? rc : r.status == 403 ? -EACCES : r.status != 200 && r.status != 404 ? -EIO : 0;
	kv_buf_free(&r.body);
	if (rc)
		return rc == -EACCES || rc == -ENOMEM ? rc : -EIO;
	snprintf(h->detail, sizeof(h->detail), "consul, leader %s", leader);
	kv_health_fact(h, "leader", "%s", leader);
	rc = cs_call(c, HEALTH_GET, "/v1/agent/self", "", 0, NULL, &r);
	root = !rc && r.status == 200 ? kv_http_json(&r.body) : NULL;
	v = json_string_value(json_object_get(json_object_get(root, "Config"), "Version"));
	if (v)
		kv_health_fact(h, "consul_version", "%s", v);
	json_decref(root);
	kv_buf_free(&r.body);
	kv_health_fact(h, "datacenter", "%s", c->dc ? c->dc : "(the agent's)");
	kv_health_fact(h, "tls", "%s", strncmp(c->http.eps[0], "https:", 6) ? "off" : "on, verified");
	kv_health_fact(h, "token", "%s", c->token_from ? c->token_from : "none");
	kv_health_fact(h, "key_prefix", "%s", c->kplen ? c->kprefix : "(none)");
	return 0;
}

/* ---- open / close ---- */

/* The token: CONSUL_HTTP_TOKEN_FILE wins over CONSUL_HTTP_TOKEN, as in
 * Consul's own api client; into the X-Consul-Token header, without the
 * whitespace around it. */
static int read_token(struct consul *c, char *err, size_t errlen)
{
	const char *file = getenv("CONSUL_HTTP_TOKEN_FILE"), *env = getenv("CONSUL_HTTP_TOKEN");
	bool from_file = file && *file;
	char why[200], *tok;
	const char *t;
	size_t n;
	int rc = 0;

	c->token_from = from_file ? "CONSUL_HTTP_TOKEN_FILE" : env && *env ? "CONSUL_HTTP_TOKEN"
								       : NULL;
	if (!c->token_from)
		return 0;
	tok = from_file ? kv_read_secret(file, c->token_from, why, sizeof(why)) : strdup(env);
	if (!tok) {
		snprintf(err, errlen, "consul: %s", from_file ? why : "out of memory");
		return from_file ? -EACCES : -ENOMEM;
	}
	t = tok + strspn(tok, " \t\n\v\f\r");
	for (n = strlen(t); n && isspace((unsigned char)t[n - 1]); n--)
		;
	for (size_t i = 0; i < n && !rc; i++)
		if ((unsigned char)t[i] < 0x20 || t[i] == 0x7f)
			rc = -EINVAL;
	if (rc)
		snprintf(err, errlen, "consul: the ACL token from %s has a control character",
			 c->token_from);
	else if (n)
		rc = kv_http_header(&c->http, "X-Consul-Token: %.*s", (int)n, t);
	c->token_from = n ? c->token_from : NULL;
	explicit_bzero(tok, strlen(tok));
	free(tok);
	return rc;
}

/* "?dc=x": the only query parameter; a token or anything else is refused. */
static int parse_query(struct consul *c, const char *q, char *err, size_t errlen)
{
	int rc = -EINVAL;

	if (strstr(q, "token"))
		snprintf(err, errlen, "consul: no token in the URL: put the ACL token in "
			 "CONSUL_HTTP_TOKEN_FILE (a file) or CONSUL_HTTP_TOKEN");
	else if ((rc = kv_http_query(&c->http, q, (const char *const[]){"dc", NULL}, 1, err,
				     errlen)) == -EINVAL)
		snprintf(err, errlen, "consul: bad URL parameters '%.40s' (only dc= is known)", q);
	else if (!rc && !(c->dc = curl_easy_escape(NULL, c->http.query[0].value, 0)))
		rc = -ENOMEM;
	return rc;
}

/* The URL: "//host:port/prefix?dc=x", or "///prefix" and "" with the agent
 * from CONSUL_HTTP_ADDR. */
static int parse_location(struct consul *c, const struct kv_open_args *a, char *err,
			  size_t errlen)
{
	const char *env = getenv("CONSUL_HTTP_ADDR"), *ssl = getenv("CONSUL_HTTP_SSL");
	const char *loc = a->location;
	bool tls = strncasecmp(a->url, "consul+https:", 13) == 0 ||
		   (ssl && (strcasecmp(ssl, "true") == 0 || strcmp(ssl, "1") == 0));
	bool from_env = strncmp(loc, "//", 2) != 0 || strchr("/?", loc[2]);
	char *in = NULL, *agent = NULL;
	struct kv_http_url u = {0};
	struct kv_buf kp = {0};
	int rc = 0;

	if (from_env && env && strstr(env, "://") && strncmp(env, "http://", 7) &&
	    strncmp(env, "https://", 8)) {
		snprintf(err, errlen, "consul: CONSUL_HTTP_ADDR must be host:port, http:// or "
			 "https:// (unix sockets are not supported)");
		rc = -EINVAL;
	} else if (from_env && !(agent = kv_http_base_url("consul", env && *env ? env :
							  "127.0.0.1:8500", tls, tls ? 8501 : 8500,
							  err, errlen))) {
		rc = err[0] ? -EINVAL : -ENOMEM;
	} else if (asprintf(&in, "%s%s%s", from_env ? agent : tls ? "https:" : "http:",
			    from_env && *loc != '/' ? "/" : "",
			    from_env && loc[0] == '/' && loc[1] == '/' ? loc + 2 : loc) < 0) {
		rc = -ENOMEM;
	}
	if (!rc && (rc = kv_http_parse(in, tls ? 8501 : 8500, &u)) == -EINVAL)
		snprintf(err, errlen, "consul: bad URL: expected consul://host:port/[prefix][?dc=DC]");
	if (!rc && (u.user || u.password)) {
		snprintf(err, errlen, "consul: no credentials in the URL: put the ACL token in "
			 "CONSUL_HTTP_TOKEN_FILE (a file) or CONSUL_HTTP_TOKEN");
		rc = -EINVAL;
	}
	if (!rc && u.query)
		rc = parse_query(c, u.query, err, errlen);
	/* The path names a key prefix: "/app/" and "/app" both mean "app/". */
	if (!rc && kv_key_to_text(&kp, u.prefix, u.prefix_len))
		rc = -ENOMEM;
	c->kprefix = kv_buf_take(&kp, &c->kplen);  /* "" when empty */
	c->http.eps[0] = u.origin;
	c->http.neps = u.origin ? 1 : 0;
	u.origin = NULL;
	kv_http_url_free(&u);
	free(agent);
	free(in);
	return rc ? rc : c->kprefix ? 0 : -ENOMEM;
}

static void cs_close(struct kv_store *s)
{
	struct consul *c = kv_store_cast(struct consul, s);

	kv_http_destroy(&c->http);
	free(c->kprefix);
	curl_free(c->dc);
	free(c);
}

static int cs_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	static const char *const tls_env[4] = {"CONSUL_CACERT", "CONSUL_CAPATH",
					       "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"};
	struct consul *c = calloc(1, sizeof(*c));
	int rc;

	if (!c)
		return -ENOMEM;
	rc = kv_http_init(&c->http, "consul", a->timeout_ms, err, errlen);
	if (!rc)
		rc = kv_http_tls(&c->http, a, tls_env, err, errlen);
	if (!rc)
		rc = parse_location(c, a, err, errlen);
	if (!rc)
		rc = read_token(c, err, errlen);
	if (rc)
		cs_close(&c->base);
	else
		*out = &c->base;
	return rc;
}

const struct kv_backend kv_backend_consul = {
	.scheme = "consul",
	.aliases = (const char *const[]){"consul+https", NULL},
	.summary = "HashiCorp Consul's KV store over HTTP(S); consul+https:, "
		   "consul: uses $CONSUL_HTTP_ADDR",
	.usage = "consul://host:8500/[prefix][?dc=DC]",
	.options = (const char *const[]){"cacert", "capath", "cert", "key", NULL},
	.persistent = true,
	.limits = {.max_key = CS_MAX_KEY, .max_value = CS_MAX_VALUE, .max_ops = CS_TXN_MAX_OPS},
	.open = cs_open,
	.close = cs_close,
	.get = cs_get,
	.set = cs_set,
	.del = cs_del,
	.scan = cs_scan,
	.health = cs_health,
	.cas = cs_cas,
	.apply = cs_apply,
};
