"""Rules M1-M9 of docs/mapping.md: how keys are shown as files and
directories.  Each test is named after the rule it checks and works on
fresh names.  Tests that put keys straight into the store skip on backends
without raw access (memory:).

The tests share one daemon per backend and options (share_mounts), each in
a directory of its own; a test about the mount's root (.health, %value,
-o root=) or a remount is marked own_mount.  The mapping is the FUSE
layer's, the same on every backend: a test runs on lmdb and memory only,
unless it is marked each_backend with what about the store it depends on
(keys the store cannot hold as they are, long keys, byte order, paging)."""
import errno
import json
import os
import stat
import tarfile

import pytest

from util import (assert_errno, assert_open_errno, encode_key, expected_tree,
                  read_file, run, seeded_rng, walk_tree, write_file)

pytestmark = pytest.mark.share_mounts

NOCACHE = ["entry_timeout=0", "attr_timeout=0"]
O_NEW = os.O_CREAT | os.O_WRONLY | os.O_EXCL

# What about a store can change these tests' outcome (the each_backend marks).
KEYS = pytest.mark.each_backend(
    "keys with bytes a store cannot hold as they are (NUL, controls, %, high "
    "bytes, empty segments): each backend escapes or encodes them its own way")
LONG = pytest.mark.each_backend(
    "long keys: the store's key limit, memcached's hashed names")
ORDER = pytest.mark.each_backend(
    "listing: the store's byte order and range scans, or kv.c's walk over an "
    "unordered store's keys")
ROOT = pytest.mark.own_mount(".health, %value and the names of the mount's root")
REMOUNT = pytest.mark.own_mount("remounts")
PREFIX = pytest.mark.own_mount("-o root=")


def at_root(cases, keys):
    """cases (tuples, or values of one argument) with those whose first item
    is in keys marked ROOT: a test's directory is not the mount's root."""
    out = []
    for c in cases:
        args = c if isinstance(c, tuple) else (c,)
        out.append(pytest.param(*args, marks=ROOT) if args[0] in keys else c)
    return out


def listdir(m, *parts):
    return os.listdir(m.p(*parts))


def root_entries(m):
    return [n for n in listdir(m) if n != b".health"]


# ---- M1: a key P a/b/c is the file c in the directory a/b ----

def test_m1_key_is_file_in_directories(raw, mounts):
    m = mounts.with_keys({b"a/b/c": b"hello"})
    assert stat.S_ISDIR(os.stat(m.p("a")).st_mode)
    assert stat.S_ISDIR(os.stat(m.p("a/b")).st_mode)
    assert stat.S_ISREG(os.stat(m.p("a/b/c")).st_mode)
    assert read_file(m.p("a/b/c")) == b"hello"
    assert listdir(m, "a") == [b"b"]
    assert listdir(m, "a/b") == [b"c"]


def test_m1_every_slash_splits(raw, mounts):
    key = b"/".join(b"s%d" % i for i in range(20)) + b"/leaf"
    m = mounts.with_keys({key: b"deep"})
    assert read_file(m.p(key)) == b"deep"
    assert root_entries(m) == [b"s0"]


def test_m1_file_written_through_mount_is_one_key(raw, mnt):
    os.mkdir(mnt.p("x"))
    os.mkdir(mnt.p("x/y"))
    write_file(mnt.p("x/y/z"), b"data")
    assert raw.get(b"x/y/z") == b"data"
    # mkdir leaves its markers (M4); the file is exactly one key
    assert raw.keys() == [b"x/", b"x/y/", b"x/y/z"]


# ---- M2: directories exist while keys run under them; readdir ----

def test_m2_directory_exists_while_a_key_is_under_it(raw, mounts):
    m = mounts.with_keys({b"d/x": b"1"}, opts=NOCACHE)
    assert os.path.isdir(m.p("d"))
    os.unlink(m.p("d/x"))
    assert raw.keys() == []
    assert_errno(errno.ENOENT, os.stat, m.p("d"))
    assert b"d" not in listdir(m)


