/*
 * keymap.c - keys to paths and back (docs/mapping.md, rules M1 and M5-M9).
 *
 * One encoder makes every name.  The decoder reads a path without judging
 * it, then runs that encoder over what it read and compares the result with
 * the path byte for byte, so the two can never disagree about which names
 * are canonical (M8), and every rule lives in exactly one place.
 */
#include "keymap.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define PIECE_PREFIX "%+"
/* esc() bytes one piece may hold: "%+" and the piece fill a name (M7) */
#define PIECE_ESC_MAX (KEYMAP_NAME_MAX - 2)

/* How a component of a path names (part of) a key segment. */
enum comp_form {
	COMP_PLAIN,   /* the segment itself */
	COMP_ESCAPED, /* "%" + esc(segment) (M6) */
	COMP_PIECE,   /* "%+" + esc(piece): a continuation directory (M7) */
};

/* Bytes that esc() writes as %XX (M6). */
static bool must_escape(unsigned char c)
{
	return c == '%' || c < 0x20 || c == 0x7f;
}

static size_t esc_len(unsigned char c)
{
	return must_escape(c) ? 3 : 1;
}

static bool is_plain(const unsigned char *s, size_t len, bool at_root)
{
	if (len == 0 || len > KEYMAP_NAME_MAX || s[0] == '%')
		return false;
	if (s[0] == '.' && (len == 1 || (len == 2 && s[1] == '.')))
		return false;
	if (at_root && len == strlen(KEYMAP_HEALTH_NAME) &&
	    memcmp(s, KEYMAP_HEALTH_NAME, len) == 0)
		return false;
	return memchr(s, '\0', len) == NULL;
}

/*
 * Length of the escaped name of s.  A leading '+' is written "%2B" so that
 * no escaped name begins with "%+", the mark of a piece: without it the
 * segment "+\0aaa..." and the piece "\0aaa..." would share a name.  Counting
 * stops once the name is known not to fit, so this is O(1) in len.
 */
static size_t escaped_name_len(const unsigned char *s, size_t len)
{
	size_t n = 1;

	if (len > 0 && s[0] == '+')
		n += 2;
	for (size_t i = 0; i < len && n <= KEYMAP_NAME_MAX; i++)
		n += esc_len(s[i]);
	return n;
}

/* Longest prefix of s[0..limit) whose esc() fits in a piece. */
static size_t piece_len(const unsigned char *s, size_t limit)
{
	size_t n = 0, w = 0;

	while (n < limit && w + esc_len(s[n]) <= PIECE_ESC_MAX)
		w += esc_len(s[n++]);
	return n;
}

/*
 * The first component of the name of the segment s: its form, and in *take
 * how many bytes of s it stands for (all of them unless it is a piece).  A
 * piece always leaves at least one byte for the components after it; that
 * matters only when the "%2B" of a leading '+' is what makes the name too
 * long, since otherwise the name overflows by more than a piece can hold.
 */
static enum comp_form first_component(const unsigned char *s, size_t len, bool at_root,
				      size_t *take)
{
	if (is_plain(s, len, at_root)) {
		*take = len;
		return COMP_PLAIN;
	}
	if (len < KEYMAP_NAME_MAX && escaped_name_len(s, len) <= KEYMAP_NAME_MAX) {
		*take = len;
		return COMP_ESCAPED;
	}
	*take = piece_len(s, len - 1);
	return COMP_PIECE;
}

/*
 * Where encoded bytes go.  With buf the bytes are stored there; with expect
 * they are compared with it instead (the decoder's check, which then costs
 * no allocation); with neither they are only counted.
 */
struct sink {
	char *buf;
	const char *expect;
	size_t expect_len;
	size_t len;
	bool differs;
};

static void put(struct sink *o, const void *p, size_t n)
{
	if (o->buf)
		memcpy(o->buf + o->len, p, n);
	else if (o->expect && !o->differs)
		o->differs = o->len + n > o->expect_len || memcmp(o->expect + o->len, p, n) != 0;
	o->len += n;
}

/* Appends esc(s) to out; returns the new length (M6). */
static size_t esc(char *out, size_t n, const unsigned char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";

	for (size_t i = 0; i < len; i++) {
		if (must_escape(s[i])) {
			out[n++] = '%';
			out[n++] = hex[s[i] >> 4];
			out[n++] = hex[s[i] & 0xf];
		} else {
			out[n++] = (char)s[i];
		}
	}
	return n;
}

/* One component.  The callers chose len by first_component() or piece_len(),
 * so an escaped name or a piece fits in KEYMAP_NAME_MAX bytes. */
