"""End-to-end: one guest cannot starve DHCP for the others (issue 19 item 5).

A fake stream guest floods slirpd with DHCPDISCOVERs and REQUESTs from 600 random source
MACs, over and over, while a namespace guest on a tap leases with busybox udhcpc for the
first time and another, which leased before the flood, renews its lease (udhcpc's
SIGUSR1: a unicast REQUEST). Both must succeed while the flood is still running; the
flooder gets offers for at most max-macs (4) of its MACs; the refusals show in /metrics
and in paced log lines that name the flooding guest.

Traffic stays inside slirpd and the test's namespaces; the DNS upstream is a LoopbackDNS.
"""

from __future__ import annotations

import queue
import random
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from daemon import Slirpd, metric
from fakeguest import FakeGuest, dhcp_reply_type, ethernet, fake_mac, ipv4, mac_bytes, BROADCAST, ETH_IPV4
from guest import wait_for
from netns import BUSYBOX, LoopbackDNS, Namespaces

pytestmark = pytest.mark.e2e

FLOOD_MACS = 600
FLOOD_LIMIT_S = 120   # the flood stops by then whatever happens


def dhcp_message(mac: str, xid: int, kind: int, requested: str | None = None) -> bytes:
    """A DISCOVER (1) or REQUEST (3) from 0.0.0.0 with chaddr = the frame's source MAC."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, b"\0" * 4,
                        b"\0" * 4, b"\0" * 4, mac_bytes(mac), b"", b"")
    options = b"\x63\x82\x53\x63" + bytes([53, 1, kind])
    if requested:
        options += bytes([50, 4]) + socket.inet_aton(requested) + bytes([54, 4]) + socket.inet_aton("10.0.2.2")
    payload = bootp + options + b"\xff"
    payload += b"\0" * max(0, 300 - len(payload))
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    return ethernet(BROADCAST, mac, ETH_IPV4, ipv4("0.0.0.0", "255.255.255.255", 17, udp))


class Flood(threading.Thread):
    """DISCOVERs and REQUESTs from FLOOD_MACS random MACs on one stream connection, round
    after round until stopped; counts what it sent and which MACs were offered an address."""

    def __init__(self, sock_path: str):
        super().__init__(daemon=True)
        self.guest = FakeGuest(("stream", sock_path), fake_mac(0xF1))
        self.guest.sock.settimeout(30)
        rng = random.Random(19_5)
        self.macs = ["02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5)) for _ in range(FLOOD_MACS)]
        self.xids = {}
        self.sent = 0
        self.offered: set[str] = set()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + FLOOD_LIMIT_S
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                for n, mac in enumerate(self.macs):
                    xid = random.getrandbits(32)
                    self.xids[xid] = mac
                    self.guest.send(dhcp_message(mac, xid, 1))
                    self.guest.send(dhcp_message(mac, xid ^ 1, 3, f"10.0.2.{15 + n % 200}"))
                    self.sent += 2
                    self.drain()
                    if self.stop.is_set():
                        break
        except BaseException as e:   # reported by the test
            self.error = e

    def drain(self) -> None:
        while (f := self.guest.recv_frame(0)) is not None:
            if len(f) > 14 + 20 + 8 + 8 and f[12:14] == b"\x08\x00" and f[23] == 17:
                xid = struct.unpack("!I", f[14 + 20 + 8 + 4:14 + 20 + 8 + 8])[0]
                if dhcp_reply_type(f, xid) == 2 and xid in self.xids:
                    self.offered.add(self.xids[xid])


def lines_of(proc: subprocess.Popen) -> "queue.Queue[str]":
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [q.put(l) for l in proc.stdout], daemon=True).start()
    return q


def next_lease(q: "queue.Queue[str]", timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = q.get(timeout=left)
        except queue.Empty:
            break
        if line.startswith("LEASE "):
            return line.split()[1]
    raise AssertionError(f"no {what} within {timeout} s")


def test_dhcp_flood_starves_nobody(tmp_path):
    sock = str(tmp_path / "flood.sock")
    with LoopbackDNS({}) as upstream, Namespaces(2, tmp_path) as nss, \
            Slirpd(["-o", f"dns-upstream={upstream.address}", *nss.tap_args, "--stream", sock], tmp_path) as d:
        nss.move()
        # Namespace 1 leases before the flood and stays running (udhcpc -f) to renew later.
        cmd = nss.dhcp_command(1)
        cmd = [c for c in cmd if c not in ("-q", "-n")] + ["-f"]
        renewer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        nss.procs.append(renewer)
        renewer_lines = lines_of(renewer)
        first = next_lease(renewer_lines, 60, "lease for namespace 1 before the flood")

        flood = Flood(sock)
        flood.start()
        try:
            wait_for(lambda: flood.sent >= 2 * FLOOD_MACS, 60, what="one round of the flood")
            sent_before = flood.sent

            # A new guest leases, and the old one renews, with the flood going on.
            started = time.monotonic()
            lease = nss.dhcp([0], timeout=90)[0]
            new_lease_s = time.monotonic() - started
            assert lease["router"] == "10.0.2.2"
            renewer.send_signal(signal.SIGUSR1)   # ip netns exec execs udhcpc: this is its pid
            renewed = next_lease(renewer_lines, 60, "renewal for namespace 1 during the flood")
            assert renewed == first, f"namespace 1 renewed to {renewed}, not its {first}"

            assert flood.is_alive() and flood.error is None, f"the flood stopped early: {flood.error!r}"
            wait_for(lambda: flood.sent > sent_before + 2000, 30, what="the flood to keep going")
        finally:
            flood.stop.set()
            flood.join(30)
        assert flood.error is None, f"flood failed: {flood.error!r}"
        assert flood.sent >= 2 * FLOOD_MACS, f"only {flood.sent} flood frames sent"
        assert len(flood.offered) <= 4, f"the flooder was offered addresses for {len(flood.offered)} MACs"
        assert lease["ip"] != first
        assert metric(d, "slirpd_leases") <= 2 + 4
        assert metric(d, "slirpd_port_security_dropped_total", "mac_limit") >= 200
        # Paced: the 1st, 2nd, 4th, 8th... refusal per guest and reason, never one line per frame.
        lines = [l for l in d.log.splitlines() if "port security:" in l and "more MACs" in l]
        assert 1 <= len(lines) <= 20, f"{len(lines)} MAC-limit log lines"
        assert "stream" in lines[0], f"the log line names no guest: {lines[0]}"
        print(f"new lease in {new_lease_s:.1f} s during a flood of {flood.sent} frames")