def test_m2_directory_appears_with_a_new_key(raw, mounts):
    m = mounts.mount(opts=NOCACHE)
    raw.put(b"late/k", b"v")
    assert os.path.isdir(m.p("late"))
    assert read_file(m.p("late/k")) == b"v"


@ORDER
def test_m2_readdir_lists_immediate_children_once(raw, mounts):
    m = mounts.with_keys({b"p/a": b"1", b"p/b/c": b"2", b"p/b/d": b"3",
                          b"p/b/e/f": b"4", b"p/b/e/g": b"5", b"p/c": b"6", b"q": b"7"})
    assert root_entries(m) == [b"p", b"q"]
    assert listdir(m, "p") == [b"a", b"b", b"c"]
    assert listdir(m, "p/b") == [b"c", b"d", b"e"]
    assert listdir(m, "p/b/e") == [b"f", b"g"]


@ORDER
def test_m2_readdir_sorted_by_key_bytes(raw, mounts):
    # (key segment under s/, is a directory) -> name; the order is that of
    # the keys ("a-" < "a/" although the name "a" < "a-").
    children = {b"b": b"b", b"B": b"B", b"a b": b"a b", b"\xff\xfe": b"\xff\xfe",
                b"a0": b"a0", b"a~": b"a~", b"a-": b"a-", b"z": b"z", b".": b"%.",
                b"%pct": b"%%25pct", b"_": b"_"}
    keys = {b"s/" + k: b"v" for k in children}
    keys[b"s/a/x"] = b"in dir a"
    m = mounts.with_keys(keys)
    order = sorted(list(children) + [b"a/"])
    expected = [b"a" if k == b"a/" else children[k] for k in order]
    assert listdir(m, "s") == expected


@ORDER
def test_m2_readdir_pages_through_large_directory(raw, mounts):
    rng = seeded_rng("m2-large")
    names = set()
    while len(names) < 3000:
        names.add(b"f%06d-%s" % (rng.randrange(10**6), bytes(rng.choice(b"abcXYZ._-")
                                                          for _ in range(rng.randrange(1, 30)))))
    keys = {b"big/" + n: n for n in names}
    for i in range(50):
        keys[b"big/dir%03d/x" % i] = b"x"
    m = mounts.with_keys(keys)
    got = listdir(m, "big")
    expected = sorted(list(names) + [b"dir%03d/" % i for i in range(50)])
    assert got == [n.rstrip(b"/") for n in expected]
    assert len(set(got)) == len(got)


@ORDER
def test_m2_root_lists_a_deep_subtree_once(raw, mounts):
    keys = {b"t/%04d/x" % i: b"v" for i in range(500)}
    keys[b"u"] = b"file"
    m = mounts.with_keys(keys)
    assert root_entries(m) == [b"t", b"u"]


@ORDER
def test_m2_readdir_of_files_created_through_mount(mnt):
    os.mkdir(mnt.p("d"))
    names = [b"n%03d" % i for i in range(300)]
    for n in reversed(names):
        write_file(mnt.p("d", n), n)
    assert listdir(mnt, "d") == names


# ---- M3: ls -l costs no backend call per entry (readdirplus) ----

def fuse_ops(log):
    """Opcodes of the FUSE requests in a chunk of `kvfs -d` output."""
    out = []
    for line in log.splitlines():
        if "opcode: " in line:
            out.append(line.split("opcode: ", 1)[1].split()[0])
    return out


def test_m3_stat_of_listed_entries_asks_nothing_more(raw, mounts):
    sizes = {b"d/f%02d" % i: i * 37 for i in range(40)}
    keys = {k: b"z" * n for k, n in sizes.items()}
    keys[b"d/sub/x"] = b"x"
    m = mounts.with_keys(keys, args=["-d"], opts=["entry_timeout=60", "attr_timeout=60"])
    os.stat(m.p("d"))
    mark = m.log_size()
    with os.scandir(m.p("d")) as it:
        names = [e.name for e in it]
    got = {n: os.stat(m.p("d", n)) for n in names}
    ops = fuse_ops(m.log_text()[mark:])
    assert "READDIRPLUS" in ops, ops
    assert "LOOKUP" not in ops and "GETATTR" not in ops, ops
    for k, n in sizes.items():
        assert got[k[2:]].st_size == n
    assert stat.S_ISDIR(got[b"sub"].st_mode)


