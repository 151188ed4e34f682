/*
 * kv.h - the common key-value backend interface of kvfs.
 *
 * A backend is one file in backends/ that fills a const struct kv_backend
 * and is listed once in backends/registry.c.  fs/ never calls a backend
 * directly: it calls the kv_*() functions at the bottom of this header
 * (backends/kv.c), which check arguments and limits, supply fallbacks for
 * optional operations, trace, and turn an unexpected return into -EIO.
 *
 * Conventions for every operation:
 *  - keys and values are byte strings with an explicit length; they may
 *    contain any byte, NUL included, and may be empty;
 *  - the return value is 0 on success or a negative errno value; the
 *    errno values each operation may return are listed with it, and a
 *    backend maps its own errors to these in one place (its own file);
 *  - a readable detail of a failure goes to kv_log(), never credentials;
 *  - every operation may be called from many threads at once on one store;
 *  - a remote backend bounds every call by its timeout and returns -EIO
 *    (or -ETIMEDOUT) when it expires; it never blocks forever.
 */
#ifndef KVFS_KV_H
#define KVFS_KV_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kv_backend;

/*
 * The generic part of an open store.  A backend's own struct starts with
 * this member, and the backend casts back with kv_store_cast().
 */
struct kv_store {
	const struct kv_backend *be;
	/* Printable location for logs and .health: no credentials. Owned by
	 * the dispatch layer (set after open, freed by kv_close). */
	char *endpoint;
	/* Unordered stores: their last walks (keycache.c).  Dispatch layer's. */
	struct kv_keycache *keycache;
};

/*
 * What a store can do, derived from what its backend implements (kv_caps),
 * so that callers ask "can you?" and the answer cannot disagree with the
 * code: a method that exists is a capability, never a second declaration.
 */
enum kv_caps {
	KV_CAP_ORDERED = 1 << 0,  /* scan(): a listing reads only the range it needs */
	KV_CAP_CAS     = 1 << 1,  /* cas() */
	KV_CAP_TXN     = 1 << 2,  /* apply() is atomic for any number of operations */
	KV_CAP_SYNC    = 1 << 3,  /* sync() makes earlier writes durable against power loss */
	KV_CAP_PERSIST = 1 << 4,  /* data outlives the process (false for memory:) */
};

struct kv_limits {
	size_t max_key;    /* longest key in bytes; 0 = no limit */
	size_t max_value;  /* largest value in bytes; 0 = no limit */
	size_t max_ops;    /* apply() is atomic up to this many operations; 0 = any
	                      number.  kv_apply splits longer lists into such chunks. */
};

/* One item produced by list(). */
struct kv_entry {
	const char *key;   /* full key, or a common prefix ending in the delimiter */
	size_t key_len;
	uint64_t size;     /* value size in bytes; 0 for a prefix */
	bool is_prefix;    /* true: a group of keys sharing key[0..key_len) */
};

/* Called once per item; valid only during the call. Nonzero stops the listing. */
typedef int kv_list_cb(void *ctx, const struct kv_entry *e);

struct kv_list_req {
	const char *prefix;  /* only keys starting with these bytes */
	size_t prefix_len;
	const char *start;   /* only items >= start (bytewise); NULL = from the prefix on */
	size_t start_len;
	char delim;          /* '\0': every key; otherwise keys with the delimiter after
	                        the prefix collapse into one prefix item ending in it */
	size_t limit;        /* at most this many items; 0 = a page (KV_PAGE) */
};

#define KV_PAGE 1000

/* One key found by scan() or keys(): valid only during the call.  Nonzero
 * stops the walk (a negative errno is returned by the walk). */
typedef int kv_key_cb(void *ctx, const char *key, size_t klen, uint64_t size);

enum kv_op_type { KV_OP_SET, KV_OP_DEL };

struct kv_op {
	enum kv_op_type type;
	const char *key;
	size_t key_len;
	const char *val;     /* KV_OP_SET only */
	size_t val_len;
};

