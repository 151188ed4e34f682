/*
 * lmdb.c - the embedded default backend: an LMDB environment in a local
 * directory, "lmdb:/path/to/dir" (or "lmdb:///path/to/dir").
 *
 * Keys are stored byte for byte in the environment's main (unnamed)
 * database, so every other LMDB client (python3-lmdb, mdb_dump, mdb_load)
 * reads and writes exactly the keys kvfs shows, and nothing is ever hidden.
 * The price is the empty key: LMDB refuses zero-length keys, so it cannot
 * exist here: set, cas and apply refuse it with -EINVAL, get, stat and del
 * answer -ENOENT.  A tag byte in front of every key would make room for it,
 * but then a key written by another client without the tag would be hidden
 * or misread.
 *
 * Writers queue up and share one write transaction (group commit, the
 * toolkit's kv_queue: the leader commits everything queued and hands each
 * writer its own result).  If the shared transaction fails, each write is
 * redone alone so that it fails only itself.  MDB_MAP_FULL grows the map
 * (doubling, up to map_max) and retries.
 *
 * Durability: every commit is in the OS before set() returns, so it
 * survives kill -9.  sync=interval (default) opens with MDB_NOMETASYNC:
 * a commit flushes its data pages but not the meta page, so a power loss
 * may undo the last commits but never corrupts the store; a syncer thread
 * flushes the meta page every sync_interval.  sync=always flushes both per
 * commit.  sync=lazy (MDB_NOSYNC) flushes only every sync_interval: the
 * fastest, but LMDB can only promise integrity after a power loss on a
 * filesystem that keeps write order, so it is not the default.
 */
#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv.h"
#include "toolkit.h"

/* Debian's liblmdb is built with the default MDB_MAXKEYSIZE; the store
 * reports mdb_env_get_maxkeysize() through store_limits. */
#define LM_MAX_KEY 511
/*
 * LMDB takes values up to 4 GiB, but fs/ holds a whole value in memory, a
 * rewrite needs as much again of the map, and from about 240 MiB dirty in
 * one transaction liblmdb 0.9.24 spills pages and leaks its 1 MiB spill
 * list each time.  128 MiB stays well clear of all three.
 */
#define LM_MAX_VALUE ((size_t)128 << 20)
#define LM_DEFAULT_MAP ((uint64_t)1 << 30)
#define LM_DEFAULT_SYNC_MS 5000
#define LM_MAX_READERS 256   /* applies when we create the lock file */
#define LM_POOL 16           /* idle read transactions kept for reuse */
#ifndef LM_BATCH_MAX
#define LM_BATCH_MAX 256     /* writes per shared transaction (-D1 disables grouping) */
#endif
#define LM_BATCH_BYTES ((size_t)64 << 20)  /* and value bytes, so big values are not pooled */

enum lm_sync { LM_SYNC_INTERVAL, LM_SYNC_ALWAYS, LM_SYNC_LAZY };
static const char *const lm_sync_names[] = {"interval", "always", "lazy"};

/* One caller's write, waiting in the queue; lives on the caller's stack. */
struct lm_write {
	struct kv_queued q;       /* first: the queue links writes through it */
	enum { LM_W_SET, LM_W_DEL, LM_W_CAS, LM_W_APPLY } kind;
	const struct kv_op *ops;  /* one, or apply's array */
	size_t nops;
	uint64_t version;         /* LM_W_CAS: ops[0]'s key must still have it */
	int rc;                   /* this write's own result, set by the leader */
};

#define lm_next(w) ((struct lm_write *)(void *)(w)->q.next)

struct lm_store {
	struct kv_store base;
	MDB_env *env;
	MDB_dbi dbi;
	size_t max_key;
	size_t map_max;           /* 0: grow until the system refuses */
	enum lm_sync sync_mode;
	int sync_ms;

	/*
	 * Every transaction runs with map_lock held for reading, because
	 * resizing the map unmaps it under any reader of this process and
	 * LMDB leaves that exclusion to us.  Writer-preferring, so a resize
	 * is not starved by a stream of readers.
	 */
	pthread_rwlock_t map_lock;
	bool broken;              /* under map_lock: a failed remap left no map */

	pthread_mutex_t pool_lock;
	MDB_txn *pool[LM_POOL];   /* reset read transactions, reader slot kept */
	size_t npool;

	struct kv_queue queue;    /* writers share transactions (group commit) */

