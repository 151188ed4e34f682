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
	const char *db;           /* the URL's (in uri), or MG_DEFAULT_DB */
	char coll[121];
	int timeout_ms;
};


/* ---- keys: bytes <-> _id strings ---- */

/*
 * Append {name: the _id of key[0..klen)} to doc: at most 2 * klen bytes,
 * from bson_malloc, which aborts when memory runs out, as every document
 * libbson builds already does.
 */
static void mg_append_id(bson_t *doc, const char *name, const char *key, size_t klen)
{
	char *id = bson_malloc(2 * klen + 1);
	size_t o = 0;

	for (size_t i = 0; i < klen; i++) {
		unsigned char c = (unsigned char)key[i];
		if (c < 2) {
			id[o++] = 1;
			id[o++] = (char)(c + 1);
		} else if (c < 0x80) {
			id[o++] = (char)c;
		} else {
			id[o++] = (char)(0xc0 | (c >> 6));
			id[o++] = (char)(0x80 | (c & 0x3f));
		}
	}
	bson_append_utf8(doc, name, -1, id, (int)o);
	bson_free(id);
}

/* The key of an _id, into out (room for len bytes); false if the string is
 * not one mg_append_id() makes (another application's document). */
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

/* A numeric field of doc (a reply's count, a value's size or version); 0 if none. */
static int64_t mg_number(const bson_t *doc, const char *field)
{
	bson_iter_t it;

	if (bson_iter_init_find(&it, doc, field) && BSON_ITER_HOLDS_NUMBER(&it))
		return bson_iter_as_int64(&it);
	return 0;
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
	bool server = e->domain == MONGOC_ERROR_SERVER || e->domain == MONGOC_ERROR_COLLECTION ||
		      e->domain == MONGOC_ERROR_QUERY;
	int rc = server && e->code == 10334 ? -EFBIG       /* BSONObjectTooLarge */
		 : server && e->code == 14031 ? -ENOSPC   /* OutOfDiskSpace */
		 : mg_refused(e) ? -EACCES : -EIO;

	kv_log(KV_LOG_ERR, "mongodb: %s%s%s: %s%s", op, key ? " " : "",
	       key ? kv_printable(key, klen) : "", e->message,
	       e->domain == MONGOC_ERROR_STREAM || e->domain == MONGOC_ERROR_SERVER_SELECTION ?
	       " (-o timeout raises the wait)" : "");
	return rc;
}

/* A dropped connection, a server restarting or not found yet, an election. */
static bool mg_passing(const bson_error_t *e)
{
	return e->domain == MONGOC_ERROR_STREAM || e->domain == MONGOC_ERROR_SERVER_SELECTION ||
	       (e->domain == MONGOC_ERROR_SERVER &&
		(e->code == 91 || e->code == 189 || e->code == 10107 || e->code == 11600 ||
		 e->code == 11602 || e->code == 13435));  /* shutdown, not primary */
}

/* ---- one call: a client from the pool, one try or more ---- */

struct mg_call {
	struct mg_store *s;
	mongoc_client_t *client;
	mongoc_collection_t *coll;
	const char *op, *key;    /* for the log */
	size_t klen;
};

/* A try's result besides 0 and a negative errno: it failed, as *e says. */
#define MG_FAILED 1

typedef int mg_try_fn(struct mg_call *c, void *arg, bson_error_t *e);

/*
 * Run try with a client and the collection.  A passing failure is tried
 * again with backoff until the call's deadline (the driver finds the server
 * again meanwhile); any other is logged with op and key and becomes an errno.
 */
static int mg_run(struct mg_store *s, const char *op, const char *key, size_t klen,
		  mg_try_fn *try, void *arg)
{
	int64_t deadline = kv_deadline(s->timeout_ms);
	struct mg_call c = {.s = s, .client = mongoc_client_pool_pop(s->pool), .op = op,
			    .key = key, .klen = klen};
	bson_error_t e;
	int rc, attempt = 0;

	if (!c.client) {
		kv_log(KV_LOG_ERR, "mongodb: no free connection within the timeout");
		return -EIO;
	}
	c.coll = mongoc_client_get_collection(c.client, s->db, s->coll);
	while ((rc = try(&c, arg, &e)) == MG_FAILED && mg_passing(&e) &&
	       kv_backoff(attempt++, deadline))
		;
	if (rc == MG_FAILED)
		rc = mg_errno(&e, op, key, klen);
	mongoc_collection_destroy(c.coll);
	mongoc_client_pool_push(s->pool, c.client);
	return rc;
}