/* Name/value facts a backend reports in .health (persistence settings and such). */
#define KV_HEALTH_MAX_FACTS 8
struct kv_health {
	char detail[256];    /* a short human-readable status line */
	size_t nfacts;
	struct { char name[32]; char value[96]; } facts[KV_HEALTH_MAX_FACTS];
};

struct kv_statfs {
	uint64_t total_bytes;  /* 0 = unknown */
	uint64_t free_bytes;
	uint64_t keys;         /* 0 = unknown */
};

/* Options from the command line ("-o name=value"): each one of the
 * backend's declared options or the dispatch layer's own (lazy,
 * list_timeout), read with kv_option_get; plus the generic timeout. */
struct kv_option { const char *name; const char *value; };
struct kv_open_args {
	const char *location;           /* the URL after "scheme:" (e.g. "/var/db" or "//host:port/x") */
	const char *url;                /* the whole URL as given */
	const struct kv_option *opts;
	size_t nopts;
	int timeout_ms;                 /* per network call; remote backends honour it */
};

/*
 * open: parse args->location and options, connect or open, and return a
 * new store in *out.  On failure write one line (no trailing newline, no
 * credentials) to err and return -EINVAL (bad URL or option), -ENOENT,
 * -EACCES, -EIO (cannot reach the store) or -ENOMEM.
 */
typedef int kv_open_fn(const struct kv_open_args *args, struct kv_store **out,
		       char *err, size_t errlen);

/* close: flush whatever the backend buffers and free the store. */
typedef void kv_close_fn(struct kv_store *s);

/*
 * get: read a value.  *val is malloc'd (plus one NUL byte not counted in
 * *len, for convenience) and owned by the caller.  version, if not NULL,
 * receives a nonzero number that changes whenever the value does (for cas).
 * Errors: -ENOENT, -EIO, -ENOMEM.
 */
typedef int kv_get_fn(struct kv_store *s, const char *key, size_t klen,
		      char **val, size_t *len, uint64_t *version);

/* stat (optional): the size of a value without reading it.  -ENOENT, -EIO. */
typedef int kv_stat_fn(struct kv_store *s, const char *key, size_t klen, uint64_t *size);

/*
 * set: create or replace a value.  When it returns 0 the value is committed:
 * readers see it and it survives a crash of this process (not necessarily
 * power loss: see sync).  A refused write leaves the old value intact.
 * Errors: -EFBIG (value over the limit), -ENAMETOOLONG (key over the limit),
 * -EINVAL (a key this store cannot hold at all, such as the empty key in lmdb),
 * -ENOSPC, -EROFS, -EACCES, -EIO.
 */
typedef int kv_set_fn(struct kv_store *s, const char *key, size_t klen,
		      const char *val, size_t vlen);

/* del: remove a key.  -ENOENT if it was not there, -EIO. */
typedef int kv_del_fn(struct kv_store *s, const char *key, size_t klen);

/*
 * scan (ordered stores): call cb for the keys k with from <= k < to, in
 * byte order (kv_key_cmp), with their value sizes; at most max of them
 * (fewer only when the range has no more).  to == NULL: no upper bound.
 * The dispatch layer builds every listing on it (kv_list): grouping at a
 * delimiter, skipping a group's subtree, start, limit and paging.
 * Errors: -EIO, -ENOMEM, or what cb returned if negative.
 */
typedef int kv_scan_fn(struct kv_store *s, const char *from, size_t flen,
		       const char *to, size_t tlen, size_t max, kv_key_cb *cb, void *ctx);

/*
 * keys (unordered stores, instead of scan): call cb for every key that
 * starts with prefix, in any order, with its value size; a key may come
 * more than once (Redis's SCAN does that), and keys outside the prefix may
 * come too (memcached's metadump has no prefix).  The dispatch layer
 * passes over those, sorts the rest, keeps one of each, and serves the
 * listing as from scan.
 * Errors: -EIO, -ENOMEM, or what cb returned if negative.
 */
