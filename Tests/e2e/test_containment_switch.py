"""End-to-end: the switch cannot be turned against a guest (issue 22 item 3, issue 19 item 5).

An attacker namespace on a tap (or a fake guest on the stream socket) floods the MAC
table, spoofs ARP for the victim's address and for the gateway, floods IPv6 frames from
random sources, and asks DHCP for leases with forged client MACs, while an honest
namespace guest leases, resolves a name and downloads a file of marker lines from a host
server on 127.0.0.1 through 10.0.2.2. The victim's fetches all succeed; the attacker's
capture (a raw AF_PACKET socket in its namespace, incoming frames only) holds no frame
addressed to the victim's MAC or IP and none of the marker bytes; slirpd's memory stays
flat; the forged DHCP requests win nothing. Every test runs with and without isolate=on.

Traffic stays on loopback and inside the test's namespaces; the DNS upstream is a
LoopbackDNS server.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import struct
import subprocess
import time

import pytest

from daemon import Slirpd, memory_kib, metric
from fakeguest import FakeGuest, dhcp_reply_type, ethernet, fake_mac, ipv4, mac_bytes, BROADCAST, ETH_IPV4
from guest import HostHTTPServer, wait_for
from netns import BUSYBOX, LoopbackDNS, Namespaces, query_in

pytestmark = pytest.mark.e2e

ISOLATE = pytest.mark.parametrize("isolate", [False, True], ids=["shared", "isolate"])
NAME = "files.example.test"


def daemon_args(isolate: bool, upstream: LoopbackDNS, extra: list[str]) -> list[str]:
    options = f"dns-upstream={upstream.address}" + (",isolate=on" if isolate else "")
    return ["-o", options, *extra]


def marker_body() -> tuple[bytes, bytes]:
    marker = f"VICTIM-MARKER-{secrets.token_hex(6)}".encode()
    return marker, b"".join(marker + b" line %06d\n" % i for i in range(4000))   # ~120 KB


def victim_fetches(nss: Namespaces, i: int, url: str, body: bytes, times: int) -> None:
    for n in range(times):
        r = nss.exec(i, "timeout", "20", BUSYBOX, "wget", "-q", "-O", "-", url, timeout=30, check=False)
        assert r.returncode == 0 and r.stdout.encode() == body, \
            f"victim fetch {n + 1} of {times} failed: rc {r.returncode}, {len(r.stdout)} of {len(body)} bytes, {r.stderr[-300:]}"


def victim_setup(nss: Namespaces, i: int) -> tuple[str, str]:
    """Leases and resolves; returns the victim's (ip, mac)."""
    lease = nss.dhcp([i])[i]
    assert lease["router"] == "10.0.2.2"
    answer = query_in(nss, i, NAME)
    assert answer["rcode"] == 0 and answer["answers"] == [("A", "10.0.2.2")], answer
    mac = nss.exec(i, "cat", f"/sys/class/net/{nss.tap(i)}/address").stdout.strip()
    return lease["ip"], mac


