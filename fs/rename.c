/*
 * rename.c - rename of files and whole directories (docs/mapping.md F6):
 * one kv_apply() of "set new, delete old" for every key that moves, which
 * is atomic on backends with KV_CAP_TXN.
 */
#include "node.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct tree {
	struct kvfs *fs;
	struct kv_op *ops;
	size_t n, cap;
	const char *to;
	size_t tlen, flen;
};

static int tree_push(struct tree *t, enum kv_op_type type, char *key, size_t klen, char *val,
		     size_t vlen)
{
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		struct kv_op *ops = realloc(t->ops, cap * sizeof(*ops));
		if (!ops)
			return -ENOMEM;
		t->ops = ops;
		t->cap = cap;
	}
	t->ops[t->n++] = (struct kv_op){.type = type, .key = key, .key_len = klen, .val = val,
					.val_len = vlen};
	return 0;
}

/* Queue "set new key, delete old key" for one key of the moving tree. */
static int tree_move(struct tree *t, const char *key, size_t klen)
{
	char *val, *nk, *ok;
	size_t vlen;
	int rc = kv_get(t->fs->store, key, klen, &val, &vlen, NULL);

	if (rc)
		return rc == -ENOENT ? 0 : rc;  /* gone meanwhile: nothing to move */
	nk = malloc(t->tlen + klen - t->flen + 1);
	ok = malloc(klen + 1);
	if (!nk || !ok) {
		free(nk);
		free(ok);
		free(val);
		return -ENOMEM;
	}
	memcpy(nk, t->to, t->tlen);
	memcpy(nk + t->tlen, key + t->flen, klen - t->flen);
	memcpy(ok, key, klen);
	if ((rc = tree_push(t, KV_OP_SET, nk, t->tlen + klen - t->flen, val, vlen))) {
		free(nk);
		free(ok);
		free(val);
		return rc;
	}
	if ((rc = tree_push(t, KV_OP_DEL, ok, klen, NULL, 0)))
		free(ok);
	return rc;
}

static int tree_cb(void *ctx, const struct kv_entry *e)
{
	return tree_move(ctx, e->key, e->key_len);
}

static void tree_free(struct tree *t)
{
	for (size_t i = 0; i < t->n; i++) {
		free((char *)t->ops[i].key);
		free((char *)t->ops[i].val);
	}
	free(t->ops);
}

static int rename_dir(struct kvfs *fs, struct node *from, struct node *to, enum ntype tt)
{
	struct tree t = {.fs = fs, .to = to->key, .tlen = to->klen, .flen = from->klen};
	uint64_t size;
	bool found;
	int rc = 0;

	if (to->klen > from->klen && memcmp(to->key, from->key, from->klen) == 0 &&
	    to->key[from->klen] == '/')
		return -EINVAL;  /* into itself */
	if (tt == NT_DIR) {
		size_t plen = dir_prefix(to);
		rc = any_under(fs, to->key, plen, to->key, plen, &found);
		unslash(to);
		if (rc == 0 && (found || kv_stat(fs->store, to->key, to->klen, &size) == 0))
			rc = -ENOTEMPTY;
		if (rc == 0) {
			/* The empty target's marker goes first, the moved marker may replace it. */
			char *mk = malloc(to->klen + 1);
			if (!mk)
				return -ENOMEM;
			memcpy(mk, to->key, to->klen);
			mk[to->klen] = '/';
			rc = tree_push(&t, KV_OP_DEL, mk, to->klen + 1, NULL, 0);
			if (rc)
				free(mk);
		}
	}
	/* What the moving tree's open files wrote goes with it, and nothing
	 * of theirs is written until they have moved; a refused write stays
	 * for its writer's close. */
	struct kvfs_file **held;
	size_t nheld = files_hold(fs, from->key, from->klen, &held);
	if (rc == 0)
		rc = tree_move(&t, from->key, from->klen);  /* the directory's own value (M5) */
	if (rc == 0) {
		size_t plen = dir_prefix(from);
		rc = kv_list_all(fs->store, from->key, plen, '\0', tree_cb, &t);
		unslash(from);
	}
	if (rc == 0)
		rc = kv_apply(fs->store, t.ops, t.n);
	if (rc == 0) {
		files_rename(&fs->files, from->key, from->klen, to->key, to->klen, true);
		attrs_rename(&fs->attrs, from->key, from->klen, to->key, to->klen, true);
	}
	files_release(&fs->files, held, nheld);
	tree_free(&t);
	return rc;
}

