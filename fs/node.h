/*
 * node.h - what a path names in the store, shared by the FUSE operations
 * (fs/ops.c, fs/dir.c, fs/rename.c; implemented in fs/node.c).
 */
#ifndef KVFS_NODE_H
#define KVFS_NODE_H

#include "fs.h"
#include "keymap.h"

/* What a path names: a decoded kind and the full store key. */
struct node {
	enum keymap_kind kind;
	char *key;
	size_t klen;
};

enum ntype { NT_NONE, NT_FILE, NT_DIR };

void node_free(struct node *n);
/* Decode a FUSE path into its kind and full store key (root prefix added). */
int node_decode(struct kvfs *fs, const char *path, struct node *n);
/* Append '/' to n->key (there is room) and return the new length; unslash undoes it. */
size_t slash(struct node *n);
void unslash(struct node *n);
/* The list prefix of a directory node (slash() for key directories). */
size_t dir_prefix(struct node *n);
/* Any key under prefix other than the marker `skip` (NULL: any at all)? */
int any_under(struct kvfs *fs, const char *prefix, size_t plen, const char *skip,
	      size_t skip_len, bool *found);
/* Continuation directories (M7) made by mkdir, by path. */
bool cont_known(struct kvfs *fs, const char *path);
int cont_add(struct kvfs *fs, const char *path);
bool cont_remove(struct kvfs *fs, const char *path);
/* Does a key run through the continuation directory at path? */
int cont_used(struct kvfs *fs, struct node *n, const char *path, bool *found);
/* File, directory or nothing, asking the store; *size for files. */
int node_type(struct kvfs *fs, struct node *n, const char *path, enum ntype *t, uint64_t *size);
void fill_stat(struct kvfs *fs, const char *key, size_t klen, enum ntype t, uint64_t size,
	       struct stat *st);
void default_attr(struct kvfs *fs, bool is_dir, struct kvfs_attr *a);
/* A write through the mount sets the file's (is_dir: directory's) times to now. */
void touch(struct kvfs *fs, const char *key, size_t klen, bool is_dir);
/* An entry of path's directory was added or removed: its times are now. */
void touch_parent(struct kvfs *fs, const char *path);

/*
 * The operations by path ("/" for the root, "/a/b"), as fs/lowlevel.c
 * calls them once it knows the path of an inode: 0 or a negative errno.
 */
/* fs/ops.c */
int op_getattr(struct kvfs *fs, const char *path, struct stat *st, struct fuse_file_info *fi);
int op_open(struct kvfs *fs, const char *path, struct fuse_file_info *fi);
/* fi NULL: mknod of a regular file */
int op_create(struct kvfs *fs, const char *path, mode_t mode, struct fuse_file_info *fi);
int op_read(struct kvfs *fs, const char *path, char *buf, size_t size, off_t off,
	    struct fuse_file_info *fi);
int op_write(struct kvfs *fs, const char *path, const char *buf, size_t size, off_t off,
	     struct fuse_file_info *fi);
int op_flush(struct kvfs *fs, const char *path, struct fuse_file_info *fi);
int op_fsync(struct kvfs *fs, const char *path, int datasync, struct fuse_file_info *fi);
int op_release(struct kvfs *fs, const char *path, struct fuse_file_info *fi);
int op_truncate(struct kvfs *fs, const char *path, off_t size, struct fuse_file_info *fi);
int op_unlink(struct kvfs *fs, const char *path);
int op_chmod(struct kvfs *fs, const char *path, mode_t mode, struct fuse_file_info *fi);
int op_chown(struct kvfs *fs, const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi);
int op_utimens(struct kvfs *fs, const char *path, const struct timespec tv[2],
	       struct fuse_file_info *fi);
int op_statfs(struct kvfs *fs, struct statvfs *sv);

/* fs/dir.c and fs/rename.c */
struct dirlist;
int op_opendir(struct kvfs *fs, const char *path, struct dirlist **d);
void op_releasedir(struct dirlist *d);
/* Fill buf (size bytes) with the entries of d from offset off, with their
 * attributes and one lookup each when plus; returns the bytes used.  At
 * offset 0 after the first read (rewinddir) the store is listed again. */
ssize_t op_readdir(struct kvfs *fs, fuse_req_t req, fuse_ino_t ino, struct dirlist *d,
		   char *buf, size_t size, off_t off, bool plus);
int op_mkdir(struct kvfs *fs, const char *path, mode_t mode);
int op_rmdir(struct kvfs *fs, const char *path);
int op_rename(struct kvfs *fs, const char *from, const char *to, unsigned int flags);

#endif
