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

static inline struct kvfs *FS(void)
{
	return fuse_get_context()->private_data;
}

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
/* A write through the mount sets the file's times to now. */
void touch(struct kvfs *fs, const char *key, size_t klen);

/* fs/dir.c and fs/rename.c */
int kvfs_opendir(const char *path, struct fuse_file_info *fi);
int kvfs_releasedir(const char *path, struct fuse_file_info *fi);
int kvfs_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t off,
		 struct fuse_file_info *fi, enum fuse_readdir_flags flags);
int kvfs_mkdir(const char *path, mode_t mode);
int kvfs_rmdir(const char *path);
int kvfs_rename(const char *from, const char *to, unsigned int flags);

#endif
