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

/* "scheme://host:port" of a parsed URL (default_port if it names none), or
 * NULL when it is not http(s) with a host.  malloc'd. */
char *kv_http_origin(CURLU *u, unsigned default_port);
/* "scheme://host:port" of a URL given as "[scheme://]host[:port]" (a
 * default scheme and port if none), parsed with curl_url().  malloc'd, or
 * NULL with one line in err. */
char *kv_http_base_url(const char *name, const char *hostport, bool tls, unsigned default_port,
		       char *err, size_t errlen);

/* ---- base64 (libcrypto EVP) ---- */

/* A JSON string holding p[0..n) in base64, or NULL. */
json_t *kv_json_base64(const void *p, size_t n);
/* Decode a JSON base64 string (NULL or null: the empty value) into a
 * malloc'd buffer with a NUL after it.  0, -EIO (not base64), -ENOMEM. */
int kv_json_unbase64(const json_t *s, char **out, size_t *len);
/* The decoded size of a JSON base64 string, without decoding it. */
uint64_t kv_json_base64_size(const json_t *s);

#endif
