"""Issue 22 item 2: a guest's flows toward libslirp are capped, and the daemon keeps a
reserve of descriptors, so one guest cannot cut the others off.

slirpd runs with a soft AND hard limit of 1,024 descriptors (as under systemd's default).
An honest guest, a network namespace on a tap, leases, resolves a local name and fetches
from a server on the host's 127.0.0.1 (via 10.0.2.2) again and again while an attacker, a
fake guest on the stream socket, floods new flows. Every fetch must succeed, the control
API must answer, the lease file must still be written, and the attacker must be refused
past its cap with a RST or an ICMP port unreachable made by slirpd.
"""

import http.server
import json
import resource
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from daemon import Slirpd, fd_count, memory_kib, slirpctl
from fakeguest import (ETH_IPV4, GATEWAY, DNS, FakeGuest, arp_reply_mac, arp_request, ethernet, fake_mac, ipv4,
                       tcp_answer, tcp_segment)
from netns import BUSYBOX, LoopbackDNS, Namespaces, query_in

pytestmark = pytest.mark.e2e

LIMIT = 1024
BODY = b"budget-test-body\n" * 64
ATTACKER_IP = "10.0.2.201"


def limit_descriptors():
    """preexec_fn: slirpd gets a soft and hard limit of 1,024, which it cannot raise."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


class HostServer:
    """A small HTTP server on 127.0.0.1, which guests reach as 10.0.2.2."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class HonestGuest:
    """Namespace 0 fetching from the host and resolving a local name in a loop, in a
    thread, until stopped; every failure is kept."""

    def __init__(self, nss: Namespaces, port: int):
        self.nss, self.port = nss, port
        self.fetches, self.lookups, self.failures = 0, 0, []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def fetch(self):
        # busybox 1.35's wget -T crashes: timeout(1) bounds it instead.
        r = self.nss.exec(0, "timeout", "10", BUSYBOX, "wget", "-q", "-O", "-", f"http://{GATEWAY}:{self.port}/",
                          timeout=15, check=False)
        if r.returncode != 0 or r.stdout.encode() != BODY:
            self.failures.append(f"fetch {self.fetches}: rc {r.returncode} {r.stderr[-200:]}")
        self.fetches += 1

    def lookup(self):
        try:
            r = query_in(self.nss, 0, "host.slirpd.internal")
            if r["answers"] != [("A", GATEWAY)]:
                self.failures.append(f"lookup {self.lookups}: {r}")
        except AssertionError as e:
            self.failures.append(f"lookup {self.lookups}: {e}")
        self.lookups += 1

    def _run(self):
        while not self._stop.is_set():
            self.fetch()
            if self.fetches % 3 == 0:
                self.lookup()
            self._stop.wait(0.1)

    def start(self):
        self.thread.start()

    def stop(self):
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(60)


class Setup:
    """slirpd at 1,024 descriptors with two namespaces (0 honest, 1 a late new guest) and
    a stream socket for the attacker."""

    def __init__(self, tmp: Path, extra_options: str = ""):
        self.tmp = tmp
        self.upstream = LoopbackDNS({})
        self.http = HostServer()
        self.nss = Namespaces(2, tmp)
        self.sock = str(tmp / "g.sock")
        options = f"dns-upstream={self.upstream.address}" + (f",{extra_options}" if extra_options else "")
        self.d = Slirpd(["-o", options, "--stream", self.sock, *self.nss.tap_args], tmp,
                        popen_kw={"preexec_fn": limit_descriptors})
        self.nss.move()
        self.lease = self.nss.dhcp([0])[0]
        self.honest = HonestGuest(self.nss, self.http.port)
        self.attacker = FakeGuest(("stream", self.sock), fake_mac(0xbad1), ATTACKER_IP)
        self.gateway_mac = self.attacker.arp_gateway()

    def lease_file(self) -> Path:
        return Path(self.d.state_dir) / "default.leases"

    def check_daemon_serves(self, started: float):
        """The control API answers within 5 s, and a new guest gets a lease that is saved."""
        t = time.monotonic()
        res = slirpctl(self.d, "networks", timeout=5)
        assert time.monotonic() - t < 5 and "default" in res.stdout
        lease = self.nss.dhcp([1], timeout=60)[1]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.lease_file().exists() and self.lease_file().stat().st_mtime >= started \
                    and lease["ip"] in self.lease_file().read_text(errors="replace"):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"lease {lease['ip']} not saved in {self.lease_file()}:\n{self.d.log[-3000:]}")
        assert "cannot save leases" not in self.d.log
        assert "Too many open files" not in self.d.log

    def guest_flows(self, mac: str) -> dict:
        guests = json.loads(slirpctl(self.d, "guests", "--json", timeout=5).stdout)
        if isinstance(guests, dict):
            guests = guests.get("guests", guests)
        return next(g for g in guests if mac in g["macs"])["flows"]

    def close(self):
        self.honest.stop()
        self.attacker.close()
        self.d.stop()
        self.nss.close()
        self.http.close()
        self.upstream.close()


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    yield s
    s.close()


