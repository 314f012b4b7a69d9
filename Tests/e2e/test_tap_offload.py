"""Kernel offloads on the tap endpoint: slirpd opens the tap with a virtio-net header
(IFF_VNET_HDR) and TUNSETOFFLOAD, so a namespace at MTU 1500 hands it 64 KiB TCP
segments (TSO) and UDP super-frames (USO), and takes large TCP segments back with a GSO
header. The network is at slirpd's default MTU (1500), like the namespace's interface;
inside slirpd libslirp runs at 65520, and slirpd raises the namespace's MSS toward it, so
libslirp's segments toward the namespace exceed the tap's MTU and leave with a GSO header.
Traffic goes only to 127.0.0.1 (via the gateway 10.0.2.2) and into the test's namespace.
"""

import os
import re
import socket
import subprocess
import threading

import pytest

from bulk import SHA_SENDER, HostPeer, receive_and_hash, repeated_sha256, send_then_close
from daemon import Slirpd
from guest import free_port, wait_for
from test_tap import in_ns, namespace_tap, sh  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

SIZE = 1 << 30
BLOCK = bytes(range(256)) * 256


# Reads HOST:PORT to EOF; prints the byte count and sha256.
RECEIVER = """
import hashlib, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
h, n = hashlib.sha256(), 0
while True:
    b = s.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest())
"""

# Echoes UDP datagrams on port 7 until killed.
UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data, peer)
"""

# One send of 8 x 1000 bytes as a UDP_SEGMENT (USO) super-frame to HOST:PORT.
USO_SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, 103, 1000)  # UDP_SEGMENT
s.sendto(bytes((i * 7) & 0xFF for i in range(8000)), (sys.argv[1], int(sys.argv[2])))
"""


def tap_metrics(d: Slirpd) -> dict[str, int]:
    text = subprocess.run(["curl", "-s", "--unix-socket", d.control, "http://slirpd/metrics"],
                          capture_output=True, text=True, check=True, timeout=10).stdout
    out = {}
    for direction in ("in", "out"):
        m = re.search(rf'^slirpd_tap_gso_frames_total{{[^}}]*direction="{direction}"}} (\d+)$', text, re.M)
        assert m, "no slirpd_tap_gso_frames_total in /metrics"
        out[direction] = int(m.group(1))
    m = re.search(r'^slirpd_tap_malformed_headers_total{[^}]*} (\d+)$', text, re.M)
    assert m, "no slirpd_tap_malformed_headers_total in /metrics"
    out["malformed"] = int(m.group(1))
    return out


def setup_namespace(tap: str, ns: str) -> None:
    sh("ip", "link", "set", tap, "netns", ns)
    route = ["route", "add", "default", "via", "10.0.2.2"]
    for cmd in (["link", "set", "lo", "up"], ["link", "set", tap, "mtu", "1500"], ["link", "set", tap, "up"],
                ["addr", "add", "10.0.2.15/24", "dev", tap], route):
        sh("ip", "-n", ns, *cmd)


def digest_server(listener, results):
    """Reads one connection to EOF and answers with the sha256 of what it read."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(60)
        n, digest = receive_and_hash(conn)
        results.append((n, digest))
        conn.sendall(digest.encode())


def bulk_both_ways(ns: str, size: int, v6: bool = False) -> None:
    gateway, loopback = ("fec0::2", "::1") if v6 else ("10.0.2.2", "127.0.0.1")
    # Namespace -> host: size bytes, sha256 on both ends.
    listener = socket.create_server((loopback, 0), family=socket.AF_INET6 if v6 else socket.AF_INET)
    results = []
    server = threading.Thread(target=digest_server, args=(listener, results), daemon=True)
    server.start()
    out = in_ns(ns, "python3", "-c", SHA_SENDER, gateway, str(listener.getsockname()[1]), str(size), timeout=60).stdout.split()
    server.join(30)
    listener.close()
    expected = repeated_sha256(BLOCK, size // len(BLOCK))
    assert results == [(size, expected)], results
    assert out == [expected, expected], out
    # Host -> namespace.
    with HostPeer(send_then_close(BLOCK, size // len(BLOCK)), timeout=60, host=loopback) as peer:
        got = in_ns(ns, "python3", "-c", RECEIVER, gateway, str(peer.port), timeout=60).stdout.split()
        assert peer.results() == [size]
    assert got == [str(size), expected], got


def udp_round_trip(ns: str, fwd: int) -> None:
    """An 8,000-byte datagram from the host to the namespace's echo server and back."""
    echo = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", UDP_ECHO])
    try:
        assert wait_for(lambda: ":7 " in in_ns(ns, "ss", "-lunH").stdout, 10, what="the namespace's UDP echo")
        payload = bytes((i * 13 + 5) & 0xFF for i in range(8000))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            for _ in range(5):
                s.sendto(payload, ("127.0.0.1", fwd))
                try:
                    data = s.recv(65535)
                    break
                except socket.timeout:
                    continue
            else:
                pytest.fail("no echo of the 8,000-byte datagram")
        assert data == payload
    finally:
        echo.kill()
        echo.wait(10)


