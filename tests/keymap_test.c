/*
 * keymap_test.c - tests of the key <-> path mapping (docs/mapping.md, M1 and
 * M5-M9): table tests of the examples and the edges of every rule, names
 * that must be refused, and a property test on random keys and paths.
 *
 * Usage: keymap-test [SEED [KEYS]]   (a random seed is printed when none is
 * given; the last line is "N passed, N failed"; the exit status is 1 on any
 * failure)
 */
#include "keymap.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static unsigned long passed, failed;

/* A printable rendering of bytes for failure messages, cut to a readable length. */
static const char *show(const char *s, size_t len)
{
	static char out[4][400];
	static int which;
	char *o = out[which++ % 4];
	size_t n = 0;

	for (size_t i = 0; i < len && n < sizeof(out[0]) - 24; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c < 0x7f && c != '\\')
			o[n++] = (char)c;
		else
			n += (size_t)sprintf(o + n, "\\x%02x", c);
	}
	if (n >= sizeof(out[0]) - 24)
		n += (size_t)sprintf(o + n, "...(%zu bytes)", len);
	o[n] = '\0';
	return o;
}

#define CHECK(cond, ...)                                                   \
	do {                                                               \
		if (cond) {                                                \
			passed++;                                          \
		} else {                                                   \
			failed++;                                          \
			if (failed <= 50) {                                \
				fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
				fprintf(stderr, __VA_ARGS__);              \
				fputc('\n', stderr);                       \
			}                                                  \
		}                                                          \
	} while (0)

/* ---- building test strings ---------------------------------------------- */

/* A string literal and its length, so that literals may hold NUL bytes. */
#define T(lit) lit, sizeof(lit) - 1

struct bytes {
	char *p;
	size_t len;
};

/*
 * Expand a pattern: bytes stand for themselves, and "{N*c}" for N copies of
 * the byte c, or "{N*%25}" for N copies of the three bytes "%25" and so on
 * (anything up to '}'), so "{253*x}" is 253 x's.
 */
static struct bytes expand(const char *pat, size_t plen)
{
	struct bytes b = { malloc(plen * 256 + 1), 0 };

	if (!b.p)
		abort();
	for (size_t i = 0; i < plen; i++) {
		if (pat[i] != '{') {
			b.p[b.len++] = pat[i];
			continue;
		}
		char *star;
		unsigned long n = strtoul(pat + i + 1, &star, 10);
		const char *unit = star + 1;
		const char *close = memchr(unit, '}', plen - (size_t)(unit - pat));
		size_t ulen = (size_t)(close - unit);
		if (*star != '*' || !close || n * ulen > plen * 256 - b.len)
			abort();
		for (unsigned long r = 0; r < n; r++) {
			memcpy(b.p + b.len, unit, ulen);
			b.len += ulen;
		}
		i = (size_t)(close - pat);
	}
	b.p[b.len] = '\0';
	return b;
}

static bool same(const char *a, size_t alen, const char *b, size_t blen)
{
	return alen == blen && memcmp(a, b, alen) == 0;
}

static const char *kind_name(enum keymap_kind k)
{
	switch (k) {
	case KM_ROOT: return "ROOT";
	case KM_KEY: return "KEY";
	case KM_CONT: return "CONT";
	case KM_VALUE: return "VALUE";
	case KM_HEALTH: return "HEALTH";
	}
	return "?";
}

/* ---- table tests ---------------------------------------------------------- */

struct pair {
	const char *key;
	size_t klen;
	const char *path;
	size_t plen;
};