def test_m3_ls_l_of_listed_entries_asks_nothing_more(raw, mounts):
    import subprocess
    keys = {b"e/f%02d" % i: b"q" * (i * 100) for i in range(30)}
    m = mounts.with_keys(keys, args=["-d"], opts=["entry_timeout=60", "attr_timeout=60"])
    os.stat(m.p("e"))
    mark = m.log_size()
    r = subprocess.run(["ls", "-l", "--color=never", m.path + "/e"], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    ops = fuse_ops(m.log_text()[mark:])
    assert "LOOKUP" not in ops and "GETATTR" not in ops, ops
    lines = r.stdout.decode().splitlines()[1:]
    assert len(lines) == 30
    for line in lines:
        fields = line.split()
        assert int(fields[4]) == int(fields[-1][1:]) * 100


# ---- M4: directory markers ----

@KEYS
def test_m4_mkdir_stores_marker(raw, mnt):
    os.mkdir(mnt.p("d"))
    assert raw.items() == {b"d/": b""}


@pytest.mark.each_backend("directory markers outlive the mount", where=lambda b: b.persistent)
@REMOUNT
def test_m4_empty_directory_survives_remount(persistent, mounts):
    m = mounts.mount()
    os.mkdir(m.p("e"))
    os.mkdir(m.p("e/f"))
    m = mounts.remount(m)
    assert os.path.isdir(m.p("e/f"))
    assert listdir(m, "e/f") == []
    assert root_entries(m) == [b"e"]


@ORDER
def test_m4_marker_key_is_the_directory_itself(raw, mounts):
    m = mounts.with_keys({b"m/": b"", b"n/o/": b""})
    assert root_entries(m) == [b"m", b"n"]
    assert listdir(m, "m") == []
    assert listdir(m, "n") == [b"o"]
    assert listdir(m, "n/o") == []


@KEYS
def test_m4_marker_is_not_also_a_file(raw, mnt):
    os.mkdir(mnt.p("d"))
    # the key "d/" is the directory d itself, not the file d/% (M6)
    assert_errno(errno.ENOENT, os.stat, mnt.p("d/%"))
    assert os.listdir(mnt.p("d")) == []
    os.mkdir(mnt.p("d/%"))
    assert raw.items() == {b"d/": b"", b"d//": b""}


def test_m4_rmdir_removes_marker(raw, mnt):
    os.mkdir(mnt.p("d"))
    os.rmdir(mnt.p("d"))
    assert raw.keys() == []
    assert_errno(errno.ENOENT, os.stat, mnt.p("d"))


def test_m4_rmdir_directory_with_file_enotempty(mnt):
    os.mkdir(mnt.p("d"))
    write_file(mnt.p("d/f"), b"keep")
    assert_errno(errno.ENOTEMPTY, os.rmdir, mnt.p("d"))
    assert read_file(mnt.p("d/f")) == b"keep"


def test_m4_rmdir_directory_with_subdirectory_enotempty(mnt):
    os.mkdir(mnt.p("d"))
    os.mkdir(mnt.p("d/s"))
    assert_errno(errno.ENOTEMPTY, os.rmdir, mnt.p("d"))
    assert os.path.isdir(mnt.p("d/s"))


def test_m4_rmdir_directory_without_marker_enotempty(raw, mounts):
    m = mounts.with_keys({b"d/x": b"1"})
    assert_errno(errno.ENOTEMPTY, os.rmdir, m.p("d"))
    assert raw.get(b"d/x") == b"1"


def test_m4_rmdir_file_enotdir(mnt):
    write_file(mnt.p("f"), b"x")
    assert_errno(errno.ENOTDIR, os.rmdir, mnt.p("f"))
    assert read_file(mnt.p("f")) == b"x"


def test_m4_rmdir_missing_enoent(mnt):
    assert_errno(errno.ENOENT, os.rmdir, mnt.p("nothing"))


def test_m4_mkdir_existing_eexist(mnt):
    os.mkdir(mnt.p("d"))
    write_file(mnt.p("f"), b"x")
    assert_errno(errno.EEXIST, os.mkdir, mnt.p("d"))
    assert_errno(errno.EEXIST, os.mkdir, mnt.p("f"))
    assert read_file(mnt.p("f")) == b"x"


def test_m4_directory_stays_after_its_last_file(mnt):
    os.mkdir(mnt.p("d"))
    write_file(mnt.p("d/f"), b"x")
    os.unlink(mnt.p("d/f"))
    assert os.path.isdir(mnt.p("d"))
    assert listdir(mnt, "d") == []


def test_m4_marker_in_store_after_files_removed(raw, mnt):
    os.mkdir(mnt.p("d"))
    write_file(mnt.p("d/f"), b"x")
    os.unlink(mnt.p("d/f"))
    assert raw.items() == {b"d/": b""}


# ---- M5: a key that is both a value and a prefix ----

VP = {b"a": b"top", b"a/b": b"child"}


@pytest.mark.each_backend("a key that is also a prefix of other keys")
def test_m5_value_and_prefix_is_directory_with_value_file(raw, mounts):
    m = mounts.with_keys(VP)
    assert os.path.isdir(m.p("a"))
    assert root_entries(m) == [b"a"]
    names = listdir(m, "a")
    assert sorted(names) == [b"%value", b"b"]
    assert read_file(m.p("a/%value")) == b"top"
    assert os.stat(m.p("a/%value")).st_size == 3
    assert read_file(m.p("a/b")) == b"child"


def test_m5_value_file_writes_key(raw, mounts):
    m = mounts.with_keys(VP)
    write_file(m.p("a/%value"), b"new top")
    assert raw.get(b"a") == b"new top"
    with open(m.p("a/%value"), "ab") as f:
        f.write(b"!")
    assert raw.get(b"a") == b"new top!"


def test_m5_value_file_truncates_key(raw, mounts):
    m = mounts.with_keys(VP)
    os.truncate(m.p("a/%value"), 1)
    assert raw.get(b"a") == b"t"
    assert read_file(m.p("a/%value")) == b"t"


def test_m5_unlink_value_file_deletes_key(raw, mounts):
    m = mounts.with_keys(VP, opts=NOCACHE)
    os.unlink(m.p("a/%value"))
    assert raw.get(b"a") is None
    assert raw.get(b"a/b") == b"child"
    assert listdir(m, "a") == [b"b"]
    assert_errno(errno.ENOENT, os.stat, m.p("a/%value"))


def test_m5_directory_becomes_file_again(raw, mounts):
    m = mounts.with_keys(VP, opts=NOCACHE)
    os.unlink(m.p("a/b"))
    st = os.stat(m.p("a"))
    assert stat.S_ISREG(st.st_mode)
    assert read_file(m.p("a")) == b"top"
    assert raw.items() == {b"a": b"top"}


def test_m5_create_value_file_in_existing_directory(raw, mnt):
    os.mkdir(mnt.p("d"))
    write_file(mnt.p("d/%value"), b"v")
    assert raw.get(b"d") == b"v"
    assert os.path.isdir(mnt.p("d"))
    assert listdir(mnt, "d") == [b"%value"]
    assert read_file(mnt.p("d/%value")) == b"v"


def test_m5_create_value_file_in_missing_directory_enoent(raw, mnt):
    assert_open_errno(errno.ENOENT, mnt.p("nodir/%value"), O_NEW)
    assert raw.keys() == []


def test_m5_value_file_of_plain_file_enotdir(mnt):
    write_file(mnt.p("f"), b"x")
    assert_errno(errno.ENOTDIR, os.stat, mnt.p("f/%value"))
    assert_open_errno(errno.ENOTDIR, mnt.p("f/%value"), O_NEW)


def test_m5_value_file_of_directory_without_value_enoent(mnt):
    os.mkdir(mnt.p("d"))
    assert_errno(errno.ENOENT, os.stat, mnt.p("d/%value"))
    assert_open_errno(errno.ENOENT, mnt.p("d/%value"), os.O_RDONLY)


def test_m5_rmdir_with_value_enotempty(raw, mnt):
    """A directory holding only its %value is not empty, and the refused
    rmdir leaves the store exactly as it was: the value, the marker, and
    nothing else (it once wrote a junk key "d\\0")."""
    os.mkdir(mnt.p("d"))
    write_file(mnt.p("d/%value"), b"v")
    before = raw.items()
    assert_errno(errno.ENOTEMPTY, os.rmdir, mnt.p("d"))
    assert raw.items() == before
    assert raw.get(b"d") == b"v"
    assert os.path.isdir(mnt.p("d"))


# ---- M6: escaped names ----

# (key, path, value): the spec's table and a few more
ESCAPES = [
    (b"a//b", b"a/%/b", b"empty segment"),
    (b"/a", b"%/a", b"leading slash"),
    (b"a/", b"a/%", b"trailing slash with a value"),
    (b".", b"%.", b"dot"),
    (b"..", b"%..", b"dotdot"),
    (b"%x", b"%%25x", b"percent start"),
    (b"%", b"%%25", b"percent alone"),
    (b"a\0b", b"%a%00b", b"nul"),
    (b".health", b"%.health", b"health key"),
    (b"d/.", b"d/%.", b"dot in dir"),
    (b"%\x01\x1f\x7f\n", b"%%25%01%1F%7F%0A", b"controls"),
    (b"\0", b"%%00", b"nul alone"),
]


@KEYS
@pytest.mark.parametrize("key,path,value", at_root(ESCAPES, [b".health", b"/a"]),
                         ids=[e[2].decode() for e in ESCAPES])
def test_m6_escaped_name_shows_key(raw, mounts, key, path, value):
    assert encode_key(key) == path         # the suite's reference agrees with the spec
    m = mounts.with_keys({key: value})
    assert read_file(m.p(path)) == value
    parent, name = os.path.split(path)
    entries = [n for n in listdir(m, parent) if n != b".health"]
    assert entries == [name]


CREATABLE = [e for e in ESCAPES if e[0] != b"a/"]


@KEYS
@pytest.mark.parametrize("key,path,value", at_root(CREATABLE, [b".health"]),
                         ids=[e[2].decode() for e in CREATABLE])
def test_m6_escaped_name_created_through_mount(raw, mnt, key, path, value):
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(mnt.p(parent))
    write_file(mnt.p(path), value)
    assert raw.get(key) == value
    assert read_file(mnt.p(path)) == value


PLAIN = [b"with space", b"50%off", b"new\nline", b"\xff\xfe not utf-8", b"x" * 255,
         b"del\x7f", b"tab\tname", b"...", b".hidden", b"-", b"health", b"a%00b",
         b"trailing%"]


@KEYS
@pytest.mark.parametrize("name", PLAIN, ids=range(len(PLAIN)))
def test_m6_plain_name_is_its_own_key(raw, mnt, name):
    write_file(mnt.p(name), b"plain")
    assert raw.items() == {name: b"plain"}
    assert root_entries(mnt) == [name]


@KEYS
def test_m6_plain_key_is_its_own_name(raw, mounts):
    m = mounts.with_keys({n: n for n in PLAIN})
    assert root_entries(m) == sorted(PLAIN)
    for n in PLAIN:
        assert read_file(m.p(n)) == n


@KEYS
def test_m6_directory_named_percent_is_empty_segment(raw, mnt):
    os.mkdir(mnt.p("%"))
    write_file(mnt.p("%/a"), b"v")
    assert raw.get(b"/a") == b"v"


def test_m6_dot_health_below_root_is_plain(raw, mounts):
    m = mounts.with_keys({b"d/.health": b"sub"})
    assert listdir(m, "d") == [b".health"]
    assert read_file(m.p("d/.health")) == b"sub"


# ---- M7: long segments and continuation directories ----

@LONG
def test_m7_300_byte_segment(raw, mounts):
    key = b"x" * 300
    m = mounts.with_keys({key: b"long"})
    cont = b"%+" + b"x" * 253
    assert root_entries(m) == [cont]
    assert os.path.isdir(m.p(cont))
    assert listdir(m, cont) == [b"x" * 47]
    assert read_file(m.p(cont, b"x" * 47)) == b"long"


@LONG
def test_m7_255_byte_segment_is_plain_and_256_is_cut(raw, mounts):
    m = mounts.with_keys({b"y" * 255: b"a", b"z" * 256: b"b"})
    assert root_entries(m) == [b"y" * 255, b"%+" + b"z" * 253]
    assert read_file(m.p(b"%+" + b"z" * 253, b"zzz")) == b"b"


def test_m7_name_over_255_bytes_is_enametoolong(mnt):
    long = b"n" * 256
    write_file(mnt.p("f"), b"v")
    os.mkdir(mnt.p("d"))
    assert_errno(errno.ENAMETOOLONG, os.stat, mnt.p(long))
    assert_errno(errno.ENAMETOOLONG, os.stat, mnt.p("d", long))
    assert_open_errno(errno.ENAMETOOLONG, mnt.p(long), O_NEW)
    assert_errno(errno.ENAMETOOLONG, os.mkdir, mnt.p(long))
    assert_errno(errno.ENAMETOOLONG, os.rename, mnt.p("f"), mnt.p("d", long))
    assert_errno(errno.ENAMETOOLONG, os.unlink, mnt.p(long))
    assert sorted(listdir(mnt)) == [b"d", b"f"] and listdir(mnt, "d") == []
    write_file(mnt.p(b"n" * 255), b"255 bytes is a name")
    assert read_file(mnt.p(b"n" * 255)) == b"255 bytes is a name"


# (the lmdb backend takes keys up to 511 bytes)
@LONG
@pytest.mark.parametrize("seg", [b"%" * 200, b"\0" * 300, b"." * 500,
                                 b"ab\x01" * 120, b"x" * 253 + b"\0" + b"y" * 10],
                         ids=["percents", "nuls", "dots", "controls", "nul-at-cut"])
def test_m7_long_escaped_segment(raw, mounts, seg):
    path = encode_key(b"k/" + seg)
    assert all(len(c) <= 255 for c in path.split(b"/"))
    m = mounts.with_keys({b"k/" + seg: b"value"})
    assert read_file(m.p(path)) == b"value"
    files, dirs = walk_tree(m.path)
    assert files == {path: b"value"}


@LONG
def test_m7_mkdir_continuation_then_create(raw, mnt):
    cont = b"%+" + b"x" * 253
    os.mkdir(mnt.p(cont))
    assert raw.keys() == []
    assert cont in listdir(mnt)
    assert listdir(mnt, cont) == []
    write_file(mnt.p(cont, b"x" * 47), b"made")
    assert raw.items() == {b"x" * 300: b"made"}


@REMOUNT
def test_m7_continuation_directory_is_not_stored(persistent, mounts):
    m = mounts.mount()
    os.mkdir(m.p(b"%+" + b"w" * 253))
    assert os.path.isdir(m.p(b"%+" + b"w" * 253))
    m = mounts.remount(m)
    assert root_entries(m) == []


# ---- M8: one path per key, one key per path ----

INVALID = [
    b"%abc",            # would be the plain "abc"
    b"%zz",             # not an escape
    b"%a%0ab",          # lower-case hex
    b"%a%41",           # "A" needs no escape
    b"%%2E",            # "." is written "%.", not escaped
    b"%.x",             # ".x" is plain
    b"%%",              # truncated escape
    b"%%4",             # truncated escape
    b"%x%",             # truncated escape at the end
    b"%value",          # %value at the root
    b"%+" + b"x" * 10,  # a continuation piece that is not full
    b"%+",              # an empty continuation piece
    b"%" + b"y" * 254,  # "yyy..." (254 bytes) is plain
]


@pytest.mark.parametrize("name", at_root(INVALID, [b"%value"]),
                         ids=[n[:12].decode() for n in INVALID])
def test_m8_non_encoding_cannot_be_created(raw, mnt, name):
    assert_open_errno(errno.EINVAL, mnt.p(name), O_NEW)
    assert_errno(errno.EINVAL, os.mkdir, mnt.p(name))
    write_file(mnt.p("src"), b"s")
    assert_errno(errno.EINVAL, os.rename, mnt.p("src"), mnt.p(name))
    assert raw.items() == {b"src": b"s"}


@pytest.mark.parametrize("name", at_root(INVALID, [b"%value"]),
                         ids=[n[:12].decode() for n in INVALID])
def test_m8_non_encoding_does_not_exist(raw, mounts, name):
    m = mounts.with_keys({b"abc": b"1", b"A": b"2", b".x": b"3", b"value": b"4",
                          b"x" * 10: b"5", b"y" * 254: b"6", b".": b"7"})
    assert_errno(errno.ENOENT, os.stat, m.p(name))
    assert_open_errno(errno.ENOENT, m.p(name), os.O_RDONLY)


def test_m8_escaped_health_below_root_einval(raw, mnt):
    os.mkdir(mnt.p("d"))
    assert_open_errno(errno.EINVAL, mnt.p("d/%.health"), O_NEW)
    write_file(mnt.p("d/.health"), b"ok")
    assert raw.get(b"d/.health") == b"ok"


def test_m8_full_continuation_followed_by_short_rest_einval(raw, mnt):
    cont = b"%+" + b"x" * 253
    os.mkdir(mnt.p(cont))
    # "x"*253 + "y" is 254 bytes: its name is plain, not this path
    assert_open_errno(errno.EINVAL, mnt.p(cont, b"y"), O_NEW)
    assert raw.keys() == []


def test_m8_continuation_not_full_einval(raw, mnt):
    # 252 bytes: any next byte, even escaped (3 bytes), would still fit
    assert_errno(errno.EINVAL, os.mkdir, mnt.p(b"%+" + b"x" * 250))
    assert_errno(errno.EINVAL, os.mkdir, mnt.p(b"%+" + b"%25" * 83 + b"x"))
    # 255 bytes is full whatever follows
    os.mkdir(mnt.p(b"%+" + b"%25" * 84 + b"x"))
    assert raw.keys() == []


def weird_keys(rng, n):
    alphabet = [b"a", b"b", b"/", b"/", b"%", b"\0", b".", b"\n", b"\x7f", b"\xff", b"Z", b"+"]
    keys = {}
    while len(keys) < n:
        k = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12)))
        if rng.random() < 0.1:
            k += rng.choice([b"x", b"%", b"\0"]) * rng.randrange(250, 490)
        keys[k] = b"v:" + k
    return keys


