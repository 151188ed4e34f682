"""A TEST SERVER for kvfs's consul backend: NOT Consul.

It speaks the subset of Consul's HTTP API that kvfs uses, written from the
official API docs (developer.hashicorp.com/consul/api-docs/kv and /txn) and
Consul's agent/kvs_endpoint.go and agent/txn_endpoint.go:

  GET    /v1/kv/<key>        [?raw] [?recurse] [?keys[&separator=S]]
  PUT    /v1/kv/<key>        body = value; [?cas=<ModifyIndex>]; answers true/false
  DELETE /v1/kv/<key>        [?recurse] [?cas=<ModifyIndex>]
  PUT    /v1/txn             KV verbs set, cas, get, get-tree, check-index,
                             check-not-exists, delete, delete-tree, delete-cas;
                             200 {"Results"}, 409 {"Errors"} (rolled back),
                             413 over 64 operations or a 512 KiB body
  GET    /v1/status/leader   (no ACL needed, as in Consul)
  GET    /v1/agent/self      Config.Datacenter/NodeName/Version

Faithful details: values over kv_max_value_size (512 KiB) are 413; keys are
byte strings (percent-decoded paths) shown in JSON with invalid UTF-8
replaced by U+FFFD, as Go does; a path with empty, "." or ".." segments is
answered 301 to its cleaned form, as Go's ServeMux does (and never
followed by kvfs); ?dc= other than dc1 is 500 "No path to datacenter";
with --token-file every KV/txn/agent request needs that X-Consul-Token
(403 "ACL not found" for another token, "Permission denied" for none).
Every write is journalled to --data (JSON lines) before it is answered, so a
stopped and restarted server keeps its data.

    /usr/bin/python3 consul_server.py --port N --data FILE [--token-file F]
"""
import argparse
import base64
import bisect
import json
import os
import posixpath
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_VALUE = 512 * 1024      # kv_max_value_size
MAX_TXN_BODY = 512 * 1024   # txn_max_req_len
MAX_TXN_OPS = 64            # maxTxnOps
DATACENTER = "dc1"
VERSION = "1.17.0 (kvfs test server, not Consul)"