/* Keys and their paths; each is checked both ways (M1, M6, M7, M9). */
static const struct pair pairs[] = {
	/* M1: plain segments are themselves */
	{ T("a"), T("/a") },
	{ T("a/b/c"), T("/a/b/c") },
	{ T("a b\nc"), T("/a b\nc") },
	{ T("a%b"), T("/a%b") },
	{ T("\x01\x1f\x7f\x80\xff"), T("/\x01\x1f\x7f\x80\xff") },
	{ T("+"), T("/+") },
	{ T("+a/b"), T("/+a/b") },
	{ T("value"), T("/value") },
	{ T("a/value"), T("/a/value") },
	{ T("...") , T("/...") },
	{ T(".a"), T("/.a") },
	{ T(".healthy"), T("/.healthy") },
	{ T("x/.health"), T("/x/.health") },
	{ T("{255*x}"), T("/{255*x}") },
	{ T("a/{255*x}/b"), T("/a/{255*x}/b") },
	/* M6: the examples of docs/mapping.md */
	{ T(""), T("/%") },
	{ T("a//b"), T("/a/%/b") },
	{ T("/a"), T("/%/a") },
	{ T("a/"), T("/a/%") },
	{ T("/"), T("/%/%") },
	{ T("//"), T("/%/%/%") },
	{ T("."), T("/%.") },
	{ T(".."), T("/%..") },
	{ T("a/./b"), T("/a/%./b") },
	{ T("a/../b"), T("/a/%../b") },
	{ T("%x"), T("/%%25x") },
	{ T("a/%x"), T("/a/%%25x") },
	{ T("%"), T("/%%25") },
	{ T("%value"), T("/%%25value") },
	{ T("%+"), T("/%%25+") },
	{ T("a\0b"), T("/%a%00b") },
	{ T("\0"), T("/%%00") },
	{ T("a\0\x01\x1f\x7f%\x80"), T("/%a%00%01%1F%7F%25\x80") },
	{ T(".health"), T("/%.health") },
	{ T(".health/x"), T("/%.health/x") },
	{ T(".health\0"), T("/%.health%00") },
	/* An escaped name never starts "%+": a leading '+' is "%2B" */
	{ T("+\0"), T("/%%2B%00") },
	{ T("+%"), T("/+%") },
	{ T("+%\0"), T("/%%2B%25%00") },
	{ T("a+\0"), T("/%a+%00") },
	{ T("++\0"), T("/%%2B+%00") },
	/* M7: long segments */
	{ T("{256*x}"), T("/%+{253*x}/xxx") },
	{ T("{300*x}"), T("/%+{253*x}/{47*x}") },
	{ T("{506*x}"), T("/%+{253*x}/{253*x}") },
	{ T("{600*x}"), T("/%+{253*x}/%+{253*x}/{94*x}") },
	{ T("{2000*x}"), T("/%+{253*x}/%+{253*x}/%+{253*x}/%+{253*x}/%+{253*x}/%+{253*x}/%+{253*x}/{229*x}") },
	{ T("a/{300*x}/b"), T("/a/%+{253*x}/{47*x}/b") },
	{ T("{300*x}/"), T("/%+{253*x}/{47*x}/%") },
	/* ...escaped bytes near the 255-byte boundary */
	{ T("\0{251*a}"), T("/%%00{251*a}") },
	{ T("\0{252*a}"), T("/%+%00{250*a}/aa") },
	{ T("{84*%}"), T("/%{84*%25}") },
	{ T("{85*%}"), T("/%+{84*%25}/%%25") },
	{ T("{253*x}\0"), T("/%+{253*x}/%%00") },
	{ T("{252*x}\0b"), T("/%+{252*x}/%%00b") },
	{ T("{252*x}\0{300*b}"), T("/%+{252*x}/%+%00{250*b}/{50*b}") },
	{ T("{250*x}%%"), T("/{250*x}%%") },
	/* ...the remainder is named by the same rules, without the .health rule */
	{ T("{253*x}.."), T("/{253*x}..") },
	{ T("\0{250*x}.."), T("/%+%00{250*x}/%..") },
	{ T("\0{250*x}."), T("/%%00{250*x}.") },
	{ T("\0{250*x}%"), T("/%+%00{250*x}/%%25") },
	{ T("{253*x}.health"), T("/%+{253*x}/.health") },
	{ T("{253*x}+\0"), T("/%+{253*x}/%%2B%00") },
	{ T("{253*x}+"), T("/{253*x}+") },
	{ T("\0{250*x}+a"), T("/%+%00{250*x}/+a") },
	/* ...a piece leaves at least one byte when "%2B" made the name too long */
	{ T("+{249*a}\0"), T("/%++{249*a}/%%00") },
	{ T("+\0{248*a}"), T("/%%2B%00{248*a}") },
	{ T("+\0{249*a}"), T("/%++%00{248*a}/a") },
	{ T("+\0{250*a}"), T("/%++%00{249*a}/a") },
	{ T("+{250*a}\0"), T("/%++{250*a}/%%00") },
	/* the two keys that would share a path without the "%2B" rule */
	{ T("\0{250*a}bb"), T("/%+%00{250*a}/bb") },
	{ T("+\0{250*a}/bb"), T("/%++%00{249*a}/a/bb") },
};

static void test_pairs(void)
{
	for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
		struct bytes k = expand(pairs[i].key, pairs[i].klen);
		struct bytes p = expand(pairs[i].path, pairs[i].plen);
		char *got = keymap_encode(k.p, k.len);
		CHECK(got && strcmp(got, p.p) == 0, "encode(%s) = %s, want %s",
		      show(k.p, k.len), got ? show(got, strlen(got)) : "NULL", show(p.p, p.len));

		struct keymap_res res;
		int err = keymap_decode(p.p, &res);
		CHECK(err == 0 && res.kind == KM_KEY && same(res.key, res.key_len, k.p, k.len),
		      "decode(%s) = %d %s %s, want KEY %s", show(p.p, p.len), err,
		      err ? "" : kind_name(res.kind), err ? "" : show(res.key, res.key_len),
		      show(k.p, k.len));
		if (!err)
			free(res.key);
		free(got);
		free(k.p);
		free(p.p);
	}
}

struct decoded {
	const char *path;
	size_t plen;
	enum keymap_kind kind;
	const char *key;
	size_t klen;
};