static void put_component(struct sink *o, enum comp_form form, const unsigned char *s, size_t len)
{
	char name[KEYMAP_NAME_MAX];
	size_t n = 0;

	switch (form) {
	case COMP_PLAIN:
		put(o, s, len);
		return;
	case COMP_ESCAPED:
		name[n++] = '%';
		if (len > 0 && s[0] == '+') {
			memcpy(name + n, "%2B", 3);
			n += 3;
			s++;
			len--;
		}
		break;
	case COMP_PIECE:
		memcpy(name, PIECE_PREFIX, 2);
		n = 2;
		break;
	}
	n = esc(name, n, s, len);
	put(o, name, n);
}

/* The components naming a whole segment, joined by '/' (M6, M7). */
static void put_segment(struct sink *o, const unsigned char *s, size_t len, bool at_root)
{
	for (;;) {
		size_t take;
		enum comp_form form = first_component(s, len, at_root, &take);

		put_component(o, form, s, take);
		if (form != COMP_PIECE)
			return;
		put(o, "/", 1);
		s += take;
		len -= take;
		at_root = false; /* the rest of a segment is never directly under the root */
	}
}

/*
 * The pieces naming the first bytes of a segment that goes on past them, as
 * in a continuation directory's path: greedy pieces all, the last one
 * whatever is left (the caller judges its length, see keymap_decode).
 */
static void put_partial_segment(struct sink *o, const unsigned char *s, size_t len)
{
	while (len > 0) {
		size_t take = piece_len(s, len);

		put_component(o, COMP_PIECE, s, take);
		s += take;
		len -= take;
		if (len > 0)
			put(o, "/", 1);
	}
}

/* The path of key; when partial, its last segment goes on past the key. */
static void put_key(struct sink *o, const char *key, size_t klen, bool partial)
{
	const unsigned char *k = (const unsigned char *)key;
	size_t start = 0;

	for (;;) {
		const unsigned char *slash = memchr(k + start, '/', klen - start);
		size_t end = slash ? (size_t)(slash - k) : klen;

		put(o, "/", 1);
		if (!slash && partial)
			put_partial_segment(o, k + start, end - start);
		else
			put_segment(o, k + start, end - start, start == 0);
		if (!slash)
			return;
		start = end + 1;
	}
}

char *keymap_encode(const char *key, size_t klen)
{
	struct sink o = { 0 };

	put_key(&o, key, klen, false);
	o.buf = malloc(o.len + 1);
	if (!o.buf)
		return NULL;
	o.len = 0;
	put_key(&o, key, klen, false);
	o.buf[o.len] = '\0';
	return o.buf;
}