@KEYS
@LONG
@ROOT
def test_m8_every_key_has_exactly_one_path(raw, mounts):
    keys = weird_keys(seeded_rng("m8"), 400)
    keys.update({b".health": b"h", b"both": b"value", b"both/child": b"c",
                 b"e/": b"", b"n/": b"not a marker", b"x" * 300: b"long"})
    m = mounts.with_keys(keys)
    files, dirs = walk_tree(m.path)
    exp_files, exp_dirs = expected_tree(keys)
    assert sorted(set(files) ^ set(exp_files)) == []
    assert files == exp_files
    assert dirs == exp_dirs


@pytest.mark.smoke
@KEYS
def test_m8_round_trip_through_mount(raw, mnt):
    rng = seeded_rng("m8-rt")
    segs = [b"", b".", b"..", b"%", b"%%", b"\0", b"a\0", b"%value", b"\n", b"\x7f",
            b".health", b"x" * 300, b"%" * 100, b"plain", b"sp ace", b"\xff"]
    made = {}
    for i in range(80):
        key = b"r%d/" % i + rng.choice(segs) + b"/" + rng.choice(segs)
        if key.endswith(b"/"):
            key += b"leaf"
        path = encode_key(key)
        os.makedirs(mnt.p(os.path.dirname(path)))
        write_file(mnt.p(path), b"v%d" % i)
        made[key] = b"v%d" % i
    stored = {k: v for k, v in raw.items().items() if not (k.endswith(b"/") and v == b"")}
    assert stored == made


