/*
 * http.h - what the HTTP stores (Consul, etcd, the next ones) share: one
 * pool of libcurl easy handles per store over the toolkit's kv_pool, its
 * endpoints with failover between them, a request bounded by the timeout
 * and retried on passing failures, headers, TLS files checked at open,
 * settings from the URL's query, and base64 for values that travel in
 * JSON.  JSON itself is built and read with jansson only.  Compiled only
 * with a backend that needs it (meson.build).
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

#define KV_HTTP_MAX_ENDPOINTS 16

struct kv_http {
	struct kv_pool pool;     /* CURL * handles; each keeps its own connections */
	const char *name;        /* the backend's scheme, for log lines */
	int timeout_ms;          /* -o timeout: waiting for the store, per call */
	char *tls[4];            /* cacert, capath, cert, key: NULL if not given */
	struct curl_slist *headers;    /* sent with every request; wiped when freed */
	char *eps[KV_HTTP_MAX_ENDPOINTS];   /* "http://127.0.0.1:2379" */
	size_t neps;
	unsigned cur;                       /* atomic: the endpoint to try first */
	int64_t down_until[KV_HTTP_MAX_ENDPOINTS];  /* atomic: monotonic ms */
	struct kv_option query[8];     /* settings from the URL's ?query */
	size_t nquery;
	char *query_text;
	int64_t last_warn;       /* atomic: transport trouble is logged once a second at most */
};

/*
 * Set up h for one store: curl_global_init (once per process), the pool,
 * and the header "Expect:" (a PUT body goes at once, not after 1 s).
 * 0, or -EIO/-ENOMEM with one line in err.  kv_http_destroy frees what
 * this and the calls below kept, also after a failure.
 */
int kv_http_init(struct kv_http *h, const char *name, int timeout_ms, char *err, size_t errlen);
void kv_http_destroy(struct kv_http *h);
/* A header line for every request ("Name: value"); it may hold a secret.
 * 0 or -ENOMEM. */
int kv_http_header(struct kv_http *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * The TLS files: the settings (kv_http_setting) cacert, capath, cert and
 * key, else the variables env[0..3]; a NULL env[i] means the store has no
 * such option.  The files are checked with kv_check_file so that a missing
 * one fails the open.  0, or -ENOENT/-EACCES/-ENOMEM with one line in err.
 */
int kv_http_tls(struct kv_http *h, const struct kv_open_args *a, const char *const env[4],
		char *err, size_t errlen);
/* Add the endpoints of a list "host[:port],http(s)://host[:port],..."
 * (kv_http_base_url).  0, -EINVAL with one line in err, or -ENOMEM. */
int kv_http_add_endpoints(struct kv_http *h, const char *list, size_t n, bool tls,
			  unsigned default_port, char *err, size_t errlen);

struct kv_http_req {
	const char *method;            /* "GET", "PUT", "POST", "DELETE" */
	const char *path;              /* after the endpoint: "/v1/kv/x?raw" */
	const char *body;              /* NULL: none */
	size_t blen;
	const char *auth;              /* one more header line (a token), or NULL */
	bool bulk;                     /* the answer may be large (a value): bound the wait
	                                  for each byte, not the transfer; a body over
	                                  64 KiB makes a request bulk by itself */
	bool idempotent;               /* a request that may have reached the store may
	                                  be sent again */
	bool quiet;                    /* the caller logs failures itself */
	/* An answer that means "not now" (no leader, an election): retried.
	 * NULL: 503 only. */
	bool (*transient)(long status, const struct kv_buf *body);
};

struct kv_http_resp {
	long status;                   /* 0 when no answer came */
	struct kv_buf body;
	bool ambiguous;                /* an attempt before this answer may have reached
	                                  the store (and been applied) */
	const char *endpoint;          /* the one tried last: that answered, when 0 */
	char why[160];                 /* transport failure, for logs */
};

/*
 * One request, to the endpoint that last answered.  A transport failure
 * (refused, reset, timed out: a dead or SIGSTOPped member) marks that
 * endpoint down for a while and the request moves on to the next one, as
 * does a transient answer after a backoff.  When every endpoint has
 * failed for a passing reason, the request starts over with kv_backoff
 * while one timeout lasts (a restarting store), and never lasts longer
 * than the timeout times the number of endpoints; while every endpoint is
 * marked down only one is tried, so a dead store costs one timeout.
 * 0: an answer came (any status, in r; free r->body), -EIO: none did (the
 * reason in r->why, logged at most once a second), -ENOMEM.
 */
int kv_http_request(struct kv_http *h, const struct kv_http_req *rq, struct kv_http_resp *r);
/* An answer's body as JSON (any value), or NULL. */
json_t *kv_http_json(const struct kv_buf *body);
/*
 * The same with the JSON req as the body (wiped after: it may hold a
 * password; NULL, when building it failed: -ENOMEM): -EFBIG without
 * sending when it is over max bytes (0: any).  *answer is kv_http_json
 * of the answer.
 */
int kv_http_json_request(struct kv_http *h, struct kv_http_req rq, const json_t *req, size_t max,
			 struct kv_http_resp *r, json_t **answer);

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
 * (NULL-terminated): at most max (up to 8) of them into h->query, their values
 * %-decoded.  0, or -EINVAL with one line in err naming the scheme, or
 * -ENOMEM.
 */
int kv_http_query(struct kv_http *h, const char *q, const char *const *allowed, size_t max,
		  char *err, size_t errlen);
/* A setting: the -o option, else the URL query's, else the variable env. */
const char *kv_http_setting(const struct kv_http *h, const struct kv_open_args *a,
			    const char *name, const char *env);
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
