"""The Debian package (debian/, scripts/deb), installed on this machine.

Runs only as root and when asked, since it installs a package and edits
/etc/fstab for a moment:

    KVFS_TEST_DEB=build                  build it now (scripts/deb --nocheck), then test it
    KVFS_TEST_DEB=path/to/kvfs_*.deb     test that package

scripts/test sets KVFS_TEST_DEB=build under CI (CI=true, as root) for its
first pass only, so CI runs this once.  The module installs the package
with apt-get, checks /usr/bin/kvfs, the docs, the example systemd units,
the man page (when the package has one), `mount -t fuse.kvfs` through
mount.fuse3 and an /etc/fstab line, and removes the package again with
`dpkg -r kvfs` (/etc/fstab is restored whatever happens).  It is skipped
when a kvfs package is installed already: removing it at the end would not
leave the machine as it was.
"""
import glob
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEB = os.environ.get("KVFS_TEST_DEB", "")


def _installed(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "install ok installed"


def _why_skip():
    if not DEB:
        return ("the installed-package tests run with KVFS_TEST_DEB=build or "
                "KVFS_TEST_DEB=path/to/kvfs_*.deb (scripts/test sets it under CI)")
    if os.geteuid() != 0:
        return "installing the package and editing /etc/fstab need root"
    if not shutil.which("dpkg-query") or not shutil.which("apt-get"):
        return "not a Debian system (no dpkg/apt-get)"
    if _installed("kvfs"):
        return ("a kvfs package is installed already, and this test ends with "
                "`dpkg -r kvfs` (remove it first)")
    return None


pytestmark = [pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or ""),
              pytest.mark.kvfs_timeout(120)]


def run(*cmd, check=True, timeout=60, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        pytest.fail("%s exited %d:\n%s%s" % (" ".join(cmd), r.returncode, r.stdout[-3000:],
                                            r.stderr[-3000:]), pytrace=False)
    return r


def build_deb():
    """scripts/deb on the features whose build dependencies are installed:
    every backend if they all are, else lmdb and memory (--local)."""
    args = ["--nocheck", "--no-install"]
    if run("dpkg-checkbuilddeps", "debian/control", check=False, cwd=REPO).returncode:
        r = run("dpkg-checkbuilddeps", "-Ppkg.kvfs.local", "debian/control", check=False,
                cwd=REPO)
        if r.returncode:
            pytest.fail("cannot build the package, build dependencies missing (scripts/deb "
                        "installs them):\n" + r.stderr, pytrace=False)
        args.append("--local")
    t = time.monotonic()
    r = run(os.path.join(REPO, "scripts", "deb"), *args, cwd=REPO, timeout=600)
    print("scripts/deb %s: %.0f s" % (" ".join(args), time.monotonic() - t))
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def package():
    """Install the package; afterwards remove it (dpkg -r kvfs).  Yields
    the list of files it installed."""
    deb = build_deb() if DEB == "build" else os.path.abspath(DEB)
    assert os.path.isfile(deb), "no package at %s" % deb
    try:
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", deb, timeout=300,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        yield run("dpkg", "-L", "kvfs").stdout.split("\n")
    finally:
        run("dpkg", "-r", "kvfs", check=False, timeout=120)
    assert not _installed("kvfs") and not os.path.exists("/usr/bin/kvfs"), \
        "dpkg -r kvfs left the package or /usr/bin/kvfs behind"


def kvfs_daemon(mnt):
    """The pid of the kvfs process serving mnt (its last argument)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")[:-1]
        except OSError:
            continue
        if argv and argv[0].endswith(b"kvfs") and mnt.encode() in argv:
            return int(pid)
    return None


def mounted(mnt):
    """The (source, fstype) of the mount at mnt, or None."""
    with open("/proc/self/mounts") as f:
        for line in f:
            src, mp, fstype = line.split()[:3]
            if mp.encode().decode("unicode_escape") == mnt:
                return src, fstype
    return None


def unmount(mnt, how=("umount",)):
    """Unmount with `how`, and wait for the daemon to exit (it flushes and
    exits on unmount)."""
    pid = kvfs_daemon(mnt)
    run(*how, mnt)
    assert mounted(mnt) is None, "%s still mounted after %s" % (mnt, " ".join(how))
    deadline = time.monotonic() + 10
    while pid and os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid or not os.path.exists("/proc/%d" % pid), \
        "kvfs (pid %d) still running 10 s after the unmount of %s" % (pid, mnt)


@pytest.fixture
def scratch():
    """Directories to remove after the test, unmounting what is left."""
    dirs = []
    yield dirs
    for d in reversed(dirs):
        if mounted(d):
            subprocess.run(["umount", "-l", d], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_binary_docs_and_examples(package):
    version = run("dpkg-parsechangelog", "-l", os.path.join(REPO, "debian", "changelog"),
                  "-S", "Version").stdout.strip()
    out = run("/usr/bin/kvfs", "--version").stdout
    assert out.startswith("kvfs %s " % version), out
    assert "not found" not in run("ldd", "/usr/bin/kvfs").stdout
    backends = run("/usr/bin/kvfs", "--backends").stdout
    assert "lmdb" in backends and "memory" in backends, backends
    doc = "/usr/share/doc/kvfs/"
    wanted = ["README.md"] + ["docs/" + os.path.basename(p)
                              for p in glob.glob(os.path.join(REPO, "docs", "*.md"))]
    wanted += ["examples/" + os.path.basename(p)
               for p in glob.glob(os.path.join(REPO, "contrib", "systemd", "*"))]
    for name in wanted:
        assert doc + name in package, "the package has no %s%s" % (doc, name)
        assert os.path.isfile(doc + name)
    for p in ("/sbin/mount.fuse3", "/bin/fusermount3"):  # from fuse3, a dependency
        assert os.path.exists(p), p


def test_systemd_examples_verify(package, workdir):
    """The example units are valid for systemd (systemd-analyze verify),
    the template for a real instance name too."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze on this machine")
    ex = "/usr/share/doc/kvfs/examples/"
    shutil.copy(ex + "kvfs@.service", os.path.join(workdir, "kvfs@srv-kv.service"))
    units = [ex + "kvfs@.service", ex + "srv-kvfs.mount",
             os.path.join(workdir, "kvfs@srv-kv.service")]
    for unit in units:
        r = run("systemd-analyze", "verify", "--man=no", unit, check=False)
        assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), \
            "systemd-analyze verify %s:\n%s%s" % (unit, r.stdout, r.stderr)


