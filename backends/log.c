/*
 * log.c - where every log line of kvfs goes: the backends, the dispatch
 * layer, fs/, the program and (through mount/main.c) libfuse all call
 * kv_log, and only this file decides where a line is written.
 *
 *   stderr     until kv_log_detach() (the foreground, and a daemon until it
 *              has mounted): "kvfs: LEVEL: message"
 *   syslog     after kv_log_detach(true): facility daemon, ident "kvfs"
 *   log file   from kv_log_open_file() on, in every mode, one line per
 *              message with a time stamp and the pid; a file renamed or
 *              removed under it (logrotate) is opened anew by name
 *
 * Every line is first stripped of what looks like a credential (the
 * password of a URL's user:password@, the value of password=, token=, ...)
 * so that a message that quotes a URL or a connection string cannot put a
 * secret in a log.
 */
#include "kv.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static enum kv_log_level log_level = KV_LOG_WARN;
static bool log_stderr = true;
static bool log_syslog;

static pthread_mutex_t file_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static char log_path[PATH_MAX];
static dev_t log_dev;
static ino_t log_ino;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

void kv_log_set_level(enum kv_log_level lvl)
{
	log_level = lvl;
}

bool kv_log_enabled(enum kv_log_level lvl)
{
	return lvl <= log_level;
}

int kv_log_parse_level(const char *s, enum kv_log_level *out)
{
	for (size_t i = 0; s && i < sizeof(level_names) / sizeof(level_names[0]); i++)
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum kv_log_level)i;
			return 0;
		}
	return -EINVAL;
}

static int file_open(void)
{
	struct stat st;
	int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		close(fd);
		return -EINVAL;
	}
	if (log_fd >= 0)
		close(log_fd);
	log_fd = fd;
	log_dev = st.st_dev;
	log_ino = st.st_ino;
	return 0;
}

int kv_log_open_file(const char *path, char *err, size_t errlen)
{
	int rc;

	pthread_mutex_lock(&file_lock);
	/* Absolute, so that it can be opened again after the daemon's chdir("/"). */
	if (path[0] == '/') {
		rc = snprintf(log_path, sizeof(log_path), "%s", path) < (int)sizeof(log_path) ? 0 : -ENAMETOOLONG;
	} else {
		char cwd[PATH_MAX];
		rc = !getcwd(cwd, sizeof(cwd)) ? -errno :
		     snprintf(log_path, sizeof(log_path), "%s/%s", cwd, path) < (int)sizeof(log_path) ? 0 :
		     -ENAMETOOLONG;
	}
	if (!rc)
		rc = file_open();
	pthread_mutex_unlock(&file_lock);
	if (rc)
		snprintf(err, errlen, "cannot open log file '%s': %s", path,
			 rc == -EINVAL ? "not a regular file" : strerror(-rc));
	return rc;
}

bool kv_log_has_file(void)
{
	return log_fd >= 0;
}

void kv_log_detach(bool syslog_too)
{
	if (syslog_too && !log_syslog) {
		openlog("kvfs", LOG_PID, LOG_DAEMON);
		log_syslog = true;
	}
	log_stderr = false;
}

/* One line to the log file; the file is opened again when its name no
 * longer leads to it (rotated away or removed). */
static void file_write(enum kv_log_level lvl, const char *msg)
{
	static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
	char line[1200], stamp[40];
	struct timespec now;
	struct tm tm;
	struct stat st;
	int n;

	clock_gettime(CLOCK_REALTIME, &now);
	localtime_r(&now.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S%z", &tm);
	n = snprintf(line, sizeof(line), "%s kvfs[%ld]: %s: %s\n", stamp, (long)getpid(),
		     names[lvl], msg);
	if (n < 0)
		return;
	if (n >= (int)sizeof(line)) {
		n = sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	pthread_mutex_lock(&file_lock);
	if (log_fd >= 0 && (stat(log_path, &st) || st.st_dev != log_dev || st.st_ino != log_ino))
		file_open();  /* on failure the old descriptor stays */
	if (log_fd >= 0 && write(log_fd, line, (size_t)n) < 0) {
		/* nowhere left to say so */
	}
	pthread_mutex_unlock(&file_lock);
}

/* Does p start a credential's name, "password=" and the like?  The
 * length of the name with its '=' if so, else 0. */
static size_t secret_name(const char *p)
{
	static const char *const names[] = {"password=", "passwd=", "pwd=", "token=", "secret="};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		size_t n = strlen(names[i]);
		if (strncasecmp(p, names[i], n) == 0)
			return n;
	}
	return 0;
}

/* Replace in line, in place, every URL password (scheme://user:PASSWORD@)
 * and every value of password=, token=, ... by "***". */
static void redact(char *line, size_t cap)
{
	for (char *p = line; *p; p++) {
		char *from = NULL, *to = NULL;
		size_t n;

		if (p[0] == ':' && p[1] == '/' && p[2] == '/') {
			char *host = p + 3, *end = host + strcspn(host, "/?# \t'\"");
			char *at = memrchr(host, '@', (size_t)(end - host));
			char *colon = at ? memchr(host, ':', (size_t)(at - host)) : NULL;
			if (colon) {
				from = colon + 1;
				to = at;
			}
		} else if ((n = secret_name(p))) {
			from = p + n;
			to = from + strcspn(from, "&;, \t'\")");
		}
		if (!from || to == from || (to - from == 3 && memcmp(from, "***", 3) == 0))
			continue;
		size_t pos = (size_t)(from - line), tail = strlen(to) + 1;
		if (pos + 4 > cap) {   /* no room for "***": cut the line there */
			*from = '\0';
			break;
		}
		if (pos + 3 + tail > cap)
			tail = cap - pos - 3;
		memmove(from + 3, to, tail);
		memcpy(from, "***", 3);
		line[cap - 1] = '\0';
		p = from + 2;
	}
}

/* While kv_open probes the store, what the backend would log is kept here
 * instead (the last error or warning), to end the one line a failed mount
 * prints: the backend's own lines would repeat it (debug lines still show). */
static __thread char *log_capture;
static __thread size_t log_capture_len;

void kv_log_capture(char *buf, size_t len)
{
	log_capture = buf;
	log_capture_len = len;
}

static void emit(enum kv_log_level lvl, bool plain, const char *fmt, va_list ap)
{
	static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
	char line[1024];

	vsnprintf(line, sizeof(line), fmt, ap);
	redact(line, sizeof(line));
	if (log_fd >= 0)
		file_write(lvl, line);
	if (log_syslog) {
		static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
		syslog(prio[lvl], "%s", line);
	}
	/* One write per line so threads do not interleave. */
	if (log_stderr && plain)
		fprintf(stderr, "kvfs: %s\n", line);
	else if (log_stderr)
		fprintf(stderr, "kvfs: %s: %s\n", names[lvl], line);
}

void kv_log(enum kv_log_level lvl, const char *fmt, ...)
{
	va_list ap;

	if (log_capture && lvl <= KV_LOG_WARN) {
		va_start(ap, fmt);
		vsnprintf(log_capture, log_capture_len, fmt, ap);
		va_end(ap);
		redact(log_capture, log_capture_len);
		return;
	}
	if (lvl > log_level)
		return;
	va_start(ap, fmt);
	emit(lvl, false, fmt, ap);
	va_end(ap);
}

void kv_log_fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	emit(KV_LOG_ERR, true, fmt, ap);
	va_end(ap);
}
