"""Network namespaces behind tap devices, as guests of a slirpd network, and a DNS
server on loopback to stand in for the upstream resolver.

A namespace guest costs a tap and a namespace instead of a QEMU boot, so tests can have
dozens. Everything runs as root (ip tuntap / ip netns); traffic stays on loopback and
inside the namespaces.
"""

import os
import shutil
import socket
import struct
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Optional

import pytest

BUSYBOX = shutil.which("busybox") or "/bin/busybox"

# Applies a lease inside the namespace and prints it: "LEASE ip router dns".
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
  ip -4 addr flush dev "$interface"
  ip addr add "$ip/$mask" dev "$interface"
  [ -n "$router" ] && ip route replace default via "$router"
  echo "LEASE $ip ${router:-none} ${dns:-none}" ;;
esac
exit 0
"""


def sh(*args, check=True, timeout=60, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout, **kw)


class Namespaces:
    """`count` tap devices, each with an empty namespace. The taps stay in the root
    namespace until `move()`, so a daemon can open them first (`tap_args`)."""

    def __init__(self, count: int, tmp: Path):
        if os.geteuid() != 0:
            pytest.fail("namespace guests need root to create tap devices and network namespaces")
        tag = uuid.uuid4().hex[:4]
        self.pairs = [(f"slt{tag}{i:02d}", f"sln{tag}{i:02d}") for i in range(count)]
        self.script = Path(tmp) / "udhcpc-ns.sh"
        self.script.write_text(UDHCPC_SCRIPT)
        self.script.chmod(0o755)
        self.procs: list[subprocess.Popen] = []
        self.created: list[tuple[str, str]] = []
        for tap, ns in self.pairs:
            sh("ip", "tuntap", "add", "mode", "tap", "name", tap)
            self.created.append((tap, ns))
            sh("ip", "netns", "add", ns)

    @property
    def tap_args(self) -> list[str]:
        return [a for tap, _ in self.pairs for a in ("--tap", tap)]

    def tap(self, i: int) -> str:
        return self.pairs[i][0]

    def ns(self, i: int) -> str:
        return self.pairs[i][1]

    def move(self) -> None:
        """Moves each tap into its namespace and brings it up (the daemon holds it open)."""
        for tap, ns in self.pairs:
            sh("ip", "link", "set", tap, "netns", ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", tap, "up")

    def exec(self, i: int, *args, timeout=60, check=True):
        return sh("ip", "netns", "exec", self.ns(i), *args, timeout=timeout, check=check)

    def popen(self, i: int, *args, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(i), *args], **kw)
        self.procs.append(p)
        return p

    def dhcp_command(self, i: int, hostname: Optional[str] = None, requested: Optional[str] = None,
                     tries: int = 20) -> list[str]:
        cmd = ["ip", "netns", "exec", self.ns(i), BUSYBOX, "udhcpc", "-i", self.tap(i), "-s", str(self.script),
               "-q", "-n", "-t", str(tries), "-T", "2", "-A", "1"]
        if hostname:
            cmd += ["-x", f"hostname:{hostname}"]
        if requested:
            cmd += ["-r", requested]
        return cmd

    def dhcp(self, indices, hostnames=None, requested=None, timeout=120) -> dict[int, dict]:
        """Runs udhcpc in the given namespaces at once; returns {i: {ip, router, dns}}.
        Fails with every client's output if one gets no lease."""
        procs = {}
        for i in indices:
            procs[i] = subprocess.Popen(
                self.dhcp_command(i, (hostnames or {}).get(i), (requested or {}).get(i)),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        leases, failures = {}, []
        for i, p in procs.items():
            try:
                out, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            line = next((l for l in out.splitlines() if l.startswith("LEASE ")), None)
            if p.returncode != 0 or line is None:
                failures.append((self.ns(i), p.returncode, out[-600:]))
                continue
            _, ip, router, dns = line.split()
            leases[i] = {"ip": ip, "router": router, "dns": dns}
        assert not failures, f"{len(failures)} namespace(s) got no lease: {failures[:3]}"
        return leases

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for tap, ns in self.created:
            sh("ip", "netns", "delete", ns, check=False)
            sh("ip", "link", "delete", tap, check=False)

    def __enter__(self) -> "Namespaces":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- DNS on the wire, for the test's own client and upstream server ---

def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def read_name(msg: bytes, at: int) -> tuple[str, int]:
    labels, end, hops = [], None, 0
    while True:
        n = msg[at]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = at + 2
            at = ((n & 0x3F) << 8) | msg[at + 1]
            hops += 1
            assert hops < 20, "compression loop"
            continue
        if n == 0:
            return ".".join(labels), (end if end is not None else at + 1)
        labels.append(msg[at + 1:at + 1 + n].decode())
        at += 1 + n


def make_query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, 1)


def parse_response(msg: bytes) -> dict:
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", msg[:12])
    at = 12
    for _ in range(qd):
        _, at = read_name(msg, at)
        at += 4
    answers = []
    for _ in range(an):
        name, at = read_name(msg, at)
        rtype, _, _, length = struct.unpack("!HHIH", msg[at:at + 10])
        at += 10
        data = msg[at:at + length]
        if rtype == 1:
            answers.append(("A", socket.inet_ntoa(data)))
        elif rtype == 12:
            answers.append(("PTR", read_name(msg, at)[0]))
        at += length
    return {"id": ident, "rcode": flags & 0xF, "aa": bool(flags & 0x400), "answers": answers}


# Runs inside a namespace: one query over UDP or TCP, the parsed answer as JSON.
CLIENT = r"""
import json, socket, struct, sys
sys.path.insert(0, sys.argv[1])
from netns import make_query, parse_response
server, name, qtype, proto = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
family = socket.AF_INET6 if ":" in server else socket.AF_INET
q = make_query(name, qtype)
if proto == "udp":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(8)
    s.sendto(q, (server, 53))
    msg = s.recv(65535)
else:
    s = socket.create_connection((server, 53), timeout=8)
    s.sendall(struct.pack("!H", len(q)) + q)
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
        chunk = s.recv(65535)
        if not chunk:
            break
        buf += chunk
    msg = buf[2:]
print(json.dumps(parse_response(msg)))
"""


def query_in(nss: Namespaces, i: int, name: str, qtype: int = 1, proto: str = "udp",
             server: str = "10.0.2.3") -> dict:
    import json
    here = str(Path(__file__).parent)
    r = nss.exec(i, "python3", "-c", CLIENT, here, server, name, str(qtype), proto, timeout=30, check=False)
    assert r.returncode == 0, f"DNS query for {name} over {proto} from {nss.ns(i)} failed: {r.stderr[-800:]}"
    result = json.loads(r.stdout)
    result["answers"] = [tuple(a) for a in result["answers"]]
    return result


class LoopbackDNS:
    """An upstream resolver on 127.0.0.1: A records from `records`, NXDOMAIN for the
    rest. It records every name it was asked."""

    def __init__(self, records: dict[str, str]):
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.asked: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                msg, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                ident, flags, qd = struct.unpack("!HHH", msg[:6])
                name, at = read_name(msg, 12)
                qtype = struct.unpack("!H", msg[at:at + 2])[0]
            except Exception:
                continue
            self.asked.append(name.lower())
            question = msg[12:at + 4]
            address = self.records.get(name.lower())
            if address and qtype == 1:
                answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(address)
                reply = struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer
            else:
                reply = struct.pack("!HHHHHH", ident, 0x8183 if not address else 0x8180, 1, 0, 0, 0) + question
            self.sock.sendto(reply, peer)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> "LoopbackDNS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
