/*
 * memory.c - an in-process store for tests and scratch mounts ("memory:").
 *
 * A sorted array under one read-write lock: simple enough to serve as the
 * reference behaviour for the conformance suite.  Nothing outlives the
 * process.  Versions come from one counter, so every write changes them.
 */
#include "kv.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct mem_item {
	char *key;
	size_t klen;
	char *val;
	size_t vlen;
	uint64_t version;
};

struct mem_store {
	struct kv_store base;
	pthread_rwlock_t lock;
	struct mem_item *items;
	size_t n, cap;
	uint64_t next_version;
	uint64_t bytes;
	int delay_ms;     /* -o delay=T: every call waits this long, to act as a slow
	                     or hung store in tests (H2, timeouts) */
	uint64_t quota;   /* -o quota=SIZE: bytes of keys and values at most; a write
	                     beyond it is -ENOSPC, as from a full store (0 = none) */
};

static void mem_wait(struct mem_store *m)
{
	if (m->delay_ms > 0) {
		struct timespec ts = {.tv_sec = m->delay_ms / 1000,
				      .tv_nsec = (long)(m->delay_ms % 1000) * 1000000L};
		while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
			;
	}
}

/* Index of the first item >= key; *found tells whether it is equal. */
static size_t mem_find(struct mem_store *m, const char *key, size_t klen, bool *found)
{
	size_t lo = 0, hi = m->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (kv_key_cmp(m->items[mid].key, m->items[mid].klen, key, klen) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < m->n && kv_key_cmp(m->items[lo].key, m->items[lo].klen, key, klen) == 0;
	return lo;
}

static char *dup_bytes(const char *p, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		if (n)
			memcpy(d, p, n);
		d[n] = '\0';
	}
	return d;
}

static int mem_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	struct mem_store *m;

	int delay_ms = 0, rc;
	uint64_t quota_bytes = 0;

	if ((rc = kv_option_ms(a, "delay", 0, INT32_MAX, &delay_ms, err, errlen)) ||
	    (rc = kv_option_size(a, "quota", 0, UINT64_MAX, &quota_bytes, err, errlen)))
		return rc;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->delay_ms = delay_ms;
	m->quota = quota_bytes;
	pthread_rwlock_init(&m->lock, NULL);
	*out = &m->base;
	return 0;
}

static void mem_close(struct kv_store *s)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);

	for (size_t i = 0; i < m->n; i++) {
		free(m->items[i].key);
		free(m->items[i].val);
	}
	free(m->items);
	pthread_rwlock_destroy(&m->lock);
	free(m);
}

static int mem_get(struct kv_store *s, const char *key, size_t klen, char **val, size_t *len,
		   uint64_t *version)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);
	bool found;
	int rc = 0;

	mem_wait(m);

	pthread_rwlock_rdlock(&m->lock);
	size_t i = mem_find(m, key, klen, &found);
	if (!found) {
		rc = -ENOENT;
	} else {
		*val = dup_bytes(m->items[i].val, m->items[i].vlen);
		*len = m->items[i].vlen;
		if (version)
			*version = m->items[i].version;
		if (!*val)
			rc = -ENOMEM;
	}
	pthread_rwlock_unlock(&m->lock);
	return rc;
}

static int mem_stat(struct kv_store *s, const char *key, size_t klen, uint64_t *size)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);
	bool found;

	mem_wait(m);

	pthread_rwlock_rdlock(&m->lock);
	size_t i = mem_find(m, key, klen, &found);
	if (found)
		*size = m->items[i].vlen;
	pthread_rwlock_unlock(&m->lock);
	return found ? 0 : -ENOENT;
}

/* Caller holds the write lock. */
static int mem_put_locked(struct mem_store *m, const char *key, size_t klen, const char *val,
			  size_t vlen)
{
	bool found;
	size_t i = mem_find(m, key, klen, &found);
	char *v;

	if (m->quota && m->bytes + vlen + (found ? 0 : klen) - (found ? m->items[i].vlen : 0) >
	    m->quota)
		return -ENOSPC;
	v = dup_bytes(val, vlen);
	if (!v)
		return -ENOMEM;
	if (found) {
		m->bytes -= m->items[i].vlen;
		free(m->items[i].val);
	} else {
		char *k = dup_bytes(key, klen);
		if (!k) {
			free(v);
			return -ENOMEM;
		}
		if (m->n == m->cap) {
			size_t cap = m->cap ? m->cap * 2 : 64;
			struct mem_item *it = realloc(m->items, cap * sizeof(*it));
			if (!it) {
				free(k);
				free(v);
				return -ENOMEM;
			}
			m->items = it;
			m->cap = cap;
		}
		memmove(&m->items[i + 1], &m->items[i], (m->n - i) * sizeof(*m->items));
		m->items[i] = (struct mem_item){.key = k, .klen = klen};
		m->n++;
		m->bytes += klen;
	}
	m->items[i].val = v;
	m->items[i].vlen = vlen;
	m->items[i].version = ++m->next_version;
	m->bytes += vlen;
	return 0;
}

