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
	KM_HEALTH,  /* "/.health": key is empty */
};

struct keymap_res {
	enum keymap_kind kind;
	char *key;      /* malloc'd, NUL-terminated after key_len bytes (may hold NULs) */
	size_t key_len;
};

/*
 * Two points the rules of docs/mapping.md leave open, settled here:
 *
 * - An escaped name (M6) writes a leading '+' of its segment as "%2B", so no
 *   escaped name begins with "%+", the mark of a piece (M7).  Otherwise the
 *   segment "+<NUL>aaa..." and the piece "<NUL>aaa..." share a name, and two
 *   keys ("<NUL>" 250*"a" "bb" and "+<NUL>" 250*"a" "/bb") share a path.
 *   Plain names and pieces are unchanged: "+x" is still "+x".
 * - A piece never takes the whole rest of its segment: each is the longest
 *   *proper* prefix that fits.  This only matters when the "%2B" is what
 *   makes a name too long ("+...<NUL>..." with 253 esc() bytes), which is
 *   then the piece "%++..." of all but its last byte, and that byte.
 *
 * All four functions below share one encoder, and decoding is checked by
 * re-encoding (M8), so they cannot disagree.  All run in time linear in the
 * length of the key or path.
 */

/*
 * Path of a key: malloc'd, NUL-terminated, starting with "/".  The key's
 * last segment becomes the last component (a file name, or a directory
 * name when the caller uses it as one).  NULL only when out of memory.
 */
char *keymap_encode(const char *key, size_t klen);

/*
 * Decode a path.  Returns 0 and fills res (free res->key with free(); it is
 * allocated, and empty, for KM_ROOT and KM_HEALTH too), or -EINVAL when the
 * path is not exactly the encoding of a key (M8): keymap_encode(res->key),
 * with "/%value" appended for KM_VALUE, or for KM_CONT the directories that
 * the encoding of a longer key runs through.  -ENOMEM.  On error res is
 * untouched.
 *
 * -EINVAL: a path not starting with '/', an empty, "." or ".." component, a
 * bad or needless %XX, lower-case hex, a '%' name of a segment that is plain
 * or that needs pieces, ".health" as a directory at the root, "%value" at
 * the root, not last, or in a continuation directory, and a "%+" piece that
 * is not the longest that fits.  For KM_CONT the last piece cannot be judged
 * by the bytes after it; it is accepted when some key runs through it (its
 * name is 253..255 bytes, or 252 for a piece "%++..." cut short, see above).
 */
int keymap_decode(const char *path, struct keymap_res *res);

/*
 * Name of one segment in its directory; at_root is nonzero directly under
 * the mount root (where ".health" is reserved).  A segment that needs
 * pieces (M7) gets the name of its first piece, the continuation directory
 * that holds the rest.  Writes at most 3*len+2 bytes, and never more than
 * KEYMAP_NAME_MAX, plus NUL to out; returns the name length (at least 1).
 * Not for the entries of a continuation directory: see keymap_child_name().
 */
size_t keymap_encode_segment(const char *seg, size_t len, int at_root, char *out);

/*
 * Name of the entry that shows key in the directory dir (a KM_ROOT, KM_KEY
 * or KM_CONT from keymap_decode), for readdir: key is a key, or a common
 * prefix ending in '/', from listing dir's list prefix (see enum
 * keymap_kind).  Writes the name and NUL to out, which must hold
 * KEYMAP_NAME_MAX + 1 bytes, sets *is_dir (when not NULL) when the entry is
 * a directory (more of key follows it: a '/' or more pieces) and returns the
 * name length.  Returns 0 when key is not shown in dir: it does not start
 * with the list prefix, dir is not a directory kind, or dir is a
 * continuation directory that key's segment does not run through (under
 * "%+" 253*"x" neither 253*"x" nor 254*"x" is shown: both are plain names at
 * the root).
 *
 * A key equal to the list prefix of a KM_ROOT or KM_KEY directory (its
 * marker, M4) gives the name "%" like any empty segment; whether to show it
 * is the caller's business.  Same answers as encoding the key and taking the
 * component after dir's path, without the allocation.
 */
size_t keymap_child_name(const struct keymap_res *dir, const char *key, size_t klen,
			 char *out, int *is_dir);

#endif
