"""The mongodb backend's server for the suite and its raw access.

start() runs the suite's own protocol test server (mongodb_server.py: a
MongoDB wire-protocol subset in Python, since Debian packages no mongod)
on a free loopback port.  Raw is pymongo, the store's own client, reading
and writing documents exactly as kvfs stores them (docs/backends.md):

    {_id: <key as a string, see key_to_id>, v: BinData(0, value), ver: <int64>}

With KVFS_TEST_MONGODB_URL=mongodb://host/db the same suites run on a real
MongoDB; a password then comes from KVFS_MONGODB_PASSWORD, as for kvfs.
"""
import os
import random
import sys

import servers

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mongodb_server.py")
DEFAULT_DB = "kvfs"
DEFAULT_COLLECTION = "kv"


def start(workdir, users_file=None):
    """users_file: "user:password" lines; the server then wants PLAIN auth."""
    port = servers.free_port()
    argv = ["/usr/bin/python3", SERVER, "--port", str(port),
            "--data", os.path.join(workdir, "mongodb-data")]
    if users_file:
        argv += ["--users", users_file]
    srv = servers.Server(argv, port, "mongodb://127.0.0.1:%d/kvfs_test" % port,
                         os.path.join(workdir, "mongodb-server.log"))
    srv.keeps_data = True      # the server journals every write in workdir
    return srv


def key_to_id(key):
    """kvfs's _id of a key: the bytes as code points U+0000-U+00FF (Latin-1),
    with U+0000 written as U+0001 U+0001 and U+0001 as U+0001 U+0002.  The
    string is valid UTF-8 without NUL, and MongoDB's bytewise string order
    is the keys' byte order (the escapes keep it), so prefixes are ranges."""
    return key.replace(b"\x01", b"\x01\x02").replace(b"\x00", b"\x01\x01").decode("latin-1")


def id_to_key(_id):
    """The key of an _id, or None if it is not one kvfs could have written."""
    if not isinstance(_id, str):
        return None
    try:
        b = _id.encode("latin-1")
    except UnicodeEncodeError:
        return None
    out = bytearray()
    i = 0
    while i < len(b):
        if b[i] == 1:
            if i + 1 >= len(b) or b[i + 1] not in (1, 2):
                return None
            out.append(b[i + 1] - 1)
            i += 2
        else:
            out.append(b[i])
            i += 1
    return bytes(out)


def id_range(prefix):
    """The _id filter of every key starting with prefix."""
    lo = key_to_id(prefix)
    if not lo:
        return {"$gte": ""}     # every string _id
    return {"$gte": lo, "$lt": lo[:-1] + chr(ord(lo[-1]) + 1)}


class Raw:
    """pymongo on the store's collection."""

    def __init__(self, url):
        import pymongo
        from pymongo.uri_parser import parse_uri
        parsed = parse_uri(url)
        db = parsed.get("database") or DEFAULT_DB
        coll = parsed.get("collection") or DEFAULT_COLLECTION
        kw = {"serverSelectionTimeoutMS": 10000}
        if parsed.get("username") and os.environ.get("KVFS_MONGODB_PASSWORD"):
            kw["password"] = os.environ["KVFS_MONGODB_PASSWORD"]
        self.client = pymongo.MongoClient(url, **kw)
        self.coll = self.client[db][coll]

    def put_many(self, items):
        from bson.binary import Binary
        from bson.int64 import Int64
        from pymongo import UpdateOne
        ops = [UpdateOne({"_id": key_to_id(k)},
                         {"$set": {"v": Binary(v, 0), "ver": Int64(random.getrandbits(62) + 1)}},
                         upsert=True) for k, v in items.items()]
        if ops:
            self.coll.bulk_write(ops, ordered=True)

    def get(self, key):
        d = self.coll.find_one({"_id": key_to_id(key)})
        return None if d is None else bytes(d["v"])

    def delete(self, key):
        return self.coll.delete_one({"_id": key_to_id(key)}).deleted_count == 1

    def items(self, prefix=b""):
        out = {}
        for d in self.coll.find({"_id": id_range(prefix)}).sort("_id", 1):
            k = id_to_key(d["_id"])
            if k is not None:
                out[k] = bytes(d["v"])
        return out


if __name__ == "__main__":
    print(key_to_id(os.fsencode(sys.argv[1])))
