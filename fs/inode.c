/*
 * inode.c - the inode table (see inode.h).  One lock guards the table,
 * the names and the counts; nothing here talks to the store.
 */
#include "inode.h"
#include "fs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static size_t hash(struct inodes *t, const struct inode *parent, const char *name)
{
	return kvfs_hash(name, strlen(name), (uintptr_t)parent) & (t->nbuckets - 1);
}

int inodes_init(struct inodes *t)
{
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	t->nbuckets = 1024;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	t->root.is_dir = true;
	t->root.nlookup = 1;
	t->root.refs = 1;
	t->root.st.st_ino = FUSE_ROOT_ID;
	t->next_ino = FUSE_ROOT_ID + 1;
	return t->buckets ? 0 : -ENOMEM;
}

void inodes_destroy(struct inodes *t)
{
	/* Only hashed inodes are reachable; what the kernel still held of the
	 * unlinked ones goes with the process. */
	for (size_t i = 0; t->buckets && i < t->nbuckets; i++) {
		for (struct inode *n = t->buckets[i], *next; n; n = next) {
			next = n->next;
			if (n->file)
				t->file_drop(t->ctx, n->file);
			free(n->name);
			free(n->gone);
			free(n);
		}
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
}

struct inode *inode_of(struct inodes *t, fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? &t->root : (struct inode *)(uintptr_t)ino;
}

static fuse_ino_t id_of(struct inodes *t, struct inode *n)
{
	return n == &t->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)n;
}

static struct inode *find(struct inodes *t, struct inode *parent, const char *name)
{
	for (struct inode *n = t->buckets[hash(t, parent, name)]; n; n = n->next)
		if (n->parent == parent && strcmp(n->name, name) == 0)
			return n;
	return NULL;
}

static void unhash(struct inodes *t, struct inode *n)
{
	for (struct inode **pp = &t->buckets[hash(t, n->parent, n->name)]; *pp; pp = &(*pp)->next) {
		if (*pp == n) {
			*pp = n->next;
			t->count--;
			return;
		}
	}
}

static void rehash(struct inodes *t, struct inode *n)
{
	struct inode **b = &t->buckets[hash(t, n->parent, n->name)];

	n->next = *b;
	*b = n;
	t->count++;
}

static void grow(struct inodes *t)
{
	size_t old = t->nbuckets;
	struct inode **ob = t->buckets, **nb = calloc(old * 2, sizeof(*nb));

	if (!nb)
		return;  /* longer chains, still correct */
	t->buckets = nb;
	t->nbuckets = old * 2;
	t->count = 0;
	for (size_t i = 0; i < old; i++) {
		for (struct inode *n = ob[i], *next; n; n = next) {
			next = n->next;
			rehash(t, n);
		}
	}
	free(ob);
}

/* Drop one reference; the last one frees the inode and its parent's. */
static void put(struct inodes *t, struct inode *n)
{
	while (n && n != &t->root && --n->refs == 0) {
		struct inode *parent = n->parent;
		if (n->name)
			unhash(t, n);
		if (n->file)
			t->file_drop(t->ctx, n->file);
		free(n->name);
		free(n->gone);
		free(n);
		n = parent;
	}
}

/* Take n's name away (unlinked or replaced); it lives while referenced. */
static void detach(struct inodes *t, struct inode *n)
{
	unhash(t, n);
	free(n->name);
	n->name = NULL;
}

/* Length of n's path, or -1 when n or a directory above it has no name. */
static ssize_t path_len(struct inodes *t, struct inode *n)
{
	size_t len = 0;

	for (; n != &t->root; n = n->parent) {
		if (!n->name)
			return -1;
		len += 1 + strlen(n->name);
	}
	return (ssize_t)len;
}

