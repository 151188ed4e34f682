/*
 * main.c - the kvfs program: options, URL to backend, mount, daemon life.
 *
 *   kvfs [options] URL MOUNTPOINT
 *   kvfs [options] MOUNTPOINT        (the embedded default store)
 *
 * Every mistake on the command line is one "kvfs: ..." line on stderr and
 * exit status 1.  In the background the parent waits until the child has
 * opened the store and mounted, so its exit status tells the truth.
 */
#include "fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct options {
	char *root;
	char *timeout;
	char *health_timeout;
	char *uid, *gid, *umask, *max_threads;
	char *logfile, *loglevel;
	int foreground, debug, single, help, version, backends, nonempty;
	char *pos[3];                 /* URL and mountpoint as given */
	int npos;
	char **rest;                  /* -o options for libfuse or the backend */
	size_t nrest;
	int bad;                      /* a parse error was already printed */
};

#define OPT(t, field, v) {t, offsetof(struct options, field), v}

static const struct fuse_opt kvfs_opts[] = {
	OPT("root=%s", root, 0),
	OPT("timeout=%s", timeout, 0),
	OPT("health_timeout=%s", health_timeout, 0),
	OPT("uid=%s", uid, 0),
	OPT("gid=%s", gid, 0),
	OPT("umask=%s", umask, 0),
	OPT("max_threads=%s", max_threads, 0),
	OPT("logfile=%s", logfile, 0),
	OPT("loglevel=%s", loglevel, 0),
	OPT("nonempty", nonempty, 1),
	OPT("-f", foreground, 1),
	OPT("-s", single, 1),
	OPT("-d", debug, 1), OPT("debug", debug, 1),
	OPT("-h", help, 1), OPT("--help", help, 1),
	OPT("-V", version, 1), OPT("--version", version, 1),
	OPT("--backends", backends, 1),
	FUSE_OPT_END
};

/* libfuse's own options that kvfs passes on unchanged. */
static const char *const fuse_passthrough[] = {
	"ro", "rw", "allow_other", "allow_root", "auto_unmount", "default_permissions",
	"fsname", "subtype", "max_write", "max_readahead", "max_background",
	"congestion_threshold", "async_read", "sync_read", "nosuid", "suid", "nodev", "dev",
	"noexec", "exec", "noatime", "atime", "sync", "async", "dirsync", NULL
};

/* Those of them that take a number, checked here so that a bad one is
 * one kvfs line rather than libfuse's message and ours; and the kernel's
 * cache times, which kvfs gives with each answer. */
static const char *const fuse_numeric[] = {
	"entry_timeout", "attr_timeout", "negative_timeout", "max_write",
	"max_readahead", "max_background", "congestion_threshold", NULL
};

static bool is_number(const char *s)
{
	char *end;

	if (!s || !*s || *s == '-')
		return false;
	errno = 0;
	strtod(s, &end);
	return errno == 0 && *end == '\0';
}

/* Options that /etc/fstab and mount(8) add and that mean nothing here. */
static const char *const fstab_noise[] = {
	"defaults", "user", "users", "nouser", "auto", "noauto", "_netdev", "nofail",
	"relatime", NULL   /* relatime: what a FUSE mount has anyway; libfuse refuses the option */
};

static bool named(const char *const *list, const char *arg)
{
	size_t n = strcspn(arg, "=");

	for (; *list; list++)
		if (strlen(*list) == n && strncmp(*list, arg, n) == 0)
			return true;
	return false;
}

