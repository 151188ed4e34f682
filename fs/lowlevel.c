/*
 * lowlevel.c - the FUSE operations, on libfuse's low-level API.
 *
 * The kernel names things by inode; fs/inode.c keeps the inodes it holds
 * and their names.  Each operation finds the path of its inode, runs the
 * path operation of ops.c, dir.c or rename.c, and keeps the inode table in
 * step: a lookup adds a reference, unlink and rename move or detach names,
 * forget drops references.  An inode that lost its name keeps answering
 * from its open file or from the attributes last given for it.
 */
#include "node.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct kvfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static bool is_dir_inode(struct kvfs *fs, fuse_ino_t ino)
{
	return inode_of(&fs->inodes, ino)->is_dir;
}

/* The path of (ino[, name]); on failure the error is the reply. */
static char *path_or_reply(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	char *path = NULL;
	int rc = inode_path(&fs_of(req)->inodes, ino, name, &path);

	if (rc) {
		free(path);
		fuse_reply_err(req, rc == -ESTALE ? ENOENT : -rc);
		return NULL;
	}
	return path;
}

/* The open file at path, with a reference (NULL if none): an inode that
 * loses its name keeps it, to answer fstat. */
static struct kvfs_file *open_file_at(struct kvfs *fs, const char *path)
{
	struct kvfs_file *f = NULL;
	struct node n;

	if (node_decode(fs, path, &n) == 0) {
		if (n.kind == KM_KEY || n.kind == KM_VALUE)
			f = files_find(&fs->files, n.key, n.klen);
		node_free(&n);
	}
	return f;
}

static void reply_status(fuse_req_t req, int rc)
{
	fuse_reply_err(req, rc < 0 ? -rc : 0);
}

/* Answer a lookup, mknod, mkdir or create of (parent, name) at path. */
static void reply_entry(fuse_req_t req, fuse_ino_t parent, const char *name, const char *path,
			struct fuse_file_info *fi)
{
	struct kvfs *fs = fs_of(req);
	struct fuse_entry_param e = {0};
	int rc = op_getattr(fs, path, &e.attr, fi);

	if (rc == -ENOENT && !fi && fs->negative_timeout > 0) {
		e.entry_timeout = fs->negative_timeout;  /* ino 0: a cached "no such name" */
		fuse_reply_entry(req, &e);
		return;
	}
	if (rc == 0 && !(e.ino = inode_link(&fs->inodes, parent, name, &e.attr, true)))
		rc = -ENOMEM;
	if (rc) {
		if (fi)
			op_release(fs, path, fi);
		reply_status(req, rc);
		return;
	}
	e.attr_timeout = fs->attr_timeout;
	e.entry_timeout = fs->entry_timeout;
	if (!fi) {
		if (fuse_reply_entry(req, &e))
			inode_forget(&fs->inodes, e.ino, 1);
	} else if (fuse_reply_create(req, &e, fi)) {
		op_release(fs, path, fi);  /* interrupted: the kernel has neither */
		inode_forget(&fs->inodes, e.ino, 1);
	}
}

/* Answer a mknod or mkdir of (parent, name) at path, which was just made:
 * its attributes are known without asking the store again. */
static void reply_made(fuse_req_t req, fuse_ino_t parent, const char *name, const char *path,
		       bool is_dir)
{
	struct kvfs *fs = fs_of(req);
	struct fuse_entry_param e = {0};
	struct node n;
	int rc = node_decode(fs, path, &n);

	if (rc) {
		reply_status(req, rc);
		return;
	}
	fill_stat(fs, n.key, n.klen, is_dir ? NT_DIR : NT_FILE, 0, &e.attr);
	node_free(&n);
	if (!(e.ino = inode_link(&fs->inodes, parent, name, &e.attr, true))) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	e.attr_timeout = fs->attr_timeout;
	e.entry_timeout = fs->entry_timeout;
	if (fuse_reply_entry(req, &e))
		inode_forget(&fs->inodes, e.ino, 1);
}