/* ---- finds: get, stat, scan ---- */

/* What a find returns of each document: _id, and n (the value's size,
 * without the value) or v and ver. */
enum mg_fields { MG_ID, MG_SIZE, MG_VALUE };

/*
 * A find, filter and opts in.  Out: with cb, up to max kvfs keys to cb
 * (with n, the value's size); without, a copy of the first document.
 */
struct mg_find {
	bson_t filter, opts;
	kv_key_cb *cb;
	void *ctx;
	size_t max, n;            /* documents taken, at most max */
	bson_t *doc;
	struct kv_buf key;
};

static void mg_find_init(struct mg_find *f, size_t max, enum mg_fields fields)
{
	*f = (struct mg_find){.filter = BSON_INITIALIZER, .opts = BSON_INITIALIZER, .max = max};
	if (fields == MG_VALUE)
		BCON_APPEND(&f->opts, "projection", "{", "v", BCON_INT32(1), "ver", BCON_INT32(1), "}");
	else if (fields == MG_SIZE)
		BCON_APPEND(&f->opts, "projection", "{", "_id", BCON_INT32(1),
			    "n", "{", "$binarySize", BCON_UTF8("$v"), "}", "}");
	else
		BCON_APPEND(&f->opts, "projection", "{", "_id", BCON_INT32(1), "}");
	if (max == 1)
		BCON_APPEND(&f->opts, "limit", BCON_INT64(1), "singleBatch", BCON_BOOL(true));
}

static void mg_find_free(struct mg_find *f)
{
	bson_destroy(&f->filter);
	bson_destroy(&f->opts);
	bson_destroy(f->doc);
	kv_buf_free(&f->key);
}

/* Documents kvfs could not have written are skipped (the cursor then
 * simply reads on). */
static int mg_find_try(struct mg_call *c, void *arg, bson_error_t *e)
{
	struct mg_find *f = arg;
	mongoc_cursor_t *cur = mongoc_collection_find_with_opts(c->coll, &f->filter, &f->opts,
								NULL);
	const bson_t *doc;
	bson_iter_t it;
	const char *sid;
	uint32_t slen;
	size_t klen;
	int rc = 0;

	while (!rc && f->n < f->max && mongoc_cursor_next(cur, &doc)) {
		if (!f->cb) {
			f->doc = bson_copy(doc);
			f->n++;
			continue;
		}
		if (!bson_iter_init_find(&it, doc, "_id") || !BSON_ITER_HOLDS_UTF8(&it))
			continue;
		sid = bson_iter_utf8(&it, &slen);
		if ((rc = kv_buf_reserve(&f->key, slen)))
			break;
		if (!mg_key(sid, slen, f->key.p, &klen)) {
			kv_log(KV_LOG_WARN, "mongodb: list: skipping _id %s: not a kvfs key",
			       kv_printable(sid, slen));
			continue;
		}
		f->n++;
		rc = f->cb(f->ctx, f->key.p, klen, (uint64_t)mg_number(doc, "n"));
	}
	/* a failure before any document came is worth another try */
	if (!rc && mongoc_cursor_error(cur, e))
		rc = f->n ? mg_errno(e, c->op, c->key, c->klen) : MG_FAILED;
	else if (rc > 0)
		rc = 0;  /* cb stopped the scan */
	mongoc_cursor_destroy(cur);
	return rc;
}

/* The document of key: 0 with f->doc (to mg_find_free), -ENOENT, or an errno. */
static int mg_find_one(struct mg_store *s, const char *op, const char *key, size_t klen,
		       enum mg_fields fields, struct mg_find *f)
{
	int rc;

