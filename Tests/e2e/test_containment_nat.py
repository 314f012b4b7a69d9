"""Issue 22 item 1: a guest cannot make libslirp send the host bytes it did not send.

Fake guests on slirpd's stream socket, traffic only to listeners on 127.0.0.1 (10.0.2.2
inside). libslirp 4.7, given a segment with URG and urgent pointer 65535, sends the host
peer its receive buffer's stale heap: another guest's downloaded data included. slirpd's
NATIngressCheck clears URG before libslirp sees the segment.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time

from daemon import Slirpd, metric
from fakeguest import GATEWAY, FakeGuest, tcp_answer, tcp_segment
from guest import HostHTTPServer, free_port, wait_for


class GuestTCP:
    """A TCP client inside a fake guest, just enough for an in-order download: it ACKs
    every in-order segment and re-ACKs anything else."""

    def __init__(self, guest: FakeGuest, gateway_mac: bytes, port: int, sport: int):
        self.guest, self.gateway_mac, self.port, self.sport = guest, gateway_mac, port, sport
        self.seq = 1000
        self.guest.send(self._segment(0x02))
        synack = guest.expect(lambda f: f if tcp_answer(f, sport) == "syn-ack" else None, 10, "SYN-ACK through the NAT")
        l4 = 14 + (synack[14] & 0x0F) * 4
        self.rcv_nxt = (struct.unpack("!I", synack[l4 + 4:l4 + 8])[0] + 1) % 2**32
        self.seq += 1
        self.guest.send(self._segment(0x10))

    def _segment(self, flags: int, payload: bytes = b"", urgent: int = 0) -> bytes:
        return tcp_segment(self.guest.mac, self.gateway_mac, self.guest.ip, GATEWAY, self.sport, self.port, flags,
                           seq=self.seq, ack=self.rcv_nxt if flags & 0x10 else 0, payload=payload, urgent=urgent)

    def send(self, payload: bytes, flags: int = 0x18, urgent: int = 0) -> None:
        self.guest.send(self._segment(flags, payload, urgent))
        self.seq = (self.seq + len(payload)) % 2**32

    def reset(self) -> None:
        """Ends the connection with a RST: libslirp frees its socket and buffers at once."""
        self.guest.send(self._segment(0x04))

    def receive_until_fin(self, timeout: float) -> bytes:
        data = bytearray()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frame = self.guest.recv_frame(left)
            if frame is None:
                break
            if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
                continue
            l4 = 14 + (frame[14] & 0x0F) * 4
            if struct.unpack("!H", frame[l4 + 2:l4 + 4])[0] != self.sport:
                continue
            seq = struct.unpack("!I", frame[l4 + 4:l4 + 8])[0]
            flags = frame[l4 + 13]
            payload = frame[l4 + (frame[l4 + 12] >> 4) * 4:14 + struct.unpack("!H", frame[16:18])[0]]
            if flags & 0x04:
                raise ConnectionResetError("the NAT reset the download")
            if seq == self.rcv_nxt:
                data += payload
                self.rcv_nxt = (self.rcv_nxt + len(payload) + (1 if flags & 0x01 else 0)) % 2**32
                self.guest.send(self._segment(0x10))
                if flags & 0x01:
                    return bytes(data)
            elif payload or flags & 0x01:
                self.guest.send(self._segment(0x10))
        raise TimeoutError(f"download incomplete after {timeout}s: {len(data)} bytes")


class OOBListener:
    """A listener on 127.0.0.1 that reads everything each connection receives, urgent
    data in line (SO_OOBINLINE)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.per_connection: list[bytearray] = []
        self.lock = threading.Lock()
        self.connections = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        readers = []
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            self.connections += 1
            reader = threading.Thread(target=self._read, args=(conn,), daemon=True)
            reader.start()
            readers.append(reader)
        for reader in readers:
            reader.join(5)

    @property
    def received(self) -> bytes:
        with self.lock:
            return b"".join(self.per_connection)

    def _read(self, conn: socket.socket):
        with self.lock:
            mine = bytearray()
            self.per_connection.append(mine)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        conn.settimeout(0.2)
        # Bounded: far more than any honest probe, and enough to see a leak.
        while not self.stopping and len(mine) < 64 << 20:
            try:
                chunk = conn.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            with self.lock:
                mine += chunk
        conn.close()

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


def test_the_urgent_pointer_probe_delivers_only_the_attackers_bytes_while_another_guest_downloads(tmp_path):
    token = secrets.token_hex(6)
    marker = f"MARKER-{token}"
    body = "".join(f"{marker} line {n:06d} of the honest guest's file\n" for n in range(6000)).encode()
    sock = str(tmp_path / "s.sock")
    dns = free_port()  # dns-upstream is never used here: no guest resolves
    with HostHTTPServer(body=body) as web, Slirpd(["-o", f"dns-upstream=127.0.0.1:{dns}", "--stream", sock], tmp_path) as d:
        honest = FakeGuest(("stream", sock), "52:54:00:22:00:01", ip="10.0.2.31", timeout=30)
        attacker = FakeGuest(("stream", sock), "52:54:00:22:00:02", ip="10.0.2.32", timeout=30)
        listener = OOBListener()
        try:
            honest_gw = honest.arp_gateway()
            attacker_gw = attacker.arp_gateway()

            def download(sport: int) -> bytes:
                conn = GuestTCP(honest, honest_gw, web.port, sport)
                conn.send(f"GET / HTTP/1.0\r\nHost: 10.0.2.2\r\n\r\n".encode())
                reply = conn.receive_until_fin(40)
                conn.reset()
                return reply.split(b"\r\n\r\n", 1)[1]

            # The honest guest's file passes through libslirp's buffers first, twice, and
            # they are freed each time (its connection ends with a RST), so libslirp's heap
            # has held marker lines. Whether a leak would carry them depends on the
            # allocator (without NATIngressCheck this run leaked 200 MB, zeros here); the
            # length check below catches a leak either way.
            assert download(41000) == body
            assert download(41001) == body
            # Then again while the attacker probes.
            second: dict = {}
            t = threading.Thread(target=lambda: second.update(body=download(41002)), daemon=True)
            t.start()
            probes = []
            for n in range(3):
                probe = GuestTCP(attacker, attacker_gw, listener.port, 42000 + n)
                attack = f"ATTACK-{n:03d}".encode()[:10]
                probe.send(attack, flags=0x38, urgent=65535)  # PSH|ACK|URG
                probes.append(attack)
            sent = b"".join(probes)
            wait_for(lambda: len(listener.received) >= len(sent), 10, what="the listener to read the probes")
            t.join(60)
            time.sleep(1)  # what a leak would add arrives within milliseconds (issue 22: 12.6 MB in under 1 s)
            received = bytes(listener.received)
            assert marker.encode() not in received
            assert len(received) == len(sent), f"the listener read {len(received)} bytes for {len(sent)} sent"
            with listener.lock:
                assert sorted(bytes(c) for c in listener.per_connection) == sorted(probes)
            assert second.get("body") == body, "the honest guest's second download failed"
            assert d.alive()
            assert "fixed a frame from" in d.log
            assert metric(d, "slirpd_nat_ingress_rewritten_total") >= len(probes)
        finally:
            listener.close()
            honest.close()
            attacker.close()