	struct kv_ticker syncer;  /* sync=interval and lazy: flushes every sync_ms */
	uint64_t commits;         /* atomic: successful write commits */
	uint64_t synced;          /* the syncer's: commits at its last flush */
};

/* ---- Small helpers ---- */

/* The one place LMDB and system errors become kv errno values. */
static int lm_errno(int rc)
{
	switch (rc) {
	case MDB_NOTFOUND: case ENOENT: case ENOTDIR:
		return -ENOENT;
	case MDB_MAP_FULL: case MDB_TXN_FULL: case ENOSPC: case EDQUOT:
		return -ENOSPC;
	case EACCES: case EPERM:
	case MDB_INCOMPATIBLE:  /* e.g. the key is another client's named database */
		return -EACCES;
	case 0: case EROFS: case ENOMEM: case EINVAL:
		return -rc;
	default:
		return -EIO;  /* MDB_INVALID, MDB_VERSION_MISMATCH, I/O errors */
	}
}

static MDB_val lm_val(const char *p, size_t len)
{
	/* An empty value may come as NULL; LMDB would memcpy from it. */
	return (MDB_val){ .mv_size = len, .mv_data = (void *)(len ? p : "") };
}

/* ---- The map: adopting another process's size, growing our own ---- */

/* MDB_MAP_RESIZED: another process grew the map past ours; take its size. */
static bool lm_map_adopt(struct lm_store *s)
{
	int rc = EIO;

	pthread_rwlock_wrlock(&s->map_lock);
	if (!s->broken && (rc = mdb_env_set_mapsize(s->env, 0))) {
		s->broken = true;
		kv_log(KV_LOG_ERR, "lmdb: cannot map the grown store: %s", mdb_strerror(rc));
	}
	pthread_rwlock_unlock(&s->map_lock);
	return rc == 0;
}

/* MDB_MAP_FULL: double the map, up to map_max.  false: it stays full. */
static bool lm_map_grow(struct lm_store *s)
{
	MDB_envinfo info;
	size_t cur = 0, next = 0;
	void *probe;
	int rc;

	pthread_rwlock_wrlock(&s->map_lock);
	if (!s->broken) {
		mdb_env_info(s->env, &info);
		cur = info.me_mapsize;
		if ((!s->map_max || cur < s->map_max) && cur <= SIZE_MAX / 4)
			next = s->map_max && cur * 2 > s->map_max ? s->map_max : cur * 2;
	}
	/*
	 * mdb_env_set_mapsize() unmaps before it maps again and has no way
	 * back when the new mapping fails, so first make sure that much
	 * address space is there.
	 */
	probe = next ? mmap(NULL, next, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			    -1, 0) : NULL;
	if (probe == MAP_FAILED) {
		kv_log(KV_LOG_ERR, "lmdb: cannot grow the map to %zu bytes: %s", next,
		       strerror(errno));
		next = 0;
	} else if (next) {
		munmap(probe, next);
		if ((rc = mdb_env_set_mapsize(s->env, next))) {
			s->broken = true;
			kv_log(KV_LOG_ERR, "lmdb: remapping to %zu bytes failed, store unusable: "
			       "%s", next, mdb_strerror(rc));
			next = 0;
		} else {
			kv_log(KV_LOG_INFO, "lmdb: map grown from %zu to %zu bytes", cur, next);
		}
	}
	pthread_rwlock_unlock(&s->map_lock);
	return next != 0;
}

/* ---- Read transactions ---- */

/*
 * Start a read transaction, reusing a reset one (and its reader slot) from
 * the pool.  On success map_lock is held until lm_read_end().  Returns an
 * LMDB or errno code.
 */
static int lm_read_begin(struct lm_store *s, MDB_txn **out)
{
	MDB_txn *txn;
	int rc, dead;

	for (int tries = 0;; tries++) {
		pthread_rwlock_rdlock(&s->map_lock);
		if (s->broken) {
			pthread_rwlock_unlock(&s->map_lock);
			return EIO;
		}
		txn = NULL;
		pthread_mutex_lock(&s->pool_lock);
		if (s->npool)
			txn = s->pool[--s->npool];
		pthread_mutex_unlock(&s->pool_lock);
		if (!txn)
			rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
		else if ((rc = mdb_txn_renew(txn)))
			mdb_txn_abort(txn);
		if (!rc) {
			*out = txn;
			return 0;
		}
		pthread_rwlock_unlock(&s->map_lock);
		if (tries < 3 && rc == MDB_MAP_RESIZED && lm_map_adopt(s))
			continue;
		/* Slots of killed processes stay taken until someone checks. */
		if (tries < 3 && rc == MDB_READERS_FULL && mdb_reader_check(s->env, &dead) == 0 &&
		    dead > 0)
			continue;
		kv_log(KV_LOG_ERR, "lmdb: cannot begin a read transaction: %s", mdb_strerror(rc));
		return rc;
	}
}

