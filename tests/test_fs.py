"""Rules F1-F7, A1-A3, H1-H2 and C1 of docs/mapping.md, and the mount
options (-o ro, uid=, gid=, umask=, timeout=, -s, -d, lmdb's options).
Every test works on fresh names and names the rule it checks.

The tests share one daemon per backend and options (share_mounts), each in
a directory of its own; a test that needs the mount's root, a remount, a
signal or a store of its own is marked own_mount.  The FUSE layer is the
same on every backend, so a test runs on lmdb and memory only, unless it is
marked each_backend with what about the store it depends on."""
import errno
import json
import os
import stat
import subprocess
import threading
import time

import pytest

from util import (KVFS_BIN, RENAME_EXCHANGE, RENAME_NOREPLACE, Blackhole, Mount, assert_errno,
                  assert_open_errno, compiled_backends, ename, mode_bits, read_file,
                  is_mounted, renameat2, seeded_rng, walk_tree, write_file)

pytestmark = pytest.mark.share_mounts

NOCACHE = ["entry_timeout=0", "attr_timeout=0"]
O_NEW = os.O_CREAT | os.O_WRONLY | os.O_EXCL

# What about a store can change these tests' outcome (the each_backend marks).
RENAME = pytest.mark.each_backend(
    "rename is the store's multi-key apply (split where it is atomic only up to "
    "max_ops), or a copy then delete where it has none")
COHERENCE = pytest.mark.each_backend(
    "what another mount sees depends on the store and on any cache in its backend",
    where=lambda b: b.persistent)
NETWORK = pytest.mark.each_backend(
    "how the backend parses its URL and waits for its server",
    where=lambda b: b.blackhole_url is not None)
ROOT = pytest.mark.own_mount(".health and the names of the mount's root")


def poll(fn, limit=10.0):
    """fn() until true or `limit` seconds passed; the last result."""
    deadline = time.monotonic() + limit
    while True:
        r = fn()
        if r or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


@pytest.fixture
def shared(store):
    """Two mounts of one store share its data: not for memory:."""
    if not store.persistent:
        pytest.skip("%s: every mount is a store of its own" % store.scheme)
    return store


def lmdb_only(store):
    if store.scheme != "lmdb":
        pytest.skip("lmdb-specific")


# ---- F1: read and write at any offset ----

def test_f1_write_past_end_fills_zeros(mnt):
    fd = os.open(mnt.p("f"), os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, b"end", 10)
    os.close(fd)
    assert read_file(mnt.p("f")) == b"\0" * 10 + b"end"
    assert os.stat(mnt.p("f")).st_size == 13


def test_f1_overwrite_in_the_middle(mnt):
    write_file(mnt.p("f"), b"hello world")
    fd = os.open(mnt.p("f"), os.O_WRONLY)
    os.pwrite(fd, b"WORLD", 6)
    os.close(fd)
    assert read_file(mnt.p("f")) == b"hello WORLD"


def test_f1_read_at_offsets(mnt):
    data = bytes(range(256)) * 400
    write_file(mnt.p("f"), data)
    fd = os.open(mnt.p("f"), os.O_RDONLY)
    try:
        for off, n in [(0, 10), (255, 2), (4096, 4096), (100000, 5000), (len(data) - 3, 10),
                       (len(data), 10), (len(data) + 100, 1)]:
            assert os.pread(fd, n, off) == data[off:off + n]
    finally:
        os.close(fd)


def test_f1_append(mnt):
    write_file(mnt.p("f"), b"a")
    fd = os.open(mnt.p("f"), os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"b")
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"c")
    os.close(fd)
    assert read_file(mnt.p("f")) == b"abc"


