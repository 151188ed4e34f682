"""The consul backend's server for the suite and its raw access.

start() runs the suite's Consul KV HTTP API test server (consul_server.py:
the subset of Consul's HTTP API kvfs uses, in Python; Debian packages no
Consul) on a free loopback port.  Raw is a plain HTTP client (urllib) on
Consul's own endpoints -- PUT/GET ?raw/DELETE /v1/kv/<key>, ?keys and
?recurse -- with /v1/txn for the keys a URL path cannot carry, spelling
keys exactly as the backend does (docs/backends.md, "consul"):

    a NUL byte -> %00, a byte outside valid UTF-8 -> %XX,
    '%' followed by two upper-case hex digits -> %25, all else as is.

With KVFS_TEST_CONSUL_URL=consul://host:8500 the same suites run on a real
Consul; Raw then sends CONSUL_HTTP_TOKEN (if set) as X-Consul-Token.
"""
import base64
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

import servers

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "consul_server.py")
TXN_MAX_OPS = 64
TXN_MAX_BODY = 512 * 1024


def start(workdir, token_file=None):
    """token_file: the server then wants that ACL token on KV requests."""
    port = servers.free_port()
    argv = ["/usr/bin/python3", SERVER, "--port", str(port),
            "--data", os.path.join(workdir, "consul-data.jsonl")]
    if token_file:
        argv += ["--token-file", token_file]
    srv = servers.Server(argv, port, "consul://127.0.0.1:%d" % port,
                         os.path.join(workdir, "consul-server.log"))
    srv.keeps_data = True       # the server journals every write in workdir
    return srv


# ---- the key spelling (backends/consul.c key_encode/key_decode) ----

_UTF8 = re.compile(rb"[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
                   rb"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
                   rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
                   rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}")
_HEX = b"0123456789ABCDEF"


def encode_key(key):
    """Consul key (str) of a kvfs key (bytes)."""
    out = bytearray()
    i = 0
    while i < len(key):
        b = key[i]
        if b == 0x25 and i + 2 < len(key) and key[i + 1] in _HEX and key[i + 2] in _HEX:
            out += b"%25"
            i += 1
            continue
        if b == 0:
            out += b"%00"
            i += 1
            continue
        m = _UTF8.match(key, i)
        if m:
            out += m.group()
            i = m.end()
        else:
            out += b"%%%02X" % b
            i += 1
    return out.decode("utf-8")


def decode_key(ckey):
    """kvfs key of a Consul key, or None for a spelling kvfs never writes."""
    s = ckey.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == 0x25 and i + 2 < len(s) and s[i + 1] in _HEX and s[i + 2] in _HEX:
            out.append(int(s[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(s[i])
            i += 1
    key = bytes(out)
    return key if encode_key(key) == ckey else None


def path_safe(ckey, prefix=False):
    """Does Go's ServeMux leave /v1/kv/<ckey> alone (no redirect)?"""
    if not ckey:
        return prefix
    if ckey.startswith("/"):
        return False
    segs = ckey.split("/")
    for i, seg in enumerate(segs):
        if seg in (".", ".."):
            return False
        if seg == "" and i != len(segs) - 1:
            return False
    return True


class Raw:
    def __init__(self, url):
        scheme, rest = url.split(":", 1)
        assert scheme in ("consul", "consul+https"), url
        u = urllib.parse.urlsplit("http:" + rest)
        host = u.netloc or os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500").split("://")[-1]
        self.base = ("https://" if scheme.endswith("https") else "http://") + host
        path = urllib.parse.unquote_to_bytes(u.path.lstrip("/"))
        self.kprefix = encode_key(path) + ("/" if path and not path.endswith(b"/") else "")
        q = urllib.parse.parse_qs(u.query)
        self.dc = q.get("dc", [None])[0]
        self.token = os.environ.get("CONSUL_HTTP_TOKEN")

    # -- HTTP --

    def _url(self, path, ckey="", query=None):
        q = dict(query or {})
        if self.dc:
            q["dc"] = self.dc
        qs = "&".join(k if v is None else "%s=%s" % (k, urllib.parse.quote(str(v), safe=""))
                      for k, v in q.items())
        return self.base + path + urllib.parse.quote(ckey.encode(), safe="/") + \
            ("?" + qs if qs else "")

    def _req(self, method, url, body=None):
        req = urllib.request.Request(url, data=body, method=method)
        if self.token:
            req.add_header("X-Consul-Token", self.token)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _txn(self, ops):
        status, body = self._req("PUT", self._url("/v1/txn"), json.dumps(ops).encode())
        if status == 409:
            return None
        assert status == 200, (status, body[:300])
        return json.loads(body)["Results"] or []

    @staticmethod
    def _op(verb, ckey, value=None):
        kv = {"Verb": verb, "Key": ckey}
        if value is not None:
            kv["Value"] = base64.b64encode(value).decode()
        return {"KV": kv}

    # -- the Raw interface --

    def put_many(self, items):
        batch, size = [], 2
        for k, v in items.items():
            ck = self.kprefix + encode_key(k)
            op = self._op("set", ck, v)
            n = len(json.dumps(op)) + 1
            if batch and (len(batch) == TXN_MAX_OPS or size + n > TXN_MAX_BODY):
                self._txn(batch)
                batch, size = [], 2
            if n + 2 > TXN_MAX_BODY and path_safe(ck):
                status, body = self._req("PUT", self._url("/v1/kv/", ck), v)
                assert status == 200 and body.strip() == b"true", (status, body[:300])
                continue
            batch.append(op)
            size += n
        if batch:
            self._txn(batch)

    def get(self, key):
        ck = self.kprefix + encode_key(key)
        if path_safe(ck):
            status, body = self._req("GET", self._url("/v1/kv/", ck, {"raw": None}))
            if status == 404:
                return None
            assert status == 200, (status, body[:300])
            return body
        res = self._txn([self._op("get", ck)])
        if res is None:
            return None
        v = res[0]["KV"]["Value"]
        return base64.b64decode(v) if v else b""

    def delete(self, key):
        ck = self.kprefix + encode_key(key)
        existed = self._txn([self._op("get", ck), self._op("delete", ck)]) is not None
        return existed

    def _entries(self, cprefix):
        if path_safe(cprefix, prefix=True):
            status, body = self._req("GET", self._url("/v1/kv/", cprefix, {"recurse": None}))
            if status == 404:
                return []
            assert status == 200, (status, body[:300])
            return json.loads(body)
        return [r["KV"] for r in self._txn([self._op("get-tree", cprefix)]) or []]

    def items(self, prefix=b""):
        # Cut the prefix where its spelling could depend on what follows.
        cut = len(prefix)
        while True:
            before = cut
            while cut and prefix[cut - 1] >= 0x80:
                cut -= 1
            if cut >= 1 and prefix[cut - 1] == 0x25:
                cut -= 1
            elif cut >= 2 and prefix[cut - 2] == 0x25 and prefix[cut - 1] in _HEX:
                cut -= 2
            if cut == before:
                break
        out = {}
        for e in self._entries(self.kprefix + encode_key(prefix[:cut])):
            ck = e["Key"]
            if not ck.startswith(self.kprefix):
                continue
            k = decode_key(ck[len(self.kprefix):])
            if k is not None and k.startswith(prefix):
                out[k] = base64.b64decode(e["Value"]) if e.get("Value") else b""
        return out

    def snapshots(self):
        """A function giving {key: value} of one consistent read (one
        ?recurse is one read of Consul's state store), and a close function."""
        return self.items, lambda: None