static void lm_read_end(struct lm_store *s, MDB_txn *txn)
{
	mdb_txn_reset(txn);
	pthread_mutex_lock(&s->pool_lock);
	if (s->npool < LM_POOL) {
		s->pool[s->npool++] = txn;
		txn = NULL;
	}
	pthread_mutex_unlock(&s->pool_lock);
	if (txn)
		mdb_txn_abort(txn);
	pthread_rwlock_unlock(&s->map_lock);
}

/* ---- Writes: one transaction per batch of queued writes ---- */

/*
 * Run one queued write in txn.  Its own outcome (-ENOENT, -ECANCELED) goes
 * to w->rc and leaves txn usable: neither wrote anything.  Any other error
 * is returned, and then txn must be aborted.
 */
static int lm_exec(struct lm_store *s, MDB_txn *txn, struct lm_write *w)
{
	MDB_val k, v;
	int rc = 0;

	w->rc = 0;
	if (w->kind == LM_W_CAS) {
		k = lm_val(w->ops->key, w->ops->key_len);
		if ((rc = mdb_get(txn, s->dbi, &k, &v)) && rc != MDB_NOTFOUND)
			return rc;
		if ((rc ? 0 : kv_value_version(v.mv_data, v.mv_size)) != w->version) {
			w->rc = -ECANCELED;
			return 0;
		}
	}
	for (size_t i = 0; i < w->nops; i++) {
		const struct kv_op *op = &w->ops[i];

		k = lm_val(op->key, op->key_len);
		v = lm_val(op->val, op->val_len);
		if (op->type == KV_OP_SET)
			rc = mdb_put(txn, s->dbi, &k, &v, 0);
		else if (op->key_len == 0 || op->key_len > s->max_key)
			rc = MDB_NOTFOUND;  /* cannot exist; LMDB would call it a bad size */
		else
			rc = mdb_del(txn, s->dbi, &k, NULL);
		if (rc == MDB_NOTFOUND) {  /* only del's own result: apply's is 0 */
			w->rc = w->kind == LM_W_DEL ? -ENOENT : 0;
			rc = 0;
		}
		if (rc)
			return rc;
	}
	return 0;
}

/*
 * Run the writes from first up to (not including) stop in one write
 * transaction and commit it, growing or re-adopting the map as needed.
 * Returns 0 or the LMDB/errno code that made the transaction fail.
 */
static int lm_txn_run(struct lm_store *s, struct lm_write *first, struct lm_write *stop)
{
	struct lm_write *w;
	MDB_txn *txn;
	int rc;

	do {
		pthread_rwlock_rdlock(&s->map_lock);
		rc = s->broken ? EIO : mdb_txn_begin(s->env, NULL, 0, &txn);
		if (!rc) {
			for (w = first; w != stop && !rc; w = lm_next(w))
				rc = lm_exec(s, txn, w);
			if (rc)
				mdb_txn_abort(txn);
			else
				rc = mdb_txn_commit(txn);
		}
		pthread_rwlock_unlock(&s->map_lock);
	} while ((rc == MDB_MAP_FULL && lm_map_grow(s)) ||
		 (rc == MDB_MAP_RESIZED && lm_map_adopt(s)));
	if (!rc)
		__atomic_add_fetch(&s->commits, 1, __ATOMIC_RELAXED);
	return rc;
}