# Runs in the attacker's namespace: sends the attack frames on its tap while recording
# every frame the tap receives (not the ones it sends) until the stop file appears.
ATTACKER = r"""
import os, random, select, socket, struct, sys, time
tap, victim_ip, capture, stop, overflow = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
own = bytes.fromhex(open(f"/sys/class/net/{tap}/address").read().strip().replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((tap, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
out = open(capture, "wb")
gw, vip = socket.inet_aton("10.0.2.2"), socket.inet_aton(victim_ip)
BC = b"\xff" * 6
GW_MAC = bytes.fromhex("52550a000202")

def csum(data):
    if len(data) % 2: data += b"\0"
    t = sum(struct.unpack(f"!{len(data)//2}H", data))
    while t >> 16: t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF

def ip4(src, dst, proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), random.getrandbits(16), 0, 64, proto, 0, src, dst)
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload

def arp(op, dst, smac, sip, tmac, tip):
    return dst + smac + b"\x08\x06" + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, smac, sip, tmac, tip) + b"\0" * 18

def drain():
    while select.select([s], [], [], 0)[0]:
        frame, addr = s.recvfrom(65536)
        if addr[2] != socket.PACKET_OUTGOING:
            out.write(struct.pack("!I", len(frame)) + frame)

def send(frame):
    try:
        s.send(frame)
    except OSError:
        time.sleep(0.001)
    drain()

# 1. MAC-table overflow: broadcasts from `overflow` invented source MACs.
for n in range(overflow):
    mac = bytes([0x02, 0xee]) + n.to_bytes(4, "big")
    send(BC + mac + b"\x88\xb5" + b"overflow".ljust(46, b"\0"))
# 2. Then, until told to stop: ARP spoofing of the victim and of the gateway, and frames from 10.0.2.2.
sent = 0
while not os.path.exists(stop):
    send(arp(1, BC, own, vip, b"\0" * 6, vip))                  # gratuitous ARP: victim's IP at the attacker
    send(arp(2, GW_MAC, own, vip, GW_MAC, gw))                  # ARP reply to the gateway: the same
    send(arp(2, BC, own, gw, b"\0" * 6, gw))                    # gratuitous reply: the gateway at the attacker
    udp = struct.pack("!HHHH", 53, 40000, 12, 0) + b"spof"
    send(BC + own + b"\x08\x00" + ip4(gw, vip, 17, udp))          # a frame from the gateway's address
    send(GW_MAC + own + b"\x08\x00" + ip4(vip, gw, 17, udp))      # and one from the victim's
    sent += 5
    end = time.monotonic() + 0.02
    while time.monotonic() < end:
        if select.select([s], [], [], max(0, end - time.monotonic()))[0]:
            drain()
drain()
out.close()
print(sent)
"""


def read_capture(path: Path) -> list[bytes]:
    data, frames, at = path.read_bytes(), [], 0
    while at + 4 <= len(data):
        n = struct.unpack("!I", data[at:at + 4])[0]
        frames.append(data[at + 4:at + 4 + n])
        at += 4 + n
    return frames


def victims_frames(frames: list[bytes], victim_ip: str, victim_mac: str, marker: bytes) -> list[bytes]:
    vmac, vip = mac_bytes(victim_mac), socket.inet_aton(victim_ip)
    bad = []
    for f in frames:
        to_ip = len(f) >= 34 and f[12:14] == b"\x08\x00" and f[30:34] == vip
        if f[:6] == vmac or to_ip or marker in f:
            bad.append(f)
    return bad


