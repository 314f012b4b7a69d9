"""DNS service fairness (issue 22, items 5 and 6), from namespace guests on taps.

- One guest holds 70 DNS-over-TCP connections to 10.0.2.3:53 open, sending half a
  length prefix or nothing, and opens a new one whenever slirpd closes one. Another
  guest's TCP queries are answered every time, and slirpd closes each stalled
  connection within its timeout (partial message 3 s, idle 5 s).
- A 3,000-byte query over UDP (EDNS padding, RFC 7830), which leaves a namespace at MTU
  1500 as IPv4 fragments, is answered for a local name and for one the loopback upstream
  answers; an upstream answer larger than the MTU reaches the guest as fragments, over
  IPv4 and IPv6.

Both run while an honest guest leases and fetches from a host server on 127.0.0.1
through 10.0.2.2. The upstream resolver is a test server on loopback, never the machine's.
"""

import json
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon import Slirpd, metric
from guest import HostHTTPServer, wait_for
from netns import BUSYBOX, LoopbackDNS, Namespaces, query_in, read_name

pytestmark = pytest.mark.e2e

PARTIAL_TIMEOUT = 3.0
IDLE_TIMEOUT = 5.0
# Loop wake-up, libslirp's FIN and the namespace's scheduling; still well short of "never".
MARGIN = 1.5

# Runs in the attacker's namespace: holds `count` stalled connections for `hold` seconds,
# reopening each one slirpd closes, then waits up to `drain` seconds for slirpd to close
# the rest. Prints READY when the first `count` are open, then a JSON summary.
ATTACKER = r"""
import json, selectors, socket, sys, time
count, hold, drain = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
sel = selectors.DefaultSelector()
lifetimes = {"prefix": [], "silent": []}
stats = {"opened": 0, "failed": 0, "peak": 0}
def open_one(i):
    kind = "prefix" if i % 2 == 0 else "silent"
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("10.0.2.3", 53))
        if kind == "prefix":
            s.sendall(b"\x00")  # half of a length prefix: a message started, never finished
    except OSError:
        s.close()
        stats["failed"] += 1
        return
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, (i, kind, time.monotonic()))
    stats["opened"] += 1
    stats["peak"] = max(stats["peak"], len(sel.get_map()))
for i in range(count):
    open_one(i)
print("READY", stats["opened"], flush=True)
start = time.monotonic()
while sel.get_map() and time.monotonic() < start + hold + drain:
    for key, _ in sel.select(timeout=0.2):
        i, kind, opened = key.data
        try:
            data = key.fileobj.recv(100)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            continue
        sel.unregister(key.fileobj)
        key.fileobj.close()
        lifetimes[kind].append(time.monotonic() - opened)
        if time.monotonic() < start + hold:
            open_one(i)
stats["still_open"] = len(sel.get_map())
stats["lifetimes"] = lifetimes
print(json.dumps(stats), flush=True)
"""

# Runs in a namespace: one query to `server` padded to `size` bytes (0: no padding) over
# UDP, with a 4096-byte EDNS buffer; prints the reply's id, rcode, answers (A as text, TXT
# as its length) and how many datagrams the namespace reassembled meanwhile.
BIG_QUERY = r"""
import json, socket, struct, sys
sys.path.insert(0, sys.argv[1])
from netns import encode_name, read_name
server, name, size = sys.argv[2], sys.argv[3], int(sys.argv[4])
v6 = ":" in server
def reasm_oks():
    if v6:
        return int(next(l.split()[1] for l in open("/proc/net/snmp6") if l.startswith("Ip6ReasmOKs")))
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Ip:")]
    return int(lines[1][lines[0].index("ReasmOKs")])
question = struct.pack("!HHHHHH", 0x7777, 0x0100, 1, 0, 0, 1) + encode_name(name) + struct.pack("!HH", 1, 1)
if size:
    pad = size - len(question) - 11 - 4
    opt = b"\x00" + struct.pack("!HHIH", 41, 4096, 0, 4 + pad) + struct.pack("!HH", 12, pad) + bytes(pad)
else:
    opt = b"\x00" + struct.pack("!HHIH", 41, 4096, 0, 0)
query = question + opt
assert not size or len(query) == size, len(query)
before = reasm_oks()
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(8)
s.sendto(query, (server, 53))
msg = s.recv(65535)
ident, flags, qd, an = struct.unpack("!HHHH", msg[:8])
at = 12
for _ in range(qd):
    _, at = read_name(msg, at)
    at += 4
answers = []
for _ in range(an):
    _, at = read_name(msg, at)
    rtype, _, _, length = struct.unpack("!HHIH", msg[at:at + 10])
    at += 10
    data = msg[at:at + length]
    answers.append(["A", socket.inet_ntoa(data)] if rtype == 1 else ["TXT", len(data)])
    at += length
print(json.dumps({"id": ident, "rcode": flags & 0xF, "tc": bool(flags & 0x200), "answers": answers,
                  "size": len(msg), "reassembled": reasm_oks() - before}))
"""

