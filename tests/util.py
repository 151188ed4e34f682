"""Helpers for the kvfs pytest suite.

Everything that knows how a store is laid out, how a mount is started and
stopped, and what the spec's name mapping is (docs/mapping.md) lives here,
once; the test files only say what they check.

Only the assert_* helpers assert; everything else returns what it finds,
and the tests (or the autouse guard in conftest.py) decide.
"""
import contextlib
import ctypes
import errno
import json
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import servers

REPO = Path(__file__).resolve().parent.parent
KVFS_BIN = os.environ.get("KVFS_BIN", str(REPO / "build" / "kvfs"))
TMP_ROOT = "/tmp"
# The suite's servers keep their data in memory (tmpfs) where there is one:
# their fsyncs cost nothing there, and kvfs's durability is not theirs.
SERVER_ROOT = "/dev/shm" if os.access("/dev/shm", os.W_OK) else TMP_ROOT

MOUNT_WAIT = 10.0      # seconds a mount may take to appear in /proc/mounts
EXIT_WAIT = 30.0       # seconds a daemon may take to exit after unmount
FUSERMOUNT = shutil.which("fusermount3") or "/usr/bin/fusermount3"


def project_version():
    """The version in meson.build (what `kvfs --version` must print)."""
    text = (REPO / "meson.build").read_text()
    m = re.search(r"version\s*:\s*'([^']+)'", text)
    return m.group(1) if m else None


# --------------------------------------------------------------------------
# Raw access to a store, bypassing kvfs: "keys written straight into the
# store".  The on-disk key convention of each backend is kept here, in one
# place per backend, so that a change of convention is a change here only.
# --------------------------------------------------------------------------

class LmdbRaw:
    """Direct access to an lmdb: store with python3-lmdb.

    The env may be open in a running kvfs at the same time: LMDB's lock
    file makes that safe.  The env is opened and closed around every call
    (LMDB forbids two opens of one env in one process).
    """
    # How a kvfs key is stored as an LMDB key.  Keys are raw bytes today;
    # if the backend adds a tag byte, change KEY_TAG (and nothing else).
    KEY_TAG = b""
    MAP_SIZE = 1 << 30    # at least the map size of any mount in the suite

    def __init__(self, url):
        assert url.startswith("lmdb:"), url
        self.dir = url[len("lmdb:"):]

    @classmethod
    def to_db(cls, key):
        return cls.KEY_TAG + key

    @classmethod
    def from_db(cls, dbkey):
        return bytes(dbkey[len(cls.KEY_TAG):])

    @contextlib.contextmanager
    def env(self):
        import lmdb
        os.makedirs(self.dir, exist_ok=True)
        env = lmdb.open(self.dir, max_dbs=0, map_size=self.MAP_SIZE, subdir=True)
        try:
            yield env
        finally:
            env.close()

    def put_many(self, items):
        with self.env() as env, env.begin(write=True) as txn:
            for k, v in items.items():
                txn.put(self.to_db(k), v)

    def get(self, key):
        with self.env() as env, env.begin() as txn:
            return txn.get(self.to_db(key))

    def delete(self, key):
        with self.env() as env, env.begin(write=True) as txn:
            return txn.delete(self.to_db(key))

    def items(self, prefix=b""):
        out = {}
        start = self.to_db(prefix)
        with self.env() as env, env.begin() as txn:
            cur = txn.cursor()
            if cur.set_range(start):
                for dbk, v in cur:
                    if not dbk.startswith(start):
                        break
                    out[self.from_db(dbk)] = bytes(v)
        return out

    def last_txnid(self):
        with self.env() as env:
            return env.info()["last_txnid"]

    def snapshots(self):
        """Open the env once and return a function giving {key: value} of a
        consistent read snapshot, and a close function."""
        import lmdb
        env = lmdb.open(self.dir, max_dbs=0, map_size=self.MAP_SIZE, subdir=True)

        def snap(prefix=b""):
            out = {}
            with env.begin() as txn:
                cur = txn.cursor()
                start = self.to_db(prefix)
                if cur.set_range(start):
                    for dbk, v in cur:
                        if not dbk.startswith(start):
                            break
                        out[self.from_db(dbk)] = bytes(v)
            return out
        return snap, env.close


