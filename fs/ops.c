/*
 * ops.c - the FUSE operations: paths in, kv_*() calls out.
 *
 * Every path is decoded by keymap (docs/mapping.md) into the store key it
 * names; the key is the mount's root prefix plus the decoded relative key.
 * What a key is (file, directory or nothing) is asked of the store each
 * time; the kernel caches the answer for entry_timeout/attr_timeout.
 */
#include "fs.h"
#include "keymap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct kvfs *FS(void)
{
	return fuse_get_context()->private_data;
}

/* ---- names ---- */

/* What a path names: a decoded kind and the full store key. */
struct node {
	enum keymap_kind kind;
	char *key;
	size_t klen;
};

enum ntype { NT_NONE, NT_FILE, NT_DIR };

static void node_free(struct node *n)
{
	free(n->key);
	n->key = NULL;
}

static int node_decode(struct kvfs *fs, const char *path, struct node *n)
{
	struct keymap_res r;
	int rc = keymap_decode(path, &r);

	if (rc)
		return rc;
	n->kind = r.kind;
	n->klen = fs->root_len + r.key_len;
	n->key = malloc(n->klen + 2);  /* room for a '/' and a NUL */
	if (!n->key) {
		free(r.key);
		return -ENOMEM;
	}
	memcpy(n->key, fs->root, fs->root_len);
	memcpy(n->key + fs->root_len, r.key, r.key_len);
	n->key[n->klen] = '\0';
	free(r.key);
	return 0;
}

/* A key directory lists key + "/": write the '/' into the node's spare
 * byte and return the prefix length; unslash() takes it away again. */
static size_t slash(struct node *n)
{
	n->key[n->klen] = '/';
	n->key[n->klen + 1] = '\0';
	return n->klen + 1;
}

static void unslash(struct node *n)
{
	n->key[n->klen] = '\0';
}

/* The listing prefix of a directory node (the root and continuation
 * directories list their key as it is). */
static size_t dir_prefix(struct node *n)
{
	return n->kind == KM_KEY ? slash(n) : n->klen;
}

struct first_item {
	bool found;
	struct kv_entry e;
	char *skip;      /* an item to ignore: the directory's own marker */
	size_t skip_len;
	int want;        /* stop after this many counted items */
	int count;
};

static int first_cb(void *ctx, const struct kv_entry *e)
{
	struct first_item *fi = ctx;

	if (fi->skip && !e->is_prefix && e->size == 0 && e->key_len == fi->skip_len &&
	    memcmp(e->key, fi->skip, e->key_len) == 0)
		return 0;
	fi->found = true;
	return ++fi->count >= fi->want;
}

/* Is there any key under prefix?  One list call that stops at the first
 * item (with skip set: any key other than the marker `skip`). */
static int any_under(struct kvfs *fs, const char *prefix, size_t plen, const char *skip,
		     size_t skip_len, bool *found)
{
	struct first_item fi = {.skip = (char *)skip, .skip_len = skip_len, .want = 1};
	struct kv_list_req req = {.prefix = prefix, .prefix_len = plen, .delim = '/',
				  .limit = skip ? 2 : 1};
	bool more;
	int rc = kv_list(fs->store, &req, first_cb, &fi, &more);

	if (rc > 0)
		rc = 0;
	if (rc == 0 && !fi.found && skip && more) {
		/* Only the marker came back in a short page: look past it. */
		rc = kv_list_all(fs->store, prefix, plen, '/', first_cb, &fi);
		if (rc > 0)
			rc = 0;
	}
	*found = fi.found;
	return rc;
}

/* ---- continuation directories made by mkdir (M7) ---- */

static bool cont_known(struct kvfs *fs, const char *path)
{
	bool found = false;

	pthread_mutex_lock(&fs->cont_lock);
	for (size_t i = 0; i < fs->ncont && !found; i++)
		found = strcmp(fs->cont_dirs[i], path) == 0;
	pthread_mutex_unlock(&fs->cont_lock);
	return found;
}

static int cont_add(struct kvfs *fs, const char *path)
{
	int rc = 0;

	pthread_mutex_lock(&fs->cont_lock);
	char **a = realloc(fs->cont_dirs, (fs->ncont + 1) * sizeof(*a));
	if (a && (a[fs->ncont] = strdup(path))) {
		fs->cont_dirs = a;
		fs->ncont++;
	} else {
		if (a)
			fs->cont_dirs = a;
		rc = -ENOMEM;
	}
	pthread_mutex_unlock(&fs->cont_lock);
	return rc;
}

static bool cont_remove(struct kvfs *fs, const char *path)
{
	bool found = false;

	pthread_mutex_lock(&fs->cont_lock);
	for (size_t i = 0; i < fs->ncont && !found; i++) {
		if (strcmp(fs->cont_dirs[i], path) == 0) {
			free(fs->cont_dirs[i]);
			fs->cont_dirs[i] = fs->cont_dirs[--fs->ncont];
			found = true;
		}
	}
	pthread_mutex_unlock(&fs->cont_lock);
	return found;
}

/* Does a key of the store run through the continuation directory `path`? */
struct through {
	struct kvfs *fs;
	const char *path;
	size_t plen;
	bool found;
};

static int through_cb(void *ctx, const struct kv_entry *e)
{
	struct through *t = ctx;
	size_t rl = e->key_len - t->fs->root_len - (e->is_prefix ? 1 : 0);
	char *p = keymap_encode(e->key + t->fs->root_len, rl);

	if (!p)
		return -ENOMEM;
	t->found = strncmp(p, t->path, t->plen) == 0 && p[t->plen] == '/';
	free(p);
	return t->found;
}