static void ll_init(void *userdata, struct fuse_conn_info *conn)
{
	struct kvfs *fs = userdata;

	if (fs->conn_opts)
		fuse_apply_conn_info_opts(fs->conn_opts, conn);
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	/* Always readdirplus: ls -l must not cost a lookup per entry (M3). */
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
}

static void ll_destroy(void *userdata)
{
	kvfs_flush_all(userdata);
}

static void do_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	char *path = path_or_reply(req, parent, name);

	if (path)
		reply_entry(req, parent, name, path, NULL);
	free(path);
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	inode_forget(&fs_of(req)->inodes, ino, nlookup);
	fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		inode_forget(&fs_of(req)->inodes, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

/* Attributes of ino: from its open file, its path, or (once it has no
 * name) what was last said of it, with nlink 0. */
static int inode_stat(struct kvfs *fs, fuse_ino_t ino, struct stat *st, struct fuse_file_info *fi)
{
	char *path = NULL;
	int rc = inode_path(&fs->inodes, ino, NULL, &path);
	bool named = rc == 0;

	if (rc == -ENOMEM)
		return rc;
	if (!named) {
		/* Unlinked or replaced: what was last said of it, with the size
		 * of the open file it keeps (its old path names another file now,
		 * and its attributes are no longer kept by key). */
		struct stat open_st;
		free(path);
		if (!inode_recall(&fs->inodes, ino, st))
			return -ENOENT;
		if (fi && op_getattr(fs, NULL, &open_st, fi) == 0) {
			st->st_size = open_st.st_size;  /* the handle's own file */
			st->st_blocks = open_st.st_blocks;
		}
		st->st_nlink = 0;
		return 0;
	}
	rc = op_getattr(fs, path, st, fi);
	free(path);
	if (rc == 0 && S_ISDIR(st->st_mode) != is_dir_inode(fs, ino))
		rc = -ENOENT;  /* another client changed its type: a new inode by that name */
	if (rc == 0)
		inode_remember(&fs->inodes, ino, st);
	return rc;
}

static void do_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs *fs = fs_of(req);
	struct stat st;
	int rc = inode_stat(fs, ino, &st, is_dir_inode(fs, ino) ? NULL : fi);

	if (rc)
		reply_status(req, rc);
	else
		fuse_reply_attr(req, &st, fs->attr_timeout);
}

static void do_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct kvfs *fs = fs_of(req);
	char *path = NULL;
	struct stat st;
	int rc;

	if (is_dir_inode(fs, ino))
		fi = NULL;  /* a directory's handle is its listing */
	if ((rc = inode_path(&fs->inodes, ino, NULL, &path))) {
		free(path);
		path = NULL;
		if (rc == -ENOMEM) {
			reply_status(req, rc);
			return;
		}
	}
	rc = 0;
	if (!path) {
		/* Unlinked or replaced and still held: its attributes live as
		 * long as it does. */
		if ((to_set & FUSE_SET_ATTR_SIZE) && fi && fi->fh)
			rc = op_truncate(fs, NULL, attr->st_size, fi);
		if (rc == 0 && (rc = inode_stat(fs, ino, &st, fi)) == 0) {
			if (to_set & FUSE_SET_ATTR_MODE)
				st.st_mode = (st.st_mode & S_IFMT) | (attr->st_mode & 07777);
			if (to_set & FUSE_SET_ATTR_UID)
				st.st_uid = attr->st_uid;
			if (to_set & FUSE_SET_ATTR_GID)
				st.st_gid = attr->st_gid;
			if (to_set & FUSE_SET_ATTR_MTIME)
				st.st_mtim = attr->st_mtim;
			inode_remember(&fs->inodes, ino, &st);
			fuse_reply_attr(req, &st, fs->attr_timeout);
			return;
		}
		reply_status(req, rc);
		return;
	}
	if (to_set & FUSE_SET_ATTR_MODE)
		rc = op_chmod(fs, path, attr->st_mode, fi);
	if (rc == 0 && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)))
		rc = op_chown(fs, path, (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1,
			      (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1, fi);
	if (rc == 0 && (to_set & FUSE_SET_ATTR_SIZE))
		rc = op_truncate(fs, path, attr->st_size, fi);
	if (rc == 0 && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
		struct timespec tv[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_OMIT}};
		if (to_set & FUSE_SET_ATTR_ATIME)
			tv[0] = (to_set & FUSE_SET_ATTR_ATIME_NOW) ?
				(struct timespec){.tv_nsec = UTIME_NOW} : attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME)
			tv[1] = (to_set & FUSE_SET_ATTR_MTIME_NOW) ?
				(struct timespec){.tv_nsec = UTIME_NOW} : attr->st_mtim;
		rc = op_utimens(fs, path, tv, fi);
	}
	free(path);
	if (rc == 0)
		rc = inode_stat(fs, ino, &st, fi);
	if (rc)
		reply_status(req, rc);
	else
		fuse_reply_attr(req, &st, fs->attr_timeout);
}

