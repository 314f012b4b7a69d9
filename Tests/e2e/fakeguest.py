"""Fake guests: Python sockets that speak slirpd's guest transports without a QEMU.

A fake guest costs a socket instead of a boot, so fault tests and the soak can attach
hundreds of them, make them misbehave on purpose (vanish mid-frame, stop reading, leave a
dangling datagram socket) and check what slirpd answers. Frames are built here field by
field: ARP requests, a DHCP DISCOVER, ICMP echo requests, and padded broadcasts.

Traffic rule: everything a fake guest sends stays inside slirpd. It asks slirpd's own
DHCP server, pings slirpd's DNS address (which slirpd answers itself), ARPs for the
gateway (libslirp answers) and broadcasts an ethertype nobody handles. The one thing
that reaches the host is a TCP SYN built with tcp_segment(), which tests aim at a
listener of their own on 127.0.0.1 (10.0.2.2 inside).
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import time
from typing import Optional

BROADCAST = b"\xff" * 6
ETH_IPV4, ETH_ARP = 0x0800, 0x0806
# IEEE 802's local experimental ethertype: slirpd floods it, libslirp and Linux ignore it.
ETH_EXPERIMENTAL = 0x88B5
GATEWAY, DNS = "10.0.2.2", "10.0.2.3"


# --- frames -----------------------------------------------------------------------

def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def fake_mac(n: int) -> str:
    """A locally administered unicast MAC, one per n (52:54:00 is QEMU's; 02:fa:... is ours)."""
    return "02:fa:" + ":".join(f"{b:02x}" for b in n.to_bytes(4, "big"))


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: bytes, src: str, ethertype: int, payload: bytes) -> bytes:
    frame = dst + mac_bytes(src) + struct.pack("!H", ethertype) + payload
    return frame + b"\0" * max(0, 60 - len(frame))


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: Optional[int] = None, fragment: int = 0) -> bytes:
    """An IPv4 packet with a valid header checksum; `fragment` is the flags and offset field."""
    ident = random.getrandbits(16) if ident is None else ident
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, fragment, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header[:10] + struct.pack("!H", inet_checksum(header)) + header[12:] + payload


def arp_request(mac: str, sender_ip: str, target_ip: str, pad_to: int = 60) -> bytes:
    """Who has target_ip? A broadcast, optionally padded (Ethernet padding, as any NIC may add)."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_IPV4, 6, 4, 1, mac_bytes(mac), socket.inet_aton(sender_ip),
                      b"\0" * 6, socket.inet_aton(target_ip))
    frame = ethernet(BROADCAST, mac, ETH_ARP, arp)
    return frame + b"\0" * max(0, pad_to - len(frame))


def dhcp_discover(mac: str, xid: int) -> bytes:
    """A DHCP DISCOVER from 0.0.0.0:68 to 255.255.255.255:67, as a client without an address sends it."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, b"\0" * 4,
                        b"\0" * 4, b"\0" * 4, mac_bytes(mac), b"", b"")
    options = b"\x63\x82\x53\x63" + bytes([53, 1, 1]) + bytes([55, 3, 1, 3, 6]) + b"\xff"
    payload = bootp + options
    payload += b"\0" * max(0, 300 - len(payload))
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload  # UDP checksum 0: none, valid in IPv4
    return ethernet(BROADCAST, mac, ETH_IPV4, ipv4("0.0.0.0", "255.255.255.255", 17, udp))


