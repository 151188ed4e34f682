"""Rule F8 of docs/mapping.md: a file lives as long as the kernel holds it
(kvfs keeps an inode table on libfuse's low-level API).  The FUSE layer is
the same on every backend: these run on lmdb and memory."""
import errno
import os
import stat
import subprocess
import threading

import pytest

from util import assert_errno, read_file, write_file

pytestmark = pytest.mark.share_mounts


def test_f8_an_unlinked_open_file_keeps_working(raw, mnt):
    write_file(mnt.p("f"), b"kept while open")
    fd = os.open(mnt.p("f"), os.O_RDWR)
    try:
        os.unlink(mnt.p("f"))
        st = os.fstat(fd)
        assert st.st_nlink == 0
        assert st.st_size == 15
        assert os.pread(fd, 100, 0) == b"kept while open"
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 15
        assert os.pwrite(fd, b"KEPT", 0) == 4
        os.fchmod(fd, 0o600)
        os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 2_000_000_000
        assert os.pread(fd, 100, 0) == b"KEPT while open"
        os.fsync(fd)
    finally:
        os.close(fd)
    assert raw.keys() == []   # nothing of the unlinked file went back to the store
    assert_errno(errno.ENOENT, os.stat, mnt.p("f"))


def test_f8_a_file_replaced_by_rename_keeps_working_and_is_not_written(raw, mnt):
    write_file(mnt.p("cfg"), b"old")
    fd = os.open(mnt.p("cfg"), os.O_RDWR)
    try:
        write_file(mnt.p("cfg.tmp"), b"new value")
        os.rename(mnt.p("cfg.tmp"), mnt.p("cfg"))
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 100, 0) == b"old"
        os.pwrite(fd, b"OLD", 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert raw.get(b"cfg") == b"new value"
    assert raw.keys() == [b"cfg"]


def test_f8_open_during_atomic_replaces_never_fails(mnt):
    """The write-temp-then-rename of config files, with a reader opening the
    name all the while: every open succeeds and reads a whole value."""
    write_file(mnt.p("cfg"), b"v0")
    stop = threading.Event()
    writes = []

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            write_file(mnt.p("cfg.tmp"), b"v%d" % i)
            os.rename(mnt.p("cfg.tmp"), mnt.p("cfg"))
        writes.append(i)

    t = threading.Thread(target=writer)
    t.start()
    errors, seen = [], set()
    try:
        for _ in range(3000):
            try:
                with open(mnt.p("cfg"), "rb") as f:
                    seen.add(f.read())
            except OSError as e:
                errors.append(errno.errorcode.get(e.errno, e.errno))
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert all(v.startswith(b"v") and v[1:].isdigit() for v in seen), sorted(seen)[:5]
    assert writes[0] > 10 and len(seen) > 1   # the race was really run


def test_f8_an_open_file_named_percent_is_a_file(raw, mnt):
    os.mkdir(mnt.p("d"))
    fd = os.open(mnt.p("d", "%"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert os.fstat(fd).st_size == 0
        os.fchmod(fd, 0o640)
        os.utime(fd, ns=(5_000_000_000, 6_000_000_000))
        st = os.fstat(fd)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_mtime_ns == 6_000_000_000
        os.write(fd, b"value of d/")
    finally:
        os.close(fd)
    assert raw.get(b"d/") == b"value of d/"
    assert read_file(mnt.p("d", "%")) == b"value of d/"


def test_f8_cp_a_round_trips_a_directory_with_a_value(raw, mnt, tmp_path):
    raw.put(b"src/d/", b"the value of the key d/")
    raw.put(b"src/d/x", b"x")
    copy = str(tmp_path / "copy")
    r = subprocess.run(["cp", "-a", mnt.p("src"), copy], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert read_file(os.path.join(copy, "d", "%")) == b"the value of the key d/"
    r = subprocess.run(["cp", "-a", copy, mnt.p("dst")], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert raw.get(b"dst/d/") == b"the value of the key d/"
    assert raw.get(b"dst/d/x") == b"x"


def test_f8_an_unlinked_file_keeps_what_a_closed_handle_wrote(raw, mnt):
    write_file(mnt.p("f"), b"old")
    writer = os.open(mnt.p("f"), os.O_WRONLY | os.O_TRUNC)
    os.write(writer, b"new")
    reader = os.open(mnt.p("f"), os.O_RDONLY)
    try:
        os.unlink(mnt.p("f"))
        os.close(writer)
        assert os.pread(reader, 10, 0) == b"new"
    finally:
        os.close(reader)
    assert raw.keys() == []


def test_f8_attributes_set_on_an_unlinked_file_stay(mounts):
    m = mounts.mount(opts=["entry_timeout=0", "attr_timeout=0"])
    write_file(m.p("f"), b"data")
    fd = os.open(m.p("f"), os.O_RDWR)
    try:
        os.unlink(m.p("f"))
        os.fchmod(fd, 0o600)
        os.utime(fd, ns=(3_000_000_000, 4_000_000_000))
        for _ in range(3):   # each fstat asks kvfs again (attr_timeout=0)
            st = os.fstat(fd)
            assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 4_000_000_000
            assert st.st_size == 4 and st.st_nlink == 0
    finally:
        os.close(fd)


def test_f8_files_made_in_a_directory_being_renamed_go_with_it(raw, mnt):
    """A directory renamed back and forth while files are made in it through
    a descriptor of it: every file ends up in the directory, none at a name
    it no longer has."""
    os.mkdir(mnt.p("a"))
    dfd = os.open(mnt.p("a"), os.O_RDONLY | os.O_DIRECTORY)
    stop = threading.Event()
    moves = []

    def mover():
        n = 0
        while not stop.is_set():
            os.rename(mnt.p("a"), mnt.p("b"))
            os.rename(mnt.p("b"), mnt.p("a"))
            n += 2
        moves.append(n)

    t = threading.Thread(target=mover)
    t.start()
    try:
        for i in range(300):
            fd = os.open("f%03d" % i, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd)
            os.write(fd, b"%d" % i)
            os.close(fd)
    finally:
        stop.set()
        t.join()
        os.close(dfd)
    assert moves[0] > 10
    assert sorted(map(os.fsdecode, os.listdir(mnt.path))) == ["a"]
    assert sorted(map(os.fsdecode, os.listdir(mnt.p("a")))) == ["f%03d" % i for i in range(300)]
    assert sorted(raw.keys()) == sorted([b"a/"] + [b"a/f%03d" % i for i in range(300)])


def test_f8_an_old_listing_does_not_cut_off_a_newer_directory(mnt):
    """A directory handle lists what was there at opendir; reading it after
    the file e became a directory e must not take e's inode away from a
    process working in it."""
    os.mkdir(mnt.p("d"))
    write_file(mnt.p("d", "e"), b"a file first")
    listing = os.open(mnt.p("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.unlink(mnt.p("d", "e"))
        os.mkdir(mnt.p("d", "e"))
        write_file(mnt.p("d", "e", "x"), b"inside")
        inside = os.open(mnt.p("d", "e"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert sorted(map(os.fsdecode, os.listdir(listing))) == ["e"]
            fd = os.open("x", os.O_RDONLY, dir_fd=inside)
            assert os.read(fd, 100) == b"inside"
            os.close(fd)
            write_file(mnt.p("d", "e", "y"), b"more")
            assert sorted(map(os.fsdecode, os.listdir(inside))) == ["x", "y"]
        finally:
            os.close(inside)
    finally:
        os.close(listing)