static void usage(const char *prog)
{
	printf("usage: %s [options] URL MOUNTPOINT\n"
	       "       %s [options] MOUNTPOINT   (the embedded default store)\n"
	       "\n"
	       "Shows a key-value store as a directory tree: keys are paths, a read is a\n"
	       "get, a write is a set, ls is a list.  URL examples:\n"
	       "    lmdb:/var/lib/kvfs/data    memory:\n"
	       "Run '%s --backends' for every store type compiled in.\n"
	       "\n"
	       "kvfs options:\n"
	       "    -f                     stay in the foreground\n"
	       "    -d, -o debug           foreground with debug output\n"
	       "    -s                     one thread\n"
	       "    -h, --help             print this help\n"
	       "    --backends             list the store types and their URL forms\n"
	       "    -V, --version          print the version\n"
	       "    -o ro                  read-only mount\n"
	       "    -o root=PREFIX         mount the keys under PREFIX/ only\n"
	       "    -o uid=N,gid=N         owner of every file (default: you)\n"
	       "    -o umask=OOO           permission bits to clear (default 022)\n"
	       "    -o timeout=T           bound on each store call (default 5s)\n"
	       "    -o lazy                mount even if the store does not answer now\n"
	       "    -o nonempty            mount over a directory that is not empty\n"
	       "    -o health_timeout=T    bound on reading .health (default 2s)\n"
	       "    -o entry_timeout=T,attr_timeout=T   kernel cache times in seconds (default 1)\n"
	       "    -o negative_timeout=T  how long the kernel caches a missing name (default 0)\n"
	       "    -o list_timeout=T      how long a walk of memcached or Redis answers\n"
	       "                           listings (default: entry_timeout)\n"
	       "    -o max_threads=N       FUSE worker threads (default 10)\n"
	       "    -o logfile=PATH        also append log lines to PATH\n"
	       "    -o loglevel=LEVEL      error, warning (default), info or debug\n"
	       "    -o defaults,auto,noauto,user,users,nouser,_netdev,nofail,relatime\n"
	       "                           fstab and mount(8) options, accepted and ignored\n"
	       "\n"
	       "Backend options (-o name=value):\n", prog, prog, prog);
	for (size_t i = 0; kv_backends[i]; i++) {
		const struct kv_backend *be = kv_backends[i];
		if (!be->options || !be->options[0])
			continue;
		printf("    %-10s", be->scheme);
		for (const char *const *o = be->options; *o; o++)
			printf(" %s", *o);
		printf("\n");
	}
	printf("\nlibfuse and mount options passed on (-o name[=value]):\n   ");
	for (size_t i = 0, col = 3; fuse_passthrough[i]; i++) {
		size_t w = strlen(fuse_passthrough[i]) + 1;
		if (col + w > 78) {
			printf("\n   ");
			col = 3;
		}
		printf(" %s", fuse_passthrough[i]);
		col += w;
	}
	printf("\n\nSee kvfs(1), and docs/mapping.md for how keys become file names.\n");
}

static void list_backends(void)
{
	for (size_t i = 0; kv_backends[i]; i++)
		printf("%-10s %-40s %s\n", kv_backends[i]->scheme, kv_backends[i]->usage,
		       kv_backends[i]->summary);
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct options *o = data;

	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT) {
		if (o->npos == 2) {
			fprintf(stderr, "kvfs: unexpected argument '%s' (usage: kvfs [options] URL MOUNTPOINT)\n", arg);
			o->bad = 1;
			return -1;
		}
		if (!(o->pos[o->npos] = strdup(arg)))
			return -1;
		o->npos++;
		return 0;
	}
	if (key != FUSE_OPT_KEY_OPT)
		return 1;
	if (arg[0] == '-') {
		fprintf(stderr, "kvfs: unknown option '%s' (see --help)\n", arg);
		o->bad = 1;
		return -1;
	}
	/* Whether it is libfuse's or the backend's is known once the URL is. */
	char **r = realloc(o->rest, (o->nrest + 1) * sizeof(*r));
	if (!r)
		return -1;
	o->rest = r;  /* the old list is gone once realloc succeeded */
	if (!(r[o->nrest] = strdup(arg)))
		return -1;
	o->nrest++;
	return 0;
}

/*
 * Sort the -o options kvfs did not take itself: "name=value" naming one of
 * the backend's options is the backend's (lmdb's sync=always), libfuse's
 * own are passed on, fstab noise is dropped, anything else is an error.
 */
static int sort_options(struct options *o, struct kvfs *fs, const char *url,
			struct fuse_args *args, struct kv_option **bopts, size_t *nbopts)
{
	const struct kv_backend *be = kv_backend_find(url, strcspn(url, ":"));
	const char *entry = NULL;
	bool list_timeout = false;

