/*
 * mongodb.c - a MongoDB collection as the store, through mongo-c-driver:
 * "mongodb://[user@]host[:port][,host...]/database?options" (or
 * "mongodb+srv://..."), with the collection named by -o collection=
 * (default "kv") and the database by the URL's path (default "kvfs").
 *
 * One document per key: {_id: K, v: BinData(0, value), ver: int64}.  K is
 * the key as a string (MongoDB orders BinData by length first, strings as
 * their UTF-8 bytes): each key byte becomes the code point of the same
 * number (Latin-1), U+0000 is written U+0001 U+0001 and U+0001 as U+0001
 * U+0002.  That code is prefix-free and keeps byte order, so a scan is a
 * range query on the _id index, never a regex.
 *
 * `ver` is a fresh random nonzero 62-bit number on every write: the
 * version get() reports and cas() filters on.  A counter would repeat
 * after a delete and re-create; a random number almost never does.
 *
 * MongoDB has multi-document transactions only on replica sets and
 * sharded clusters, while a backend's capabilities are fixed: there is no
 * apply(), and kv.c runs a rename's operations one by one (not atomic).
 *
 * open() only parses: the URL (mongoc_uri), the password (environment or
 * -o password_file, kv_read_secret) and the TLS files the URL names
 * (kv_check_file).  kv_open's probe, health(), finds an unreachable server
 * (-EIO) or refused credentials (-EACCES) unless -o lazy.
 */
#include <errno.h>
#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "toolkit.h"

#define MG_DEFAULT_DB "kvfs"
#define MG_DEFAULT_COLL "kv"
#define MG_PASSWORD_ENV "KVFS_MONGODB_PASSWORD"
#define MG_MAX_KEY 1024          /* 2 KiB of _id at most: well inside any index */
/* A document is at most 16 MiB (maxBsonObjectSize); leave room for the
 * _id, the field names and the update command around the value. */
#define MG_MAX_VALUE (((size_t)16 << 20) - ((size_t)16 << 10))
#define MG_VER_NONE UINT64_MAX   /* a document without a numeric ver */
#define MG_DUP_KEY 11000

struct mg_store {
	struct kv_store base;
	mongoc_client_pool_t *pool;
	mongoc_uri_t *uri;
	char *db, *coll;
	int timeout_ms;
};

/* ---- keys: bytes <-> _id strings ---- */

/* The _id of key[0..klen): malloc'd, length in *len (at most 2 * klen). */
static char *mg_id(const char *key, size_t klen, size_t *len)
{
	char *out = malloc(2 * klen + 2);
	size_t o = 0;

	if (!out)
		return NULL;
	for (size_t i = 0; i < klen; i++) {
		unsigned char c = (unsigned char)key[i];
		if (c < 2) {
			out[o++] = 1;
			out[o++] = (char)(c + 1);
		} else if (c < 0x80) {
			out[o++] = (char)c;
		} else {
			out[o++] = (char)(0xc0 | (c >> 6));
			out[o++] = (char)(0x80 | (c & 0x3f));
		}
	}
	out[o] = '\0';
	*len = o;
	return out;
}

/* The key of an _id, into out (room for len bytes); false if the string is
 * not one mg_id() makes (another application's document). */
static bool mg_key(const char *id, size_t len, char *out, size_t *klen)
{
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)id[i];
		if (c == 1) {
			if (i + 1 == len || (id[i + 1] != 1 && id[i + 1] != 2))
				return false;
			out[o++] = (char)(id[++i] - 1);
		} else if (c >= 2 && c < 0x80) {
			out[o++] = (char)c;
		} else if ((c == 0xc2 || c == 0xc3) && i + 1 < len &&
			   ((unsigned char)id[i + 1] & 0xc0) == 0x80) {
			out[o++] = (char)(((c & 0x03) << 6) | ((unsigned char)id[++i] & 0x3f));
		} else {
			return false;
		}
	}
	*klen = o;
	return true;
}

/* Append {_id: <the key's _id>} to doc.  false: out of memory. */
static bool mg_append_id(bson_t *doc, const char *key, size_t klen)
{
	size_t idlen;
	char *id = mg_id(key, klen, &idlen);
	bool ok = id && bson_append_utf8(doc, "_id", 3, id, (int)idlen);

	free(id);
	return ok;
}