static int rename_file(struct kvfs *fs, struct node *from, struct node *to)
{
	struct kvfs_file *f = files_find(&fs->files, from->key, from->klen);
	char *val;
	size_t vlen;
	int rc;

	/* The moving file is held from its settling to its move, so that no
	 * write of it lands on the old key in between (F8). */
	if (f) {
		pthread_mutex_lock(&f->lock);
		if (!f->error && (rc = file_commit(fs, f)))
			f->error = rc;  /* for the file's next close or fsync */
	}
	if (from->klen == to->klen && memcmp(from->key, to->key, to->klen) == 0)
		rc = 1;
	else
		rc = kv_get(fs->store, from->key, from->klen, &val, &vlen, NULL);
	if (rc) {
		if (f) {
			pthread_mutex_unlock(&f->lock);
			files_put(&fs->files, f);
		}
		return rc > 0 ? 0 : rc;
	}
	struct kv_op ops[2] = {
		{.type = KV_OP_SET, .key = to->key, .key_len = to->klen, .val = val, .val_len = vlen},
		{.type = KV_OP_DEL, .key = from->key, .key_len = from->klen},
	};
	/* A close of the replaced file must not commit between the apply and
	 * the file being marked unlinked (files_rename). */
	struct kvfs_file *victim = files_find(&fs->files, to->key, to->klen);
	if (victim)
		pthread_mutex_lock(&victim->lock);
	rc = kv_apply(fs->store, ops, 2);
	free(val);
	if (rc == 0) {
		files_rename(&fs->files, from->key, from->klen, to->key, to->klen, false);
		attrs_rename(&fs->attrs, from->key, from->klen, to->key, to->klen, false);
	}
	if (victim) {
		pthread_mutex_unlock(&victim->lock);
		files_put(&fs->files, victim);
	}
	if (f) {
		pthread_mutex_unlock(&f->lock);
		files_put(&fs->files, f);
	}
	return rc;
}

int op_rename(struct kvfs *fs, const char *from, const char *to, unsigned int flags)
{
	struct node nf = {0}, nt = {0};
	enum ntype tf, tt;
	uint64_t size;
	int rc;

	if (flags & RENAME_EXCHANGE)
		return -EINVAL;
	if (flags & ~(unsigned)RENAME_NOREPLACE)
		return -EINVAL;
	if ((rc = node_decode(fs, from, &nf)))
		return rc == -EINVAL ? -ENOENT : rc;
	if ((rc = node_decode(fs, to, &nt)))
		goto out;
	if (nf.kind == KM_HEALTH || nt.kind == KM_HEALTH || nf.kind == KM_ROOT || nt.kind == KM_ROOT) {
		rc = -EPERM;
		goto out;
	}
	if (nf.kind == KM_CONT || nt.kind == KM_CONT) {
		rc = -EXDEV;  /* mv copies instead */
		goto out;
	}
	if ((rc = node_type(fs, &nf, from, &tf, &size)) || (rc = node_type(fs, &nt, to, &tt, &size)))
		goto out;
	if (tf == NT_NONE) {
		rc = -ENOENT;
	} else if (tt != NT_NONE && (flags & RENAME_NOREPLACE)) {
		rc = -EEXIST;
	} else if (tf == NT_FILE) {
		if (tt == NT_DIR)
			rc = -EISDIR;
		else
			rc = rename_file(fs, &nf, &nt);
	} else if (nt.kind == KM_VALUE) {
		rc = -ENOTDIR;
	} else if (tt == NT_FILE) {
		rc = -ENOTDIR;
	} else {
		rc = rename_dir(fs, &nf, &nt, tt);
	}
	health_note_error(fs, "rename", rc == -EISDIR || rc == -ENOTDIR || rc == -ENOTEMPTY ||
			  rc == -EEXIST || rc == -EINVAL ? 0 : rc);
out:
	node_free(&nf);
	node_free(&nt);
	return rc;
}
