"""A write the store refused is an error from close() or fsync(), never
lost silently, whatever else happens in the mount meanwhile.  The store
is memory: with a quota (-o quota), so a refusal is a real ENOSPC from
inside the backend."""
import errno
import os

import pytest

import util
from util import read_file, write_file


@pytest.fixture
def full(workdir):
    """A memory store that refuses any write beyond 64 KiB."""
    store = util.Store(util.BackendChoice(util.BACKENDS["memory"]), workdir)
    m = util.Mounts(store).mount(opts=["quota=64K"])
    m.allow_log(r"kvfs: (ERROR|WARN):")
    return m


def big_open_file(m, name):
    fd = os.open(m.p(name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"x" * (256 << 10))  # buffered: the store sees it at close
    return fd


def test_rename_of_an_unrelated_directory_keeps_a_refused_write_for_close(full):
    os.mkdir(full.p("a"))
    fd = big_open_file(full, "f")
    os.rename(full.p("a"), full.p("b"))
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.ENOSPC


def test_rename_of_the_directory_holding_an_open_file_keeps_its_refused_write(full):
    os.mkdir(full.p("d"))
    fd = big_open_file(full, "d/f")
    os.rename(full.p("d"), full.p("e"))
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.ENOSPC
    assert read_file(full.p("e/f")) == b""


def test_rename_of_an_open_file_keeps_its_refused_write(full):
    fd = big_open_file(full, "f")
    try:
        os.rename(full.p("f"), full.p("g"))
        with pytest.raises(OSError) as e:
            os.fsync(fd)
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert read_file(full.p("g")) == b""


def test_a_write_that_fits_is_kept_through_renames(full):
    os.mkdir(full.p("a"))
    fd = os.open(full.p("a/f"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"small")
    os.rename(full.p("a"), full.p("b"))
    os.close(fd)
    assert read_file(full.p("b/f")) == b"small"