static int64_t mg_new_version(void)
{
	return (int64_t)((kv_random64() >> 2) | 1);
}

/* ---- errors ---- */

/* Did the server refuse the credentials (or want some)? */
static bool mg_refused(const bson_error_t *e)
{
	return (e->domain == MONGOC_ERROR_CLIENT && e->code == MONGOC_ERROR_CLIENT_AUTHENTICATE) ||
	       ((e->domain == MONGOC_ERROR_SERVER || e->domain == MONGOC_ERROR_QUERY) &&
		(e->code == 13 || e->code == 18));  /* Unauthorized, AuthenticationFailed */
}

static int mg_errno(const bson_error_t *e, const char *op, const char *key, size_t klen)
{
	int rc = mg_refused(e) ? -EACCES : -EIO;

	if (e->domain == MONGOC_ERROR_SERVER || e->domain == MONGOC_ERROR_COLLECTION ||
	    e->domain == MONGOC_ERROR_QUERY) {
		switch (e->code) {
		case 10334:  /* BSONObjectTooLarge */
			rc = -EFBIG;
			break;
		case 14031:  /* OutOfDiskSpace */
			rc = -ENOSPC;
			break;
		}
	}
	kv_log(KV_LOG_ERR, "mongodb: %s%s%s: %s%s", op, key ? " " : "",
	       key ? kv_printable(key, klen) : "", e->message,
	       e->domain == MONGOC_ERROR_STREAM || e->domain == MONGOC_ERROR_SERVER_SELECTION ?
	       " (-o timeout raises the wait)" : "");
	return rc;
}

/* ---- a collection handle per call ---- */

struct mg_call {
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	int64_t deadline;
	int attempt;
};

/*
 * A passing failure (a dropped connection, a server restarting or not
 * found yet, an election) is tried again with backoff until the call's
 * deadline; the driver finds the server again meanwhile.
 */
static bool mg_again(struct mg_call *c, const bson_error_t *e)
{
	bool passing = e->domain == MONGOC_ERROR_STREAM ||
		       e->domain == MONGOC_ERROR_SERVER_SELECTION ||
		       (e->domain == MONGOC_ERROR_SERVER &&
			(e->code == 91 || e->code == 189 || e->code == 10107 || e->code == 11600 ||
			 e->code == 11602 || e->code == 13435));  /* shutdown, not primary */

	return passing && kv_backoff(c->attempt++, c->deadline);
}

static int mg_begin(struct mg_store *s, struct mg_call *c)
{
	c->deadline = kv_deadline(s->timeout_ms);
	c->attempt = 0;
	c->client = mongoc_client_pool_pop(s->pool);
	if (!c->client) {
		kv_log(KV_LOG_ERR, "mongodb: no free connection within the timeout");
		return -EIO;
	}
	c->coll = mongoc_client_get_collection(c->client, s->db, s->coll);
	return 0;
}

static void mg_end(struct mg_store *s, struct mg_call *c)
{
	mongoc_collection_destroy(c->coll);
	mongoc_client_pool_push(s->pool, c->client);
}

/* ---- get, stat ---- */

static uint64_t mg_version_of(const bson_t *doc)
{
	bson_iter_t it;
	int64_t v;

	if (!bson_iter_init_find(&it, doc, "ver") || !BSON_ITER_HOLDS_NUMBER(&it))
		return MG_VER_NONE;
	v = bson_iter_as_int64(&it);
	return v == 0 ? MG_VER_NONE : (uint64_t)v;
}

/* Find the one document of _id; 0 with *doc (a copy), -ENOENT or -EIO. */
static int mg_find_one(struct mg_store *s, const char *op, const char *key, size_t klen,
		       const bson_t *projection, bson_t **doc)
{
	struct mg_call c;
	mongoc_cursor_t *cur;
	const bson_t *d;
	bson_error_t e;
	bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
	int rc;

	if (!mg_append_id(&filter, key, klen)) {
		bson_destroy(&filter);
		return -ENOMEM;
	}
	BSON_APPEND_INT64(&opts, "limit", 1);
	BSON_APPEND_BOOL(&opts, "singleBatch", true);
	BSON_APPEND_DOCUMENT(&opts, "projection", projection);
	if ((rc = mg_begin(s, &c)) == 0) {
		bool again = false;
		do {
			cur = mongoc_collection_find_with_opts(c.coll, &filter, &opts, NULL);
			if (mongoc_cursor_next(cur, &d)) {
				*doc = bson_copy(d);
				rc = *doc ? 0 : -ENOMEM;
			} else if (!mongoc_cursor_error(cur, &e)) {
				rc = -ENOENT;
			} else if (!(again = mg_again(&c, &e))) {
				rc = mg_errno(&e, op, key, klen);
			}
			mongoc_cursor_destroy(cur);
		} while (again);
		mg_end(s, &c);
	}
	bson_destroy(&filter);
	bson_destroy(&opts);
	return rc;
}