static int cont_used(struct kvfs *fs, struct node *n, const char *path, bool *found)
{
	struct through t = {.fs = fs, .path = path, .plen = strlen(path)};
	int rc = kv_list_all(fs->store, n->key, n->klen, '/', through_cb, &t);

	*found = t.found;
	return rc < 0 ? rc : 0;
}

/* ---- what a node is ---- */

static int node_type(struct kvfs *fs, struct node *n, const char *path, enum ntype *t,
		     uint64_t *size)
{
	bool found;
	int rc;

	*size = 0;
	switch (n->kind) {
	case KM_ROOT:
		*t = NT_DIR;
		return 0;
	case KM_HEALTH:
		*t = NT_FILE;
		return 0;
	case KM_CONT:
		rc = cont_used(fs, n, path, &found);
		*t = (found || cont_known(fs, path)) ? NT_DIR : NT_NONE;
		return rc;
	case KM_KEY:
	case KM_VALUE:
		break;
	}
	rc = any_under(fs, n->key, slash(n), NULL, 0, &found);
	unslash(n);
	if (rc)
		return rc;
	if (n->kind == KM_KEY && found) {
		*t = NT_DIR;
		return 0;
	}
	if (n->kind == KM_VALUE && !found) {
		*t = NT_NONE;  /* no longer a directory: the value is the plain file */
		return 0;
	}
	rc = kv_stat(fs->store, n->key, n->klen, size);
	if (rc == -ENOENT) {
		*t = NT_NONE;
		return 0;
	}
	*t = rc ? NT_NONE : NT_FILE;
	return rc;
}

/* ---- attributes ---- */

static void fill_stat(struct kvfs *fs, const char *key, size_t klen, enum ntype t,
		      uint64_t size, struct stat *st)
{
	struct kvfs_attr a;

	memset(st, 0, sizeof(*st));
	if (t == NT_DIR) {
		st->st_mode = S_IFDIR | (0755 & ~fs->umask);
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | (0644 & ~fs->umask);
		st->st_nlink = 1;
		st->st_size = (off_t)size;
		st->st_blocks = (blkcnt_t)((size + 511) / 512);
	}
	st->st_blksize = 4096;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_atim = st->st_mtim = st->st_ctim = fs->mounted_at;
	if (key && attrs_get(&fs->attrs, key, klen, t == NT_DIR, &a)) {
		st->st_mode = (st->st_mode & S_IFMT) | (a.mode & 07777);
		st->st_uid = a.uid;
		st->st_gid = a.gid;
		st->st_atim = a.atime;
		st->st_mtim = a.mtime;
		st->st_ctim = a.ctime;
	}
}

static void default_attr(struct kvfs *fs, bool is_dir, struct kvfs_attr *a)
{
	a->mode = (is_dir ? 0755 : 0644) & ~fs->umask;
	a->uid = fs->uid;
	a->gid = fs->gid;
	a->atime = a->mtime = a->ctime = fs->mounted_at;
}

/* A write through the mount sets the file's times to now. */
static void touch(struct kvfs *fs, const char *key, size_t klen)
{
	struct kvfs_attr a;
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	if (!attrs_get(&fs->attrs, key, klen, false, &a))
		default_attr(fs, false, &a);
	a.mtime = a.ctime = now;
	attrs_put(&fs->attrs, key, klen, false, &a);
}

/* ---- open handles ---- */

struct handle {
	bool health;
	struct kvfs_file *f;
	char *text;       /* .health contents, made at open */
	size_t len;
};

static struct handle *H(struct fuse_file_info *fi)
{
	return (struct handle *)(uintptr_t)fi->fh;
}

static int kvfs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct kvfs *fs = FS();
	struct node n;
	enum ntype t;
	uint64_t size;
	int rc;

	if (fi && fi->fh && !H(fi)->health) {
		struct kvfs_file *f = H(fi)->f;
		pthread_mutex_lock(&f->lock);
		int lrc = file_load(fs, f);
		size = f->len;
		pthread_mutex_lock(&fs->files.lock);
		char *key = strndup(f->key, f->klen);  /* only for the attrs lookup */
		size_t klen = f->klen;
		pthread_mutex_unlock(&fs->files.lock);
		pthread_mutex_unlock(&f->lock);
		fill_stat(fs, key, klen, NT_FILE, lrc ? 0 : size, st);
		free(key);
		return 0;
	}
	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	if (n.kind == KM_HEALTH) {
		fill_stat(fs, NULL, 0, NT_FILE, 0, st);
		st->st_mode = S_IFREG | 0444;
		node_free(&n);
		return 0;
	}
	rc = node_type(fs, &n, path, &t, &size);
	if (rc == 0 && t == NT_NONE)
		rc = -ENOENT;
	if (rc == 0) {
		if (t == NT_FILE) {
			struct kvfs_file *f = files_find(&fs->files, n.key, n.klen);
			if (f) {
				pthread_mutex_lock(&f->lock);
				if (f->dirty || f->loaded)
					size = f->len;
				pthread_mutex_unlock(&f->lock);
				files_put(&fs->files, f);
			}
		}
		fill_stat(fs, n.key, n.klen, t, size, st);
	}
	node_free(&n);
	return rc;
}

/* ---- directories ---- */

struct dirent_item {
	char *name;
	bool is_dir;
	uint64_t size;
	char *key;        /* full key, for attributes */
	size_t klen;
};

