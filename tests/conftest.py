"""pytest fixtures for kvfs.

- `backend`: every test that takes it runs once per selected backend
  (--backend NAME|URL, repeatable, or KVFS_TEST_URLS="lmdb,memory";
  default: lmdb and memory).  The rows are util.BACKENDS.
- `store`: a fresh, empty store of that backend for this test.
- `mounts`: starts `kvfs -f URL MNT` on that store (more mounts, remounts).
- `mnt`: one mount of the fresh store with the default options.
- autouse guard: after every test, whatever happened, unmounts everything
  (fusermount3 -u; lazily and by kill on failure), removes the temp dirs,
  and fails the test if a daemon printed an error or a sanitizer report,
  crashed, exited with a nonzero status or would not unmount.  A watchdog
  kills the daemons of a test that runs too long, so no test hangs forever.
"""
import os
import threading

import pytest

import util


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=[], metavar="NAME|URL",
                     help="backend to run the mount tests on (repeatable): a "
                          "scheme of util.BACKENDS or a URL of a test server; "
                          "default $KVFS_TEST_URLS, or lmdb, memory and every remote "
                          "backend kvfs was built with")


def pytest_configure(config):
    config.addinivalue_line("markers", "kvfs_timeout(seconds): watchdog limit of a test")
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
    if "backend" in metafunc.fixturenames:
        choices = metafunc.config._kvfs_backends
        metafunc.parametrize("backend", choices, ids=[c.id for c in choices])


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
        problems = util.cleanup_everything()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def workdir():
    """A fresh directory under /tmp, removed after the test."""
    return util.new_temp_dir()


@pytest.fixture
def store(backend, workdir):
    if not os.access(util.KVFS_BIN, os.X_OK):
        pytest.fail("no kvfs binary at %s (build it, or set KVFS_BIN)" % util.KVFS_BIN)
    if backend.scheme not in util.compiled_backends():
        pytest.fail("backend %s is selected but `kvfs --backends` does not list it"
                    % backend.scheme)
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