static void lm_batch_commit(void *ctx, struct kv_queued *first)
{
	struct lm_write *w, *batch = (struct lm_write *)(void *)first;
	struct lm_store *s = ctx;
	int rc;

	if (lm_next(batch) && lm_txn_run(s, batch, NULL) == 0)
		return;
	/*
	 * Alone, or the shared transaction failed (a map that may not grow,
	 * an I/O error): give every write its own transaction, so that a
	 * write fails only itself.  This is still the queue's serial order.
	 */
	for (w = batch; w; w = lm_next(w)) {
		if (!(rc = lm_txn_run(s, w, lm_next(w))))
			continue;
		if (w->kind == LM_W_APPLY)
			kv_log(KV_LOG_ERR, "lmdb: apply of %zu operations: %s", w->nops,
			       mdb_strerror(rc));
		else
			kv_log(KV_LOG_ERR, "lmdb: %s %s: %s", w->kind == LM_W_CAS ? "cas" :
			       w->kind == LM_W_DEL ? "del" : "set",
			       kv_printable(w->ops->key, w->ops->key_len), mdb_strerror(rc));
		/* only the errno values kv.h allows a write */
		w->rc = lm_errno(rc);
		if (w->kind == LM_W_DEL || w->rc == -ENOMEM || w->rc == -ENOENT || w->rc == -EINVAL)
			w->rc = -EIO;
	}
}

/*
 * Queue a write for the next shared transaction and wait for its result.
 * The key and value limits are the dispatch layer's (store_limits); only
 * the empty key, which LMDB cannot hold, is refused here, without a
 * transaction.
 */
static int lm_write(struct kv_store *st, int kind, const struct kv_op *ops, size_t nops,
		    uint64_t version)
{
	struct lm_store *s = kv_store_cast(struct lm_store, st);
	struct lm_write w = {.kind = kind, .ops = ops, .nops = nops, .version = version};

	for (size_t i = 0; i < nops; i++) {
		if (ops[i].type == KV_OP_DEL)
			continue;
		if (ops[i].key_len == 0) {
			kv_log(KV_LOG_INFO, "lmdb: the empty key cannot be stored (LMDB keys are "
			       "1 to %zu bytes)", s->max_key);
			return -EINVAL;
		}
		w.q.bytes += ops[i].val_len;
	}
	if (kind == LM_W_DEL && ops->key_len == 0)
		return -ENOENT;  /* cannot exist */
	kv_queue_submit(&s->queue, &w.q);
	return w.rc;
}

static int lm_set(struct kv_store *st, const char *key, size_t klen, const char *val, size_t vlen)
{
	return lm_write(st, LM_W_SET, &(struct kv_op){KV_OP_SET, key, klen, val, vlen}, 1, 0);
}

static int lm_cas(struct kv_store *st, const char *key, size_t klen, uint64_t version,
		  const char *val, size_t vlen)
{
	return lm_write(st, LM_W_CAS, &(struct kv_op){KV_OP_SET, key, klen, val, vlen}, 1, version);
}

static int lm_del(struct kv_store *st, const char *key, size_t klen)
{
	return lm_write(st, LM_W_DEL, &(struct kv_op){KV_OP_DEL, key, klen, NULL, 0}, 1, 0);
}

/* kv_apply calls it with one operation at least. */
static int lm_apply(struct kv_store *st, const struct kv_op *ops, size_t n)
{
	return lm_write(st, LM_W_APPLY, ops, n, 0);
}

/* ---- Reads ---- */

/* A value's size, and with val a copy of it (malloc'd, NUL-terminated). */
static int lm_read(struct kv_store *st, const char *what, const char *key, size_t klen,
		   char **val, uint64_t *size)
{
	struct lm_store *s = kv_store_cast(struct lm_store, st);
	MDB_val k = lm_val(key, klen), v;
	MDB_txn *txn;
	int rc;

	if (klen == 0)
		return -ENOENT;  /* cannot exist (nor can a key over max_key: kv.c's check) */
	if (lm_read_begin(s, &txn))
		return -EIO;
	rc = mdb_get(txn, s->dbi, &k, &v);  /* points into the map */
	if (!rc && val)
		*val = kv_memdup(v.mv_data, v.mv_size);
	lm_read_end(s, txn);
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	if (rc) {
		kv_log(KV_LOG_ERR, "lmdb: %s %s: %s", what, kv_printable(key, klen),
		       mdb_strerror(rc));
		return -EIO;
	}
	if (val && !*val)
		return -ENOMEM;
	*size = v.mv_size;
	return 0;
}

static int lm_get(struct kv_store *st, const char *key, size_t klen, char **val, size_t *len,
		  uint64_t *version)
{
	uint64_t size;
	int rc = lm_read(st, "get", key, klen, val, &size);

	if (!rc && version)
		*version = kv_value_version(*val, size);  /* LMDB keeps no version per key */
	if (!rc)
		*len = size;
	return rc;
}

