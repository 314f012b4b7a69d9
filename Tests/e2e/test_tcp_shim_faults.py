"""Faults around the TCP window shim (issue 15), with network namespaces on taps as guests
(a real Linux TCP stack that offers window scaling, without a QEMU boot):

1. a guest sends fast to a host server that stops reading: slirpd's memory stays within
   the shim's per-flow queue cap, and the data arrives whole once the server reads again;
2. a guest stops reading (zero window) while the host sends: no growth, and the flow
   completes intact when it reads again;
3. a guest vanishes mid-transfer (its namespace, and with it the tap, is deleted): the
   port goes, the shim forgets the flow within seconds, and another guest keeps working.

Contract with the shim (these metrics do not exist before it lands, so the checks on them
fail until then; every other check runs first): /metrics has
slirpd_tcp_shim_flows, slirpd_tcp_shim_scaled_flows, slirpd_tcp_shim_queued_bytes and
slirpd_tcp_shim_dropped_total, each labelled {network="default"}; the per-flow queue cap
is 4 MiB.

Traffic stays on 127.0.0.1 (10.0.2.2 in the namespaces) and inside the namespaces; every
process is bounded in time and stopped by PID.
"""

import hashlib
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from bulk import HostPeer, receive_and_hash
from daemon import Slirpd, memory_kib, slirpctl
from guest import wait_for
from netns import LoopbackDNS, Namespaces

pytestmark = pytest.mark.e2e

MIB, KIB = 1 << 20, 1 << 10
FLOW_CAP = 4 * MIB               # the shim's per-flow queue cap (contract)
QUEUE_SLACK = 64 * KIB           # one unscaled window: a segment in flight when the cap is hit
RSS_SLACK_KIB = 4 * 1024         # allocator and libslirp buffers (~0.3 MiB measured before the shim)
RSS_BOUND_KIB = FLOW_CAP // KIB + RSS_SLACK_KIB
STALL_SECONDS = 6                # how long a reader stays stopped while memory is sampled
TOTAL = 64 * MIB                 # bytes per stalled flow
FREED_WITHIN = 15                # seconds for a vanished guest's flow to be forgotten
SHIM_METRICS = ("slirpd_tcp_shim_flows", "slirpd_tcp_shim_scaled_flows", "slirpd_tcp_shim_queued_bytes",
                "slirpd_tcp_shim_dropped_total")
PATTERN = bytes(range(256)) * 4096   # 1 MiB; senders repeat it, receivers hash it

# Runs in a namespace: sends `total` bytes of PATTERN to host:port, half-closes, waits for
# the peer to close, prints "SENT n". Gives up at the deadline (seconds).
SENDER = r"""
import socket, sys, time
host, port, total, deadline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
chunk = memoryview(bytes(range(256)) * 4096)
end = time.monotonic() + deadline
s = socket.create_connection((host, port), timeout=deadline)
sent = 0
while sent < total and time.monotonic() < end:
    at = sent % len(chunk)   # send() may take part of a chunk: carry on from there
    sent += s.send(chunk[at:at + min(len(chunk) - at, total - sent)])
s.shutdown(socket.SHUT_WR)
s.recv(1)
print("SENT", sent, flush=True)
"""

# Runs in a namespace: connects with a small receive buffer, reads `first` bytes, prints
# "PAUSED n" and stops reading until a line arrives on stdin, then reads to EOF and prints
# "DONE n sha256".
RECEIVER = r"""
import hashlib, socket, sys
host, port, first, rcvbuf = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
s.settimeout(120)
s.connect((host, port))
h, n = hashlib.sha256(), 0
while n < first:
    d = s.recv(min(65536, first - n))
    if not d:
        break
    h.update(d)
    n += len(d)
print("PAUSED", n, flush=True)
sys.stdin.readline()
while True:
    d = s.recv(1 << 20)
    if not d:
        break
    h.update(d)
    n += len(d)
print("DONE", n, h.hexdigest(), flush=True)
"""


def report(text: str) -> str:
    print(f"\n[shim-faults] {text}", flush=True)
    return text


def pattern_sha(total: int) -> str:
    h = hashlib.sha256()
    for at in range(0, total, len(PATTERN)):
        h.update(PATTERN[:min(len(PATTERN), total - at)])
    return h.hexdigest()


