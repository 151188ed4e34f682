/*
 * ops.c - the FUSE operations on files and attributes, and the table of
 * all operations (directories are in dir.c, rename in rename.c).
 */
#include "node.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- open handles ---- */

/*
 * An open file's fi->fh is its struct kvfs_file (one reference each), so
 * nothing is left over when the kernel never releases it (SIGTERM).  An
 * open .health's is its report, tagged in the low bit, which malloc'd
 * memory never uses.
 */
struct report {
	char *text;
	size_t len;
};

static struct kvfs_file *file_of(struct fuse_file_info *fi)
{
	return (fi->fh & 1) ? NULL : (struct kvfs_file *)(uintptr_t)fi->fh;
}

static struct report *report_of(struct fuse_file_info *fi)
{
	return (fi->fh & 1) ? (struct report *)(uintptr_t)(fi->fh & ~(uint64_t)1) : NULL;
}

int op_getattr(struct kvfs *fs, const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct node n;
	enum ntype t;
	uint64_t size;
	int rc;

	if (fi && fi->fh && file_of(fi)) {
		struct kvfs_file *f = file_of(fi);
		pthread_mutex_lock(&f->lock);
		int lrc = file_load(fs, f);
		size = f->len;
		pthread_mutex_unlock(&f->lock);
		size_t klen = 0;
		bool unlinked = false;
		char *key = file_key(fs, f, &klen, &unlinked);
		fill_stat(fs, key, klen, NT_FILE, lrc ? 0 : size, st);
		if (unlinked)
			st->st_nlink = 0;  /* open after unlink or a rename over it */
		free(key);
		return 0;
	}
	if (!path)
		return -ENOENT;
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
		if (t == NT_FILE)
			files_open_size(&fs->files, n.key, n.klen, &size);
		fill_stat(fs, n.key, n.klen, t, size, st);
	}
	node_free(&n);
	return rc;
}

/* ---- files ---- */

static int open_file(struct kvfs *fs, struct node *n, struct fuse_file_info *fi, bool created)
{
	struct kvfs_file *f = files_get(&fs->files, n->key, n->klen);
	int rc = 0;

	if (!f)
		return -ENOMEM;
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
		return rc;
	}
	fi->fh = (uintptr_t)f;
	fi->keep_cache = 0;
	return 0;
}