@ISOLATE
def test_overflow_and_spoofing_win_the_attacker_nothing(tmp_path, isolate):
    """5,000 source MACs, then ARP spoofing of the victim and the gateway and frames
    from 10.0.2.2, all the while the victim downloads: every download is whole, and the
    attacker's capture holds none of the victim's frames."""
    marker, body = marker_body()
    with HostHTTPServer(body=body) as http, LoopbackDNS({NAME: "10.0.2.2"}) as upstream, \
            Namespaces(2, tmp_path) as nss, Slirpd(daemon_args(isolate, upstream, nss.tap_args), tmp_path) as d:
        nss.move()
        victim_ip, victim_mac = victim_setup(nss, 0)
        url = http.url("10.0.2.2")
        victim_fetches(nss, 0, url, body, 1)
        nss.dhcp([1])

        script = tmp_path / "attacker.py"
        script.write_text(ATTACKER)
        capture, stop = tmp_path / "capture.bin", tmp_path / "stop"
        attacker = nss.popen(1, "python3", str(script), nss.tap(1), victim_ip, str(capture), str(stop), "5000",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: metric(d, "slirpd_port_security_dropped_total", "mac_limit") >= 4000, 30,
                     what="the MAC overflow to reach slirpd")
            wait_for(lambda: metric(d, "slirpd_port_security_dropped_total", "taken_address") > 10, 20,
                     what="the ARP spoofing to reach slirpd")
            victim_fetches(nss, 0, url, body, 5)
            # A new download by a victim that has just renewed, too.
            nss.dhcp([0])
            victim_fetches(nss, 0, url, body, 2)
        finally:
            stop.write_text("stop")
            out, err = attacker.communicate(timeout=30)
        assert attacker.returncode == 0, err[-800:]
        assert int(out.strip()) >= 25, f"the attacker sent too little to prove anything: {out}"
        frames = read_capture(capture)
        bad = victims_frames(frames, victim_ip, victim_mac, marker)
        assert not bad, f"the attacker captured {len(bad)} of the victim's frames, e.g. {bad[0][:64].hex()}"
        assert metric(d, "slirpd_port_security_dropped_total", "reserved_address") > 10
        assert metric(d, "slirpd_port_security_dropped_total", "taken_address") > 10
        for what in ("sends from more MACs", "claims an address another guest holds", "claims the gateway's"):
            assert re.search(rf"port security: guest \d+ \(tap tap {nss.tap(1)} .*{what}", d.log), what
        # And the victim is still reachable by name and fetch after the attack.
        victim_fetches(nss, 0, url, body, 1)


def random_ipv6_frames(mac: str, count: int) -> bytes:
    """`count` stream-framed IPv6/UDP frames from random sources, half inside fec0::/64, to fec0::2."""
    src = mac_bytes(mac)
    head = b"\x33\x33\x00\x00\x00\x01" + src + b"\x86\xdd" + bytes([0x60, 0, 0, 0, 0, 12, 17, 64])
    tail = bytes.fromhex("fec00000000000000000000000000002") + struct.pack("!HHHH", 5000, 5001, 12, 0) + b"ab\0\0"
    frame_len = len(head) + 16 + len(tail)
    prefix = struct.pack("!I", frame_len)
    fec0 = bytes.fromhex("fec0000000000000")
    rand = os.urandom(16 * count)
    parts = []
    for n in range(count):
        r = rand[16 * n:16 * n + 16]
        source = fec0 + r[8:] if n & 1 else r
        parts.append(prefix + head + source + tail)
    return b"".join(parts)


