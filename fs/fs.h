/*
 * fs.h - the kvfs filesystem: state shared by the FUSE operations.
 *
 * fs/ knows no backend by name: it talks to the store through kv.h only.
 * One struct kvfs per mount, reached with fuse_get_context()->private_data.
 */
#ifndef KVFS_FS_H
#define KVFS_FS_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "inode.h"
#include "kv.h"

/* FNV-1a: the hash of both tables below. */
static inline uint64_t kvfs_hash(const char *p, size_t n, uint64_t seed)
{
	uint64_t h = 1469598103934665603ULL ^ seed;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
	return h;
}

/* ---- fs/attrs.c: attributes kept for the life of the mount (rule A2) ---- */

struct kvfs_attr {
	mode_t mode;                 /* permission bits only */
	uid_t uid;
	gid_t gid;
	struct timespec atime, mtime, ctime;
};

struct attr_node;
struct kvfs_attrs {
	pthread_mutex_t lock;
	struct attr_node **buckets;
	size_t nbuckets, count;
};

void attrs_init(struct kvfs_attrs *t);
void attrs_destroy(struct kvfs_attrs *t);
/* Copy the kept attributes of (key, is_dir) into *out; false if none kept. */
bool attrs_get(struct kvfs_attrs *t, const char *key, size_t klen, bool is_dir,
	       struct kvfs_attr *out);
/* Keep *a for (key, is_dir), replacing what was kept. */
int attrs_put(struct kvfs_attrs *t, const char *key, size_t klen, bool is_dir,
	      const struct kvfs_attr *a);
void attrs_forget(struct kvfs_attrs *t, const char *key, size_t klen, bool is_dir);
/* Move every entry whose key starts with `from` (or equals it) to start with `to`. */
void attrs_rename(struct kvfs_attrs *t, const char *from, size_t flen, const char *to,
		  size_t tlen, bool subtree);

/* ---- fs/files.c: open files, one shared write buffer per key (rule F3) ---- */

struct kvfs_file {
	pthread_mutex_t lock;        /* guards everything below but key (see files_rename) */
	char *key;                   /* full store key; guarded by the table lock */
	size_t klen;
	char *data;                  /* the value as this mount sees it */
	size_t len, cap;
	bool loaded;                 /* data holds the value (else it must be read) */
	bool dirty;                  /* data differs from the store: commit on flush */
	bool unlinked;               /* key was removed or replaced: never commit */
	int error;                   /* a write the store could never take (-EFBIG):
	                                the next commit returns it and keeps the old value */
	unsigned refs;               /* open handles; guarded by the table lock */
	struct kvfs_file *next;      /* hash chain */
};

struct kvfs_files {
	pthread_mutex_t lock;
	struct kvfs_file **buckets;
	size_t nbuckets;
};

struct kvfs;
void files_init(struct kvfs_files *t);
void files_destroy(struct kvfs_files *t);
/* The open file for key, created if needed, with one more reference. */
struct kvfs_file *files_get(struct kvfs_files *t, const char *key, size_t klen);
/* The open file for key with a reference, or NULL: for path-only operations. */
struct kvfs_file *files_find(struct kvfs_files *t, const char *key, size_t klen);
/* One more reference to f, which the caller already holds one of. */
void files_ref(struct kvfs_files *t, struct kvfs_file *f);
void files_put(struct kvfs_files *t, struct kvfs_file *f);
/* If key is open here, the size this mount sees (writes not yet
 * committed included) replaces *size. */
void files_open_size(struct kvfs_files *t, const char *key, size_t klen, uint64_t *size);
/* Call fn on every open file at key or under key/ (key NULL: every open
 * file), with a reference held. */
void files_each(struct kvfs_files *t, const char *key, size_t klen,
		void (*fn)(struct kvfs *, struct kvfs_file *), struct kvfs *fs);
/* After a rename in the store: move open files from `from` to `to` (a whole
 * subtree when subtree is set); an open file at a replaced key is unlinked. */