struct dirlist {
	struct kvfs *fs;
	const char *path;     /* the directory, "/" for the root */
	size_t pathlen;       /* 0 for the root */
	const char *marker;   /* this directory's own marker key */
	size_t marker_len;
	struct dirent_item *items;
	size_t n, cap;
	/* open addressing on names: index + 1, 0 = empty */
	size_t *slots;
	size_t nslots;
};

static size_t *name_slot(struct dirlist *d, const char *name)
{
	size_t i = kvfs_hash(name, strlen(name), 7) & (d->nslots - 1);

	while (d->slots[i] && strcmp(d->items[d->slots[i] - 1].name, name) != 0)
		i = (i + 1) & (d->nslots - 1);
	return &d->slots[i];
}

static int dir_grow(struct dirlist *d)
{
	size_t ns = d->nslots ? d->nslots * 2 : 256;
	size_t *slots = calloc(ns, sizeof(*slots));
	struct dirent_item *items = realloc(d->items, (ns / 2) * sizeof(*items));

	if (!slots || !items) {
		free(slots);
		if (items)
			d->items = items;
		return -ENOMEM;
	}
	d->items = items;
	d->cap = ns / 2;
	free(d->slots);
	d->slots = slots;
	d->nslots = ns;
	for (size_t i = 0; i < d->n; i++)
		*name_slot(d, d->items[i].name) = i + 1;
	return 0;
}

/* Add one child; a name seen before stays once, a directory if either was. */
static int dir_add(struct dirlist *d, const char *name, size_t nlen, bool is_dir, uint64_t size,
		   const char *key, size_t klen)
{
	char *nm = strndup(name, nlen);

	if (!nm)
		return -ENOMEM;
	if (d->n + 1 > d->cap && dir_grow(d)) {
		free(nm);
		return -ENOMEM;
	}
	size_t *slot = name_slot(d, nm);
	if (*slot) {
		struct dirent_item *it = &d->items[*slot - 1];
		if (is_dir && !it->is_dir) {
			it->is_dir = true;
			free(it->key);
			it->key = NULL;
			it->klen = 0;
			if (key && (it->key = malloc(klen ? klen : 1))) {
				memcpy(it->key, key, klen);
				it->klen = klen;
			}
		}
		free(nm);
		return 0;
	}
	struct dirent_item *it = &d->items[d->n];
	*it = (struct dirent_item){.name = nm, .is_dir = is_dir, .size = size};
	if (key && (it->key = malloc(klen ? klen : 1))) {
		memcpy(it->key, key, klen);
		it->klen = klen;
	}
	*slot = ++d->n;
	return 0;
}

static int dir_item_cb(void *ctx, const struct kv_entry *e)
{
	struct dirlist *d = ctx;
	struct kvfs *fs = d->fs;
	size_t klen = e->key_len - (e->is_prefix ? 1 : 0);

	/* The directory's marker is the directory itself (M4). */
	if (!e->is_prefix && e->size == 0 && d->marker && e->key_len == d->marker_len &&
	    memcmp(e->key, d->marker, e->key_len) == 0)
		return 0;
	if (e->key_len < fs->root_len)
		return 0;
	char *p = keymap_encode(e->key + fs->root_len, klen - fs->root_len);
	if (!p)
		return -ENOMEM;
	/* The item belongs here if its path runs through this directory. */
	const char *rest = p + d->pathlen;
	int rc = 0;
	if (strncmp(p, d->path, d->pathlen) == 0 && rest[0] == '/' && rest[1]) {
		const char *name = rest + 1;
		const char *slash = strchr(name, '/');
		size_t nlen = slash ? (size_t)(slash - name) : strlen(name);
		bool is_dir = e->is_prefix || slash;
		rc = dir_add(d, name, nlen, is_dir, e->size, slash ? NULL : e->key, klen);
	}
	free(p);
	return rc;
}

static void dir_free(struct dirlist *d)
{
	for (size_t i = 0; i < d->n; i++) {
		free(d->items[i].name);
		free(d->items[i].key);
	}
	free(d->items);
	free(d->slots);
}

static int kvfs_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
			struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	struct kvfs *fs = FS();
	struct dirlist d = {.fs = fs, .path = path, .pathlen = strcmp(path, "/") ? strlen(path) : 0};
	struct node n;
	struct stat st;
	uint64_t size;
	int rc;

	(void)off;
	(void)fi;
	(void)flags;
	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	if (n.kind != KM_ROOT && n.kind != KM_KEY && n.kind != KM_CONT) {
		node_free(&n);
		return -ENOTDIR;
	}
	size_t plen = dir_prefix(&n);
	if (n.kind != KM_CONT) {
		d.marker = n.key;
		d.marker_len = plen;
	}
	rc = kv_list_all(fs->store, n.key, plen, '/', dir_item_cb, &d);
	unslash(&n);
	if (rc == 0 && n.kind == KM_KEY && kv_stat(fs->store, n.key, n.klen, &size) == 0)
		rc = dir_add(&d, KEYMAP_VALUE_NAME, strlen(KEYMAP_VALUE_NAME), false, size,
			     n.key, n.klen);
	if (rc == 0) {
		/* Continuation directories made here by mkdir and not yet used. */
		pthread_mutex_lock(&fs->cont_lock);
		for (size_t i = 0; i < fs->ncont && rc == 0; i++) {
			const char *c = fs->cont_dirs[i];
			const char *slash = strrchr(c, '/');
			if ((size_t)(slash - c) == d.pathlen && strncmp(c, path, d.pathlen) == 0)
				rc = dir_add(&d, slash + 1, strlen(slash + 1), true, 0, NULL, 0);
		}
		pthread_mutex_unlock(&fs->cont_lock);
	}
	if (rc) {
		health_note_error(fs, "list", rc);
		goto out;
	}

	/* "." and ".." carry no attributes: the kernel has them already. */
	filler(buf, ".", NULL, 0, 0);
	filler(buf, "..", NULL, 0, 0);
	if (n.kind == KM_ROOT) {
		fill_stat(fs, NULL, 0, NT_FILE, 0, &st);
		st.st_mode = S_IFREG | 0444;
		filler(buf, KEYMAP_HEALTH_NAME, &st, 0, FUSE_FILL_DIR_PLUS);
	}
	for (size_t i = 0; i < d.n; i++) {
		struct dirent_item *it = &d.items[i];
		uint64_t sz = it->size;
		if (!it->is_dir && it->key) {
			struct kvfs_file *f = files_find(&fs->files, it->key, it->klen);
			if (f) {
				pthread_mutex_lock(&f->lock);
				if (f->dirty || f->loaded)
					sz = f->len;
				pthread_mutex_unlock(&f->lock);
				files_put(&fs->files, f);
			}
		}
		fill_stat(fs, it->key, it->klen, it->is_dir ? NT_DIR : NT_FILE, sz, &st);
		if (filler(buf, it->name, &st, 0, FUSE_FILL_DIR_PLUS))
			break;
	}