static int mg_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct mg_store *s = kv_store_cast(struct mg_store, st);
	bson_t proj = BSON_INITIALIZER, *doc = NULL;
	bson_iter_t it;
	const uint8_t *data = NULL;
	uint32_t n = 0;
	bson_subtype_t sub;
	int rc;

	BSON_APPEND_INT32(&proj, "v", 1);
	BSON_APPEND_INT32(&proj, "ver", 1);
	rc = mg_find_one(s, "get", key, klen, &proj, &doc);
	bson_destroy(&proj);
	if (rc)
		return rc;
	if (bson_iter_init_find(&it, doc, "v") && BSON_ITER_HOLDS_BINARY(&it)) {
		bson_iter_binary(&it, &sub, &n, &data);
	} else if (bson_iter_init_find(&it, doc, "v") && BSON_ITER_HOLDS_UTF8(&it)) {
		data = (const uint8_t *)bson_iter_utf8(&it, &n);  /* written by hand in mongosh */
	} else {
		kv_log(KV_LOG_ERR, "mongodb: get %s: the document has no binary or string field v",
		       kv_printable(key, klen));
		bson_destroy(doc);
		return -EIO;
	}
	*val = malloc((size_t)n + 1);
	if (!*val) {
		bson_destroy(doc);
		return -ENOMEM;
	}
	if (n)
		memcpy(*val, data, n);
	(*val)[n] = '\0';
	*len = n;
	if (version)
		*version = mg_version_of(doc);
	bson_destroy(doc);
	return 0;
}

/* The projection that gives a value's size without sending the value. */
static void mg_size_projection(bson_t *proj)
{
	bson_t sz;

	BSON_APPEND_DOCUMENT_BEGIN(proj, "n", &sz);
	BSON_APPEND_UTF8(&sz, "$binarySize", "$v");
	bson_append_document_end(proj, &sz);
}

static uint64_t mg_size_of(const bson_t *doc)
{
	bson_iter_t it;

	if (bson_iter_init_find(&it, doc, "n") && BSON_ITER_HOLDS_NUMBER(&it))
		return (uint64_t)bson_iter_as_int64(&it);
	return 0;
}

static int mg_stat(struct kv_store *st, const char *key, size_t klen, uint64_t *size)
{
	struct mg_store *s = kv_store_cast(struct mg_store, st);
	bson_t proj = BSON_INITIALIZER, *doc = NULL;
	int rc;

	BSON_APPEND_INT32(&proj, "_id", 1);
	mg_size_projection(&proj);
	rc = mg_find_one(s, "stat", key, klen, &proj, &doc);
	bson_destroy(&proj);
	if (rc)
		return rc;
	*size = mg_size_of(doc);
	bson_destroy(doc);
	return 0;
}

/* ---- writes ---- */

/* {$set: {v: value, ver: new version}} */
static void mg_set_update(bson_t *upd, const char *val, size_t vlen)
{
	bson_t set;

	BSON_APPEND_DOCUMENT_BEGIN(upd, "$set", &set);
	bson_append_binary(&set, "v", 1, BSON_SUBTYPE_BINARY, (const uint8_t *)(vlen ? val : ""),
			   (uint32_t)vlen);
	BSON_APPEND_INT64(&set, "ver", mg_new_version());
	bson_append_document_end(upd, &set);
}

static int64_t mg_reply_count(const bson_t *reply, const char *field)
{
	bson_iter_t it;

	if (bson_iter_init_find(&it, reply, field) && BSON_ITER_HOLDS_NUMBER(&it))
		return bson_iter_as_int64(&it);
	return 0;
}

/*
 * Update the document of key matching filter (plus its _id) with a new
 * value.  upsert: create it when missing.  *matched tells whether a
 * document matched (or was created).
 */