def dhcp_request(mac: str, xid: int, address: str, server: str) -> bytes:
    """A DHCP REQUEST for `address` offered by `server`, broadcast as in the SELECTING state."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, b"\0" * 4,
                        b"\0" * 4, b"\0" * 4, mac_bytes(mac), b"", b"")
    options = (b"\x63\x82\x53\x63" + bytes([53, 1, 3]) + bytes([50, 4]) + socket.inet_aton(address)
               + bytes([54, 4]) + socket.inet_aton(server) + bytes([55, 3, 1, 3, 6]) + b"\xff")
    payload = bootp + options
    payload += b"\0" * max(0, 300 - len(payload))
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    return ethernet(BROADCAST, mac, ETH_IPV4, ipv4("0.0.0.0", "255.255.255.255", 17, udp))


def icmp_echo(mac: str, dst_mac: bytes, src_ip: str, dst_ip: str, ident: int, seq: int, size: int = 56) -> bytes:
    body = struct.pack("!HH", ident, seq) + bytes(size)
    icmp = struct.pack("!BBH", 8, 0, 0) + body
    icmp = icmp[:2] + struct.pack("!H", inet_checksum(icmp)) + icmp[4:]
    return ethernet(dst_mac, mac, ETH_IPV4, ipv4(src_ip, dst_ip, 1, icmp))


def tcp_segment(mac: str, dst_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int, flags: int,
                seq: int = 0, ack: int = 0, payload: bytes = b"", urgent: int = 0) -> bytes:
    """A TCP segment (SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, URG 0x20) with a valid checksum."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, urgent) + payload
    pseudo = socket.inet_aton(src_ip) + socket.inet_aton(dst_ip) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", inet_checksum(pseudo + tcp)) + tcp[18:]
    return ethernet(dst_mac, mac, ETH_IPV4, ipv4(src_ip, dst_ip, 6, tcp))


def junk_broadcast(mac: str, size: int = 1400) -> bytes:
    """A broadcast of `size` bytes that the switch floods to every guest and nobody answers."""
    return ethernet(BROADCAST, mac, ETH_EXPERIMENTAL, b"slirpd-fault-test".ljust(size - 14, b"\0"))


# --- reading what comes back ---------------------------------------------------------

def dhcp_reply_type(frame: bytes, xid: int) -> Optional[int]:
    """The DHCP message type (2 OFFER, 5 ACK, 6 NAK) if frame answers transaction xid."""
    if len(frame) < 14 + 20 + 8 + 240 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV4 or frame[23] != 17:
        return None
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    if struct.unpack("!H", frame[udp + 2:udp + 4])[0] != 68:
        return None
    bootp = udp + 8
    if frame[bootp] != 2 or struct.unpack("!I", frame[bootp + 4:bootp + 8])[0] != xid:
        return None
    at = bootp + 240
    while at + 1 < len(frame) and frame[at] != 255:
        if frame[at] == 0:
            at += 1
            continue
        if frame[at] == 53:
            return frame[at + 2]
        at += 2 + frame[at + 1]
    return None


def dhcp_offered(frame: bytes, xid: int) -> Optional[tuple[str, str]]:
    """(offered address, server identifier) if frame is a DHCP OFFER for transaction xid."""
    if dhcp_reply_type(frame, xid) != 2:
        return None
    bootp = 14 + (frame[14] & 0x0F) * 4 + 8
    address = socket.inet_ntoa(frame[bootp + 16:bootp + 20])
    at = bootp + 240
    while at + 1 < len(frame) and frame[at] != 255:
        if frame[at] == 0:
            at += 1
            continue
        if frame[at] == 54 and frame[at + 1] == 4:
            return address, socket.inet_ntoa(frame[at + 2:at + 6])
        at += 2 + frame[at + 1]
    return None


def arp_reply_mac(frame: bytes, ip: str) -> Optional[bytes]:
    """The MAC in an ARP reply from ip, if frame is one."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_ARP:
        return None
    op, sender_mac, sender_ip = struct.unpack("!H6s4s", frame[20:32])
    return sender_mac if op == 2 and sender_ip == socket.inet_aton(ip) else None


def tcp_answer(frame: bytes, sport: int) -> Optional[str]:
    """What came back for a TCP segment sent from port `sport`: "syn-ack", "rst", or
    "icmp-unreachable" (an ICMP error quoting it); None for anything else."""
    if len(frame) < 34 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV4:
        return None
    l4 = 14 + (frame[14] & 0x0F) * 4
    if frame[23] == 6 and len(frame) >= l4 + 14 and struct.unpack("!H", frame[l4 + 2:l4 + 4])[0] == sport:
        flags = frame[l4 + 13]
        if flags & 0x04:
            return "rst"
        if flags & 0x12 == 0x12:
            return "syn-ack"
    if frame[23] == 1 and frame[l4] == 3 and len(frame) >= l4 + 8 + 20 + 4:
        quoted = l4 + 8 + (frame[l4 + 8] & 0x0F) * 4
        if struct.unpack("!H", frame[quoted:quoted + 2])[0] == sport:
            return "icmp-unreachable"
    return None


def is_echo_reply(frame: bytes, ident: int) -> bool:
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV4 or frame[23] != 1:
        return False
    icmp = 14 + (frame[14] & 0x0F) * 4
    return frame[icmp] == 0 and struct.unpack("!H", frame[icmp + 4:icmp + 6])[0] == ident


# --- transports ------------------------------------------------------------------------

def prefixed(frame: bytes) -> bytes:
    """The stream transports' framing: a 4-byte big-endian length, then the frame."""
    return struct.pack("!I", len(frame)) + frame


