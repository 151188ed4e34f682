"""The etcd backend on a real three-member cluster: member failure under
load, two mounts of one cluster, etcdctl interoperation, endpoints from
ETCDCTL_ENDPOINTS, and credentials that stay out of ps, logs and .health.

The cluster of these tests is their own (tests/servers/etcd.py), started
once for the module, since they kill and pause members.
"""
import errno
import json
import os
import random
import subprocess
import time
import uuid

import pytest

import servers
import util
from servers import etcd

pytestmark = pytest.mark.skipif(not os.access(etcd.ETCD, os.X_OK), reason="no %s" % etcd.ETCD)


@pytest.fixture(scope="module")
def cluster():
    if "etcd" not in util.compiled_backends():
        pytest.skip("etcd is not compiled in")
    c = etcd.Cluster(util.new_temp_dir("kvfs-etcd-", keep=True), size=3)
    yield c
    c.stop()


@pytest.fixture
def healthy(cluster):
    """The module's cluster with every member running and a leader."""
    for m in cluster.members:
        m.resume()
        m.start()
    cluster.wait_leader()
    return cluster


def fresh_root():
    return "kvfs-etcd-test-%s" % uuid.uuid4().hex[:12]


def mount(c, root, opts=(), env=None, url=None):
    return util.Mount(url or c.url, opts=["root=" + root] + list(opts), env=env).start()


def make_tree(d, ndirs, nfiles, seed):
    rng = random.Random(seed)
    count = 0
    for i in range(ndirs):
        sub = os.path.join(d, "dir%02d" % i, "sub")
        os.makedirs(sub)
        for j in range(nfiles):
            where = sub if j % 3 == 0 else os.path.dirname(sub)
            util.write_file(os.path.join(where, "f%03d" % j),
                            rng.randbytes(rng.choice([0, 1, 100, 4096, 20000])))
            count += 1
    return count


def member_hex_id(m):
    return "%x" % int(m.status()["header"]["member_id"])


