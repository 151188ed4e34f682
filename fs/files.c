/*
 * files.c - open files.  Every open handle of one key shares one buffer,
 * as handles of one inode share the page cache: a write through one handle
 * is read through another at once, and the value goes to the store with
 * one set when a handle is flushed (docs/mapping.md rules F3-F5).
 */
#include "fs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 4096

void files_init(struct kvfs_files *t)
{
	pthread_mutex_init(&t->lock, NULL);
	t->nbuckets = NBUCKETS;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
}

static void file_free(struct kvfs_file *f)
{
	pthread_mutex_destroy(&f->lock);
	free(f->key);
	free(f->data);
	free(f);
}

void files_destroy(struct kvfs_files *t)
{
	for (size_t i = 0; t->buckets && i < t->nbuckets; i++) {
		struct kvfs_file *f = t->buckets[i];
		while (f) {
			struct kvfs_file *next = f->next;
			file_free(f);
			f = next;
		}
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
}

static struct kvfs_file **bucket(struct kvfs_files *t, const char *key, size_t klen)
{
	return &t->buckets[kvfs_hash(key, klen, 0) % t->nbuckets];
}

static struct kvfs_file *lookup(struct kvfs_files *t, const char *key, size_t klen)
{
	for (struct kvfs_file *f = *bucket(t, key, klen); f; f = f->next)
		if (f->klen == klen && memcmp(f->key, key, klen) == 0 && !f->unlinked)
			return f;
	return NULL;
}

struct kvfs_file *files_find(struct kvfs_files *t, const char *key, size_t klen)
{
	pthread_mutex_lock(&t->lock);
	struct kvfs_file *f = lookup(t, key, klen);
	if (f)
		f->refs++;
	pthread_mutex_unlock(&t->lock);
	return f;
}

struct kvfs_file *files_get(struct kvfs_files *t, const char *key, size_t klen)
{
	pthread_mutex_lock(&t->lock);
	struct kvfs_file *f = lookup(t, key, klen);
	if (f) {
		f->refs++;
	} else if ((f = calloc(1, sizeof(*f))) && (f->key = malloc(klen + 1))) {
		memcpy(f->key, key, klen);
		f->key[klen] = '\0';
		f->klen = klen;
		f->refs = 1;
		pthread_mutex_init(&f->lock, NULL);
		struct kvfs_file **b = bucket(t, key, klen);
		f->next = *b;
		*b = f;
	} else {
		free(f);
		f = NULL;
	}
	pthread_mutex_unlock(&t->lock);
	return f;
}

static void unhook(struct kvfs_files *t, struct kvfs_file *f)
{
	for (struct kvfs_file **pp = bucket(t, f->key, f->klen); *pp; pp = &(*pp)->next) {
		if (*pp == f) {
			*pp = f->next;
			return;
		}
	}
}

void files_open_size(struct kvfs_files *t, const char *key, size_t klen, uint64_t *size)
{
	struct kvfs_file *f = files_find(t, key, klen);

	if (!f)
		return;
	pthread_mutex_lock(&f->lock);
	if (f->dirty || f->loaded)
		*size = f->len;
	pthread_mutex_unlock(&f->lock);
	files_put(t, f);
}

void files_ref(struct kvfs_files *t, struct kvfs_file *f)
{
	pthread_mutex_lock(&t->lock);
	f->refs++;
	pthread_mutex_unlock(&t->lock);
}

void files_put(struct kvfs_files *t, struct kvfs_file *f)
{
	bool last;

	pthread_mutex_lock(&t->lock);
	last = --f->refs == 0;
	if (last)
		unhook(t, f);
	pthread_mutex_unlock(&t->lock);
	if (last)
		file_free(f);
}

static bool under(const struct kvfs_file *f, const char *from, size_t flen, bool subtree)
{
	if (f->klen == flen)
		return memcmp(f->key, from, flen) == 0;
	return subtree && f->klen > flen && memcmp(f->key, from, flen) == 0 && f->key[flen] == '/';
}

/* The open files at key or under key/ (key NULL: all), each with a reference. */
static size_t collect(struct kvfs_files *t, const char *key, size_t klen, struct kvfs_file ***out)
{
	size_t n = 0, cap = 64;
	struct kvfs_file **all = malloc(cap * sizeof(*all));

	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; all && i < t->nbuckets; i++) {
		for (struct kvfs_file *f = t->buckets[i]; f; f = f->next) {
			if (key && !under(f, key, klen, true))
				continue;
			if (n == cap) {
				struct kvfs_file **a = realloc(all, 2 * cap * sizeof(*all));
				if (!a)
					break;
				all = a;
				cap *= 2;
			}
			f->refs++;
			all[n++] = f;
		}
	}
	pthread_mutex_unlock(&t->lock);
	*out = all;
	return n;
}

void files_each(struct kvfs_files *t, const char *key, size_t klen,
		void (*fn)(struct kvfs *, struct kvfs_file *), struct kvfs *fs)
{
	struct kvfs_file **all;
	size_t n = collect(t, key, klen, &all);

	/* fn talks to the store, so it must not run under the table lock. */
	for (size_t i = 0; i < n; i++) {
		fn(fs, all[i]);
		files_put(t, all[i]);
	}
	free(all);
}