/* Paths that are not plain keys (M5, M7, M9) */
static const struct decoded decodes[] = {
	{ T("/"), KM_ROOT, T("") },
	{ T("/.health"), KM_HEALTH, T("") },
	{ T("/a/%value"), KM_VALUE, T("a") },
	{ T("/a/b/%value"), KM_VALUE, T("a/b") },
	{ T("/%/%value"), KM_VALUE, T("") },
	{ T("/a/%/%value"), KM_VALUE, T("a/") },
	{ T("/%.health/%value"), KM_VALUE, T(".health") },
	{ T("/x/.health/%value"), KM_VALUE, T("x/.health") },
	{ T("/%+{253*x}/{47*x}/%value"), KM_VALUE, T("{300*x}") },
	{ T("/%+{253*x}"), KM_CONT, T("{253*x}") },
	{ T("/a/%+{253*x}"), KM_CONT, T("a/{253*x}") },
	{ T("/%+{253*x}/%+{253*x}"), KM_CONT, T("{506*x}") },
	{ T("/%+%00{250*a}"), KM_CONT, T("\0{250*a}") },
	{ T("/%+{84*%25}"), KM_CONT, T("{84*%}") },
	{ T("/%+{251*a}"), KM_CONT, T("{251*a}") },
	{ T("/%++{249*a}"), KM_CONT, T("+{249*a}") },
	{ T("/%+{253*x}/%++{249*a}"), KM_CONT, T("{253*x}+{249*a}") },
	{ T("/%+{253*x}/%+{253*x}/{94*x}"), KM_KEY, T("{600*x}") },
};

static void test_decodes(void)
{
	for (size_t i = 0; i < sizeof(decodes) / sizeof(decodes[0]); i++) {
		struct bytes p = expand(decodes[i].path, decodes[i].plen);
		struct bytes k = expand(decodes[i].key, decodes[i].klen);
		struct keymap_res res;
		int err = keymap_decode(p.p, &res);

		CHECK(err == 0 && res.kind == decodes[i].kind &&
		      same(res.key, res.key_len, k.p, k.len) && res.key[res.key_len] == '\0',
		      "decode(%s) = %d %s %s, want %s %s", show(p.p, p.len), err,
		      err ? "" : kind_name(res.kind), err ? "" : show(res.key, res.key_len),
		      kind_name(decodes[i].kind), show(k.p, k.len));
		if (!err)
			free(res.key);
		free(p.p);
		free(k.p);
	}
}

/* Names that are not the exact encoding of a key (M8) */
static const struct {
	const char *path;
	size_t plen;
} rejects[] = {
	/* not FUSE's shape */
	{ T("") }, { T("a") }, { T("//") }, { T("/a/") }, { T("/a//b") },
	{ T("/.") }, { T("/..") }, { T("/a/./b") }, { T("/a/../b") }, { T("/a/..") },
	/* '%' names of segments that are plain */
	{ T("/%abc") }, { T("/%a") }, { T("/a/%b") }, { T("/%value/a") }, { T("/%%41") },
	{ T("/%%2B") }, { T("/%{254*x}") }, { T("/%{255*x}") }, { T("/%+") },
	{ T("/x/%.health") },
	/* bad or needless escapes */
	{ T("/%zz") }, { T("/%%2a") }, { T("/%%0a") }, { T("/%%") }, { T("/%%2") },
	{ T("/%%G0") }, { T("/%a%00%62") }, { T("/%a%2Fb") }, { T("/%a%2B%00") },
	{ T("/%.health%2B") }, { T("/%a\x01%00") }, { T("/%%2b%00") },
	/* reserved names */
	{ T("/.health/x") }, { T("/.health/%value") },
	{ T("/%value") }, { T("/a/%value/b") }, { T("/a/%value/%value") },
	{ T("/%+{253*x}/%value") }, { T("/a/%Value") }, { T("/a/%valu") },
	/* M7: too long, or pieces where none are needed or not the longest */
	{ T("/{256*x}") }, { T("/a/{300*x}") }, { T("/%%00{252*a}") },
	{ T("/%{85*%25}") },
	{ T("/%+{252*x}/{48*x}") }, { T("/%+{253*x}/x") }, { T("/%+{253*x}/%") },
	{ T("/%+{253*x}/%.") }, { T("/%+{254*x}/x") }, { T("/%+{254*x}") },
	{ T("/%+{252*x}/%+{253*x}/{10*x}") }, { T("/%+{84*%25}/x%%25") },
	{ T("/%+{100*x}/{200*x}") }, { T("/%+%2B{252*a}/{10*a}") },
	{ T("/%+%0a{250*a}/{10*a}") },
	/* M7: the last piece of a continuation directory too short to be one */
	{ T("/%+x") }, { T("/%+{250*x}") },
	{ T("/%++{248*a}") }, { T("/%+{253*x}/%+{100*x}") }, { T("/%+{83*%25}x") },
	/* an escaped name starting "%+" would be a piece: a lone one is too short */
	{ T("/%+%00") },
};

