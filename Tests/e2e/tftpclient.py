"""A small TFTP client for the e2e tests, run inside a namespace: it can drop a DATA
block on purpose and re-ACK the block before, to check that the server resends the
missing block and never the next (issue 23).

    python3 tftpclient.py get SERVER NAME OUT [--drop N] [--blksize B] [--windowsize W]
    python3 tftpclient.py error SERVER NAME      -> prints "ERROR code message"

`get` prints one JSON line: bytes, blocks, the sha256, and what happened after the drop.
"""

import hashlib
import json
import socket
import struct
import sys
import time


def rrq(name: str, options: dict) -> bytes:
    p = struct.pack("!H", 1) + name.encode() + b"\0octet\0"
    for k, v in options.items():
        p += k.encode() + b"\0" + str(v).encode() + b"\0"
    return p


def ack(n: int) -> bytes:
    return struct.pack("!HH", 4, n & 0xFFFF)


def get(server: str, name: str, out: str, drop: int = 0, options: dict = None, deadline: float = 120):
    options = options or {}
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(rrq(name, options), (server, 69))
    blksize = 512
    expected = 1          # absolute number of the next block wanted
    h = hashlib.sha256()
    total = 0
    dropped = False
    after_drop = []        # absolute-block meaning of the wire numbers received right after the drop
    windowsize = 1
    end = time.monotonic() + deadline
    peer = None
    with open(out, "wb") as f:
        while time.monotonic() < end:
            try:
                data, peer = s.recvfrom(70000)
            except socket.timeout:
                s.sendto(ack(expected - 1) if expected > 1 or not options else ack(0), peer or (server, 69))
                continue
            op = struct.unpack("!H", data[:2])[0]
            if op == 5:
                code = struct.unpack("!H", data[2:4])[0]
                return {"error": code, "message": data[4:].split(b"\0")[0].decode()}
            if op == 6:
                parts = data[2:].split(b"\0")
                o = {parts[i].decode().lower(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2)}
                blksize = int(o.get("blksize", 512))
                windowsize = int(o.get("windowsize", 1))
                s.sendto(ack(0), peer)
                continue
            if op != 3:
                continue
            n = struct.unpack("!H", data[2:4])[0]
            payload = data[4:]
            if dropped and len(after_drop) < 4:
                after_drop.append(n)
            if n != expected & 0xFFFF:
                # Out of order (a window after a gap, or a duplicate): ACK the last good one
                # only at the end of what would be a window, as RFC 7440 receivers do.
                continue
            if drop and expected == drop and not dropped:
                dropped = True   # as if the NIC lost it: no ACK; re-ACK the one before, twice
                s.sendto(ack(expected - 1), peer)
                time.sleep(0.3)
                s.sendto(ack(expected - 1), peer)
                continue
            f.write(payload)
            h.update(payload)
            total += len(payload)
            expected += 1
            if len(payload) < blksize:
                s.sendto(ack(expected - 1), peer)
                return {"bytes": total, "blocks": expected - 1, "sha256": h.hexdigest(), "after_drop": after_drop}
            if (expected - 1) % windowsize == 0:
                s.sendto(ack(expected - 1), peer)
    return {"timeout": True, "bytes": total}


def error(server: str, name: str):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(rrq(name, {}), (server, 69))
    data, _ = s.recvfrom(70000)
    op, code = struct.unpack("!HH", data[:4])
    return {"op": op, "code": code, "message": data[4:].split(b"\0")[0].decode(errors="replace")}


if __name__ == "__main__":
    cmd, server, name = sys.argv[1:4]
    if cmd == "error":
        print(json.dumps(error(server, name)))
    else:
        args = sys.argv[5:]
        opts = {}
        drop = 0
        for i in range(0, len(args), 2):
            if args[i] == "--drop":
                drop = int(args[i + 1])
            else:
                opts[args[i][2:]] = int(args[i + 1])
        print(json.dumps(get(server, name, sys.argv[4], drop, opts)))