static int mg_update(struct mg_store *s, const char *op, const char *key, size_t klen,
		     const bson_t *extra, bool upsert, const char *val, size_t vlen, bool *matched)
{
	struct mg_call c;
	bson_t filter = BSON_INITIALIZER, upd = BSON_INITIALIZER, opts = BSON_INITIALIZER, reply;
	bson_error_t e;
	int rc, tries = 0;

	if (!mg_append_id(&filter, key, klen)) {
		bson_destroy(&filter);
		return -ENOMEM;
	}
	if (extra)
		bson_concat(&filter, extra);
	mg_set_update(&upd, val, vlen);
	BSON_APPEND_BOOL(&opts, "upsert", upsert);
	rc = mg_begin(s, &c);
	if (!rc) {
		for (;;) {
			if (mongoc_collection_update_one(c.coll, &filter, &upd, &opts, &reply, &e)) {
				*matched = mg_reply_count(&reply, "matchedCount") > 0 ||
					   mg_reply_count(&reply, "upsertedCount") > 0;
			} else if ((e.code == MG_DUP_KEY && upsert && tries++ == 0) ||
				   mg_again(&c, &e)) {
				/* Two upserts of one new key raced and this one
				 * lost: the document exists now, the retry updates it. */
				bson_destroy(&reply);
				continue;
			} else {
				rc = mg_errno(&e, op, key, klen);
			}
			bson_destroy(&reply);
			break;
		}
		mg_end(s, &c);
	}
	bson_destroy(&filter);
	bson_destroy(&upd);
	bson_destroy(&opts);
	return rc;
}

static int mg_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	bool matched;

	return mg_update(kv_store_cast(struct mg_store, st), "set", key, klen, NULL, true, val,
			 vlen, &matched);
}

/* Version 0: insert, and a duplicate _id means someone was first. */
static int mg_insert_new(struct mg_store *s, const char *key, size_t klen, const char *val,
			 size_t vlen)
{
	struct mg_call c;
	bson_t doc = BSON_INITIALIZER;
	bson_error_t e;
	int rc;

	if (!mg_append_id(&doc, key, klen)) {
		bson_destroy(&doc);
		return -ENOMEM;
	}
	bson_append_binary(&doc, "v", 1, BSON_SUBTYPE_BINARY, (const uint8_t *)(vlen ? val : ""),
			   (uint32_t)vlen);
	BSON_APPEND_INT64(&doc, "ver", mg_new_version());
	rc = mg_begin(s, &c);
	if (!rc) {
		/* a retry that finds its own insert done says ECANCELED: as if raced */
		while (!mongoc_collection_insert_one(c.coll, &doc, NULL, NULL, &e)) {
			if (e.code == MG_DUP_KEY || !mg_again(&c, &e)) {
				rc = e.code == MG_DUP_KEY ? -ECANCELED : mg_errno(&e, "cas", key, klen);
				break;
			}
		}
		mg_end(s, &c);
	}
	bson_destroy(&doc);
	return rc;
}

static int mg_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	struct mg_store *s = kv_store_cast(struct mg_store, st);
	bson_t extra = BSON_INITIALIZER;
	bool matched = false;
	int rc;

	if (version == 0)
		return mg_insert_new(s, key, klen, val, vlen);
	if (version == MG_VER_NONE)
		BSON_APPEND_NULL(&extra, "ver");  /* matches a missing field too */
	else
		BSON_APPEND_INT64(&extra, "ver", (int64_t)version);
	rc = mg_update(s, "cas", key, klen, &extra, false, val, vlen, &matched);
	bson_destroy(&extra);
	return rc ? rc : matched ? 0 : -ECANCELED;
}

static int mg_del(struct kv_store *st, const char *key, size_t klen)
{
	struct mg_store *s = kv_store_cast(struct mg_store, st);
	struct mg_call c;
	bson_t filter = BSON_INITIALIZER, reply;
	bson_error_t e;
	int rc;

	if (!mg_append_id(&filter, key, klen)) {
		bson_destroy(&filter);
		return -ENOMEM;
	}
	rc = mg_begin(s, &c);
	if (!rc) {
		bool ok;
		while (!(ok = mongoc_collection_delete_one(c.coll, &filter, NULL, &reply, &e)) &&
		       mg_again(&c, &e))
			bson_destroy(&reply);
		if (!ok)
			rc = mg_errno(&e, "del", key, klen);
		else if (mg_reply_count(&reply, "deletedCount") == 0)
			rc = -ENOENT;
		bson_destroy(&reply);
		mg_end(s, &c);
	}
	bson_destroy(&filter);
	return rc;
}

