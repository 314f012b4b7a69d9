"""End-to-end: real Linux guests under QEMU (TCG) attached to the real slirpd.

Each check is what a user would do: look at the DHCP lease, fetch a page from a
host service through the gateway, reach a guest's server through a host forward,
and have guests fetch from each other. Host services listen on 127.0.0.1 only.
"""

import socket
import struct
import time

import pytest

from daemon import (NetworkWithGuest, Slirpd, dgram_netdev, retry_http_get, stream_netdev,
                    tcp_stream_netdev)
from guest import Guest, HostHTTPServer, free_port

pytestmark = pytest.mark.e2e

MAC_A = "52:54:00:5a:00:01"
MAC_B = "52:54:00:5a:00:02"
MAC_C = "52:54:00:5a:00:03"


def guest_get(guest: Guest, url: str, timeout: float = 30) -> str:
    rc, out = guest.run(f"wget -q -O - {url}", timeout=timeout)
    assert rc == 0, f"{guest.name}: wget {url} failed ({rc}):\n{out}"
    return out.strip()


class DefaultNetwork(NetworkWithGuest):
    """One daemon on QEMU's default network with a stream guest, shared by the tests below."""

    def __init__(self, tmp):
        self.host_http = HostHTTPServer()
        self.fwd_port = free_port()
        self.dgram = str(tmp / "net.dgram")
        opts = (f"hostfwd=tcp:127.0.0.1:{self.fwd_port}-:8080,"
                f"guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:{self.host_http.port},"
                f"guestfwd=tcp:10.0.2.101:7-cmd:/bin/echo exec-forward-ok")
        super().__init__(tmp, ["-o", opts, "--dgram", self.dgram], MAC_A)

    def close(self):
        super().close()
        self.host_http.stop()


@pytest.fixture(scope="module")
def default_net(tmp_path_factory):
    yield from DefaultNetwork(tmp_path_factory.mktemp("defnet")).serve()


def test_stream_guest_gets_qemu_default_lease(default_net):
    lease = default_net.guest.lease
    assert (lease["ip"], lease["router"], lease["dns"]) == ("10.0.2.15", "10.0.2.2", "10.0.2.3")
    assert lease["mask"] == "255.255.255.0"
    default_net.daemon.wait_log(f"is using MAC {MAC_A}")


def test_guest_fetches_host_service_through_gateway(default_net):
    body = guest_get(default_net.guest, default_net.host_http.url("10.0.2.2"))
    assert body == default_net.host_http.body.decode()
    # The host saw the request from loopback: the NAT mapped 10.0.2.2 to 127.0.0.1.
    assert default_net.host_http.requests[-1][0] == "127.0.0.1"


def test_hostfwd_reaches_server_in_guest(default_net):
    body = retry_http_get(f"http://127.0.0.1:{default_net.fwd_port}/")
    assert body.strip() == f"hello from guest {MAC_A}"


def test_guestfwd_to_host_tcp_service(default_net):
    body = guest_get(default_net.guest, "http://10.0.2.100/")
    assert body == default_net.host_http.body.decode()


def test_guestfwd_to_command(default_net):
    rc, out = default_net.guest.run("nc 10.0.2.101 7 </dev/null", timeout=30)
    assert rc == 0 and out.strip() == "exec-forward-ok", out


