/*
 * toolkit.c - the machinery backends share (toolkit.h).
 */
#include "kv.h"
#include "toolkit.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- buffer ---- */

int kv_buf_reserve(struct kv_buf *b, size_t n)
{
	size_t cap;
	char *p;

	if (b->len + n + 1 <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 64;
	while (cap < b->len + n + 1)
		cap *= 2;
	p = realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

int kv_buf_add(struct kv_buf *b, const void *p, size_t n)
{
	if (kv_buf_reserve(b, n))
		return -ENOMEM;
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

int kv_buf_set(struct kv_buf *b, const void *p, size_t n)
{
	b->len = 0;
	return kv_buf_add(b, p, n);
}

int kv_buf_printf(struct kv_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || kv_buf_reserve(b, (size_t)n))
		return -ENOMEM;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

char *kv_buf_take(struct kv_buf *b, size_t *len)
{
	char *p = kv_buf_add(b, NULL, 0) ? NULL : b->p;  /* an empty one has no bytes yet */

	*len = b->len;
	*b = (struct kv_buf){0};
	return p;
}

void kv_buf_free(struct kv_buf *b)
{
	free(b->p);
	*b = (struct kv_buf){0};
}

char *kv_memdup(const void *p, size_t n)
{
	char *d = malloc(n + 1);

	if (d) {
		memcpy(d, n ? p : "", n);  /* an empty value may come as NULL */
		d[n] = '\0';
	}
	return d;
}

/* ---- time ---- */

int64_t kv_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t kv_deadline(int timeout_ms)
{
	return kv_now_ms() + timeout_ms;
}

int kv_ms_left(int64_t deadline)
{
	int64_t left = deadline - kv_now_ms();

	return left <= 0 ? 0 : left > INT32_MAX ? INT32_MAX : (int)left;
}

void kv_sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

	while (ms > 0 && nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

/* Wait on a condition variable made by cond_init, until deadline at most. */
static int timedwait(pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline)
{
	struct timespec ts = {.tv_sec = deadline / 1000,
			      .tv_nsec = (long)(deadline % 1000) * 1000000L};

	return pthread_cond_timedwait(c, m, &ts);
}

static void cond_init(pthread_cond_t *c)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(c, &ca);
	pthread_condattr_destroy(&ca);
}

uint64_t kv_random64(void)
{
	static __thread uint64_t x;

	if (!x && (getrandom(&x, sizeof x, 0) != sizeof x || !x))
		x = (uint64_t)kv_now_ms() * 0x9e3779b97f4a7c15u | 1;
	x ^= x << 13;  /* xorshift64: a nonzero state stays nonzero */
	x ^= x >> 7;
	x ^= x << 17;
	return x;
}

bool kv_backoff(int attempt, int64_t deadline)
{
	int left = kv_ms_left(deadline), ms = attempt < 5 ? 50 << attempt : 1000;

	if (left <= 0)
		return false;
	ms = ms / 2 + (int)(kv_random64() % (uint64_t)(ms / 2 + 1));
	kv_sleep_ms(ms < left ? ms : left);
	return true;
}

/* ---- versions of stores that keep none ---- */

/* Each step is a bijection, so a change of one 8-byte word always changes
 * the hash; a chance collision costs a wrong cas with odds 2^-64. */
uint64_t kv_value_version(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t h = 0x9e3779b97f4a7c15u ^ (len * 0xff51afd7ed558ccdu);
	uint64_t w;

	for (size_t n; len; p += n, len -= n) {
		n = len < 8 ? len : 8;
		w = 0;  /* a last short word is zero-padded */
		memcpy(&w, p, n);
		h = (h ^ w) * 0xc4ceb9fe1a85ec53u;
		h ^= h >> 32;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdu;
	h ^= h >> 33;
	return h ? h : 1;  /* 0 means "no such key" to cas */
}

/* ---- files ---- */

/* The regular file at path, open, or -ENOENT or -EACCES with one line in err. */
static int open_file(const char *path, const char *what, struct stat *st, char *err,
		     size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), e = errno;

	if (fd < 0) {
		snprintf(err, errlen, "cannot read %s %s: %s", what, path, strerror(e));
		return e == ENOENT ? -ENOENT : -EACCES;
	}
	if (fstat(fd, st) || !S_ISREG(st->st_mode)) {
		snprintf(err, errlen, "%s %s is not a regular file", what, path);
		close(fd);
		return -EACCES;
	}
	return fd;
}

char *kv_read_secret(const char *path, const char *what, char *err, size_t errlen)
{
	struct stat st;
	char line[4096], *s = NULL;
	FILE *f = NULL;
	int fd = open_file(path, what, &st, err, errlen);

	if (fd < 0)
		return NULL;
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		snprintf(err, errlen, "%s %s may be read by others (mode %04o): chmod 600 it",
			 what, path, (unsigned)(st.st_mode & 07777));
	else if (!(f = fdopen(fd, "r")))
		snprintf(err, errlen, "cannot read %s %s: %s", what, path, strerror(errno));
	if (!f) {
		close(fd);
		return NULL;
	}
	if (!fgets(line, sizeof line, f))
		line[0] = '\0';
	fclose(f);
	line[strcspn(line, "\r\n")] = '\0';
	if (!line[0])
		snprintf(err, errlen, "%s %s is empty", what, path);
	else if (!(s = strdup(line)))
		snprintf(err, errlen, "out of memory");
	explicit_bzero(line, sizeof line);
	return s;
}

int kv_check_file(const char *path, const char *what, char *err, size_t errlen)
{
	struct stat st;
	int fd = open_file(path, what, &st, err, errlen);

	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}

/* ---- pool ---- */

void kv_pool_init(struct kv_pool *p, const char *name, const struct kv_pool_ops *ops,
		  void *ctx, size_t max)
{
	*p = (struct kv_pool){.ops = ops, .ctx = ctx, .name = name,
			      .max = max && max <= KV_POOL_MAX ? max : KV_POOL_MAX};
	pthread_mutex_init(&p->lock, NULL);
	cond_init(&p->freed);
}

void kv_pool_destroy(struct kv_pool *p)
{
	while (p->nidle)
		p->ops->close(p->ctx, p->idle[--p->nidle]);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->freed);
}

int kv_pool_get(struct kv_pool *p, int64_t deadline, void **conn, bool *reused)
{
	int rc;

	pthread_mutex_lock(&p->lock);
	while (p->nidle || p->nopen >= p->max) {
		if (p->nidle) {
			*conn = p->idle[--p->nidle];
			pthread_mutex_unlock(&p->lock);
			if (!p->ops->usable || p->ops->usable(p->ctx, *conn)) {
				*reused = true;
				return 0;
			}
			p->ops->close(p->ctx, *conn);
			pthread_mutex_lock(&p->lock);
			p->nopen--;
		} else if (!kv_ms_left(deadline) ||
			   timedwait(&p->freed, &p->lock, deadline) == ETIMEDOUT) {
			pthread_mutex_unlock(&p->lock);
			kv_log(KV_LOG_ERR, "%s: all %zu connections stayed busy for the whole "
			       "timeout (-o timeout raises it)", p->name, p->max);
			return -EIO;
		}
	}
	p->nopen++;
	pthread_mutex_unlock(&p->lock);
	*reused = false;
	for (int attempt = 0; (rc = p->ops->connect(p->ctx, deadline, conn)) == -EIO &&
	     kv_backoff(attempt, deadline) && kv_ms_left(deadline); attempt++)
		;
	if (rc)
		kv_pool_put(p, NULL, true);  /* give up the place taken for it */
	return rc;
}

void kv_pool_put(struct kv_pool *p, void *conn, bool broken)
{
	if (broken && conn)
		p->ops->close(p->ctx, conn);
	pthread_mutex_lock(&p->lock);
	if (broken)
		p->nopen--;
	else
		p->idle[p->nidle++] = conn;
	pthread_cond_signal(&p->freed);
	pthread_mutex_unlock(&p->lock);
}

/* ---- group commit ---- */

void kv_queue_init(struct kv_queue *q, void (*commit)(void *ctx, struct kv_queued *batch),
		   void *ctx, size_t max_items, size_t max_bytes)
{
	*q = (struct kv_queue){.commit = commit, .ctx = ctx, .max_items = max_items,
			       .max_bytes = max_bytes, .tail = &q->head};
	pthread_mutex_init(&q->lock, NULL);
}

void kv_queue_destroy(struct kv_queue *q)
{
	pthread_mutex_destroy(&q->lock);
}

void kv_queue_submit(struct kv_queue *q, struct kv_queued *w)
{
	struct kv_queued *batch, *last, *next, *heir;
	size_t n, bytes;
	bool lead;

	w->next = NULL;
	w->done = false;
	sem_init(&w->wake, 0, 0);
	pthread_mutex_lock(&q->lock);
	*q->tail = w;
	q->tail = &w->next;
	lead = !q->leading;
	q->leading = true;
	pthread_mutex_unlock(&q->lock);
	if (!lead) {
		while (sem_wait(&w->wake) != 0)
			;  /* EINTR */
		lead = !w->done;
	}
	while (!w->done) {
		pthread_mutex_lock(&q->lock);
		batch = last = q->head;
		bytes = last->bytes;
		for (n = 1; n < q->max_items && last->next; n++) {
			bytes += last->next->bytes;
			if (q->max_bytes && bytes > q->max_bytes)
				break;
			last = last->next;
		}
		if (!(q->head = last->next))
			q->tail = &q->head;
		last->next = NULL;
		pthread_mutex_unlock(&q->lock);

		q->commit(q->ctx, batch);

		for (; batch; batch = next) {
			next = batch->next;  /* its owner returns once woken */
			batch->done = true;
			if (batch != w)
				sem_post(&batch->wake);
		}
	}
	if (lead) {
		pthread_mutex_lock(&q->lock);
		if (!(heir = q->head))
			q->leading = false;
		pthread_mutex_unlock(&q->lock);
		if (heir)
			sem_post(&heir->wake);  /* not done: it leads next */
	}
	sem_destroy(&w->wake);
}

/* ---- ticker ---- */

static void *ticker_main(void *arg)
{
	struct kv_ticker *t = arg;

	pthread_mutex_lock(&t->lock);
	for (;;) {
		int64_t due = kv_deadline(t->interval_ms);

		while (!t->stopping && timedwait(&t->cond, &t->lock, due) != ETIMEDOUT)
			;
		if (t->stopping)
			break;
		pthread_mutex_unlock(&t->lock);
		t->tick(t->ctx);
		pthread_mutex_lock(&t->lock);
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

int kv_ticker_start(struct kv_ticker *t, void (*tick)(void *ctx), void *ctx, int interval_ms)
{
	*t = (struct kv_ticker){.tick = tick, .ctx = ctx, .interval_ms = interval_ms};
	pthread_mutex_init(&t->lock, NULL);
	cond_init(&t->cond);
	if (pthread_create(&t->thread, NULL, ticker_main, t) != 0) {
		pthread_cond_destroy(&t->cond);
		pthread_mutex_destroy(&t->lock);
		return -ENOMEM;
	}
	t->running = true;
	return 0;
}

void kv_ticker_stop(struct kv_ticker *t)
{
	if (!t->running)
		return;
	pthread_mutex_lock(&t->lock);
	t->stopping = true;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	pthread_join(t->thread, NULL);
	pthread_cond_destroy(&t->cond);
	pthread_mutex_destroy(&t->lock);
	t->running = false;
}

/* ---- calls through the pool ---- */

static __thread char why[256];

void kv_why_set(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
}

const char *kv_why(void)
{
	return why;
}

int kv_pool_run(struct kv_pool *p, int64_t deadline, bool idempotent, kv_pool_fn *fn, void *arg)
{
	bool reused, broken;
	void *c;
	int rc;

	why[0] = '\0';
	for (int attempt = 0; !(rc = kv_pool_get(p, deadline, &c, &reused)); attempt++) {
		broken = false;
		rc = fn(c, arg, &broken);
		kv_pool_put(p, c, broken);
		if (rc != -EAGAIN)
			return rc;
		if (broken && !idempotent) {
			kv_log(KV_LOG_ERR, "%s: %s, during a call that may have taken effect: "
			       "not repeating it", p->name, why[0] ? why : "the connection failed");
			return -EIO;
		}
		if (!kv_backoff(attempt, deadline) || !kv_ms_left(deadline))
			break;
		kv_log(KV_LOG_DEBUG, "%s: %s: trying again", p->name, why);
	}
	if (rc == -EACCES)
		kv_log(KV_LOG_ERR, "%s: the store refused the credentials: %s", p->name, why);
	else if (rc != -ENOMEM && why[0])  /* only -EIO and -EAGAIN were tried again */
		kv_log(KV_LOG_ERR, "%s: %s%s", p->name, why,
		       (rc != -EIO && rc != -EAGAIN) || strstr(why, "-o timeout") ? ""
		       : " (tried again until the timeout: -o timeout raises it)");
	return rc == -EACCES || rc == -ENOMEM ? rc : -EIO;
}

size_t kv_pool_busy(struct kv_pool *p)
{
	size_t n;

	pthread_mutex_lock(&p->lock);
	n = p->nopen - p->nidle;
	pthread_mutex_unlock(&p->lock);
	return n;
}

bool kv_socket_idle(int fd)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	return fd >= 0 && poll(&pfd, 1, 0) == 0;
}

/* ---- once ---- */

void kv_once_init(struct kv_once *o)
{
	pthread_mutex_init(&o->lock, NULL);
	o->done = false;
}

void kv_once_destroy(struct kv_once *o)
{
	pthread_mutex_destroy(&o->lock);
}

int kv_once(struct kv_once *o, int (*fn)(void *arg), void *arg)
{
	int rc = 0;

	if (__atomic_load_n(&o->done, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&o->lock);
	if (!o->done && !(rc = fn(arg)))
		__atomic_store_n(&o->done, true, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&o->lock);
	return rc;
}

bool kv_is_identifier(const char *name, size_t max)
{
	static const char alnum[] = "abcdefghijklmnopqrstuvwxyz"
				    "ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789";
	size_t n = strlen(name);

	return n && n <= max && !isdigit((unsigned char)name[0]) && strspn(name, alnum) == n;
}
