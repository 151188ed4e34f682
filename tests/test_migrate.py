"""Moving real trees in and out of a mount with the tools people use
(cp -a, rsync -a, tar), persistence across remounts, keys written straight
into the store, several writers at once, and what survives SIGTERM and
kill -9.

Every test here runs on every selected backend: what a whole tree puts a
store through (thousands of keys, the largest values it takes, listings of
big directories, many connections at once, durability) is where backends
differ.  On lmdb and memory the tree is a few thousand files from
/usr/share/doc (40 MB); on the remote backends it is the extras alone (a
few hundred files: odd names, modes, times, a deep path, a 600-file
directory, a 3 MiB file), which goes through the same paths of a backend
in a fraction of the time; the count of keys, big listings and
concurrency are test_raw_many_keys_*, test_concurrent_writers and
test_mapping's.  The sanitizer pass runs the tests marked smoke on the
remote backends."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

import pytest

from util import (is_mounted, read_file, run, seeded_rng, walk_tree, write_file,
                  expected_tree)

SOURCE = "/usr/share/doc"
MIN_FILES = 2500          # the tree has at least this many files
MAX_FILE = 1 << 20        # skip bigger files from SOURCE
MAX_TOTAL = 40 << 20      # and stop copying from SOURCE after this many bytes

slow = pytest.mark.kvfs_timeout(1500)

pytestmark = pytest.mark.each_backend(
    "a whole tree: thousands of keys, the largest values, big listings, "
    "concurrent connections and durability")


def representable(name):
    """Whether a file name can be created in a kvfs mount: names that start
    with "%" are escapes (M6) and cannot all be created (M8)."""
    return not name.startswith(b"%") and name != b".health"


def copy_regular_tree(src, dst, limit_files, limit_bytes):
    """Copy directories and regular files only (no symlinks, devices or
    hard links: kvfs has none), keeping modes and times; the count copied."""
    count = total = 0
    src, dst = os.fsencode(src), os.fsencode(dst)
    os.makedirs(dst)
    dirs = []
    for d, subdirs, files in os.walk(src):
        subdirs[:] = sorted(s for s in subdirs if representable(s)
                            and not os.path.islink(os.path.join(d, s)))
        rel = os.path.relpath(d, src)
        target = os.path.normpath(os.path.join(dst, rel))
        os.makedirs(target, exist_ok=True)
        dirs.append((d, target))
        for f in sorted(files):
            p = os.path.join(d, f)
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE or not representable(f):
                continue
            shutil.copy2(p, os.path.join(target, f))
            count += 1
            total += st.st_size
            if count >= limit_files or total >= limit_bytes:
                break
        if count >= limit_files or total >= limit_bytes:
            break
    for d, target in reversed(dirs):
        shutil.copystat(d, target)
    return count


def add_extras(root):
    """Files and names a copied tree may not have."""
    rng = seeded_rng("extras")
    x = os.path.join(os.fsencode(root), b"kvfs-extras")
    os.makedirs(x)
    write_file(os.path.join(x, b"empty"), b"")
    os.makedirs(os.path.join(x, b"empty-dir", b"nested-empty"))
    for name in [b"with space", b"50% off", b"new\nline", b"\xff\xfe latin",
                 b"n" * 255, b"trailing.", b"...", b"del\x7f"]:
        write_file(os.path.join(x, name), name * 3)
    write_file(os.path.join(x, b"big"), bytes(rng.getrandbits(8) for _ in range(3 << 20)))
    write_file(os.path.join(x, b"exec"), b"#!/bin/sh\necho hi\n")
    os.chmod(os.path.join(x, b"exec"), 0o755)
    write_file(os.path.join(x, b"private"), b"secret")
    os.chmod(os.path.join(x, b"private"), 0o600)
    write_file(os.path.join(x, b"owned"), b"someone else's")
    os.chown(os.path.join(x, b"owned"), 1000, 1000)
    write_file(os.path.join(x, b"old"), b"from 1990")
    os.utime(os.path.join(x, b"old"), (631152000, 631152000))
    deep = os.path.join(x, *[b"level%02d" % i for i in range(30)])
    os.makedirs(deep)
    write_file(os.path.join(deep, b"bottom"), b"deep")
    many = os.path.join(x, b"many")
    os.makedirs(many)
    for i in range(600):
        write_file(os.path.join(many, b"file-%04d" % i), b"%d\n" % i * (i % 7))
    return 8 + 4 + 4 + 1 + 600


@pytest.fixture(scope="session")
def source_tree():
    """A real tree of a few thousand regular files: a copy of /usr/share/doc
    (topped up with generated files if that is small) plus extras."""
    base = tempfile.mkdtemp(prefix="kvfs-src-", dir="/tmp")
    src = os.path.join(base, "src")
    try:
        n = copy_regular_tree(SOURCE, src, MIN_FILES, MAX_TOTAL) if os.path.isdir(SOURCE) else 0
        if not os.path.isdir(src):
            os.makedirs(src)
        rng = seeded_rng("topup")
        i = 0
        while n < MIN_FILES - 600:
            d = os.path.join(src, "generated", "d%02d" % (i % 40))
            os.makedirs(d, exist_ok=True)
            write_file(os.path.join(d, "f%05d.txt" % i),
                       bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 5000))))
            n += 1
            i += 1
        add_extras(src)
        yield src
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def small_tree():
    """The extras alone: a few hundred files, odd names, modes, owners,
    times, a deep path and a 3 MiB file."""
    base = tempfile.mkdtemp(prefix="kvfs-small-", dir="/tmp")
    src = os.path.join(base, "src")
    os.makedirs(src)
    try:
        add_extras(src)
        yield src
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def fitted_trees(source_tree):
    """fitted_trees(mount[, tree]): tree (default source_tree) less the
    files a store cannot hold: for a backend whose value limit
    (docs/backends.md) is below the tree's largest file, a copy without
    those files, made once per tree and limit."""
    made = {}

    def fit(m, tree=source_tree):
        limit = m.health()["limits"]["max_value"]
        largest = max(os.lstat(os.path.join(d, f)).st_size
                      for d, _, fs in os.walk(tree) for f in fs)
        if not limit or limit >= largest:
            return tree
        if (tree, limit) not in made:
            source_tree = tree
            dst = tempfile.mkdtemp(prefix="kvfs-src-%d-" % limit, dir="/tmp")
            shutil.rmtree(dst)
            left = []

            def too_big(d, names):
                out = [n for n in names if os.path.isfile(os.path.join(d, n))
                       and os.lstat(os.path.join(d, n)).st_size > limit]
                left.extend(out)
                return out
            shutil.copytree(source_tree, dst, symlinks=True, ignore=too_big)
            for d, subdirs, _ in os.walk(source_tree):   # copytree does not keep dir times
                for n in subdirs:
                    shutil.copystat(os.path.join(d, n),
                                    os.path.join(dst, os.path.relpath(os.path.join(d, n),
                                                                      source_tree)))
            shutil.copystat(source_tree, dst)
            # The tree must stay a real migration: only a few big files go.
            assert len(left) * 20 < count_files(source_tree), left
            made[tree, limit] = dst
        return made[tree, limit]
    yield fit
    for d in made.values():
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tree(request, store, source_tree, small_tree, fitted_trees):
    """tree(mount): the tree to move through mount: source_tree on a local
    store, small_tree on a remote one (and everywhere with --small-trees: the
    sanitizer pass, whose first pass moves the big one); less what the
    store cannot hold."""
    small = store.backend.shared or request.config.getoption("--small-trees")
    return lambda m: fitted_trees(m, small_tree if small else source_tree)


def big_opts(store):
    return ["map_size=1G"] if store.scheme == "lmdb" else []


def diff_r(a, b):
    r = run(["diff", "-r", a, b], timeout=900)
    return r.returncode, r.stdout.decode(errors="replace")[:3000] + r.stderr.decode(
        errors="replace")[:1000]


def attr_differences(src, dst, owners=True, whole_seconds=False):
    """Mode, owner and mtime differences between two trees (A2); tar keeps
    times in whole seconds only."""
    out = []
    src, dst = os.fsencode(src), os.fsencode(dst)
    for d, subdirs, files in os.walk(src):
        for n in subdirs + files:
            a = os.path.join(d, n)
            b = os.path.join(dst, os.path.relpath(a, src))
            sa, sb = os.lstat(a), os.lstat(b)
            if stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
                out.append((b, "mode", oct(sa.st_mode), oct(sb.st_mode)))
            if owners and (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
                out.append((b, "owner", (sa.st_uid, sa.st_gid), (sb.st_uid, sb.st_gid)))
            ta, tb = sa.st_mtime_ns, sb.st_mtime_ns
            if whole_seconds:
                ta, tb = ta // 10**9, tb // 10**9
            if stat.S_ISREG(sa.st_mode) and ta != tb:
                out.append((b, "mtime", ta, tb))
    return out[:20]


def count_files(root):
    return sum(len(f) for _, _, f in os.walk(root))


def test_source_tree_is_big_enough(source_tree):
    assert count_files(source_tree) >= MIN_FILES


@slow
@pytest.mark.smoke
def test_cp_a_into_mount_and_back(mounts, store, tree, workdir):
    m = mounts.mount(opts=big_opts(store))
    source_tree = tree(m)
    r = run(["cp", "-a", source_tree, m.path + "/tree"], timeout=1200)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[:3000]
    assert diff_r(source_tree, m.path + "/tree") == (0, "")
    assert attr_differences(source_tree, m.path + "/tree") == []
    out = os.path.join(workdir, "out")
    r = run(["cp", "-a", m.path + "/tree", out], timeout=1200)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[:3000]
    assert diff_r(source_tree, out) == (0, "")
    assert attr_differences(source_tree, out) == []


@slow
def test_rsync_a_into_mount_and_back(mounts, store, tree, workdir):
    m = mounts.mount(opts=big_opts(store))
    source_tree = tree(m)
    dst = m.path + "/rtree/"
    r = run(["rsync", "-a", "--no-links", source_tree + "/", dst], timeout=1200)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[:3000]
    assert diff_r(source_tree, dst) == (0, "")
    assert attr_differences(source_tree, dst) == []
    # a second run finds nothing to do: names, sizes, times and modes were kept
    r = run(["rsync", "-ai", "--no-links", source_tree + "/", dst], timeout=1200)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[:3000]
    assert r.stdout.decode(errors="replace")[:3000] == ""
    out = os.path.join(workdir, "rout/")
    r = run(["rsync", "-a", dst, out], timeout=1200)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[:3000]
    assert diff_r(source_tree, out) == (0, "")
    assert attr_differences(source_tree, out) == []


@slow
def test_tar_x_into_mount(mounts, store, tree, workdir):
    m = mounts.mount(opts=big_opts(store))
    source_tree = tree(m)
    tarball = os.path.join(workdir, "tree.tar")
    r = run(["tar", "-C", source_tree, "-cf", tarball, "."], timeout=600)
    assert r.returncode == 0, r.stderr
    os.mkdir(m.p("ttree"))
    r = run(["tar", "-C", m.path + "/ttree", "-xf", tarball], timeout=1200)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[:3000]
    assert diff_r(source_tree, m.path + "/ttree") == (0, "")
    assert attr_differences(source_tree, m.path + "/ttree", whole_seconds=True) == []


@slow
@pytest.mark.smoke
def test_tree_survives_remount(persistent, mounts, store, tree):
    m = mounts.mount(opts=big_opts(store))
    source_tree = tree(m)
    r = run(["cp", "-a", source_tree, m.path + "/tree"], timeout=1200)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[:3000]
    m = mounts.remount(m)
    assert diff_r(source_tree, m.path + "/tree") == (0, "")
    # attributes are not stored (A2): defaults after the remount
    st = os.stat(m.p("tree/kvfs-extras/private"))
    assert stat.S_IMODE(st.st_mode) == 0o644


# ---- keys written straight into the store ----

# key -> documented path (docs/mapping.md M4-M9)
WEIRD = {
    b"w//x": b"w/%/x",
    b"/lead": b"%/lead",
    b"w/trail/": b"w/trail/%",
    b".": b"%.",
    b"..": b"%..",
    b"w/./d": b"w/%./d",
    b"w/../u": b"w/%../u",
    b"nul\0byte": b"%nul%00byte",
    b"%pct": b"%%25pct",
    b"w/%": b"w/%%25",
    b"L" * 300: b"%+" + b"L" * 253 + b"/" + b"L" * 47,
    b"w/" + b"M" * 300 + b"/in": b"w/%+" + b"M" * 253 + b"/" + b"M" * 47 + b"/in",
    b".health": b"%.health",
    b"w/.health": b"w/.health",
    b"both": b"both/%value",
    b"both/child": b"both/child",
    b"ctl\x01\x1f": b"ctl\x01\x1f",
    b"%ctl\x01": b"%%25ctl%01",
    b"sp ace/ne\nwline": b"sp ace/ne\nwline",
    b"\xff\xfe": b"\xff\xfe",
}


def test_raw_weird_keys_show_at_documented_names(raw, mounts):
    keys = {k: b"value of " + k for k in WEIRD}
    keys[b"marker/"] = b""
    m = mounts.with_keys(keys)
    for k, path in WEIRD.items():
        assert read_file(m.p(path)) == keys[k], path
    files, dirs = walk_tree(m.path)
    assert files == {p: keys[k] for k, p in WEIRD.items()}
    assert b"marker" in dirs and os.listdir(m.p("marker")) == []
    assert (files, dirs) == expected_tree(keys)


def test_raw_many_keys_persist_and_list(raw, mounts):
    keys = {b"bulk/%03d/%05d" % (i % 100, i): b"%d" % i for i in range(5000)}
    m = mounts.with_keys(keys)
    files, _ = walk_tree(m.p("bulk"))
    assert files == {k[5:]: v for k, v in keys.items()}


# ---- several writers at once ----

WRITER = r"""
import os, sys
root, w, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.mkdir(os.path.join(root, "w%d" % w))
for i in range(n):
    data = (b"%d:%d;" % (w, i)) * (i % 50 + 1)
    for path in (os.path.join(root, "w%d" % w, "f%04d" % i),
                 os.path.join(root, "shared", "w%d-%04d" % (w, i))):
        with open(path, "wb") as f:
            f.write(data)