static void test_rejects(void)
{
	for (size_t i = 0; i < sizeof(rejects) / sizeof(rejects[0]); i++) {
		struct bytes p = expand(rejects[i].path, rejects[i].plen);
		struct keymap_res res = { .key = NULL };
		int err = keymap_decode(p.p, &res);

		CHECK(err == -EINVAL && res.key == NULL, "decode(%s) = %d %s %s, want -EINVAL",
		      show(p.p, p.len), err, err ? "" : kind_name(res.kind),
		      err ? "" : show(res.key, res.key_len));
		if (!err)
			free(res.key);
		free(p.p);
	}
}

static const struct {
	const char *seg;
	size_t slen;
	int at_root;
	const char *name;
	size_t nlen;
} segments[] = {
	{ T(""), 1, T("%") },
	{ T(""), 0, T("%") },
	{ T("a"), 1, T("a") },
	{ T("."), 0, T("%.") },
	{ T(".."), 1, T("%..") },
	{ T("%x"), 0, T("%%25x") },
	{ T("a\0b"), 0, T("%a%00b") },
	{ T(".health"), 1, T("%.health") },
	{ T(".health"), 0, T(".health") },
	{ T("+\0"), 0, T("%%2B%00") },
	{ T("{255*x}"), 1, T("{255*x}") },
	{ T("{256*x}"), 1, T("%+{253*x}") },
	{ T("{2000*x}"), 0, T("%+{253*x}") },
	{ T("{85*%}"), 0, T("%+{84*%25}") },
	{ T("{84*\0}"), 0, T("%{84*%00}") },
	{ T("{85*\0}"), 0, T("%+{84*%00}") },
	{ T("+{249*a}\0"), 0, T("%++{249*a}") },
};

static void test_segments(void)
{
	for (size_t i = 0; i < sizeof(segments) / sizeof(segments[0]); i++) {
		struct bytes s = expand(segments[i].seg, segments[i].slen);
		struct bytes want = expand(segments[i].name, segments[i].nlen);
		char *out = malloc(3 * s.len + 3);
		size_t n = keymap_encode_segment(s.p, s.len, segments[i].at_root, out);

		CHECK(same(out, n, want.p, want.len) && out[n] == '\0' && n <= KEYMAP_NAME_MAX,
		      "encode_segment(%s, %d) = %s, want %s", show(s.p, s.len),
		      segments[i].at_root, show(out, n), show(want.p, want.len));
		free(out);
		free(s.p);
		free(want.p);
	}
}

/* Entries of directories as readdir shows them */
static const struct {
	const char *dir;
	size_t dlen;
	const char *key;
	size_t klen;
	const char *name; /* NULL: not shown */
	size_t nlen;
	int is_dir;
} children[] = {
	{ T("/"), T("a"), T("a"), 0 },
	{ T("/"), T("a/b"), T("a"), 1 },
	{ T("/"), T("a/"), T("a"), 1 },
	{ T("/"), T(""), T("%"), 0 },
	{ T("/"), T("/"), T("%"), 1 },
	{ T("/"), T(".health"), T("%.health"), 0 },
	{ T("/"), T("{300*x}"), T("%+{253*x}"), 1 },
	{ T("/"), T("{254*x}"), T("{254*x}"), 0 },
	{ T("/a"), T("a/b"), T("b"), 0 },
	{ T("/a"), T("a/b/c"), T("b"), 1 },
	{ T("/a"), T("a/"), T("%"), 0 },
	{ T("/a"), T("a//"), T("%"), 1 },
	{ T("/a"), T("a/.health"), T(".health"), 0 },
	{ T("/a"), T("a/%value"), T("%%25value"), 0 },
	{ T("/a"), T("a"), NULL, 0, 0 },
	{ T("/a"), T("ab/c"), NULL, 0, 0 },
	{ T("/a"), T("b/c"), NULL, 0, 0 },
	{ T("/%"), T("/b"), T("b"), 0 },
	{ T("/%"), T("b"), NULL, 0, 0 },
	{ T("/%+{253*x}"), T("{300*x}"), T("{47*x}"), 0 },
	{ T("/%+{253*x}"), T("{300*x}/q"), T("{47*x}"), 1 },
	{ T("/%+{253*x}"), T("{600*x}"), T("%+{253*x}"), 1 },
	{ T("/%+{253*x}"), T("{253*x}.health"), T(".health"), 0 },
	{ T("/%+{253*x}"), T("{253*x}\0\0"), T("%%00%00"), 0 },
	{ T("/%+{253*x}"), T("{253*x}"), NULL, 0, 0 },
	{ T("/%+{253*x}"), T("{254*x}"), NULL, 0, 0 },
	{ T("/%+{253*x}"), T("{253*x}/b"), NULL, 0, 0 },
	{ T("/%+{253*x}"), T("{253*x}."), NULL, 0, 0 },
	{ T("/%+{253*x}"), T("{252*x}"), NULL, 0, 0 },
	{ T("/%+{253*x}"), T("y{300*x}"), NULL, 0, 0 },
	{ T("/a/%+{253*x}"), T("a/{300*x}"), T("{47*x}"), 0 },
	{ T("/a/%+{253*x}"), T("a/{254*x}"), NULL, 0, 0 },
	{ T("/%+{253*x}/%+{253*x}"), T("{600*x}"), T("{94*x}"), 0 },
	{ T("/%++{249*a}"), T("+{249*a}\0"), T("%%00"), 0 },
	{ T("/%++{249*a}"), T("+{249*a}b\0"), NULL, 0, 0 },
	{ T("/%+{252*x}"), T("{252*x}\0b"), T("%%00b"), 0 },
	{ T("/%+{252*x}"), T("{252*x}\0{300*b}"), T("%+%00{250*b}"), 1 },
	{ T("/%+{252*x}"), T("{253*x}\0"), NULL, 0, 0 },
	{ T("/a/%value"), T("a/b"), NULL, 0, 0 },
	{ T("/.health"), T(".health"), NULL, 0, 0 },
};