/* ---- scan ---- */

/*
 * The keys in [from, to) in byte order, at most max of them: one find on
 * the _id index (the _id order is the keys' byte order), sorted, values'
 * sizes only.  Documents kvfs could not have written are skipped (the
 * cursor then simply reads on).
 */
static int mg_scan(struct kv_store *st, const char *from, size_t flen, const char *to,
		   size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	struct mg_store *s = kv_store_cast(struct mg_store, st);
	bson_t filter = BSON_INITIALIZER, range, opts = BSON_INITIALIZER, sort, proj;
	size_t lolen, hilen = 0, klen, n = 0;
	char *lo = mg_id(from, flen, &lolen), *hi = to ? mg_id(to, tlen, &hilen) : NULL;
	struct kv_buf key = {0};
	struct mg_call c;
	bson_error_t e;
	int rc = !lo || (to && !hi) ? -ENOMEM : 0;

	BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &range);
	bson_append_utf8(&range, "$gte", -1, lo ? lo : "", (int)(lo ? lolen : 0));
	if (hi)
		bson_append_utf8(&range, "$lt", -1, hi, (int)hilen);
	bson_append_document_end(&filter, &range);
	BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
	BSON_APPEND_INT32(&sort, "_id", 1);
	bson_append_document_end(&opts, &sort);
	BSON_APPEND_INT64(&opts, "batchSize", (int64_t)(max < 1000 ? max + 1 : 1000));
	BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
	BSON_APPEND_INT32(&proj, "_id", 1);
	mg_size_projection(&proj);
	bson_append_document_end(&opts, &proj);
	free(lo);
	free(hi);
	if (!rc && !(rc = mg_begin(s, &c))) {
		bool again;
		do {
			mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c.coll, &filter,
										&opts, NULL);
			const bson_t *doc;
			bson_iter_t it;
			const char *sid;
			uint32_t slen;

			while (!rc && n < max && mongoc_cursor_next(cur, &doc)) {
				if (!bson_iter_init_find(&it, doc, "_id") || !BSON_ITER_HOLDS_UTF8(&it))
					continue;
				sid = bson_iter_utf8(&it, &slen);
				if ((rc = kv_buf_reserve(&key, slen)))
					break;
				if (!mg_key(sid, slen, key.p, &klen)) {
					kv_log(KV_LOG_WARN, "mongodb: list: skipping _id %s: not a "
					       "kvfs key", kv_printable(sid, slen));
					continue;
				}
				n++;
				rc = cb(ctx, key.p, klen, mg_size_of(doc));
			}
			/* a failure before any key came is worth another try */
			again = !rc && !n && mongoc_cursor_error(cur, &e) && mg_again(&c, &e);
			if (!rc && !again && mongoc_cursor_error(cur, &e))
				rc = mg_errno(&e, "list", from, flen);
			mongoc_cursor_destroy(cur);
		} while (again);
		mg_end(s, &c);
	}
	bson_destroy(&filter);
	bson_destroy(&opts);
	kv_buf_free(&key);
	return rc < 0 ? rc : 0;
}

/* ---- health ---- */

/* Read the first _id of the collection (or find none): 0, or -1 with *e. */
static int mg_first_id(struct mg_call *c, bson_error_t *e)
{
	bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER, proj;
	const bson_t *doc;
	mongoc_cursor_t *cur;
	int rc;

	BSON_APPEND_INT64(&opts, "limit", 1);
	BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
	BSON_APPEND_INT32(&proj, "_id", 1);
	bson_append_document_end(&opts, &proj);
	cur = mongoc_collection_find_with_opts(c->coll, &filter, &opts, NULL);
	mongoc_cursor_next(cur, &doc);
	rc = mongoc_cursor_error(cur, e) ? -1 : 0;
	mongoc_cursor_destroy(cur);
	bson_destroy(&filter);
	bson_destroy(&opts);
	return rc;
}

