"""The command line: --help, --version, --backends, every error case
(exit status 1 and exactly one line on stderr starting with "kvfs: "),
the embedded default store, and running as a daemon."""
import os
import re
import signal
import subprocess
import time

import pytest

import util
from util import KVFS_BIN, LmdbRaw, Mount, daemon_pids, is_mounted, read_file, write_file


@pytest.fixture(autouse=True)
def _binary():
    if not os.access(KVFS_BIN, os.X_OK):
        pytest.fail("no kvfs binary at %s (build it, or set KVFS_BIN)" % KVFS_BIN)


def kvfs(*args, env=None, timeout=20):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([KVFS_BIN] + list(args), capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=e)


def test_help_exits_0_and_lists_options():
    r = kvfs("--help")
    assert r.returncode == 0, r.stderr
    text = (r.stdout + r.stderr).decode()
    assert re.search(r"usage", text, re.I)
    for word in ["root=", "uid=", "gid=", "umask=", "timeout=", "health_timeout=", "ro"]:
        assert word in text, word
    assert "Sanitizer" not in text


def test_version_prints_kvfs_version():
    r = kvfs("--version")
    assert r.returncode == 0, r.stderr
    first = r.stdout.decode().splitlines()[0]
    assert first.split()[:2] == ["kvfs", util.project_version()], first


def test_backends_lists_compiled_schemes():
    r = kvfs("--backends")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.decode().splitlines() if ln.strip()]
    schemes = [re.match(r"([a-z][a-z0-9+.-]*)", ln).group(1) for ln in lines]
    assert "lmdb" in schemes and "memory" in schemes, lines
    assert len(set(schemes)) == len(schemes)


# ---- error cases ----

def _file(d):
    p = os.path.join(d, "plainfile")
    write_file(p, b"not a directory")
    return p


def _nonempty(m):
    write_file(os.path.join(m, "hidden-by-a-mount"), b"x")
    return m


def _garbage_lmdb(d):
    s = os.path.join(d, "garbage")
    os.mkdir(s)
    write_file(os.path.join(s, "data.mdb"), b"this is not an lmdb file" * 1000)
    return "lmdb:" + s


