/*
 * smallfiles.c - kvfs-smallfiles, the small-file workload of scripts/bench.
 *
 *   kvfs-smallfiles --dir DIR  [-n FILES] [--size BYTES] [--dirs N]
 *   kvfs-smallfiles --raw URL  [-n FILES] [--size BYTES] [--dirs N] [-o name=value]...
 *
 * One single-threaded run of five timed phases over FILES files spread
 * round-robin over N subdirectories of a fresh "bench-<pid>" directory:
 *
 *   create   write every file (open O_CREAT|O_WRONLY, write, close)
 *   stat     stat every file, checking its size
 *   read     read every file back, checking every byte
 *   readdir  list every subdirectory, checking the number of entries
 *   unlink   remove every file
 *
 * --dir runs them through the file system (a kvfs mount, tmpfs, ...);
 * --raw runs the same phases on the keys "bench-<pid>/dNN/fNNNN" straight
 * through the backend layer (kv_set, kv_stat, kv_get, kv_list_all with
 * delimiter '/', kv_del), so the two together show what FUSE costs.
 * Making and removing the subdirectories is not timed.
 *
 * Each phase prints one line:
 *   phase=create ops=5000 seconds=0.812345 ops_per_s=6155.0
 * (for readdir, ops counts directories listed).  Any failed call or
 * check prints one "kvfs-smallfiles: ..." line on stderr and exits 1.
 */
#include "kv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE (1ULL << 30)

struct bench {
	/* what to run */
	size_t nfiles;
	size_t size;
	unsigned ndirs;
	/* "DIR/bench-<pid>" for --dir, "bench-<pid>" for --raw */
	char *root;
	struct kv_store *store;       /* --raw only */
	/* scratch */
	char *path;                   /* name of the file or key in hand */
	size_t path_cap;
	char *want;                   /* the content a file should have */
	char *got;                    /* what was read back (size + 1 bytes) */
};

/*
 * One way to reach the files: through the file system or through the
 * backend layer.  Every operation checks its result and exits on failure.
 */
struct target {
	const char *mode;
	void (*setup)(struct bench *b);
	void (*create)(struct bench *b, size_t i);
	void (*stat)(struct bench *b, size_t i);
	void (*read)(struct bench *b, size_t i);
	size_t (*list)(struct bench *b, unsigned d);   /* returns the entry count */
	void (*unlink)(struct bench *b, size_t i);
	void (*teardown)(struct bench *b);
};

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("kvfs-smallfiles: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory (%zu bytes)", n);
	return p;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Files go round-robin over the subdirectories. */
static unsigned dir_of(const struct bench *b, size_t i)
{
	return (unsigned)(i % b->ndirs);
}

static size_t files_in_dir(const struct bench *b, unsigned d)
{
	return b->nfiles / b->ndirs + (d < b->nfiles % b->ndirs);
}

/* Sets b->path to the name of subdirectory d ("ROOT/dNN/") and returns its length. */
static size_t name_dir(struct bench *b, unsigned d)
{
	int n = snprintf(b->path, b->path_cap, "%s/d%02u/", b->root, d);

	if (n < 0 || (size_t)n >= b->path_cap)
		die("name too long under %s", b->root);
	return (size_t)n;
}

/* Sets b->path to the name of file i ("ROOT/dNN/fNNNN") and returns its length. */
static size_t name_file(struct bench *b, size_t i)
{
	int n = snprintf(b->path, b->path_cap, "%s/d%02u/f%04zu", b->root, dir_of(b, i), i);

	if (n < 0 || (size_t)n >= b->path_cap)
		die("name too long under %s", b->root);
	return (size_t)n;
}

/*
 * The content of every file is one pattern that changes with the offset,
 * made once, so that a shifted or short write shows; its first bytes hold
 * the file's number, so that a mix-up of two files shows.  Stamping and
 * memcmp are cheap next to any file operation, which keeps them out of
 * the figures.
 */
static void make_pattern(const struct bench *b)
{
	for (size_t j = 0; j < b->size; j++)
		b->want[j] = (char)(j * 7 + (j >> 8));
}

static void fill_content(const struct bench *b, size_t i)
{
	char stamp[17];

	snprintf(stamp, sizeof(stamp), "#%014zu\n", i);
	memcpy(b->want, stamp, b->size < 16 ? b->size : 16);
}