def shim_metrics(d: Slirpd) -> dict[str, int]:
    """The shim's metrics for the default network; the ones /metrics lacks are left out."""
    text = subprocess.run(["curl", "-s", "--unix-socket", d.control, "http://slirpd/metrics"],
                          capture_output=True, text=True, check=True, timeout=10).stdout
    out = {}
    for name in SHIM_METRICS:
        m = re.search(rf'^{name}\{{network="default"\}} (\d+)$', text, re.M)
        if m:
            out[name] = int(m.group(1))
    return out


def assert_shim_metrics_present(samples: list[dict]) -> None:
    missing = [n for n in SHIM_METRICS if not any(n in s for s in samples)]
    assert not missing, f"/metrics lacks {missing} (the shim's counters)"


def rx_bytes(d: Slirpd, tap: str) -> int:
    """Bytes slirpd has read from the guest on `tap`."""
    import json
    for g in json.loads(slirpctl(d, "--json", "guests").stdout):
        if tap in json.dumps(g):
            return g["counters"]["rxBytes"]
    raise AssertionError(f"no guest on tap {tap}")


class Sampler:
    """Samples slirpd's RssAnon and the shim's metrics every 0.25 s over a window."""

    def __init__(self, d: Slirpd):
        self.d = d
        self.rss: list[int] = []
        self.metrics: list[dict] = []

    def run(self, seconds: float) -> "Sampler":
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rss.append(memory_kib(self.d.pid)["RssAnon"])
            self.metrics.append(shim_metrics(self.d))
            time.sleep(0.25)
        return self

    def peak(self, name: str):
        """The largest sample of a shim metric; None when /metrics never had it."""
        return max((m[name] for m in self.metrics if name in m), default=None)

    def peaks(self) -> dict:
        return {k: v for k in SHIM_METRICS if (v := self.peak(k)) is not None}


class ShimNet:
    """`count` namespaces on taps of one slirpd, at 10.0.2.15, .16...; DNS upstream on loopback."""

    def __init__(self, tmp, count: int):
        self.dns = LoopbackDNS({})
        self.nss = Namespaces(count, tmp)
        self.d = Slirpd(["-o", f"dns-upstream={self.dns.address}", *self.nss.tap_args], tmp)
        for i in range(count):
            self.d.wait_log(f"attached on tap:{self.nss.tap(i)}")
        self.nss.move()
        for i in range(count):
            self.nss.exec(i, "ip", "addr", "add", f"10.0.2.{15 + i}/24", "dev", self.nss.tap(i))
            self.nss.exec(i, "ip", "route", "add", "default", "via", "10.0.2.2")

    def close(self):
        self.d.stop()
        self.nss.close()
        self.dns.close()


def send_from(nss: Namespaces, i: int, port: int, total: int, deadline: float = 60) -> subprocess.Popen:
    return nss.popen(i, sys.executable, "-c", SENDER, "10.0.2.2", str(port), str(total), str(deadline),
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 60) -> str:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"a namespace process did not finish in {timeout} s: {out} {err}")
    assert p.returncode == 0, f"a namespace process failed ({p.returncode}): {out} {err}"
    return out


def warm_up(nss: Namespaces, i: int) -> None:
    """One 16 MiB flow first, so libslirp's and the allocator's steady state is the baseline."""
    with HostPeer(receive_and_hash, timeout=60) as peer:
        finish(send_from(nss, i, peer.port, 16 * MIB))
        assert peer.results() == [(16 * MIB, pattern_sha(16 * MIB))]


def poll_flows_gone(d: Slirpd, timeout: float = FREED_WITHIN) -> tuple[bool, float, dict]:
    """Polls until the shim has no flow and no queued byte, for at most `timeout` seconds;
    returns (freed, seconds, last sample). Asserts nothing, so that checks independent of
    the shim's metrics can run before the verdict."""
    t0, last = time.monotonic(), {}
    while True:
        last = shim_metrics(d)
        if last.get("slirpd_tcp_shim_flows") == 0 and last.get("slirpd_tcp_shim_queued_bytes") == 0:
            return True, time.monotonic() - t0, last
        if time.monotonic() - t0 >= timeout:
            return False, time.monotonic() - t0, last
        time.sleep(0.25)


def wait_flows_gone(d: Slirpd, timeout: float = FREED_WITHIN) -> dict:
    freed, seconds, last = poll_flows_gone(d, timeout)
    assert freed, f"the shim still holds flows after {seconds:.1f} s: {last or 'no shim metrics'}"
    return last