out:
	dir_free(&d);
	node_free(&n);
	return rc;
}

static int kvfs_mkdir(const char *path, mode_t mode)
{
	struct kvfs *fs = FS();
	struct node n;
	enum ntype t;
	uint64_t size;
	int rc;

	if ((rc = node_decode(fs, path, &n)))
		return rc;
	switch (n.kind) {
	case KM_KEY:
		rc = node_type(fs, &n, path, &t, &size);
		if (rc == 0 && t != NT_NONE)
			rc = -EEXIST;
		if (rc == 0) {
			size_t plen = dir_prefix(&n);
			rc = kv_set(fs->store, n.key, plen, "", 0);
			unslash(&n);
		}
		if (rc == 0 && (mode & 07777) != (0755 & ~fs->umask)) {
			struct kvfs_attr a;
			default_attr(fs, true, &a);
			a.mode = mode & 07777;
			attrs_put(&fs->attrs, n.key, n.klen, true, &a);
		}
		health_note_error(fs, "mkdir", rc == -EEXIST ? 0 : rc);
		break;
	case KM_CONT:
		rc = node_type(fs, &n, path, &t, &size);
		if (rc == 0)
			rc = t != NT_NONE ? -EEXIST : cont_add(fs, path);
		break;
	case KM_VALUE:
		rc = -EINVAL;
		break;
	default:
		rc = -EEXIST;
	}
	node_free(&n);
	return rc;
}

static int kvfs_rmdir(const char *path)
{
	struct kvfs *fs = FS();
	struct node n;
	enum ntype t;
	uint64_t size;
	bool found;
	int rc;

	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	switch (n.kind) {
	case KM_KEY: {
		size_t plen = dir_prefix(&n);
		rc = any_under(fs, n.key, plen, n.key, plen, &found);
		if (rc == 0 && found)
			rc = -ENOTEMPTY;
		if (rc == 0) {
			rc = kv_del(fs->store, n.key, plen);
			unslash(&n);
			if (rc == -ENOENT) {
				/* No marker: a plain file is ENOTDIR, nothing at all ENOENT. */
				rc = kv_stat(fs->store, n.key, n.klen, &size) == 0 ? -ENOTDIR : -ENOENT;
			} else if (rc == 0 && kv_stat(fs->store, n.key, n.klen, &size) == 0) {
				/* The directory's value (M5) is an entry: keep the marker. */
				kv_set(fs->store, n.key, plen, "", 0);
				rc = -ENOTEMPTY;
			}
		}
		unslash(&n);
		if (rc == 0)
			attrs_forget(&fs->attrs, n.key, n.klen, true);
		break;
	}
	case KM_CONT:
		rc = node_type(fs, &n, path, &t, &size);
		if (rc == 0 && cont_used(fs, &n, path, &found) == 0 && found)
			rc = -ENOTEMPTY;
		else if (rc == 0)
			rc = cont_remove(fs, path) ? 0 : -ENOENT;
		break;
	case KM_ROOT:
		rc = -EBUSY;
		break;
	default:
		rc = -ENOTDIR;
	}
	node_free(&n);
	return rc;
}

/* ---- files ---- */

static int open_file(struct kvfs *fs, struct node *n, struct fuse_file_info *fi, bool created)
{
	struct handle *h = calloc(1, sizeof(*h));
	int rc = 0;

	if (!h)
		return -ENOMEM;
	h->f = files_get(&fs->files, n->key, n->klen);
	if (!h->f) {
		free(h);
		return -ENOMEM;
	}
	struct kvfs_file *f = h->f;
	pthread_mutex_lock(&f->lock);
	if (created || (fi->flags & O_TRUNC)) {
		if (!created)
			f->dirty = true;  /* the empty value is committed on flush */
		else if (!f->dirty)
			f->loaded = true;
		if (f->dirty || created)
			f->len = 0;
	} else if (!f->dirty) {
		f->loaded = false;  /* read afresh at every open (F5) */
		rc = file_load(fs, f);
	}
	pthread_mutex_unlock(&f->lock);
	if (rc) {
		files_put(&fs->files, f);
		free(h);
		return rc;
	}
	fi->fh = (uintptr_t)h;
	fi->keep_cache = 0;
	return 0;
}

