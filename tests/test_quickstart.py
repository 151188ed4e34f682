"""scripts/quickstart's arguments, through --dry-run (installs, builds and
mounts nothing): what it would install and how it would configure meson."""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "scripts", "quickstart")
BASE = ["gcc", "meson", "ninja-build", "pkg-config", "libfuse3-dev", "fuse3", "liblmdb-dev",
        "libjansson-dev"]
# Debian's server packages (scripts/test installs them; quickstart never may).
SERVERS = {"memcached", "etcd-server", "redis-server", "postgresql", "mariadb-server",
           "mongodb-server"}


def remote_backends():
    """The feature options of meson_options.txt that are backends."""
    with open(os.path.join(REPO, "meson_options.txt")) as f:
        return re.findall(r"option\('(\w+)', type : 'feature'.*description : '[^']*backend",
                          f.read())


def test_packages_known_to_scripts_test():
    """Every package quickstart can install is one scripts/test installs
    (the same names for the same backends), and none of them a server."""
    with open(os.path.join(REPO, "scripts", "test")) as f:
        text = f.read()
    test_packages = set(re.search(r"PACKAGES=\(([^)]*)\)", text).group(1).split())
    pkgs, _, _ = dry_run("--with", "all", "/mnt/x")
    assert set(pkgs) <= test_packages, set(pkgs) - test_packages
    assert not set(pkgs) & SERVERS


def dry_run(*args):
    r = subprocess.run([QUICKSTART, "--dry-run", *args], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert set(lines) == {"packages", "meson", "mount"}, r.stdout
    build, *options = lines["meson"].split()
    assert build == "build-quickstart"
    return lines["packages"].split(), options, lines["mount"]


def enabled(options):
    feats = dict(o[2:].split("=") for o in options)
    assert set(feats) == set(remote_backends()), "every remote backend is set on or off"
    assert set(feats.values()) <= {"enabled", "disabled"}
    return sorted(k for k, v in feats.items() if v == "enabled")


def test_default_local_stores_only():
    pkgs, options, mount = dry_run("/tmp/kv")
    assert pkgs == BASE
    assert enabled(options) == []
    assert mount == "build-quickstart/kvfs /tmp/kv"


@pytest.mark.parametrize("name", remote_backends())
def test_with_one_backend(name):
    """--with NAME: its client libraries, never its server."""
    pkgs, options, _ = dry_run("--with", name, "/tmp/kv")
    assert pkgs[:len(BASE)] == BASE and len(pkgs) > len(BASE)
    assert not set(pkgs) & SERVERS, pkgs
    assert all(p.endswith("-dev") for p in pkgs[len(BASE):]), pkgs
    assert enabled(options) == [name]


def test_with_several_and_all():
    pkgs, options, _ = dry_run("--with", "redis,etcd", "--with=postgresql", "/tmp/kv")
    assert enabled(options) == ["etcd", "postgresql", "redis"]
    assert sorted(pkgs[len(BASE):]) == sorted(
        ["libhiredis-dev", "libcurl4-openssl-dev", "libssl-dev", "libpq-dev"])
    assert len(pkgs) == len(set(pkgs)), "a package named once"
    pkgs, options, _ = dry_run("--with", "all", "/tmp/kv")
    assert enabled(options) == sorted(remote_backends())
    # lmdb and memory are always built; naming them changes nothing
    assert dry_run("--with", "lmdb,memory", "/tmp/kv")[:2] == (BASE, dry_run("/tmp/kv")[1])


def test_kvfs_arguments_pass_through():
    _, _, mount = dry_run("--with", "redis", "/tmp/kv", "-o", "ro", "redis://db:6379")
    assert mount == "build-quickstart/kvfs -o ro redis://db:6379 /tmp/kv"


@pytest.mark.parametrize("args, message", [
    ([], "usage:"),
    (["--with"], "usage:"),
    (["--with", "nosuch", "/tmp/kv"], "unknown backend 'nosuch'"),
    (["--bogus", "/tmp/kv"], "unknown option '--bogus'"),
])
def test_bad_arguments(args, message):
    r = subprocess.run([QUICKSTART, "--dry-run", *args], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and message in r.stderr, (r.returncode, r.stderr)
    assert r.stdout == ""
