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

static void mem_free_item(struct mem_item it)
{
	free(it.key);
	free(it.val);
}

static void mem_close(struct kv_store *s)
{
	struct mem_store *m = kv_store_cast(struct mem_store, s);

	for (size_t i = 0; i < m->n; i++)
		mem_free_item(m->items[i]);
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

	if (found && !(*val = kv_memdup(m->items[i].val, m->items[i].vlen))) {
		rc = -ENOMEM;
	} else if (found) {
		*len = m->items[i].vlen;
		if (version)
			*version = m->items[i].version;
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

/*
 * Make index i hold *it (found: in place of the item there; it->key NULL:
 * no item) and hand back in *it what was there (key NULL: nothing).  An
 * item it adds needs room for one more; nothing is allocated.  The write
 * lock is held, here and below.
 */
static void mem_swap(struct mem_store *m, size_t i, bool found, struct mem_item *it)
{
	struct mem_item old = found ? m->items[i] : (struct mem_item){0};

	if (found && !it->key) {
		m->n--;
		memmove(&m->items[i], &m->items[i + 1], (m->n - i) * sizeof(old));
	} else if (!found && it->key) {
		memmove(&m->items[i + 1], &m->items[i], (m->n - i) * sizeof(old));
		m->n++;
	}
	if (it->key)
		m->items[i] = *it;
	m->bytes += it->klen + it->vlen - old.klen - old.vlen;
	*it = old;
}

/* Perform one operation: 0 with what it replaced or removed in *old (for
 * the caller to free or put back), or an error, having changed nothing. */
static int mem_write(struct mem_store *m, const struct kv_op *op, struct mem_item *old)
{
	bool found;
	size_t i = mem_find(m, op->key, op->key_len, &found);
	struct mem_item it = {0};

	if (op->type == KV_OP_DEL && !found)
		return -ENOENT;
	if (op->type == KV_OP_SET) {
		if (m->quota && m->bytes + op->key_len + op->val_len -
				(found ? m->items[i].klen + m->items[i].vlen : 0) > m->quota)
			return -ENOSPC;
		if (!found && m->n == m->cap) {
			size_t cap = m->cap ? m->cap * 2 : 64;
			struct mem_item *items = realloc(m->items, cap * sizeof(*items));
			if (!items)
				return -ENOMEM;
			m->items = items;
			m->cap = cap;
		}
		it = (struct mem_item){kv_memdup(op->key, op->key_len), op->key_len,
				       kv_memdup(op->val, op->val_len), op->val_len,
				       ++m->next_version};
		if (!it.key || !it.val) {
			mem_free_item(it);
			return -ENOMEM;
		}
	}
	mem_swap(m, i, found, &it);
	*old = it;
	return 0;
}

/* set, del and cas: one operation; cas only while the key has that version. */
static int mem_write_one(struct kv_store *s, const struct kv_op *op, bool cas, uint64_t version)
{
	struct mem_store *m = mem_lock(s, true);
	struct mem_item old = {0};
	bool found;
	size_t i = mem_find(m, op->key, op->key_len, &found);
	int rc = -ECANCELED;

	if (!cas || (found ? m->items[i].version == version : version == 0))
		rc = mem_write(m, op, &old);
	pthread_rwlock_unlock(&m->lock);
	mem_free_item(old);
	return rc;
}

static int mem_set(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen)
{
	return mem_write_one(s, &(struct kv_op){KV_OP_SET, key, klen, val, vlen}, false, 0);
}

static int mem_del(struct kv_store *s, const char *key, size_t klen)
{
	return mem_write_one(s, &(struct kv_op){KV_OP_DEL, key, klen, NULL, 0}, false, 0);
}

static int mem_cas(struct kv_store *s, const char *key, size_t klen, uint64_t version,
		   const char *val, size_t vlen)
{
	return mem_write_one(s, &(struct kv_op){KV_OP_SET, key, klen, val, vlen}, true, version);
}

/*
 * All or nothing: what the operations replace or remove is kept until the
 * end, and a failure part-way swaps it back before the lock is released,
 * which needs no memory and so cannot fail.  kv_apply calls it with one
 * operation at least.
 */
static int mem_apply(struct kv_store *s, const struct kv_op *ops, size_t n)
{
	struct mem_item *undo = calloc(n, sizeof(*undo));
	struct mem_store *m;
	size_t done = 0;
	int rc = 0;

	if (!undo)
		return -ENOMEM;
	m = mem_lock(s, true);
	for (; done < n; done++) {
		rc = mem_write(m, &ops[done], &undo[done]);
		if (rc == -ENOENT)
			rc = 0;  /* a delete of a missing key is not an error here */
		if (rc)
			break;  /* this one changed nothing */
	}
	/* On failure, undo in reverse order so repeated keys end as they began;
	 * undo[] then holds what the operations wrote. */
	while (rc && done-- > 0) {
		bool found;
		size_t i = mem_find(m, ops[done].key, ops[done].key_len, &found);

		mem_swap(m, i, found, &undo[done]);
	}
	pthread_rwlock_unlock(&m->lock);
	for (size_t i = 0; i < n; i++)
		mem_free_item(undo[i]);
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