def udp_frame(mac: str, gw: bytes, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + 4, 0) + b"ping"
    return ethernet(gw, mac, ETH_IPV4, ipv4(ATTACKER_IP, GATEWAY, 17, udp))


def port_unreachable_for(frame: bytes) -> int:
    """The quoted UDP source port of an ICMP port unreachable, else 0."""
    if len(frame) < 14 + 20 + 8 + 20 + 8 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV4 or frame[23] != 1:
        return 0
    icmp = 14 + (frame[14] & 0x0F) * 4
    if frame[icmp] != 3 or frame[icmp + 1] != 3:
        return 0
    quoted = icmp + 8
    if frame[quoted + 9] != 17:
        return 0
    return struct.unpack("!H", frame[quoted + (frame[quoted] & 0x0F) * 4:][:2])[0]


def drain(guest: FakeGuest, classify, quiet: float = 1.5, limit: float = 20) -> dict:
    """Reads frames until none came for `quiet` seconds; counts classify(frame) results."""
    counts: dict = {}
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        frame = guest.recv_frame(quiet)
        if frame is None:
            break
        key = classify(frame)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_udp_burst_from_2000_ports_is_capped(setup):
    s = setup
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sink.settimeout(0.2)
    dport = sink.getsockname()[1]
    started = time.time()
    try:
        s.honest.start()
        t0 = time.monotonic()
        frames = b"".join(struct.pack("!I", len(f)) + f
                          for f in (udp_frame(s.attacker.mac, s.gateway_mac, 10000 + i, dport) for i in range(2000)))
        s.attacker.send_raw(frames)
        sent_in = time.monotonic() - t0
        counts = drain(s.attacker, lambda f: "unreachable" if port_unreachable_for(f) >= 10000 else None)
        received = 0
        while True:
            try:
                sink.recv(64)
                received += 1
            except socket.timeout:
                break
        fds = fd_count(s.d.pid)
        s.check_daemon_serves(started)
        time.sleep(1)
        s.honest.stop()
        flows = s.guest_flows(s.attacker.mac)
    finally:
        sink.close()
    print(f"UDP burst: 2000 datagrams sent in {sent_in:.3f} s; {counts.get('unreachable', 0)} ICMP port unreachable; "
          f"{received} reached the sink; slirpd {fds} descriptors; attacker flows {flows}; "
          f"honest guest {s.honest.fetches} fetches, {s.honest.lookups} lookups")
    assert not s.honest.failures, s.honest.failures[:5]
    assert s.honest.fetches >= 3 and s.honest.lookups >= 1
    assert counts.get("unreachable", 0) == 2000 - 256
    assert 0 < received <= 256
    assert flows["udp"] == 256 and flows["refused"] == 2000 - 256
    assert fds < LIMIT - 64
    assert "refusing a new udp flow of guest" in s.d.log


def test_5000_tcp_connections_are_capped(setup):
    s = setup
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8192)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_all():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except (socket.timeout, OSError):
                continue

    acceptor = threading.Thread(target=accept_all, daemon=True)
    acceptor.start()
    started = time.time()
    try:
        rss_before = memory_kib(s.d.pid)["RssAnon"]
        s.honest.start()
        peak_fds = 0
        answers: dict = {"rst": set(), "syn-ack": set()}

        def collect(quiet, limit):
            # Ports, not frames: libslirp retransmits its SYN-ACKs.
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                frame = s.attacker.recv_frame(quiet)
                if frame is None:
                    return
                kind = answer_kind(frame)
                if kind:
                    answers[kind].add(struct.unpack("!H", frame[14 + (frame[14] & 0x0F) * 4 + 2:][:2])[0])

        t0 = time.monotonic()
        for batch in range(10):
            frames = b"".join(struct.pack("!I", len(f)) + f for f in (
                tcp_segment(s.attacker.mac, s.gateway_mac, ATTACKER_IP, GATEWAY, 20000 + batch * 500 + i, port, 0x02,
                            seq=1000) for i in range(500)))
            s.attacker.send_raw(frames)
            collect(0.3, 5)
            peak_fds = max(peak_fds, fd_count(s.d.pid))
        collect(1.5, 20)
        took = time.monotonic() - t0
        counts = {k: len(v) for k, v in answers.items()}
        peak_fds = max(peak_fds, fd_count(s.d.pid))
        rss_after = memory_kib(s.d.pid)["RssAnon"]
        s.check_daemon_serves(started)
        time.sleep(1)
        s.honest.stop()
        flows = s.guest_flows(s.attacker.mac)
    finally:
        stop.set()
        acceptor.join(5)
        for c in accepted:
            c.close()
        listener.close()
    print(f"5000 SYNs in {took:.1f} s: answers (distinct ports) {counts}; slirpd peak {peak_fds} descriptors; RssAnon {rss_before} -> {rss_after} KiB; "
          f"attacker flows {flows}; host accepted {len(accepted)}; "
          f"honest guest {s.honest.fetches} fetches, {s.honest.lookups} lookups")
    assert not s.honest.failures, s.honest.failures[:5]
    assert s.honest.fetches >= 3
    assert counts["rst"] == 5000 - 512
    assert counts["syn-ack"] <= 512 and not answers["rst"] & answers["syn-ack"]
    assert flows["tcp"] == 512 and flows["refused"] == 5000 - 512
    assert peak_fds < LIMIT - 64
    # 512 connections at libslirp's 2 x 128 KiB at most, plus slack for the rest.
    assert rss_after - rss_before < 200 * 1024
    assert "refusing a new tcp flow of guest" in s.d.log