static void test_children(void)
{
	for (size_t i = 0; i < sizeof(children) / sizeof(children[0]); i++) {
		struct bytes d = expand(children[i].dir, children[i].dlen);
		struct bytes k = expand(children[i].key, children[i].klen);
		struct keymap_res dir;
		char out[KEYMAP_NAME_MAX + 1];
		int is_dir = -1;

		if (keymap_decode(d.p, &dir) != 0) {
			CHECK(0, "decode(%s) failed", show(d.p, d.len));
			free(d.p);
			free(k.p);
			continue;
		}
		size_t n = keymap_child_name(&dir, k.p, k.len, out, &is_dir);
		if (!children[i].name) {
			CHECK(n == 0, "child_name(%s, %s) = %s, want none", show(d.p, d.len),
			      show(k.p, k.len), show(out, n));
		} else {
			struct bytes want = expand(children[i].name, children[i].nlen);
			CHECK(same(out, n, want.p, want.len) && out[n] == '\0' &&
			      is_dir == children[i].is_dir,
			      "child_name(%s, %s) = %s dir=%d, want %s dir=%d", show(d.p, d.len),
			      show(k.p, k.len), show(out, n), is_dir, show(want.p, want.len),
			      children[i].is_dir);
			free(want.p);
		}
		free(dir.key);
		free(d.p);
		free(k.p);
	}
}

/* ---- property tests ------------------------------------------------------- */

static uint64_t rng_state;

/* splitmix64: small, fast, and every seed is a good one */
static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

/* 0..n-1, by multiplying rather than dividing: this runs for every byte */
static size_t below(size_t n)
{
	return (size_t)(((unsigned __int128)rnd() * n) >> 64);
}

static uint64_t fnv1a(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325u;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)s[i]) * 0x100000001b3u;
	return h;
}

enum { C_SLASH, C_PERCENT, C_DOT, C_NUL, C_CTRL, C_A, C_HIGH, C_PLUS, C_OTHER, N_CLASSES };

static char class_byte(int c)
{
	switch (c) {
	case C_SLASH: return '/';
	case C_PERCENT: return '%';
	case C_DOT: return '.';
	case C_NUL: return '\0';
	case C_CTRL: return below(8) ? (char)(1 + below(31)) : (char)0x7f;
	case C_A: return 'a';
	case C_HIGH: return (char)(0x80 + below(128));
	case C_PLUS: return '+';
	default: return (char)(0x20 + below(0x5f));
	}
}

/* Pieces of keys that sit on the rules' edges */
static const char *const tokens[] = {
	"/", ".", "..", ".health", "%", "%value", "value", "+", "+\0", "\0", "a", "aaaa",
	"%+", "%2B", "%25", "x", "\x7f",
};
static const size_t token_lens[] = { 1, 1, 2, 7, 1, 6, 5, 1, 2, 1, 1, 4, 2, 3, 3, 1, 1 };