static int lm_stat(struct kv_store *st, const char *key, size_t klen, uint64_t *size)
{
	return lm_read(st, "stat", key, klen, NULL, size);
}

/* ---- scan ---- */

/* Keys from `from` up, in one read transaction.  The caller copies them
 * out (kv.c's walker), so the transaction ends before anything else runs. */
static int lm_scan(struct kv_store *st, const char *from, size_t flen, const char *to,
		   size_t tlen, size_t max, kv_key_cb *cb, void *ctx)
{
	struct lm_store *s = kv_store_cast(struct lm_store, st);
	MDB_val k = lm_val(from, flen), v;
	MDB_cursor_op op = flen ? MDB_SET_RANGE : MDB_FIRST;
	MDB_cursor *cur;
	MDB_txn *txn;
	int rc, stop = 0;

	if ((rc = lm_read_begin(s, &txn))) {
		kv_log(KV_LOG_ERR, "lmdb: scan: %s", mdb_strerror(rc));
		return -EIO;
	}
	if (!(rc = mdb_cursor_open(txn, s->dbi, &cur))) {
		while (max-- && !(rc = mdb_cursor_get(cur, &k, &v, op))) {
			op = MDB_NEXT;
			if (to && kv_key_cmp(k.mv_data, k.mv_size, to, tlen) >= 0)
				break;
			if ((stop = cb(ctx, k.mv_data, k.mv_size, v.mv_size)))
				break;
		}
		mdb_cursor_close(cur);
	}
	lm_read_end(s, txn);
	if (stop)
		return stop < 0 ? stop : 0;
	if (rc && rc != MDB_NOTFOUND) {
		kv_log(KV_LOG_ERR, "lmdb: scan from %s: %s", kv_printable(from, flen),
		       mdb_strerror(rc));
		return -EIO;
	}
	return 0;
}

/* ---- sync, health, statfs ---- */

/* Flush every commit to the disk: 0, or -EIO with a log line saying what failed. */
static int lm_flush(struct lm_store *s, const char *what)
{
	int rc = mdb_env_sync(s->env, 1);

	if (rc)
		kv_log(KV_LOG_ERR, "lmdb: %s: %s", what, mdb_strerror(rc));
	return rc ? -EIO : 0;
}

static int lm_sync(struct kv_store *st)
{
	return lm_flush(kv_store_cast(struct lm_store, st), "sync");
}

/* The map's figures, read in a read transaction: 0 or an LMDB code. */
static int lm_usage(struct lm_store *s, MDB_envinfo *info, MDB_stat *ms, size_t *used)
{
	MDB_txn *txn;
	int rc = lm_read_begin(s, &txn);

	if (rc)
		return rc;
	rc = mdb_stat(txn, s->dbi, ms);
	mdb_env_info(s->env, info);
	lm_read_end(s, txn);
	*used = (info->me_last_pgno + 1) * (size_t)ms->ms_psize;
	return rc;
}

static int lm_health(struct kv_store *st, struct kv_health *h)
{
	struct lm_store *s = kv_store_cast(struct lm_store, st);
	MDB_envinfo info;
	MDB_stat ms;
	size_t used;
	int rc = lm_usage(s, &info, &ms, &used), major, minor, patch;

	if (rc) {
		snprintf(h->detail, sizeof(h->detail), "lmdb: %s", mdb_strerror(rc));
		return -EIO;
	}
	mdb_version(&major, &minor, &patch);
	snprintf(h->detail, sizeof(h->detail), "lmdb %d.%d.%d, %zu keys", major, minor, patch,
		 ms.ms_entries);
	kv_health_fact(h, "map_size", "%zu", info.me_mapsize);
	kv_health_fact(h, "map_used", "%zu", used);
	kv_health_fact(h, "map_max", "%zu", s->map_max);
	kv_health_fact(h, "sync", "%s", lm_sync_names[s->sync_mode]);
	if (s->sync_mode != LM_SYNC_ALWAYS)
		kv_health_fact(h, "sync_interval_ms", "%d", s->sync_ms);
	/* As mdb_stat -e puts it: slots ever taken (by any process) of the table's size. */
	kv_health_fact(h, "readers_used", "%u of %u", info.me_numreaders, info.me_maxreaders);
	return 0;
}

static int lm_statfs(struct kv_store *st, struct kv_statfs *out)
{
	MDB_envinfo info;
	MDB_stat ms;
	size_t used;

	if (lm_usage(kv_store_cast(struct lm_store, st), &info, &ms, &used))
		return -EIO;
	out->total_bytes = info.me_mapsize;
	out->free_bytes = used < info.me_mapsize ? info.me_mapsize - used : 0;
	out->keys = ms.ms_entries;
	return 0;
}