typedef int kv_keys_fn(struct kv_store *s, const char *prefix, size_t plen,
		       kv_key_cb *cb, void *ctx);

/*
 * cas (optional; KV_CAP_CAS): write val only if the key's version is still
 * `version` (0: only if the key does not exist).  -ECANCELED if it changed,
 * plus the errors of set.
 */
typedef int kv_cas_fn(struct kv_store *s, const char *key, size_t klen, uint64_t version,
		      const char *val, size_t vlen);

/*
 * apply (optional): perform several sets and deletes atomically, all of
 * them or none (up to limits.max_ops of them when that is set).  A backend
 * that cannot do that leaves apply NULL, and kv_apply runs the operations
 * one by one.  A delete of a missing key is not an error here.
 * Errors: those of set and del.
 */
typedef int kv_apply_fn(struct kv_store *s, const struct kv_op *ops, size_t n);

/* sync (optional; KV_CAP_SYNC): make every committed write durable. -EIO. */
typedef int kv_sync_fn(struct kv_store *s);

/*
 * health: one real round trip to the store that writes nothing.  Fill
 * h->detail and any facts.  0 if the store answers, else -EIO/-ETIMEDOUT.
 */
typedef int kv_health_fn(struct kv_store *s, struct kv_health *h);

/* statfs (optional): space figures; unknown fields stay 0. */
typedef int kv_statfs_fn(struct kv_store *s, struct kv_statfs *st);

struct kv_backend {
	const char *scheme;           /* URL scheme without ':' ("lmdb") */
	const char *const *aliases;   /* more schemes handled by this backend, NULL-terminated, or NULL */
	const char *summary;          /* one line for `kvfs --backends` */
	const char *usage;            /* URL form, e.g. "lmdb:/path/to/dir" */
	const char *const *options;   /* "-o" option names it accepts, NULL-terminated, or NULL */
	bool persistent;              /* data outlives the process */
	struct kv_limits limits;      /* defaults; a store may narrow them (store_limits) */

	kv_open_fn *open;
	kv_close_fn *close;
	kv_get_fn *get;
	kv_set_fn *set;
	kv_del_fn *del;
	kv_health_fn *health;
	/* exactly one of these two */
	kv_scan_fn *scan;
	kv_keys_fn *keys;
	/* optional: NULL means the dispatch layer falls back or says -ENOTSUP */
	kv_stat_fn *stat;
	kv_cas_fn *cas;
	kv_apply_fn *apply;
	kv_sync_fn *sync;
	kv_statfs_fn *statfs;
	/* optional: limits learned at open time (memcached's item_size_max) */
	void (*store_limits)(struct kv_store *s, struct kv_limits *out);
};

/* Downcast helper: backends define their struct with `struct kv_store base;` first. */
#define kv_store_cast(type, s) ((type *)(void *)(s))

/* ---- The dispatch layer (backends/kv.c): the only API fs/ and mount/ use ---- */

/* Registry (backends/registry.c). */
extern const struct kv_backend *const kv_backends[];
const struct kv_backend *kv_backend_find(const char *scheme, size_t len);

/* Open the store named by url ("scheme:rest").  One-line error in err. */
int kv_open(const char *url, const struct kv_option *opts, size_t nopts, int timeout_ms,
	    struct kv_store **out, char *err, size_t errlen);
void kv_close(struct kv_store *s);

struct kv_limits kv_limits(struct kv_store *s);
unsigned kv_caps(struct kv_store *s);
const char *kv_name(struct kv_store *s);      /* the backend's scheme */
const char *kv_endpoint(struct kv_store *s);  /* printable, no credentials */

int kv_get(struct kv_store *s, const char *key, size_t klen, char **val, size_t *len,
	   uint64_t *version);
int kv_stat(struct kv_store *s, const char *key, size_t klen, uint64_t *size);
int kv_set(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen);
int kv_del(struct kv_store *s, const char *key, size_t klen);
/*
 * list: up to req->limit items under req->prefix in byte order (keys, and
 * with a delimiter the groups), to cb; *more is true when a call starting
 * after the last item may find more.  Errors: -EIO, -ENOMEM, or what cb
 * returned if negative (a positive return just stops the listing).
 */
