/*
 * toolkit.h - machinery every backend shares: a byte buffer, the clock
 * and deadlines with retry backoff, reading a secret from a file, checking
 * a file the store needs (TLS certificates), one bounded connection pool,
 * a ticker thread, group commit and once-only setup.  Backends include it
 * after kv.h; fs/ never uses it.
 */
#ifndef KVFS_TOOLKIT_H
#define KVFS_TOOLKIT_H

#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- A growable byte buffer; always NUL-terminated after its len bytes ---- */

struct kv_buf {
	char *p;
	size_t len, cap;
};

/* Make room for n more bytes.  0 or -ENOMEM. */
int kv_buf_reserve(struct kv_buf *b, size_t n);
int kv_buf_add(struct kv_buf *b, const void *p, size_t n);
/* Replace the contents. */
int kv_buf_set(struct kv_buf *b, const void *p, size_t n);
int kv_buf_printf(struct kv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hand the bytes over (malloc'd, NUL-terminated, even when empty; NULL if out
 * of memory) and their count in *len; the buffer is empty after. */
char *kv_buf_take(struct kv_buf *b, size_t *len);
void kv_buf_free(struct kv_buf *b);
/* A copy of p[0..n) with a NUL byte after it, as get() hands a value out
 * (malloc'd; NULL if out of memory). */
char *kv_memdup(const void *p, size_t n);

/* ---- Time: CLOCK_MONOTONIC milliseconds, deadlines and backoff ---- */

int64_t kv_now_ms(void);
/* The deadline timeout_ms from now. */
int64_t kv_deadline(int timeout_ms);
/* Milliseconds left until deadline, at least 0. */
int kv_ms_left(int64_t deadline);
void kv_sleep_ms(int ms);
/*
 * Wait before retry number `attempt` (0, 1, ...) of something that failed
 * for a passing reason: 50 ms doubling up to 1 s, with jitter, but never
 * past the deadline.  false (without waiting) when no time is left.
 */
bool kv_backoff(int attempt, int64_t deadline);
/* A random nonzero 64-bit number (for versions and jitter). */
uint64_t kv_random64(void);

/*
 * For stores that keep no version per key: a version made from the value's
 * bytes (equal content, equal version: all cas needs), never 0.
 */
uint64_t kv_value_version(const void *data, size_t len);

/* ---- Files ---- */

/*
 * The secret in the file at path: its first line, without the newline.
 * A file that its group or others may read is refused, as ssh does with
 * keys.  malloc'd, or NULL with one line in err naming `what`.
 */
char *kv_read_secret(const char *path, const char *what, char *err, size_t errlen);
/* 0 if path names a readable regular file; else one line in err naming
 * `what` (e.g. "cacert") and -ENOENT or -EACCES. */
int kv_check_file(const char *path, const char *what, char *err, size_t errlen);

/* ---- One bounded pool of connections, for every backend that keeps them ---- */

struct kv_pool_ops {
	/* Open a new connection before deadline: 0, or -EIO (worth a retry:
	 * refused, reset, a server starting up), -EACCES or -EINVAL (not). */
	int (*connect)(void *ctx, int64_t deadline, void **conn);
	/* Is an idle connection still good?  Cheap, no round trip if possible;
	 * NULL: always (a client library that reconnects by itself). */
	bool (*usable)(void *ctx, void *conn);
	void (*close)(void *ctx, void *conn);
};

#define KV_POOL_MAX 16

/*
 * At most `max` connections, idle ones reused last-in first-out.  The lock
 * guards only the counts and the idle list: connecting, checking and
 * closing happen outside it, so one slow server never blocks the others'
 * threads from returning connections.
 */
struct kv_pool {
	const struct kv_pool_ops *ops;
	void *ctx;
	const char *name;        /* the backend's scheme, for log lines */
	size_t max;
	pthread_mutex_t lock;
	pthread_cond_t freed;
	void *idle[KV_POOL_MAX];
	size_t nidle, nopen;     /* nopen counts idle ones and those in use */
};

void kv_pool_init(struct kv_pool *p, const char *name, const struct kv_pool_ops *ops,
		  void *ctx, size_t max);
void kv_pool_destroy(struct kv_pool *p);
/*
 * A connection for one call: an idle one still usable, else a new one,
 * else the next one returned, all before deadline.  A new connection that
 * fails for a passing reason (-EIO) is retried with backoff until the
 * deadline, so a restarting server costs a delay, not an error.  *reused
 * says the connection was idle before (it may have gone stale since).
 * 0, -EIO (nothing before the deadline), -EACCES or -EINVAL.
 */
int kv_pool_get(struct kv_pool *p, int64_t deadline, void **conn, bool *reused);
/* Give it back; a broken one is closed instead (conn NULL and broken: give
 * up the place of one that never opened). */
void kv_pool_put(struct kv_pool *p, void *conn, bool broken);

/* ---- A thread that calls a function every interval until stopped ---- */

struct kv_ticker {
	void (*tick)(void *ctx);
	void *ctx;
	int interval_ms;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool running, stopping;
};

/* Start calling tick(ctx) every interval_ms.  0, or -ENOMEM. */
int kv_ticker_start(struct kv_ticker *t, void (*tick)(void *ctx), void *ctx, int interval_ms);
/* Stop and join it (a tick under way finishes first); harmless if not started. */
void kv_ticker_stop(struct kv_ticker *t);

/* ---- Group commit: writers queue up and one of them commits for all ---- */

/*
 * One caller's write, waiting in a queue; embed it first in the backend's
 * own struct, which lives on the caller's stack until kv_queue_submit
 * returns.
 */
struct kv_queued {
	struct kv_queued *next;
	size_t bytes;        /* value bytes, to bound a batch */
	bool done;           /* set by the leader before it posts wake */
	sem_t wake;          /* posted once: done, or "you lead now" */
};

/*
 * commit() gets a batch (linked by next, NULL-terminated) in queue order
 * and leaves each write's own result in the backend's struct.  A writer
 * that finds no leader becomes one: it commits batches until its own write
 * is done, then hands the lead to the writer at the head of the queue.
 * Each waiter is woken exactly once, by its own semaphore, so a commit
 * does not stampede every waiting thread onto one lock.
 */
struct kv_queue {
	void (*commit)(void *ctx, struct kv_queued *batch);
	void *ctx;
	size_t max_items, max_bytes;   /* a batch's bounds; 0 items acts as 1, 0 bytes as none */
	pthread_mutex_t lock;
	struct kv_queued *head, **tail;
	bool leading;                  /* some writer leads; it hands over before leaving */
};

void kv_queue_init(struct kv_queue *q, void (*commit)(void *ctx, struct kv_queued *batch),
		   void *ctx, size_t max_items, size_t max_bytes);
void kv_queue_destroy(struct kv_queue *q);
/* Queue w and return once it is committed (by this thread or another). */
void kv_queue_submit(struct kv_queue *q, struct kv_queued *w);

/*
 * One call on conn: 0 or a negative errno.  -EAGAIN says it failed for a
 * passing reason (the connection was lost, the server is shutting down or
 * starting up, a deadlock) and is worth another try; *broken (false on
 * entry) says conn must not be reused.
 */
typedef int kv_pool_fn(void *conn, void *arg, bool *broken);
/*
 * Run fn on a connection from the pool, again with backoff while it says
 * -EAGAIN, until deadline.  A call that is not idempotent (a
 * compare-and-swap) is not repeated once it broke its connection, since
 * it may have taken effect.  Returns fn's result, or -EACCES (the store
 * refused the credentials), -ENOMEM, or -EIO (the store could not be
 * reached or kept failing): then one log line says why (kv_why), and
 * that the timeout option bounds the wait.
 */
int kv_pool_run(struct kv_pool *p, int64_t deadline, bool idempotent, kv_pool_fn *fn, void *arg);
/* Why the calling thread's last call failed, for the log and .health:
 * set by a backend where it learns it (a refused connection, a lost one),
 * cleared by kv_pool_run when a call starts.  A thread-local buffer. */
void kv_why_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *kv_why(void);
/* Connections in use now (a .health fact). */
size_t kv_pool_busy(struct kv_pool *p);
/* Is an idle connection's socket still good?  A server that closed it (a
 * restart, an idle timeout) made it readable; no round trip. */
bool kv_socket_idle(int fd);

/* ---- Once per store: setup that needs the store (a table), retried until it succeeds ---- */

struct kv_once {
	pthread_mutex_t lock;
	bool done;               /* atomic */
};

void kv_once_init(struct kv_once *o);
void kv_once_destroy(struct kv_once *o);
/* fn(arg) unless it has succeeded before; callers wait for each other.
 * 0 or fn's error. */
int kv_once(struct kv_once *o, int (*fn)(void *arg), void *arg);

/* A plain identifier (a table name): a letter or '_', then letters,
 * digits and '_', at most max bytes, so it can be quoted without escapes. */
bool kv_is_identifier(const char *name, size_t max);

#endif