RAW_STORES = {"lmdb": LmdbRaw}


def raw_store(url):
    """The raw accessor of url's backend (the store's own client, not kvfs),
    or None when it has none."""
    scheme = url.split(":", 1)[0]
    cls = RAW_STORES.get(scheme)
    if cls is None:
        mod = servers.module(scheme.split("+", 1)[0])
        cls = getattr(mod, "Raw", None)
    return cls(url) if cls else None


def store_put(url, key, value):
    raw_store(url).put_many({key: value})


def store_put_many(url, items):
    raw_store(url).put_many(items)


def store_get(url, key):
    """The value of key, or None if it does not exist."""
    v = raw_store(url).get(key)
    return None if v is None else bytes(v)


def store_delete(url, key):
    return raw_store(url).delete(key)


def store_items(url, prefix=b""):
    return raw_store(url).items(prefix)


def store_keys(url, prefix=b""):
    return sorted(store_items(url, prefix))


# --------------------------------------------------------------------------
# The backend table.  One row per backend the suite knows; which rows run is
# chosen with --backend NAME|URL (repeatable) or KVFS_TEST_URLS="a,b".
#
# A local backend gets a fresh store per test (new_url).  A remote backend
# is given as a URL of a test server (KVFS_TEST_URLS=memcached://127.0.0.1:11211)
# and every test gets its own key space with -o root=<random prefix>.
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    scheme: str
    new_url: object            # (fresh dir, server URL or None) -> URL of an empty store
    persistent: bool           # data outlives the mount (remount tests)
    atomic_rename: bool        # multi-key commits are atomic (F6)
    shared: bool = False       # one server for all tests: isolate with -o root=
    options: tuple = ()        # backend -o options every mount gets
    blackhole_url: object = None  # port -> URL of a server that never answers (H2)
    walks: bool = False        # lists by walking every key: a walk answers for list_timeout


def remote(scheme, atomic_rename=False, options=(), walks=False):
    """A row for a network backend: one server for the whole run (the suite's
    own from tests/servers/<scheme>.py, or KVFS_TEST_<SCHEME>_URL), every
    test in its own key space."""
    return Backend(scheme, lambda d, url: url, persistent=True, atomic_rename=atomic_rename,
                   shared=True, options=tuple(options), walks=walks,
                   blackhole_url=lambda port: "%s://127.0.0.1:%d" % (scheme, port))


BACKENDS = {
    "lmdb": Backend("lmdb", lambda d, url: "lmdb:" + os.path.join(d, "store"),
                    persistent=True, atomic_rename=True),
    "memory": Backend("memory", lambda d, url: "memory:",
                      persistent=False, atomic_rename=True),
    "memcached": remote("memcached", walks=True),
    "consul": remote("consul"),   # atomic only up to 64 operations (docs/backends.md)
    "mongodb": remote("mongodb"),
    "etcd": remote("etcd", atomic_rename=True),
    "redis": remote("redis", atomic_rename=True, walks=True),
    "postgresql": remote("postgresql", atomic_rename=True),
    "mysql": remote("mysql", atomic_rename=True),
}

LOCAL_BACKENDS = "lmdb,memory"


def default_backends():
    """lmdb, memory and every remote backend this kvfs was built with."""
    return ",".join(["lmdb", "memory"] + [s for s in compiled_backends()
                                          if s in BACKENDS and BACKENDS[s].shared])


@dataclass(frozen=True)
class BackendChoice:
    """One selected backend: a row of BACKENDS and the URL given for it."""
    backend: Backend
    url: str = None

    @property
    def id(self):
        return self.backend.scheme

    @property
    def scheme(self):
        return self.backend.scheme


def parse_backend_choices(items):
    out = []
    for item in items:
        for word in re.split(r"[,\s]+", item.strip()):
            if not word:
                continue
            scheme = word.split(":", 1)[0]
            if scheme not in BACKENDS:
                raise ValueError("unknown backend %r (known: %s)"
                                 % (word, ", ".join(BACKENDS)))
            b = BACKENDS[scheme]
            url = word if ":" in word else servers.external_url(scheme)
            out.append(BackendChoice(b, url))
    return out