size_t files_hold(struct kvfs *fs, const char *key, size_t klen, struct kvfs_file ***out)
{
	size_t n = collect(&fs->files, key, klen, out);

	for (size_t i = 0; i < n; i++) {
		struct kvfs_file *f = (*out)[i];
		pthread_mutex_lock(&f->lock);
		if (!f->error) {
			int rc = file_commit(fs, f);
			if (rc)
				f->error = rc;  /* for the file's next close or fsync */
		}
	}
	return n;
}

void files_release(struct kvfs_files *t, struct kvfs_file **all, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		pthread_mutex_unlock(&all[i]->lock);
		files_put(t, all[i]);
	}
	free(all);
}

void files_unlinked(struct kvfs_files *t, const char *key, size_t klen)
{
	pthread_mutex_lock(&t->lock);
	struct kvfs_file *f = lookup(t, key, klen);
	if (f)
		f->unlinked = true;  /* open handles keep their data, the store forgets it */
	pthread_mutex_unlock(&t->lock);
}

void files_rename(struct kvfs_files *t, const char *from, size_t flen, const char *to,
		  size_t tlen, bool subtree)
{
	struct kvfs_file *moved = NULL;

	pthread_mutex_lock(&t->lock);
	if (!subtree) {
		struct kvfs_file *victim = lookup(t, to, tlen);
		if (victim)
			victim->unlinked = true;
	}
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct kvfs_file **pp = &t->buckets[i];
		while (*pp) {
			struct kvfs_file *f = *pp;
			if (!f->unlinked && under(f, from, flen, subtree)) {
				*pp = f->next;
				f->next = moved;
				moved = f;
			} else {
				pp = &f->next;
			}
		}
	}
	while (moved) {
		struct kvfs_file *f = moved;
		size_t nk = tlen + (f->klen - flen);
		char *k = malloc(nk + 1);
		moved = f->next;
		if (k) {
			memcpy(k, to, tlen);
			memcpy(k + tlen, f->key + flen, f->klen - flen);
			k[nk] = '\0';
			free(f->key);
			f->key = k;
			f->klen = nk;
		} else {
			f->unlinked = true;  /* cannot follow the rename: stop committing */
		}
		struct kvfs_file **b = bucket(t, f->key, f->klen);
		f->next = *b;
		*b = f;
	}
	pthread_mutex_unlock(&t->lock);
}

int file_resize(struct kvfs_file *f, size_t len)
{
	if (len > f->cap) {
		size_t cap = f->cap ? f->cap : 4096;
		while (cap < len)
			cap = cap > SIZE_MAX / 2 ? len : cap * 2;
		char *d = realloc(f->data, cap);
		if (!d)
			return -ENOMEM;
		f->data = d;
		f->cap = cap;
	}
	if (len > f->len)
		memset(f->data + f->len, 0, len - f->len);  /* a gap reads as zeros (F1) */
	f->len = len;
	return 0;
}

/* The key under the table lock: a concurrent rename may replace it. */
char *file_key(struct kvfs *fs, struct kvfs_file *f, size_t *klen, bool *unlinked)
{
	pthread_mutex_lock(&fs->files.lock);
	char *k = malloc(f->klen + 1);
	if (k) {
		memcpy(k, f->key, f->klen + 1);
		*klen = f->klen;
	}
	if (unlinked)
		*unlinked = f->unlinked;
	pthread_mutex_unlock(&fs->files.lock);
	return k;
}

int file_load(struct kvfs *fs, struct kvfs_file *f)
{
	size_t klen, len;
	bool unlinked;
	char *val;
	int rc;

	if (f->loaded || f->dirty)
		return 0;
	char *key = file_key(fs, f, &klen, &unlinked);
	if (!key)
		return -ENOMEM;
	rc = kv_get(fs->store, key, klen, &val, &len, NULL);
	free(key);
	if (rc) {
		if (rc != -ENOENT)
			health_note_error(fs, "get", rc);
		return rc;
	}
	free(f->data);
	f->data = val;
	f->len = len;
	f->cap = len + 1;
	f->loaded = true;
	return 0;
}

int file_commit(struct kvfs *fs, struct kvfs_file *f)
{
	size_t klen;
	bool unlinked;
	int rc;

	if (f->error) {
		/* A write was refused: commit nothing, so the old value stays. */
		rc = f->error;
		f->error = 0;
		f->dirty = false;
		f->loaded = false;
		f->len = 0;
		return rc;
	}
	if (!f->dirty)
		return 0;
	char *key = file_key(fs, f, &klen, &unlinked);
	if (!key)
		return -ENOMEM;
	rc = unlinked ? 0 : kv_set(fs->store, key, klen, f->data ? f->data : "", f->len);
	free(key);
	f->dirty = false;
	f->loaded = rc == 0;  /* the buffer is the value (or, unlinked, all there is of it) */
	if (rc) {
		/* Reported once, through close() or fsync(); then the store's value
		 * is what every handle reads again. */
		f->loaded = false;
		f->len = 0;
		health_note_error(fs, "set", rc);
	}
	return rc;
}

int file_flush(struct kvfs *fs, struct kvfs_file *f)
{
	pthread_mutex_lock(&f->lock);
	int rc = file_commit(fs, f);
	pthread_mutex_unlock(&f->lock);
	return rc;
}