int op_open(struct kvfs *fs, const char *path, struct fuse_file_info *fi)
{
	struct node n;
	int rc;

	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	switch (n.kind) {
	case KM_HEALTH: {
		struct report *r;
		if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
			rc = -EACCES;
			break;
		}
		r = calloc(1, sizeof(*r));
		if (!r || !(r->text = health_report(fs, &r->len))) {
			free(r);
			rc = -ENOMEM;
			break;
		}
		fi->fh = (uintptr_t)r | 1;
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

int op_create(struct kvfs *fs, const char *path, mode_t mode, struct fuse_file_info *fi)
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
	/* The kernel looked the name up just before (it found nothing), so no
	 * second round trip asks whether it is a directory; but another mount
	 * or client may have made the file since: create only if still absent
	 * where the store can say so atomically. */
	bool existed = false;
	if (rc == 0 && kvfs_marker_key(fs, n.key, n.klen)) {
		/* "%" names the key equal to the directory's prefix: empty, it is
		 * the directory's marker, so only a non-empty value exists (M4, M6). */
		existed = kv_stat(fs->store, n.key, n.klen, &size) == 0 && size > 0;
		if (existed)
			rc = (!fi || (fi->flags & O_EXCL)) ? -EEXIST : 0;
		else
			rc = kv_set(fs->store, n.key, n.klen, "", 0);
	} else if (rc == 0) {
		if (kv_caps(fs->store) & KV_CAP_CAS)
			rc = kv_cas(fs->store, n.key, n.klen, 0, "", 0);
		else if (fi && (fi->flags & O_EXCL) && kv_stat(fs->store, n.key, n.klen, &size) == 0)
			rc = -ECANCELED;
		else
			rc = kv_set(fs->store, n.key, n.klen, "", 0);
		if (rc == -ECANCELED) {
			existed = true;
			rc = (!fi || (fi->flags & O_EXCL)) ? -EEXIST : 0;
		}
	}
	if (rc == 0 && !existed && (mode & 07777) != (0644 & ~fs->umask)) {
		struct kvfs_attr a;
		default_attr(fs, false, &a);
		a.mode = mode & 07777;
		attrs_put(&fs->attrs, n.key, n.klen, false, &a);
	}
	if (rc == 0)
		touch(fs, n.key, n.klen, false);
	if (rc == 0 && fi)
		rc = open_file(fs, &n, fi, !existed);
	health_note_error(fs, "create", rc == -EEXIST || rc == -EISDIR ? 0 : rc);
	node_free(&n);
	return rc;
}

int op_read(struct kvfs *fs, const char *path, char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct report *r = report_of(fi);
	struct kvfs_file *f = file_of(fi);
	int rc = 0;

	(void)path;
	if (r) {
		if ((size_t)off >= r->len)
			return 0;
		if (size > r->len - (size_t)off)
			size = r->len - (size_t)off;
		memcpy(buf, r->text + off, size);
		return (int)size;
	}
	pthread_mutex_lock(&f->lock);
	rc = file_load(fs, f);
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

/* A write sets the file's times when it happens, as on any filesystem, so
 * that a later utimens (cp -a, tar x) stands. */
static void touch_file(struct kvfs *fs, struct kvfs_file *f)
{
	size_t klen;
	bool unlinked;
	char *key = file_key(fs, f, &klen, &unlinked);

	if (key && !unlinked)
		touch(fs, key, klen, false);
	free(key);
}

int op_write(struct kvfs *fs, const char *path, const char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct kvfs_file *f = file_of(fi);
	struct kv_limits lim = kv_limits(fs->store);
	int rc;

	(void)path;
	if (!f)
		return -EACCES;
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
			rc = f->error = -EFBIG;  /* the store could never take it (F4) */
		else if ((rc = file_resize(f, at + size > f->len ? at + size : f->len)) == 0) {
			memcpy(f->data + at, buf, size);
			f->dirty = true;
			rc = (int)size;
		}
	}
	pthread_mutex_unlock(&f->lock);
	if (rc > 0)
		touch_file(fs, f);
	return rc;
}

int op_flush(struct kvfs *fs, const char *path, struct fuse_file_info *fi)
{
	struct kvfs_file *f = file_of(fi);

	(void)path;
	return f ? file_flush(fs, f) : 0;
}

int op_fsync(struct kvfs *fs, const char *path, int datasync, struct fuse_file_info *fi)
{
	struct kvfs_file *f = file_of(fi);
	int rc;

	(void)path;
	(void)datasync;
	if (!f)
		return 0;
	rc = file_flush(fs, f);
	if (rc == 0)
		rc = kv_sync(fs->store);
	health_note_error(fs, "sync", rc);
	return rc;
}

int op_release(struct kvfs *fs, const char *path, struct fuse_file_info *fi)
{
	struct report *r = report_of(fi);
	struct kvfs_file *f = file_of(fi);

	(void)path;
	if (r) {
		free(r->text);
		free(r);
		return 0;
	}
	int rc = file_flush(fs, f);
	if (rc)
		kv_log(KV_LOG_WARN, "write of %s lost at release: %s",
		       kv_printable(f->key, f->klen), strerror(-rc));
	files_put(&fs->files, f);
	return 0;
}

int op_truncate(struct kvfs *fs, const char *path, off_t size, struct fuse_file_info *fi)
{
	struct kv_limits lim = kv_limits(fs->store);
	struct kvfs_file *f = NULL;
	struct node n = {0};
	int rc = 0;

	if (size < 0)
		return -EINVAL;
	if (lim.max_value && (uint64_t)size > lim.max_value)
		return -EFBIG;
	if (fi && fi->fh) {
		if (!(f = file_of(fi)))
			return -EACCES;
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
				touch(fs, n.key, n.klen, false);
		}
	}
	node_free(&n);
	return rc;
}