def test_a_host_server_that_stops_reading_leaves_memory_within_the_queue_cap(tmp_path):
    net = ShimNet(tmp_path, 1)
    nss, d = net.nss, net.d
    paused, resume = threading.Event(), threading.Event()

    def stalling_reader(conn):
        h, n = hashlib.sha256(), 0
        while n < MIB:
            data = conn.recv(MIB - n)
            assert data, "the guest's flow ended early"
            h.update(data)
            n += len(data)
        paused.set()
        assert resume.wait(60), "never told to read again"
        while data := conn.recv(MIB):
            h.update(data)
            n += len(data)
        return n, h.hexdigest()

    try:
        warm_up(nss, 0)
        base = memory_kib(d.pid)["RssAnon"]
        # A small receive buffer: the host kernel soaks up little, so libslirp's window closes.
        with HostPeer(stalling_reader, timeout=120, rcvbuf=64 * KIB) as peer:
            sender = send_from(nss, 0, peer.port, TOTAL, deadline=90)
            assert paused.wait(30), "the host server got no data from the guest"
            s = Sampler(d).run(STALL_SECONDS)
            rx_before = rx_bytes(d, nss.tap(0))
            Sampler(d).run(2)
            rx_after = rx_bytes(d, nss.tap(0))
            resume.set()
            [(n, sha)] = peer.results()
            out = finish(sender)
        growth = max(s.rss) - base
        report(f"host stopped reading for {STALL_SECONDS} s: slirpd RssAnon {base} KiB -> peak {max(s.rss)} KiB "
               f"(+{growth} KiB, bound {RSS_BOUND_KIB}); guest bytes into slirpd over the last 2 s of the stall "
               f"{rx_after - rx_before}; shim peaks {s.peaks() or 'none (no shim metrics)'}")
        assert out.split() == ["SENT", str(TOTAL)], out
        assert (n, sha) == (TOTAL, pattern_sha(TOTAL)), "the data the host read after the stall is not whole"
        assert growth <= RSS_BOUND_KIB, f"slirpd grew {growth} KiB while the host did not read"
        assert rx_after - rx_before < 256 * KIB, "slirpd kept taking the guest's data while the host did not read"
        assert d.alive()

        assert_shim_metrics_present(s.metrics)
        assert s.peak("slirpd_tcp_shim_flows") >= 1 and s.peak("slirpd_tcp_shim_scaled_flows") >= 1, s.metrics[-1]
        assert s.peak("slirpd_tcp_shim_queued_bytes") <= FLOW_CAP + QUEUE_SLACK, \
            f"the shim queued {s.peak('slirpd_tcp_shim_queued_bytes')} bytes for one flow"
        assert s.peak("slirpd_tcp_shim_queued_bytes") > 0, "the shim queued nothing although libslirp's window closed"
        wait_flows_gone(d)
    finally:
        net.close()