/* A random key of 0..2000 bytes from a randomly biased alphabet */
static size_t random_key(char *k)
{
	size_t len;

	switch (below(4)) {
	case 0: len = below(2001); break;
	case 1: len = below(17); break;
	case 2: len = below(301); break;
	default: len = 200 + below(601); break;
	}

	if (below(4) == 0) {
		/* a run of tokens, with long runs of one byte to reach the piece sizes */
		size_t n = 0;
		while (n < len) {
			size_t t = below(sizeof(tokens) / sizeof(tokens[0]) + 3);
			if (t >= sizeof(tokens) / sizeof(tokens[0])) {
				size_t run = 240 + below(30);
				char c = class_byte((int)below(N_CLASSES));
				for (size_t i = 0; i < run && n < len; i++)
					k[n++] = c == '/' ? 'y' : c;
				continue;
			}
			for (size_t i = 0; i < token_lens[t] && n < len; i++)
				k[n++] = tokens[t][i];
		}
		return len;
	}

	static const unsigned weights[] = { 0, 1, 2, 4, 8, 16 };
	unsigned w[N_CLASSES], total = 0;
	for (int c = 0; c < N_CLASSES; c++)
		total += w[c] = weights[below(6)];
	/* mostly rare slashes, so that segments grow past 255 bytes */
	total -= w[C_SLASH];
	w[C_SLASH] = below(3) ? 0 : weights[below(4)];
	total += w[C_SLASH];
	if (total == 0) {
		w[C_A] = 1;
		total = 1;
	}
	/* classes laid out by weight, so that drawing a byte is one look-up */
	unsigned char pick[64];
	for (size_t j = 0, c = 0, upto = w[0]; j < sizeof(pick); j++) {
		while (j * total >= upto * sizeof(pick))
			upto += w[++c];
		pick[j] = (unsigned char)c;
	}
	for (size_t i = 0; i < len; i++)
		k[i] = class_byte(pick[rnd() & 63]);
	return len;
}

/* The shape every encoding has: components of 1..255 bytes, none "." or
 * "..", no "%value", no ".health" at the root, no piece last. */
static bool well_formed(const char *p, const char **why)
{
	size_t plen = strlen(p);
	const char *c = p + 1, *end = p + plen;

	*why = "no leading /";
	if (p[0] != '/')
		return false;
	for (;;) {
		const char *slash = memchr(c, '/', (size_t)(end - c));
		size_t n = (size_t)((slash ? slash : end) - c);
		*why = "component length";
		if (n < 1 || n > KEYMAP_NAME_MAX)
			return false;
		*why = "dot component";
		if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return false;
		*why = "%value component";
		if (n == 6 && memcmp(c, "%value", 6) == 0)
			return false;
		*why = ".health at the root";
		if (c == p + 1 && n == 7 && memcmp(c, ".health", 7) == 0)
			return false;
		if (!slash) {
			*why = "piece last";
			return !(n >= 2 && c[0] == '%' && c[1] == '+');
		}
		c = slash + 1;
	}
}

/*
 * A path that decoded to res must be exactly the encoding of res (M8).  A
 * continuation directory's path must lead somewhere: some key runs through
 * it (a NUL or two after its bytes always make the last piece the longest).
 */
static bool reencodes(const char *p, size_t plen, const struct keymap_res *res)
{
	switch (res->kind) {
	case KM_ROOT:
		return strcmp(p, "/") == 0 && res->key_len == 0;
	case KM_HEALTH:
		return strcmp(p, "/.health") == 0 && res->key_len == 0;
	case KM_KEY:
	case KM_VALUE: {
		char *e = keymap_encode(res->key, res->key_len);
		size_t elen = strlen(e);
		bool ok = res->kind == KM_KEY ? strcmp(e, p) == 0
			: plen == elen + 7 && memcmp(p, e, elen) == 0 &&
			  strcmp(p + elen, "/%value") == 0;
		free(e);
		return ok;
	}
	case KM_CONT: {
		char *k = malloc(res->key_len + 2);
		bool ok = false;
		memcpy(k, res->key, res->key_len);
		k[res->key_len] = k[res->key_len + 1] = '\0';
		for (size_t extra = 1; extra <= 2 && !ok; extra++) {
			char *e = keymap_encode(k, res->key_len + extra);
			ok = strncmp(e, p, plen) == 0 && e[plen] == '/';
			free(e);
		}
		free(k);
		return ok;
	}
	}
	return false;
}

static unsigned long decoded_paths[5];

/* Decode p; if it decodes, it must be canonical. */
static void check_path(const char *p, const char *from_key, size_t from_len)
{
	struct keymap_res res;
	int err = keymap_decode(p, &res);

	CHECK(err == 0 || err == -EINVAL, "decode(%s) = %d", show(p, strlen(p)), err);
	if (err)
		return;
	decoded_paths[res.kind]++;
	CHECK(reencodes(p, strlen(p), &res), "decode(%s) = %s %s, which does not encode back "
	      "(made from key %s)", show(p, strlen(p)), kind_name(res.kind),
	      show(res.key, res.key_len), show(from_key, from_len));
	free(res.key);
}

/* Change one byte, insert one or delete one */
static size_t mutate(char *p, size_t plen)
{
	static const char bytes[] = "%+/02589ABFafx.\x01";
	size_t at = below(plen + 1);
	char c = bytes[below(sizeof(bytes) - 1)];

	switch (below(3)) {
	case 0:
		if (at < plen && at > 0) {
			p[at] = c;
			break;
		}
		/* fall through */
	case 1:
		memmove(p + at + 1, p + at, plen - at + 1);
		p[at] = c;
		return plen + 1;
	default:
		if (at > 1 && at < plen) {
			memmove(p + at, p + at + 1, plen - at);
			return plen - 1;
		}
	}
	return plen;
}

