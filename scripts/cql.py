#!/usr/bin/env python3
"""Tiny CQL native-protocol v4 client (standard library only).

Usage: cql.py [--timeout SECONDS] [--keyspace KS] HOST:PORT [QUERY ...]

Connects, sends STARTUP {"CQL_VERSION": "3.0.0"} and expects READY, then runs
each QUERY at consistency ONE and prints its result:
  rows        one line per row, columns separated by TAB (NULL for null)
  others      a line such as "VOID", "SET_KEYSPACE ks", "SCHEMA_CHANGE ..."
Exit status: 0 on success, 1 on a server ERROR frame or a protocol problem,
2 on a connection failure (refused, timed out) -- handy for readiness probes.
No authentication, compression, paging or prepared statements.
"""
import argparse
import datetime
import ipaddress
import socket
import struct
import sys
import uuid

VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_QUERY, OP_RESULT = 0x00, 0x01, 0x02, 0x07, 0x08
CONSISTENCY_ONE = 0x0001


class CqlError(Exception):
    pass


def _string(s):
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


def _long_string(s):
    b = s.encode("utf-8")
    return struct.pack(">i", len(b)) + b


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise CqlError("truncated frame body")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self):
        return self.take(1)[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def string(self):
        return self.take(self.short()).decode("utf-8")

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def option(self):
        """Returns a type description: (id, sub-types...)"""
        tid = self.short()
        if tid == 0x0000:
            return (tid, self.string())
        if tid in (0x0020, 0x0022):  # list, set
            return (tid, self.option())
        if tid == 0x0021:  # map
            return (tid, self.option(), self.option())
        if tid == 0x0030:  # UDT
            ks, name = self.string(), self.string()
            fields = [(self.string(), self.option()) for _ in range(self.short())]
            return (tid, ks, name, fields)
        if tid == 0x0031:  # tuple
            return (tid, [self.option() for _ in range(self.short())])
        return (tid,)


def decode(typ, raw):
    if raw is None:
        return "NULL"
    tid = typ[0]
    if tid in (0x0001, 0x000D):  # ascii, varchar
        return raw.decode("utf-8", "replace")
    if tid in (0x0002, 0x0005, 0x0013, 0x0014, 0x0009, 0x000E):
        # bigint, counter, smallint, tinyint, int, varint
        return str(int.from_bytes(raw, "big", signed=True))
    if tid == 0x0004:
        return "true" if raw and raw[0] else "false"
    if tid == 0x0007:
        return repr(struct.unpack(">d", raw)[0])
    if tid == 0x0008:
        return repr(struct.unpack(">f", raw)[0])
    if tid in (0x000C, 0x000F):
        return str(uuid.UUID(bytes=raw))
    if tid == 0x000B:
        ms = int.from_bytes(raw, "big", signed=True)
        return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat()
    if tid == 0x0010:
        return str(ipaddress.ip_address(raw))
    return "0x" + raw.hex()


class Connection:
    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.stream = 0

    def close(self):
        self.sock.close()

    def _recv_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed by server")
            buf += chunk
        return buf

    def request(self, opcode, body):
        self.stream = (self.stream + 1) % 0x7FFF
        header = struct.pack(">BBhBi", VERSION, 0, self.stream, opcode, len(body))
        self.sock.sendall(header + body)
        while True:
            version, flags, stream, op, length = struct.unpack(">BBhBi", self._recv_exact(9))
            body = self._recv_exact(length)
            if version & 0x7F != VERSION:
                raise CqlError("unexpected protocol version 0x%02x" % version)
            if stream == self.stream:
                break  # skip events (stream -1) and anything else
        if flags & 0x01:
            raise CqlError("compressed frame (not requested)")
        r = Reader(body)
        if flags & 0x02:  # tracing id
            r.take(16)
        if flags & 0x08:  # warnings
            for _ in range(r.short()):
                print("cql.py: warning: %s" % r.string(), file=sys.stderr)
        if flags & 0x04:  # custom payload
            for _ in range(r.short()):
                r.string()
                r.bytes()
        body = body[r.pos:]
        if op == OP_ERROR:
            r = Reader(body)
            code = r.int()
            raise CqlError("server error 0x%04x: %s" % (code, r.string()))
        return op, body

    def startup(self):
        body = struct.pack(">H", 1) + _string("CQL_VERSION") + _string("3.0.0")
        op, _ = self.request(OP_STARTUP, body)
        if op != OP_READY:
            raise CqlError("expected READY, got opcode 0x%02x (authentication?)" % op)

    def query(self, cql):
        body = _long_string(cql) + struct.pack(">HB", CONSISTENCY_ONE, 0)
        op, body = self.request(OP_QUERY, body)
        if op != OP_RESULT:
            raise CqlError("expected RESULT, got opcode 0x%02x" % op)
        return parse_result(Reader(body))


def parse_result(r):
    kind = r.int()
    if kind == 0x0001:
        return ["VOID"]
    if kind == 0x0003:
        return ["SET_KEYSPACE " + r.string()]
    if kind == 0x0005:
        change, target = r.string(), r.string()
        rest = [r.string()]
        if target != "KEYSPACE":
            rest.append(r.string())
        return ["SCHEMA_CHANGE %s %s %s" % (change, target, " ".join(rest))]
    if kind != 0x0002:
        return ["RESULT kind %d" % kind]
    flags = r.int()
    ncols = r.int()
    if flags & 0x0002:
        r.bytes()  # paging state
    types = []
    if not flags & 0x0004:
        global_spec = flags & 0x0001
        if global_spec:
            r.string()
            r.string()
        for _ in range(ncols):
            if not global_spec:
                r.string()
                r.string()
            r.string()  # column name
            types.append(r.option())
    else:
        types = [(0xFFFF,)] * ncols
    out = []
    for _ in range(r.int()):
        out.append("\t".join(decode(types[i], r.bytes()) for i in range(ncols)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--keyspace", help="USE this keyspace first")
    ap.add_argument("address", help="HOST:PORT")
    ap.add_argument("queries", nargs="*")
    args = ap.parse_args()
    host, _, port = args.address.rpartition(":")
    try:
        conn = Connection(host or "127.0.0.1", int(port), args.timeout)
    except OSError as e:
        print("cql.py: cannot connect to %s: %s" % (args.address, e), file=sys.stderr)
        return 2
    try:
        conn.startup()
        queries = (["USE " + args.keyspace] if args.keyspace else []) + args.queries
        for q in queries:
            for line in conn.query(q):
                print(line)
    except (OSError, ConnectionError) as e:
        print("cql.py: connection problem: %s" % e, file=sys.stderr)
        return 2
    except CqlError as e:
        print("cql.py: %s" % e, file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
