"""Where kvfs logs (-o logfile=, -o loglevel=, syslog, stderr; kvfs(1) LOGGING):
a backend's error reaches the log file of a daemon, the level filters, bad
values are one line and exit 1, a daemon's mount failure is still said on
the terminal, and what looks like a credential never reaches a log."""
import errno
import os
import subprocess
import time

import pytest

import util
from util import KVFS_BIN, is_mounted, write_file


def kvfs(*args, env=None, timeout=30):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([KVFS_BIN] + list(args), capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=e)


def daemon_pid(mountpoint):
    pids = util.daemon_pids(mountpoint)
    return pids[0] if pids else None


def unmount_and_wait(mnt):
    """fusermount3 -u a daemon's mount and wait until the daemon is gone,
    so that everything it logged is in the file."""
    pid = daemon_pid(mnt)
    r = subprocess.run([util.FUSERMOUNT, "-u", mnt], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 20
    while pid and os.path.exists("/proc/%d" % pid):
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                break
        assert time.monotonic() < deadline, "daemon %d did not exit" % pid
        time.sleep(0.05)


def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")


def fill_small_lmdb(mnt, name="big"):
    """A 3 MB write into a 1 MB map that may not grow: lmdb's set fails
    (ENOSPC) and the backend logs an error line."""
    with pytest.raises(OSError) as e:
        write_file(os.path.join(mnt, name), os.urandom(3 << 20))
    assert e.value.errno == errno.ENOSPC


@pytest.fixture
def dirs(workdir):
    mnt = os.path.join(workdir, "mnt")
    os.mkdir(mnt)
    return workdir, mnt, os.path.join(workdir, "kvfs.log")


def test_logfile_receives_a_backend_error_while_daemonized(dirs):
    d, mnt, log = dirs
    r = kvfs("-o", "logfile=%s,map_size=1M,map_max=1M" % log, "lmdb:" + os.path.join(d, "s"), mnt)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b"", r.stderr     # the log has a file: nothing to warn about
    assert is_mounted(mnt)
    fill_small_lmdb(mnt)
    unmount_and_wait(mnt)
    text = read_text(log)
    lines = [ln for ln in text.splitlines() if "MDB_MAP_FULL" in ln]
    assert len(lines) == 1, text
    assert " kvfs[%s]: ERROR: lmdb: set big: " % lines[0].split("[")[1].split("]")[0] in lines[0]
    assert oct(os.stat(log).st_mode & 0o777) == oct(0o640)


def test_foreground_logs_to_stderr_and_the_logfile(dirs):
    d, mnt, log = dirs
    m = util.Mount("lmdb:" + os.path.join(d, "s"), opts=["logfile=" + log, "loglevel=info"],
                   mountpoint=mnt).start()
    m.allow_log(r"INFO: mounted ")
    m.unmount()
    assert "kvfs: INFO: mounted lmdb:" in m.log_text()
    assert "INFO: mounted lmdb:" in read_text(log)


def test_loglevel_error_drops_warnings_and_info(dirs):
    d, mnt, log = dirs
    # info: the mount is logged
    r = kvfs("-o", "logfile=%s,loglevel=info" % log, "memory:", mnt)
    assert r.returncode == 0, r.stderr
    unmount_and_wait(mnt)
    assert "INFO: mounted memory:" in read_text(log)
    os.unlink(log)
    # error: no info, no warning, but the errors still come
    r = kvfs("-o", "logfile=%s,loglevel=error,map_size=1M,map_max=1M" % log,
             "lmdb:" + os.path.join(d, "s"), mnt)
    assert r.returncode == 0, r.stderr
    fill_small_lmdb(mnt)
    unmount_and_wait(mnt)
    text = read_text(log)
    assert "ERROR: lmdb: set big" in text, text
    assert "INFO:" not in text and "WARN:" not in text, text


@pytest.mark.skipif(os.path.exists("/dev/log"), reason="syslog is there: nothing is lost")
def test_daemon_without_syslog_or_logfile_says_so_before_detaching(dirs):
    _, mnt, _ = dirs
    r = kvfs("memory:", mnt)
    assert r.returncode == 0, r.stderr
    unmount_and_wait(mnt)
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvfs: WARN: no syslog (/dev/log) and no "
                                                   "-o logfile"), lines
    # loglevel=error silences it like every warning
    r = kvfs("-o", "loglevel=error", "memory:", mnt)
    assert r.returncode == 0, r.stderr
    unmount_and_wait(mnt)
    assert r.stderr == b"", r.stderr