# name -> function(workdir, mountpoint) giving the arguments after the program name
ERRORS = {
    "no-arguments": lambda d, m: [],
    "only-f": lambda d, m: ["-f"],
    "url-but-no-mountpoint": lambda d, m: ["-f", "memory:"],
    "missing-mountpoint": lambda d, m: ["-f", "memory:", os.path.join(d, "nonexistent")],
    "mountpoint-is-a-file": lambda d, m: ["-f", "memory:", _file(d)],
    "too-many-arguments": lambda d, m: ["-f", "memory:", m, m],
    "unknown-scheme": lambda d, m: ["-f", "bogus:/x", m],
    "url-without-scheme": lambda d, m: ["-f", "nocolon", m],
    "empty-scheme": lambda d, m: ["-f", ":/x", m],
    "lmdb-empty-path": lambda d, m: ["-f", "lmdb:", m],
    "lmdb-store-is-a-file": lambda d, m: ["-f", "lmdb:" + _file(d), m],
    "lmdb-store-under-a-file": lambda d, m: ["-f", "lmdb:" + _file(d) + "/sub", m],
    "lmdb-store-garbage": lambda d, m: ["-f", _garbage_lmdb(d), m],
    "unknown-option": lambda d, m: ["-f", "-o", "bogus=1", "memory:", m],
    "unknown-flag-option": lambda d, m: ["-f", "-o", "bogus", "memory:", m],
    "unknown-long-option": lambda d, m: ["-f", "--bogus", "memory:", m],
    "unknown-short-option": lambda d, m: ["-f", "-x", "memory:", m],
    "bad-uid": lambda d, m: ["-f", "-o", "uid=abc", "memory:", m],
    "bad-gid": lambda d, m: ["-f", "-o", "gid=x1", "memory:", m],
    "bad-umask": lambda d, m: ["-f", "-o", "umask=999", "memory:", m],
    "bad-umask-text": lambda d, m: ["-f", "-o", "umask=abc", "memory:", m],
    "bad-timeout": lambda d, m: ["-f", "-o", "timeout=soon", "memory:", m],
    "bad-health-timeout": lambda d, m: ["-f", "-o", "health_timeout=-1", "memory:", m],
    "bad-entry-timeout": lambda d, m: ["-f", "-o", "entry_timeout=abc", "memory:", m],
    "lmdb-bad-map-size": lambda d, m: ["-f", "-o", "map_size=lots",
                                       "lmdb:" + os.path.join(d, "s"), m],
    "lmdb-bad-sync": lambda d, m: ["-f", "-o", "sync=sometimes",
                                   "lmdb:" + os.path.join(d, "s"), m],
    "lmdb-bad-sync-interval": lambda d, m: ["-f", "-o", "sync_interval=often",
                                            "lmdb:" + os.path.join(d, "s"), m],
    "lmdb-option-on-memory": lambda d, m: ["-f", "-o", "map_size=1M", "memory:", m],
    "missing-o-argument": lambda d, m: ["-f", "memory:", m, "-o"],
    "bad-option-daemon-mode": lambda d, m: ["-o", "bogus=1", "memory:", m],
    "bad-url-daemon-mode": lambda d, m: ["bogus:/x", m],
    # max_read would fail the kernel's INIT after the daemon said "mounted"
    "max-read-daemon-mode": lambda d, m: ["-o", "max_read=65536", "memory:", m],
    "mountpoint-not-empty": lambda d, m: ["-f", "memory:", _nonempty(m)],
    "mountpoint-not-empty-daemon-mode": lambda d, m: ["memory:", _nonempty(m)],
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_exit_1_with_one_line(workdir, case):
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    args = ERRORS[case](workdir, mnt)
    try:
        r = kvfs(*args, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("kvfs %s did not exit (it mounted?)" % " ".join(args))
    err = r.stderr.decode(errors="replace")
    assert "Sanitizer" not in err and "runtime error" not in err, err
    assert r.returncode == 1, "exit %s, stderr: %s" % (r.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("kvfs: "), lines
    assert not is_mounted(mnt)


# ---- the embedded default store ----

def find_store(base):
    for d, _, files in os.walk(base):
        if "data.mdb" in files:
            return d
    return None


def test_default_store_under_xdg_data_home(workdir):
    xdg = os.path.join(workdir, "xdg")
    home = os.path.join(workdir, "home")
    os.makedirs(home)
    env = {"XDG_DATA_HOME": xdg, "HOME": home}
    m = Mount(None, env=env).start()
    write_file(m.p("f"), b"default store")
    os.mkdir(m.p("d"))
    assert m.health()["backend"] == "lmdb"
    m.unmount()
    store = find_store(os.path.join(xdg, "kvfs"))
    assert store, "no data.mdb under %s/kvfs" % xdg
    assert LmdbRaw("lmdb:" + store).get(b"f") == b"default store"
    assert not os.path.exists(os.path.join(home, ".local"))
    m = Mount(None, env=env).start()
    assert read_file(m.p("f")) == b"default store"
    assert os.path.isdir(m.p("d"))


def test_default_store_under_home(workdir):
    home = os.path.join(workdir, "home")
    os.makedirs(home)
    m = Mount(None, env={"XDG_DATA_HOME": None, "HOME": home}).start()
    write_file(m.p("f"), b"home store")
    m.unmount()
    store = find_store(os.path.join(home, ".local", "share", "kvfs"))
    assert store, "no data.mdb under %s/.local/share/kvfs" % home
    assert LmdbRaw("lmdb:" + store).get(b"f") == b"home store"


# ---- running as a daemon, signals ----

def gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def wait_gone(pid, limit=20.0):
    deadline = time.monotonic() + limit
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_daemon_mode_mounts_and_exits_on_unmount(workdir):
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    r = kvfs("memory:", mnt, timeout=30)
    assert r.returncode == 0, r.stderr
    assert is_mounted(mnt)
    pids = daemon_pids(mnt)
    assert len(pids) == 1, pids
    write_file(os.path.join(mnt, "f"), b"daemon")
    assert read_file(os.path.join(mnt, "f")) == b"daemon"
    u = subprocess.run([util.FUSERMOUNT, "-u", mnt], capture_output=True, timeout=30)
    assert u.returncode == 0, u.stderr
    assert wait_gone(pids[0]), "daemon %d still running after unmount" % pids[0]
    assert not is_mounted(mnt)


def test_sigterm_unmounts_and_exits_0(workdir):
    m = Mount("memory:").start()
    write_file(m.p("f"), b"x")
    m.expected_exit = None           # asserted here, not again by the guard
    m.signal(signal.SIGTERM)
    status = m.wait_exit()
    assert not is_mounted(m.path)
    assert status == 0


def test_an_option_that_cannot_be_copied_is_one_error_line(workdir):
    """strdup of the second -o option fails (injected): kvfs says so and exits 1,
    without touching the option list it was growing (it once kept a pointer
    to the list realloc had just moved)."""
    shim = os.path.join(os.path.dirname(KVFS_BIN), "failalloc.so")
    assert os.path.exists(shim), "build failalloc.so first"
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    env = {"LD_PRELOAD": shim, "KVFS_FAIL_STRDUP": "map_size=64M",
           "ASAN_OPTIONS": "verify_asan_link_order=0:detect_leaks=0"}
    r = kvfs("-f", "-o", "sync=always", "-o", "map_size=64M",
             "lmdb:" + os.path.join(workdir, "db"), mnt, env=env)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "Sanitizer" not in err and "double free" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvfs: "), err
    assert not is_mounted(mnt)


# ---- the mountpoint ----

def test_nonempty_mounts_over_files_and_they_come_back(workdir):
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    write_file(os.path.join(mnt, "under"), b"below the mount")
    m = Mount("memory:", opts=["nonempty"], mountpoint=mnt).start()
    assert os.listdir(mnt) == []
    write_file(m.p("over"), b"in the store")
    m.unmount()
    assert os.listdir(mnt) == ["under"]
    assert read_file(os.path.join(mnt, "under")) == b"below the mount"


def test_a_second_mount_on_a_kvfs_mount_is_refused(workdir):
    m = Mount("memory:").start()
    write_file(m.p("f"), b"first")
    for args in (["-f", "memory:", m.path], ["-f", "-o", "nonempty", "memory:", m.path],
                 ["memory:", m.path + "/"]):
        r = kvfs(*args)
        err = r.stderr.decode()
        assert r.returncode == 1, err
        assert err.splitlines() == ["kvfs: '%s' is already a kvfs mount "
                                    "(fusermount3 -u it first)" % args[-1]], err
    assert read_file(m.p("f")) == b"first"       # the first mount still answers
    assert len(daemon_pids(m.path)) == 1