/*
 * What keymap_child_name() must say, found by encoding: key shows in the
 * directory dirpath when its path runs through it, as the next component.
 */
static size_t child_by_encoding(const char *dirpath, const char *key, size_t klen,
				char *name, int *is_dir)
{
	char *e = keymap_encode(key, klen);
	size_t dlen = strcmp(dirpath, "/") == 0 ? 0 : strlen(dirpath);
	size_t n = 0;

	if (strncmp(e, dirpath, dlen) == 0 && e[dlen] == '/') {
		const char *next = e + dlen + 1;
		const char *slash = strchr(next, '/');
		n = slash ? (size_t)(slash - next) : strlen(next);
		memcpy(name, next, n);
		*is_dir = slash != NULL;
	}
	free(e);
	return n;
}

/*
 * Some directories along the path p of key, and always the last: each
 * decodes to a directory of key, shows the next component of p as key's
 * entry, shows a key near key as encoding says, and takes "%value" when it
 * is a key's directory.
 */
static void check_directories(const char *key, size_t klen, const char *p)
{
	size_t plen = strlen(p);
	char *dirpath = malloc(plen + 8);
	char *near = malloc(klen + 2);
	char name[KEYMAP_NAME_MAX + 1], want[KEYMAP_NAME_MAX + 1];
	size_t ncomp = 0;

	for (size_t i = 0; i < plen; i++)
		ncomp += p[i] == '/';
	for (size_t start = 0, comp = 0; start < plen; comp++) {
		const char *next = p + start + 1;
		const char *slash = memchr(next, '/', plen - start - 1);
		size_t nlen = (size_t)((slash ? slash : p + plen) - next);
		size_t end = start + 1 + nlen;

		if (slash && below(ncomp) >= 4) {
			start = end;
			continue;
		}
		memcpy(dirpath, p, start ? start : 1);
		dirpath[start ? start : 1] = '\0';
		struct keymap_res dir;
		int err = keymap_decode(dirpath, &dir);
		CHECK(err == 0, "decode(%s) of a directory of %s = %d",
		      show(dirpath, strlen(dirpath)), show(key, klen), err);
		if (err) {
			start = end;
			continue;
		}
		bool ok = dir.key_len <= klen && memcmp(dir.key, key, dir.key_len) == 0;
		if (dir.kind == KM_KEY)
			ok = ok && key[dir.key_len] == '/';
		else if (dir.kind == KM_CONT)
			ok = ok && dir.key_len < klen && key[dir.key_len] != '/';
		else
			ok = ok && dir.kind == KM_ROOT && start == 0;
		CHECK(ok, "decode(%s) = %s %s, not a directory of %s",
		      show(dirpath, strlen(dirpath)), kind_name(dir.kind),
		      show(dir.key, dir.key_len), show(key, klen));

		int is_dir = -1;
		size_t n = keymap_child_name(&dir, key, klen, name, &is_dir);
		CHECK(same(name, n, next, nlen) && is_dir == (slash != NULL),
		      "child_name(%s, %s) = %s dir=%d, want %s", show(dirpath, strlen(dirpath)),
		      show(key, klen), show(name, n), is_dir, show(next, nlen));

		/* a key sharing the directory's bytes, which may or may not run through it */
		size_t nearlen = dir.key_len + below(klen - dir.key_len + 1);
		memcpy(near, key, nearlen);
		if (below(2))
			near[nearlen++] = class_byte((int)below(N_CLASSES));
		int want_dir = -1;
		size_t wn = child_by_encoding(dirpath, near, nearlen, want, &want_dir);
		is_dir = -1;
		n = keymap_child_name(&dir, near, nearlen, name, &is_dir);
		CHECK(same(name, n, want, wn) && (wn == 0 || is_dir == want_dir),
		      "child_name(%s, %s) = %s dir=%d, want %s dir=%d",
		      show(dirpath, strlen(dirpath)), show(near, nearlen), show(name, n), is_dir,
		      show(want, wn), want_dir);

		if (dir.kind == KM_KEY) {
			strcpy(dirpath + start, "/%value");
			struct keymap_res v;
			err = keymap_decode(dirpath, &v);
			CHECK(err == 0 && v.kind == KM_VALUE &&
			      same(v.key, v.key_len, dir.key, dir.key_len),
			      "decode(%s) = %d, want VALUE", show(dirpath, strlen(dirpath)), err);
			if (err == 0)
				free(v.key);
		}
		free(dir.key);
		start = end;
	}
	free(near);
	free(dirpath);
}

