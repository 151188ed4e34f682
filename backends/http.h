/*
 * http.h - what the HTTP stores (Consul, etcd, the next ones) share: one
 * pool of libcurl easy handles per store over the toolkit's kv_pool, a
 * request bounded by a deadline and retried on passing failures, TLS files
 * checked at open, and base64 for values that travel in JSON.  JSON itself
 * is built and read with jansson only.  Compiled only with a backend that
 * needs it (meson.build).
 */
#ifndef KVFS_HTTP_H
#define KVFS_HTTP_H

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv.h"
#include "toolkit.h"

/* TLS files, each optional: CA bundle, CA directory, client certificate and key. */
struct kv_http_tls {
	const char *cacert, *capath, *cert, *key;
};

struct kv_http {
	struct kv_pool pool;     /* CURL * handles; each keeps its own connections */
	const char *name;        /* the backend's scheme, for log lines */
	int timeout_ms;          /* -o timeout: waiting for the store, per call */
	char *cacert, *capath, *cert, *key;
	pthread_mutex_t lock;
	int64_t last_warn;       /* transport trouble is logged once a second at most */
};

/*
 * Set up h for one store: curl_global_init (once per process), the pool,
 * and the TLS files, each checked with kv_check_file so that a missing one
 * fails the open.  0, or -ENOENT/-EACCES/-EIO/-ENOMEM with one line in err.
 */
int kv_http_init(struct kv_http *h, const char *name, int timeout_ms,
		 const struct kv_http_tls *tls, char *err, size_t errlen);
void kv_http_destroy(struct kv_http *h);

struct kv_http_req {
	const char *method;            /* "GET", "PUT", "POST", "DELETE" */
	const char *url;
	const char *body;              /* NULL: none */
	size_t blen;
	const struct curl_slist *headers;
	int64_t deadline;              /* waiting for the store ends here (kv_deadline) */
	bool bulk;                     /* the answer may be large (a value): bound the wait
	                                  for each byte, not the transfer; a body over
	                                  64 KiB makes a request bulk by itself */
	bool once;                     /* no retries here: the caller fails over itself */
	bool idempotent;               /* a reset after sending may be retried too */
	bool quiet;                    /* the caller logs a failure itself */
	/* An answer that means "not now" (no leader, an election): retried.
	 * NULL: 503 only. */
	bool (*transient)(long status, const struct kv_buf *body);
};

struct kv_http_resp {
	long status;                   /* 0 when no answer came */
	struct kv_buf body;
	bool sent;                     /* the request may have reached the store */
	char why[160];                 /* transport failure, for logs */
};

/*
 * One request, retried with kv_backoff while the failure passes (refused,
 * reset before an answer, a transient status) and the deadline allows.
 * 0: an answer came (any status, in r; free r->body), -EIO: none did (the
 * reason in r->why, logged at most once a second), -ENOMEM.
 */
int kv_http_request(struct kv_http *h, const struct kv_http_req *rq, struct kv_http_resp *r);

/* The answer's body as JSON (any value), or NULL. */
json_t *kv_http_json(const struct kv_http_resp *r);

/* A store's URL, parsed with curl_url(). */
struct kv_http_url {
	char *origin;      /* "scheme://host:port" */
	char *user;        /* %-decoded, or NULL */
	bool password;     /* the URL holds one (callers refuse it) */
	char *query;       /* as given, or NULL */
	char *prefix;      /* the path %-decoded, without leading '/', with a '/'
	                      after it unless empty: a key prefix */
	size_t prefix_len;
};

/* Parse "http(s)://[user@]host[:port][/path][?query]".  0, -EINVAL (not
 * such a URL) or -ENOMEM. */
int kv_http_parse(const char *url, unsigned default_port, struct kv_http_url *out);
void kv_http_url_free(struct kv_http_url *u);
/*
 * The settings of a URL query "name=value&...", each name one of allowed
 * (NULL-terminated): at most max of them into opts, their values
 * %-decoded into *text (malloc'd; the caller frees it after the last use).
 * 0, or -EINVAL with one line in err naming the scheme, or -ENOMEM.
 */
int kv_http_query(const char *scheme, const char *q, const char *const *allowed,
		  struct kv_option *opts, size_t max, size_t *n, char **text, char *err,
		  size_t errlen);
/* A setting: the -o option, else the URL query's, else the variable env. */
const char *kv_http_setting(const struct kv_open_args *a, const struct kv_option *query,
			    size_t nquery, const char *name, const char *env);
/* "scheme://host:port" of a parsed URL (default_port if it names none), or
 * NULL when it is not http(s) with a host.  malloc'd. */
char *kv_http_origin(CURLU *u, unsigned default_port);
/* "scheme://host:port" of a URL given as "[scheme://]host[:port]" (a
 * default scheme and port if none), parsed with curl_url().  malloc'd, or
 * NULL with one line in err. */
char *kv_http_base_url(const char *name, const char *hostport, bool tls, unsigned default_port,
		       char *err, size_t errlen);

/*
 * ---- Binary keys as text: JSON strings and URL paths carry only UTF-8 ----
 * A key is spelled as itself except that a NUL byte is "%00", a byte that
 * is not part of valid UTF-8 is "%XX" (upper-case hex), and a '%' followed
 * by two upper-case hex digits is "%25".  Any text decodes; text this
 * spelling would not produce (say "%41") is foreign: check by encoding the
 * decoded key again.  0 or -ENOMEM.
 */
int kv_key_to_text(struct kv_buf *out, const char *key, size_t n);
int kv_key_from_text(struct kv_buf *out, const char *s, size_t n);
/* The longest prefix of p whose spelling every key starting with p shares
 * (a trailing unfinished UTF-8 sequence, '%' or "%H" is cut). */
size_t kv_key_text_prefix(const char *p, size_t n);

/* ---- base64 (libcrypto EVP) ---- */

/* A JSON string holding p[0..n) in base64, or NULL. */
json_t *kv_json_base64(const void *p, size_t n);
/* Decode a JSON base64 string (NULL or null: the empty value) into a
 * malloc'd buffer with a NUL after it.  0, -EIO (not base64), -ENOMEM. */
int kv_json_unbase64(const json_t *s, char **out, size_t *len);
/* The decoded size of a JSON base64 string, without decoding it. */
uint64_t kv_json_base64_size(const json_t *s);

#endif
