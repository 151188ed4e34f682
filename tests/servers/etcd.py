"""The etcd backend's server for the suite and its raw access.

start() runs a real etcd (Debian's etcd-server, /usr/bin/etcd) on a free
loopback port, with its data under workdir, and returns once it has a
leader: a cluster of one member, for the suites every backend runs (what
they test goes through the same client paths on one member or three, and
three members on two cores halve the rate of writes: 47 against 94
creates/s in scripts/bench).
Cluster(workdir, size=3) is the three-member cluster that
test_backend_etcd.py runs its endpoint and member-failure tests on.  A
Cluster acts on all its members (stop/start/pause/resume/kill, what
test_faults.py needs); each member is also cluster.members[i].

Cluster settings that differ from etcd's defaults, and why:
  --max-txn-ops 4096   an atomic rename of a directory is one txn of two
                       operations per key (test_fs renames 400 keys);
                       etcd's default of 128 would refuse it (EFBIG)
  --max-request-bytes 32 MiB: test_fs writes 8 MiB files; the URL says
                       ?max_request_bytes= so that kvfs's limit matches
  --heartbeat-interval 50, --election-timeout 500: a killed leader is
                       replaced in about half a second rather than one

Raw is etcd's own v3 API through its JSON gateway (urllib; keys and values
base64, so binary-safe), with the key layout kvfs uses: the URL's path, if
any, is a namespace prefix in front of every key.
"""
import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import servers

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
MAX_TXN_OPS = 4096
MAX_REQUEST = 32 << 20


class Member:
    """One etcd process of the cluster; start() again after kill() or stop()
    rejoins with the data it had."""

    def __init__(self, name, workdir, peer_port, client_port, initial_cluster, token, extra=()):
        self.name = name
        self.client_port = client_port
        self.client_url = "http://127.0.0.1:%d" % client_port
        self.log_path = os.path.join(workdir, "%s.log" % name)
        self.argv = [
            ETCD, "--name", name,
            "--data-dir", os.path.join(workdir, name),
            "--listen-peer-urls", "http://127.0.0.1:%d" % peer_port,
            "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer_port,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", token,
            "--max-txn-ops", str(MAX_TXN_OPS), "--max-request-bytes", str(MAX_REQUEST),
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--logger", "zap", "--log-outputs", "stderr",
        ] + list(extra)
        self.proc = None

    def start(self):
        if self.running():
            return
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={"PATH": "/usr/bin:/bin"})
        log.close()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def pause(self):
        if self.running():
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        if self.running():
            os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self):
        if self.running():
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self):
        if self.running():
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def status(self, timeout=1.0):
        """/v3/maintenance/status of this member, or None."""
        try:
            return _post(self.client_url, "/v3/maintenance/status", {}, timeout)
        except (OSError, ValueError):
            return None


class Cluster:
    """Three members on loopback; url names all three client endpoints."""

    keeps_data = True

    def __init__(self, workdir, size=3, extra=()):
        ports = [(servers.free_port(), servers.free_port()) for _ in range(size)]
        initial = ",".join("m%d=http://127.0.0.1:%d" % (i + 1, p)
                           for i, (p, _) in enumerate(ports))
        token = "kvfs-test-%d" % ports[0][0]
        self.members = [Member("m%d" % (i + 1), workdir, p, c, initial, token, extra)
                        for i, (p, c) in enumerate(ports)]
        self.endpoints = ["127.0.0.1:%d" % m.client_port for m in self.members]
        # kvfs's value limit follows the cluster's request limit (the URL
        # carries it, since a shared test passes no options of its own)
        self.url = "etcd://%s?max_request_bytes=%d" % (",".join(self.endpoints), MAX_REQUEST)
        self.port = self.members[0].client_port
        self.start()

    def start(self):
        for m in self.members:
            m.start()
        self.wait_leader()

    def wait_leader(self, timeout=60, members=None):
        """Wait until every running member (or those given) knows a leader
        and serves a linearizable read."""
        deadline = time.monotonic() + timeout
        members = members or [m for m in self.members if m.running()]
        while time.monotonic() < deadline:
            for m in members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError("etcd %s exited with %s; see %s"
                                       % (m.name, m.proc.returncode, m.log_path))
            if all(_has_leader(m) for m in members):
                return
            time.sleep(0.1)
        raise RuntimeError("etcd cluster has no leader after %ds" % timeout)

    def leader(self):
        """The member that is the leader now, or None."""
        for m in self.members:
            st = m.status() if m.running() else None
            if st and st.get("leader") and st.get("leader") == st["header"].get("member_id"):
                return m
        return None

    def pause(self):
        for m in self.members:
            m.pause()

    def resume(self):
        for m in self.members:
            m.resume()

    def kill(self):
        for m in self.members:
            m.kill()

    def stop(self):
        for m in self.members:
            m.stop()

    def restart(self):
        self.stop()
        self.start()

    def etcdctl(self, *args, env=None, input=None):
        """Run etcdctl against every endpoint; a CompletedProcess (bytes)."""
        e = {"PATH": "/usr/bin:/bin", "ETCDCTL_API": "3",
             "ETCDCTL_ENDPOINTS": ",".join("http://" + ep for ep in self.endpoints)}
        e.update(env or {})
        return subprocess.run([ETCDCTL] + list(args), env=e, capture_output=True,
                              timeout=60, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)


