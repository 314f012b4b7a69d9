"""Helpers for bulk TCP tests: host peers on 127.0.0.1 that send or receive a payload
and hash it, and a small pcap reader for TCP handshakes (window scale, windows).

Every server here binds 127.0.0.1, accepts a fixed number of connections and gives up at
a deadline, so a test that goes wrong cannot leave it running.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

CHUNK = 1 << 20

# Run with python3 -c in a namespace: sends SIZE deterministic bytes to HOST:PORT (argv 1-3),
# half-closes, prints its sha256 and the server's reply.
SHA_SENDER = """
import hashlib, socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=30)
h = hashlib.sha256()
block = bytes(range(256)) * 256
sent = 0
while sent < size:
    chunk = block[: min(len(block), size - sent)]
    s.sendall(chunk); h.update(chunk); sent += len(chunk)
s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    b = s.recv(4096)
    if not b: break
    reply += b
print(h.hexdigest(), reply.decode())
"""


def repeated_sha256(blob: bytes, times: int) -> str:
    h = hashlib.sha256()
    for _ in range(times):
        h.update(blob)
    return h.hexdigest()


def receive_and_hash(conn: socket.socket) -> tuple[int, str]:
    """Reads until EOF; returns (bytes, sha256 hex)."""
    h, n = hashlib.sha256(), 0
    while data := conn.recv(CHUNK):
        h.update(data)
        n += len(data)
    return n, h.hexdigest()


def send_then_close(payload: bytes, times: int = 1) -> Callable[[socket.socket], int]:
    """A handler that sends payload `times` times, half-closes, and waits for the peer to
    close (so the data is known delivered); returns the bytes sent."""
    def handler(conn: socket.socket) -> int:
        view, sent = memoryview(payload), 0
        for _ in range(times):
            for at in range(0, len(view), CHUNK):
                conn.sendall(view[at:at + CHUNK])
                sent += min(CHUNK, len(view) - at)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(CHUNK):
            pass
        return sent
    return handler


class HostPeer:
    """Listens on 127.0.0.1 or ::1 (random port) for `count` connections; each runs `handler(conn)`
    in its own thread (the i-th accepted one gets handlers[i] when a list is given).
    results() waits for all of them and returns their return values in accept order,
    re-raising the first failure. Everything stops at `timeout` seconds."""

    def __init__(self, handler, count: int = 1, timeout: float = 300, rcvbuf: Optional[int] = None,
                 host: str = "127.0.0.1"):
        self.handlers = handler if isinstance(handler, list) else [handler] * count
        self.count = len(self.handlers)
        self.deadline = time.monotonic() + timeout
        assert host in ("127.0.0.1", "::1"), "host peers listen on loopback only"
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:   # set before listen so accepted sockets inherit it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((host, 0))
        self.sock.listen(self.count)
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._results: list = [None] * self.count
        self._errors: list[BaseException] = []
        self._workers: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _left(self) -> float:
        return max(0.1, self.deadline - time.monotonic())

    def _accept(self) -> None:
        for i in range(self.count):
            self.sock.settimeout(self._left())
            try:
                conn, _ = self.sock.accept()
            except OSError as e:
                self._errors.append(e)
                return
            conn.settimeout(self._left())
            self.accepted.append(conn)
            t = threading.Thread(target=self._work, args=(i, conn), daemon=True)
            self._workers.append(t)
            t.start()

    def _work(self, i: int, conn: socket.socket) -> None:
        try:
            with conn:
                self._results[i] = self.handlers[i](conn)
        except BaseException as e:  # noqa: BLE001 - handed to the test in results()
            self._errors.append(e)

    def results(self) -> list:
        self._acceptor.join(self._left())
        for t in list(self._workers):
            t.join(self._left())
        if self._errors:
            raise self._errors[0]
        if self._acceptor.is_alive() or any(t.is_alive() for t in self._workers):
            raise TimeoutError(f"host peer on port {self.port}: {len(self.accepted)}/{self.count} connections, "
                               "not all finished in time")
        return self._results

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self) -> "HostPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- pcap -------------------------------------------------------------------------------

@dataclass
class Segment:
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    options: dict = field(default_factory=dict)   # kind -> raw bytes (WS: 3 -> b"\x07")
    payload: int = 0

    SYN, ACK, RST, FIN = 0x02, 0x10, 0x04, 0x01

    @property
    def is_syn(self) -> bool:
        return bool(self.flags & self.SYN) and not self.flags & self.ACK

    @property
    def is_synack(self) -> bool:
        return bool(self.flags & self.SYN) and bool(self.flags & self.ACK)

    @property
    def window_scale(self) -> Optional[int]:
        ws = self.options.get(3)
        return ws[0] if ws else None


def tcp_options(raw: bytes) -> dict:
    out, i = {}, 0
    while i < len(raw):
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2:
            break
        length = raw[i + 1]
        out[kind] = raw[i + 2:i + length]
        i += length
    return out


def read_pcap_tcp(path, port: Optional[int] = None) -> list[Segment]:
    """IPv4 and IPv6 TCP segments of an Ethernet pcap (micro- or nanosecond), optionally only those
    to or from `port`. Frames cut short by the snap length still give their headers."""
    data = open(path, "rb").read()
    assert len(data) >= 24, f"{path}: no pcap header ({len(data)} bytes)"
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise AssertionError(f"{path}: not a pcap file (magic {magic.hex()})")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    assert linktype == 1, f"{path}: link type {linktype}, expected Ethernet"
    out, at = [], 24
    while at + 16 <= len(data):
        incl, orig = struct.unpack(endian + "II", data[at + 8:at + 16])
        frame = data[at + 16:at + 16 + incl]
        at += 16 + incl
        if len(frame) >= 34 and frame[12:14] == b"\x08\x00" and frame[23] == 6:
            ihl = (frame[14] & 0x0F) * 4
            t, size = 14 + ihl, struct.unpack("!H", frame[16:18])[0] - ihl
            src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
        elif len(frame) >= 54 and frame[12:14] == b"\x86\xdd" and frame[20] == 6:   # no extension headers
            t, size = 54, struct.unpack("!H", frame[18:20])[0]
            src, dst = (socket.inet_ntop(socket.AF_INET6, frame[a:a + 16]) for a in (22, 38))
        else:
            continue
        if len(frame) < t + 20:
            continue
        sport, dport, seq, ack, off, flags, window = struct.unpack("!HHIIBBH", frame[t:t + 16])
        if port is not None and port not in (sport, dport):
            continue
        hlen = (off >> 4) * 4
        out.append(Segment(src, dst, sport, dport, seq, ack, flags, window, tcp_options(frame[t + 20:t + hlen]),
                           payload=size - hlen))
    return out
