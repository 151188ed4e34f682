/*
 * registry.c - the backends compiled into kvfs, found by URL scheme.
 * Adding a backend: its file in backends/, one line here, one in meson.build.
 */
#include "kv.h"

extern const struct kv_backend kv_backend_lmdb, kv_backend_memory, kv_backend_memcached,
	kv_backend_consul, kv_backend_mongodb, kv_backend_etcd, kv_backend_redis,
	kv_backend_postgresql, kv_backend_mysql;

/* Remote backends are in when meson found their client library. */
const struct kv_backend *const kv_backends[] = {
	&kv_backend_lmdb,
	&kv_backend_memory,
#ifdef KVFS_HAVE_MEMCACHED
	&kv_backend_memcached,
#endif
#ifdef KVFS_HAVE_CONSUL
	&kv_backend_consul,
#endif
#ifdef KVFS_HAVE_MONGODB
	&kv_backend_mongodb,
#endif
#ifdef KVFS_HAVE_ETCD
	&kv_backend_etcd,
#endif
#ifdef KVFS_HAVE_REDIS
	&kv_backend_redis,
#endif
#ifdef KVFS_HAVE_POSTGRESQL
	&kv_backend_postgresql,
#endif
#ifdef KVFS_HAVE_MYSQL
	&kv_backend_mysql,
#endif
	NULL,
};