static int kvfs_open(const char *path, struct fuse_file_info *fi)
{
	struct kvfs *fs = FS();
	struct node n;
	int rc;

	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	switch (n.kind) {
	case KM_HEALTH: {
		struct handle *h;
		if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
			rc = -EACCES;
			break;
		}
		h = calloc(1, sizeof(*h));
		if (!h || !(h->text = health_report(fs, &h->len))) {
			free(h);
			rc = -ENOMEM;
			break;
		}
		h->health = true;
		fi->fh = (uintptr_t)h;
		fi->direct_io = 1;  /* its size is not known before it is made */
		break;
	}
	case KM_KEY:
	case KM_VALUE:
		rc = open_file(fs, &n, fi, false);
		break;
	default:
		rc = -EISDIR;
	}
	node_free(&n);
	return rc;
}

static int create_node(struct kvfs *fs, const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct node n;
	uint64_t size;
	int rc;

	if ((rc = node_decode(fs, path, &n)))
		return rc;
	switch (n.kind) {
	case KM_KEY:
	case KM_VALUE:
		break;
	case KM_CONT:
		node_free(&n);
		return -EINVAL;  /* a continuation piece names a directory */
	default:
		node_free(&n);
		return -EEXIST;
	}
	/* The kernel looked the name up already, but another mount or client
	 * may have made it since: create only if still absent where the store
	 * can say so atomically. */
	if (n.kind == KM_KEY) {
		bool is_dir;
		rc = any_under(fs, n.key, slash(&n), NULL, 0, &is_dir);
		unslash(&n);
		if (rc == 0 && is_dir)
			rc = -EISDIR;
	}
	bool existed = false;
	if (rc == 0) {
		if (kv_caps(fs->store) & KV_CAP_CAS)
			rc = kv_cas(fs->store, n.key, n.klen, 0, "", 0);
		else if ((fi->flags & O_EXCL) && kv_stat(fs->store, n.key, n.klen, &size) == 0)
			rc = -ECANCELED;
		else
			rc = kv_set(fs->store, n.key, n.klen, "", 0);
		if (rc == -ECANCELED) {
			existed = true;
			rc = (fi->flags & O_EXCL) ? -EEXIST : 0;
		}
	}
	if (rc == 0 && !existed && (mode & 07777) != (0644 & ~fs->umask)) {
		struct kvfs_attr a;
		default_attr(fs, false, &a);
		a.mode = mode & 07777;
		attrs_put(&fs->attrs, n.key, n.klen, false, &a);
	}
	if (rc == 0)
		touch(fs, n.key, n.klen);
	if (rc == 0 && fi)
		rc = open_file(fs, &n, fi, !existed);
	health_note_error(fs, "create", rc == -EEXIST || rc == -EISDIR ? 0 : rc);
	node_free(&n);
	return rc;
}

static int kvfs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	return create_node(FS(), path, mode, fi);
}

static int kvfs_mknod(const char *path, mode_t mode, dev_t dev)
{
	(void)dev;
	if (!S_ISREG(mode))
		return -EPERM;  /* F7 */
	return create_node(FS(), path, mode, NULL);
}

static int kvfs_read(const char *path, char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct handle *h = H(fi);
	int rc = 0;

	(void)path;
	if (h->health) {
		if ((size_t)off >= h->len)
			return 0;
		if (size > h->len - (size_t)off)
			size = h->len - (size_t)off;
		memcpy(buf, h->text + off, size);
		return (int)size;
	}
	struct kvfs_file *f = h->f;
	pthread_mutex_lock(&f->lock);
	rc = file_load(FS(), f);
	if (rc == 0) {
		if ((size_t)off >= f->len)
			size = 0;
		else if (size > f->len - (size_t)off)
			size = f->len - (size_t)off;
		if (size)
			memcpy(buf, f->data + off, size);
		rc = (int)size;
	}
	pthread_mutex_unlock(&f->lock);
	return rc;
}

static int kvfs_write(const char *path, const char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct kvfs *fs = FS();
	struct handle *h = H(fi);
	struct kv_limits lim = kv_limits(fs->store);
	int rc;

	(void)path;
	if (h->health)
		return -EACCES;
	struct kvfs_file *f = h->f;
	pthread_mutex_lock(&f->lock);
	rc = file_load(fs, f);
	if (rc == -ENOENT) {
		f->loaded = true;  /* removed by someone else: write a new value */
		f->len = 0;
		rc = 0;
	}
	if (rc == 0) {
		size_t at = (fi->flags & O_APPEND) ? f->len : (size_t)off;
		if (lim.max_value && (at > lim.max_value || size > lim.max_value - at))
			rc = -EFBIG;  /* the store could never take it (F4) */
		else if ((rc = file_resize(f, at + size > f->len ? at + size : f->len)) == 0) {
			memcpy(f->data + at, buf, size);
			f->dirty = true;
			rc = (int)size;
		}
	}
	pthread_mutex_unlock(&f->lock);
	return rc;
}

static int commit_handle(struct kvfs *fs, struct handle *h)
{
	struct kvfs_file *f = h->f;
	int rc;
	bool was_dirty;

	pthread_mutex_lock(&f->lock);
	was_dirty = f->dirty;
	rc = file_commit(fs, f);
	pthread_mutex_unlock(&f->lock);
	if (rc == 0 && was_dirty) {
		pthread_mutex_lock(&fs->files.lock);
		char *key = strndup(f->key, f->klen);
		size_t klen = f->klen;
		pthread_mutex_unlock(&fs->files.lock);
		if (key)
			touch(fs, key, klen);
		free(key);
	}
	return rc;
}