static int mg_health(struct kv_store *st, struct kv_health *h)
{
	struct mg_store *s = kv_store_cast(struct mg_store, st);
	const mongoc_write_concern_t *wc = mongoc_uri_get_write_concern(s->uri);
	mongoc_server_description_t *sd;
	struct mg_call c;
	bson_t cmd = BSON_INITIALIZER, reply;
	bson_error_t e;
	bson_iter_t it;
	char version[64] = "?", buf[96];
	int rc;

	rc = mg_begin(s, &c);
	if (rc) {
		snprintf(h->detail, sizeof(h->detail), "mongodb: no free connection");
		return rc;
	}
	/* ping, then a read of one _id: ping alone needs no credentials */
	BSON_APPEND_INT32(&cmd, "ping", 1);
	if (!mongoc_client_command_simple(c.client, "admin", &cmd, NULL, &reply, &e) ||
	    mg_first_id(&c, &e)) {
		snprintf(h->detail, sizeof(h->detail), "%.240s", e.message);
		rc = mg_refused(&e) ? -EACCES : -EIO;
	}
	bson_destroy(&reply);
	bson_reinit(&cmd);
	BSON_APPEND_INT32(&cmd, "buildInfo", 1);
	if (!rc && mongoc_client_command_simple(c.client, "admin", &cmd, NULL, &reply, &e) &&
	    bson_iter_init_find(&it, &reply, "version") && BSON_ITER_HOLDS_UTF8(&it))
		snprintf(version, sizeof(version), "%s", bson_iter_utf8(&it, NULL));
	if (!rc)
		bson_destroy(&reply);
	bson_destroy(&cmd);
	if (!rc) {
		snprintf(h->detail, sizeof(h->detail), "MongoDB %s, collection %s.%s", version,
			 s->db, s->coll);
		kv_health_fact(h, "server_version", "%s", version);
		kv_health_fact(h, "database", "%s", s->db);
		kv_health_fact(h, "collection", "%s", s->coll);
		sd = mongoc_client_select_server(c.client, true, NULL, &e);
		if (sd) {
			kv_health_fact(h, "server_type", "%s", mongoc_server_description_type(sd));
			mongoc_server_description_destroy(sd);
		}
		if (mongoc_write_concern_get_wmajority(wc))
			snprintf(buf, sizeof(buf), "majority");
		else if (mongoc_write_concern_get_w(wc) == MONGOC_WRITE_CONCERN_W_DEFAULT)
			snprintf(buf, sizeof(buf), "server default");
		else
			snprintf(buf, sizeof(buf), "%d", (int)mongoc_write_concern_get_w(wc));
		kv_health_fact(h, "write_concern", "%s", buf);
		kv_health_fact(h, "journal", "%s", !mongoc_write_concern_journal_is_set(wc) ? "server default" :
			mongoc_write_concern_get_journal(wc) ? "true" : "false");
	}
	mg_end(s, &c);
	return rc;
}

/* ---- open and close ---- */

/* mongoc's own log lines go through kv_log, without its default stderr. */
static void mg_log_handler(mongoc_log_level_t level, const char *domain, const char *message,
			   void *data)
{
	(void)data;
	/* its warnings (a failed login, a lost server) repeat what the call
	 * that failed reports: shown with -d only */
	if (level <= MONGOC_LOG_LEVEL_ERROR)
		kv_log(KV_LOG_WARN, "mongodb: %s: %s", domain, message);
	else if (level <= MONGOC_LOG_LEVEL_INFO)
		kv_log(KV_LOG_DEBUG, "mongodb: %s: %s", domain, message);
}

static void mg_init_once(void)
{
	/* (libmongoc has made its /dev/shm counters file as it loaded, before
	 * this runs: docs/backends.md, mongodb, "Known limit") */
	mongoc_log_set_handler(mg_log_handler, NULL);
	mongoc_init();
}

/* The password: the first line of -o password_file, else $KVFS_MONGODB_PASSWORD. */
static int mg_password(const struct kv_open_args *a, char **out, char *err, size_t errlen)
{
	const char *file = kv_option_get(a, "password_file");
	const char *env = getenv(MG_PASSWORD_ENV);
	char msg[256];

	*out = NULL;
	if (file && !(*out = kv_read_secret(file, "password_file", msg, sizeof(msg)))) {
		snprintf(err, errlen, "mongodb: %s", msg);
		return -EACCES;
	}
	if (!file && env && *env && !(*out = strdup(env)))
		return -ENOMEM;
	return 0;
}