def test_f1_o_trunc(mnt):
    write_file(mnt.p("f"), b"long content")
    fd = os.open(mnt.p("f"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"x")
    os.close(fd)
    assert read_file(mnt.p("f")) == b"x"
    os.close(os.open(mnt.p("f"), os.O_WRONLY | os.O_TRUNC))
    assert read_file(mnt.p("f")) == b""
    assert os.stat(mnt.p("f")).st_size == 0


def test_f1_truncate_shrinks_and_grows(raw, mnt):
    write_file(mnt.p("f"), b"abcdef")
    os.truncate(mnt.p("f"), 3)
    assert read_file(mnt.p("f")) == b"abc"
    assert raw.get(b"f") == b"abc"
    os.truncate(mnt.p("f"), 8)
    assert read_file(mnt.p("f")) == b"abc" + b"\0" * 5
    assert raw.get(b"f") == b"abc" + b"\0" * 5


def test_f1_ftruncate(mnt):
    write_file(mnt.p("f"), b"abcdef")
    fd = os.open(mnt.p("f"), os.O_RDWR)
    os.ftruncate(fd, 2)
    os.pwrite(fd, b"Z", 4)
    os.close(fd)
    assert read_file(mnt.p("f")) == b"ab\0\0Z"


def test_f1_random_io_matches_a_model(mnt):
    rng = seeded_rng("f1")
    model = bytearray()
    fd = os.open(mnt.p("f"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for _ in range(300):
            op = rng.random()
            if op < 0.5:
                off = rng.randrange(0, len(model) + 5000)
                data = bytes([rng.randrange(256)]) * rng.randrange(1, 20000)
                os.pwrite(fd, data, off)
                if off > len(model):
                    model.extend(b"\0" * (off - len(model)))
                model[off:off + len(data)] = data
            elif op < 0.6:
                n = rng.randrange(0, len(model) + 3000)
                os.ftruncate(fd, n)
                del model[n:]
                model.extend(b"\0" * (n - len(model)))
            else:
                off = rng.randrange(0, len(model) + 10)
                n = rng.randrange(1, 30000)
                assert os.pread(fd, n, off) == bytes(model[off:off + n])
    finally:
        os.close(fd)
    assert read_file(mnt.p("f")) == bytes(model)


@pytest.mark.each_backend("values up to the store's value limit, and their transfer")
def test_f1_large_file(mnt):
    """8 MiB, or as many 64 KiB blocks as the store's value limit allows."""
    limit = mnt.health()["limits"]["max_value"]
    blocks = min(128, limit >> 16) if limit else 128
    assert blocks >= 4, "a value limit of %d bytes is too small for files" % limit
    rng = seeded_rng("f1-large")
    block = bytes(rng.getrandbits(8) for _ in range(1 << 16))
    with open(mnt.p("big"), "wb") as f:
        for i in range(blocks):
            f.write(block[i:] + block[:i])
    with open(mnt.p("big"), "rb") as f:
        for i in range(blocks):
            assert f.read(1 << 16) == block[i:] + block[:i]
    assert os.stat(mnt.p("big")).st_size == blocks << 16


# ---- F2: open errors ----

def test_f2_creat_excl_existing_eexist(mnt):
    write_file(mnt.p("f"), b"keep")
    os.mkdir(mnt.p("d"))
    assert_open_errno(errno.EEXIST, mnt.p("f"), O_NEW)
    assert_open_errno(errno.EEXIST, mnt.p("d"), O_NEW)
    assert read_file(mnt.p("f")) == b"keep"


def test_f2_open_missing_enoent(mnt):
    assert_open_errno(errno.ENOENT, mnt.p("missing"), os.O_RDONLY)
    assert_open_errno(errno.ENOENT, mnt.p("missing"), os.O_WRONLY)
    assert_open_errno(errno.ENOENT, mnt.p("nodir/f"), os.O_CREAT | os.O_WRONLY)


def test_f2_directory_for_writing_eisdir(mnt):
    os.mkdir(mnt.p("d"))
    assert_open_errno(errno.EISDIR, mnt.p("d"), os.O_WRONLY)
    assert_open_errno(errno.EISDIR, mnt.p("d"), os.O_RDWR)
    assert_open_errno(errno.EISDIR, mnt.bpath, os.O_WRONLY)


def test_f2_file_as_directory_enotdir(mnt):
    write_file(mnt.p("f"), b"x")
    assert_open_errno(errno.ENOTDIR, mnt.p("f/x"), os.O_RDONLY)
    assert_open_errno(errno.ENOTDIR, mnt.p("f/x"), os.O_CREAT | os.O_WRONLY)
    assert_errno(errno.ENOTDIR, os.mkdir, mnt.p("f/x"))


# ---- F3: one buffer per file, committed on flush/fsync/release ----

def test_f3_handles_share_one_buffer(mnt):
    write_file(mnt.p("f"), b"")
    fd1 = os.open(mnt.p("f"), os.O_WRONLY)
    os.write(fd1, b"aaaa")
    fd2 = os.open(mnt.p("f"), os.O_WRONLY)
    os.pwrite(fd2, b"bb", 2)
    os.close(fd1)
    os.close(fd2)
    assert read_file(mnt.p("f")) == b"aabb"


def test_f3_write_seen_by_other_handle_before_close(mnt):
    fd1 = os.open(mnt.p("f"), os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd1, b"abc")
    fd2 = os.open(mnt.p("f"), os.O_RDONLY)
    try:
        assert os.pread(fd2, 10, 0) == b"abc"
    finally:
        os.close(fd2)
        os.close(fd1)


def test_f3_not_committed_before_close(raw, mnt):
    write_file(mnt.p("f"), b"old")
    fd = os.open(mnt.p("f"), os.O_WRONLY)
    os.write(fd, b"new")
    try:
        assert raw.get(b"f") == b"old"
    finally:
        os.close(fd)
    assert raw.get(b"f") == b"new"


def test_f3_close_commits_with_other_handle_open(raw, mnt):
    write_file(mnt.p("f"), b"old")
    keep = os.open(mnt.p("f"), os.O_RDONLY)
    try:
        fd = os.open(mnt.p("f"), os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"committed")
        os.close(fd)
        assert raw.get(b"f") == b"committed"
    finally:
        os.close(keep)


def test_f3_fsync_commits(raw, mnt):
    fd = os.open(mnt.p("f"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"synced")
        os.fsync(fd)
        assert raw.get(b"f") == b"synced"
        os.write(fd, b" more")
    finally:
        os.close(fd)
    assert raw.get(b"f") == b"synced more"


def test_f3_creat_commits_empty_at_once(raw, mnt):
    fd = os.open(mnt.p("f"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    try:
        assert raw.items() == {b"f": b""}
        os.write(fd, b"later")
    finally:
        os.close(fd)
    assert raw.get(b"f") == b"later"


@COHERENCE
def test_f3_creat_visible_to_other_mount(shared, mounts):
    a = mounts.mount()
    b = mounts.mount(opts=NOCACHE)
    fd = os.open(a.p("f"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.path.isfile(b.p("f"))
        assert read_file(b.p("f")) == b""
    finally:
        os.close(fd)


def test_f3_dup_and_fork_share_handle(raw, mnt):
    fd = os.open(mnt.p("f"), os.O_CREAT | os.O_WRONLY, 0o644)
    fd2 = os.dup(fd)
    os.write(fd, b"one,")
    os.close(fd)            # flush: commits what is buffered so far
    assert raw.get(b"f") == b"one,"
    os.write(fd2, b"two")
    os.close(fd2)           # last release
    assert raw.get(b"f") == b"one,two"


# ---- F4: a refused set is returned by close() and fsync() ----

def write_all(fd, data):
    """Write everything, as cp does: retry short writes; errors raise."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@pytest.mark.each_backend("the store's value limit")
def test_f4_value_over_limit_efbig(mnt):
    limit = mnt.health()["limits"]["max_value"]
    if not limit or limit > (300 << 20):
        pytest.skip("no value limit small enough to test (max_value=%s)" % limit)
    mnt.allow_log(r"kvfs: ERROR:.*(too large|EFBIG|limit)")
    write_file(mnt.p("f"), b"old")
    fd = os.open(mnt.p("f"), os.O_WRONLY)
    try:
        write_all(fd, b"x" * (limit + 1))
        write_err = None
    except OSError as e:
        write_err = e.errno          # refusing early is fine; close must still tell
    try:
        os.close(fd)
        close_err = None
    except OSError as e:
        close_err = e.errno
    assert close_err == errno.EFBIG, "write: %s, close: %s" % (ename(write_err),
                                                              ename(close_err))
    assert write_err in (None, errno.EFBIG)
    assert read_file(mnt.p("f")) == b"old"


def long_key_dirs(mnt, total):
    """Make directories of 200-byte names, then return the path of a file
    whose key is exactly `total` bytes (every directory's key is shorter)."""
    path = mnt.bpath
    klen = len(mnt.prefix)
    while klen + 201 < total:
        path = os.path.join(path, b"d" * 200)
        os.mkdir(path)
        klen += 201
    return os.path.join(path, b"f" * (total - klen))


@pytest.mark.each_backend("the store's key limit")
def test_f4_key_over_limit_enametoolong(mnt):
    limit = mnt.health()["limits"]["max_key"]
    if not limit or limit > 100000:
        pytest.skip("no key limit (max_key=%s)" % limit)
    mnt.allow_log(r"kvfs: ERROR:.*(too long|ENAMETOOLONG|limit)")
    path = long_key_dirs(mnt, limit + 1)
    # creat commits at once (F3), so the refusal may come from open or close
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    except OSError as e:
        err = e.errno
    else:
        os.write(fd, b"x")
        try:
            os.close(fd)
            err = None
        except OSError as e:
            err = e.errno
    assert err == errno.ENAMETOOLONG
    assert_errno(errno.ENOENT, os.stat, path)
    assert_errno(errno.ENAMETOOLONG, os.mkdir, path)


def full_lmdb(mounts, store):
    lmdb_only(store)
    m = mounts.mount(opts=["map_size=1M", "map_max=1M"])   # a map that cannot grow
    m.allow_log(r"kvfs: ERROR:.*(space|full|MAP_FULL|ENOSPC)")
    return m


@pytest.mark.own_mount("an lmdb map of its own")
def test_f4_full_store_close_enospc(raw, mounts, store):
    m = full_lmdb(mounts, store)
    write_file(m.p("keep"), b"old")
    fd = os.open(m.p("keep"), os.O_WRONLY)
    os.write(fd, os.urandom(2 << 20))
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.ENOSPC
    assert read_file(m.p("keep")) == b"old"
    assert raw.get(b"keep") == b"old"
    write_file(m.p("small"), b"still works")
    assert raw.get(b"small") == b"still works"


@pytest.mark.own_mount("an lmdb map of its own")
def test_f4_full_store_fsync_enospc(raw, mounts, store):
    m = full_lmdb(mounts, store)
    write_file(m.p("keep"), b"old")
    fd = os.open(m.p("keep"), os.O_WRONLY)
    try:
        os.write(fd, os.urandom(2 << 20))
        with pytest.raises(OSError) as e:
            os.fsync(fd)
        assert e.value.errno == errno.ENOSPC
        assert raw.get(b"keep") == b"old"
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert read_file(m.p("keep")) == b"old"


@pytest.mark.own_mount("an lmdb map of its own")
def test_f4_full_store_new_file_keeps_empty_value(raw, mounts, store):
    m = full_lmdb(mounts, store)
    fd = os.open(m.p("big"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, os.urandom(2 << 20))
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.ENOSPC
    assert raw.get(b"big") == b""
    assert read_file(m.p("big")) == b""


@pytest.mark.own_mount("an lmdb map of its own")
def test_f4_filling_the_store_fails_on_close_not_before(raw, mounts, store):
    m = full_lmdb(mounts, store)
    written = {}
    err = None
    for i in range(200):
        name = b"f%03d" % i
        data = os.urandom(32 << 10)
        fd = os.open(m.p(name), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, data)
        try:
            os.close(fd)
        except OSError as e:
            err = e.errno
            break
        written[name] = data
    assert err == errno.ENOSPC
    assert 0 < len(written) < 200
    for name, data in written.items():
        assert raw.get(name) == data


# ---- F5: after close() the value is visible everywhere ----

def test_f5_other_open_handle_reads_new_value(mnt):
    write_file(mnt.p("f"), b"old value")
    reader = os.open(mnt.p("f"), os.O_RDONLY)
    try:
        assert os.pread(reader, 100, 0) == b"old value"
        write_file(mnt.p("f"), b"new value")
        assert os.pread(reader, 100, 0) == b"new value"
    finally:
        os.close(reader)


@COHERENCE
def test_f5_other_mount_sees_value_after_close(shared, mounts):
    a = mounts.mount()
    b = mounts.mount(opts=NOCACHE)
    write_file(a.p("f"), b"first")
    assert read_file(b.p("f")) == b"first"
    write_file(a.p("f"), b"second, longer")
    assert read_file(b.p("f")) == b"second, longer"
    os.unlink(a.p("f"))
    assert not os.path.exists(b.p("f"))


def test_f5_straight_store_write_seen_at_next_open(raw, mnt):
    write_file(mnt.p("f"), b"aaaa")
    assert read_file(mnt.p("f")) == b"aaaa"
    raw.put(b"f", b"bbbb")
    assert read_file(mnt.p("f")) == b"bbbb"


# ---- F6: unlink and rename ----

def test_f6_unlink_deletes_key(raw, mnt):
    write_file(mnt.p("f"), b"x")
    os.unlink(mnt.p("f"))
    assert raw.keys() == []
    assert_errno(errno.ENOENT, os.stat, mnt.p("f"))


def test_f6_unlink_errors(mnt):
    assert_errno(errno.ENOENT, os.unlink, mnt.p("missing"))
    os.mkdir(mnt.p("d"))
    assert_errno(errno.EISDIR, os.unlink, mnt.p("d"))
    assert os.path.isdir(mnt.p("d"))


@RENAME
def test_f6_rename_file(raw, mnt):
    write_file(mnt.p("a"), b"content")
    os.mkdir(mnt.p("d"))
    os.rename(mnt.p("a"), mnt.p("d/b"))
    assert read_file(mnt.p("d/b")) == b"content"
    assert_errno(errno.ENOENT, os.stat, mnt.p("a"))
    assert raw.items() == {b"d/": b"", b"d/b": b"content"}


@RENAME
def test_f6_rename_replaces_file(raw, mnt):
    write_file(mnt.p("a"), b"new")
    write_file(mnt.p("b"), b"old target")
    os.rename(mnt.p("a"), mnt.p("b"))
    assert read_file(mnt.p("b")) == b"new"
    assert raw.items() == {b"b": b"new"}


@RENAME
def test_f6_rename_directory_moves_every_key(raw, mounts):
    keys = {b"d/": b"", b"d/a": b"1", b"d/s/b": b"2", b"d/s/": b"", b"d/%x": b"3",
            b"d/v": b"4", b"d/v/c": b"5", b"d/" + b"x" * 300: b"6", b"d//e": b"7",
            b"dx": b"outside", b"d": b"value of d"}
    m = mounts.with_keys(keys)
    before, _ = walk_tree(m.p("d"))
    os.rename(m.p("d"), m.p("e"))
    after, _ = walk_tree(m.p("e"))
    assert after == before
    expected = {b"e" + k[1:]: v for k, v in keys.items() if k.startswith(b"d/")}
    expected[b"dx"] = b"outside"
    expected[b"e"] = b"value of d"       # d/%value moves with d (M5)
    assert raw.items() == expected


@RENAME
def test_f6_rename_directory_into_directory(raw, mnt):
    os.makedirs(mnt.p("a/b"))
    write_file(mnt.p("a/b/f"), b"x")
    os.mkdir(mnt.p("z"))
    os.rename(mnt.p("a"), mnt.p("z/a"))
    assert read_file(mnt.p("z/a/b/f")) == b"x"
    assert not os.path.exists(mnt.p("a"))
    assert [k for k in raw.keys() if k.startswith(b"a")] == []


@RENAME
def test_f6_rename_directory_over_empty_directory(raw, mnt):
    os.mkdir(mnt.p("src"))
    write_file(mnt.p("src/f"), b"x")
    os.mkdir(mnt.p("dst"))
    os.rename(mnt.p("src"), mnt.p("dst"))
    assert os.listdir(mnt.p("dst")) == [b"f"]
    assert not os.path.exists(mnt.p("src"))
    assert raw.get(b"dst/f") == b"x"
    assert raw.keys(b"src") == []


def test_f6_rename_directory_over_nonempty_directory_enotempty(mnt):
    os.mkdir(mnt.p("src"))
    os.mkdir(mnt.p("dst"))
    write_file(mnt.p("dst/keep"), b"k")
    assert_errno(errno.ENOTEMPTY, os.rename, mnt.p("src"), mnt.p("dst"))
    assert read_file(mnt.p("dst/keep")) == b"k"
    assert os.path.isdir(mnt.p("src"))


def test_f6_rename_file_over_directory_eisdir(mnt):
    write_file(mnt.p("f"), b"x")
    os.mkdir(mnt.p("d"))
    assert_errno(errno.EISDIR, os.rename, mnt.p("f"), mnt.p("d"))
    assert read_file(mnt.p("f")) == b"x"


def test_f6_rename_directory_over_file_enotdir(mnt):
    write_file(mnt.p("f"), b"x")
    os.mkdir(mnt.p("d"))
    assert_errno(errno.ENOTDIR, os.rename, mnt.p("d"), mnt.p("f"))
    assert read_file(mnt.p("f")) == b"x"


def test_f6_rename_noreplace_existing_eexist(mnt):
    write_file(mnt.p("a"), b"a")
    write_file(mnt.p("b"), b"b")
    assert_errno(errno.EEXIST, renameat2, mnt.p("a"), mnt.p("b"), RENAME_NOREPLACE)
    assert read_file(mnt.p("b")) == b"b"
    renameat2(mnt.p("a"), mnt.p("c"), RENAME_NOREPLACE)
    assert read_file(mnt.p("c")) == b"a"


def test_f6_rename_exchange_einval(mnt):
    write_file(mnt.p("a"), b"a")
    write_file(mnt.p("b"), b"b")
    assert_errno(errno.EINVAL, renameat2, mnt.p("a"), mnt.p("b"), RENAME_EXCHANGE)
    assert read_file(mnt.p("a")) == b"a"
    assert read_file(mnt.p("b")) == b"b"


def test_f6_rename_missing_enoent(mnt):
    assert_errno(errno.ENOENT, os.rename, mnt.p("missing"), mnt.p("x"))


@RENAME
def test_f6_rename_open_file_commits_under_new_name(raw, mnt):
    fd = os.open(mnt.p("f"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"pending")
        os.rename(mnt.p("f"), mnt.p("g"))
    finally:
        os.close(fd)
    assert raw.items() == {b"g": b"pending"}


@pytest.mark.each_backend("atomic multi-key apply", where=lambda b: b.atomic_rename)
def test_f6_rename_directory_is_atomic_in_store(raw, mounts, store):
    if not store.backend.atomic_rename:
        pytest.skip("%s renames by copy then delete" % store.scheme)
    n = 400
    keys = {b"src/k%04d" % i: b"v" for i in range(n)}
    m = mounts.with_keys(keys)
    snap, close = raw.raw.snapshots()
    seen, stop = [], threading.Event()

    def watch():
        p = store.prefix   # a shared store's keys start with the test's own prefix
        while not stop.is_set():
            s = snap(p)
            seen.append((sum(k.startswith(p + b"src/") for k in s),
                         sum(k.startswith(p + b"dst/") for k in s)))
    t = threading.Thread(target=watch)
    t.start()
    try:
        os.rename(m.p("src"), m.p("dst"))
    finally:
        stop.set()
        t.join(timeout=60)
        close()
    seen.append((len(raw.keys(b"src/")), len(raw.keys(b"dst/"))))
    assert set(seen) <= {(n, 0), (0, n)}, sorted(set(seen))[:10]
    assert seen[-1] == (0, n)


# ---- F7: no links, no special files ----

def test_f7_symlink_eperm(raw, mnt):
    assert_errno(errno.EPERM, os.symlink, "target", mnt.p("s"))
    assert raw.keys() == []


def test_f7_link_eperm(raw, mnt):
    write_file(mnt.p("f"), b"x")
    assert_errno(errno.EPERM, os.link, mnt.p("f"), mnt.p("l"))
    assert raw.keys() == [b"f"]


@pytest.mark.parametrize("kind", ["fifo", "chr", "blk", "sock"])
def test_f7_mknod_special_eperm(raw, mnt, kind):
    mode = {"fifo": stat.S_IFIFO, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK,
            "sock": stat.S_IFSOCK}[kind]
    assert_errno(errno.EPERM, os.mknod, mnt.p("n"), mode | 0o644, os.makedev(1, 3))
    assert raw.keys() == []


def test_f7_mknod_regular_file_creates_it(raw, mnt):
    os.mknod(mnt.p("r"), stat.S_IFREG | 0o644)
    assert stat.S_ISREG(os.stat(mnt.p("r")).st_mode)
    assert raw.items() == {b"r": b""}


# ---- A1: modes, owners, sizes ----

def test_a1_default_modes_and_owner(raw, mounts):
    m = mounts.with_keys({b"f": b"x", b"d/g": b"y"})
    for p, mode, kind in [("f", 0o644, stat.S_ISREG), ("d", 0o755, stat.S_ISDIR),
                          ("d/g", 0o644, stat.S_ISREG), ("", 0o755, stat.S_ISDIR)]:
        st = os.stat(m.p(p))
        assert kind(st.st_mode), p
        assert mode_bits(st) == mode, (p, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), p


def test_a1_created_entries_default_modes(mnt):
    write_file(mnt.p("f"), b"x")
    os.mkdir(mnt.p("d"))
    assert mode_bits(os.stat(mnt.p("f"))) == 0o644
    assert mode_bits(os.stat(mnt.p("d"))) == 0o755


@pytest.mark.parametrize("umask,fmode,dmode", [("027", 0o640, 0o750), ("077", 0o600, 0o700),
                                               ("022", 0o644, 0o755)])
def test_a1_umask_option(raw, mounts, umask, fmode, dmode):
    m = mounts.with_keys({b"f": b"x", b"d/g": b"y"}, opts=["umask=" + umask])
    assert mode_bits(os.stat(m.p("f"))) == fmode
    assert mode_bits(os.stat(m.p("d/g"))) == fmode
    assert mode_bits(os.stat(m.p("d"))) == dmode


def test_a1_uid_gid_options(raw, mounts):
    m = mounts.with_keys({b"f": b"x", b"d/g": b"y"}, opts=["uid=1234", "gid=5678"])
    for p in ["f", "d", "d/g"]:
        st = os.stat(m.p(p))
        assert (st.st_uid, st.st_gid) == (1234, 5678), p


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 4096, 100001])
def test_a1_size_and_blocks(mnt, size):
    write_file(mnt.p("f"), b"s" * size)
    st = os.stat(mnt.p("f"))
    assert st.st_size == size
    assert st.st_blocks == (size + 511) // 512


def test_a1_size_of_straight_store_value(raw, mounts):
    m = mounts.with_keys({b"f": b"q" * 1000})
    st = os.stat(m.p("f"))
    assert (st.st_size, st.st_blocks) == (1000, 2)


# ---- A2: chmod, chown, utimens kept for the life of the mount ----

def set_attrs(path, mode):
    os.chmod(path, mode)
    os.chown(path, 4321, 8765)
    os.utime(path, ns=(1_000_000_000_123_456_789, 1_100_000_000_987_654_321))


def check_attrs(path, mode):
    st = os.stat(path)
    assert mode_bits(st) == mode
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    assert st.st_mtime_ns == 1_100_000_000_987_654_321
    assert st.st_atime_ns == 1_000_000_000_123_456_789


# The A2 tests mount without kernel attribute caching, so that what they
# see is what kvfs keeps, not what the kernel remembers of its own setattr.

def test_a2_attributes_kept_while_mounted(mounts):
    m = mounts.mount(opts=NOCACHE)
    write_file(m.p("f"), b"x")
    os.mkdir(m.p("d"))
    set_attrs(m.p("f"), 0o600)
    set_attrs(m.p("d"), 0o711)
    check_attrs(m.p("f"), 0o600)
    check_attrs(m.p("d"), 0o711)


def test_a2_attributes_set_before_close_are_kept(mounts):
    # cp -a and tar x set times and modes on the descriptor, then close it
    m = mounts.mount(opts=NOCACHE)
    fd = os.open(m.p("f"), os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"data")
        os.utime(fd, ns=(1_000_000_000_123_456_789, 1_100_000_000_987_654_321))
        os.fchmod(fd, 0o640)
        os.fchown(fd, 4321, 8765)
    finally:
        os.close(fd)
    check_attrs(m.p("f"), 0o640)


def test_a2_attributes_follow_rename(mounts):
    m = mounts.mount(opts=NOCACHE)
    write_file(m.p("f"), b"x")
    set_attrs(m.p("f"), 0o640)
    os.rename(m.p("f"), m.p("g"))
    check_attrs(m.p("g"), 0o640)


@pytest.mark.own_mount("remounts")
def test_a2_attributes_not_stored(persistent, mounts):
    m = mounts.mount()
    write_file(m.p("f"), b"x")
    os.mkdir(m.p("d"))
    set_attrs(m.p("f"), 0o600)
    set_attrs(m.p("d"), 0o700)
    t0 = time.time()
    m = mounts.remount(m)
    for p, mode in [("f", 0o644), ("d", 0o755)]:
        st = os.stat(m.p(p))
        assert mode_bits(st) == mode, p
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), p
        assert st.st_mtime >= t0 - 2, p     # the time of the mount, not the one set


def test_a2_write_sets_mtime(mounts):
    m = mounts.mount(opts=NOCACHE)
    write_file(m.p("f"), b"x")
    os.utime(m.p("f"), (1_000_000_000, 1_000_000_000))
    t0 = time.time()
    with open(m.p("f"), "ab") as f:
        f.write(b"y")
    assert os.stat(m.p("f")).st_mtime >= t0 - 2


def test_a2_directory_times_follow_its_entries(mounts):
    m = mounts.mount(opts=NOCACHE)
    os.mkdir(m.p("d"))
    os.mkdir(m.p("e"))
    old = 1_000_000_000
    for d in ("d", "e"):
        os.utime(m.p(d), (old, old))

    def changed(d):
        st = os.stat(m.p(d))
        ok = st.st_mtime > old + 1000 and st.st_ctime > old + 1000
        os.utime(m.p(d), (old, old))
        return ok

    write_file(m.p("d", "f"), b"x")
    assert changed("d") and not changed("e")
    os.rename(m.p("d", "f"), m.p("e", "f"))
    assert changed("d") and changed("e")
    os.unlink(m.p("e", "f"))
    assert changed("e")
    os.mkdir(m.p("d", "sub"))
    assert changed("d")
    os.rmdir(m.p("d", "sub"))
    assert changed("d")
    assert not changed("e")


def test_a2_a_new_directory_shows_when_it_was_made(mounts):
    m = mounts.mount(opts=NOCACHE)
    time.sleep(1.1)
    t0 = time.time()
    os.mkdir(m.p("d"))
    st = os.stat(m.p("d"))
    assert t0 - 0.5 <= st.st_mtime <= time.time() + 0.5
    assert st.st_ctime >= t0 - 0.5


# ---- A3: statfs ----

def test_a3_statfs_name_limit(mnt):
    assert os.statvfs(mnt.path).f_namemax == 255


@pytest.mark.own_mount("an lmdb map of its own")
def test_a3_statfs_lmdb_space(mounts, store):
    lmdb_only(store)
    m = mounts.mount(opts=["map_size=8M", "map_max=8M"])
    st = os.statvfs(m.path)
    assert st.f_blocks * st.f_frsize == 8 << 20
    assert 0 < st.f_bfree < st.f_blocks
    assert st.f_bavail <= st.f_bfree
    free0 = st.f_bfree * st.f_frsize
    write_file(m.p("f"), os.urandom(1 << 20))
    free1 = os.statvfs(m.path).f_bfree * st.f_frsize
    assert free0 - free1 >= 1 << 20


# ---- H1: the .health file ----

@pytest.mark.each_backend("the backend's name, endpoint, limits and capabilities")
def test_h1_health_fields(mnt, store):
    h = mnt.health()
    assert h["backend"] == store.scheme
    assert isinstance(h["endpoint"], str) and h["endpoint"]
    assert h["status"] == "ok"
    assert isinstance(h["latency_ms"], (int, float)) and h["latency_ms"] >= 0
    assert h["last_error"] is None or isinstance(h["last_error"], str)
    assert "checked_at" in h and h["checked_at"]
    assert isinstance(h["limits"]["max_key"], int) and h["limits"]["max_key"] >= 0
    assert isinstance(h["limits"]["max_value"], int) and h["limits"]["max_value"] >= 0
    assert isinstance(h["capabilities"], (list, dict))


@ROOT
def test_h1_health_read_with_cat(mnt):
    r = subprocess.run(["cat", mnt.path + "/.health"], capture_output=True, timeout=60)
    assert r.returncode == 0
    assert json.loads(r.stdout)["status"] == "ok"


@ROOT
def test_h1_health_is_0444(mnt):
    st = os.stat(mnt.p(".health"))
    assert stat.S_ISREG(st.st_mode) and mode_bits(st) == 0o444


@ROOT
def test_h1_health_write_eacces(mnt):
    before = read_file(mnt.p(".health"))
    assert_open_errno(errno.EACCES, mnt.p(".health"), os.O_WRONLY)
    assert_open_errno(errno.EACCES, mnt.p(".health"), os.O_RDWR)
    assert_open_errno(errno.EACCES, mnt.p(".health"), os.O_WRONLY | os.O_TRUNC)
    assert_errno(errno.EACCES, os.truncate, mnt.p(".health"), 0)
    assert json.loads(before)["status"] == "ok"


@ROOT
def test_h1_health_unlink_and_rename_eperm(raw, mnt):
    assert_errno(errno.EPERM, os.unlink, mnt.p(".health"))
    assert_errno(errno.EPERM, os.rename, mnt.p(".health"), mnt.p("h"))
    assert mnt.health()["status"] == "ok"
    assert raw.keys() == []


def test_h1_health_writes_nothing(raw, mnt, store):
    lmdb_only(store)
    write_file(mnt.p("f"), b"x")
    before = raw.raw.last_txnid()
    for _ in range(3):
        assert mnt.health()["status"] == "ok"
    assert raw.raw.last_txnid() == before


@pytest.mark.own_mount("-o root=")
def test_h1_health_at_root_of_prefix_mount(mounts, store):
    m = mounts.mount(opts=["root=some/prefix"])
    assert m.health()["status"] == "ok"


def network_choice(backend):
    if not backend.backend.blackhole_url:
        pytest.skip("%s: not a network backend" % backend.scheme)
    if backend.scheme not in compiled_backends():
        pytest.skip("%s not compiled in" % backend.scheme)


@NETWORK
def test_h1_endpoint_has_no_credentials(backend, workdir):
    """A password in the URL is either refused (one line that does not
    repeat it: it belongs in the environment or a file) or, if a backend
    takes it, never shown in .health or the log."""
    network_choice(backend)
    hole = Blackhole()
    try:
        url = backend.backend.blackhole_url(hole.port).replace("://", "://kvuser:s3cr3tpw@", 1)
        mnt = os.path.join(workdir, "mnt")
        os.mkdir(mnt)
        try:
            # -o lazy: what is checked is the URL, not that the store answers
            r = subprocess.run([KVFS_BIN, "-o", "lazy", url, mnt], capture_output=True,
                               timeout=60, stdin=subprocess.DEVNULL)
        finally:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", mnt], timeout=60)
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace")
            assert r.returncode == 1 and len(err.splitlines()) == 1, err
            assert err.startswith("kvfs: ") and "s3cr3tpw" not in err, err
            return
        m = Mount(url, opts=list(backend.backend.options) +
                  ["lazy", "timeout=1s", "health_timeout=1s"]).start()
        m.allow_log(r"kvfs: ERROR:")
        text = read_file(m.p(".health"))
        assert b"s3cr3tpw" not in text
        assert b"s3cr3tpw" not in m.log_text().encode()
    finally:
        hole.close()


# ---- H2: .health answers even when the store hangs ----

@NETWORK
def test_h2_health_unresponsive_when_store_hangs(backend):
    network_choice(backend)
    hole = Blackhole()
    try:
        # -o lazy: a store that does not answer fails the mount otherwise
        m = Mount(backend.backend.blackhole_url(hole.port),
                  opts=list(backend.backend.options) + ["lazy", "timeout=30s",
                                                        "health_timeout=1s"]).start()
        m.allow_log(r"kvfs: ERROR:")
        result = {}
        t = threading.Thread(target=lambda: result.update(h=m.health()), daemon=True)
        t.start()
        t.join(timeout=20)
        assert "h" in result, ".health did not answer while the store hung"
        assert result["h"]["status"] == "unresponsive"
    finally:
        hole.close()


def test_h2_health_timeout_option(mounts):
    m = mounts.mount(opts=["health_timeout=500ms"])
    assert m.health()["status"] == "ok"


# ---- C1: caches and coherence between mounts ----

@COHERENCE
@pytest.mark.own_mount("two mounts with the same options")
def test_c1_other_mount_sees_new_file_after_cache_timeout(shared, mounts):
    a = mounts.mount()
    b = mounts.mount()
    assert not os.path.exists(b.p("f"))
    write_file(a.p("f"), b"123")
    assert poll(lambda: os.path.exists(b.p("f")))
    assert read_file(b.p("f")) == b"123"
    write_file(a.p("f"), b"1234567")
    assert poll(lambda: os.stat(b.p("f")).st_size == 7)
    os.unlink(a.p("f"))
    assert poll(lambda: not os.path.exists(b.p("f")))


@COHERENCE
@pytest.mark.own_mount("two mounts with the same options")
def test_c1_data_read_afresh_at_every_open(shared, mounts):
    a = mounts.mount()
    b = mounts.mount()
    write_file(a.p("f"), b"one!")
    assert poll(lambda: os.path.exists(b.p("f")))
    assert read_file(b.p("f")) == b"one!"
    write_file(a.p("f"), b"two!")            # same size: cached attributes still fit
    assert read_file(b.p("f")) == b"two!"


@COHERENCE
def test_c1_zero_timeouts_show_changes_at_once(shared, mounts):
    a = mounts.mount()
    b = mounts.mount(opts=NOCACHE)
    os.mkdir(b.p("d"))
    assert not os.path.exists(b.p("d/f"))
    write_file(a.p("d/f"), b"x")
    assert os.listdir(b.p("d")) == [b"f"]
    os.unlink(a.p("d/f"))
    os.rmdir(a.p("d"))
    assert not os.path.exists(b.p("d"))


# ---- mount options ----

def test_option_ro_refuses_changes(raw, mounts):
    m = mounts.with_keys({b"f": b"x", b"d/g": b"y"}, opts=["ro"])
    assert read_file(m.p("f")) == b"x"
    assert_open_errno(errno.EROFS, m.p("f"), os.O_WRONLY)
    assert_open_errno(errno.EROFS, m.p("new"), os.O_CREAT | os.O_WRONLY)
    assert_errno(errno.EROFS, os.mkdir, m.p("nd"))
    assert_errno(errno.EROFS, os.unlink, m.p("f"))
    assert_errno(errno.EROFS, os.rmdir, m.p("d"))
    assert_errno(errno.EROFS, os.rename, m.p("f"), m.p("h"))
    assert_errno(errno.EROFS, os.truncate, m.p("f"), 0)
    assert m.health()["status"] == "ok"
    assert raw.items() == {b"f": b"x", b"d/g": b"y"}


def test_option_single_threaded(mounts):
    m = mounts.mount(args=["-s"])
    os.mkdir(m.p("d"))
    write_file(m.p("d/f"), b"single")
    assert read_file(m.p("d/f")) == b"single"
    assert m.health()["status"] == "ok"


def test_option_debug_prints_requests(mounts):
    m = mounts.mount(args=["-d"])
    write_file(m.p("f"), b"debug")
    assert read_file(m.p("f")) == b"debug"
    assert "opcode: " in m.log_text() or "unique: " in m.log_text()


def test_option_timeout(mounts):
    m = mounts.mount(opts=["timeout=5s"])
    write_file(m.p("f"), b"t")
    assert read_file(m.p("f")) == b"t"


@pytest.mark.own_mount("remounts")
@pytest.mark.parametrize("opts", [["sync=always"], ["sync=interval", "sync_interval=1s"],
                                  ["map_size=64M"]])
def test_option_lmdb_persists(raw, mounts, store, opts):
    lmdb_only(store)
    m = mounts.mount(opts=opts)
    write_file(m.p("f"), b"durable")
    assert raw.get(b"f") == b"durable"
    m = mounts.remount(m)
    assert read_file(m.p("f")) == b"durable"