static int kvfs_flush(const char *path, struct fuse_file_info *fi)
{
	struct handle *h = H(fi);

	(void)path;
	return h->health ? 0 : commit_handle(FS(), h);
}

static int kvfs_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	struct kvfs *fs = FS();
	struct handle *h = H(fi);
	int rc;

	(void)path;
	(void)datasync;
	if (h->health)
		return 0;
	rc = commit_handle(fs, h);
	if (rc == 0)
		rc = kv_sync(fs->store);
	health_note_error(fs, "sync", rc);
	return rc;
}

static int kvfs_release(const char *path, struct fuse_file_info *fi)
{
	struct kvfs *fs = FS();
	struct handle *h = H(fi);

	(void)path;
	if (h->health) {
		free(h->text);
	} else {
		int rc = commit_handle(fs, h);
		if (rc)
			kv_log(KV_LOG_WARN, "write of %s lost at release: %s",
			       kv_printable(h->f->key, h->f->klen), strerror(-rc));
		files_put(&fs->files, h->f);
	}
	free(h);
	return 0;
}

static int kvfs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	struct kvfs *fs = FS();
	struct kv_limits lim = kv_limits(fs->store);
	struct kvfs_file *f = NULL;
	struct node n = {0};
	int rc = 0;

	if (size < 0)
		return -EINVAL;
	if (lim.max_value && (uint64_t)size > lim.max_value)
		return -EFBIG;
	if (fi && fi->fh) {
		if (H(fi)->health)
			return -EACCES;
		f = H(fi)->f;
		pthread_mutex_lock(&f->lock);
		rc = file_load(fs, f);
		if (rc == 0)
			rc = file_resize(f, (size_t)size);
		if (rc == 0)
			f->dirty = true;
		pthread_mutex_unlock(&f->lock);
		return rc;
	}
	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	if (n.kind == KM_HEALTH) {
		rc = -EACCES;
	} else if (n.kind != KM_KEY && n.kind != KM_VALUE) {
		rc = -EISDIR;
	} else {
		/* A path truncate is committed at once, through the shared buffer. */
		f = files_get(&fs->files, n.key, n.klen);
		if (!f) {
			rc = -ENOMEM;
		} else {
			pthread_mutex_lock(&f->lock);
			rc = file_load(fs, f);
			if (rc == 0)
				rc = file_resize(f, (size_t)size);
			if (rc == 0) {
				f->dirty = true;
				rc = file_commit(fs, f);
			}
			pthread_mutex_unlock(&f->lock);
			files_put(&fs->files, f);
			if (rc == 0)
				touch(fs, n.key, n.klen);
		}
	}
	node_free(&n);
	return rc;
}

static int kvfs_unlink(const char *path)
{
	struct kvfs *fs = FS();
	struct node n;
	int rc;

	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	switch (n.kind) {
	case KM_HEALTH:
		rc = -EPERM;
		break;
	case KM_KEY:
	case KM_VALUE:
		rc = kv_del(fs->store, n.key, n.klen);
		if (rc == 0 || rc == -ENOENT) {
			files_unlinked(&fs->files, n.key, n.klen);
			attrs_forget(&fs->attrs, n.key, n.klen, false);
		}
		health_note_error(fs, "delete", rc);
		break;
	default:
		rc = -EISDIR;
	}
	node_free(&n);
	return rc;
}

/* ---- rename ---- */

static void commit_one(struct kvfs *fs, struct kvfs_file *f)
{
	pthread_mutex_lock(&f->lock);
	file_commit(fs, f);
	pthread_mutex_unlock(&f->lock);
}

struct tree {
	struct kvfs *fs;
	struct kv_op *ops;
	size_t n, cap;
	const char *to;
	size_t tlen, flen;
};

static int tree_push(struct tree *t, enum kv_op_type type, char *key, size_t klen, char *val,
		     size_t vlen)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		struct kv_op *ops = realloc(t->ops, cap * sizeof(*ops));
		if (!ops)
			return -ENOMEM;
		t->ops = ops;
		t->cap = cap;
	}
	t->ops[t->n++] = (struct kv_op){.type = type, .key = key, .key_len = klen, .val = val,
					.val_len = vlen};
	return 0;
}

/* Queue "set new key, delete old key" for one key of the moving tree. */
static int tree_move(struct tree *t, const char *key, size_t klen)
{
	char *val, *nk, *ok;
	size_t vlen;
	int rc = kv_get(t->fs->store, key, klen, &val, &vlen, NULL);

	if (rc)
		return rc == -ENOENT ? 0 : rc;  /* gone meanwhile: nothing to move */
	nk = malloc(t->tlen + klen - t->flen + 1);
	ok = malloc(klen + 1);
	if (!nk || !ok) {
		free(nk);
		free(ok);
		free(val);
		return -ENOMEM;
	}
	memcpy(nk, t->to, t->tlen);
	memcpy(nk + t->tlen, key + t->flen, klen - t->flen);
	memcpy(ok, key, klen);
	if ((rc = tree_push(t, KV_OP_SET, nk, t->tlen + klen - t->flen, val, vlen))) {
		free(nk);
		free(ok);
		free(val);
		return rc;
	}
	if ((rc = tree_push(t, KV_OP_DEL, ok, klen, NULL, 0)))
		free(ok);
	return rc;
}

static int tree_cb(void *ctx, const struct kv_entry *e)
{
	return tree_move(ctx, e->key, e->key_len);
}

static void tree_free(struct tree *t)
{
	for (size_t i = 0; i < t->n; i++) {
		free((char *)t->ops[i].key);
		free((char *)t->ops[i].val);
	}
	free(t->ops);
}