static void check_content(struct bench *b, size_t i, const char *got, size_t len)
{
	if (len != b->size)
		die("read %s: %zu bytes, wrote %zu", b->path, len, b->size);
	fill_content(b, i);
	if (memcmp(got, b->want, len) != 0) {
		size_t j = 0;
		while (got[j] == b->want[j])
			j++;
		die("read %s: byte %zu differs from what was written", b->path, j);
	}
}

/* ---- through the file system ---- */

static void fs_setup(struct bench *b)
{
	if (mkdir(b->root, 0755))
		die("mkdir %s: %s", b->root, strerror(errno));
	for (unsigned d = 0; d < b->ndirs; d++) {
		name_dir(b, d);
		if (mkdir(b->path, 0755))
			die("mkdir %s: %s", b->path, strerror(errno));
	}
}

static void fs_create(struct bench *b, size_t i)
{
	size_t done = 0;
	int fd;

	name_file(b, i);
	fill_content(b, i);
	fd = open(b->path, O_CREAT | O_WRONLY, 0644);
	if (fd < 0)
		die("create %s: %s", b->path, strerror(errno));
	while (done < b->size) {
		ssize_t n = write(fd, b->want + done, b->size - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("write %s: %s", b->path, n ? strerror(errno) : "wrote nothing");
		done += (size_t)n;
	}
	/* kvfs commits on close: its errors are the write's errors. */
	if (close(fd))
		die("close %s after writing: %s", b->path, strerror(errno));
}

static void fs_stat(struct bench *b, size_t i)
{
	struct stat st;

	name_file(b, i);
	if (stat(b->path, &st))
		die("stat %s: %s", b->path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		die("stat %s: not a regular file (mode %o)", b->path, (unsigned)st.st_mode);
	if ((uint64_t)st.st_size != b->size)
		die("stat %s: size %lld, wrote %zu", b->path, (long long)st.st_size, b->size);
}

static void fs_read(struct bench *b, size_t i)
{
	size_t len = 0;
	int fd;

	name_file(b, i);
	fd = open(b->path, O_RDONLY);
	if (fd < 0)
		die("open %s: %s", b->path, strerror(errno));
	/* Read until end of file; one byte of room beyond size catches a long file. */
	for (;;) {
		ssize_t n = read(fd, b->got + len, b->size + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("read %s: %s", b->path, strerror(errno));
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > b->size)
			die("read %s: longer than the %zu bytes written", b->path, b->size);
	}
	if (close(fd))
		die("close %s: %s", b->path, strerror(errno));
	check_content(b, i, b->got, len);
}

static size_t fs_list(struct bench *b, unsigned d)
{
	struct dirent *e;
	size_t count = 0;
	DIR *dir;

	name_dir(b, d);
	dir = opendir(b->path);
	if (!dir)
		die("opendir %s: %s", b->path, strerror(errno));
	errno = 0;
	while ((e = readdir(dir))) {
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			count++;
		errno = 0;
	}
	if (errno)
		die("readdir %s: %s", b->path, strerror(errno));
	closedir(dir);
	return count;
}

static void fs_unlink(struct bench *b, size_t i)
{
	name_file(b, i);
	if (unlink(b->path))
		die("unlink %s: %s", b->path, strerror(errno));
}

static void fs_teardown(struct bench *b)
{
	for (unsigned d = 0; d < b->ndirs; d++) {
		name_dir(b, d);
		if (rmdir(b->path))
			die("rmdir %s: %s", b->path, strerror(errno));
	}
	if (rmdir(b->root))
		die("rmdir %s: %s", b->root, strerror(errno));
}

static const struct target fs_target = {
	.mode = "dir",
	.setup = fs_setup,
	.create = fs_create,
	.stat = fs_stat,
	.read = fs_read,
	.list = fs_list,
	.unlink = fs_unlink,
	.teardown = fs_teardown,
};

/* ---- straight through the backend layer ---- */

static void raw_setup(struct bench *b)
{
	(void)b;  /* keys need no directories */
}

static void raw_create(struct bench *b, size_t i)
{
	size_t klen = name_file(b, i);
	int rc;

	fill_content(b, i);
	rc = kv_set(b->store, b->path, klen, b->want, b->size);
	if (rc)
		die("kv_set %s: %s", b->path, strerror(-rc));
}

static void raw_stat(struct bench *b, size_t i)
{
	size_t klen = name_file(b, i);
	uint64_t size;
	int rc = kv_stat(b->store, b->path, klen, &size);

	if (rc)
		die("kv_stat %s: %s", b->path, strerror(-rc));
	if (size != b->size)
		die("kv_stat %s: size %llu, wrote %zu", b->path, (unsigned long long)size, b->size);
}

static void raw_read(struct bench *b, size_t i)
{
	size_t klen = name_file(b, i);
	char *val;
	size_t len;
	int rc = kv_get(b->store, b->path, klen, &val, &len, NULL);

	if (rc)
		die("kv_get %s: %s", b->path, strerror(-rc));
	check_content(b, i, val, len);
	free(val);
}

struct list_count {
	size_t keys;
	size_t prefixes;  /* nothing below dNN/ has a '/', so this stays 0 */
};

static int count_entry(void *ctx, const struct kv_entry *e)
{
	struct list_count *c = ctx;

	if (e->is_prefix)
		c->prefixes++;
	else
		c->keys++;
	return 0;
}

static size_t raw_list(struct bench *b, unsigned d)
{
	size_t plen = name_dir(b, d);
	struct list_count c = {0};
	int rc = kv_list_all(b->store, b->path, plen, '/', count_entry, &c);

	if (rc)
		die("kv_list_all %s: %s", b->path, strerror(-rc));
	if (c.prefixes)
		die("kv_list_all %s: %zu unexpected prefix entries", b->path, c.prefixes);
	return c.keys;
}

static void raw_unlink(struct bench *b, size_t i)
{
	size_t klen = name_file(b, i);
	int rc = kv_del(b->store, b->path, klen);

	if (rc)
		die("kv_del %s: %s", b->path, strerror(-rc));
}

static void raw_teardown(struct bench *b)
{
	(void)b;
}

static const struct target raw_target = {
	.mode = "raw",
	.setup = raw_setup,
	.create = raw_create,
	.stat = raw_stat,
	.read = raw_read,
	.list = raw_list,
	.unlink = raw_unlink,
	.teardown = raw_teardown,
};

/* ---- the phases ---- */

static void report(const char *phase, size_t ops, double seconds)
{
	printf("phase=%s ops=%zu seconds=%.6f ops_per_s=%.1f\n", phase, ops, seconds,
	       seconds > 0 ? (double)ops / seconds : 0.0);
	fflush(stdout);
}

/* Runs op on every file and reports the time it took. */
static void per_file_phase(struct bench *b, const char *phase,
			   void (*op)(struct bench *b, size_t i))
{
	double t0 = now();

	for (size_t i = 0; i < b->nfiles; i++)
		op(b, i);
	report(phase, b->nfiles, now() - t0);
}

static void readdir_phase(struct bench *b, const struct target *t)
{
	double t0 = now();

	for (unsigned d = 0; d < b->ndirs; d++) {
		size_t count = t->list(b, d);
		if (count != files_in_dir(b, d))
			die("listing %s: %zu entries, expected %zu", b->path, count,
			    files_in_dir(b, d));
	}
	report("readdir", b->ndirs, now() - t0);
}

static void run(struct bench *b, const struct target *t)
{
	t->setup(b);
	per_file_phase(b, "create", t->create);
	per_file_phase(b, "stat", t->stat);
	per_file_phase(b, "read", t->read);
	readdir_phase(b, t);
	per_file_phase(b, "unlink", t->unlink);
	t->teardown(b);
}

/* ---- command line ---- */

static void usage(FILE *f, const char *prog)
{
	fprintf(f,
		"usage: %s --dir DIR [options]\n"
		"       %s --raw URL [options] [-o name=value]...\n"
		"\n"
		"Times a small-file workload (create, stat, read, readdir, unlink) on a\n"
		"directory, or on a store straight through the kvfs backend layer.\n"
		"\n"
		"    --dir DIR        run through the file system under DIR\n"
		"    --raw URL        run on the store URL (lmdb:/path, memory:, ...)\n"
		"    -n, --files N    number of files (default 5000)\n"
		"    --size BYTES     bytes per file, e.g. 4096 or 4K (default 4096)\n"
		"    --dirs N         subdirectories to spread them over (default 50)\n"
		"    -o name=value    a backend option for --raw (timeout=T bounds each call)\n"
		"    -h, --help       this text\n", prog, prog);
}

static size_t parse_count(const char *what, const char *s, size_t max)
{
	uint64_t v;

	if (kv_parse_size(s, &v) || v == 0 || v > max)
		die("bad %s '%s' (1 to %zu)", what, s, max);
	return (size_t)v;
}

struct args {
	const char *dir;
	const char *url;
	struct kv_option *opts;
	size_t nopts;
	int timeout_ms;
};

/*
 * "-o a=1,b=2" and repeated "-o" both work, as for kvfs.  The options point
 * into arg, which is cut in place (it is argv's, alive until exit).
 */
static void add_backend_options(struct args *a, char *arg)
{
	char *save = NULL;

	for (char *tok = strtok_r(arg, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		if (eq)
			*eq++ = '\0';
		if (strcmp(tok, "timeout") == 0) {
			if (!eq || kv_parse_ms(eq, &a->timeout_ms) || a->timeout_ms <= 0)
				die("bad timeout '%s' (e.g. 5s, 500ms)", eq ? eq : "");
			continue;
		}
		struct kv_option *o = realloc(a->opts, (a->nopts + 1) * sizeof(*o));
		if (!o)
			die("out of memory");
		a->opts = o;
		a->opts[a->nopts++] = (struct kv_option){.name = tok, .value = eq ? eq : ""};
	}
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"dir", required_argument, NULL, 'D'},
		{"raw", required_argument, NULL, 'R'},
		{"files", required_argument, NULL, 'n'},
		{"size", required_argument, NULL, 'S'},
		{"dirs", required_argument, NULL, 'd'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	struct bench b = {.nfiles = 5000, .size = 4096, .ndirs = 50};
	struct args a = {0};
	const struct target *t;
	uint64_t size;
	char err[512];
	int c, rc;

	while ((c = getopt_long(argc, argv, "n:o:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'D': a.dir = optarg; break;
		case 'R': a.url = optarg; break;
		case 'n': b.nfiles = parse_count("number of files", optarg, 10000000); break;
		case 'd': b.ndirs = (unsigned)parse_count("number of directories", optarg, 100000); break;
		case 'S':
			if (kv_parse_size(optarg, &size) || size > MAX_SIZE)
				die("bad size '%s' (0 to 1G)", optarg);
			b.size = (size_t)size;
			break;
		case 'o': add_backend_options(&a, optarg); break;
		case 'h': usage(stdout, argv[0]); return 0;
		default: usage(stderr, argv[0]); return 2;
		}
	}
	if (optind < argc)
		die("unexpected argument '%s' (see --help)", argv[optind]);
	if (!a.dir == !a.url)
		die("give exactly one of --dir DIR and --raw URL (see --help)");
	if (a.dir && a.nopts)
		die("-o options are for --raw only");

	b.path_cap = strlen(a.dir ? a.dir : "") + 64;
	b.root = xmalloc(b.path_cap);
	b.path_cap += 64;
	b.path = xmalloc(b.path_cap);
	b.want = xmalloc(b.size);
	b.got = xmalloc(b.size + 1);
	make_pattern(&b);

	if (a.dir) {
		snprintf(b.root, b.path_cap - 64, "%s/bench-%ld", a.dir, (long)getpid());
		t = &fs_target;
	} else {
		snprintf(b.root, b.path_cap - 64, "bench-%ld", (long)getpid());
		rc = kv_open(a.url, a.opts, a.nopts, a.timeout_ms, &b.store, err, sizeof(err));
		if (rc)
			die("%s", err);
		t = &raw_target;
	}

	printf("# mode=%s target=%s files=%zu size=%zu dirs=%u\n", t->mode,
	       a.dir ? a.dir : a.url, b.nfiles, b.size, b.ndirs);
	run(&b, t);

	kv_close(b.store);
	free(b.root);
	free(b.path);
	free(b.want);
	free(b.got);
	free(a.opts);
	return 0;
}