"""


def test_concurrent_writers(mounts, store):
    m = mounts.mount()
    os.mkdir(m.p("shared"))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, m.path, str(w), "200"],
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for w in range(4)]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode:
            errors.append(err.decode(errors="replace")[-2000:])
    assert errors == []
    expected = {}
    for w in range(4):
        for i in range(200):
            data = (b"%d:%d;" % (w, i)) * (i % 50 + 1)
            expected[b"w%d/f%04d" % (w, i)] = data
            expected[b"shared/w%d-%04d" % (w, i)] = data
    files, _ = walk_tree(m.path)
    assert files == expected
    assert len(os.listdir(m.p("shared"))) == 800
    if store.raw:
        assert {k: v for k, v in store.items().items() if not k.endswith(b"/")} == expected


# ---- what survives the daemon's end ----

def test_sigterm_keeps_closed_writes(persistent, mounts):
    m = mounts.mount()
    os.mkdir(m.p("d"))
    for i in range(50):
        write_file(m.p("d/f%02d" % i), b"closed %d" % i)
    m.expected_exit = None           # checked below, after the data
    m.signal(signal.SIGTERM)
    status = m.wait_exit()
    assert not is_mounted(m.path)
    m = mounts.remount(m)
    for i in range(50):
        assert read_file(m.p("d/f%02d" % i)) == b"closed %d" % i
    assert status == 0


def test_sigterm_flushes_written_but_unclosed_file(persistent, mounts):
    m = mounts.mount()
    write_file(m.p("f"), b"old")
    fd = os.open(m.p("f"), os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"pending at SIGTERM")
        m.expected_exit = None       # checked below, after the data
        m.signal(signal.SIGTERM)
        status = m.wait_exit()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    m = mounts.remount(m)
    assert read_file(m.p("f")) == b"pending at SIGTERM"
    assert status == 0


def test_fsync_and_close_survive_kill_9(persistent, mounts):
    m = mounts.mount()
    write_file(m.p("closed"), b"committed by close")
    fd = os.open(m.p("synced"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"committed by fsync")
        os.fsync(fd)
        m.expected_exit = None
        m.signal(signal.SIGKILL)
        m.wait_exit()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    m = mounts.remount(m)
    assert read_file(m.p("closed")) == b"committed by close"
    assert read_file(m.p("synced")) == b"committed by fsync"


def test_unmount_flushes_and_remount_reads(persistent, mounts):
    m = mounts.mount()
    for i in range(100):
        write_file(m.p("f%03d" % i), b"%d" % i * 100)
    m = mounts.remount(m)
    for i in range(100):
        assert read_file(m.p("f%03d" % i)) == b"%d" % i * 100