def test_a_guest_at_zero_window_causes_no_growth_and_resumes(tmp_path):
    net = ShimNet(tmp_path, 1)
    nss, d = net.nss, net.d
    progress = {"sent": 0}

    def sender(conn):
        while progress["sent"] < TOTAL:
            conn.sendall(PATTERN)
            progress["sent"] += len(PATTERN)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(MIB):
            pass
        return progress["sent"]

    try:
        warm_up(nss, 0)
        base = memory_kib(d.pid)["RssAnon"]
        with HostPeer(sender, timeout=120) as peer:
            receiver = nss.popen(0, sys.executable, "-c", RECEIVER, "10.0.2.2", str(peer.port), str(MIB),
                                 str(32 * KIB), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            line = receiver.stdout.readline()
            assert line.startswith("PAUSED"), f"the namespace's receiver: {line!r} {receiver.stderr.read() if receiver.poll() is not None else ''}"
            s = Sampler(d).run(STALL_SECONDS)
            sent_before = progress["sent"]
            Sampler(d).run(2)
            sent_after = progress["sent"]
            receiver.stdin.write("go\n")
            receiver.stdin.flush()
            out = finish(receiver, timeout=90)
            [sent] = peer.results()
        growth = max(s.rss) - base
        report(f"guest at zero window for {STALL_SECONDS} s: slirpd RssAnon {base} KiB -> peak {max(s.rss)} KiB "
               f"(+{growth} KiB, bound {RSS_BOUND_KIB}); host bytes sent meanwhile {sent_before} "
               f"(+{sent_after - sent_before} over the last 2 s); shim peaks {s.peaks() or 'none (no shim metrics)'}")
        assert sent == TOTAL
        assert out.split() == ["DONE", str(TOTAL), pattern_sha(TOTAL)], f"the guest's data after the stall: {out}"
        assert sent_before < TOTAL // 2, "the host kept sending freely to a guest that did not read"
        assert sent_after - sent_before <= MIB, "the host's data kept flowing toward a zero window"
        assert growth <= RSS_BOUND_KIB, f"slirpd grew {growth} KiB while the guest did not read"
        assert d.alive()

        assert_shim_metrics_present(s.metrics)
        assert s.peak("slirpd_tcp_shim_flows") >= 1, s.metrics[-1]
        assert s.peak("slirpd_tcp_shim_queued_bytes") <= FLOW_CAP + QUEUE_SLACK
        wait_flows_gone(d)
    finally:
        net.close()


def test_a_guest_that_vanishes_mid_transfer_is_forgotten_and_another_keeps_working(tmp_path):
    net = ShimNet(tmp_path, 2)
    nss, d = net.nss, net.d
    progress = {"got": 0}

    def counting_reader(conn):
        try:
            while data := conn.recv(MIB):
                progress["got"] += len(data)
        except (ConnectionResetError, TimeoutError, OSError) as e:
            return f"ended by {type(e).__name__}"
        return "ended by EOF"

    try:
        warm_up(nss, 1)
        with HostPeer(counting_reader, timeout=60) as peer:
            sender = send_from(nss, 0, peer.port, 1 << 30, deadline=50)
            wait_for(lambda: progress["got"] >= 4 * MIB, 30, what="the doomed guest's transfer to start")
            during = shim_metrics(d)
            start = len(d.log)
            # Vanish without a word: the tap goes first, so the killed sender's FIN never
            # leaves (an orphaned socket still sending would also keep the namespace alive).
            nss.exec(0, "ip", "link", "delete", nss.tap(0))
            sender.kill()          # by PID: `ip netns exec` execs python in place
            sender.wait(10)
            gone_at = time.monotonic()
            subprocess.run(["ip", "netns", "delete", nss.ns(0)], check=True, timeout=30)
            # Its tap fails on the next read or the next write, whichever comes first.
            gone = re.compile(rf"tap {re.escape(nss.tap(0))}\b[^)]*\) detached: (tap {re.escape(nss.tap(0))} failed|write failed)")
            wait_for(lambda: gone.search(d.log[start:]), FREED_WITHIN, what="the vanished guest's detach line")
            wait_for(lambda: not any(nss.tap(0) in line for line in slirpctl(d, "guests").stdout.splitlines()),
                     FREED_WITHIN, what="the vanished guest's port to go")
            port_gone = time.monotonic() - gone_at
            [ending] = peer.results()   # libslirp resets the host side after the departed guest's grace
            host_closed = time.monotonic() - gone_at
        freed, freed_after, after = poll_flows_gone(d, max(1.0, FREED_WITHIN - (time.monotonic() - gone_at)))
        report(f"guest vanished after {progress['got'] // MIB} MiB: port gone in {port_gone:.1f} s, host side "
               f"{ending} after {host_closed:.1f} s; shim before {during}, "
               f"{'freed' if freed else 'NOT freed'} {time.monotonic() - gone_at:.1f} s after the vanish: {after}")
        assert host_closed <= FREED_WITHIN, f"the host side of the vanished guest's flow lasted {host_closed:.1f} s"

        # Another guest is served as before: 16 MiB up, whole.
        with HostPeer(receive_and_hash, timeout=60) as peer:
            out = finish(send_from(nss, 1, peer.port, 16 * MIB))
            assert peer.results() == [(16 * MIB, pattern_sha(16 * MIB))]
        assert out.split() == ["SENT", str(16 * MIB)]
        assert d.alive()

        assert_shim_metrics_present([during])
        assert during.get("slirpd_tcp_shim_flows", 0) >= 1, f"the shim did not count the live flow: {during}"
        assert freed, f"the vanished guest's flow was not freed within {FREED_WITHIN} s: {after}"
    finally:
        net.close()