_backends_cache = None


def compiled_backends():
    """Schemes `kvfs --backends` lists (first word of each line)."""
    global _backends_cache
    if _backends_cache is None:
        try:
            # a probe, not a test (test_cli checks --backends itself): a leak
            # report must not hide the list
            env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "")
                       + ":detect_leaks=0")
            r = subprocess.run([KVFS_BIN, "--backends"], capture_output=True,
                               timeout=20, stdin=subprocess.DEVNULL, env=env)
            _backends_cache = [ln.split()[0].rstrip(":") for ln in
                               r.stdout.decode(errors="replace").splitlines() if ln.split()]
        except (OSError, subprocess.TimeoutExpired):
            _backends_cache = []
    return _backends_cache


# --------------------------------------------------------------------------
# Registry of what a test started: the autouse guard in conftest.py cleans
# it all up after every test, whatever happened.
# --------------------------------------------------------------------------

_live_mounts = []
_shared_mounts = []    # daemons of SharedStore: they outlive a test
_temp_dirs = []
_run_dirs = []
_problems = []
_lock = threading.RLock()  # shared_server() calls new_temp_dir() holding it


def new_temp_dir(prefix="kvfs-test-", keep=False, root=TMP_ROOT):
    """A fresh directory, removed after the test (keep: after the run)."""
    d = tempfile.mkdtemp(prefix=prefix, dir=root)
    with _lock:
        (_run_dirs if keep else _temp_dirs).append(d)
    return d