# ---- M9: .health at the root ----

@ROOT
def test_m9_health_is_a_read_only_file_at_root(mnt):
    st = os.stat(mnt.p(".health"))
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o444
    assert isinstance(mnt.health(), dict)
    assert b".health" not in listdir(mnt)


@ROOT
def test_m9_health_is_read_whole_whatever_its_size(mnt):
    with open(mnt.p(".health"), "rb") as f:
        text = f.read()
        size = os.fstat(f.fileno()).st_size
    assert len(text) > size
    assert json.loads(text)["status"]


@ROOT
def test_m9_whole_mount_copies_see_exactly_the_keys(mnt, workdir):
    write_file(mnt.p("a"), b"1")
    os.mkdir(mnt.p("d"))
    write_file(mnt.p("d", "b"), b"22")
    write_file(mnt.p("%.health"), b"a key named .health")
    names = [b"%.health", b"a", b"d"]
    assert sorted(listdir(mnt)) == names

    out = os.path.join(workdir, "copy")
    r = run(["cp", "-a", mnt.path + "/.", out])
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(os.fsencode(out))) == names
    r = run(["tar", "cf", os.path.join(workdir, "t.tar"), "-C", mnt.path, "."])
    assert r.returncode == 0, r.stderr
    with tarfile.open(os.path.join(workdir, "t.tar")) as t:
        assert sorted(t.getnames()) == [".", "./%.health", "./a", "./d", "./d/b"]
    # back into the mount, twice: nothing to delete, nothing refused
    for _ in range(2):
        r = run(["rsync", "-a", "--delete", out + "/", mnt.path + "/"])
        assert r.returncode == 0, r.stderr
    assert sorted(listdir(mnt)) == names
    assert read_file(mnt.p("%.health")) == b"a key named .health"