	mg_find_init(f, 1, fields);
	mg_append_id(&f->filter, "_id", key, klen);
	rc = mg_run(s, op, key, klen, mg_find_try, f);
	return rc || f->n ? rc : -ENOENT;
}

static int mg_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	struct mg_find f;
	bson_iter_t it;
	const uint8_t *data = NULL;
	uint32_t n = 0;
	bson_subtype_t sub;
	int rc = mg_find_one(kv_store_cast(struct mg_store, st), "get", key, klen, MG_VALUE, &f);

	if (!rc && bson_iter_init_find(&it, f.doc, "v") && BSON_ITER_HOLDS_BINARY(&it)) {
		bson_iter_binary(&it, &sub, &n, &data);
	} else if (!rc && bson_iter_init_find(&it, f.doc, "v") && BSON_ITER_HOLDS_UTF8(&it)) {
		data = (const uint8_t *)bson_iter_utf8(&it, &n);  /* written by hand in mongosh */
	} else if (!rc) {
		kv_log(KV_LOG_ERR, "mongodb: get %s: the document has no binary or string field v",
		       kv_printable(key, klen));
		rc = -EIO;
	}
	if (!rc && !(*val = kv_memdup(data, n)))
		rc = -ENOMEM;
	if (!rc) {
		int64_t ver = mg_number(f.doc, "ver");  /* 0: none, or not a number */

		*len = n;
		if (version)
			*version = ver ? (uint64_t)ver : MG_VER_NONE;
	}
	mg_find_free(&f);
	return rc;
}

static int mg_stat(struct kv_store *st, const char *key, size_t klen, uint64_t *size)
{
	struct mg_find f;
	int rc = mg_find_one(kv_store_cast(struct mg_store, st), "stat", key, klen, MG_SIZE, &f);

	if (!rc)
		*size = (uint64_t)mg_number(f.doc, "n");
	mg_find_free(&f);
	return rc;
}

/*
 * The keys in [from, to) in byte order, at most max of them: one find on
 * the _id index (the _id order is the keys' byte order), sorted, values'
 * sizes only.
 */
static int mg_scan(struct kv_store *st, const char *from, size_t flen, const char *to,
		   size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	struct mg_find f;
	bson_t range;
	int rc;

	mg_find_init(&f, max, MG_SIZE);
	f.cb = cb;
	f.ctx = ctx;
	BSON_APPEND_DOCUMENT_BEGIN(&f.filter, "_id", &range);
	mg_append_id(&range, "$gte", from, flen);
	if (to)
		mg_append_id(&range, "$lt", to, tlen);
	bson_append_document_end(&f.filter, &range);
	BCON_APPEND(&f.opts, "sort", "{", "_id", BCON_INT32(1), "}",
		    "batchSize", BCON_INT64((int64_t)(max < 1000 ? max + 1 : 1000)));
	rc = mg_run(kv_store_cast(struct mg_store, st), "list", from, flen, mg_find_try, &f);
	mg_find_free(&f);
	return rc;
}

/* ---- writes ---- */

struct mg_update {
	bson_t filter, upd, opts;
	bool upsert;
	int raced;
	int64_t matched, upserted;  /* the reply's counts */
};

static int mg_update_try(struct mg_call *c, void *arg, bson_error_t *e)
{
	struct mg_update *u = arg;
	bson_t reply;
	bool ok;

	do {
		ok = mongoc_collection_update_one(c->coll, &u->filter, &u->upd, &u->opts, &reply,
						  e);
		u->matched = ok ? mg_number(&reply, "matchedCount") : 0;
		u->upserted = ok ? mg_number(&reply, "upsertedCount") : 0;
		bson_destroy(&reply);
		/* Two upserts of one new key raced and this one lost: the
		 * document exists now, the retry finds it. */
	} while (!ok && e->code == MG_DUP_KEY && u->upsert && u->raced++ == 0);
	return ok ? 0 : MG_FAILED;
}

