/*
 * node.c - from a FUSE path to what it names in the store.
 *
 * Every path is decoded by keymap (docs/mapping.md) into the store key it
 * names; the key is the mount's root prefix plus the decoded relative key.
 * What a key is (file, directory or nothing) is asked of the store each
 * time; the kernel caches the answer for entry_timeout/attr_timeout.
 */
#include "node.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- names ---- */


void node_free(struct node *n)
{
	free(n->key);
	n->key = NULL;
}

int node_decode(struct kvfs *fs, const char *path, struct node *n)
{
	struct keymap_res r;
	int rc;

	/* No name the mapping makes is over NAME_MAX (M7): a longer one is
	 * ENAMETOOLONG, as ext4 answers, not a name that does not decode. */
	for (const char *p = path, *end; *p; p = *end ? end + 1 : end) {
		if (!(end = strchr(p, '/')))
			end = p + strlen(p);
		if (end - p > NAME_MAX)
			return -ENAMETOOLONG;
	}
	if ((rc = keymap_decode(path, &r)))
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
size_t slash(struct node *n)
{
	n->key[n->klen] = '/';
	n->key[n->klen + 1] = '\0';
	return n->klen + 1;
}

void unslash(struct node *n)
{
	n->key[n->klen] = '\0';
}

/* The listing prefix of a directory node (the root and continuation
 * directories list their key as it is). */
size_t dir_prefix(struct node *n)
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
int any_under(struct kvfs *fs, const char *prefix, size_t plen, const char *skip,
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

bool cont_known(struct kvfs *fs, const char *path)
{
	bool found = false;

	pthread_mutex_lock(&fs->cont_lock);
	for (size_t i = 0; i < fs->ncont && !found; i++)
		found = strcmp(fs->cont_dirs[i], path) == 0;
	pthread_mutex_unlock(&fs->cont_lock);
	return found;
}

int cont_add(struct kvfs *fs, const char *path)
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

bool cont_remove(struct kvfs *fs, const char *path)
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

int cont_used(struct kvfs *fs, struct node *n, const char *path, bool *found)
{
	struct through t = {.fs = fs, .path = path, .plen = strlen(path)};
	int rc = kv_list_all(fs->store, n->key, n->klen, '/', through_cb, &t);

	*found = t.found;
	return rc < 0 ? rc : 0;
}

/* ---- what a node is ---- */

int node_type(struct kvfs *fs, struct node *n, const char *path, enum ntype *t,
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
	if (rc == -ENOENT || (rc == 0 && *size == 0 && kvfs_marker_key(fs, n->key, n->klen))) {
		/* An empty "d/" is the directory d, not a file "%" (M4), unless
		 * it is open here: then it is the file being written (F8), as is
		 * a file not yet in the store. */
		struct kvfs_file *f = files_find(&fs->files, n->key, n->klen);
		*t = f ? NT_FILE : NT_NONE;
		if (f)
			files_put(&fs->files, f);
		return 0;
	}
	*t = rc ? NT_NONE : NT_FILE;
	return rc;
}

/* ---- attributes ---- */

void fill_stat(struct kvfs *fs, const char *key, size_t klen, enum ntype t,
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

void default_attr(struct kvfs *fs, bool is_dir, struct kvfs_attr *a)
{
	a->mode = (is_dir ? 0755 : 0644) & ~fs->umask;
	a->uid = fs->uid;
	a->gid = fs->gid;
	a->atime = a->mtime = a->ctime = fs->mounted_at;
}

/* A write through the mount sets the file's times to now; an entry added
 * or removed, its directory's. */
void touch(struct kvfs *fs, const char *key, size_t klen, bool is_dir)
{
	struct kvfs_attr a;
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	if (!attrs_get(&fs->attrs, key, klen, is_dir, &a))
		default_attr(fs, is_dir, &a);
	a.mtime = a.ctime = now;
	attrs_put(&fs->attrs, key, klen, is_dir, &a);
}

void touch_parent(struct kvfs *fs, const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir = slash ? strndup(path, slash > path ? (size_t)(slash - path) : 1) : NULL;
	struct node n;

	if (dir && node_decode(fs, dir, &n) == 0) {
		if (n.kind == KM_ROOT || n.kind == KM_KEY || n.kind == KM_CONT)
			touch(fs, n.key, n.klen, true);
		node_free(&n);
	}
	free(dir);
}