int kv_list(struct kv_store *s, const struct kv_list_req *req, kv_list_cb *cb, void *ctx,
	    bool *more);
/* Every item under prefix: one walk, however many store calls it takes. */
int kv_list_all(struct kv_store *s, const char *prefix, size_t plen, char delim,
		kv_list_cb *cb, void *ctx);
int kv_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
	   const char *val, size_t vlen);
/* Atomic with KV_CAP_TXN, atomic per chunk of limits.max_ops when that is
 * set, otherwise in order, stopping at the first error. */
int kv_apply(struct kv_store *s, const struct kv_op *ops, size_t n);
int kv_sync(struct kv_store *s);
int kv_health(struct kv_store *s, struct kv_health *h);
int kv_statfs(struct kv_store *s, struct kv_statfs *st);

/*
 * Logging (backends/log.c), the one place every log line goes through:
 * stderr until kv_log_detach, syslog after kv_log_detach(true), and the
 * log file from kv_log_open_file on.  Lines above the level set (default
 * KV_LOG_WARN) are dropped.  What looks like a credential (a URL's
 * password, password=, token=, ...) is replaced by *** in every line.
 */
enum kv_log_level { KV_LOG_ERR, KV_LOG_WARN, KV_LOG_INFO, KV_LOG_DEBUG };
void kv_log(enum kv_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A failure the user must see: "kvfs: message" on stderr whatever the
 * level, and an error line in the log file and syslog if they are open. */
void kv_log_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void kv_log_set_level(enum kv_log_level lvl);
/* Would a line of this level be written? */
bool kv_log_enabled(enum kv_log_level lvl);
/* "error", "warning", "info" or "debug": 0, else -EINVAL. */
int kv_log_parse_level(const char *s, enum kv_log_level *out);
/* Append every line to the file at path too (created mode 0640); 0, or a
 * negative errno with one line in err. */
int kv_log_open_file(const char *path, char *err, size_t errlen);
bool kv_log_has_file(void);
/* Daemon mode, once stderr is gone: no more stderr; syslog if syslog_too. */
void kv_log_detach(bool syslog_too);
/* The dispatch layer's probe: keep the last error or warning in buf
 * instead of logging it (this thread only); kv_log_capture(NULL, 0) ends it. */
void kv_log_capture(char *buf, size_t len);
/* Printable, bounded rendering of a binary key for logs (static per-thread buffer). */
const char *kv_printable(const char *key, size_t klen);

/* Helpers for backends. */
/* Byte order of keys (memcmp, then the shorter first): the order of list(). */
int kv_key_cmp(const char *a, size_t alen, const char *b, size_t blen);
/* Turn p[0..*len) into the smallest key above every key that starts with
 * it (drop trailing 0xff bytes, add one to the last); false if none is. */
bool kv_key_successor(char *p, size_t *len);
/* Add one fact to a health report (dropped when the report is full). */
void kv_health_fact(struct kv_health *h, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
const char *kv_option_get(const struct kv_open_args *a, const char *name);
int kv_parse_size(const char *s, uint64_t *out);       /* "64M", "1G", "4096" */
int kv_parse_ms(const char *s, int *out);              /* "500ms", "5s", "2" (seconds) */
/*
 * The backend option `name` as a size (kv_parse_size) or a time in ms
 * (kv_parse_ms) within [min, max]: 0 with *out set, 0 with *out untouched
 * when the option is absent, or -EINVAL with one line in err.
 */
int kv_option_size(const struct kv_open_args *a, const char *name, uint64_t min, uint64_t max,
		   uint64_t *out, char *err, size_t errlen);
int kv_option_ms(const struct kv_open_args *a, const char *name, int min, int max, int *out,
		 char *err, size_t errlen);

#endif