size_t keymap_encode_segment(const char *seg, size_t len, int at_root, char *out)
{
	const unsigned char *s = (const unsigned char *)seg;
	struct sink o = { .buf = out };
	size_t take;
	enum comp_form form = first_component(s, len, at_root, &take);

	put_component(&o, form, s, take);
	out[o.len] = '\0';
	return o.len;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Reverse of esc(); appends to out + *olen.  Whether the escapes were
 * needed is for the re-encoding to judge. */
static int unescape(const char *s, size_t n, char *out, size_t *olen)
{
	size_t k = *olen;

	for (size_t i = 0; i < n; i++) {
		if (s[i] != '%') {
			out[k++] = s[i];
			continue;
		}
		if (n - i < 3)
			return -EINVAL;
		int hi = hex_digit(s[i + 1]), lo = hex_digit(s[i + 2]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[k++] = (char)(hi << 4 | lo);
		i += 2;
	}
	*olen = k;
	return 0;
}

static int set_result(struct keymap_res *res, enum keymap_kind kind, char *key, size_t klen)
{
	if (!key) {
		key = malloc(1);
		if (!key)
			return -ENOMEM;
	}
	key[klen] = '\0';
	res->kind = kind;
	res->key = key;
	res->key_len = klen;
	return 0;
}

/*
 * The last piece of a continuation directory's path is judged by what could
 * follow it.  A piece is the longest that fits and the next byte may need
 * 3 bytes, so its name is 253..255 bytes, or 252 when it was cut short to
 * leave one byte: "+..." with a NUL, 253 esc() bytes in all (first_component).
 */
static bool last_piece_possible(const char *name, size_t len)
{
	return len >= KEYMAP_NAME_MAX - 2 || (len == KEYMAP_NAME_MAX - 3 && name[2] == '+');
}

int keymap_decode(const char *path, struct keymap_res *res)
{
	size_t plen = strlen(path);

	if (path[0] != '/')
		return -EINVAL;
	if (plen == 1)
		return set_result(res, KM_ROOT, NULL, 0);
	if (strcmp(path + 1, KEYMAP_HEALTH_NAME) == 0)
		return set_result(res, KM_HEALTH, NULL, 0);

	/* Every form of component is at least as long as the bytes it stands
	 * for, and the leading '/' stands for none: plen bytes hold the key
	 * and its NUL. */
	char *key = malloc(plen);
	if (!key)
		return -ENOMEM;

	enum keymap_kind kind = KM_KEY;
	size_t klen = 0;
	bool in_piece = false; /* the last component was a piece: its segment goes on */
	const char *c = path + 1, *end = path + plen;
	const char *last = c;

	for (;;) {
		const char *slash = memchr(c, '/', (size_t)(end - c));
		size_t clen = (size_t)((slash ? slash : end) - c);
		int err = 0;

		last = c;
		if (clen == strlen(KEYMAP_VALUE_NAME) && memcmp(c, KEYMAP_VALUE_NAME, clen) == 0) {
			/* M5: only the last component, in a key's own directory */
			if (slash || c == path + 1 || in_piece)
				goto invalid;
			kind = KM_VALUE;
			break;
		}
		if (c != path + 1 && !in_piece)
			key[klen++] = '/';
		in_piece = clen >= 2 && c[0] == '%' && c[1] == '+';
		if (in_piece)
			err = unescape(c + 2, clen - 2, key, &klen);
		else if (clen >= 1 && c[0] == '%')
			err = unescape(c + 1, clen - 1, key, &klen);
		else {
			memcpy(key + klen, c, clen);
			klen += clen;
		}
		if (err)
			goto invalid;
		if (!slash)
			break;
		c = slash + 1;
	}
	if (in_piece) {
		kind = KM_CONT;
		if (!last_piece_possible(last, (size_t)(end - last)))
			goto invalid;
	}

	struct sink o = { .expect = path, .expect_len = plen };
	put_key(&o, key, klen, kind == KM_CONT);
	if (kind == KM_VALUE)
		put(&o, "/" KEYMAP_VALUE_NAME, 1 + strlen(KEYMAP_VALUE_NAME));
	if (o.differs || o.len != plen)
		goto invalid;
	return set_result(res, kind, key, klen);

invalid:
	free(key);
	return -EINVAL;
}

/* Whether the pieces of the segment s end exactly after its first at bytes. */
static bool pieces_end_at(const unsigned char *s, size_t len, bool at_root, size_t at)
{
	size_t done = 0;

	while (done < at) {
		size_t take;

		if (first_component(s + done, len - done, at_root && done == 0, &take) != COMP_PIECE)
			return false;
		done += take;
	}
	return done == at;
}

size_t keymap_child_name(const struct keymap_res *dir, const char *key, size_t klen,
			 char *out, int *is_dir)
{
	const unsigned char *k = (const unsigned char *)key;
	size_t from; /* where the child's bytes begin in key */

	switch (dir->kind) {
	case KM_ROOT:
		from = 0;
		break;
	case KM_KEY:
		if (klen <= dir->key_len || memcmp(key, dir->key, dir->key_len) != 0 ||
		    key[dir->key_len] != '/')
			return 0;
		from = dir->key_len + 1;
		break;
	case KM_CONT: {
		if (klen <= dir->key_len || memcmp(key, dir->key, dir->key_len) != 0)
			return 0;
		size_t seg = dir->key_len;
		while (seg > 0 && key[seg - 1] != '/')
			seg--;
		const unsigned char *slash = memchr(k + seg, '/', klen - seg);
		size_t seg_end = slash ? (size_t)(slash - k) : klen;
		/* Keys sharing the directory's bytes need not run through it:
		 * their segment may be short enough to have no pieces at all. */
		if (!pieces_end_at(k + seg, seg_end - seg, seg == 0, dir->key_len - seg))
			return 0;
		from = dir->key_len;
		break;
	}
	default:
		return 0;
	}

	const unsigned char *slash = memchr(k + from, '/', klen - from);
	size_t seg_len = slash ? (size_t)(slash - (k + from)) : klen - from;
	size_t take;
	enum comp_form form = first_component(k + from, seg_len, from == 0, &take);
	struct sink o = { .buf = out };

	put_component(&o, form, k + from, take);
	out[o.len] = '\0';
	if (is_dir)
		*is_dir = form == COMP_PIECE || slash != NULL;
	return o.len;
}
