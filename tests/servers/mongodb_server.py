#!/usr/bin/python3
"""A TEST SERVER for kvfs's test suite: a small subset of the MongoDB wire
protocol, enough for kvfs's mongodb backend (mongo-c-driver) and pymongo.
It is not MongoDB and must never hold data anyone cares about.

It speaks OP_MSG (opcode 2013: flagBits, a kind-0 body section and kind-1
document sequences, an optional CRC-32C that it skips) and, for the
drivers' legacy first handshake and heartbeats, OP_QUERY on "<db>.$cmd"
answered with OP_REPLY.  It advertises a standalone MongoDB 6.0 (wire
version 17, no setName, so drivers use no transactions and no retryable
writes) with logical sessions, whose lsid fields it ignores.

Commands: hello / isMaster / ismaster, ping, buildInfo, endSessions,
saslStart with the PLAIN mechanism only (with --users FILE of
"user:password" lines every data command needs a connection that
authenticated; without it nothing is checked),
find (filter: equality, null matching a missing field, $eq $gt $gte $lt
$lte $in $exists $ne, $and; sort; limit; skip; batchSize; singleBatch;
projection with inclusion, exclusion and {$binarySize: "$field"}),
getMore, killCursors, insert, update ($set, $unset, $inc, $setOnInsert or
a replacement; upsert; multi), delete, createIndexes, listIndexes, drop,
count.  Anything else gets MongoDB's own "no such command" error (code 59).
Errors have MongoDB's shape: {ok: 0, errmsg, code, codeName}; a duplicate
_id is a writeErrors entry with code 11000.

Values compare as MongoDB compares BSON: by type bracket first, strings
by their UTF-8 bytes (the default "simple" collation), binary data by
length, then subtype, then bytes.

Every write is appended to a journal in the data directory before it is
acknowledged (not fsync'ed: it survives a kill of this process, which is
what the fault tests do), so a restarted server keeps its data.

    mongodb_server.py --port N --data DIR [--users FILE]
"""
import argparse
import base64
import datetime
import itertools
import os
import socketserver
import struct
import sys
import threading
from bisect import bisect_left, insort

import bson
from bson.binary import Binary
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
MAX_BSON = 16 * 1024 * 1024
MAX_MESSAGE = 48000000
CODEC = CodecOptions(unicode_decode_error_handler="surrogateescape")


class CommandError(Exception):
    def __init__(self, code, name, msg):
        super().__init__(msg)
        self.code, self.name, self.msg = code, name, msg


def bad_value(msg):
    return CommandError(2, "BadValue", msg)


# ---- BSON comparison, as MongoDB orders values ----