def _unescape_mount_field(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounted_paths():
    with open("/proc/mounts") as f:
        return [_unescape_mount_field(line.split()[1]) for line in f if line.strip()]


def is_mounted(path):
    return os.path.realpath(path) in mounted_paths()


def mounts_under(d):
    d = os.path.realpath(d)
    return [m for m in mounted_paths() if m == d or m.startswith(d + "/")]


def force_unmount(path):
    """Last resort: lazy unmount."""
    subprocess.run([FUSERMOUNT, "-uz", path], capture_output=True, timeout=30)
    if is_mounted(path):
        subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


def cleanup_everything():
    """Unmount every live mount, remove temp dirs; return the problems seen
    (a list of strings), and forget them."""
    with _lock:
        mounts = list(_live_mounts)
    for m in mounts:
        m.unmount()
    with _lock:
        dirs = list(_temp_dirs)
        _temp_dirs.clear()
    for d in dirs:
        left = mounts_under(d)
        for mp in left:
            _problems.append("mount left behind at %s" % mp)
            force_unmount(mp)
        if not mounts_under(d):
            shutil.rmtree(d, ignore_errors=True)
        else:
            _problems.append("cannot remove %s: still mounted" % d)
    with _lock:
        out = list(_problems)
        _problems.clear()
    return out


def kill_all_daemons(reason):
    """The watchdog: a hung daemon would hang the test in the kernel; kill
    it so the test's system calls fail and the test ends."""
    with _lock:
        mounts = list(_live_mounts) + list(_shared_mounts)
        _problems.append(reason)
    for m in mounts:
        if m.proc and m.proc.poll() is None:
            m.expected_exit = None
            with contextlib.suppress(ProcessLookupError):
                m.proc.kill()


# --------------------------------------------------------------------------
# Stores and mounts
# --------------------------------------------------------------------------

class Store:
    """A fresh store for one test: its URL, its key prefix when the store is
    shared with other tests, and raw access to it when the backend has one.

    Given url and prefix, a key space inside a store someone else made (a
    module's shared store, see SharedStore)."""

    def __init__(self, choice, workdir, url=None, prefix=None, view=False):
        self.backend = choice.backend
        self.view = view           # a directory of a shared mount (SharedStore)
        self.shared = None         # that SharedStore
        if url is None:
            url = choice.url
            if url is None and choice.backend.shared:
                url = shared_server(choice.scheme).url
            url = choice.backend.new_url(workdir, url)
        self.url = url
        if prefix is None:
            prefix = b""
            if choice.backend.shared:
                prefix = ("kvfs-test-%s/" % uuid.uuid4().hex[:12]).encode()
        self.prefix = prefix
        self.raw = raw_store(self.url)

    @property
    def persistent(self):
        return self.backend.persistent

    @property
    def scheme(self):
        return self.backend.scheme

    def put(self, key, value):
        self.raw.put_many({self.prefix + key: value})

    def put_many(self, items):
        self.raw.put_many({self.prefix + k: v for k, v in items.items()})

    def get(self, key):
        v = self.raw.get(self.prefix + key)
        return None if v is None else bytes(v)

    def delete(self, key):
        return self.raw.delete(self.prefix + key)

    def items(self, prefix=b""):
        n = len(self.prefix)
        out = {k[n:]: v for k, v in self.raw.items(self.prefix + prefix).items()}
        if self.view and out.get(b"") == b"":
            # the test's key space is a directory of a shared mount: its
            # marker (the key "tN/" itself) is the harness's, not the test's
            del out[b""]
        return out

    def keys(self, prefix=b""):
        return sorted(self.items(prefix))


_shared_servers = {}


def shared_server(scheme):
    """The suite's own server for scheme, started on first use and stopped
    when the test run ends."""
    with _lock:
        srv = _shared_servers.get(scheme)
        if srv is None:
            mod = servers.module(scheme)
            if mod is None:
                raise RuntimeError("no test server for %s: give KVFS_TEST_%s_URL"
                                   % (scheme, scheme.upper()))
            srv = mod.start(new_temp_dir("kvfs-server-", keep=True, root=SERVER_ROOT))
            _shared_servers[scheme] = srv
        return srv


def stop_shared_servers():
    with _lock:
        srvs = list(_shared_servers.values())
        _shared_servers.clear()
        dirs = list(_run_dirs)
        _run_dirs.clear()
    for srv in srvs:
        srv.stop()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


# Daemon output that fails the test that produced it.
BAD_LOG = re.compile(
    r"kvfs: ERROR:|AddressSanitizer|LeakSanitizer|ThreadSanitizer|"
    r"UndefinedBehaviorSanitizer|MemorySanitizer|runtime error:|"
    r"unexpected result|Segmentation fault|Assertion .* failed|double free|"
    r"malloc\(\)|free\(\)")
# Sanitizer reports are never allowed, whatever a test expects.
SANITIZER_LOG = re.compile(r"Sanitizer|runtime error:")


def daemon_pids(mountpoint):
    """The kvfs processes (of KVFS_BIN) serving mountpoint."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mountpoint) in argv and os.fsencode(KVFS_BIN) in argv[0]:
            pids.append(int(pid))
    return pids


class Mount:
    """One kvfs daemon started in the foreground (-f) on a fresh mountpoint."""

    def __init__(self, url, opts=(), args=(), env=None, prefix=b"", store=None,
                 mountpoint=None, user_opts=None):
        self.url = url
        self.user_opts = list(opts if user_opts is None else user_opts)
        self.store = store
        self.prefix = prefix
        self.opts = list(opts)
        self.args = list(args)
        self.env = env
        self.path = mountpoint or os.path.join(new_temp_dir("kvfs-mnt-"), "mnt")
        os.makedirs(self.path, exist_ok=True)
        self.bpath = os.fsencode(self.path)
        self.log_path = os.path.join(os.path.dirname(self.path),
                                     "kvfs-%s.log" % uuid.uuid4().hex[:8])
        self.proc = None
        self.allowed = []          # regexes of log lines this test expects
        self.test_allowed = []     # ... expected by the current test only (shared daemons)
        self.log_from = 0          # bytes of the log already checked (shared daemons)
        self.expected_exit = 0     # None: any exit status (the test killed it)
        self.done = False
        self.cmd = None

    # -- lifecycle --

    def start(self):
        cmd = [KVFS_BIN, "-f"] + self.args
        if self.opts:
            cmd += ["-o", ",".join(self.opts)]
        cmd += [self.url, self.path] if self.url is not None else [self.path]
        self.cmd = cmd
        self.log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        for k, v in (self.env or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        with _lock:
            _live_mounts.append(self)
        deadline = time.monotonic() + MOUNT_WAIT
        while time.monotonic() < deadline:
            if is_mounted(self.path):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        rc = self.proc.poll()
        self.expected_exit = None      # the exception below reports it all
        self.allow_log(r".")
        self.unmount()
        raise RuntimeError("kvfs did not mount (%s): exit %s, output:\n%s"
                           % (" ".join(cmd), rc, self.log_text()))

    def unmount(self):
        """Unmount (fusermount3 -u, then lazily and by kill on failure) and
        wait for the daemon; problems go to the registry. Idempotent."""
        if self.done:
            return
        self.done = True
        problems = []
        if (self.proc.poll() is not None and self.expected_exit is not None
                and is_mounted(self.path)):
            problems.append("daemon died and left its mount (status %s)" % self.proc.returncode)
        if is_mounted(self.path):
            r = subprocess.run([FUSERMOUNT, "-u", self.path], capture_output=True,
                               timeout=60)
            if r.returncode != 0 and self.proc.poll() is None:
                problems.append("fusermount3 -u %s failed: %s"
                                % (self.path, r.stderr.decode(errors="replace").strip()))
            if is_mounted(self.path):
                force_unmount(self.path)
        try:
            self.proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:
            problems.append("daemon did not exit %.0f s after unmount" % EXIT_WAIT)
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.expected_exit is not None and self.proc.returncode != self.expected_exit:
            problems.append("daemon exit status %s (expected %s)"
                            % (self.proc.returncode, self.expected_exit))
        if is_mounted(self.path):
            force_unmount(self.path)
            problems.append("still mounted after unmount")
        self.log.close()
        bad = self.bad_log_lines()
        if bad:
            problems.append("daemon printed:\n  " + "\n  ".join(bad[:20]))
        with _lock:
            if self in _live_mounts:
                _live_mounts.remove(self)
            if problems:
                _problems.append("%s: %s\nfull log (%s):\n%s" % (
                    " ".join(self.cmd), "; ".join(problems), self.log_path,
                    self.log_text()[-4000:]))
        if not is_mounted(self.path):
            with contextlib.suppress(OSError):
                os.rmdir(self.path)

    def wait_exit(self, timeout=EXIT_WAIT):
        """Wait for the daemon to exit by itself; its status, or None."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig):
        self.proc.send_signal(sig)

    # -- output --

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def allow_log(self, regex):
        """Lines matching regex are expected from this daemon (not sanitizer
        reports: those always fail)."""
        self.allowed.append(re.compile(regex))

    def bad_log_lines(self, upto=None):
        """Bad lines of the log from log_from (to byte upto)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_from)
                text = f.read(-1 if upto is None else max(0, upto - self.log_from))
        except OSError:
            return []
        allowed = self.allowed + self.test_allowed
        out = []
        for line in text.decode(errors="replace").splitlines():
            if SANITIZER_LOG.search(line):
                out.append(line)
            elif BAD_LOG.search(line) and not any(a.search(line) for a in allowed):
                out.append(line)
        return out

    def end_of_test(self):
        """A shared daemon after one test: its problems during that test
        (death, lost mount, bad output); the next test starts a new window."""
        problems = []
        upto = self.log_size()
        bad = self.bad_log_lines(upto)
        if bad:
            problems.append("daemon printed:\n  " + "\n  ".join(bad[:20]))
        self.log_from = upto
        self.test_allowed = []
        if self.proc.poll() is not None:
            problems.append("shared daemon exited with status %s" % self.proc.returncode)
        elif not is_mounted(self.path):
            problems.append("shared daemon lost its mount")
        if problems:
            problems = ["%s (shared mount): %s\nlog (%s):\n%s" % (
                " ".join(self.cmd), "; ".join(problems), self.log_path,
                self.log_text()[-4000:])]
        return problems

    # -- paths --

    def p(self, *parts):
        """Bytes path inside the mount."""
        out = self.bpath
        for part in parts:
            out = os.path.join(out, os.fsencode(part))
        return out

    def health(self):
        with open(self.p(".health"), "rb") as f:
            return json.loads(f.read())

    # -- store --

    def key(self, key):
        return self.prefix + key


class Mounts:
    """Factory for the mounts of one test, all on the test's fresh store
    unless told otherwise.  When that store is a key space of a module's
    SharedStore, mount() and with_keys() with no url, store, env or prefix
    give the test's directory in the module's daemon for those options
    (a View) instead of a daemon of its own."""

    def __init__(self, store):
        self.store = store
        self.mounts = []

    def mount(self, opts=(), args=(), url=None, store=None, env=None, prefix=None):
        if (self.store.view and url is None and store is None and env is None
                and prefix is None):
            return self.store.shared.view(self.store, opts, args)
        store = store or self.store
        user_opts = list(opts)
        opts = list(store.backend.options) + list(opts)
        if store.prefix:
            root = [o for o in opts if o.startswith("root=")]
            opts = [o for o in opts if not o.startswith("root=")]
            sub = root[-1][5:] + "/" if root else ""
            opts.append("root=" + (store.prefix.decode() + sub).rstrip("/"))
        m = Mount(url or store.url, opts=opts, args=args, env=env,
                  prefix=store.prefix if prefix is None else prefix, store=store,
                  user_opts=user_opts)
        self.mounts.append(m)
        return m.start()

    def with_keys(self, keys, **kw):
        """Write keys straight into the store, then mount it.  On a store
        listed by walking it, a shared daemon (already running) walks at
        every listing (list_timeout=0): keys written behind a mount's back
        show in its listings only after list_timeout otherwise
        (tests/test_backend_* check that)."""
        self.store.put_many(keys)
        opts = list(kw.pop("opts", ()))
        if (self.store.backend.walks and self.store.view
                and not any(o.startswith("list_timeout=") for o in opts)):
            opts.append("list_timeout=0")
        kw["opts"] = opts
        return self.mount(**kw)

    def remount(self, m, opts=None, args=None):
        """Unmount m and mount the same store again (same options unless
        given)."""
        if isinstance(m, View):
            raise RuntimeError("a shared mount cannot be remounted: mark the test "
                               "@pytest.mark.own_mount")
        m.unmount()
        return self.mount(opts=m.user_opts if opts is None else opts,
                          args=m.args if args is None else args, url=m.url,
                          store=m.store, env=m.env, prefix=m.prefix)


# --------------------------------------------------------------------------
# Mounts shared by the tests of a module, as in sshfs's suite: one daemon
# per (backend, options) serves many small tests, each in a fresh directory
# of its own (t1, t2, ...), which is also the test's key space in the
# store.  After every test the guard checks each shared daemon: still
# running and mounted, and nothing bad printed during that test.
# --------------------------------------------------------------------------

class SharedStore:
    """The store one module's tests share on one backend: a fresh lmdb env
    or memory: store, or a key space "kvfs-m<hex>/" on a remote server."""

    def __init__(self, choice):
        self.choice = choice
        self.workdir = new_temp_dir("kvfs-shared-", keep=True)
        base = Store(choice, self.workdir)
        self.url = base.url
        self.prefix = (("kvfs-m%s/" % uuid.uuid4().hex[:8]).encode()
                       if choice.backend.shared else b"")
        self.count = 0
        self.daemons = {}          # (opts, args) -> Mount

    def space(self):
        """A fresh key space (a Store) for one test: the directory tN."""
        self.count += 1
        st = Store(self.choice, None, url=self.url,
                   prefix=self.prefix + b"t%d/" % self.count, view=True)
        st.shared = self
        if st.raw is not None:
            # its marker: the directory lives as long as the test, whatever
            # the test deletes in it (M2)
            st.raw.put_many({st.prefix: b""})
        return st

    def daemon(self, opts, args):
        key = (tuple(opts), tuple(args))
        m = self.daemons.get(key)
        if m is None:
            all_opts = list(self.choice.backend.options) + list(opts)
            if self.prefix:
                all_opts.append("root=" + self.prefix.decode().rstrip("/"))
            m = Mount(self.url, opts=all_opts, args=args, prefix=self.prefix,
                      user_opts=list(opts),
                      mountpoint=os.path.join(new_temp_dir("kvfs-mnt-", keep=True), "mnt"))
            m.start()
            with _lock:
                _live_mounts.remove(m)
                _shared_mounts.append(m)
            self.daemons[key] = m
        return m

    def view(self, store, opts, args):
        m = self.daemon(opts, args)
        v = View(m, store)
        os.makedirs(v.path, exist_ok=True)
        return v

    def end_of_test(self):
        problems = []
        for key, m in list(self.daemons.items()):
            p = m.end_of_test()
            if p:
                problems += p
                del self.daemons[key]       # the next test gets a new daemon
                _close_shared_mount(m)
        return problems

    def close(self):
        for m in self.daemons.values():
            _close_shared_mount(m)
        self.daemons.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _close_shared_mount(m):
    m.expected_exit = m.expected_exit if m.proc.poll() is None else None
    with _lock:
        if m in _shared_mounts:
            _shared_mounts.remove(m)
        _live_mounts.append(m)         # unmount() reports to the registry
    m.unmount()
    with _lock:
        if m in _live_mounts:
            _live_mounts.remove(m)


class View:
    """One test's directory in a shared daemon: a Mount's interface, on it."""

    def __init__(self, mount, store):
        self.mount = mount
        self.store = store
        self.prefix = store.prefix
        name = store.prefix[len(mount.prefix):].rstrip(b"/")
        self.bpath = os.path.join(mount.bpath, name)
        self.path = os.fsdecode(self.bpath)
        self.url = mount.url
        self.user_opts = mount.user_opts
        self.args = mount.args

    p = Mount.p
    key = Mount.key

    def health(self):
        return self.mount.health()

    def allow_log(self, regex):
        """Lines matching regex are expected from the daemon during this test."""
        self.mount.test_allowed.append(re.compile(regex))

    def log_text(self):
        return self.mount.log_text()

    def log_size(self):
        return self.mount.log_size()


_shared_stores = {}


def shared_store(module, choice):
    """The SharedStore of a test module (its name) on a backend choice."""
    key = (module, choice.id, choice.url)
    with _lock:
        ss = _shared_stores.get(key)
        if ss is None:
            ss = _shared_stores[key] = SharedStore(choice)
        return ss


def check_shared_mounts():
    """After a test: the problems of the shared daemons during it."""
    with _lock:
        stores = list(_shared_stores.values())
    out = []
    for ss in stores:
        out += ss.end_of_test()
    with _lock:
        out += _problems
        _problems.clear()
    return out


def close_shared_stores(module):
    """At the end of a module: unmount its shared daemons; their problems."""
    with _lock:
        keys = [k for k in _shared_stores if k[0] == module]
        stores = [_shared_stores.pop(k) for k in keys]
    for ss in stores:
        ss.close()
    with _lock:
        out = list(_problems)
        _problems.clear()
    return out


# --------------------------------------------------------------------------
# The name mapping of docs/mapping.md, written from the spec (M1, M4-M9):
# the expected path of every key, independently of the C implementation.
# --------------------------------------------------------------------------

NAME_MAX = 255
ESCAPED = {0x25, 0x7F} | set(range(0x00, 0x20))


def escape(seg):
    return b"".join(b"%%%02X" % c if c in ESCAPED else bytes([c]) for c in seg)


def is_plain(seg, at_root):
    return (1 <= len(seg) <= NAME_MAX and seg not in (b".", b"..") and b"\0" not in seg
            and not seg.startswith(b"%") and not (at_root and seg == b".health"))


def _name(seg, at_root):
    if is_plain(seg, at_root):
        return seg
    if seg.startswith(b"+"):
        return b"%%2B" + escape(seg[1:])   # no escaped name begins with "%+" (M6)
    return b"%" + escape(seg)


def encode_segment(seg, at_root=False):
    """Path components of one key segment (M6, M7): one name, or
    continuation directories followed by the last piece's name."""
    comps = []
    rest = seg
    first = True
    while len(_name(rest, at_root and first)) > NAME_MAX:
        piece = b"%+"
        n = 0
        while n < len(rest) - 1:           # a piece leaves a byte for the last (M7)
            e = escape(rest[n:n + 1])
            if len(piece) + len(e) > NAME_MAX:
                break
            piece += e
            n += 1
        comps.append(piece)
        rest = rest[n:]
        first = False
    comps.append(_name(rest, at_root and first))
    return comps


def encode_segments(segs):
    comps = []
    for i, s in enumerate(segs):
        comps.extend(encode_segment(s, at_root=(i == 0)))
    return comps


def encode_key(key):
    """Relative path (bytes) of the file that holds key."""
    return b"/".join(encode_segments(key.split(b"/")))


def expected_tree(keys):
    """What a mount of a store holding keys {key: value} shows, per the spec:
    ({relative file path: value}, {relative directory path})."""
    files, dirs = {}, set()
    prefixes = set()
    for k in keys:
        segs = k.split(b"/")
        for i in range(1, len(segs)):
            prefixes.add(b"/".join(segs[:i]))
    for k, v in keys.items():
        segs = k.split(b"/")
        if k.endswith(b"/") and v == b"":
            comps = encode_segments(segs[:-1])          # a directory marker (M4)
        else:
            comps = encode_segments(segs)
            if k in prefixes:
                comps = comps + [b"%value"]             # value and prefix (M5)
            files[b"/".join(comps)] = v
            comps = comps[:-1]
        for i in range(1, len(comps) + 1):
            dirs.add(b"/".join(comps[:i]))
    return files, dirs


def walk_tree(root, skip_health=True):
    """({relative file path: content}, {relative directory path}) of a tree."""
    files, dirs = {}, set()
    root = os.fsencode(root)
    for d, subdirs, names in os.walk(root):
        rel = os.path.relpath(d, root)
        for s in subdirs:
            dirs.add(os.path.normpath(os.path.join(rel, s)))
        for n in names:
            path = os.path.normpath(os.path.join(rel, n))
            if skip_health and path == b".health":
                continue
            with open(os.path.join(d, n), "rb") as f:
                files[path] = f.read()
    return files, dirs


# --------------------------------------------------------------------------
# Small system-call helpers
# --------------------------------------------------------------------------

def write_file(path, data, mode="wb"):
    with open(path, mode) as f:
        f.write(data)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def errno_of(fn, *args, **kw):
    """The errno fn raised (None if it returned normally)."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return None


def ename(err):
    return errno.errorcode.get(err, str(err)) if err is not None else "no error"


def assert_errno(expected, fn, *args, **kw):
    """fn(*args) must fail with exactly errno `expected`."""
    got = errno_of(fn, *args, **kw)
    assert got == expected, "%s%r: expected %s, got %s" % (
        getattr(fn, "__name__", fn), args, ename(expected), ename(got))


def try_open(path, flags, mode=0o644):
    """errno of os.open(path, flags), or None; a descriptor that opened
    (unexpectedly) is closed again so it cannot keep the mount busy."""
    try:
        fd = os.open(path, flags, mode)
    except OSError as e:
        return e.errno
    with contextlib.suppress(OSError):
        os.close(fd)
    return None


def assert_open_errno(expected, path, flags, mode=0o644):
    got = try_open(path, flags, mode)
    assert got == expected, "open(%r, %#o): expected %s, got %s" % (
        path, flags, ename(expected), ename(got))


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old, new, flags):
    _libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                ctypes.c_char_p, ctypes.c_uint]
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def run(cmd, timeout=600, **kw):
    """Run a command; a CompletedProcess with text output."""
    return subprocess.run(cmd, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def mode_bits(st):
    return stat.S_IMODE(st.st_mode)


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers:
    a store that hangs (H2).  Bounded: it closes when the test ends."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self):
        self.stop = True
        self.thread.join(timeout=5)
        for c in self.conns:
            c.close()
        self.sock.close()


def random_bytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def seeded_rng(name):
    return random.Random(name)