@pytest.mark.parametrize("payload,expect", [
    (struct.pack(">I", 0), "bad frame length 0"),
    (struct.pack(">I", 5) + b"hello", "bad frame length 5"),
    (struct.pack(">I", 0xFFFFFFFF), "bad frame length 4294967295"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad frame length 1195725856"),
])
def test_garbage_on_stream_closes_only_that_connection(default_net, payload, expect):
    start = len(default_net.daemon.log)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(default_net.sock)
        s.sendall(payload)
        assert s.recv(100) == b"", "slirpd should close a connection that sends a bad frame"
    line = default_net.daemon.wait_log(expect, start=start)
    assert "resetting its connection" in line
    assert default_net.daemon.alive()
    # The attached guest is not disturbed.
    assert guest_get(default_net.guest, default_net.host_http.url("10.0.2.2")) == default_net.host_http.body.decode()


def test_client_that_connects_and_vanishes(default_net):
    start = len(default_net.daemon.log)
    for partial in (b"", b"\x00\x00", struct.pack(">I", 60) + b"\x00" * 10):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(default_net.sock)
            s.sendall(partial)
    default_net.daemon.wait_log("detached: disconnected in the middle of a frame", start=start)
    assert default_net.daemon.wait_log("detached: disconnected (", start=start)
    assert default_net.daemon.alive()
    assert retry_http_get(f"http://127.0.0.1:{default_net.fwd_port}/").strip() == f"hello from guest {MAC_A}"


def test_bad_datagrams_are_logged_and_dropped(default_net, tmp_path):
    start = len(default_net.daemon.log)
    local = str(tmp_path / "junk.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(local)
        s.sendto(b"\x01\x02\x03", default_net.dgram)
        s.sendto(b"\x00" * 70000, default_net.dgram)
    default_net.daemon.wait_log("bad datagram of 3 bytes", start=start)
    default_net.daemon.wait_log("bad datagram of 70000 bytes", start=start)
    assert default_net.daemon.alive()
    assert guest_get(default_net.guest, default_net.host_http.url("10.0.2.2")) == default_net.host_http.body.decode()


def test_two_guests_stream_and_dgram_share_one_network(tmp_path, make_guest):
    """net=192.168.0.0/24 with a stream guest and a datagram guest: leases .15 and .16,
    each fetches from the other, both reach the host; a third guest reusing a MAC is refused."""
    sock, dgram = str(tmp_path / "s.sock"), str(tmp_path / "d.sock")
    with HostHTTPServer() as host_http, \
            Slirpd(["-o", "net=192.168.0.0/24", "--stream", sock, "--dgram", dgram], tmp_path) as d:
        a = make_guest("a", stream_netdev(sock), MAC_A)
        a.wait_ready()
        b = make_guest("b", dgram_netdev(str(tmp_path / "b.sock"), dgram), MAC_B)
        b.wait_ready()
        assert (a.lease["ip"], a.lease["router"], a.lease["dns"]) == ("192.168.0.15", "192.168.0.2", "192.168.0.3")
        assert (b.lease["ip"], b.lease["router"]) == ("192.168.0.16", "192.168.0.2")
        assert guest_get(a, "http://192.168.0.16:8080/") == f"hello from guest {MAC_B}"
        assert guest_get(b, "http://192.168.0.15:8080/") == f"hello from guest {MAC_A}"
        for g in (a, b):
            assert guest_get(g, host_http.url("192.168.0.2")) == host_http.body.decode()
        # Bulk both ways between guests: 1 MiB through the switch, checked by size.
        rc, out = a.run("wget -q -O - http://192.168.0.16:8080/big | wc -c", timeout=60)
        assert rc == 0 and out.strip() == str(1 << 20), out

        # A third guest with A's MAC is refused by name, with advice; A keeps working.
        start = len(d.log)
        c = make_guest("c", stream_netdev(sock), MAC_A)
        line = d.wait_log(f"duplicate MAC {MAC_A}", timeout=120, start=start)
        assert "already used by guest" in line and "mac=" in line
        c.stop()
        assert guest_get(a, "http://192.168.0.16:8080/") == f"hello from guest {MAC_B}"
        assert guest_get(b, "http://192.168.0.15:8080/") == f"hello from guest {MAC_A}"
        assert d.alive()


def test_tcp_endpoint_stream_inet_and_socket_connect(tmp_path, make_guest):
    port = free_port()
    fwd = free_port()
    with HostHTTPServer() as host_http, \
            Slirpd(["-o", f"hostfwd=tcp:127.0.0.1:{fwd}-10.0.2.16:8080", "--tcp", f"127.0.0.1:{port}"], tmp_path) as d:
        a = make_guest("a", tcp_stream_netdev("127.0.0.1", port), MAC_A)
        a.wait_ready()
        b = make_guest("b", f"socket,id=n0,connect=127.0.0.1:{port}", MAC_B, model="e1000")
        b.wait_ready()
        assert (a.lease["ip"], a.lease["router"], a.lease["dns"]) == ("10.0.2.15", "10.0.2.2", "10.0.2.3")
        assert b.lease["ip"] == "10.0.2.16"
        for g in (a, b):
            assert guest_get(g, host_http.url("10.0.2.2")) == host_http.body.decode()
        assert guest_get(a, "http://10.0.2.16:8080/") == f"hello from guest {MAC_B}"
        assert retry_http_get(f"http://127.0.0.1:{fwd}/").strip() == f"hello from guest {MAC_B}"
        assert "tcp 127.0.0.1:" in d.log


def average_rx_frame(guest: Guest, cmd: str, expect: str) -> float:
    """Runs cmd (which must print `expect`) and returns the mean size of frames eth0 received meanwhile."""
    stats = "cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/rx_packets"
    b0, p0 = map(int, guest.check(stats).split())
    rc, out = guest.run(cmd, timeout=60)
    assert rc == 0 and out.strip() == expect, out
    b1, p1 = map(int, guest.check(stats).split())
    return (b1 - b0) / (p1 - p0)


def test_mtu_option_with_host_mtu_carries_jumbo_frames(tmp_path, make_guest):
    sock = str(tmp_path / "j.sock")
    fwd = free_port()
    with HostHTTPServer(body=b"j" * 3_000_000) as host_http, \
            Slirpd(["--mtu", "9000", "-o", f"hostfwd=tcp:127.0.0.1:{fwd}-:8080", "--stream", sock], tmp_path) as d:
        assert "host_mtu=9000" in d.log, "the printed flags must tell virtio-net the MTU"
        g = make_guest("j", stream_netdev(sock), MAC_A, model="virtio-net-pci,host_mtu=9000")
        g.wait_ready()
        assert g.check("cat /sys/class/net/eth0/mtu").strip() == "9000"
        assert average_rx_frame(g, f"wget -q -O - {host_http.url('10.0.2.2')} | wc -c", "3000000") > 3000, \
            "the NAT should send the guest frames above 1500 bytes at --mtu 9000"
        # Host to guest through the forward: 1 MiB, in 9000-byte frames.
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{fwd}/big", timeout=30) as r:
            assert len(r.read()) == 1 << 20


def test_dgram_guest_survives_daemon_restart(tmp_path, make_guest):
    """QEMU's dgram backend keeps sending to the path; a restarted slirpd picks the guest up again."""
    dgram = str(tmp_path / "r.dgram")
    with HostHTTPServer() as host_http:
        d = Slirpd(["--dgram", dgram], tmp_path, name="first")
        try:
            g = make_guest("r", dgram_netdev(str(tmp_path / "r.sock"), dgram), MAC_A)
            g.wait_ready()
            assert guest_get(g, host_http.url("10.0.2.2")) == host_http.body.decode()
        finally:
            assert d.stop() == 0
        with Slirpd(["--dgram", dgram], tmp_path, name="second"):
            # The guest's ARP entry for the gateway survives; the first frame re-creates its port.
            assert guest_get(g, host_http.url("10.0.2.2")) == host_http.body.decode()