	*bopts = calloc(o->nrest + 1, sizeof(**bopts));
	*nbopts = 0;
	if (!*bopts)
		return -1;
	for (size_t i = 0; i < o->nrest; i++) {
		char *arg = o->rest[i];
		char *eq = strchr(arg, '=');
		if (be && eq && named(be->options ? be->options : (const char *const[]){NULL}, arg)) {
			*eq = '\0';
			(*bopts)[(*nbopts)++] = (struct kv_option){.name = arg, .value = eq + 1};
		} else if (strcmp(arg, "lazy") == 0) {
			/* mount even when the store does not answer (kv_open) */
			(*bopts)[(*nbopts)++] = (struct kv_option){.name = arg, .value = ""};
		} else if (strncmp(arg, "list_timeout=", 13) == 0) {
			*eq = '\0';   /* the dispatch layer's too */
			(*bopts)[(*nbopts)++] = (struct kv_option){.name = arg, .value = eq + 1};
			list_timeout = true;
		} else if (named(fuse_numeric, arg) && !is_number(eq ? eq + 1 : NULL)) {
			fprintf(stderr, "kvfs: bad value in option '%s' (a number is needed)\n", arg);
			return -1;
		} else if (strncmp(arg, "entry_timeout=", 14) == 0) {
			fs->entry_timeout = strtod(eq + 1, NULL);
			entry = eq + 1;
		} else if (strncmp(arg, "attr_timeout=", 13) == 0) {
			fs->attr_timeout = strtod(eq + 1, NULL);
		} else if (strncmp(arg, "negative_timeout=", 17) == 0) {
			fs->negative_timeout = strtod(eq + 1, NULL);
		} else if (named(fuse_passthrough, arg)) {
			if (fuse_opt_add_arg(args, "-o") || fuse_opt_add_arg(args, arg))
				return -1;
		} else if (!named(fstab_noise, arg)) {
			if (eq)
				*eq = '\0';
			fprintf(stderr, "kvfs: unknown option '%s' (see --help)\n", arg);
			return -1;
		}
	}
	if (entry && !list_timeout)   /* walks kept as long as names */
		(*bopts)[(*nbopts)++] = (struct kv_option){.name = "list_timeout", .value = entry};
	return 0;
}

static int parse_uint(const char *s, int base, unsigned long *out)
{
	char *end;

	if (!s || !*s || *s == '-' || *s == '+')
		return -1;
	errno = 0;
	*out = strtoul(s, &end, base);
	return (errno || *end) ? -1 : 0;
}

static int parse_id(const char *s, const char *what, unsigned long dflt, unsigned *out)
{
	unsigned long v = dflt;

	if (s && (parse_uint(s, 10, &v) || v >= (unsigned)-1)) {
		fprintf(stderr, "kvfs: bad %s '%s' (a number is needed)\n", what, s);
		return -1;
	}
	*out = (unsigned)v;
	return 0;
}

/* ${XDG_DATA_HOME:-~/.local/share}/kvfs, created if missing. */
static char *default_store(void)
{
	const char *xdg = getenv("XDG_DATA_HOME");
	const char *home = getenv("HOME");
	char path[PATH_MAX];

	if (xdg && *xdg)
		snprintf(path, sizeof(path), "%s/kvfs", xdg);
	else if (home && *home)
		snprintf(path, sizeof(path), "%s/.local/share/kvfs", home);
	else
		return NULL;
	for (char *p = path + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			mkdir(path, 0755);
			*p = '/';
		}
	}
	if (mkdir(path, 0700) && errno != EEXIST)
		return NULL;
	char *url = malloc(strlen(path) + 6);
	if (url)
		sprintf(url, "lmdb:%s", path);
	return url;
}

/* Comma and backslash are special inside -o values. */
static char *fsname_opt(const char *endpoint)
{
	size_t n = strlen(endpoint);
	char *out = malloc(2 * n + 16);
	char *p = out;

	if (!out)
		return NULL;
	p += sprintf(p, "-ofsname=");
	for (const char *s = endpoint; *s; s++) {
		if (*s == ',' || *s == '\\')
			*p++ = '\\';
		*p++ = *s;
	}
	*p = '\0';
	return out;
}

static int set_root(struct kvfs *fs, const char *root)
{
	size_t n;

	while (root && *root == '/')
		root++;
	n = root ? strlen(root) : 0;
	while (n && root[n - 1] == '/')
		n--;
	fs->root = malloc(n + 2);
	if (!fs->root)
		return -ENOMEM;
	memcpy(fs->root, root ? root : "", n);
	fs->root_len = n;
	if (n)
		fs->root[fs->root_len++] = '/';
	fs->root[fs->root_len] = '\0';
	return 0;
}

/* Background mode: the parent exits 0 only when the child says "mounted". */
static int status_fd = -1;