def test_offloads_bulk_both_ways_gso_frames_and_udp(tmp_path, namespace_tap):
    tap, ns, _ = namespace_tap
    fwd = free_port()
    with Slirpd(["--tap", tap, "-o", f"hostfwd=udp:127.0.0.1:{fwd}-10.0.2.15:7"], tmp_path) as d:
        line = d.wait_log(f"tap {tap}: virtio-net header of 10 bytes, offloads CSUM|TSO4|TSO6")
        setup_namespace(tap, ns)
        bulk_both_ways(ns, SIZE)
        m = tap_metrics(d)
        # 2 GiB crossed: most of it in frames far above the namespace's MTU.
        assert m["in"] > 1000 and m["out"] > 1000, m
        assert m["malformed"] == 0, m

        udp_round_trip(ns, fwd)

        # A UDP_SEGMENT send leaves the namespace as one USO super-frame (when the kernel
        # granted USO) and reaches the host as 8 datagrams of 1,000 bytes.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
            before = tap_metrics(d)["in"]
            in_ns(ns, "python3", "-c", USO_SENDER, "10.0.2.2", str(s.getsockname()[1]))
            got = b"".join(s.recv(65535) for _ in range(8))
        assert got == bytes((i * 7) & 0xFF for i in range(8000))
        if "USO4|USO6" in line:
            assert tap_metrics(d)["in"] == before + 1
        assert d.alive()


def test_without_offloads_the_tap_still_works(tmp_path, namespace_tap):
    """SLIRPD_TAP_OFFLOAD=off opens the tap as before offloads: no header, whole frames."""
    tap, ns, _ = namespace_tap
    fwd = free_port()
    env = dict(os.environ, SLIRPD_TAP_OFFLOAD="off")
    with Slirpd(["--tap", tap, "-o", f"hostfwd=udp:127.0.0.1:{fwd}-10.0.2.15:7"], tmp_path, env=env) as d:
        d.wait_log(f"tap {tap}: no virtio-net header (SLIRPD_TAP_OFFLOAD=off), no offloads")
        setup_namespace(tap, ns)
        bulk_both_ways(ns, 32 << 20)
        udp_round_trip(ns, fwd)
        assert tap_metrics(d) == {"in": 0, "out": 0, "malformed": 0}


def test_a_namespace_routes_gso_frames_onto_a_1500_link(tmp_path, namespace_tap):
    """The GSO header lets the namespace's kernel cut libslirp's 64 KiB segments for a
    link at MTU 1500: namespace A (on the tap) routes for namespace B (10.0.2.16, proxy
    ARP) over a veth; B downloads 64 MiB from the host and uploads 64 MiB, intact."""
    tap, a, _ = namespace_tap
    b = a + "b"
    sh("ip", "netns", "add", b)
    try:
        with Slirpd(["--tap", tap], tmp_path) as d:
            d.wait_log(f"tap {tap}: virtio-net header of 10 bytes")
            setup_namespace(tap, a)
            for cmd in (["ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b],
                        ["ip", "-n", a, "link", "set", "va", "mtu", "1500", "up"],
                        ["ip", "-n", b, "link", "set", "vb", "mtu", "1500", "up"],
                        ["ip", "-n", b, "link", "set", "lo", "up"],
                        ["ip", "-n", a, "addr", "add", "192.168.77.1/32", "dev", "va"],
                        ["ip", "-n", a, "route", "add", "10.0.2.16/32", "dev", "va"],
                        ["ip", "-n", b, "addr", "add", "10.0.2.16/32", "dev", "vb"],
                        ["ip", "-n", b, "route", "add", "192.168.77.1/32", "dev", "vb"],
                        ["ip", "-n", b, "route", "add", "default", "via", "192.168.77.1", "dev", "vb"],
                        ["ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                         "net.ipv4.conf.all.proxy_arp=1", f"net.ipv4.conf.{tap}.proxy_arp=1"]):
                sh(*cmd)
            bulk_both_ways(b, 64 << 20)
            m = tap_metrics(d)
            assert m["out"] > 100, m
            assert m["malformed"] == 0, m
    finally:
        sh("ip", "netns", "delete", b, check=False)


def test_ipv6_bulk_both_ways_with_tso6(tmp_path, namespace_tap):
    """IPv6 through the gateway fec0::2 to the host's [::1]: the namespace's TSO6
    super-frames reach libslirp whole and 64 MiB cross each way intact."""
    tap, ns, _ = namespace_tap
    with Slirpd(["--tap", tap], tmp_path) as d:
        d.wait_log(f"tap {tap}: virtio-net header of 10 bytes, offloads CSUM|TSO4|TSO6")
        setup_namespace(tap, ns)

        def configured():
            out = in_ns(ns, "ip", "-6", "addr", "show", "scope", "site").stdout
            return "fec0::" in out and "tentative" not in out
        assert wait_for(configured, 30, what="the namespace's fec0:: address from libslirp's RA")
        before = tap_metrics(d)["in"]
        bulk_both_ways(ns, 64 << 20, v6=True)
        m = tap_metrics(d)
        assert m["in"] - before > 100, m
        assert m["malformed"] == 0, m