static void do_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	char *path;
	int rc;

	(void)rdev;
	if (!S_ISREG(mode)) {
		fuse_reply_err(req, EPERM);  /* F7 */
		return;
	}
	if (!(path = path_or_reply(req, parent, name)))
		return;
	if ((rc = op_create(fs_of(req), path, mode, NULL))) {
		reply_status(req, rc);
	} else {
		touch_parent(fs_of(req), path);
		reply_made(req, parent, name, path, false);
	}
	free(path);
}

static void do_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	char *path = path_or_reply(req, parent, name);
	int rc;

	if (!path)
		return;
	if ((rc = op_mkdir(fs_of(req), path, mode))) {
		reply_status(req, rc);
	} else {
		touch_parent(fs_of(req), path);
		reply_made(req, parent, name, path, true);
	}
	free(path);
}

static void remove_name(fuse_req_t req, fuse_ino_t parent, const char *name,
			int (*op)(struct kvfs *, const char *))
{
	struct kvfs *fs = fs_of(req);
	char *path = path_or_reply(req, parent, name);
	int rc;

	if (!path)
		return;
	struct kvfs_file *f = op == op_unlink ? open_file_at(fs, path) : NULL;
	rc = op(fs, path);
	if (rc == 0) {
		inode_unlink(&fs->inodes, parent, name, f);
		touch_parent(fs, path);
	}
	else if (f)
		files_put(&fs->files, f);
	free(path);
	reply_status(req, rc);
}

static void do_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_name(req, parent, name, op_unlink);
}

static void do_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_name(req, parent, name, op_rmdir);
}

static void ll_symlink(fuse_req_t req, const char *target, fuse_ino_t parent, const char *name)
{
	(void)target;
	(void)parent;
	(void)name;
	fuse_reply_err(req, EPERM);
}

static void ll_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char *name)
{
	(void)ino;
	(void)parent;
	(void)name;
	fuse_reply_err(req, EPERM);
}

static void do_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	struct kvfs *fs = fs_of(req);
	char *from = path_or_reply(req, parent, name), *to = NULL;
	int rc;

	if (!from)
		return;
	if (!(to = path_or_reply(req, newparent, newname))) {
		free(from);
		return;
	}
	struct kvfs_file *victim = open_file_at(fs, to);
	rc = op_rename(fs, from, to, flags);
	if (rc == 0) {
		inode_move(&fs->inodes, parent, name, newparent, newname, victim);
		touch_parent(fs, from);
		touch_parent(fs, to);
	}
	else if (victim)
		files_put(&fs->files, victim);
	free(from);
	free(to);
	reply_status(req, rc);
}

static void do_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs *fs = fs_of(req);
	char *path = NULL;
	/* An inode replaced by a rename (the write-then-rename of config
	 * files) opens the file that replaced it, never ESTALE. */
	int rc = inode_path(&fs->inodes, ino, NULL, &path);

	if (rc == 0 || rc == -ESTALE)
		rc = op_open(fs, path, fi);
	if (rc)
		reply_status(req, rc);
	else if (fuse_reply_open(req, fi))
		op_release(fs, path, fi);
	free(path);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	char *buf = malloc(size ? size : 1);
	int rc;

	(void)ino;
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	rc = op_read(fs_of(req), NULL, buf, size, off, fi);
	if (rc < 0)
		reply_status(req, rc);
	else
		fuse_reply_buf(req, buf, (size_t)rc);
	free(buf);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	int rc = op_write(fs_of(req), NULL, buf, size, off, fi);

	(void)ino;
	if (rc < 0)
		reply_status(req, rc);
	else
		fuse_reply_write(req, (size_t)rc);
}

