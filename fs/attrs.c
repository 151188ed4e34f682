/*
 * attrs.c - chmod, chown and utimens results, kept in memory for the life
 * of the mount (docs/mapping.md rule A2).  A key-value store has nowhere to
 * keep them without inventing keys, which would show up as files.
 */
#include "fs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct attr_node {
	struct attr_node *next;
	bool is_dir;
	struct kvfs_attr a;
	size_t klen;
	char key[];
};

void attrs_init(struct kvfs_attrs *t)
{
	pthread_mutex_init(&t->lock, NULL);
	t->nbuckets = 1024;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	t->count = 0;
}

void attrs_destroy(struct kvfs_attrs *t)
{
	for (size_t i = 0; t->buckets && i < t->nbuckets; i++) {
		struct attr_node *n = t->buckets[i];
		while (n) {
			struct attr_node *next = n->next;
			free(n);
			n = next;
		}
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
}

static struct attr_node **slot(struct kvfs_attrs *t, const char *key, size_t klen, bool is_dir)
{
	struct attr_node **pp = &t->buckets[kvfs_hash(key, klen, is_dir) % t->nbuckets];

	for (; *pp; pp = &(*pp)->next)
		if ((*pp)->is_dir == is_dir && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0)
			break;
	return pp;
}

static void grow(struct kvfs_attrs *t)
{
	size_t nb = t->nbuckets * 4;
	struct attr_node **b = calloc(nb, sizeof(*b));

	if (!b)
		return;  /* keep the smaller table: slower, still correct */
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct attr_node *n = t->buckets[i];
		while (n) {
			struct attr_node *next = n->next;
			size_t j = kvfs_hash(n->key, n->klen, n->is_dir) % nb;
			n->next = b[j];
			b[j] = n;
			n = next;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = nb;
}

bool attrs_get(struct kvfs_attrs *t, const char *key, size_t klen, bool is_dir,
	       struct kvfs_attr *out)
{
	pthread_mutex_lock(&t->lock);
	struct attr_node *n = *slot(t, key, klen, is_dir);
	if (n)
		*out = n->a;
	pthread_mutex_unlock(&t->lock);
	return n != NULL;
}

int attrs_put(struct kvfs_attrs *t, const char *key, size_t klen, bool is_dir,
	      const struct kvfs_attr *a)
{
	int rc = 0;

	pthread_mutex_lock(&t->lock);
	struct attr_node **pp = slot(t, key, klen, is_dir);
	if (*pp) {
		(*pp)->a = *a;
	} else {
		struct attr_node *n = malloc(sizeof(*n) + klen);
		if (!n) {
			rc = -ENOMEM;
		} else {
			n->next = NULL;
			n->is_dir = is_dir;
			n->a = *a;
			n->klen = klen;
			memcpy(n->key, key, klen);
			*pp = n;
			if (++t->count > t->nbuckets * 2)
				grow(t);
		}
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}

void attrs_forget(struct kvfs_attrs *t, const char *key, size_t klen, bool is_dir)
{
	pthread_mutex_lock(&t->lock);
	struct attr_node **pp = slot(t, key, klen, is_dir);
	if (*pp) {
		struct attr_node *n = *pp;
		*pp = n->next;
		free(n);
		t->count--;
	}
	pthread_mutex_unlock(&t->lock);
}

static bool moves(const struct attr_node *n, const char *from, size_t flen)
{
	if (n->klen == flen)
		return memcmp(n->key, from, flen) == 0;
	return n->klen > flen && memcmp(n->key, from, flen) == 0 && n->key[flen] == '/';
}

void attrs_rename(struct kvfs_attrs *t, const char *from, size_t flen, const char *to,
		  size_t tlen, bool subtree)
{
	struct attr_node *moved = NULL;
	struct kvfs_attr a;

	if (!subtree) {
		/* One file (rsync renames every file it writes): no table scan. */
		for (int is_dir = 0; is_dir < 2; is_dir++) {
			if (attrs_get(t, from, flen, is_dir, &a)) {
				attrs_forget(t, from, flen, is_dir);
				attrs_put(t, to, tlen, is_dir, &a);
			}
		}
		return;
	}
	pthread_mutex_lock(&t->lock);
	/* Unhook every moving entry first, then re-insert under its new key. */
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct attr_node **pp = &t->buckets[i];
		while (*pp) {
			struct attr_node *n = *pp;
			if (moves(n, from, flen)) {
				*pp = n->next;
				n->next = moved;
				moved = n;
				t->count--;
			} else {
				pp = &n->next;
			}
		}
	}
	pthread_mutex_unlock(&t->lock);
	while (moved) {
		struct attr_node *n = moved;
		size_t nk = tlen + (n->klen - flen);
		char *k = malloc(nk ? nk : 1);
		moved = n->next;
		if (k) {
			memcpy(k, to, tlen);
			memcpy(k + tlen, n->key + flen, n->klen - flen);
			attrs_put(t, k, nk, n->is_dir, &n->a);
			free(k);
		}
		free(n);
	}
}
