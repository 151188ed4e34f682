/*
 * registry.c - the backends compiled into kvfs, found by URL scheme.
 * Adding a backend: its file in backends/, one line here, one in meson.build.
 */
#include "kv.h"

extern const struct kv_backend kv_backend_lmdb;
extern const struct kv_backend kv_backend_memory;

const struct kv_backend *const kv_backends[] = {
	&kv_backend_lmdb,
	&kv_backend_memory,
	NULL,
};
