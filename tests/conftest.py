"""pytest fixtures for kvfs.

- `backend`: a test that takes it runs once per selected backend
  (--backend NAME|URL, repeatable, or KVFS_TEST_URLS="lmdb,memory";
  default: lmdb, memory and every remote backend kvfs was built with),
  but only on the local stores (lmdb, memory) unless it is marked
  `each_backend("what can differ", where=predicate)`: the FUSE layer is
  the same on every backend, so only a test whose outcome depends on the
  store runs on the remote ones.  The rows are util.BACKENDS.
- tests/test_backend_NAME.py runs only when NAME is selected, so its
  servers start only then.
- `store`: a fresh, empty store of that backend for this test.  In a module
  marked `share_mounts`, a fresh key space (directory tN) of the store the
  module shares on that backend, unless the test is marked `own_mount`.
- `mounts`: starts `kvfs -f URL MNT` on that store (more mounts, remounts);
  on a shared key space, mount() and with_keys() give the test's directory
  in the module's daemon for those options (util.SharedStore).
- `mnt`: one mount of the fresh store with the default options.
- autouse guard: after every test, whatever happened, unmounts everything
  (fusermount3 -u; lazily and by kill on failure), removes the temp dirs,
  and fails the test if a daemon printed an error or a sanitizer report,
  crashed, exited with a nonzero status or would not unmount; a shared
  daemon is checked the same way for what it did during the test.  A
  watchdog kills the daemons of a test that runs too long, so no test
  hangs forever.
- `--smoke-remote` (the sanitizer pass, KVFS_TEST_SMOKE_REMOTE=1): on the
  remote backends only the tests marked `smoke` (and their own files'
  tests marked `smoke`).  `--no-smoke-remote` (the first pass when the
  sanitizer pass runs alongside, KVFS_TEST_NO_SMOKE_REMOTE=1): on the
  remote backends every test but those, so that each runs once.
- `--small-trees` (the sanitizer pass, KVFS_TEST_SMALL_TREES=1): the
  migration tests move the small tree on lmdb and memory too.
"""
import os
import threading

import pytest

import util

# libmongoc (linked into kvfs with the mongodb backend) makes its counters
# file /dev/shm/mongoc-PID when the library loads, before kvfs runs; the
# suite kills daemons with -9, and a later process that gets the same PID
# finds the stale file and warns on stderr.  Every kvfs the suite starts
# inherits this (docs/backends.md, mongodb).
os.environ.setdefault("MONGOC_DISABLE_SHM", "1")


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=[], metavar="NAME|URL",
                     help="backend to run the mount tests on (repeatable): a "
                          "scheme of util.BACKENDS or a URL of a test server; "
                          "default $KVFS_TEST_URLS, or lmdb, memory and every remote "
                          "backend kvfs was built with")
    parser.addoption("--every-backend", action="store_true",
                     default=os.environ.get("KVFS_TEST_EVERY_BACKEND") == "1",
                     help="run the backend-independent mount tests on every selected "
                          "backend, not only on lmdb and memory")
    parser.addoption("--smoke-remote", action="store_true",
                     default=os.environ.get("KVFS_TEST_SMOKE_REMOTE") == "1",
                     help="on remote backends run only the tests marked smoke")
    parser.addoption("--no-smoke-remote", action="store_true",
                     default=os.environ.get("KVFS_TEST_NO_SMOKE_REMOTE") == "1",
                     help="on remote backends leave out the tests marked smoke (a "
                          "sanitizer pass with --smoke-remote runs them)")
    parser.addoption("--small-trees", action="store_true",
                     default=os.environ.get("KVFS_TEST_SMALL_TREES") == "1",
                     help="the migration tests move the small tree on every backend")


MARKERS = [
    "kvfs_timeout(seconds): watchdog limit of a test",
    "each_backend(why, where=None): the outcome depends on the store (why); run on "
    "every selected backend (where(util.Backend) is true), not only lmdb and memory",
    "share_mounts: the module's tests share one daemon per backend and options, each "
    "test in a fresh directory",
    "own_mount(why): in a share_mounts module, this test needs a daemon and store "
    "of its own (remounts, signals, the mount's root, lmdb map options)",
    "smoke: also run on remote backends in the sanitizer pass (--smoke-remote)",
]