static void daemonize(void)
{
	int p[2];
	char c;

	if (pipe(p)) {
		perror("kvfs: pipe");
		exit(1);
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("kvfs: fork");
		exit(1);
	}
	if (pid > 0) {
		int st;
		close(p[1]);
		if (read(p[0], &c, 1) == 1)
			_exit(0);
		waitpid(pid, &st, 0);
		_exit(1);  /* the child printed why */
	}
	close(p[0]);
	status_fd = p[1];
	setsid();
}

static void detach_stdio(void)
{
	int fd = open("/dev/null", O_RDWR);

	if (status_fd >= 0) {
		if (write(status_fd, "1", 1) != 1)
			kv_log(KV_LOG_WARN, "could not tell the parent process we are mounted");
		close(status_fd);
		status_fd = -1;
		/* The last line the terminal sees: where the log goes from now on. */
		struct stat st;
		bool syslog_there = stat("/dev/log", &st) == 0 && S_ISSOCK(st.st_mode);
		if (!syslog_there && !kv_log_has_file())
			kv_log(KV_LOG_WARN, "no syslog (/dev/log) and no -o logfile=PATH: the "
			       "messages of this mount are lost");
		kv_log_detach(syslog_there);
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
		}
		if (chdir("/") != 0)
			kv_log(KV_LOG_WARN, "chdir /: %s", strerror(errno));
	}
	if (fd > 2)
		close(fd);
}

static void options_free(struct options *o)
{
	free(o->root);
	free(o->timeout);
	free(o->health_timeout);
	free(o->uid);
	free(o->gid);
	free(o->umask);
	free(o->max_threads);
	free(o->logfile);
	free(o->loglevel);
	for (int i = 0; i < o->npos; i++)
		free(o->pos[i]);
	for (size_t i = 0; i < o->nrest; i++)
		free(o->rest[i]);
	free(o->rest);
}

/* Is path (a directory) the top of a kvfs mount now?  /proc/self/mountinfo:
 * "ID PARENT DEV ROOT MOUNTPOINT OPTIONS [TAGS] - TYPE SOURCE ...", the
 * mount point with " ", tab, newline and backslash as octal escapes. */
static bool is_kvfs_mount(const char *path)
{
	char *real = realpath(path, NULL), *line = NULL, mp[4097], type[64];
	size_t cap = 0;
	bool found = false;
	FILE *f = real ? fopen("/proc/self/mountinfo", "re") : NULL;

	while (f && getline(&line, &cap, f) > 0) {
		const char *dash = strstr(line, " - ");
		size_t n = 0;

		if (!dash || sscanf(line, "%*s %*s %*s %*s %4096s", mp) != 1 ||
		    sscanf(dash + 3, "%63s", type) != 1)
			continue;
		for (const char *p = mp; *p; p++) {   /* undo the octal escapes in place */
			unsigned c;
			if (p[0] == '\\' && sscanf(p + 1, "%3o", &c) == 1) {
				mp[n++] = (char)c;
				p += 3;
			} else {
				mp[n++] = *p;
			}
		}
		mp[n] = '\0';
		if (strcmp(mp, real) == 0)   /* the last one listed is on top */
			found = strcmp(type, "fuse.kvfs") == 0;
	}
	if (f)
		fclose(f);
	free(line);
	free(real);
	return found;
}

/* Does the directory hold anything but "." and ".."? */
static bool dir_has_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	bool any = false;

	while (d && !any && (e = readdir(d)))
		any = strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	if (d)
		closedir(d);
	return any;
}

/* Everything that can be checked before the store is opened; one line on
 * stderr and -1 when something is wrong. */