def test_member_killed_during_copy_loses_nothing(healthy, workdir):
    c = healthy
    src = os.path.join(workdir, "src")
    n = make_tree(src, 30, 20, "copy")            # 600 files, 60 directories
    root = fresh_root()
    m = mount(c, root)
    m.allow_log(r"kvfs: WARN: etcd: .*trying the next endpoint")
    # kvfs talks to the first member: make it the leader too, then kill it,
    # so that the copy sees both a dead endpoint and an election.
    victim = c.members[0]
    if c.leader() is not victim:
        r = c.etcdctl("move-leader", member_hex_id(victim))
        assert r.returncode == 0, r.stderr
    cp = subprocess.Popen(["cp", "-a", src, m.p("dst")], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    raw = etcd.Raw(c.url)
    deadline = time.monotonic() + 120
    while len(raw.items(root.encode() + b"/dst/")) < n // 4 and time.monotonic() < deadline:
        assert cp.poll() is None, "cp ended before the kill: %r" % (cp.communicate(),)
        time.sleep(0.1)
    victim.kill()
    out, err = cp.communicate(timeout=600)
    assert cp.returncode == 0, err.decode(errors="replace")
    r = util.run(["diff", "-r", src, m.p("dst")])
    assert r.returncode == 0, r.stdout.decode(errors="replace")[:3000]
    assert len([k for k in raw.items(root.encode() + b"/dst/") if not k.endswith(b"/")]) == n
    assert m.health()["status"] == "ok"
    victim.start()
    c.wait_leader()


def test_two_mounts_see_each_others_writes(healthy):
    root = fresh_root()
    opts = ["attr_timeout=0", "entry_timeout=0", "negative_timeout=0"]
    a, b = mount(healthy, root, opts), mount(healthy, root, opts)
    util.write_file(a.p("from-a"), b"hello from a")
    assert util.read_file(b.p("from-a")) == b"hello from a"
    os.makedirs(b.p("d", "e"))
    util.write_file(b.p("d", "e", "f"), b"x" * 5000)
    assert os.listdir(a.p("d")) == [b"e"]
    assert os.stat(a.p("d", "e", "f")).st_size == 5000
    util.write_file(a.p("d", "e", "f"), b"short")
    assert util.read_file(b.p("d", "e", "f")) == b"short"
    os.rename(b.p("d"), b.p("d2"))
    assert not os.path.exists(a.p("d"))
    assert util.read_file(a.p("d2", "e", "f")) == b"short"
    os.unlink(a.p("from-a"))
    assert util.errno_of(os.stat, b.p("from-a")) == errno.ENOENT


def test_etcdctl_and_the_mount_see_the_same_keys(healthy):
    root = fresh_root()
    m = mount(healthy, root)
    r = healthy.etcdctl("put", root + "/conf/app.yaml", "debug: true")
    assert r.returncode == 0, r.stderr
    assert util.read_file(m.p("conf", "app.yaml")) == b"debug: true"
    util.write_file(m.p("conf", "from-kvfs"), b"written by kvfs")
    r = healthy.etcdctl("get", "--print-value-only", root + "/conf/from-kvfs")
    assert r.returncode == 0 and r.stdout == b"written by kvfs\n", r
    r = healthy.etcdctl("get", "--keys-only", "--prefix", root + "/")
    assert r.stdout.split() == [(root + "/conf/app.yaml").encode(),
                                (root + "/conf/from-kvfs").encode()]
    r = healthy.etcdctl("del", root + "/conf/app.yaml")
    assert r.returncode == 0 and r.stdout.strip() == b"1"
    assert sorted(os.listdir(m.p("conf"))) == [b"from-kvfs"]


def test_url_prefix_and_endpoints_from_etcdctl_endpoints(healthy):
    root = fresh_root()
    env = {"ETCDCTL_ENDPOINTS": ",".join(x.client_url for x in healthy.members)}
    m = util.Mount("etcd:///" + root, env=env).start()
    util.write_file(m.p("k"), b"v")
    assert etcd.Raw(healthy.url).get(root.encode() + b"/k") == b"v"
    h = m.health()
    assert h["status"] == "ok", h
    assert h["facts"]["version"] == "3.4.23"
    assert h["facts"]["answered_by"] in [x.client_url for x in healthy.members]
    assert h["facts"]["endpoints"] == "3"


def test_paused_member_is_passed_over_in_bounded_time(healthy):
    c = healthy
    root = fresh_root()
    m = mount(c, root, ["timeout=1s", "attr_timeout=0", "entry_timeout=0"])
    m.allow_log(r"kvfs: WARN: etcd: .*trying the next endpoint")
    util.write_file(m.p("before"), b"1")
    h = m.health()
    current = [x for x in c.members if x.client_url == h["facts"]["answered_by"]][0]
    current.pause()
    try:
        t = time.monotonic()
        util.write_file(m.p("during"), b"2")
        assert util.read_file(m.p("before")) == b"1"
        assert time.monotonic() - t < 15
        assert m.health()["facts"]["answered_by"] != current.client_url
    finally:
        current.resume()
    c.wait_leader()


def test_url_with_password_is_refused_with_one_line(healthy):
    r = util.run([util.KVFS_BIN, "-f", "etcd://root:s3cret@127.0.0.1:%d" % healthy.port,
                  util.new_temp_dir()], timeout=60)
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0
    assert "password_file" in err and "s3cret" not in err, err


@pytest.fixture(scope="module")
def auth_cluster():
    """A one-member cluster of its own with authentication on (root/secret)."""
    if "etcd" not in util.compiled_backends():
        pytest.skip("etcd is not compiled in")
    c = etcd.Cluster(util.new_temp_dir("kvfs-etcd-auth-", keep=True), size=1)
    r = c.etcdctl("user", "add", "root", "--interactive=false", input=b"S3cr3t-pw\n")
    assert r.returncode == 0, r.stderr
    r = c.etcdctl("auth", "enable")
    assert r.returncode == 0, r.stderr
    yield c
    c.stop()


def test_password_from_file_never_in_ps_logs_or_health(auth_cluster, workdir):
    c = auth_cluster
    pw = os.path.join(workdir, "pw")
    util.write_file(pw, b"S3cr3t-pw\n")
    os.chmod(pw, 0o600)
    root = fresh_root()
    m = util.Mount(c.url, opts=["root=" + root, "user=root", "password_file=" + pw,
                                "debug"]).start()
    util.write_file(m.p("secret-file"), b"data")
    assert util.read_file(m.p("secret-file")) == b"data"
    raw = etcd.Raw(c.url, user="root", password="S3cr3t-pw")
    assert raw.get(root.encode() + b"/secret-file") == b"data"
    health = util.read_file(m.p(".health"))
    assert json.loads(health)["status"] == "ok"
    with open("/proc/%d/cmdline" % m.proc.pid, "rb") as f:
        cmdline = f.read()
    with open("/proc/%d/environ" % m.proc.pid, "rb") as f:
        environ = f.read()
    m.unmount()
    for where, text in (("cmdline", cmdline), ("environ", environ), (".health", health),
                        ("log", m.log_text().encode())):
        assert b"S3cr3t-pw" not in text, where


def test_credentials_from_etcdctl_user(auth_cluster):
    root = fresh_root()
    m = util.Mount(auth_cluster.url, opts=["root=" + root],
                   env={"ETCDCTL_USER": "root:S3cr3t-pw"}).start()
    util.write_file(m.p("k"), b"v")
    assert util.read_file(m.p("k")) == b"v"


def mount_fails(url, opts=(), env=None):
    """kvfs must refuse to mount url with one line and exit 1; that line."""
    e = dict(os.environ, **(env or {}))
    for k in ("ETCDCTL_USER", "ETCDCTL_PASSWORD", "ETCDCTL_ENDPOINTS"):
        if not env or k not in env:
            e.pop(k, None)
    mnt = util.new_temp_dir()
    r = util.run([util.KVFS_BIN, "-f"] + (["-o", ",".join(opts)] if opts else []) + [url, mnt],
                 timeout=60, env=e)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1 and not util.is_mounted(mnt), (r.returncode, err)
    assert len(err.splitlines()) == 1, err
    return err


def test_wrong_password_or_none_fails_at_mount(auth_cluster, workdir):
    pw = os.path.join(workdir, "pw")
    util.write_file(pw, b"wrong\n")
    os.chmod(pw, 0o600)
    err = mount_fails(auth_cluster.url, ["user=root", "password_file=" + pw])
    assert "refused the credentials" in err and "authentication" in err, err
    assert "wrong" not in err
    err = mount_fails(auth_cluster.url)
    assert "refused the credentials" in err and "without a user" in err, err


def test_lazy_mount_without_credentials_is_eacces(auth_cluster):
    m = util.Mount(auth_cluster.url, opts=["root=" + fresh_root(), "lazy"])
    m.allow_log(r"kvfs: WARN: etcd: .*refused")
    m.start()
    assert m.health()["status"] == "down"
    assert util.errno_of(util.write_file, m.p("k"), b"v") == errno.EACCES
    assert util.errno_of(util.read_file, m.p("k")) == errno.EACCES


def test_password_file_readable_by_others_is_refused(auth_cluster, workdir):
    pw = os.path.join(workdir, "pw")
    util.write_file(pw, b"S3cr3t-pw\n")
    os.chmod(pw, 0o644)
    err = mount_fails(auth_cluster.url, ["user=root", "password_file=" + pw])
    assert "chmod 600" in err and "S3cr3t-pw" not in err, err


def compiled():
    if "etcd" not in util.compiled_backends():
        pytest.skip("etcd is not compiled in")


def test_unreachable_cluster_fails_the_mount_and_lazy_mounts():
    compiled()
    url = "etcd://127.0.0.1:%d,127.0.0.1:%d" % (servers.free_port(), servers.free_port())
    err = mount_fails(url, ["timeout=1s"])
    assert "cannot reach the store" in err and "-o lazy" in err, err
    m = util.Mount(url, opts=["lazy", "timeout=1s"])
    m.allow_log(r"kvfs: (ERROR|WARN): etcd: ")
    m.start()
    assert m.health()["status"] == "down"
    assert util.errno_of(util.read_file, m.p("f")) == errno.EIO


def test_missing_tls_file_fails_the_mount():
    compiled()
    url = "etcd+https://127.0.0.1:%d" % servers.free_port()
    for opt in ("cacert", "cert", "key"):
        err = mount_fails(url, ["%s=/nonexistent/ca.pem" % opt])
        assert opt in err and "/nonexistent/ca.pem" in err, err
    err = mount_fails(url, env={"ETCDCTL_CACERT": "/nonexistent/ca.pem"})
    assert "cacert" in err, err