/* The environment's own key size (max_value stays the backend's default). */
static void lm_store_limits(struct kv_store *st, struct kv_limits *out)
{
	out->max_key = kv_store_cast(struct lm_store, st)->max_key;
}

/* ---- The syncer thread ---- */

/* Flush what was committed since the last flush (every sync_ms). */
static void lm_sync_tick(void *arg)
{
	struct lm_store *s = arg;
	uint64_t now = __atomic_load_n(&s->commits, __ATOMIC_RELAXED);

	if (now != s->synced && lm_flush(s, "background sync") == 0)
		s->synced = now;
}

/* ---- open and close ---- */

static void lm_close(struct kv_store *st)
{
	struct lm_store *s = kv_store_cast(struct lm_store, st);

	kv_ticker_stop(&s->syncer);
	if (s->max_key)  /* set once the environment is open */
		lm_flush(s, "final sync");
	while (s->npool)
		mdb_txn_abort(s->pool[--s->npool]);
	if (s->env)
		mdb_env_close(s->env);
	pthread_rwlock_destroy(&s->map_lock);
	pthread_mutex_destroy(&s->pool_lock);
	kv_queue_destroy(&s->queue);
	free(s);
}

/* "/dir", "dir", "///dir" and "//localhost/dir" name the directory "/dir" or "dir". */
static int lm_parse_location(const char *loc, const char **path, char *err, size_t errlen)
{
	if (loc[0] == '/' && loc[1] == '/') {
		loc += strncmp(loc + 2, "localhost/", 10) == 0 ? 11 : 2;  /* "/dir" or "dir" */
		if (*loc && *loc != '/') {
			snprintf(err, errlen, "lmdb: a store is a local directory: use lmdb:/path "
				 "or lmdb:///path");
			return -EINVAL;
		}
	}
	if (!*loc) {
		snprintf(err, errlen, "lmdb: no directory given: use lmdb:/path/to/dir");
		return -EINVAL;
	}
	*path = loc;
	return 0;
}

static int lm_parse_options(struct lm_store *s, const struct kv_open_args *a, size_t *map_size,
			    char *err, size_t errlen)
{
	const char *v = kv_option_get(a, "sync");
	uint64_t size = LM_DEFAULT_MAP, max = 0;
	size_t ps = sysconf(_SC_PAGESIZE) > 0 ? (size_t)sysconf(_SC_PAGESIZE) : 4096;
	int rc;

	s->sync_ms = LM_DEFAULT_SYNC_MS;
	if ((rc = kv_option_size(a, "map_size", ps, SIZE_MAX / 4, &size, err, errlen)) ||
	    (rc = kv_option_size(a, "map_max", 0, SIZE_MAX / 4, &max, err, errlen)) ||
	    (rc = kv_option_ms(a, "sync_interval", 1, INT32_MAX, &s->sync_ms, err, errlen)))
		return rc;
	*map_size = (size + ps - 1) / ps * ps;  /* LMDB wants whole pages */
	s->map_max = max / ps * ps;
	if (s->map_max && s->map_max < *map_size) {
		snprintf(err, errlen, "lmdb: map_max is below map_size");
		return -EINVAL;
	}
	for (s->sync_mode = 0; v && strcmp(v, lm_sync_names[s->sync_mode]); s->sync_mode++)
		if (s->sync_mode == LM_SYNC_LAZY) {
			snprintf(err, errlen, "lmdb: bad sync '%s' (interval, always or lazy)", v);
			return -EINVAL;
		}
	return 0;
}

/* At open, a read-only place is one we may not write (-EACCES), and no
 * room to open it in is a failure to open (-EIO). */
static int lm_open_errno(int rc)
{
	rc = lm_errno(rc);
	return rc == -EROFS ? -EACCES : rc == -ENOSPC ? -EIO : rc;
}