static int mem_del_locked(struct mem_store *m, const char *key, size_t klen)
{
	bool found;
	size_t i = mem_find(m, key, klen, &found);

	if (!found)
		return -ENOENT;
	m->bytes -= m->items[i].klen + m->items[i].vlen;
	free(m->items[i].key);
	free(m->items[i].val);
	memmove(&m->items[i], &m->items[i + 1], (m->n - i - 1) * sizeof(*m->items));
	m->n--;
	return 0;
}

static int mem_set(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);

	mem_wait(m);

	pthread_rwlock_wrlock(&m->lock);
	int rc = mem_put_locked(m, key, klen, val, vlen);
	pthread_rwlock_unlock(&m->lock);
	return rc;
}

static int mem_del(struct kv_store *s, const char *key, size_t klen)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);

	mem_wait(m);

	pthread_rwlock_wrlock(&m->lock);
	int rc = mem_del_locked(m, key, klen);
	pthread_rwlock_unlock(&m->lock);
	return rc;
}

static int mem_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
		   const char *val, size_t vlen)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);
	bool found;
	int rc;

	mem_wait(m);

	pthread_rwlock_wrlock(&m->lock);
	size_t i = mem_find(m, key, klen, &found);
	if (found ? m->items[i].version != version : version != 0)
		rc = -ECANCELED;
	else
		rc = mem_put_locked(m, key, klen, val, vlen);
	pthread_rwlock_unlock(&m->lock);
	return rc;
}

/* All or nothing: each operation saves the old value first, and a failure
 * part-way puts the saved values back before the lock is released. */
static int mem_apply(struct kv_store *s, const struct kv_op *ops, size_t n)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);
	struct mem_item *undo = calloc(n ? n : 1, sizeof(*undo));
	bool *had = calloc(n ? n : 1, sizeof(*had));
	size_t done = 0;
	int rc = 0;

	mem_wait(m);

	if (!undo || !had) {
		free(undo);
		free(had);
		return -ENOMEM;
	}
	pthread_rwlock_wrlock(&m->lock);
	for (; done < n; done++) {
		const struct kv_op *op = &ops[done];
		bool found;
		size_t i = mem_find(m, op->key, op->key_len, &found);
		had[done] = found;
		if (found) {
			undo[done].val = dup_bytes(m->items[i].val, m->items[i].vlen);
			undo[done].vlen = m->items[i].vlen;
			if (!undo[done].val) {
				rc = -ENOMEM;
				break;
			}
		}
		if (op->type == KV_OP_SET)
			rc = mem_put_locked(m, op->key, op->key_len, op->val, op->val_len);
		else if (found)
			rc = mem_del_locked(m, op->key, op->key_len);
		if (rc)
			break;  /* undo[done] is freed with the others below */
	}
	/* On failure, undo in reverse order so repeated keys end as they began. */
	while (rc && done-- > 0) {
		const struct kv_op *op = &ops[done];
		if (had[done])
			mem_put_locked(m, op->key, op->key_len, undo[done].val, undo[done].vlen);
		else
			mem_del_locked(m, op->key, op->key_len);
	}
	pthread_rwlock_unlock(&m->lock);
	for (size_t i = 0; i < n; i++)
		free(undo[i].val);
	free(undo);
	free(had);
	return rc;
}

static int mem_scan(struct kv_store *s, const char *from, size_t flen, const char *to,
		    size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);
	bool found;
	int rc = 0;

	mem_wait(m);

	pthread_rwlock_rdlock(&m->lock);
	for (size_t i = mem_find(m, from, flen, &found); i < m->n && max-- && !rc; i++) {
		struct mem_item *it = &m->items[i];
		if (to && kv_key_cmp(it->key, it->klen, to, tlen) >= 0)
			break;
		rc = cb(ctx, it->key, it->klen, it->vlen);
	}
	pthread_rwlock_unlock(&m->lock);
	return rc < 0 ? rc : 0;
}

static int mem_health(struct kv_store *s, struct kv_health *h)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);

	mem_wait(m);

	pthread_rwlock_rdlock(&m->lock);
	snprintf(h->detail, sizeof(h->detail), "in-process store, %zu keys", m->n);
	pthread_rwlock_unlock(&m->lock);
	return 0;
}

static int mem_statfs(struct kv_store *s, struct kv_statfs *st)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);

	pthread_rwlock_rdlock(&m->lock);
	st->keys = m->n;
	st->total_bytes = 0;
	st->free_bytes = 0;
	pthread_rwlock_unlock(&m->lock);
	return 0;
}

const struct kv_backend kv_backend_memory = {
	.scheme = "memory",
	.summary = "in-process store for tests and scratch mounts; gone when kvfs exits",
	.usage = "memory:",
	.options = (const char *const[]){"delay", "quota", NULL},
	.limits = {.max_key = 0, .max_value = 0},
	.open = mem_open,
	.close = mem_close,
	.get = mem_get,
	.set = mem_set,
	.del = mem_del,
	.scan = mem_scan,
	.health = mem_health,
	.stat = mem_stat,
	.cas = mem_cas,
	.apply = mem_apply,
	.statfs = mem_statfs,
};
