/*
 * memory.c - an in-process store for tests and scratch mounts ("memory:").
 *
 * A sorted array under one read-write lock: simple enough to serve as the
 * reference behaviour for the conformance suite.  Nothing outlives the
 * process.  Versions come from one counter, so every write changes them.
 */
#include "kv.h"
#include "toolkit.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* A NUL-terminated copy, as get() hands out. */
static char *dup_bytes(const char *p, size_t n)
{
	char *d = malloc(n + 1);

	if (d) {
		memcpy(d, n ? p : "", n);
		d[n] = '\0';
	}
	return d;
}

static int mem_open(const struct kv_open_args *a, struct kv_store **out, char *err, size_t errlen)
{
	struct mem_store *m = calloc(1, sizeof(*m));
	int rc;

	if (!m)
		return -ENOMEM;
	if ((rc = kv_option_ms(a, "delay", 0, INT32_MAX, &m->delay_ms, err, errlen)) ||
	    (rc = kv_option_size(a, "quota", 0, UINT64_MAX, &m->quota, err, errlen))) {
		free(m);
		return rc;
	}
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

/* Every call but statfs starts here: the -o delay, then the lock. */
static struct mem_store *mem_lock(struct kv_store *s, bool write)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);

	kv_sleep_ms(m->delay_ms);
	if (write)
		pthread_rwlock_wrlock(&m->lock);
	else
		pthread_rwlock_rdlock(&m->lock);
	return m;
}

static int mem_get(struct kv_store *s, const char *key, size_t klen, char **val, size_t *len,
		   uint64_t *version)
{
	struct mem_store *m = mem_lock(s, false);
	bool found;
	size_t i = mem_find(m, key, klen, &found);
	int rc = found ? 0 : -ENOENT;

	if (found) {
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
	struct mem_store *m = mem_lock(s, false);
	bool found;
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
	char *v, *k = NULL;

	if (m->quota && m->bytes + vlen + (found ? 0 : klen) - (found ? m->items[i].vlen : 0) >
	    m->quota)
		return -ENOSPC;
	if (!found && m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 64;
		struct mem_item *it = realloc(m->items, cap * sizeof(*it));
		if (!it)
			return -ENOMEM;
		m->items = it;
		m->cap = cap;
	}
	v = dup_bytes(val, vlen);
	if (!v || (!found && !(k = dup_bytes(key, klen)))) {
		free(v);
		return -ENOMEM;
	}
	if (found) {
		m->bytes -= m->items[i].vlen;
		free(m->items[i].val);
	} else {
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
	struct mem_store *m = mem_lock(s, true);
	int rc = mem_put_locked(m, key, klen, val, vlen);

	pthread_rwlock_unlock(&m->lock);
	return rc;
}

static int mem_del(struct kv_store *s, const char *key, size_t klen)
{
	struct mem_store *m = mem_lock(s, true);
	int rc = mem_del_locked(m, key, klen);

	pthread_rwlock_unlock(&m->lock);
	return rc;
}

static int mem_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
		   const char *val, size_t vlen)
{
	struct mem_store *m = mem_lock(s, true);
	bool found;
	size_t i = mem_find(m, key, klen, &found);
	int rc = -ECANCELED;

	if (found ? m->items[i].version == version : version == 0)
		rc = mem_put_locked(m, key, klen, val, vlen);
	pthread_rwlock_unlock(&m->lock);
	return rc;
}

/* All or nothing: each operation saves the old value first, and a failure
 * part-way puts the saved values back before the lock is released. */
static int mem_apply(struct kv_store *s, const struct kv_op *ops, size_t n)
{
	struct { char *val; size_t vlen; bool had; } *undo = calloc(n ? n : 1, sizeof(*undo));
	struct mem_store *m;
	size_t done = 0;
	int rc = 0;

	if (!undo)
		return -ENOMEM;
	m = mem_lock(s, true);
	for (; done < n; done++) {
		const struct kv_op *op = &ops[done];
		size_t i = mem_find(m, op->key, op->key_len, &undo[done].had);

		if (undo[done].had) {
			undo[done].vlen = m->items[i].vlen;
			undo[done].val = dup_bytes(m->items[i].val, m->items[i].vlen);
		}
		if (undo[done].had && !undo[done].val)
			rc = -ENOMEM;
		else if (op->type == KV_OP_SET)
			rc = mem_put_locked(m, op->key, op->key_len, op->val, op->val_len);
		else if (undo[done].had)
			rc = mem_del_locked(m, op->key, op->key_len);
		if (rc)
			break;  /* undo[done] is freed with the others below */
	}
	/* On failure, undo in reverse order so repeated keys end as they began. */
	while (rc && done-- > 0) {
		const struct kv_op *op = &ops[done];
		if (undo[done].had)
			mem_put_locked(m, op->key, op->key_len, undo[done].val, undo[done].vlen);
		else
			mem_del_locked(m, op->key, op->key_len);
	}
	pthread_rwlock_unlock(&m->lock);
	for (size_t i = 0; i < n; i++)
		free(undo[i].val);
	free(undo);
	return rc;
}

static int mem_scan(struct kv_store *s, const char *from, size_t flen, const char *to,
		    size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	struct mem_store *m = mem_lock(s, false);
	bool found;
	int rc = 0;

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
	struct mem_store *m = mem_lock(s, false);

	snprintf(h->detail, sizeof(h->detail), "in-process store, %zu keys", m->n);
	pthread_rwlock_unlock(&m->lock);
	return 0;
}

/* Without the -o delay; the sizes stay 0 (unknown), as kv_statfs set them. */
static int mem_statfs(struct kv_store *s, struct kv_statfs *st)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);

	pthread_rwlock_rdlock(&m->lock);
	st->keys = m->n;
	pthread_rwlock_unlock(&m->lock);
	return 0;
}

const struct kv_backend kv_backend_memory = {
	.scheme = "memory",
	.summary = "in-process store for tests and scratch mounts; gone when kvfs exits",
	.usage = "memory:",
	.options = (const char *const[]){"delay", "quota", NULL},
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