/* Create the store's directory if missing, and open the environment in it. */
static int lm_open_env(struct lm_store *s, const char *path, size_t map_size, char *err,
		       size_t errlen)
{
	static const unsigned sync_flags[] = {
		[LM_SYNC_INTERVAL] = MDB_NOMETASYNC, [LM_SYNC_LAZY] = MDB_NOSYNC,
	};
	int rc, dead = 0, e = mkdir(path, 0700) ? errno : 0;
	unsigned dbflags;
	struct stat st;
	MDB_txn *txn;

	if (e && !(e == EEXIST && stat(path, &st) == 0)) {
		snprintf(err, errlen, "lmdb: cannot create %s: %s", path, strerror(e));
		return lm_open_errno(e);
	}
	if (e && !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "lmdb: %s is not a directory", path);
		return -EINVAL;
	}
	/* MDB_NOTLS: read transactions are not tied to FUSE threads */
	if ((rc = mdb_env_create(&s->env)) || (rc = mdb_env_set_mapsize(s->env, map_size)) ||
	    (rc = mdb_env_set_maxreaders(s->env, LM_MAX_READERS)) ||
	    (rc = mdb_env_open(s->env, path, MDB_NOTLS | sync_flags[s->sync_mode], 0600))) {
		snprintf(err, errlen, "lmdb: cannot open %s: %s", path, mdb_strerror(rc));
		return lm_open_errno(rc);
	}
	/* Reader slots of killed processes pin old pages until cleared. */
	mdb_reader_check(s->env, &dead);
	if (!(rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))) {
		if ((rc = mdb_dbi_open(txn, NULL, 0, &s->dbi)) ||
		    (rc = mdb_dbi_flags(txn, s->dbi, &dbflags)))
			mdb_txn_abort(txn);
		else
			rc = mdb_txn_commit(txn);
	}
	if (rc) {
		snprintf(err, errlen, "lmdb: cannot read %s: %s", path, mdb_strerror(rc));
		return lm_open_errno(rc);
	}
	/* Another client may have given the main database other key rules. */
	if (dbflags & (MDB_REVERSEKEY | MDB_DUPSORT | MDB_INTEGERKEY)) {
		snprintf(err, errlen, "lmdb: %s: the main database is not plain (flags 0x%x)", path,
			 dbflags);
		return -EINVAL;
	}
	s->max_key = (size_t)mdb_env_get_maxkeysize(s->env);
	return 0;
}

static int lm_open(const struct kv_open_args *args, struct kv_store **out, char *err,
		   size_t errlen)
{
	struct lm_store *s;
	const char *path;
	size_t map_size;
	int rc = lm_parse_location(args->location, &path, err, errlen);

	if (rc)
		return rc;
	if (!(s = calloc(1, sizeof(*s)))) {
		snprintf(err, errlen, "lmdb: out of memory");
		return -ENOMEM;
	}
	s->map_lock = (pthread_rwlock_t)PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
	pthread_mutex_init(&s->pool_lock, NULL);
	kv_queue_init(&s->queue, lm_batch_commit, s, LM_BATCH_MAX, LM_BATCH_BYTES);
	rc = lm_parse_options(s, args, &map_size, err, errlen);
	if (!rc)
		rc = lm_open_env(s, path, map_size, err, errlen);
	if (!rc && s->sync_mode != LM_SYNC_ALWAYS &&
	    (rc = kv_ticker_start(&s->syncer, lm_sync_tick, s, s->sync_ms)))
		snprintf(err, errlen, "lmdb: cannot start the sync thread");
	if (rc) {
		lm_close(&s->base);
		return rc;
	}
	*out = &s->base;
	return 0;
}

/*
 * -o options.  map_size: the map at open (default 1G; it doubles on demand).
 * map_max: where doubling stops and set() says -ENOSPC (default 0: until
 * the system refuses).  sync: interval (default), always or lazy, see the
 * top of this file.  sync_interval: the syncer's period (default 5s).
 */
static const char *const lm_options[] = { "map_size", "map_max", "sync", "sync_interval", NULL };

const struct kv_backend kv_backend_lmdb = {
	.scheme = "lmdb",
	.summary = "embedded LMDB environment in a local directory (the default)",
	.usage = "lmdb:/path/to/dir",
	.options = lm_options,
	.persistent = true,
	.limits = { .max_key = LM_MAX_KEY, .max_value = LM_MAX_VALUE },
	.open = lm_open,
	.close = lm_close,
	.get = lm_get,
	.set = lm_set,
	.del = lm_del,
	.scan = lm_scan,
	.health = lm_health,
	.stat = lm_stat,
	.cas = lm_cas,
	.apply = lm_apply,
	.sync = lm_sync,
	.statfs = lm_statfs,
	.store_limits = lm_store_limits,
};
