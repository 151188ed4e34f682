/*
 * keycache.h - the listings of an unordered store, kept for a moment.
 * Used only by kv.c.
 */
#ifndef KVFS_KEYCACHE_H
#define KVFS_KEYCACHE_H

#include "kv.h"

/* How long a walk of an unordered store answers listings (ms) unless
 * -o list_timeout says otherwise: as long as the kernel keeps a name
 * (entry_timeout, 1 s by default). */
#define KV_KEYCACHE_MS 1000

struct kv_keycache *keycache_new(int ms);
void keycache_free(struct kv_keycache *c);

/*
 * Every key under prefix, in byte order, once each, to cb: from a walk
 * of the store (s->be->keys) taken less than KV_KEYCACHE_MS ago, with
 * this mount's writes since then, or from a new walk (every time when
 * s->keycache is NULL).  `probe`: the
 * caller wants one item only (is there a directory of this name?); the
 * walk then takes the parent directory, so the next probes beside it
 * cost nothing.
 */
int keycache_keys(struct kv_store *s, const char *prefix, size_t plen, char delim, bool probe,
		  kv_key_cb *cb, void *ctx);

/* For a store that keeps its walks (s->keycache): a write through this
 * mount succeeded: key now holds size bytes, or (gone) no longer exists. */
void keycache_note(struct kv_store *s, const char *key, size_t klen, uint64_t size, bool gone);

/* The same, when a write failed and may or may not have happened: walk again. */
void keycache_forget(struct kv_store *s);

#endif