def test_man_page(package):
    pages = [p for p in package if re.match(r"/usr/share/man/man1/kvfs\.1(\.gz)?$", p)]
    if not pages:
        pytest.skip("the package has no kvfs(1): the tree's `meson install` installs none")
    if not shutil.which("man"):
        pytest.skip("man (man-db) is not installed")
    out = run("man", "-w", "kvfs").stdout.strip()
    assert out == pages[0], "man -w kvfs: %s, the package has %s" % (out, pages[0])


def test_mount_t_fuse_kvfs(package, scratch):
    """mount -t fuse.kvfs URL DIR goes through mount.fuse3 to /usr/bin/kvfs;
    what is written survives umount and a second mount."""
    top = tempfile.mkdtemp(prefix="kvfs-deb-")
    scratch.append(top)
    store, mnt = os.path.join(top, "store"), os.path.join(top, "mnt")
    os.mkdir(mnt)
    run("mount", "-t", "fuse.kvfs", "lmdb:" + store, mnt)
    assert mounted(mnt) == ("lmdb:" + store, "fuse.kvfs")
    assert "/usr/bin/kvfs" in os.readlink("/proc/%d/exe" % kvfs_daemon(mnt))
    with open(os.path.join(mnt, "hello.txt"), "w") as f:
        f.write("kept\n")
    os.makedirs(os.path.join(mnt, "a", "b"))
    with open(os.path.join(mnt, "a", "b", "c"), "w") as f:
        f.write("deep\n")
    unmount(mnt)
    run("mount", "-t", "fuse.kvfs", "-o", "ro", "lmdb:" + store, mnt)
    with open(os.path.join(mnt, "hello.txt")) as f:
        assert f.read() == "kept\n"
    with open(os.path.join(mnt, "a", "b", "c")) as f:
        assert f.read() == "deep\n"
    unmount(mnt)


def test_fstab_line(package, scratch):
    """An /etc/fstab line of type fuse.kvfs: `mount DIR` and `umount DIR`."""
    mnt = tempfile.mkdtemp(prefix="kvfs-test-", dir="/srv" if os.path.isdir("/srv") else None)
    store = tempfile.mkdtemp(prefix="kvfs-test-", dir="/var/lib")
    scratch.extend([store, mnt])
    line = "lmdb:%s %s fuse.kvfs defaults,_netdev 0 0\n" % (store, mnt)
    backup = tempfile.NamedTemporaryFile(prefix="fstab.kvfs-test.", dir="/etc", delete=False)
    backup.close()
    shutil.copy2("/etc/fstab", backup.name)
    try:
        with open("/etc/fstab", "a") as f:
            f.write(line)
        run("mount", mnt)
        assert mounted(mnt) == ("lmdb:" + store, "fuse.kvfs")
        with open(os.path.join(mnt, "from-fstab"), "w") as f:
            f.write("yes\n")
        unmount(mnt)
        run("mount", mnt)
        with open(os.path.join(mnt, "from-fstab")) as f:
            assert f.read() == "yes\n"
        unmount(mnt)
        assert os.path.exists(os.path.join(store, "data.mdb"))
    finally:
        if mounted(mnt):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.copy2(backup.name, "/etc/fstab")
        os.unlink(backup.name)
    with open("/etc/fstab") as f:
        assert line not in f.read()


def test_not_left_mounted(package):
    """Nothing this module mounted is still there (conftest's guard only
    knows the mounts that util made)."""
    with open("/proc/self/mounts") as f:
        left = [ln for ln in f if "kvfs-deb-" in ln or "/srv/kvfs-test-" in ln]
    assert not left, left