class FakeGuest:
    """One guest with MAC `mac` on a stream (Unix or TCP) or datagram endpoint of slirpd.

    `endpoint` is ("stream", path), ("tcp", (host, port)) or ("dgram", (slirpd_path, own_path)).
    """

    def __init__(self, endpoint: tuple, mac: str, ip: Optional[str] = None, timeout: float = 10):
        self.kind, where = endpoint
        self.mac, self.ip = mac, ip
        self._pending = b""
        self.own_path: Optional[str] = None
        if self.kind == "stream":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(where)
        elif self.kind == "tcp":
            self.sock = socket.create_connection(where, timeout=timeout)
        elif self.kind == "dgram":
            self.remote, self.own_path = where
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(self.own_path)
            self.sock.settimeout(timeout)
        else:
            raise ValueError(f"unknown transport {self.kind!r}")

    @classmethod
    def on_socket(cls, sock: socket.socket, mac: str, ip: Optional[str] = None,
                  remote: Optional[str] = None) -> "FakeGuest":
        """A guest on a socket set up elsewhere (e.g. inside a container, as another user):
        a connected stream socket, or a bound datagram socket sending to `remote`."""
        guest = cls.__new__(cls)
        guest.kind = "stream" if sock.type == socket.SOCK_STREAM else "dgram"
        guest.mac, guest.ip = mac, ip
        guest._pending, guest.own_path, guest.sock = b"", None, sock
        guest.remote = remote
        return guest

    def send(self, frame: bytes) -> None:
        if self.kind == "dgram":
            self.sock.sendto(frame, self.remote)
        else:
            self.sock.sendall(prefixed(frame))

    def send_raw(self, data: bytes) -> None:
        """Bytes as they are: a stream guest's partial prefix or frame."""
        self.sock.sendall(data)

    def recv_frame(self, timeout: float) -> Optional[bytes]:
        """The next frame slirpd sent, or None once `timeout` passes without one."""
        deadline = time.monotonic() + timeout
        while True:
            if self.kind != "dgram" and len(self._pending) >= 4:
                length = struct.unpack("!I", self._pending[:4])[0]
                if len(self._pending) >= 4 + length:
                    frame, self._pending = self._pending[4:4 + length], self._pending[4 + length:]
                    return frame
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            if self.kind == "dgram":
                return self.sock.recv(65536)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("slirpd closed the connection")
            self._pending += data

    def expect(self, match, timeout: float = 10, what: str = "a reply"):
        """Reads frames until match(frame) is truthy, which is returned; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frame = self.recv_frame(left)
            if frame is None:
                break
            if (value := match(frame)):
                return value
        raise TimeoutError(f"fake guest {self.mac} ({self.kind}): no {what} within {timeout}s")

    # --- what a guest does on attaching ---

    def dhcp_offer(self, timeout: float = 10) -> None:
        xid = random.getrandbits(32)
        self.send(dhcp_discover(self.mac, xid))
        self.expect(lambda f: dhcp_reply_type(f, xid) == 2, timeout, "DHCP OFFER")

    def dhcp_lease(self, timeout: float = 10) -> str:
        """DISCOVER, OFFER, REQUEST, ACK: the leased address, which becomes self.ip."""
        xid = random.getrandbits(32)
        self.send(dhcp_discover(self.mac, xid))
        address, server = self.expect(lambda f: dhcp_offered(f, xid), timeout, "DHCP OFFER")
        self.send(dhcp_request(self.mac, xid, address, server))
        self.expect(lambda f: dhcp_reply_type(f, xid) == 5, timeout, "DHCP ACK")
        self.ip = address
        return address

    def arp_gateway(self, timeout: float = 10) -> bytes:
        self.send(arp_request(self.mac, self.ip, GATEWAY))
        return self.expect(lambda f: arp_reply_mac(f, GATEWAY), timeout, "ARP reply from the gateway")

    def ping_dns(self, count: int = 3, timeout: float = 10) -> None:
        """Echo requests to slirpd's DNS address, which slirpd answers itself."""
        self.send(arp_request(self.mac, self.ip, DNS))
        dns_mac = self.expect(lambda f: arp_reply_mac(f, DNS), timeout, f"ARP reply for {DNS}")
        ident = random.getrandbits(16)
        for seq in range(count):
            self.send(icmp_echo(self.mac, dns_mac, self.ip, DNS, ident, seq))
            self.expect(lambda f: is_echo_reply(f, ident), timeout, "ICMP echo reply from the DNS address")

    def exchange(self, timeout: float = 10) -> None:
        """A guest's first moments: DHCP DISCOVER, ARP for the gateway, pings to the DNS
        address and a few broadcasts, checking every answer."""
        self.dhcp_offer(timeout)
        self.arp_gateway(timeout)
        self.ping_dns(2, timeout)
        for _ in range(3):
            self.send(junk_broadcast(self.mac, 200))

    # --- ways to leave ---

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Closes with SO_LINGER 0: a TCP peer sees a reset rather than a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def vanish(self) -> None:
        """Closes; a datagram guest's socket file disappears first."""
        if self.own_path and os.path.exists(self.own_path):
            os.unlink(self.own_path)
        self.sock.close()

    def __enter__(self) -> "FakeGuest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- churn: many short-lived guests, each leaving in its own way -------------------------

