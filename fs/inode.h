/*
 * inode.h - the inodes the kernel holds, and the names they have now.
 *
 * Every name the kernel has looked up (lookup, create, mkdir, readdirplus)
 * is an inode here until the kernel forgets it, as in libfuse's
 * passthrough_ll: the FUSE node id is the inode's address.  An inode knows
 * its parent and its name, so a rename of a directory moves its whole
 * subtree at once, and its path is found by walking up.  An inode that is
 * unlinked or replaced by a rename loses its name but lives on while the
 * kernel holds it: an open file keeps working (fstat says nlink 0).
 */
#ifndef KVFS_INODE_H
#define KVFS_INODE_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

struct inode {
	struct inode *parent;   /* holds a reference on it */
	char *name;             /* NULL once unlinked or replaced */
	struct inode *next;     /* hash chain by (parent, name) */
	uint64_t nlookup;       /* the kernel's references */
	unsigned refs;          /* children in the table, + 1 while nlookup > 0 */
	bool is_dir;
	char *gone;             /* replaced by a rename: the path it had */
	void *file;             /* unlinked or replaced while open: its open file */
	struct stat st;         /* what was last answered for it */
};

struct inodes {
	pthread_mutex_t lock;
	struct inode root;
	struct inode **buckets;
	size_t nbuckets, count;
	uint64_t next_ino;
	/* The open file an unlinked inode keeps (see inode_unlink): its size
	 * (false if not known), and the inode's reference dropped. */
	bool (*file_size)(void *ctx, void *file, off_t *size);
	void (*file_hold)(void *ctx, void *file);
	void (*file_drop)(void *ctx, void *file);
	void *ctx;
};

int inodes_init(struct inodes *t);
void inodes_destroy(struct inodes *t);
/* The inode of a node id (FUSE_ROOT_ID is the root). */
struct inode *inode_of(struct inodes *t, fuse_ino_t ino);
/*
 * The path of ino ("/" for the root), with "/name" appended when name is
 * set, malloc'd into *path.  -ENOENT when ino or a directory above it has
 * lost its name (-ESTALE for ino itself when it was replaced: *path is then
 * the path it had), -ENOMEM.
 */
int inode_path(struct inodes *t, fuse_ino_t ino, const char *name, char **path);
/*
 * The kernel learns (parent, name) with attributes *st: the inode of that
 * name (a new one if there was none, or, when replace is set, if it was of
 * the other type) with one more lookup; st->st_ino is set, and the node id
 * returned (0: no memory, or the other type without replace).
 */
fuse_ino_t inode_link(struct inodes *t, fuse_ino_t parent, const char *name,
		      struct stat *st, bool replace);
/* The kernel forgets n lookups of ino. */
void inode_forget(struct inodes *t, fuse_ino_t ino, uint64_t n);
/* (parent, name) was removed from the store; file (or NULL) is the open
 * file it had, whose reference the inode takes over. */
void inode_unlink(struct inodes *t, fuse_ino_t parent, const char *name, void *file);
/* (parent, name) was renamed to (newparent, newname), replacing what was
 * there; victim_file (or NULL) is the replaced one's open file, as above. */
void inode_move(struct inodes *t, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		const char *newname, void *victim_file);
/* Remember *st as ino's attributes (its st_ino is set from the inode). */
void inode_remember(struct inodes *t, fuse_ino_t ino, struct stat *st);
/* The attributes last remembered for ino, with the size of the open file
 * it keeps; false if it has none. */
bool inode_recall(struct inodes *t, fuse_ino_t ino, struct stat *st);

#endif