static int rename_dir(struct kvfs *fs, struct node *from, struct node *to, enum ntype tt)
{
	struct tree t = {.fs = fs, .to = to->key, .tlen = to->klen, .flen = from->klen};
	uint64_t size;
	bool found;
	int rc = 0;

	if (to->klen > from->klen && memcmp(to->key, from->key, from->klen) == 0 &&
	    to->key[from->klen] == '/')
		return -EINVAL;  /* into itself */
	if (tt == NT_DIR) {
		size_t plen = dir_prefix(to);
		rc = any_under(fs, to->key, plen, to->key, plen, &found);
		unslash(to);
		if (rc == 0 && (found || kv_stat(fs->store, to->key, to->klen, &size) == 0))
			rc = -ENOTEMPTY;
		if (rc == 0) {
			/* The empty target's marker goes first, the moved marker may replace it. */
			char *mk = malloc(to->klen + 1);
			if (!mk)
				return -ENOMEM;
			memcpy(mk, to->key, to->klen);
			mk[to->klen] = '/';
			rc = tree_push(&t, KV_OP_DEL, mk, to->klen + 1, NULL, 0);
			if (rc)
				free(mk);
		}
	}
	files_each(&fs->files, commit_one, fs);
	if (rc == 0)
		rc = tree_move(&t, from->key, from->klen);  /* the directory's own value (M5) */
	if (rc == 0) {
		size_t plen = dir_prefix(from);
		rc = kv_list_all(fs->store, from->key, plen, '\0', tree_cb, &t);
		unslash(from);
	}
	if (rc == 0)
		rc = kv_apply(fs->store, t.ops, t.n);
	if (rc == 0) {
		files_rename(&fs->files, from->key, from->klen, to->key, to->klen, true);
		attrs_rename(&fs->attrs, from->key, from->klen, to->key, to->klen, true);
	}
	tree_free(&t);
	return rc;
}

static int rename_file(struct kvfs *fs, struct node *from, struct node *to)
{
	struct kvfs_file *f = files_find(&fs->files, from->key, from->klen);
	char *val;
	size_t vlen;
	int rc;

	if (f) {
		commit_one(fs, f);
		files_put(&fs->files, f);
	}
	if (from->klen == to->klen && memcmp(from->key, to->key, to->klen) == 0)
		return 0;
	rc = kv_get(fs->store, from->key, from->klen, &val, &vlen, NULL);
	if (rc)
		return rc;
	struct kv_op ops[2] = {
		{.type = KV_OP_SET, .key = to->key, .key_len = to->klen, .val = val, .val_len = vlen},
		{.type = KV_OP_DEL, .key = from->key, .key_len = from->klen},
	};
	rc = kv_apply(fs->store, ops, 2);
	free(val);
	if (rc == 0) {
		files_rename(&fs->files, from->key, from->klen, to->key, to->klen, false);
		attrs_rename(&fs->attrs, from->key, from->klen, to->key, to->klen, false);
	}
	return rc;
}

static int kvfs_rename(const char *from, const char *to, unsigned int flags)
{
	struct kvfs *fs = FS();
	struct node nf = {0}, nt = {0};
	enum ntype tf, tt;
	uint64_t size;
	int rc;

	if (flags & RENAME_EXCHANGE)
		return -EINVAL;
	if (flags & ~(unsigned)RENAME_NOREPLACE)
		return -EINVAL;
	if ((rc = node_decode(fs, from, &nf)))
		return rc == -EINVAL ? -ENOENT : rc;
	if ((rc = node_decode(fs, to, &nt)))
		goto out;
	if (nf.kind == KM_HEALTH || nt.kind == KM_HEALTH || nf.kind == KM_ROOT || nt.kind == KM_ROOT) {
		rc = -EPERM;
		goto out;
	}
	if (nf.kind == KM_CONT || nt.kind == KM_CONT) {
		rc = -EXDEV;  /* mv copies instead */
		goto out;
	}
	if ((rc = node_type(fs, &nf, from, &tf, &size)) || (rc = node_type(fs, &nt, to, &tt, &size)))
		goto out;
	if (tf == NT_NONE) {
		rc = -ENOENT;
	} else if (tt != NT_NONE && (flags & RENAME_NOREPLACE)) {
		rc = -EEXIST;
	} else if (tf == NT_FILE) {
		if (tt == NT_DIR)
			rc = -EISDIR;
		else
			rc = rename_file(fs, &nf, &nt);
	} else if (nt.kind == KM_VALUE) {
		rc = -ENOTDIR;
	} else if (tt == NT_FILE) {
		rc = -ENOTDIR;
	} else {
		rc = rename_dir(fs, &nf, &nt, tt);
	}
	health_note_error(fs, "rename", rc == -EISDIR || rc == -ENOTDIR || rc == -ENOTEMPTY ||
			  rc == -EEXIST || rc == -EINVAL ? 0 : rc);
out:
	node_free(&nf);
	node_free(&nt);
	return rc;
}

/* ---- attributes kept in memory (A2) ---- */

static int change_attr(const char *path, struct fuse_file_info *fi,
		       void (*fn)(struct kvfs_attr *, const void *), const void *arg)
{
	struct kvfs *fs = FS();
	struct kvfs_attr a;
	struct node n;
	enum ntype t = NT_FILE;
	uint64_t size;
	int rc;

	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	if (n.kind == KM_HEALTH) {
		node_free(&n);
		return -EPERM;
	}
	/* An open file is a file: no need to ask the store. */
	if (!(fi && fi->fh) && (rc = node_type(fs, &n, path, &t, &size)) == 0 && t == NT_NONE)
		rc = -ENOENT;
	if (rc == 0) {
		if (!attrs_get(&fs->attrs, n.key, n.klen, t == NT_DIR, &a))
			default_attr(fs, t == NT_DIR, &a);
		fn(&a, arg);
		clock_gettime(CLOCK_REALTIME, &a.ctime);
		rc = attrs_put(&fs->attrs, n.key, n.klen, t == NT_DIR, &a);
	}
	node_free(&n);
	return rc;
}