def answer_kind(frame: bytes):
    """"rst" or "syn-ack" for a TCP segment to the attacker, whatever its port."""
    if len(frame) < 54 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV4 or frame[23] != 6:
        return None
    l4 = 14 + (frame[14] & 0x0F) * 4
    flags = frame[l4 + 13]
    if flags & 0x04:
        return "rst"
    if flags & 0x12 == 0x12:
        return "syn-ack"
    return None


def test_dns_over_tcp_share_per_guest(setup):
    s = setup
    s.attacker.send(arp_request(s.attacker.mac, ATTACKER_IP, DNS))
    dns_mac = s.attacker.expect(lambda f: arp_reply_mac(f, DNS), 10, f"ARP reply for {DNS}")
    s.honest.start()
    frames = b"".join(struct.pack("!I", len(f)) + f for f in (
        tcp_segment(s.attacker.mac, dns_mac, ATTACKER_IP, DNS, 30000 + i, 53, 0x02, seq=1000) for i in range(70)))
    s.attacker.send_raw(frames)
    synacks: list[tuple[int, int]] = []
    rsts = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        frame = s.attacker.recv_frame(1.5)
        if frame is None:
            break
        kind = answer_kind(frame)
        l4 = 14 + (frame[14] & 0x0F) * 4
        if kind == "rst":
            rsts += 1
        elif kind == "syn-ack":
            dport, seq = struct.unpack("!HI", frame[l4 + 2:l4 + 8])
            synacks.append((dport, seq))
    # The admitted ones stall: the handshake completes and only half a length prefix follows.
    for dport, seq in synacks:
        s.attacker.send(tcp_segment(s.attacker.mac, dns_mac, ATTACKER_IP, DNS, dport, 53, 0x10, seq=1001, ack=seq + 1))
    for proto in ("tcp", "udp", "tcp"):
        r = query_in(s.nss, 0, "host.slirpd.internal", proto=proto)
        assert r["answers"] == [("A", GATEWAY)], (proto, r)
    time.sleep(0.5)
    s.honest.stop()
    flows = s.guest_flows(s.attacker.mac)
    print(f"70 DNS/TCP SYNs: {len(set(p for p, _ in synacks))} admitted, {rsts} RST; attacker flows {flows}")
    assert not s.honest.failures, s.honest.failures[:5]
    assert len(set(p for p, _ in synacks)) <= 8
    assert rsts == 70 - 8
    assert flows["dnsTCP"] <= 8
    assert "refusing a new dns-tcp flow of guest" in s.d.log


def test_descriptor_reserve_holds_when_caps_are_raised(tmp_path):
    """With the UDP cap raised past the descriptor limit, the daemon's own reserve stops the
    burst: slirpd stays under its limit, the control API answers and a new guest's lease
    is saved. (New flows of every guest are refused while the reserve is reached, so the
    honest guest is not asked to fetch here.)"""
    s = Setup(tmp_path, "max-udp=4000")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    dport = sink.getsockname()[1]
    started = time.time()
    try:
        frames = b"".join(struct.pack("!I", len(f)) + f
                          for f in (udp_frame(s.attacker.mac, s.gateway_mac, 10000 + i, dport) for i in range(2000)))
        s.attacker.send_raw(frames)
        counts = drain(s.attacker, lambda f: "unreachable" if port_unreachable_for(f) >= 10000 else None)
        fds = fd_count(s.d.pid)
        s.check_daemon_serves(started)
        flows = s.guest_flows(s.attacker.mac)
    finally:
        sink.close()
        s.close()
    print(f"UDP burst with max-udp=4000: {counts.get('unreachable', 0)} ICMP port unreachable; slirpd {fds} "
          f"descriptors of {LIMIT}; attacker flows {flows}")
    assert fds < LIMIT - 16
    assert flows["refusedForShortage"] > 0 and flows["udp"] + flows["refusedForShortage"] == 2000
    assert counts.get("unreachable", 0) == flows["refusedForShortage"]
    assert "kept for the daemon" in s.d.log