/*
 * Give the document of key a new value.  set: creating it when missing.
 * cas: only the document whose ver is still version (-ECANCELED if none
 * is); version 0, only a document that does not exist yet: an upsert that
 * sets the fields only when it inserts, so a retry that finds its own
 * insert done says ECANCELED too, as if raced.
 */
static int mg_update(struct mg_store *s, const char *key, size_t klen, const char *val,
		     size_t vlen, bool cas, uint64_t version)
{
	struct mg_update u = {.filter = BSON_INITIALIZER, .upd = BSON_INITIALIZER,
			      .opts = BSON_INITIALIZER, .upsert = !cas || !version};
	int rc;

	mg_append_id(&u.filter, "_id", key, klen);
	if (cas && version == MG_VER_NONE)
		BSON_APPEND_NULL(&u.filter, "ver");  /* matches a missing field too */
	else if (cas && version)
		BSON_APPEND_INT64(&u.filter, "ver", (int64_t)version);
	/* v: the value, ver: a new version (see the top of this file) */
	BCON_APPEND(&u.upd, cas && !version ? "$setOnInsert" : "$set", "{",
		    "v", BCON_BIN(BSON_SUBTYPE_BINARY, (const uint8_t *)(vlen ? val : ""), vlen),
		    "ver", BCON_INT64((int64_t)((kv_random64() >> 2) | 1)), "}");
	BSON_APPEND_BOOL(&u.opts, "upsert", u.upsert);
	rc = mg_run(s, cas ? "cas" : "set", key, klen, mg_update_try, &u);
	bson_destroy(&u.filter);
	bson_destroy(&u.upd);
	bson_destroy(&u.opts);
	return rc || !cas || (version ? u.matched : u.upserted) ? rc : -ECANCELED;
}

static int mg_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	return mg_update(kv_store_cast(struct mg_store, st), key, klen, val, vlen, false, 0);
}

static int mg_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	return mg_update(kv_store_cast(struct mg_store, st), key, klen, val, vlen, true, version);
}

static int mg_del_try(struct mg_call *c, void *arg, bson_error_t *e)
{
	bson_t reply;
	int rc = !mongoc_collection_delete_one(c->coll, arg, NULL, &reply, e) ? MG_FAILED
		 : mg_number(&reply, "deletedCount") ? 0 : -ENOENT;

	bson_destroy(&reply);
	return rc;
}

static int mg_del(struct kv_store *st, const char *key, size_t klen)
{
	bson_t filter = BSON_INITIALIZER;
	int rc;

	mg_append_id(&filter, "_id", key, klen);
	rc = mg_run(kv_store_cast(struct mg_store, st), "del", key, klen, mg_del_try, &filter);
	bson_destroy(&filter);
	return rc;
}

/* ---- health ---- */

/* Tried once: its failure is the report, not a log line. */
static int mg_health_try(struct mg_call *c, void *arg, bson_error_t *e)
{
	const mongoc_write_concern_t *wc = mongoc_uri_get_write_concern(c->s->uri);
	mongoc_server_description_t *sd;
	struct kv_health *h = arg;
	bson_t cmd = BSON_INITIALIZER, reply;
	struct mg_find f;
	bson_iter_t it;
	char version[64] = "?";
	bool ok;

	/* ping, then a read of one _id: ping alone needs no credentials */
	BSON_APPEND_INT32(&cmd, "ping", 1);
	ok = mongoc_client_command_simple(c->client, "admin", &cmd, NULL, &reply, e);
	bson_destroy(&reply);
	mg_find_init(&f, 1, MG_ID);
	ok = ok && mg_find_try(c, &f, e) != MG_FAILED;
	mg_find_free(&f);
	bson_reinit(&cmd);
	BSON_APPEND_INT32(&cmd, "buildInfo", 1);
	if (ok && mongoc_client_command_simple(c->client, "admin", &cmd, NULL, &reply, e) &&
	    bson_iter_init_find(&it, &reply, "version") && BSON_ITER_HOLDS_UTF8(&it))
		snprintf(version, sizeof(version), "%s", bson_iter_utf8(&it, NULL));
	if (ok)
		bson_destroy(&reply);
	bson_destroy(&cmd);
	if (!ok) {
		snprintf(h->detail, sizeof(h->detail), "%.240s", e->message);
		return mg_refused(e) ? -EACCES : -EIO;
	}
	snprintf(h->detail, sizeof(h->detail), "MongoDB %s, collection %s.%s", version,
		 c->s->db, c->s->coll);
	kv_health_fact(h, "server_version", "%s", version);
	kv_health_fact(h, "database", "%s", c->s->db);
	kv_health_fact(h, "collection", "%s", c->s->coll);
	if ((sd = mongoc_client_select_server(c->client, true, NULL, e))) {
		kv_health_fact(h, "server_type", "%s", mongoc_server_description_type(sd));
		mongoc_server_description_destroy(sd);
	}
	if (mongoc_write_concern_get_wmajority(wc))
		kv_health_fact(h, "write_concern", "majority");
	else if (mongoc_write_concern_get_w(wc) == MONGOC_WRITE_CONCERN_W_DEFAULT)
		kv_health_fact(h, "write_concern", "server default");
	else
		kv_health_fact(h, "write_concern", "%d", (int)mongoc_write_concern_get_w(wc));
	kv_health_fact(h, "journal", "%s", !mongoc_write_concern_journal_is_set(wc) ?
		       "server default" : mongoc_write_concern_get_journal(wc) ? "true" : "false");
	return 0;
}