/* The TLS files the URL names must be there and readable. */
static int mg_tls_files(const mongoc_uri_t *uri, char *err, size_t errlen)
{
	static const char *const names[] = {"tlsCAFile", "tlsCertificateKeyFile"};
	char msg[256];
	int rc;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const char *f = mongoc_uri_get_option_as_utf8(uri, names[i], NULL);  /* any case */
		if (f && (rc = kv_check_file(f, names[i], msg, sizeof(msg)))) {
			snprintf(err, errlen, "mongodb: %s", msg);
			return rc;
		}
	}
	return 0;
}

static bool mg_bad_name(const char *name, const char *bad)
{
	return !*name || strpbrk(name, bad) || strlen(name) > 120;
}

static int mg_set_int_default(mongoc_uri_t *uri, const char *name, int32_t value)
{
	if (mongoc_uri_has_option(uri, name))
		return 0;  /* the URL says otherwise */
	return mongoc_uri_set_option_as_int32(uri, name, value) ? 0 : -EINVAL;
}

/* -o w=majority|N and -o journal=true|false */
static int mg_write_concern(mongoc_uri_t *uri, const struct kv_open_args *a, char *err,
			    size_t errlen)
{
	const char *w = kv_option_get(a, "w"), *j = kv_option_get(a, "journal");
	mongoc_write_concern_t *wc;
	char *end;
	long n;

	if (!w && !j)
		return 0;
	wc = mongoc_write_concern_copy(mongoc_uri_get_write_concern(uri));
	if (w && strcmp(w, "majority") == 0) {
		mongoc_write_concern_set_wmajority(wc, -1);
	} else if (w) {
		n = strtol(w, &end, 10);
		if (!*w || *end || n < 0 || n > 1000) {
			mongoc_write_concern_destroy(wc);
			snprintf(err, errlen, "mongodb: bad w '%s' (majority or a number of nodes)", w);
			return -EINVAL;
		}
		mongoc_write_concern_set_w(wc, (int32_t)n);
	}
	if (j) {
		if (strcmp(j, "true") && strcmp(j, "false")) {
			mongoc_write_concern_destroy(wc);
			snprintf(err, errlen, "mongodb: bad journal '%s' (true or false)", j);
			return -EINVAL;
		}
		mongoc_write_concern_set_journal(wc, strcmp(j, "true") == 0);
	}
	if (!mongoc_write_concern_is_valid(wc)) {
		mongoc_write_concern_destroy(wc);
		snprintf(err, errlen, "mongodb: w=0 cannot be combined with journal=true");
		return -EINVAL;
	}
	mongoc_uri_set_write_concern(uri, wc);
	mongoc_write_concern_destroy(wc);
	return 0;
}

static void mg_free(struct mg_store *s)
{
	if (s->pool)
		mongoc_client_pool_destroy(s->pool);
	if (s->uri)
		mongoc_uri_destroy(s->uri);
	free(s->db);
	free(s->coll);
	free(s);
}

static void mg_close(struct kv_store *st)
{
	mg_free(kv_store_cast(struct mg_store, st));
}