int op_unlink(struct kvfs *fs, const char *path)
{
	struct node n;
	int rc;

	if ((rc = node_decode(fs, path, &n)))
		return rc == -EINVAL ? -ENOENT : rc;
	switch (n.kind) {
	case KM_HEALTH:
		rc = -EPERM;
		break;
	case KM_KEY:
	case KM_VALUE: {
		/* A close of the file must not commit between the delete and
		 * the file being marked unlinked: that would bring the key back. */
		struct kvfs_file *f = files_find(&fs->files, n.key, n.klen);
		if (f)
			pthread_mutex_lock(&f->lock);
		rc = kv_del(fs->store, n.key, n.klen);
		if (rc == 0 || rc == -ENOENT) {
			files_unlinked(&fs->files, n.key, n.klen);
			attrs_forget(&fs->attrs, n.key, n.klen, false);
		}
		if (f) {
			pthread_mutex_unlock(&f->lock);
			files_put(&fs->files, f);
		}
		health_note_error(fs, "delete", rc);
		break;
	}
	default:
		rc = -EISDIR;
	}
	node_free(&n);
	return rc;
}

/* ---- attributes kept in memory (A2) ---- */

static int change_attr(struct kvfs *fs, const char *path, struct fuse_file_info *fi,
		       void (*fn)(struct kvfs_attr *, const void *), const void *arg)
{
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

int op_chmod(struct kvfs *fs, const char *path, mode_t mode, struct fuse_file_info *fi)
{
	return change_attr(fs, path, fi, set_mode, &mode);
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

int op_chown(struct kvfs *fs, const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi)
{
	struct owner o = {uid, gid};
	return change_attr(fs, path, fi, set_owner, &o);
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

int op_utimens(struct kvfs *fs, const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
	struct timespec now[2] = {{.tv_nsec = UTIME_NOW}, {.tv_nsec = UTIME_NOW}};
	return change_attr(fs, path, fi, set_times, tv ? tv : now);
}

/* ---- the rest ---- */

int op_statfs(struct kvfs *fs, struct statvfs *sv)
{
	struct kv_statfs st;
	const uint64_t bs = 4096;

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

static void flush_one(struct kvfs *fs, struct kvfs_file *f)
{
	int rc = file_flush(fs, f);

	if (rc)
		kv_log(KV_LOG_ERR, "unmount: write of %s failed: %s",
		       kv_printable(f->key, f->klen), strerror(-rc));
}

void kvfs_flush_all(struct kvfs *fs)
{
	files_each(&fs->files, NULL, 0, flush_one, fs);
}

static bool inode_file_size(void *ctx, void *file, off_t *size)
{
	struct kvfs_file *f = file;
	bool known;

	(void)ctx;
	pthread_mutex_lock(&f->lock);
	known = f->loaded || f->dirty;
	*size = (off_t)f->len;
	pthread_mutex_unlock(&f->lock);
	return known;
}

static void inode_file_hold(void *ctx, void *file)
{
	files_ref(&((struct kvfs *)ctx)->files, file);
}

static void inode_file_drop(void *ctx, void *file)
{
	files_put(&((struct kvfs *)ctx)->files, file);
}

int kvfs_init_state(struct kvfs *fs)
{
	attrs_init(&fs->attrs);
	files_init(&fs->files);
	health_init(&fs->health);
	pthread_mutex_init(&fs->cont_lock, NULL);
	pthread_rwlock_init(&fs->names, NULL);
	clock_gettime(CLOCK_REALTIME, &fs->mounted_at);
	if (inodes_init(&fs->inodes) || !fs->attrs.buckets || !fs->files.buckets)
		return -ENOMEM;
	fs->inodes.file_size = inode_file_size;
	fs->inodes.file_hold = inode_file_hold;
	fs->inodes.file_drop = inode_file_drop;
	fs->inodes.ctx = fs;
	return 0;
}

bool kvfs_free_state(struct kvfs *fs)
{
	bool clean = health_stop(&fs->health, fs->health_timeout_ms);

	inodes_destroy(&fs->inodes);
	files_destroy(&fs->files);
	attrs_destroy(&fs->attrs);
	for (size_t i = 0; i < fs->ncont; i++)
		free(fs->cont_dirs[i]);
	free(fs->cont_dirs);
	pthread_mutex_destroy(&fs->cont_lock);
	pthread_rwlock_destroy(&fs->names);
	return clean;
}