@ROOT
def test_m9_health_key_is_shown_escaped(raw, mounts):
    m = mounts.with_keys({b".health": b"mine"})
    assert read_file(m.p("%.health")) == b"mine"
    assert "status" in m.health()


@ROOT
def test_m9_escaped_health_created_through_mount(raw, mnt):
    write_file(mnt.p("%.health"), b"stored")
    assert raw.items() == {b".health": b"stored"}
    assert "status" in mnt.health()


@PREFIX
def test_m9_health_under_root_prefix(raw, mounts):
    m = mounts.with_keys({b"sub/.health": b"v", b"sub/f": b"1"}, opts=["root=sub"])
    assert read_file(m.p("%.health")) == b"v"
    assert "status" in m.health()
    assert sorted(root_entries(m)) == [b"%.health", b"f"]


# ---- P: -o root=PREFIX mounts the subtree under PREFIX/ ----

@PREFIX
def test_root_prefix_shows_only_its_subtree(raw, mounts):
    m = mounts.with_keys({b"sub/a": b"1", b"sub/d/b": b"2", b"other/x": b"3",
                          b"subx/y": b"4", b"sub": b"5", b"su": b"6"},
                         opts=["root=sub"])
    files, dirs = walk_tree(m.path)
    assert files == {b"a": b"1", b"d/b": b"2"}
    assert dirs == {b"d"}


@PREFIX
def test_root_prefix_writes_under_prefix(raw, mounts):
    m = mounts.mount(opts=["root=sub"])
    write_file(m.p("new"), b"n")
    os.mkdir(m.p("nd"))
    assert raw.items() == {b"sub/new": b"n", b"sub/nd/": b""}


@PREFIX
def test_root_prefix_nested(raw, mounts):
    m = mounts.with_keys({b"a/b/c": b"1", b"a/x": b"2"}, opts=["root=a/b"])
    files, _ = walk_tree(m.path)
    assert files == {b"c": b"1"}