/* Parse the URL and options into s->uri, s->db and s->coll. */
static int mg_configure(struct mg_store *s, const struct kv_open_args *a, char *err,
			size_t errlen)
{
	static const char secret[] = "tlsCertificateKeyFilePassword";
	const char *coll = kv_option_get(a, "collection"), *db;
	char *password = NULL;
	int32_t t = a->timeout_ms;
	bson_error_t e;
	int rc;

	s->uri = mongoc_uri_new_with_error(a->url, &e);
	if (!s->uri) {
		/* mongoc's reason may quote the URL, which may hold a secret */
		if (strchr(a->url, '@') || strcasestr(a->url, "password"))
			snprintf(err, errlen, "mongodb: bad URL (expected mongodb://[user@]host[:port]/database)");
		else
			snprintf(err, errlen, "mongodb: bad URL: %s", e.message);
		return -EINVAL;
	}
	if (mongoc_uri_get_password(s->uri) || mongoc_uri_has_option(s->uri, secret)) {
		snprintf(err, errlen, "mongodb: the URL holds a password, which would show in ps and "
			 "logs: keep the user in the URL and put the password in $%s or in a file "
			 "named by -o password_file=", MG_PASSWORD_ENV);
		return -EINVAL;
	}
	rc = mg_tls_files(s->uri, err, errlen);
	if (!rc)
		rc = mg_password(a, &password, err, errlen);
	if (rc)
		return rc;
	if (password && !mongoc_uri_get_username(s->uri)) {
		free(password);
		snprintf(err, errlen, "mongodb: a password is given but the URL names no user "
			 "(mongodb://user@host/db)");
		return -EINVAL;
	}
	if (password) {
		bool ok = mongoc_uri_set_password(s->uri, password);
		explicit_bzero(password, strlen(password));
		free(password);
		if (!ok) {
			snprintf(err, errlen, "mongodb: the password is not valid UTF-8");
			return -EINVAL;
		}
	}
	db = mongoc_uri_get_database(s->uri);
	s->db = strdup(db && *db ? db : MG_DEFAULT_DB);
	s->coll = strdup(coll ? coll : MG_DEFAULT_COLL);
	if (!s->db || !s->coll)
		return -ENOMEM;
	if (mg_bad_name(s->coll, "$") || strncmp(s->coll, "system.", 7) == 0) {
		snprintf(err, errlen, "mongodb: bad collection '%s'", s->coll);
		return -EINVAL;
	}
	rc = mg_write_concern(s->uri, a, err, errlen);
	if (rc)
		return rc;
	/*
	 * Every network wait is bounded by the mount's timeout unless the
	 * URL sets its own: connecting, each read and write on a socket,
	 * finding a usable server (retrying within that time, as pools
	 * do), and waiting for a free client.  Heartbeats at that pace (500
	 * ms at least, mongoc's floor) notice a server that came back.
	 */
	if (mg_set_int_default(s->uri, MONGOC_URI_CONNECTTIMEOUTMS, t) ||
	    mg_set_int_default(s->uri, MONGOC_URI_SOCKETTIMEOUTMS, t) ||
	    mg_set_int_default(s->uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, t) ||
	    mg_set_int_default(s->uri, MONGOC_URI_WAITQUEUETIMEOUTMS, t) ||
	    mg_set_int_default(s->uri, MONGOC_URI_HEARTBEATFREQUENCYMS,
			       t < 500 ? 500 : t > 10000 ? 10000 : t)) {
		snprintf(err, errlen, "mongodb: cannot set the timeouts");
		return -EINVAL;
	}
	return 0;
}

static int mg_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct mg_store *s;
	int rc;

	pthread_once(&once, mg_init_once);
	if (!(s = calloc(1, sizeof(*s))))
		return -ENOMEM;
	s->timeout_ms = a->timeout_ms;
	rc = mg_configure(s, a, err, errlen);
	if (!rc) {
		/* No round trip here: kv_open probes with health() unless -o lazy. */
		s->pool = mongoc_client_pool_new(s->uri);
		if (!s->pool) {
			snprintf(err, errlen, "mongodb: cannot set up the client pool (TLS options?)");
			rc = -EINVAL;
		}
	}
	if (rc) {
		mg_free(s);
		return rc;
	}
	mongoc_client_pool_set_error_api(s->pool, MONGOC_ERROR_API_VERSION_2);
	mongoc_client_pool_set_appname(s->pool, "kvfs");
	*out = &s->base;
	return 0;
}

/*
 * -o options.  collection: the collection (default "kv").  password_file:
 * a file whose first line is the password of the URL's user (else
 * $KVFS_MONGODB_PASSWORD).  w: majority or a number of nodes; journal:
 * true or false (the write concern; default: the URL's, else the server's).
 */
static const char *const mg_options[] = { "collection", "password_file", "w", "journal", NULL };

const struct kv_backend kv_backend_mongodb = {
	.scheme = "mongodb",
	.aliases = (const char *const[]){ "mongodb+srv", NULL },
	.summary = "MongoDB collection, one document per key (mongo-c-driver)",
	.usage = "mongodb://[user@]host[:port]/db",
	.options = mg_options,
	.persistent = true,
	.limits = { .max_key = MG_MAX_KEY, .max_value = MG_MAX_VALUE },
	.open = mg_open,
	.close = mg_close,
	.get = mg_get,
	.set = mg_set,
	.del = mg_del,
	.scan = mg_scan,
	.health = mg_health,
	.stat = mg_stat,
	.cas = mg_cas,
};