static void ll_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	reply_status(req, op_flush(fs_of(req), NULL, fi));
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	reply_status(req, op_release(fs_of(req), NULL, fi));
}

static void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	reply_status(req, op_fsync(fs_of(req), NULL, datasync, fi));
}

static void do_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dirlist *d = NULL;
	char *path = path_or_reply(req, ino, NULL);
	int rc;

	if (!path)
		return;
	rc = op_opendir(fs_of(req), path, &d);
	free(path);
	if (rc) {
		reply_status(req, rc);
		return;
	}
	fi->fh = (uintptr_t)d;
	if (fuse_reply_open(req, fi))
		op_releasedir(d);
}

static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi, bool plus)
{
	char *buf = malloc(size ? size : 1);

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ssize_t used = op_readdir(fs_of(req), req, ino, (struct dirlist *)(uintptr_t)fi->fh, buf,
				  size, off, plus);
	if (used < 0)
		reply_status(req, (int)used);
	else
		fuse_reply_buf(req, buf, (size_t)used);
	free(buf);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	readdir_common(req, ino, size, off, fi, false);
}

static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	readdir_common(req, ino, size, off, fi, true);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	op_releasedir((struct dirlist *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void ll_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	(void)datasync;
	(void)fi;
	fuse_reply_err(req, 0);  /* a directory is its keys: nothing is pending */
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	(void)ino;
	op_statfs(fs_of(req), &sv);
	fuse_reply_statfs(req, &sv);
}

static void do_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	char *path = path_or_reply(req, parent, name);
	int rc;

	if (!path)
		return;
	if ((rc = op_create(fs_of(req), path, mode, fi))) {
		reply_status(req, rc);
	} else {
		touch_parent(fs_of(req), path);
		reply_entry(req, parent, name, path, fi);
	}
	free(path);
}

/*
 * A path is built from the table, then used: a rename must not move names
 * in between (mv of a directory while a file is made in it), as libfuse's
 * path API ensured with its path locks.  Operations that go by path hold
 * fs->names for reading, rename for writing; those on open handles need
 * no name and take nothing.
 */
static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_lookup(req, parent, name);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_getattr(req, ino, fi);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_setattr(req, ino, attr, to_set, fi);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_mknod(req, parent, name, mode, rdev);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_mkdir(req, parent, name, mode);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_unlink(req, parent, name);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_rmdir(req, parent, name);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_open(req, ino, fi);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_opendir(req, ino, fi);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_rdlock(&fs->names);
	do_create(req, parent, name, mode, fi);
	pthread_rwlock_unlock(&fs->names);
}

static void ll_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned int flags)
{
	struct kvfs *fs = fs_of(req);

	pthread_rwlock_wrlock(&fs->names);
	do_rename(req, parent, name, newparent, newname, flags);
	pthread_rwlock_unlock(&fs->names);
}

const struct fuse_lowlevel_ops kvfs_ops = {
	.init = ll_init,
	.destroy = ll_destroy,
	.lookup = ll_lookup,
	.forget = ll_forget,
	.forget_multi = ll_forget_multi,
	.getattr = ll_getattr,
	.setattr = ll_setattr,
	.mknod = ll_mknod,
	.mkdir = ll_mkdir,
	.unlink = ll_unlink,
	.rmdir = ll_rmdir,
	.symlink = ll_symlink,
	.link = ll_link,
	.rename = ll_rename,
	.open = ll_open,
	.read = ll_read,
	.write = ll_write,
	.flush = ll_flush,
	.release = ll_release,
	.fsync = ll_fsync,
	.opendir = ll_opendir,
	.readdir = ll_readdir,
	.readdirplus = ll_readdirplus,
	.releasedir = ll_releasedir,
	.fsyncdir = ll_fsyncdir,
	.statfs = ll_statfs,
	.create = ll_create,
};