static int check_options(struct options *o, struct kvfs *fs, const char *mnt, int *timeout_ms,
			 unsigned long *max_threads)
{
	struct stat st;
	unsigned long u;
	enum kv_log_level level;

	if (stat(mnt, &st)) {
		fprintf(stderr, "kvfs: mountpoint '%s': %s\n", mnt, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "kvfs: mountpoint '%s' is not a directory\n", mnt);
		return -1;
	}
	if (is_kvfs_mount(mnt)) {
		fprintf(stderr, "kvfs: '%s' is already a kvfs mount (fusermount3 -u it first)\n", mnt);
		return -1;
	}
	if (!o->nonempty && dir_has_entries(mnt)) {
		fprintf(stderr, "kvfs: mountpoint '%s' is not empty (-o nonempty mounts over it)\n",
			mnt);
		return -1;
	}
	if (o->timeout && (kv_parse_ms(o->timeout, timeout_ms) || *timeout_ms <= 0)) {
		fprintf(stderr, "kvfs: bad timeout '%s' (e.g. 500ms, 5s)\n", o->timeout);
		return -1;
	}
	fs->health_timeout_ms = 2000;
	if (o->health_timeout &&
	    (kv_parse_ms(o->health_timeout, &fs->health_timeout_ms) || fs->health_timeout_ms <= 0)) {
		fprintf(stderr, "kvfs: bad health_timeout '%s' (e.g. 500ms, 2s)\n", o->health_timeout);
		return -1;
	}
	if (parse_id(o->uid, "uid", getuid(), &fs->uid) || parse_id(o->gid, "gid", getgid(), &fs->gid))
		return -1;
	fs->umask = 022;
	if (o->umask && (parse_uint(o->umask, 8, &u) || u > 0777)) {
		fprintf(stderr, "kvfs: bad umask '%s' (octal, e.g. 022)\n", o->umask);
		return -1;
	}
	if (o->umask)
		fs->umask = (mode_t)u;
	if (o->max_threads && (parse_uint(o->max_threads, 10, max_threads) || !*max_threads ||
			       *max_threads > 1000)) {
		fprintf(stderr, "kvfs: bad max_threads '%s' (1 to 1000)\n", o->max_threads);
		return -1;
	}
	if (o->loglevel && kv_log_parse_level(o->loglevel, &level)) {
		fprintf(stderr, "kvfs: bad loglevel '%s' (error, warning, info or debug)\n",
			o->loglevel);
		return -1;
	}
	if (o->logfile && !*o->logfile) {
		fprintf(stderr, "kvfs: -o logfile= needs a file name\n");
		return -1;
	}
	if (set_root(fs, o->root)) {
		fprintf(stderr, "kvfs: out of memory\n");
		return -1;
	}
	return 0;
}

/* libfuse's messages go where kvfs's go (after detaching, stderr is gone).
 * libfuse may write one line in pieces: they are gathered per thread and
 * logged once the newline comes, at the level of the first piece. */
static void __attribute__((format(printf, 2, 0)))
fuse_logger(enum fuse_log_level level, const char *fmt, va_list ap)
{
	static __thread char line[1024];
	static __thread size_t len;
	static __thread enum fuse_log_level first;
	char *nl;

	if (!len)
		first = level;
	vsnprintf(line + len, sizeof(line) - len, fmt, ap);
	len = strlen(line);
	while ((nl = strchr(line, '\n')) || len == sizeof(line) - 1) {
		if (nl)
			*nl = '\0';
		if (line[0])
			kv_log(first <= FUSE_LOG_ERR ? KV_LOG_ERR : first == FUSE_LOG_WARNING ?
			       KV_LOG_WARN : first <= FUSE_LOG_INFO ? KV_LOG_INFO : KV_LOG_DEBUG,
			       "%s", line);
		len = nl ? strlen(nl + 1) : 0;
		memmove(line, nl ? nl + 1 : line + sizeof(line) - 1, len + 1);
		first = level;
	}
}