/* Commit the open files at key or under key/ (a refusal is kept for their
 * next close or fsync) and hold them locked, with a reference, in *out:
 * nothing of them is written until files_release().  For a rename, and
 * only under fs->names held for writing (it takes several file locks). */
size_t files_hold(struct kvfs *fs, const char *key, size_t klen, struct kvfs_file ***out);
void files_release(struct kvfs_files *t, struct kvfs_file **all, size_t n);
void files_rename(struct kvfs_files *t, const char *from, size_t flen, const char *to,
		  size_t tlen, bool subtree);
void files_unlinked(struct kvfs_files *t, const char *key, size_t klen);

/* A malloc'd copy of f's key (it may change under a rename); NULL if out of memory. */
char *file_key(struct kvfs *fs, struct kvfs_file *f, size_t *klen, bool *unlinked);
/* With f->lock held: read the value from the store unless loaded or dirty. */
int file_load(struct kvfs *fs, struct kvfs_file *f);
/* With f->lock held: one set of the buffer if dirty.  A refused set is
 * returned once and the buffer dropped, so later reads show the store. */
int file_commit(struct kvfs *fs, struct kvfs_file *f);
/* file_commit under f->lock. */
int file_flush(struct kvfs *fs, struct kvfs_file *f);
int file_resize(struct kvfs_file *f, size_t len);

/* ---- fs/health.c: the virtual .health file (rules H1, H2) ---- */

struct kvfs_health {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	bool started, stop;
	uint64_t requested, completed;   /* generations of health checks */
	int rc;                          /* result of the last completed check */
	double latency_ms;
	struct kv_health info;
	struct timespec checked_at;
	char last_error[256];            /* last store failure seen by any operation */
	struct timespec last_error_at;
};

void health_init(struct kvfs_health *h);
/* Stop the worker; false if it is stuck in the store (then the store must
 * not be closed under it). */
bool health_stop(struct kvfs_health *h, int wait_ms);
/* JSON text of .health, malloc'd. Waits at most fs->health_timeout_ms. */
char *health_report(struct kvfs *fs, size_t *len);
/* Remember a store failure for .health's last_error. */
void health_note_error(struct kvfs *fs, const char *op, int err);

/* Is key the marker of a directory if its value is empty (M4): its last
 * segment is empty ("d/"), or it is the mount root's own prefix? */
#define kvfs_marker_key(fs, key, klen) ((klen) == (fs)->root_len || (key)[(klen) - 1] == '/')

/* ---- the mount ---- */

struct kvfs {
	struct kv_store *store;
	char *root;                  /* key prefix of the mount root: "" or "PREFIX/" */
	size_t root_len;
	uid_t uid;
	gid_t gid;
	mode_t umask;
	int health_timeout_ms;
	double entry_timeout, attr_timeout, negative_timeout;   /* the kernel's caches, s */
	struct timespec mounted_at;
	struct inodes inodes;
	pthread_rwlock_t names;      /* see fs/lowlevel.c: paths stay true while used */
	struct fuse_conn_info_opts *conn_opts;   /* libfuse's max_write=, ... */
	struct kvfs_attrs attrs;
	struct kvfs_files files;
	struct kvfs_health health;
	pthread_mutex_t cont_lock;   /* continuation directories made by mkdir (M7) */
	char **cont_dirs;
	size_t ncont;
};

/* fs/lowlevel.c: the FUSE operations */
extern const struct fuse_lowlevel_ops kvfs_ops;

/* fs/ops.c */
int kvfs_init_state(struct kvfs *fs);
/* Free what kvfs_init_state made; false if the store is still in use by a
 * stuck health check and must be left open. */
bool kvfs_free_state(struct kvfs *fs);
/* Commit every dirty open file: at unmount and on SIGTERM. */
void kvfs_flush_all(struct kvfs *fs);

#endif