def pytest_configure(config):
    for m in MARKERS:
        config.addinivalue_line("markers", m)
    items = config.getoption("--backend") or [os.environ.get("KVFS_TEST_URLS")
                                               or util.default_backends()]
    try:
        config._kvfs_backends = util.parse_backend_choices(items)
    except ValueError as e:
        raise pytest.UsageError(str(e))


def pytest_unconfigure(config):
    util.stop_shared_servers()


def pytest_report_header(config):
    return ["kvfs binary: %s" % util.KVFS_BIN,
            "kvfs backends under test: %s" % ", ".join(
                c.url or c.scheme for c in config._kvfs_backends)]


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    config = metafunc.config
    choices = config._kvfs_backends
    each = metafunc.definition.get_closest_marker("each_backend")
    if each is None:
        if not config.getoption("--every-backend"):
            choices = [c for c in choices if not c.backend.shared]
    elif each.kwargs.get("where"):
        choices = [c for c in choices if each.kwargs["where"](c.backend)]
    smoke = metafunc.definition.get_closest_marker("smoke") is not None
    if (config.getoption("--smoke-remote") and not smoke
            or config.getoption("--no-smoke-remote") and smoke):
        choices = [c for c in choices if not c.backend.shared]
    metafunc.parametrize("backend", choices, ids=[c.id for c in choices])


def pytest_collection_modifyitems(config, items):
    """tests/test_backend_NAME.py only when NAME is selected (its servers
    start only then); with --smoke-remote only its tests marked smoke."""
    selected = {c.scheme for c in config._kvfs_backends}
    smoke = config.getoption("--smoke-remote")
    keep, drop = [], []
    for item in items:
        name = item.module.__name__
        if name.startswith("test_backend_"):
            if (name[len("test_backend_"):] not in selected
                    or (smoke and not item.get_closest_marker("smoke"))):
                drop.append(item)
                continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _kvfs_guard(request):
    marker = request.node.get_closest_marker("kvfs_timeout")
    limit = float(os.environ.get("KVFS_TEST_TIMEOUT", marker.args[0] if marker else 300))
    watchdog = threading.Timer(limit, util.kill_all_daemons,
                               ["watchdog: test ran over %.0f s, daemons killed" % limit])
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        problems = util.cleanup_everything() + util.check_shared_mounts()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def _kvfs_shared_mounts(request):
    """Unmount the module's shared daemons after its last test; what went
    wrong then (exit status, a sanitizer report at exit) is an error of
    that test's teardown."""
    yield
    problems = util.close_shared_stores(request.module.__name__)
    if problems:
        pytest.fail("shared mounts of %s:\n%s" % (request.module.__name__,
                                                  "\n\n".join(problems)), pytrace=False)


@pytest.fixture
def workdir():
    """A fresh directory under /tmp, removed after the test."""
    return util.new_temp_dir()


@pytest.fixture
def store(request, backend, workdir):
    if not os.access(util.KVFS_BIN, os.X_OK):
        pytest.fail("no kvfs binary at %s (build it, or set KVFS_BIN)" % util.KVFS_BIN)
    if backend.scheme not in util.compiled_backends():
        pytest.fail("backend %s is selected but `kvfs --backends` does not list it"
                    % backend.scheme)
    node = request.node
    if node.get_closest_marker("share_mounts") and not node.get_closest_marker("own_mount"):
        return util.shared_store(request.module.__name__, backend).space()
    return util.Store(backend, workdir)


@pytest.fixture
def mounts(store):
    return util.Mounts(store)


@pytest.fixture
def mnt(mounts):
    return mounts.mount()


@pytest.fixture
def raw(store):
    """The store's raw access (keys written straight into the store); skips
    on backends without one."""
    if store.raw is None:
        pytest.skip("%s: no raw access to the store" % store.scheme)
    return store


@pytest.fixture
def persistent(store):
    if not store.persistent:
        pytest.skip("%s: data does not outlive the mount" % store.scheme)
    return store