def _has_leader(m):
    st = m.status()
    if not st or not st.get("leader") or st.get("leader") == "0":
        return False
    try:   # a read through raft: the member is really part of a working cluster
        _post(m.client_url, "/v3/kv/range", {"key": _b64(b"\0"), "count_only": True}, 2.0)
        return True
    except (OSError, ValueError):
        return False


def start(workdir):
    return Cluster(workdir, size=1)


# ---- raw access: etcd's own JSON gateway ----

def _b64(b):
    return base64.b64encode(b).decode()


def _unb64(s):
    return base64.b64decode(s or "")


def _post(base, path, body, timeout=10.0, headers=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers=dict({"Content-Type": "application/json"},
                                              **(headers or {})))
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def successor(prefix):
    """The first key after every key that starts with prefix (etcd's
    range_end); b"\\0" (to the end) for an empty or all-0xff prefix."""
    p = bytearray(prefix)
    while p and p[-1] == 0xff:
        p.pop()
    if not p:
        return b"\0"
    p[-1] += 1
    return bytes(p)


class Raw:
    """etcd's v3 JSON API on the cluster of url, trying each endpoint."""

    def __init__(self, url, user=None, password=None):
        u = urllib.parse.urlsplit(url)
        scheme = "https" if u.scheme.endswith("https") else "http"
        self.bases = ["%s://%s" % (scheme, h) for h in u.netloc.split("@")[-1].split(",") if h]
        if not self.bases:
            self.bases = [e if "://" in e else "http://" + e for e in
                          os.environ.get("ETCDCTL_ENDPOINTS", "127.0.0.1:2379").split(",")]
        ns = urllib.parse.unquote_to_bytes(u.path.lstrip("/"))
        self.ns = ns + b"/" if ns and not ns.endswith(b"/") else ns
        self.headers = {}
        if user:
            tok = self.call("/v3/auth/authenticate", {"name": user, "password": password})
            self.headers["Authorization"] = tok["token"]

    def call(self, path, body):
        last = None
        for base in self.bases:
            try:
                return _post(base, path, body, headers=self.headers)
            except urllib.error.HTTPError as e:
                raise RuntimeError("etcd %s: %s" % (path, e.read().decode(errors="replace")))
            except OSError as e:
                last = e
        raise last

    def put_many(self, items):
        ops = [{"request_put": {"key": _b64(self.ns + k), "value": _b64(v)}}
               for k, v in items.items()]
        for i in range(0, len(ops), MAX_TXN_OPS // 2):
            self.call("/v3/kv/txn", {"success": ops[i:i + MAX_TXN_OPS // 2]})

    def get(self, key):
        r = self.call("/v3/kv/range", {"key": _b64(self.ns + key)})
        kvs = r.get("kvs") or []
        return _unb64(kvs[0].get("value")) if kvs else None

    def delete(self, key):
        r = self.call("/v3/kv/deleterange", {"key": _b64(self.ns + key)})
        return int(r.get("deleted", 0)) > 0

    def items(self, prefix=b""):
        """{key: value} under prefix, every page read at one revision: a
        consistent snapshot of the store."""
        out = {}
        p = self.ns + prefix
        start, end, rev = (p or b"\0"), successor(p), 0
        while True:
            body = {"key": _b64(start), "range_end": _b64(end), "limit": 1000}
            if rev:
                body["revision"] = rev
            r = self.call("/v3/kv/range", body)
            rev = rev or int(r["header"]["revision"])
            kvs = r.get("kvs") or []
            for kv in kvs:
                k = _unb64(kv["key"])
                out[k[len(self.ns):]] = _unb64(kv.get("value"))
            if not r.get("more") or not kvs:
                return out
            start = _unb64(kvs[-1]["key"]) + b"\0"

    def snapshots(self):
        """A function giving {key: value} of one consistent snapshot per
        call (like util.LmdbRaw.snapshots), and a close function."""
        return self.items, lambda: None