class Store:
    """Keys (bytes) -> entries; one lock; a raft-like index for every write.
    Each committed write appends one line to a journal, replayed at start."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.kv = {}
        self.index = 1
        self.touched = set()
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        d = json.loads(line)
                    except ValueError:
                        break                   # a torn last line: the write never answered
                    self.index = d["index"]
                    for k, v, c, m, fl in d["put"]:
                        self.kv[base64.b64decode(k)] = {"v": base64.b64decode(v), "c": c,
                                                        "m": m, "f": fl}
                    for k in d["del"]:
                        self.kv.pop(base64.b64decode(k), None)
        self.order = sorted(self.kv)           # keys in byte order, for prefix queries
        self.journal = open(path, "a")

    def save(self):
        put, dele = [], []
        for k in self.touched:
            e = self.kv.get(k)
            b = base64.b64encode(k).decode()
            if e is None:
                dele.append(b)
            else:
                put.append([b, base64.b64encode(e["v"]).decode(), e["c"], e["m"], e["f"]])
        self.touched = set()
        self.journal.write(json.dumps({"index": self.index, "put": put, "del": dele}) + "\n")
        self.journal.flush()                     # in the OS: survives kill -9 of the server

    def put(self, key, value, idx, flags=0):
        old = self.kv.get(key)
        self.kv[key] = {"v": value, "c": old["c"] if old else idx, "m": idx, "f": flags}
        if old is None:
            bisect.insort(self.order, key)
        self.touched.add(key)

    def remove(self, key):
        if self.kv.pop(key, None) is not None:
            del self.order[bisect.bisect_left(self.order, key)]
            self.touched.add(key)

    def restore(self, kv):
        """Roll back to a snapshot of kv (a failed transaction)."""
        if set(kv) != set(self.kv):
            self.order = sorted(kv)
        self.kv = kv

    def prefixed(self, prefix):
        i = bisect.bisect_left(self.order, prefix)
        out = []
        while i < len(self.order) and self.order[i].startswith(prefix):
            out.append(self.order[i])
            i += 1
        return out


def show_key(k):
    return k.decode("utf-8", errors="replace")   # Go's encoding/json does the same


def entry_json(k, e, with_value=True):
    v = e["v"]
    return {"LockIndex": 0, "Key": show_key(k), "Flags": e["f"],
            "Value": base64.b64encode(v).decode() if (with_value and v) else None,
            "CreateIndex": e["c"], "ModifyIndex": e["m"]}


def clean_path(p):
    """Go's net/http cleanPath (what ServeMux redirects to)."""
    if not p:
        return b"/"
    if not p.startswith(b"/"):
        p = b"/" + p
    np = posixpath.normpath(p.decode("latin-1")).encode("latin-1")
    if np.startswith(b"//"):
        np = b"/" + np.lstrip(b"/")
    if p.endswith(b"/") and np != b"/":
        np += b"/"
    return np


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kvfs-consul-test-server"
    disable_nagle_algorithm = True   # headers and body go out at once, no 40 ms stalls

    def log_message(self, fmt, *args):      # quiet: the suite reads the log on failure
        pass

    # -- plumbing --

    def reply(self, code, body=b"", ctype="application/json", headers=()):
        if isinstance(body, (dict, list, bool, str)) or body is None:
            body = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD":
            self._headers_buffer.append(b"\r\n" + body)   # one write with the headers
            self.flush_headers()
        else:
            self.end_headers()

    def text(self, code, msg):
        self.reply(code, msg.encode(), "text/plain; charset=utf-8")

    def read_body(self, limit):
        n = int(self.headers.get("Content-Length") or 0)
        if n > limit:
            # Consul answers before reading; drain so the connection stays usable.
            self.rfile.read(n)
            return None, n
        return self.rfile.read(n), n

    def parse(self):
        raw_path, _, query = self.path.partition("?")
        self.query = {}
        for part in query.split("&") if query else []:
            k, eq, v = part.partition("=")
            self.query[urllib.parse.unquote(k)] = urllib.parse.unquote(v) if eq else ""
        return urllib.parse.unquote_to_bytes(raw_path), query

    def acl_ok(self):
        want = self.server.token
        if want is None:
            return True
        got = self.headers.get("X-Consul-Token")
        if got is None and self.headers.get("Authorization", "").startswith("Bearer "):
            got = self.headers["Authorization"][7:]
        if got is None:
            got = self.query.get("token")
        if got == want:
            return True
        self.text(403, "ACL not found" if got else "Permission denied")
        return False

    def dc_ok(self):
        dc = self.query.get("dc")
        if dc and dc != DATACENTER:
            self.text(500, "No path to datacenter")
            return False
        return True

    def route(self):
        path, query = self.parse()
        clean = clean_path(path)
        if clean != path and self.command != "CONNECT":
            body, _ = self.read_body(1 << 30)
            loc = urllib.parse.quote(clean) + ("?" + query if query else "")
            self.reply(301, b"", "text/html; charset=utf-8", [("Location", loc)])
            return
        st = self.server.store
        if path == b"/v1/status/leader" and self.command == "GET":
            if self.dc_ok():
                self.reply(200, "127.0.0.1:8300")
            return
        if not self.acl_ok() or not self.dc_ok():
            return
        if path == b"/v1/agent/self" and self.command == "GET":
            self.reply(200, {"Config": {"Datacenter": DATACENTER, "NodeName": "kvfs-test",
                                        "Version": VERSION}})
        elif path == b"/v1/txn" and self.command == "PUT":
            self.txn(st)
        elif path.startswith(b"/v1/kv/"):
            key = path[len(b"/v1/kv/"):]
            if self.command == "GET":
                self.kv_get(st, key)
            elif self.command == "PUT":
                self.kv_put(st, key)
            elif self.command == "DELETE":
                self.kv_delete(st, key)
            else:
                self.text(405, "method %s not allowed" % self.command)
        else:
            self.text(404, "404 page not found\n")

    do_GET = do_PUT = do_DELETE = do_POST = route

    # -- /v1/kv --

    def kv_get(self, st, key):
        q = self.query
        with st.lock:
            idx = [("X-Consul-Index", str(st.index)), ("X-Consul-KnownLeader", "true"),
                   ("X-Consul-LastContact", "0")]
            if "keys" in q:
                sep = q.get("separator", q.get("seperator", "")).encode()
                out = []
                for k in st.prefixed(key):
                    if sep:
                        i = k.find(sep, len(key))
                        if i >= 0:
                            k = k[:i + len(sep)]
                    if not out or out[-1] != k:
                        out.append(k)
                if not out and key:
                    self.reply(404, b"", headers=idx)
                else:
                    self.reply(200, [show_key(k) for k in out], headers=idx)
                return
            if "recurse" in q:
                ents = [entry_json(k, st.kv[k]) for k in st.prefixed(key)]
                self.reply(200 if ents else 404, ents if ents else b"", headers=idx)
                return
            if not key:
                self.text(400, "Missing key name")
                return
            e = st.kv.get(key)
            if e is None:
                self.reply(404, b"", headers=idx)
            elif "raw" in q:
                self.reply(200, e["v"], "text/plain", idx + [("X-Content-Type-Options", "nosniff")])
            else:
                self.reply(200, [entry_json(key, e)], headers=idx)

    def kv_put(self, st, key):
        q = self.query
        if not key:
            self.read_body(1 << 30)
            self.text(400, "Missing key name")
            return
        body, n = self.read_body(MAX_VALUE)
        if body is None:
            self.text(413, "Request body(%d bytes) too large, max size: %d bytes. See "
                      "https://developer.hashicorp.com/docs/agent/config/config-files"
                      "#kv_max_value_size." % (n, MAX_VALUE))
            return
        with st.lock:
            old = st.kv.get(key)
            if "cas" in q:
                try:
                    cas = int(q["cas"])
                except ValueError:
                    self.text(400, "bad cas")
                    return
                ok = (old is None) if cas == 0 else (old is not None and old["m"] == cas)
                if not ok:
                    self.reply(200, False)
                    return
            st.index += 1
            st.put(key, body, st.index, int(q.get("flags") or 0))
            st.save()
        self.reply(200, True)

    def kv_delete(self, st, key):
        q = self.query
        with st.lock:
            if "recurse" in q:
                for k in st.prefixed(key):
                    st.remove(k)
                st.index += 1
                st.save()
                self.reply(200, True)
                return
            if not key:
                self.text(400, "Missing key name")
                return
            old = st.kv.get(key)
            if "cas" in q:
                cas = int(q["cas"])
                if old is None or (cas != 0 and old["m"] != cas):
                    self.reply(200, old is None and cas == 0)
                    return
            st.remove(key)
            st.index += 1
            st.save()
        self.reply(200, True)

    # -- /v1/txn --

    def txn(self, st):
        body, n = self.read_body(MAX_TXN_BODY)
        if body is None:
            self.text(413, "Request body too large, max size: %d bytes" % MAX_TXN_BODY)
            return
        try:
            ops = json.loads(body)
            assert isinstance(ops, list)
        except (ValueError, AssertionError) as e:
            self.text(400, "Failed to parse body: %s" % e)
            return
        if len(ops) > MAX_TXN_OPS:
            self.text(413, "Transaction contains too many operations (%d > %d)"
                      % (len(ops), MAX_TXN_OPS))
            return
        parsed = []
        for op in ops:
            kv = {k.lower(): v for k, v in (op.get("KV") or {}).items()}
            key = (kv.get("key") or "").encode("utf-8", errors="replace")
            val = base64.b64decode(kv["value"]) if kv.get("value") else b""
            if len(val) > MAX_VALUE:
                self.text(413, "Value for key %r is too large (%d > %d bytes)"
                          % (kv.get("key"), len(val), MAX_VALUE))
                return
            parsed.append((kv.get("verb"), key, val, int(kv.get("index") or 0),
                           int(kv.get("flags") or 0)))
        with st.lock:
            saved, saved_index = dict(st.kv), st.index
            st.touched = set()
            writes = any(v not in ("get", "get-tree", "check-index", "check-not-exists",
                                   "check-session") for v, *_ in parsed)
            if writes:
                st.index += 1
            idx = st.index
            results, errors = [], []
            for i, (verb, key, val, index, flags) in enumerate(parsed):
                what = self.txn_op(st, verb, key, val, index, flags, idx, results)
                if what:
                    errors.append({"OpIndex": i, "What": what})
            if errors:
                st.restore(saved)
                st.index, st.touched = saved_index, set()
                self.reply(409, {"Results": None, "Errors": errors})
                return
            if writes:
                st.save()
        self.reply(200, {"Results": results, "Errors": None})

    @staticmethod
    def txn_op(st, verb, key, val, index, flags, idx, results):
        """Apply one KV op; an error string (Consul's wording) or None."""
        e = st.kv.get(key)
        name = show_key(key)
        if verb in ("set", "cas", "delete", "delete-cas", "get", "check-index",
                    "check-not-exists") and not key:
            return "Must provide key"
        if verb == "set":
            st.put(key, val, idx, flags)
            results.append({"KV": entry_json(key, st.kv[key], False)})
        elif verb == "cas":
            if (index == 0 and e is not None) or (index != 0 and (e is None or e["m"] != index)):
                return "failed to set key %s, index is stale" % json.dumps(name)
            st.put(key, val, idx, flags)
            results.append({"KV": entry_json(key, st.kv[key], False)})
        elif verb == "get":
            if e is None:
                return "key %s doesn't exist" % json.dumps(name)
            results.append({"KV": entry_json(key, e)})
        elif verb == "get-tree":
            for k in st.prefixed(key):
                results.append({"KV": entry_json(k, st.kv[k])})
        elif verb == "check-index":
            if e is None:
                return "key %s doesn't exist" % json.dumps(name)
            if e["m"] != index:
                return "current modify index %d != %d" % (e["m"], index)
            results.append({"KV": entry_json(key, e, False)})
        elif verb == "check-not-exists":
            if e is not None:
                return "key %s exists" % json.dumps(name)
        elif verb == "delete":
            st.remove(key)
        elif verb == "delete-tree":
            for k in st.prefixed(key):
                st.remove(k)
        elif verb == "delete-cas":
            if e is None or e["m"] != index:
                return "failed to delete key %s, index is stale" % json.dumps(name)
            st.remove(key)
        else:
            return "unknown KV verb %r" % (verb,)
        return None


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--token-file")
    a = ap.parse_args()
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.store = Store(a.data)
    srv.token = None
    if a.token_file:
        with open(a.token_file) as f:
            srv.token = f.read().strip()
    print("Consul KV HTTP API test server (not Consul) on 127.0.0.1:%d, data %s%s"
          % (a.port, a.data, ", ACL token required" if srv.token else ""), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
