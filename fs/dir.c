/*
 * dir.c - directories: readdir, mkdir, rmdir (docs/mapping.md M2-M5, M7).
 */
#include "node.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct dirent_item {
	char *name;
	bool is_dir;
	uint64_t size;
	char *key;        /* full key, for attributes */
	size_t klen;
};

struct dirlist {
	struct kvfs *fs;
	char *path;           /* the directory, "/" for the root */
	size_t pathlen;       /* 0 for the root */
	const char *marker;   /* this directory's own marker key */
	size_t marker_len;
	struct dirent_item *items;
	size_t n, cap;
	/* open addressing on names: index + 1, 0 = empty */
	size_t *slots;
	size_t nslots;
	bool loaded;          /* listed: at the first read, and again at each rewind */
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

static void dir_clear(struct dirlist *d)
{
	for (size_t i = 0; i < d->n; i++) {
		free(d->items[i].name);
		free(d->items[i].key);
	}
	free(d->items);
	free(d->slots);
	free(d->path);
	memset(d, 0, sizeof(*d));
}

static void dir_free(struct dirlist *d)
{
	if (d)
		dir_clear(d);
	free(d);
}

/* Read the directory from the store into d (done once per opendir). */
static int dir_load(struct kvfs *fs, const char *path, struct dirlist *d)
{
	struct node n;
	uint64_t size;
	int rc;

	d->fs = fs;
	d->path = strdup(path);
	d->pathlen = strcmp(path, "/") ? strlen(path) : 0;
	if (!d->path)
		return -ENOMEM;
	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	if (n.kind != KM_ROOT && n.kind != KM_KEY && n.kind != KM_CONT) {
		node_free(&n);
		return -ENOTDIR;
	}
	size_t plen = dir_prefix(&n);
	if (n.kind != KM_CONT) {
		d->marker = n.key;
		d->marker_len = plen;
	}
	rc = kv_list_all(fs->store, n.key, plen, '/', dir_item_cb, d);
	d->marker = NULL;
	unslash(&n);
	if (rc == 0 && n.kind == KM_KEY && kv_stat(fs->store, n.key, n.klen, &size) == 0)
		rc = dir_add(d, KEYMAP_VALUE_NAME, strlen(KEYMAP_VALUE_NAME), false, size,
			     n.key, n.klen);
	if (rc == 0) {
		/* Continuation directories made here by mkdir and not yet used. */
		pthread_mutex_lock(&fs->cont_lock);
		for (size_t i = 0; i < fs->ncont && rc == 0; i++) {
			const char *c = fs->cont_dirs[i];
			const char *slash = strrchr(c, '/');
			if ((size_t)(slash - c) == d->pathlen && strncmp(c, path, d->pathlen) == 0)
				rc = dir_add(d, slash + 1, strlen(slash + 1), true, 0, NULL, 0);
		}
		pthread_mutex_unlock(&fs->cont_lock);
	}
	if (rc)
		health_note_error(fs, "list", rc);
	node_free(&n);
	return rc;
}

/* The directory is listed when it is first read, not here: what ext4's
 * getdents sees is the directory then, and so does a read after rewinddir. */
int op_opendir(struct kvfs *fs, const char *path, struct dirlist **dp)
{
	struct dirlist *d;
	struct node n;
	bool is_dir;
	int rc;

	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	is_dir = n.kind == KM_ROOT || n.kind == KM_KEY || n.kind == KM_CONT;
	node_free(&n);
	if (!is_dir)
		return -ENOTDIR;
	if (!(d = calloc(1, sizeof(*d))) || !(d->path = strdup(path))) {
		free(d);
		return -ENOMEM;
	}
	*dp = d;
	return 0;
}

void op_releasedir(struct dirlist *d)
{
	dir_free(d);
}

/*
 * Entries carry offsets (index + 1), so each batch goes to the kernel as it
 * fills, with attributes: readdirplus then needs no lookup per entry (M3).
 * Index 0 and 1 are "." and "..", which carry no attributes (the kernel has
 * them already).  .health is not listed (M9): whole-tree copies see exactly
 * the store's keys.
 */
/* d_ino of an entry without its inode, as libfuse's path API gives */
#define UNKNOWN_INO 0xffffffffu

ssize_t op_readdir(struct kvfs *fs, fuse_req_t req, fuse_ino_t ino, struct dirlist *d,
		   char *buf, size_t size, off_t off, bool plus)
{
	size_t fixed = 2, used = 0;

	if (off == 0 || !d->loaded) {
		char *path = strdup(d->path);
		int rc = path ? 0 : -ENOMEM;
		dir_clear(d);
		if (path && (rc = dir_load(fs, path, d)))
			dir_clear(d);
		if (!d->path)
			d->path = path;  /* kept for the next read at 0 */
		else
			free(path);
		if (rc)
			return rc;
		d->loaded = true;
	}
	for (size_t i = (size_t)off; i < fixed + d->n; i++) {
		struct fuse_entry_param e = {0};
		const char *name = i == 0 ? "." : "..";
		size_t need;
		if (i >= fixed) {
			struct dirent_item *it = &d->items[i - fixed];
			uint64_t sz = it->size;
			name = it->name;
			if (!it->is_dir && it->key)
				files_open_size(&fs->files, it->key, it->klen, &sz);
			fill_stat(fs, it->key, it->klen, it->is_dir ? NT_DIR : NT_FILE, sz, &e.attr);
			if (plus) {
				/* A listing is a snapshot: it never replaces a
				 * newer inode by that name.  Without an inode
				 * (ino 0) the entry goes without attributes. */
				e.ino = inode_link(&fs->inodes, ino, name, &e.attr, false);
				if (!e.ino)
					e.attr.st_ino = UNKNOWN_INO;
				e.attr_timeout = fs->attr_timeout;
				e.entry_timeout = fs->entry_timeout;
			} else {
				e.attr.st_ino = UNKNOWN_INO;
			}
		} else {
			e.attr.st_mode = S_IFDIR;
			e.attr.st_ino = UNKNOWN_INO;
		}
		if (plus)
			need = fuse_add_direntry_plus(req, buf + used, size - used, name, &e,
						      (off_t)i + 1);
		else
			need = fuse_add_direntry(req, buf + used, size - used, name, &e.attr,
						 (off_t)i + 1);
		if (need > size - used) {
			if (e.ino)
				inode_forget(&fs->inodes, e.ino, 1);  /* the kernel did not get it */
			break;
		}
		used += need;
	}
	return (ssize_t)used;
}

int op_mkdir(struct kvfs *fs, const char *path, mode_t mode)
{
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
		if (rc == 0) {
			/* A new directory shows the time it was made. */
			struct kvfs_attr a;
			default_attr(fs, true, &a);
			a.mode = mode & 07777;
			clock_gettime(CLOCK_REALTIME, &a.mtime);
			a.atime = a.ctime = a.mtime;
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

int op_rmdir(struct kvfs *fs, const char *path)
{
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
		unslash(&n);
		/* Look before deleting anything: the directory's value (M5) is
		 * an entry, and without a marker the value is a plain file. */
		if (rc == 0 && (rc = kv_stat(fs->store, n.key, n.klen, &size)) == 0) {
			plen = slash(&n);
			rc = kv_stat(fs->store, n.key, plen, &size) == 0 ? -ENOTEMPTY : -ENOTDIR;
			unslash(&n);
		} else if (rc == -ENOENT) {
			plen = slash(&n);
			rc = kv_del(fs->store, n.key, plen);  /* -ENOENT: nothing at all */
			unslash(&n);
		}
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