/* A random path from the pieces names are made of */
static void random_path(char *p)
{
	static const char *const parts[] = {
		"%", "%+", "%+", "%2B", "%00", "%25", "%7F", "%0a", "%zz", "%2", "a", "+", ".",
		"..", ".health", "%value", "value", "\x01", "\xff", "x", "/",
	};
	size_t n = 0, count = 1 + below(12);

	p[n++] = '/';
	for (size_t i = 0; i < count; i++) {
		if (below(3) == 0) {
			/* a run that brings a component near 255 bytes */
			size_t run = below(2) ? 240 + below(20) : 80 + below(8);
			const char *unit = below(2) ? "x" : below(2) ? "%25" : "%00";
			size_t ulen = strlen(unit);
			for (size_t r = 0; r < run; r++, n += ulen)
				memcpy(p + n, unit, ulen);
		} else {
			const char *part = parts[below(sizeof(parts) / sizeof(parts[0]))];
			memcpy(p + n, part, strlen(part));
			n += strlen(part);
		}
		if (i + 1 < count && below(2))
			p[n++] = '/';
	}
	p[n] = '\0';
}

struct sample {
	uint64_t path_hash, key_hash;
};

static int by_path_hash(const void *a, const void *b)
{
	const struct sample *x = a, *y = b;
	if (x->path_hash != y->path_hash)
		return x->path_hash < y->path_hash ? -1 : 1;
	return x->key_hash < y->key_hash ? -1 : x->key_hash > y->key_hash;
}

static void test_random(uint64_t seed, size_t count)
{
	char *key = malloc(2001);
	char *mut = malloc(3 * 2001 * 2 + 64);
	char *path = malloc(16384);
	struct sample *samples = malloc(count * sizeof(*samples));
	unsigned long failed_before = failed;
	size_t max_path = 0;

	rng_state = seed;
	for (size_t i = 0; i < count; i++) {
		size_t klen = random_key(key);
		char *p = keymap_encode(key, klen);
		const char *why;

		CHECK(p != NULL, "encode returned NULL");
		if (!p)
			continue;
		size_t plen = strlen(p);
		if (plen > max_path)
			max_path = plen;
		CHECK(well_formed(p, &why), "key #%zu %s: path %s: %s", i, show(key, klen),
		      show(p, plen), why);

		struct keymap_res res;
		int err = keymap_decode(p, &res);
		CHECK(err == 0 && res.kind == KM_KEY && same(res.key, res.key_len, key, klen),
		      "key #%zu %s: decode(%s) = %d %s %s", i, show(key, klen), show(p, plen), err,
		      err ? "" : kind_name(res.kind), err ? "" : show(res.key, res.key_len));
		if (err == 0)
			free(res.key);

		samples[i].path_hash = fnv1a(p, plen);
		samples[i].key_hash = fnv1a(key, klen);

		if (i % 16 == 0)
			check_directories(key, klen, p);
		if (i % 4 == 1) {
			/* often a directory of p, to reach continuation directories */
			size_t mlen = plen;
			if (below(2)) {
				size_t cut = below(plen);
				while (cut > 0 && p[cut] != '/')
					cut--;
				mlen = cut > 0 ? cut : plen;
			}
			memcpy(mut, p, mlen);
			mut[mlen] = '\0';
			for (size_t m = 1 + below(2); m > 0; m--)
				mlen = mutate(mut, mlen);
			check_path(mut, key, klen);
		}
		if (i % 4 == 3) {
			random_path(path);
			check_path(path, "", 0);
		}
		free(p);
		if (failed - failed_before > 20) {
			fprintf(stderr, "stopping the random test after %zu keys\n", i + 1);
			count = i + 1;
			break;
		}
	}

	/* Injective on the sample: equal paths only from equal keys */
	qsort(samples, count, sizeof(*samples), by_path_hash);
	size_t collisions = 0;
	for (size_t i = 1; i < count; i++)
		if (samples[i].path_hash == samples[i - 1].path_hash &&
		    samples[i].key_hash != samples[i - 1].key_hash)
			collisions++;
	CHECK(collisions == 0, "%zu pairs of keys share a path", collisions);

	printf("random: %zu keys, longest path %zu bytes; random and mutated paths that "
	       "decoded: %lu KEY, %lu CONT, %lu VALUE, %lu ROOT, %lu HEALTH\n",
	       count, max_path, decoded_paths[KM_KEY], decoded_paths[KM_CONT],
	       decoded_paths[KM_VALUE], decoded_paths[KM_ROOT], decoded_paths[KM_HEALTH]);
	free(samples);
	free(path);
	free(mut);
	free(key);
}

int main(int argc, char **argv)
{
	uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0)
				 : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
	size_t count = argc > 2 ? strtoull(argv[2], NULL, 0) : 200000;

	printf("seed %" PRIu64 " (rerun: keymap-test %" PRIu64 ")\n", seed, seed);
	test_pairs();
	test_decodes();
	test_rejects();
	test_segments();
	test_children();
	test_random(seed, count);
	printf("%lu passed, %lu failed\n", passed, failed);
	return failed ? 1 : 0;
}