/* Mount and serve until unmounted or signalled; the store is open. */
static int serve(struct kvfs *fs, struct fuse_args *args, const char *mnt, bool single,
		 unsigned long max_threads)
{
	struct fuse_session *se;
	int rc;

	fs->conn_opts = fuse_parse_conn_info_opts(args);
	se = fs->conn_opts ? fuse_session_new(args, &kvfs_ops, sizeof(kvfs_ops), fs) : NULL;
	if (!se) {
		kv_log_fail("bad FUSE options (see --help)");
		free(fs->conn_opts);
		return -1;
	}
	if (fuse_session_mount(se, mnt)) {
		kv_log_fail("cannot mount on '%s'", mnt);
		fuse_session_destroy(se);
		free(fs->conn_opts);
		return -1;
	}
	if (fuse_set_signal_handlers(se)) {
		kv_log_fail("cannot set signal handlers");
		fuse_session_unmount(se);
		fuse_session_destroy(se);
		free(fs->conn_opts);
		return -1;
	}
	kv_log(KV_LOG_INFO, "mounted %s on %s", kv_endpoint(fs->store), mnt);
	detach_stdio();

	if (single) {
		rc = fuse_session_loop(se);
	} else {
		struct fuse_loop_config *cfg = fuse_loop_cfg_create();
		fuse_loop_cfg_set_max_threads(cfg, (unsigned)max_threads);
		rc = fuse_session_loop_mt(se, cfg);
		fuse_loop_cfg_destroy(cfg);
	}
	/* SIGTERM or unmount: what open files still hold is committed by the
	 * destroy callback and again by the caller. */
	fuse_remove_signal_handlers(se);
	fuse_session_unmount(se);
	fuse_session_destroy(se);
	free(fs->conn_opts);
	fs->conn_opts = NULL;
	return rc < 0 ? -1 : 0;  /* a positive rc is the signal that ended the loop */
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct options o = {0};
	struct kv_option *bopts = NULL;
	size_t nbopts = 0;
	unsigned long max_threads = 10;
	struct kvfs fs = {.entry_timeout = 1, .attr_timeout = 1};
	char *default_url = NULL, *fsname = NULL;
	char err[512];
	int timeout_ms = 5000, status = 1;

	if (argc > 1 && strcmp(argv[argc - 1], "-o") == 0) {
		fprintf(stderr, "kvfs: -o needs an argument (see --help)\n");
		return 1;
	}
	if (fuse_opt_parse(&args, &o, kvfs_opts, opt_proc) == -1) {
		if (!o.bad)
			fprintf(stderr, "kvfs: bad options (see --help)\n");
		goto out;
	}
	if (o.help || o.version || o.backends) {
		if (o.help) {
			usage(argv[0]);
		} else if (o.version) {
			printf("kvfs %s (libfuse %d.%d)\n", KVFS_VERSION, fuse_version() / 100,
			       fuse_version() % 100);
		} else {
			list_backends();
		}
		status = 0;
		goto out;
	}
	if (o.npos == 0) {
		fprintf(stderr, "kvfs: no mountpoint given (usage: kvfs [options] URL MOUNTPOINT)\n");
		goto out;
	}
	const char *mnt = o.pos[o.npos - 1];
	const char *url = o.npos == 2 ? o.pos[0] : (default_url = default_store());
	if (!url) {
		fprintf(stderr, "kvfs: cannot make the default store directory (set XDG_DATA_HOME or HOME)\n");
		goto out;
	}
	if (check_options(&o, &fs, mnt, &timeout_ms, &max_threads) ||
	    sort_options(&o, &fs, url, &args, &bopts, &nbopts))
		goto out;
	if (o.debug) {
		o.foreground = 1;
		kv_log_set_level(KV_LOG_DEBUG);
		fuse_opt_add_arg(&args, "-odebug");
	}
	if (o.loglevel) {   /* checked above; it wins over -d */
		enum kv_log_level level = KV_LOG_WARN;
		kv_log_parse_level(o.loglevel, &level);
		kv_log_set_level(level);
	}
	if (o.logfile && kv_log_open_file(o.logfile, err, sizeof(err))) {
		fprintf(stderr, "kvfs: %s\n", err);
		goto out;
	}
	fuse_set_log_func(fuse_logger);
	if (!o.foreground)
		daemonize();

	/* From here on a failure is said on the terminal (a daemon has not
	 * detached yet) and in the log file. */
	if (kv_open(url, bopts, nbopts, timeout_ms, &fs.store, err, sizeof(err))) {
		kv_log_fail("%s", err);
		goto out;
	}
	if (kvfs_init_state(&fs)) {
		kv_log_fail("out of memory");
		kvfs_free_state(&fs);
		kv_close(fs.store);
		goto out;
	}
	fsname = fsname_opt(kv_endpoint(fs.store));
	if (fsname)
		fuse_opt_add_arg(&args, fsname);
	fuse_opt_add_arg(&args, "-osubtype=kvfs");
	fuse_opt_add_arg(&args, "-odefault_permissions");

	status = serve(&fs, &args, mnt, o.single, max_threads) ? 1 : 0;
	kvfs_flush_all(&fs);
	if (kvfs_free_state(&fs))
		kv_close(fs.store);
	else
		kv_log(KV_LOG_WARN, "the store did not answer a health check; exiting without closing it");
out:
	free(fsname);
	free(fs.root);
	free(bopts);
	free(default_url);
	options_free(&o);
	fuse_opt_free_args(&args);
	return status;
}