# How a churning guest leaves. Stream and TCP: a clean close; a close in the middle of a
# frame or of a length prefix; a reset (SO_LINGER 0); a guest that stopped reading and
# leaves with frames unread; one that connects and leaves without a word. Datagram: the
# socket file disappears while the socket lives on for a moment, or the socket closes and
# its file stays (slirpd finds out on its next send), or it stops reading first.
STREAM_ENDINGS = ("close", "mid-frame", "half-prefix", "reset", "stop-reading", "silent")
DGRAM_ENDINGS = ("vanish", "close-keep-file", "stop-reading")


def churn_cycle(n: int, endpoints: dict, scratch: str, mac_pool: int = 64) -> str:
    """Cycle n: one fake guest attaches on endpoints["stream"|"tcp"|"dgram"] (taking
    turns), runs exchange() unless it is silent, and leaves as cycle n's ending says.
    MACs and addresses come from a pool of `mac_pool`, so a long churn reuses leases
    instead of filling the pool. Returns what it did, e.g. "tcp/reset"."""
    kind = ("stream", "tcp", "dgram")[n % 3]
    endings = DGRAM_ENDINGS if kind == "dgram" else STREAM_ENDINGS
    ending = endings[(n // 3) % len(endings)]
    where = endpoints[kind] if kind != "dgram" else (endpoints["dgram"], os.path.join(scratch, f"fg{n}.sock"))
    g = FakeGuest((kind, where), fake_mac(n % mac_pool), f"10.0.2.{100 + n % mac_pool}")
    try:
        if ending != "silent":
            g.exchange()
        if ending == "stop-reading":
            # Broadcasts from the other guests pile up unread; leave some of our own too.
            for _ in range(50):
                g.send(junk_broadcast(g.mac, 1000))
            time.sleep(0.05)
        if ending == "mid-frame":
            g.send_raw(prefixed(junk_broadcast(g.mac))[:700])
        elif ending == "half-prefix":
            g.send_raw(b"\x00\x00")
        if ending == "reset" and kind == "tcp":
            g.reset()
        elif kind == "dgram" and ending == "close-keep-file":
            g.close()
        else:
            g.vanish()
    finally:
        g.close()
        if ending != "close-keep-file" and g.own_path and os.path.exists(g.own_path):
            os.unlink(g.own_path)
    return f"{kind}/{ending}"


def sweep(endpoints: dict, n: int = 10**6) -> None:
    """One broadcast from a short-lived guest: slirpd learns of datagram peers that are
    gone only when a send to them fails, and a broadcast sends to every one."""
    with FakeGuest(("stream", endpoints["stream"]), fake_mac(n), "10.0.2.99") as g:
        g.send(arp_request(g.mac, g.ip, "10.0.2.98"))
        g.send(junk_broadcast(g.mac))
        time.sleep(0.2)