def sort_key(v):
    """A Python-comparable, hashable key ordering values like MongoDB."""
    if isinstance(v, MinKey):
        return (0,)
    if v is None:
        return (1,)
    if isinstance(v, bool):
        return (8, v)
    if isinstance(v, (int, float)):
        return (2, v)
    if isinstance(v, str):
        return (3, v.encode("utf-8", "surrogateescape"))
    if isinstance(v, dict):
        return (4, tuple((k, sort_key(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return (5, tuple(sort_key(x) for x in v))
    if isinstance(v, Binary):
        return (6, len(v), v.subtype, bytes(v))
    if isinstance(v, bytes):
        return (6, len(v), 0, v)
    if isinstance(v, ObjectId):
        return (7, v.binary)
    if isinstance(v, datetime.datetime):
        return (9, v.timestamp())
    if isinstance(v, Timestamp):
        return (10, v.time, v.inc)
    if isinstance(v, Regex):
        return (11, v.pattern, v.flags)
    if isinstance(v, MaxKey):
        return (12,)
    return (11, repr(v))


MISSING = object()


def get_field(doc, path):
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return MISSING
        doc = doc[part]
    return doc


def match_op(val, op, arg):
    if op == "$exists":
        return (val is not MISSING) == bool(arg)
    if op == "$in":
        if not isinstance(arg, list):
            raise bad_value("$in needs an array")
        return any(match_op(val, "$eq", a) for a in arg)
    if op == "$eq":
        if arg is None:
            return val is MISSING or val is None
        return val is not MISSING and sort_key(val) == sort_key(arg)
    if op == "$ne":
        return not match_op(val, "$eq", arg)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if val is MISSING:
            return False
        a, b = sort_key(val), sort_key(arg)
        if a[0] != b[0]:
            return False        # comparisons stay within a type bracket
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]
    raise bad_value("unknown operator: %s" % op)


def matches(doc, flt):
    for k, cond in flt.items():
        if k == "$and":
            if not all(matches(doc, sub) for sub in cond):
                return False
            continue
        if k.startswith("$"):
            raise bad_value("unknown top level operator: %s" % k)
        val = get_field(doc, k)
        if isinstance(cond, dict) and cond and next(iter(cond)).startswith("$"):
            if not all(match_op(val, op, arg) for op, arg in cond.items()):
                return False
        elif not match_op(val, "$eq", cond):
            return False
    return True


def id_range(flt):
    """Bounds on _id a filter implies: (low, low_inclusive, high, high_inclusive)
    as sort keys, any of them None, so a find walks only that slice."""
    cond = flt.get("_id", MISSING)
    if cond is MISSING:
        return None, True, None, True
    if not (isinstance(cond, dict) and cond and next(iter(cond)).startswith("$")):
        k = sort_key(cond)
        return k, True, k, True
    lo = hi = None
    lo_inc = hi_inc = True
    for op, arg in cond.items():
        if op in ("$gt", "$gte"):
            lo, lo_inc = sort_key(arg), op == "$gte"
        elif op in ("$lt", "$lte"):
            hi, hi_inc = sort_key(arg), op == "$lte"
        elif op == "$eq":
            lo = hi = sort_key(arg)
    return lo, lo_inc, hi, hi_inc


# ---- updates and projections ----

def apply_update(doc, upd, inserting):
    if not upd or not next(iter(upd)).startswith("$"):
        new = {"_id": doc["_id"]}
        new.update((k, v) for k, v in upd.items() if k != "_id")
        return new
    new = dict(doc)
    for op, fields in upd.items():
        if not isinstance(fields, dict):
            raise CommandError(9, "FailedToParse", "Modifiers operate on fields but we "
                               "found type %s instead" % type(fields).__name__)
        for f, v in fields.items():
            if f == "_id" and op != "$setOnInsert" and not inserting:
                raise CommandError(66, "ImmutableField",
                                   "Performing an update on the path '_id' would modify "
                                   "the immutable field '_id'")
            if op == "$set" or (op == "$setOnInsert" and inserting):
                new[f] = v
            elif op == "$setOnInsert":
                pass
            elif op == "$unset":
                new.pop(f, None)
            elif op == "$inc":
                cur = new.get(f, 0)
                if not isinstance(cur, (int, float)) or isinstance(cur, bool):
                    raise CommandError(14, "TypeMismatch",
                                       "Cannot apply $inc to a value of non-numeric type")
                s = cur + v
                new[f] = Int64(s) if isinstance(cur, Int64) or isinstance(v, Int64) else s
            else:
                raise CommandError(9, "FailedToParse",
                                   "Unknown modifier: %s. Expected a valid update modifier "
                                   "or pipeline-style update specified as an array" % op)
    return new


def expr_value(doc, e):
    if isinstance(e, str) and e.startswith("$"):
        v = get_field(doc, e[1:])
        return None if v is MISSING else v
    if isinstance(e, dict) and len(e) == 1 and "$binarySize" in e:
        v = expr_value(doc, e["$binarySize"])
        if v is None:
            return None
        if isinstance(v, str):
            return len(v.encode("utf-8", "surrogateescape"))
        if isinstance(v, (bytes, Binary)):
            return len(v)
        raise CommandError(4, "Location51276",
                           "$binarySize requires a string or BinData argument")
    if isinstance(e, dict) and any(k.startswith("$") for k in e):
        raise CommandError(31325, "Location31325",
                           "Unknown expression %s" % next(iter(e)))
    return e


def project(doc, proj):
    if not proj:
        return doc
    inc = {k: v for k, v in proj.items() if k != "_id"}
    excluding = inc and all(not isinstance(v, dict) and not v for v in inc.values())
    if excluding:
        out = {k: v for k, v in doc.items() if k not in inc}
    else:
        out = {}
        if proj.get("_id", 1) and "_id" in doc:
            out["_id"] = doc["_id"]
        for k, v in inc.items():
            if isinstance(v, dict) or isinstance(v, str):
                out[k] = expr_value(doc, v)
            elif v and k in doc:
                out[k] = doc[k]
    if "_id" in proj and not proj["_id"]:
        out.pop("_id", None)
    return out


# ---- the data ----

class Collection:
    def __init__(self):
        self.docs = {}       # sort_key(_id) -> document
        self.order = []      # sorted sort_key(_id)

    def put(self, doc):
        k = sort_key(doc["_id"])
        if k not in self.docs:
            insort(self.order, k)
        self.docs[k] = doc

    def remove(self, _id):
        k = sort_key(_id)
        if self.docs.pop(k, None) is not None:
            self.order.pop(bisect_left(self.order, k))

    def scan(self, flt):
        """Documents matching flt in _id order, walking only the _id range."""
        lo, lo_inc, hi, hi_inc = id_range(flt)
        i = 0 if lo is None else bisect_left(self.order, lo)
        while i < len(self.order):
            k = self.order[i]
            i += 1
            if lo is not None and (k < lo or (k == lo and not lo_inc)):
                continue
            if hi is not None and (k > hi or (k == hi and not hi_inc)):
                break
            doc = self.docs[k]
            if matches(doc, flt):
                yield doc


class Store:
    def __init__(self, datadir):
        self.lock = threading.RLock()
        self.colls = {}
        self.cursors = {}
        self.next_cursor = itertools.count(1000)
        self.journal_path = os.path.join(datadir, "journal.bson")
        self.load()
        self.journal = open(self.journal_path, "ab")

    def coll(self, db, name, create=False):
        c = self.colls.get((db, name))
        if c is None and create:
            c = self.colls[(db, name)] = Collection()
        return c

    def load(self):
        """Replay the journal, then write it back compacted."""
        try:
            with open(self.journal_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        pos = 0
        while pos + 4 <= len(data):
            n = struct.unpack_from("<i", data, pos)[0]
            if n < 5 or pos + n > len(data):
                break                      # a torn last record
            rec = bson.decode(data[pos:pos + n], CODEC)
            pos += n
            c = self.coll(rec["db"], rec["c"], create=True)
            if rec["op"] == "put":
                c.put(rec["doc"])
            elif rec["op"] == "del":
                c.remove(rec["id"])
            elif rec["op"] == "drop":
                self.colls.pop((rec["db"], rec["c"]), None)
        tmp = self.journal_path + ".tmp"
        with open(tmp, "wb") as f:
            for (db, name), c in self.colls.items():
                for k in c.order:
                    f.write(bson.encode({"op": "put", "db": db, "c": name, "doc": c.docs[k]}))
        os.replace(tmp, self.journal_path)

    def log(self, rec):
        self.journal.write(bson.encode(rec))
        self.journal.flush()

    def put(self, db, name, doc):
        self.coll(db, name, create=True).put(doc)
        self.log({"op": "put", "db": db, "c": name, "doc": doc})

    def remove(self, db, name, _id):
        self.coll(db, name).remove(_id)
        self.log({"op": "del", "db": db, "c": name, "id": _id})


# ---- commands ----

def dup_key_error(index, ns, _id):
    return {"index": index, "code": 11000, "keyPattern": {"_id": 1}, "keyValue": {"_id": _id},
            "errmsg": "E11000 duplicate key error collection: %s index: _id_ dup key: "
                      "{ _id: %r }" % (ns, _id)}


class Commands:
    OPEN = {"hello", "ismaster", "ping", "buildinfo", "endsessions", "saslstart"}

    def __init__(self, store, users=None):
        self.store = store
        self.users = users
        self.conn_ids = itertools.count(1)

    def run(self, conn, db, cmd):
        if not cmd:
            raise CommandError(59, "CommandNotFound", "no such command: ''")
        name = next(iter(cmd))
        fn = getattr(self, "cmd_" + name.lower(), None)
        if fn is None:
            raise CommandError(59, "CommandNotFound", "no such command: '%s'" % name)
        if name.lower() == "saslstart":
            return self.sasl_start(conn, db, cmd)
        if self.users is not None and conn.user is None and name.lower() not in self.OPEN:
            raise CommandError(13, "Unauthorized",
                               "command %s requires authentication" % name)
        with self.store.lock:
            return fn(db, cmd)

    def cmd_saslstart(self, db, cmd):
        raise AssertionError("handled in run()")

    def sasl_start(self, conn, db, cmd):
        """PLAIN (RFC 4616): the payload is authzid NUL user NUL password."""
        if cmd.get("mechanism") != "PLAIN":
            raise CommandError(334, "MechanismUnavailable",
                               "Received authentication for mechanism %s which is not "
                               "enabled (this test server knows PLAIN only)"
                               % cmd.get("mechanism"))
        payload = cmd.get("payload", b"")
        if isinstance(payload, str):        # mongo-c-driver sends it base64-encoded
            payload = base64.b64decode(payload)
        parts = bytes(payload).split(b"\0")
        if len(parts) != 3 or self.users is None or \
                self.users.get(parts[1].decode(errors="replace")) != \
                parts[2].decode(errors="replace"):
            print("authentication failed for user %r" % parts[1:2], flush=True)
            raise CommandError(18, "AuthenticationFailed", "Authentication failed.")
        conn.user = parts[1].decode()
        print("authenticated user %r" % conn.user, flush=True)
        return {"conversationId": 1, "done": True, "payload": b""}

    def cmd_hello(self, db, cmd):
        return {"isWritablePrimary": True, "ismaster": True, "helloOk": True,
                "maxBsonObjectSize": MAX_BSON, "maxMessageSizeBytes": MAX_MESSAGE,
                "maxWriteBatchSize": 100000,
                "localTime": datetime.datetime.now(datetime.timezone.utc),
                "logicalSessionTimeoutMinutes": 30, "connectionId": next(self.conn_ids),
                "minWireVersion": 0, "maxWireVersion": 17, "readOnly": False}

    def cmd_ismaster(self, db, cmd):
        r = self.cmd_hello(db, cmd)
        del r["isWritablePrimary"]
        return r

    def cmd_ping(self, db, cmd):
        return {}

    def cmd_buildinfo(self, db, cmd):
        return {"version": "6.0.0-kvfs-test-server", "versionArray": [6, 0, 0, 0],
                "gitVersion": "kvfs-test-server", "bits": 64, "maxBsonObjectSize": MAX_BSON,
                "storageEngines": ["journal"], "modules": [], "javascriptEngine": "none"}

    def cmd_endsessions(self, db, cmd):
        return {}

    def cmd_find(self, db, cmd):
        name = cmd["find"]
        flt = cmd.get("filter") or {}
        c = self.store.coll(db, name)
        docs = list(c.scan(flt)) if c else []
        sort = cmd.get("sort") or {}
        for field, direction in reversed(list(sort.items())):
            docs.sort(key=lambda d: sort_key(None if get_field(d, field) is MISSING
                                             else get_field(d, field)),
                      reverse=direction < 0)
        skip = int(cmd.get("skip", 0))
        limit = int(cmd.get("limit", 0))
        single = bool(cmd.get("singleBatch", False))
        if limit < 0:
            limit, single = -limit, True
        docs = docs[skip:]
        if limit:
            docs = docs[:limit]
        proj = cmd.get("projection")
        docs = [project(d, proj) for d in docs]
        return self.cursor_reply(db, name, docs, cmd.get("batchSize"), single, "firstBatch")

    def cursor_reply(self, db, name, docs, batch_size, single, field):
        """A cursor's first or next batch: batchSize documents (101 first,
        everything after, when not given), at most 16 MiB of them."""
        if field == "firstBatch":
            n = 101 if batch_size is None else int(batch_size)
        else:
            n = int(batch_size or 0) or len(docs)
        if single and batch_size is None:
            n = len(docs)
        first, size = [], 0
        for d in docs[:n]:
            size += len(bson.encode(d))
            if first and size > MAX_BSON:
                break
            first.append(d)
        rest = [] if single else docs[len(first):]
        cid = 0
        if rest:
            cid = next(self.store.next_cursor)
            self.store.cursors[cid] = (db, name, rest)
        return {"cursor": {field: first, "id": Int64(cid), "ns": "%s.%s" % (db, name)}}

    def cmd_getmore(self, db, cmd):
        cid = int(cmd["getMore"])
        cur = self.store.cursors.pop(cid, None)
        if cur is None:
            raise CommandError(43, "CursorNotFound", "cursor id %d not found" % cid)
        cdb, name, rest = cur
        r = self.cursor_reply(cdb, name, rest, cmd.get("batchSize", len(rest)), False,
                              "nextBatch")
        if r["cursor"]["id"]:
            # keep the same id, as MongoDB does
            self.store.cursors[cid] = self.store.cursors.pop(int(r["cursor"]["id"]))
            r["cursor"]["id"] = Int64(cid)
        return r

    def cmd_killcursors(self, db, cmd):
        killed, missing = [], []
        for cid in cmd.get("cursors", []):
            (killed if self.store.cursors.pop(int(cid), None) else missing).append(Int64(cid))
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [],
                "cursorsUnknown": []}

    def cmd_insert(self, db, cmd):
        name = cmd["insert"]
        ns = "%s.%s" % (db, name)
        ordered = cmd.get("ordered", True)
        n, errors = 0, []
        c = self.store.coll(db, name, create=True)
        for i, doc in enumerate(cmd.get("documents", [])):
            if "_id" not in doc:
                doc = dict(_id=ObjectId(), **doc)
            if sort_key(doc["_id"]) in c.docs:
                errors.append(dup_key_error(i, ns, doc["_id"]))
                if ordered:
                    break
                continue
            self.store.put(db, name, doc)
            n += 1
        r = {"n": n}
        if errors:
            r["writeErrors"] = errors
        return r

    def cmd_update(self, db, cmd):
        name = cmd["update"]
        ns = "%s.%s" % (db, name)
        ordered = cmd.get("ordered", True)
        c = self.store.coll(db, name, create=True)
        n = modified = 0
        upserted, errors = [], []
        for i, u in enumerate(cmd.get("updates", [])):
            try:
                q, upd = u.get("q") or {}, u.get("u") or {}
                if isinstance(upd, list):
                    raise CommandError(9, "FailedToParse", "pipeline updates not supported "
                                       "by this test server")
                found = list(c.scan(q))
                if not u.get("multi"):
                    found = found[:1]
                if found:
                    for doc in found:
                        new = apply_update(doc, upd, False)
                        n += 1
                        if new != doc:
                            modified += 1
                            self.store.put(db, name, new)
                elif u.get("upsert"):
                    base = {k: v for k, v in q.items() if not k.startswith("$") and not (
                        isinstance(v, dict) and v and next(iter(v)).startswith("$"))}
                    if "_id" not in base:
                        base = dict(_id=ObjectId(), **base)
                    new = apply_update(base, upd, True)
                    if "_id" not in new:
                        new["_id"] = base["_id"]
                    if sort_key(new["_id"]) in c.docs:
                        errors.append(dup_key_error(i, ns, new["_id"]))
                        if ordered:
                            break
                        continue
                    self.store.put(db, name, new)
                    n += 1
                    upserted.append({"index": i, "_id": new["_id"]})
            except CommandError as e:
                errors.append({"index": i, "code": e.code, "errmsg": e.msg})
                if ordered:
                    break
        r = {"n": n, "nModified": modified}
        if upserted:
            r["upserted"] = upserted
        if errors:
            r["writeErrors"] = errors
        return r

    def cmd_delete(self, db, cmd):
        name = cmd["delete"]
        c = self.store.coll(db, name)
        n = 0
        for d in cmd.get("deletes", []):
            if c is None:
                break
            found = list(c.scan(d.get("q") or {}))
            if d.get("limit", 0):
                found = found[:1]
            for doc in found:
                self.store.remove(db, name, doc["_id"])
                n += 1
        return {"n": n}

    def cmd_count(self, db, cmd):
        c = self.store.coll(db, cmd["count"])
        return {"n": len(list(c.scan(cmd.get("query") or {}))) if c else 0}

    def cmd_createindexes(self, db, cmd):
        created = self.store.coll(db, cmd["createIndexes"]) is None
        self.store.coll(db, cmd["createIndexes"], create=True)
        for ix in cmd.get("indexes", []):
            if dict(ix.get("key", {})) != {"_id": 1}:
                raise CommandError(115, "CommandNotSupported",
                                   "this test server keeps only the _id index")
        return {"createdCollectionAutomatically": created, "numIndexesBefore": 1,
                "numIndexesAfter": 1, "note": "all indexes already exist"}

    def cmd_listindexes(self, db, cmd):
        name = cmd["listIndexes"]
        if self.store.coll(db, name) is None:
            raise CommandError(26, "NamespaceNotFound", "ns does not exist: %s.%s" % (db, name))
        return self.cursor_reply(db, name, [{"v": 2, "key": {"_id": 1}, "name": "_id_"}],
                                 None, True, "firstBatch")

    def cmd_drop(self, db, cmd):
        name = cmd["drop"]
        if self.store.colls.pop((db, name), None) is None:
            raise CommandError(26, "NamespaceNotFound", "ns not found")
        self.store.log({"op": "drop", "db": db, "c": name})
        return {"ns": "%s.%s" % (db, name), "nIndexesWas": 1}


# ---- the wire ----

class Handler(socketserver.BaseRequestHandler):
    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.request.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("peer closed")
            buf += chunk
        return bytes(buf)

    def send(self, request_id, opcode, payload):
        rid = next(self.server.request_ids)
        self.request.sendall(struct.pack("<iiii", 16 + len(payload), rid, request_id, opcode)
                             + payload)

    def command(self, db, cmd):
        try:
            r = self.server.commands.run(self, db, cmd)
            r["ok"] = 1.0
        except CommandError as e:
            r = {"ok": 0.0, "errmsg": e.msg, "code": e.code, "codeName": e.name}
        except (KeyError, TypeError, ValueError) as e:
            r = {"ok": 0.0, "errmsg": "bad command: %s" % e, "code": 9,
                 "codeName": "FailedToParse"}
        return {k: v for k, v in r.items() if v is not None}

    def handle(self):
        self.user = None
        try:
            while True:
                length, request_id, _, opcode = struct.unpack("<iiii", self.recv_exact(16))
                if length < 16 or length > MAX_MESSAGE:
                    return
                body = self.recv_exact(length - 16)
                if opcode == OP_MSG:
                    self.op_msg(request_id, body)
                elif opcode == OP_QUERY:
                    self.op_query(request_id, body)
                else:
                    return      # OP_COMPRESSED and the legacy write opcodes: not spoken
        except (ConnectionError, OSError):
            pass

    def op_msg(self, request_id, body):
        flags = struct.unpack_from("<I", body, 0)[0]
        end = len(body) - (4 if flags & 1 else 0)
        pos, cmd, seqs = 4, None, {}
        while pos < end:
            kind = body[pos]
            pos += 1
            if kind == 0:
                n = struct.unpack_from("<i", body, pos)[0]
                cmd = bson.decode(body[pos:pos + n], CODEC)
                pos += n
            elif kind == 1:
                size = struct.unpack_from("<i", body, pos)[0]
                stop = pos + size
                nul = body.index(b"\0", pos + 4)
                ident = body[pos + 4:nul].decode()
                docs = bson.decode_all(body[nul + 1:stop], CODEC)
                seqs.setdefault(ident, []).extend(docs)
                pos = stop
            else:
                return
        cmd = dict(cmd or {})
        cmd.update(seqs)
        db = cmd.get("$db", "admin")
        reply = self.command(db, cmd)
        if flags & 2:
            return              # moreToCome: the client wants no answer
        self.send(request_id, OP_MSG, struct.pack("<I", 0) + b"\0" + bson.encode(reply))

    def op_query(self, request_id, body):
        nul = body.index(b"\0", 4)
        ns = body[4:nul].decode()
        pos = nul + 1 + 8
        n = struct.unpack_from("<i", body, pos)[0]
        q = bson.decode(body[pos:pos + n], CODEC)
        if "$query" in q:
            q = q["$query"]
        db, _, coll = ns.partition(".")
        if coll != "$cmd":
            reply = {"$err": "legacy OP_QUERY find is not supported", "code": 5739101,
                     "ok": 0.0}
        else:
            reply = self.command(db, q)
        doc = bson.encode(reply)
        self.send(request_id, OP_REPLY, struct.pack("<iqii", 0, 0, 0, 1) + doc)


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--users", help="file of user:password lines; makes auth required")
    a = ap.parse_args()
    users = None
    if a.users:
        with open(a.users) as f:
            users = dict(line.rstrip("\n").split(":", 1) for line in f if ":" in line)
    os.makedirs(a.data, exist_ok=True)
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.commands = Commands(Store(a.data), users)
    srv.request_ids = itertools.count(1)
    print("kvfs TEST SERVER for the mongodb backend (a MongoDB wire-protocol subset, not "
          "MongoDB) on 127.0.0.1:%d, data in %s" % (a.port, a.data), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