int inode_path(struct inodes *t, fuse_ino_t ino, const char *name, char **path)
{
	struct inode *n = inode_of(t, ino);
	size_t extra = name ? 1 + strlen(name) : 0;
	int rc = 0;

	pthread_mutex_lock(&t->lock);
	ssize_t len = path_len(t, n);
	if (len < 0) {
		rc = n->gone && !n->name ? -ESTALE : -ENOENT;
		*path = rc == -ESTALE ? strdup(n->gone) : NULL;
		if (rc == -ESTALE && !*path)
			rc = -ENOMEM;
	} else if (!(*path = malloc((size_t)len + extra + 2))) {
		rc = -ENOMEM;
	} else {
		char *p = *path + len;
		*p = '\0';
		for (struct inode *m = n; m != &t->root; m = m->parent) {
			size_t l = strlen(m->name);
			p -= l;
			memcpy(p, m->name, l);
			*--p = '/';
		}
		if (len == 0 && !name)
			strcpy(*path, "/");
		if (name) {
			(*path)[len] = '/';
			strcpy(*path + len + 1, name);
		}
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}

fuse_ino_t inode_link(struct inodes *t, fuse_ino_t parent, const char *name, struct stat *st,
		      bool replace)
{
	struct inode *p = inode_of(t, parent), *n;
	bool is_dir = S_ISDIR(st->st_mode);
	fuse_ino_t id = 0;

	pthread_mutex_lock(&t->lock);
	n = find(t, p, name);
	if (n && n->is_dir != is_dir) {
		if (!replace) {
			pthread_mutex_unlock(&t->lock);
			return 0;
		}
		detach(t, n);  /* another client changed its type: a new inode */
		n = NULL;
	}
	if (!n && (n = calloc(1, sizeof(*n))) && !(n->name = strdup(name))) {
		free(n);
		n = NULL;
	}
	if (n) {
		if (!n->parent) {
			n->parent = p;
			p->refs++;
			n->is_dir = is_dir;
			n->st.st_ino = t->next_ino++;
			if (t->count >= t->nbuckets)
				grow(t);
			rehash(t, n);
		}
		if (n->nlookup++ == 0)
			n->refs++;
		st->st_ino = n->st.st_ino;
		n->st = *st;
		id = id_of(t, n);
	}
	pthread_mutex_unlock(&t->lock);
	return id;
}

void inode_forget(struct inodes *t, fuse_ino_t ino, uint64_t count)
{
	struct inode *n = inode_of(t, ino);

	if (n == &t->root)
		return;
	pthread_mutex_lock(&t->lock);
	if (count > n->nlookup)
		count = n->nlookup;
	n->nlookup -= count;
	if (count && n->nlookup == 0)
		put(t, n);
	pthread_mutex_unlock(&t->lock);
}

/* Give a detached inode the open file it keeps; false if it has one. */
static bool keep_file(struct inode *n, void *file)
{
	if (!n || !file || n->file)
		return false;
	n->file = file;
	return true;
}

void inode_unlink(struct inodes *t, fuse_ino_t parent, const char *name, void *file)
{
	pthread_mutex_lock(&t->lock);
	struct inode *n = find(t, inode_of(t, parent), name);
	if (n) {
		detach(t, n);
		n->st.st_nlink = 0;
	}
	if (keep_file(n, file))
		file = NULL;
	if (file)
		t->file_drop(t->ctx, file);
	pthread_mutex_unlock(&t->lock);
}

void inode_move(struct inodes *t, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		const char *newname, void *victim_file)
{
	struct inode *p = inode_of(t, parent), *np = inode_of(t, newparent);
	char *nn = strdup(newname), *was = NULL;

	if (inode_path(t, newparent, newname, &was))
		was = NULL;
	pthread_mutex_lock(&t->lock);
	struct inode *n = find(t, p, name), *victim = find(t, np, newname);
	if (victim && victim != n) {
		detach(t, victim);
		if (!victim->is_dir) {
			free(victim->gone);  /* an open() that raced the rename finds the new file */
			victim->gone = was;
			was = NULL;
		}
		victim->st.st_nlink = 0;
		if (keep_file(victim, victim_file))
			victim_file = NULL;
	}
	if (victim_file)
		t->file_drop(t->ctx, victim_file);
	if (n && victim != n) {
		unhash(t, n);
		if (nn) {
			free(n->name);
			n->name = nn;
			nn = NULL;
			np->refs++;
			struct inode *old = n->parent;
			n->parent = np;
			rehash(t, n);
			put(t, old);
		} else {
			free(n->name);
			n->name = NULL;  /* cannot follow: the kernel looks it up again */
		}
	}
	pthread_mutex_unlock(&t->lock);
	free(nn);
	free(was);
}

void inode_remember(struct inodes *t, fuse_ino_t ino, struct stat *st)
{
	struct inode *n = inode_of(t, ino);

	pthread_mutex_lock(&t->lock);
	st->st_ino = n->st.st_ino;
	if (!n->name && n != &t->root)
		st->st_nlink = 0;
	n->st = *st;
	pthread_mutex_unlock(&t->lock);
}

bool inode_recall(struct inodes *t, fuse_ino_t ino, struct stat *st)
{
	struct inode *n = inode_of(t, ino);

	off_t size;

	void *file;

	pthread_mutex_lock(&t->lock);
	*st = n->st;
	if ((file = n->file))
		t->file_hold(t->ctx, file);
	pthread_mutex_unlock(&t->lock);
	/* The file's lock may wait for the store: not under the table's. */
	if (file && t->file_size(t->ctx, file, &size)) {
		st->st_size = size;
		st->st_blocks = (size + 511) / 512;
	}
	if (file)
		t->file_drop(t->ctx, file);
	return st->st_mode != 0;
}