@ISOLATE
def test_a_million_ipv6_sources_leave_memory_flat(tmp_path, isolate):
    """A fake guest sends 1,000,000 IPv6 frames from random source addresses: all but
    the per-port cap are dropped, RssAnon grows by less than 8 MiB, and a namespace guest
    still leases and fetches."""
    sock = str(tmp_path / "g.sock")
    marker, body = marker_body()
    with HostHTTPServer(body=body) as http, LoopbackDNS({NAME: "10.0.2.2"}) as upstream, \
            Namespaces(1, tmp_path) as nss, \
            Slirpd(daemon_args(isolate, upstream, [*nss.tap_args, "--stream", sock]), tmp_path) as d:
        nss.move()
        victim_setup(nss, 0)
        victim_fetches(nss, 0, http.url("10.0.2.2"), body, 1)
        before = memory_kib(d.pid)["RssAnon"]
        attacker = FakeGuest(("stream", sock), fake_mac(0x666))
        started = time.monotonic()
        total = 1_000_000
        for batch in range(10):
            attacker.send_raw(random_ipv6_frames(attacker.mac, total // 10))
        wait_for(lambda: metric(d, "slirpd_port_security_dropped_total", "address_limit")
                 + metric(d, "slirpd_port_security_dropped_total", "invalid_source") >= total - 16, 50,
                 what="slirpd to take in the million frames")
        elapsed = time.monotonic() - started
        after = memory_kib(d.pid)["RssAnon"]
        print(f"1M IPv6 frames in {elapsed:.1f} s; RssAnon {before} KiB -> {after} KiB")
        assert after - before < 8 * 1024, f"RssAnon grew from {before} to {after} KiB"
        victim_fetches(nss, 0, http.url("10.0.2.2"), body, 2)
        attacker.sock.close()


def dhcp_request(src_mac: str, chaddr: bytes, xid: int, kind: int, requested: bytes | None = None) -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, b"\0" * 4,
                        b"\0" * 4, b"\0" * 4, chaddr, b"", b"")
    options = b"\x63\x82\x53\x63" + bytes([53, 1, kind])
    if requested:
        options += bytes([50, 4]) + requested + bytes([54, 4]) + socket.inet_aton("10.0.2.2")
    payload = bootp + options + b"\xff"
    payload += b"\0" * max(0, 300 - len(payload))
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    return ethernet(BROADCAST, src_mac, ETH_IPV4, ipv4("0.0.0.0", "255.255.255.255", 17, udp))


def replies(guest: FakeGuest, wait: float) -> list[tuple[int, int]]:
    """(xid, DHCP type) of every DHCP reply that arrives within `wait` s of quiet."""
    got = []
    while (f := guest.recv_frame(wait)) is not None:
        if len(f) > 14 + 20 + 8 + 240 and f[12:14] == b"\x08\x00" and f[23] == 17:
            xid = struct.unpack("!I", f[14 + 20 + 8 + 4:14 + 20 + 8 + 8])[0]
            if (t := dhcp_reply_type(f, xid)) is not None:
                got.append((xid, t))
    return got


@ISOLATE
def test_forged_dhcp_clients_win_at_most_the_port_cap(tmp_path, isolate):
    """One fake guest sends 300 DISCOVERs and REQUESTs with forged chaddrs from one MAC
    (none answered), then DISCOVERs and REQUESTs from 300 source MACs with matching
    chaddrs (at most 4 leases); a new namespace guest then still leases and fetches."""
    sock = str(tmp_path / "g.sock")
    marker, body = marker_body()
    with HostHTTPServer(body=body) as http, LoopbackDNS({NAME: "10.0.2.2"}) as upstream, \
            Namespaces(1, tmp_path) as nss, \
            Slirpd(daemon_args(isolate, upstream, [*nss.tap_args, "--stream", sock]), tmp_path) as d:
        nss.move()
        attacker = FakeGuest(("stream", sock), fake_mac(0x777))
        for n in range(300):
            chaddr = mac_bytes(fake_mac(0x10000 + n))
            attacker.send(dhcp_request(attacker.mac, chaddr, 0x1000 + n, 1))
            attacker.send(dhcp_request(attacker.mac, chaddr, 0x2000 + n, 3, socket.inet_aton(f"10.0.2.{20 + n % 200}")))
        forged = replies(attacker, 2)
        assert forged == [], f"forged chaddrs were answered: {forged[:5]}"
        assert metric(d, "slirpd_port_security_dropped_total", "dhcp_chaddr_mismatch") == 600

        for n in range(300):
            mac = fake_mac(0x20000 + n)
            attacker.send(dhcp_request(mac, mac_bytes(mac), 0x3000 + n, 1))
            attacker.send(dhcp_request(mac, mac_bytes(mac), 0x4000 + n, 3, socket.inet_aton(f"10.0.2.{20 + n % 200}")))
        won = [r for r in replies(attacker, 2) if r[1] == 5]
        assert len(won) <= 4, f"one port won {len(won)} leases"
        assert metric(d, "slirpd_leases") <= 4
        # The switch's max-macs (4) stops the 5th MAC before DHCP snooping sees it, so the
        # refusals are MAC-limit drops (dhcp_client_limit and dhcp_port_cap are the layers behind).
        assert metric(d, "slirpd_port_security_dropped_total", "mac_limit") > 0

        victim_setup(nss, 0)
        victim_fetches(nss, 0, http.url("10.0.2.2"), body, 1)
        attacker.sock.close()
