/*
 * keymap.h - the one reversible mapping between keys and paths
 * (docs/mapping.md, rules M1 and M5-M9).
 *
 * Keys here are relative to the mount's root prefix: fs/ adds and strips
 * the prefix.  Paths are what FUSE's high-level API passes: "/" for the
 * root, "/a/b" otherwise, never with a trailing slash.
 */
#ifndef KVFS_KEYMAP_H
#define KVFS_KEYMAP_H

#include <stddef.h>

#define KEYMAP_NAME_MAX 255
#define KEYMAP_VALUE_NAME "%value"   /* M5: the value of a key that is also a directory */
#define KEYMAP_HEALTH_NAME ".health" /* M9: the virtual file at the root */

enum keymap_kind {
	KM_ROOT,    /* "/": key is empty; list prefix "" */
	KM_KEY,     /* a file or directory: key; as a directory its list prefix is key + "/" */
	KM_CONT,    /* a continuation directory (M7): key is the bytes so far, and is also
	               its list prefix (no trailing '/') */
	KM_VALUE,   /* ".../%value" (M5): key is the directory's key, a value */
	KM_HEALTH,  /* "/.health" */
};

struct keymap_res {
	enum keymap_kind kind;
	char *key;      /* malloc'd, NUL-terminated after key_len bytes (may hold NULs) */
	size_t key_len;
};

/*
 * Path of a key: malloc'd, NUL-terminated, starting with "/".  The key's
 * last segment becomes the last component (a file name, or a directory
 * name when the caller uses it as one).  NULL only when out of memory.
 */
char *keymap_encode(const char *key, size_t klen);

/*
 * Decode a path.  Returns 0 and fills res (free res->key with free()),
 * or -EINVAL when a component is not the exact encoding of a key segment
 * (M8), or -ENOMEM.
 */
int keymap_decode(const char *path, struct keymap_res *res);

/* Encoded name of one segment as it appears in a directory, at_root is
 * nonzero for the mount root (where ".health" is reserved).  Writes at most
 * 3*len+2 bytes plus NUL to out; returns the name length.  Used by tests. */
size_t keymap_encode_segment(const char *seg, size_t len, int at_root, char *out);

#endif