BAD = {
    "loglevel-unknown": (["-o", "loglevel=loud"], "kvfs: bad loglevel 'loud' (error, warning, "
                         "info or debug)"),
    "loglevel-empty": (["-o", "loglevel="], "kvfs: bad loglevel ''"),
    "loglevel-upper-case": (["-o", "loglevel=DEBUG"], "kvfs: bad loglevel 'DEBUG'"),
    "logfile-in-missing-dir": (["-o", "logfile=/nonexistent-kvfs-dir/kvfs.log"],
                               "kvfs: cannot open log file '/nonexistent-kvfs-dir/kvfs.log': "
                               "No such file or directory"),
    "logfile-is-a-directory": (["-o", "logfile=/tmp"], "kvfs: cannot open log file '/tmp': "
                               "Is a directory"),
    "logfile-empty": (["-o", "logfile="], "kvfs: -o logfile= needs a file name"),
}


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_log_option_is_one_line_exit_1(dirs, case, daemon):
    _, mnt, _ = dirs
    args, first = BAD[case]
    r = kvfs(*(([] if daemon else ["-f"]) + args + ["memory:", mnt]))
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 1, lines
    assert len(lines) == 1 and lines[0].startswith(first), lines
    assert not is_mounted(mnt)


@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
def test_a_log_file_that_cannot_be_written_is_one_line(dirs, daemon):
    """A file that cannot be made, even by root: sysfs takes no new files."""
    _, mnt, _ = dirs
    r = kvfs(*(([] if daemon else ["-f"]) + ["-o", "logfile=/sys/kvfs-test.log", "memory:", mnt]))
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith("kvfs: cannot open log file '/sys/kvfs-test.log': "), lines
    assert not is_mounted(mnt)


def test_a_daemon_mount_failure_is_on_the_terminal_and_in_the_log(dirs):
    """The store cannot be opened: the daemon has not detached yet, so the
    terminal gets the one line and exit status 1; the log file gets it too."""
    d, mnt, log = dirs
    garbage = os.path.join(d, "garbage")
    os.mkdir(garbage)
    write_file(os.path.join(garbage, "data.mdb"), b"this is not an lmdb file" * 1000)
    r = kvfs("-o", "logfile=" + log, "lmdb:" + garbage, mnt)
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 1, lines
    assert len(lines) == 1 and lines[0].startswith("kvfs: lmdb:"), lines
    assert not is_mounted(mnt)
    assert "ERROR: " + lines[0][len("kvfs: "):] in read_text(log)


def test_credentials_never_reach_the_log(dirs):
    """A key named like a credential is logged with its value hidden: every
    line goes through one function that blanks password=, token=, ... and
    a URL's user:password@."""
    d, mnt, log = dirs
    r = kvfs("-o", "logfile=%s,loglevel=debug,map_size=1M,map_max=1M" % log,
             "lmdb:" + os.path.join(d, "s"), mnt)
    assert r.returncode == 0, r.stderr
    fill_small_lmdb(mnt, "password=s3cr3t")
    fill_small_lmdb(mnt, "token=s3cr3t,x")
    unmount_and_wait(mnt)
    text = read_text(log)
    # the value ends at a blank, a comma, '&', ';' or a quote
    assert "set password=*** MDB_MAP_FULL" in text, text
    assert "set token=***,x: MDB_MAP_FULL" in text, text
    assert "s3cr3t" not in text, text


def test_a_redis_password_never_reaches_the_log(dirs):
    """A password from REDISCLI_AUTH and from a password file, a server
    that is not there, everything logged: the password is nowhere."""
    r = kvfs("--backends")
    if not any(ln.startswith("redis ") for ln in r.stdout.decode().splitlines()):
        pytest.skip("kvfs built without redis")
    d, mnt, log = dirs
    pw = os.path.join(d, "pw")
    write_file(pw, b"fil3s3cr3t\n")
    os.chmod(pw, 0o600)
    for opts, env in [("lazy", {"REDISCLI_AUTH": "env5ecr3t"}),
                      ("lazy,password_file=" + pw, {})]:
        m = util.Mount("redis://kvuser@127.0.0.1:1/0", mountpoint=mnt, env=env,
                       opts=[opts, "timeout=300ms", "loglevel=debug", "logfile=" + log])
        m.start()
        m.allow_log(r".")
        with pytest.raises(OSError):
            os.listdir(mnt)
        with open(os.path.join(mnt, ".health"), "rb") as f:
            health = f.read().decode()
        m.unmount()
        for text in (health, m.log_text(), read_text(log)):
            assert "s3cr3t" not in text and "5ecr3t" not in text, text
    assert "redis" in read_text(log)


def test_a_log_file_moved_away_is_made_again(dirs):
    """logrotate renames the file: the next line goes to a new file of the
    same name, the old one keeps what it had."""
    d, mnt, log = dirs
    r = kvfs("-o", "logfile=%s,map_size=1M,map_max=1M" % log, "lmdb:" + os.path.join(d, "s"), mnt)
    assert r.returncode == 0, r.stderr
    fill_small_lmdb(mnt, "first")
    os.rename(log, log + ".1")
    fill_small_lmdb(mnt, "second")
    unmount_and_wait(mnt)
    old, new = read_text(log + ".1"), read_text(log)
    assert "set first:" in old and "second" not in old, old
    assert "set second:" in new and "first" not in new, new