static int mg_health(struct kv_store *st, struct kv_health *h)
{
	snprintf(h->detail, sizeof(h->detail), "mongodb: no free connection");
	return mg_run(kv_store_cast(struct mg_store, st), "health", NULL, 0, mg_health_try, h);
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

/* The password of the URL's user: the first line of -o password_file, else
 * $KVFS_MONGODB_PASSWORD. */
static int mg_password(mongoc_uri_t *uri, const struct kv_open_args *a, char *err, size_t errlen)
{
	const char *file = kv_option_get(a, "password_file"), *env = getenv(MG_PASSWORD_ENV);
	char msg[256], *secret = file ? kv_read_secret(file, "password_file", msg, sizeof(msg))
				      : NULL;
	const char *password = file ? secret : env && *env ? env : NULL;
	int rc = -EINVAL;

	if (file && !secret) {
		snprintf(err, errlen, "mongodb: %s", msg);
		return -EACCES;
	}
	if (password && !mongoc_uri_get_username(uri))
		snprintf(err, errlen, "mongodb: a password is given but the URL names no user "
			 "(mongodb://user@host/db)");
	else if (password && !mongoc_uri_set_password(uri, password))
		snprintf(err, errlen, "mongodb: the password is not valid UTF-8");
	else
		rc = 0;
	if (secret)
		explicit_bzero(secret, strlen(secret));
	free(secret);
	return rc;
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

/* -o w=majority|N and -o journal=true|false */
static int mg_write_concern(mongoc_uri_t *uri, const struct kv_open_args *a, char *err,
			    size_t errlen)
{
	const char *w = kv_option_get(a, "w"), *j = kv_option_get(a, "journal");
	mongoc_write_concern_t *wc;
	char *end;
	long n = w ? strtol(w, &end, 10) : 0;
	bool ok;

	if (w && strcmp(w, "majority") && (!*w || *end || n < 0 || n > 1000)) {
		snprintf(err, errlen, "mongodb: bad w '%s' (majority or a number of nodes)", w);
		return -EINVAL;
	}
	if (j && strcmp(j, "true") && strcmp(j, "false")) {
		snprintf(err, errlen, "mongodb: bad journal '%s' (true or false)", j);
		return -EINVAL;
	}
	wc = mongoc_write_concern_copy(mongoc_uri_get_write_concern(uri));
	if (w && strcmp(w, "majority") == 0)
		mongoc_write_concern_set_wmajority(wc, -1);
	else if (w)
		mongoc_write_concern_set_w(wc, (int32_t)n);
	if (j)
		mongoc_write_concern_set_journal(wc, strcmp(j, "true") == 0);
	ok = mongoc_write_concern_is_valid(wc);
	if (ok)
		mongoc_uri_set_write_concern(uri, wc);
	else
		snprintf(err, errlen, "mongodb: w=0 cannot be combined with journal=true");
	mongoc_write_concern_destroy(wc);
	return ok ? 0 : -EINVAL;
}

static void mg_close(struct kv_store *st)
{
	struct mg_store *s = kv_store_cast(struct mg_store, st);

	if (s->pool)
		mongoc_client_pool_destroy(s->pool);
	mongoc_uri_destroy(s->uri);
	free(s);
}

/* Parse the URL and options into s->uri, s->db and s->coll. */
static int mg_configure(struct mg_store *s, const struct kv_open_args *a, char *err,
			size_t errlen)
{
	static const char secret[] = "tlsCertificateKeyFilePassword";
	const char *coll = kv_option_get(a, "collection"), *db;
	int32_t t = a->timeout_ms;
	/*
	 * Every network wait is bounded by the mount's timeout unless the
	 * URL sets its own: connecting, each read and write on a socket,
	 * finding a usable server (retrying within that time, as pools
	 * do), and waiting for a free client.  Heartbeats at that pace (500
	 * ms at least, mongoc's floor) notice a server that came back.
	 */
	const struct { const char *name; int32_t ms; } timeouts[] = {
		{MONGOC_URI_CONNECTTIMEOUTMS, t}, {MONGOC_URI_SOCKETTIMEOUTMS, t},
		{MONGOC_URI_SERVERSELECTIONTIMEOUTMS, t}, {MONGOC_URI_WAITQUEUETIMEOUTMS, t},
		{MONGOC_URI_HEARTBEATFREQUENCYMS, t < 500 ? 500 : t > 10000 ? 10000 : t},
	};
	bson_error_t e;
	int rc;

	s->uri = mongoc_uri_new_with_error(a->url, &e);
	if (!s->uri) {
		/* mongoc's reason may quote the URL, which may hold a secret */
		if (strchr(a->url, '@') || strcasestr(a->url, "password"))
			snprintf(err, errlen, "mongodb: bad URL (expected "
				 "mongodb://[user@]host[:port]/database)");
		else
			snprintf(err, errlen, "mongodb: bad URL: %s", e.message);
		return -EINVAL;
	}
	if (mongoc_uri_get_password(s->uri) || mongoc_uri_has_option(s->uri, secret)) {
		snprintf(err, errlen, "mongodb: the URL holds a password, which would show in ps "
			 "and logs: keep the user in the URL and put the password in $%s or in a "
			 "file named by -o password_file=", MG_PASSWORD_ENV);
		return -EINVAL;
	}
	if ((rc = mg_tls_files(s->uri, err, errlen)) || (rc = mg_password(s->uri, a, err, errlen)))
		return rc;
	db = mongoc_uri_get_database(s->uri);
	s->db = db && *db ? db : MG_DEFAULT_DB;
	coll = coll ? coll : MG_DEFAULT_COLL;
	if (!*coll || strchr(coll, '$') || strlen(coll) >= sizeof(s->coll) ||
	    strncmp(coll, "system.", 7) == 0) {
		snprintf(err, errlen, "mongodb: bad collection '%s'", coll);
		return -EINVAL;
	}
	strcpy(s->coll, coll);
	if ((rc = mg_write_concern(s->uri, a, err, errlen)))
		return rc;
	for (size_t i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); i++) {
		/* unless the URL says otherwise */
		if (!mongoc_uri_has_option(s->uri, timeouts[i].name) &&
		    !mongoc_uri_set_option_as_int32(s->uri, timeouts[i].name, timeouts[i].ms)) {
			snprintf(err, errlen, "mongodb: cannot set the timeouts");
			return -EINVAL;
		}
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
	/* No round trip here: kv_open probes with health() unless -o lazy. */
	if (!rc && !(s->pool = mongoc_client_pool_new(s->uri))) {
		snprintf(err, errlen, "mongodb: cannot set up the client pool (TLS options?)");
		rc = -EINVAL;
	}
	if (rc) {
		mg_close(&s->base);
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
