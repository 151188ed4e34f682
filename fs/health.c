/*
 * health.c - the virtual /.health file (docs/mapping.md rules H1, H2).
 *
 * One worker thread runs the backend's health round trip; a reader waits
 * for it at most health_timeout_ms.  A hung store therefore blocks the
 * worker, never the reader, and never more than one check is in flight.
 */
#include "fs.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double ms_between(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) * 1e3 + (double)(b->tv_nsec - a->tv_nsec) / 1e6;
}

static void *health_worker(void *arg)
{
	struct kvfs *fs = arg;
	struct kvfs_health *h = &fs->health;

	pthread_mutex_lock(&h->lock);
	for (;;) {
		while (!h->stop && h->completed == h->requested)
			pthread_cond_wait(&h->cond, &h->lock);
		if (h->stop)
			break;
		uint64_t gen = h->requested;
		pthread_mutex_unlock(&h->lock);

		struct kv_health info;
		struct timespec t0, t1;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		int rc = kv_health(fs->store, &info);
		clock_gettime(CLOCK_MONOTONIC, &t1);

		pthread_mutex_lock(&h->lock);
		h->rc = rc;
		h->info = info;
		h->latency_ms = ms_between(&t0, &t1);
		clock_gettime(CLOCK_REALTIME, &h->checked_at);
		h->completed = gen;
		pthread_cond_broadcast(&h->cond);
		if (rc) {
			pthread_mutex_unlock(&h->lock);
			health_note_error(fs, "health", rc);
			pthread_mutex_lock(&h->lock);
		}
	}
	pthread_mutex_unlock(&h->lock);
	return NULL;
}

void health_init(struct kvfs_health *h)
{
	memset(h, 0, sizeof(*h));
	pthread_mutex_init(&h->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->cond, &ca);
	pthread_condattr_destroy(&ca);
}

bool health_stop(struct kvfs_health *h, int wait_ms)
{
	struct timespec deadline;
	int rc = 0;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += wait_ms / 1000 + 1;
	pthread_mutex_lock(&h->lock);
	h->stop = true;
	pthread_cond_broadcast(&h->cond);
	/* A check in flight may finish soon; a hung store's never will. */
	while (h->started && h->completed != h->requested && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&h->cond, &h->lock, &deadline);
	bool started = h->started;
	bool idle = h->completed == h->requested;
	pthread_mutex_unlock(&h->lock);
	if (!started)
		return true;
	if (idle) {
		pthread_join(h->thread, NULL);
		return true;
	}
	pthread_detach(h->thread);
	return false;
}

void health_note_error(struct kvfs *fs, const char *op, int err)
{
	struct kvfs_health *h = &fs->health;

	if (err == -ENOENT || err == 0)
		return;
	pthread_mutex_lock(&h->lock);
	snprintf(h->last_error, sizeof(h->last_error), "%s: %s", op, strerror(-err));
	clock_gettime(CLOCK_REALTIME, &h->last_error_at);
	pthread_mutex_unlock(&h->lock);
}

static json_t *iso_time(const struct timespec *ts)
{
	char buf[64];
	struct tm tm;

	if (!ts->tv_sec)
		return json_null();
	gmtime_r(&ts->tv_sec, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
	return json_string(buf);
}

static json_t *caps_json(unsigned caps)
{
	static const struct { unsigned bit; const char *name; } names[] = {
		{KV_CAP_ORDERED, "ordered"}, {KV_CAP_CAS, "cas"}, {KV_CAP_TXN, "transactions"},
		{KV_CAP_SYNC, "sync"}, {KV_CAP_PERSIST, "persistent"},
	};
	json_t *a = json_array();

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (caps & names[i].bit)
			json_array_append_new(a, json_string(names[i].name));
	return a;
}

char *health_report(struct kvfs *fs, size_t *len)
{
	struct kvfs_health *h = &fs->health;
	struct timespec deadline;
	const char *status;
	int rc = 0;

	pthread_mutex_lock(&h->lock);
	if (!h->started) {
		if (pthread_create(&h->thread, NULL, health_worker, fs) == 0)
			h->started = true;
	}
	uint64_t want = ++h->requested;
	pthread_cond_broadcast(&h->cond);
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += fs->health_timeout_ms / 1000;
	deadline.tv_nsec += (long)(fs->health_timeout_ms % 1000) * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	while (h->started && h->completed < want && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&h->cond, &h->lock, &deadline);

	json_t *o = json_object();
	struct kv_limits lim = kv_limits(fs->store);
	bool answered = h->started && h->completed >= want;
	if (!answered)
		status = "unresponsive";
	else
		status = h->rc == 0 ? "ok" : "down";
	json_object_set_new(o, "backend", json_string(kv_name(fs->store)));
	json_object_set_new(o, "endpoint", json_string(kv_endpoint(fs->store)));
	json_object_set_new(o, "root", json_stringn(fs->root, fs->root_len));
	json_object_set_new(o, "status", json_string(status));
	json_object_set_new(o, "latency_ms", answered ? json_real((double)(int64_t)(h->latency_ms * 1000 + 0.5) / 1000) : json_null());
	json_object_set_new(o, "detail", json_string(answered ? h->info.detail :
		"the store did not answer within the health timeout"));
	json_object_set_new(o, "checked_at", iso_time(&h->checked_at));
	json_object_set_new(o, "last_error", h->last_error[0] ? json_string(h->last_error) : json_null());
	json_object_set_new(o, "last_error_at", iso_time(&h->last_error_at));
	json_t *l = json_object();
	json_object_set_new(l, "max_key", json_integer((json_int_t)lim.max_key));
	json_object_set_new(l, "max_value", json_integer((json_int_t)lim.max_value));
	/* an apply (a rename of a directory) is atomic up to this many keys */
	if (lim.max_ops)
		json_object_set_new(l, "max_atomic_ops", json_integer((json_int_t)lim.max_ops));
	json_object_set_new(o, "limits", l);
	json_object_set_new(o, "capabilities", caps_json(kv_caps(fs->store)));
	json_t *facts = json_object();
	for (size_t i = 0; answered && i < h->info.nfacts && i < KV_HEALTH_MAX_FACTS; i++)
		json_object_set_new(facts, h->info.facts[i].name, json_string(h->info.facts[i].value));
	json_object_set_new(o, "facts", facts);
	pthread_mutex_unlock(&h->lock);

	char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	json_decref(o);
	if (!text)
		return NULL;
	/* A trailing newline, as text files have. */
	size_t n = strlen(text);
	char *out = realloc(text, n + 2);
	if (!out) {
		free(text);
		return NULL;
	}
	out[n] = '\n';
	out[n + 1] = '\0';
	*len = n + 1;
	return out;
}