BIG_TXT = 3000


class BigUpstream(LoopbackDNS):
    """The loopback upstream, plus `big.example.test`, whose answer is a TXT record of
    BIG_TXT bytes: a reply larger than the guest's MTU."""

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                msg, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                ident = struct.unpack("!H", msg[:2])[0]
                name, at = read_name(msg, 12)
            except Exception:
                continue
            self.asked.append(name.lower())
            question = msg[12:at + 4]
            if name.lower() == "big.example.test":
                strings = b"".join(bytes([250]) + b"x" * 250 for _ in range(BIG_TXT // 251))
                strings += bytes([BIG_TXT - len(strings) - 1]) + b"y" * (BIG_TXT - len(strings) - 1)
                answer = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 30, len(strings)) + strings
                self.sock.sendto(struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer, peer)
            elif name.lower() in self.records:
                answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(self.records[name.lower()])
                self.sock.sendto(struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer, peer)
            else:
                self.sock.sendto(struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question, peer)


class HonestGuest(threading.Thread):
    """Namespace `i` leases (while the attack runs) and fetches from the host server
    through the gateway until stopped; every fetch must return the server's body."""

    def __init__(self, nss: Namespaces, i: int, server: HostHTTPServer):
        super().__init__(daemon=True)
        self.nss, self.i, self.server = nss, i, server
        self.leased = threading.Event()
        self.stop = threading.Event()
        self.fetched = 0
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            self.nss.dhcp([self.i])
        except AssertionError as e:
            self.failures.append(f"lease: {e}")
            return
        self.leased.set()
        while not self.stop.is_set():
            r = self.nss.exec(self.i, "timeout", "10", BUSYBOX, "wget", "-q", "-O", "-",
                              self.server.url("10.0.2.2"), check=False, timeout=20)
            if r.returncode != 0 or r.stdout != self.server.body.decode():
                self.failures.append(f"fetch {self.fetched + len(self.failures)}: rc={r.returncode} {r.stderr[-200:]}")
            else:
                self.fetched += 1
            self.stop.wait(0.3)

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert not self.failures, f"the honest guest failed: {self.failures[:3]}"
        assert self.fetched >= 1, "the honest guest fetched nothing"



def test_seventy_stalled_tcp_connections_do_not_keep_another_guests_queries_out(tmp_path):
    with LoopbackDNS({"www.example.test": "192.0.2.7"}) as upstream, Namespaces(3, tmp_path) as nss, \
            HostHTTPServer() as host_http, \
            Slirpd(["-o", f"dns-upstream={upstream.address}", *nss.tap_args], tmp_path) as d:
        nss.move()
        nss.dhcp([0, 1])
        here = str(Path(__file__).parent)
        attacker = nss.popen(0, "python3", "-c", ATTACKER, "70", "10", str(IDLE_TIMEOUT + MARGIN + 1),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = attacker.stdout.readline()
        assert ready.startswith("READY"), f"attacker did not start: {ready!r} {attacker.stderr.read()[-500:] if attacker.poll() is not None else ''}"
        honest = HonestGuest(nss, 2, host_http)
        honest.start()
        try:
            # The victim asks over TCP again and again while the stalled connections are held.
            answered = 0
            deadline = time.monotonic() + 9
            while time.monotonic() < deadline:
                r = query_in(nss, 1, "host.slirpd.internal", proto="tcp")
                assert r["rcode"] == 0 and r["answers"] == [("A", "10.0.2.2")], r
                answered += 1
            r = query_in(nss, 1, "www.example.test", proto="tcp")
            assert r["answers"] == [("A", "192.0.2.7")], r
            assert answered >= 5, f"only {answered} TCP queries in 9 s"
            assert honest.leased.wait(60), f"the honest guest got no lease: {honest.failures}"
            out, err = attacker.communicate(timeout=40)
        finally:
            honest.finish()
        stats = json.loads(out.strip().splitlines()[-1])
        print(f"victim's TCP queries answered: {answered}; attacker: {json.dumps({k: v for k, v in stats.items() if k != 'lifetimes'})}; "
              f"longest lifetimes: prefix {max(stats['lifetimes']['prefix'], default=0):.2f} s, silent {max(stats['lifetimes']['silent'], default=0):.2f} s; "
              f"honest fetches {honest.fetched}")
        # Every attempt is counted: with a per-guest cap in front, some connects fail (RST).
        assert stats["opened"] >= 1 and stats["opened"] + stats["failed"] >= 70, stats
        assert stats["still_open"] == 0, f"{stats['still_open']} stalled connections never closed by slirpd"
        assert max(stats["lifetimes"]["prefix"]) <= PARTIAL_TIMEOUT + MARGIN, stats["lifetimes"]["prefix"]
        assert max(stats["lifetimes"]["silent"]) <= IDLE_TIMEOUT + MARGIN, stats["lifetimes"]["silent"]
        timed_out = metric(d, "slirpd_dns_tcp_timed_out_total")
        evicted = metric(d, "slirpd_dns_tcp_evicted_total")
        assert timed_out > 0
        if stats["peak"] > 64:
            assert evicted > 0, "more connections than slots, yet none was evicted"
        assert metric(d, "slirpd_dns_tcp_connections") == 0
        assert "DNS: closed a DNS-over-TCP connection after" in d.log


def test_a_three_thousand_byte_query_over_udp_is_answered(tmp_path):
    with BigUpstream({"www.example.test": "192.0.2.7"}) as upstream, Namespaces(2, tmp_path) as nss, \
            HostHTTPServer() as host_http, \
            Slirpd(["-o", f"dns-upstream={upstream.address}", *nss.tap_args], tmp_path) as d:
        nss.move()
        nss.dhcp([0])
        assert "mtu 1500" in nss.exec(0, "ip", "link", "show", nss.tap(0)).stdout
        honest = HonestGuest(nss, 1, host_http)
        honest.start()
        here = str(Path(__file__).parent)
        try:
            def ask(name: str, size: int = 3000, server: str = "10.0.2.3") -> dict:
                r = nss.exec(0, "python3", "-c", BIG_QUERY, here, server, name, str(size), check=False, timeout=30)
                assert r.returncode == 0, f"{size}-byte query for {name}: {r.stderr[-600:]}"
                return json.loads(r.stdout)

            for size in (1544, 3000, 3044):
                r = ask("host.slirpd.internal", size)
                assert r["id"] == 0x7777 and r["rcode"] == 0 and r["answers"] == [["A", "10.0.2.2"]], (size, r)
            r = ask("www.example.test")
            assert r["rcode"] == 0 and r["answers"] == [["A", "192.0.2.7"]], r
            assert "www.example.test" in upstream.asked
            # An upstream answer over the MTU arrives whole, as fragments the guest put together.
            r = ask("big.example.test")
            assert r["rcode"] == 0 and not r["tc"] and r["answers"] == [["TXT", BIG_TXT]], r
            assert r["reassembled"] >= 1, f"the {r['size']}-byte answer did not come as fragments: {r}"
            # The same answer to a small query over IPv6 comes as IPv6 fragments.
            # Usable once duplicate address detection is over: a tentative address neither sends nor receives.
            def slaac_ready() -> bool:
                out = nss.exec(0, "ip", "-6", "addr", "show", "scope", "site").stdout
                return "fec0::" in out and "tentative" not in out
            wait_for(slaac_ready, 30, what="a SLAAC address past duplicate address detection")
            r = ask("big.example.test", 0, server="fec0::3")
            assert r["rcode"] == 0 and not r["tc"] and r["answers"] == [["TXT", BIG_TXT]], r
            assert r["reassembled"] >= 1, f"the {r['size']}-byte answer did not come as IPv6 fragments: {r}"
            # Plain queries still work.
            assert query_in(nss, 0, "host.slirpd.internal")["answers"] == [("A", "10.0.2.2")]
            assert honest.leased.wait(60), f"the honest guest got no lease: {honest.failures}"
        finally:
            honest.finish()
        assert metric(d, "slirpd_dns_fragmented_queries_total") == 5
        assert metric(d, "slirpd_dns_fragments_dropped_total") == 0