static void set_mode(struct kvfs_attr *a, const void *arg)
{
	a->mode = *(const mode_t *)arg & 07777;
}

static int kvfs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	return change_attr(path, fi, set_mode, &mode);
}

struct owner { uid_t uid; gid_t gid; };

static void set_owner(struct kvfs_attr *a, const void *arg)
{
	const struct owner *o = arg;

	if (o->uid != (uid_t)-1)
		a->uid = o->uid;
	if (o->gid != (gid_t)-1)
		a->gid = o->gid;
}

static int kvfs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	struct owner o = {uid, gid};
	return change_attr(path, fi, set_owner, &o);
}

static void set_times(struct kvfs_attr *a, const void *arg)
{
	const struct timespec *tv = arg;
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	if (tv[0].tv_nsec != UTIME_OMIT)
		a->atime = tv[0].tv_nsec == UTIME_NOW ? now : tv[0];
	if (tv[1].tv_nsec != UTIME_OMIT)
		a->mtime = tv[1].tv_nsec == UTIME_NOW ? now : tv[1];
}

static int kvfs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	struct timespec now[2] = {{.tv_nsec = UTIME_NOW}, {.tv_nsec = UTIME_NOW}};
	return change_attr(path, fi, set_times, tv ? tv : now);
}

/* ---- the rest ---- */

static int kvfs_symlink(const char *target, const char *path)
{
	(void)target;
	(void)path;
	return -EPERM;
}

static int kvfs_link(const char *from, const char *to)
{
	(void)from;
	(void)to;
	return -EPERM;
}

static int kvfs_statfs(const char *path, struct statvfs *sv)
{
	struct kvfs *fs = FS();
	struct kv_statfs st;
	const uint64_t bs = 4096;

	(void)path;
	memset(sv, 0, sizeof(*sv));
	sv->f_bsize = bs;
	sv->f_frsize = bs;
	sv->f_namemax = KEYMAP_NAME_MAX;
	if (kv_statfs(fs->store, &st) != 0 || st.total_bytes == 0) {
		/* Unknown: report a large, mostly free filesystem so tools proceed. */
		st.total_bytes = 1ULL << 40;
		st.free_bytes = st.total_bytes;
	}
	sv->f_blocks = st.total_bytes / bs;
	sv->f_bfree = sv->f_bavail = st.free_bytes / bs;
	sv->f_files = st.keys + sv->f_bfree;
	sv->f_ffree = sv->f_favail = sv->f_bfree;
	return 0;
}

static void *kvfs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	struct kvfs *fs = FS();

	cfg->hard_remove = 1;       /* never ".fuse_hidden" keys for open unlinked files */
	cfg->use_ino = 0;
	cfg->kernel_cache = 0;
	cfg->nullpath_ok = 0;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	/* Always readdirplus: ls -l must not cost a lookup per entry (M3). */
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	return fs;
}

static void flush_one(struct kvfs *fs, struct kvfs_file *f)
{
	pthread_mutex_lock(&f->lock);
	int rc = file_commit(fs, f);
	pthread_mutex_unlock(&f->lock);
	if (rc)
		kv_log(KV_LOG_ERR, "unmount: write of %s failed: %s",
		       kv_printable(f->key, f->klen), strerror(-rc));
}

void kvfs_flush_all(struct kvfs *fs)
{
	files_each(&fs->files, flush_one, fs);
}

static void kvfs_destroy(void *private_data)
{
	kvfs_flush_all(private_data);
}

int kvfs_init_state(struct kvfs *fs)
{
	attrs_init(&fs->attrs);
	files_init(&fs->files);
	health_init(&fs->health);
	pthread_mutex_init(&fs->cont_lock, NULL);
	clock_gettime(CLOCK_REALTIME, &fs->mounted_at);
	if (!fs->attrs.buckets || !fs->files.buckets)
		return -ENOMEM;
	return 0;
}

void kvfs_free_state(struct kvfs *fs)
{
	health_stop(&fs->health);
	files_destroy(&fs->files);
	attrs_destroy(&fs->attrs);
	for (size_t i = 0; i < fs->ncont; i++)
		free(fs->cont_dirs[i]);
	free(fs->cont_dirs);
	pthread_mutex_destroy(&fs->cont_lock);
}

const struct fuse_operations kvfs_ops = {
	.init = kvfs_init,
	.destroy = kvfs_destroy,
	.getattr = kvfs_getattr,
	.readdir = kvfs_readdir,
	.mkdir = kvfs_mkdir,
	.rmdir = kvfs_rmdir,
	.create = kvfs_create,
	.mknod = kvfs_mknod,
	.open = kvfs_open,
	.read = kvfs_read,
	.write = kvfs_write,
	.flush = kvfs_flush,
	.fsync = kvfs_fsync,
	.release = kvfs_release,
	.truncate = kvfs_truncate,
	.unlink = kvfs_unlink,
	.rename = kvfs_rename,
	.chmod = kvfs_chmod,
	.chown = kvfs_chown,
	.utimens = kvfs_utimens,
	.symlink = kvfs_symlink,
	.link = kvfs_link,
	.statfs = kvfs_statfs,
};
