"""End-to-end: libslirp runs at MTU 65520 inside slirpd and each guest keeps its own MTU
(issue 16's edge checks, with real QEMU guests).

Two guests share the default network (MTU 1500): `jumbo` on virtio-net with host_mtu=9000,
`small` at 1500. slirpd learns the jumbo guest's MTU from its frames; everything toward
`small` fits 1500: libslirp's TCP segments are sized by each guest's MSS, an 8,000-byte
UDP datagram from the host into fragments; the jumbo guest's 8,000-byte ICMP and UDP
packets are answered with Fragmentation Needed (they carry DF), after which that guest
fragments them itself. Checked as a user would: sizes and sha256 of what arrives,
iperf3's own loss count, and the frames each guest's NIC received.

Traffic goes only to 127.0.0.1 (10.0.2.2 in the guests), from 127.0.0.1 into a guest
through host forwards, and between the two guests.
"""

import hashlib
import os
import re
import subprocess
import time

import pytest

from daemon import Slirpd, metric, stream_netdev
from guest import HostHTTPServer, free_port, wait_for

pytestmark = pytest.mark.e2e

MAC_J = "52:54:00:ed:00:01"
MAC_S = "52:54:00:ed:00:02"
UDP_IN = 7000          # the small guest's iperf3 port behind the host forwards
BODY = os.urandom(3_000_000)


def rx_frames(guest) -> tuple[int, int]:
    out = guest.check("cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/rx_packets")
    b, p = map(int, out.split())
    return b, p


class TwoMTUs:
    def __init__(self, tmp, make_guest):
        self.sock = str(tmp / "m.sock")
        self.udp_fwd = free_port()
        self.http = HostHTTPServer(body=BODY)
        fwd = f"127.0.0.1:{self.udp_fwd}-10.0.2.16:{UDP_IN}"   # iperf3: TCP control and UDP data, one port
        self.d = Slirpd(["-o", f"hostfwd=tcp:{fwd},hostfwd=udp:{fwd}", "--stream", self.sock], tmp)
        self.jumbo = make_guest("jumbo", stream_netdev(self.sock), MAC_J, model="virtio-net-pci,host_mtu=9000")
        self.jumbo.wait_ready()
        self.small = make_guest("small", stream_netdev(self.sock), MAC_S)
        self.small.wait_ready()
        assert self.jumbo.lease["ip"] == "10.0.2.15" and self.small.lease["ip"] == "10.0.2.16"
        assert self.jumbo.check("cat /sys/class/net/eth0/mtu").strip() == "9000"
        assert self.small.check("cat /sys/class/net/eth0/mtu").strip() == "1500"

    def close(self):
        self.d.stop()
        self.http.stop()


@pytest.fixture(scope="module")
def nets(tmp_path_factory, request):
    # make_guest is function-scoped; this module owns its guests' lifetimes itself.
    from guest import Guest
    tmp = tmp_path_factory.mktemp("edge")
    started = []

    def make(name, netdev, mac, **kw):
        g = Guest(name, netdev, mac, log_dir=tmp, **kw)
        started.append(g)
        return g

    n = None
    try:
        n = TwoMTUs(tmp, make)
        yield n
        assert n.d.alive(), "slirpd died"
    finally:
        for g in started:
            g.stop()
        if n:
            n.close()


def test_host_download_reaches_a_1500_guest_in_frames_that_fit(nets):
    """libslirp (at MTU 65520) would send the guest's connection 32 KiB segments: it drops
    the MSS of a SYN it answers after connecting to the host. slirpd gives it the SYN again
    (SYNReplay), so it sends segments of the guest's MSS; the 1500 guest's NIC never sees a
    frame above 1514 bytes and the body arrives intact."""
    before = metric(nets.d, "slirpd_tcp_syns_replayed_total")
    b0, p0 = rx_frames(nets.small)
    out = nets.small.check(f"wget -q -O - {nets.http.url('10.0.2.2')} | sha256sum", timeout=120)
    b1, p1 = rx_frames(nets.small)
    assert out.split()[0] == hashlib.sha256(BODY).hexdigest()
    assert (b1 - b0) / (p1 - p0) <= 1514
    assert metric(nets.d, "slirpd_tcp_syns_replayed_total") > before, "the guest's SYN should have been replayed"


def test_jumbo_guest_gets_large_frames_from_the_host(nets):
    """The jumbo guest's MSS (8960) goes to libslirp as it is: it gets frames above 1500."""
    b0, p0 = rx_frames(nets.jumbo)
    out = nets.jumbo.check(f"wget -q -O - {nets.http.url('10.0.2.2')} | sha256sum", timeout=120)
    b1, p1 = rx_frames(nets.jumbo)
    assert out.split()[0] == hashlib.sha256(BODY).hexdigest()
    assert (b1 - b0) / (p1 - p0) > 3000


def test_guests_at_9000_and_1500_exchange_tcp_both_ways(nets):
    for client, server in ((nets.jumbo, "10.0.2.16"), (nets.small, "10.0.2.15")):
        rc, out = client.run(f"wget -q -O - http://{server}:8080/big | wc -c", timeout=90)
        assert rc == 0 and out.strip() == str(1 << 20), f"{client.name} <- {server}: {out}"


def test_jumbo_guests_large_icmp_and_udp_reach_the_1500_guest(nets):
    """The jumbo guest's 8,028-byte packets carry DF (Linux's path MTU discovery): slirpd
    drops the first and answers Fragmentation Needed with MTU 1500, as a router would; the
    guest then fragments the rest itself."""
    before = metric(nets.d, "slirpd_oversized_dropped_total")
    rc, out = nets.jumbo.run("ping -c 4 -W 5 -s 8000 10.0.2.16", timeout=60)
    m = re.search(r"(\d+) packets received", out)
    assert m and int(m.group(1)) >= 3, out
    assert metric(nets.d, "slirpd_oversized_dropped_total") >= before + 1
    # UDP: iperf3 datagrams of 8,000 bytes, counted by the receiver.
    nets.small.check("iperf3 -s -1 -D -p 5201")
    time.sleep(0.5)
    out = nets.jumbo.check("iperf3 -c 10.0.2.16 -p 5201 -u -l 8000 -b 4M -t 3", timeout=60)
    m = re.search(r"(\d+)/(\d+) \(([\d.]+)%\)\s+receiver", out)
    assert m, out
    lost, total = int(m.group(1)), int(m.group(2))
    assert total >= 150 and lost <= total // 20, out


def test_host_udp_datagrams_of_8000_bytes_reach_the_1500_guest_whole(nets):
    """iperf3 from the host through a UDP forward: libslirp (at MTU 65520) sends each
    8,000-byte datagram as one packet, slirpd fragments it for the 1500 guest, whose
    reassembly and UDP checksum must pass for iperf3 to count it."""
    nets.small.check(f"iperf3 -s -1 -D -p {UDP_IN}")
    before = metric(nets.d, "slirpd_ip_fragmented_total")
    out = wait_for(lambda: iperf3_udp(nets.udp_fwd), timeout=30, interval=1, what="iperf3 through the forward")
    m = re.search(r"(\d+)/(\d+) \(([\d.]+)%\)\s+receiver", out)
    assert m, out
    lost, total = int(m.group(1)), int(m.group(2))
    assert total >= 150 and lost <= total // 20, out
    assert metric(nets.d, "slirpd_ip_fragmented_total") >= before + total - lost


def iperf3_udp(port: int) -> str:
    r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "-l", "8000", "-b", "4M", "-t", "3"],
                       capture_output=True, text=True, timeout=60)
    return r.stdout if r.returncode == 0 else ""
