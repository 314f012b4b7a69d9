"""End-to-end: a QEMU TCG guest on slirpd's vhost-user endpoint (issue 17).

One daemon serves the default network on a vhost-user socket and a stream socket. The
vhost-user guest is started with exactly the flags `slirpctl qemu-args --transport
vhost-user` prints (its RAM in a shared memfd, reconnect=1); a stream guest shares the
network. Checked as a user would: the lease, a fetch from a host service through the
gateway, a host forward into the guest, guest-to-guest both ways, 1 GiB each way with
sha256 on both ends (the guest hands slirpd TSO segments and gets large segments whole,
so its NIC counters show frames far above 1514 bytes), and a slirpd restart after which
QEMU re-attaches by itself and the guest keeps its lease and its forward.

Traffic goes only to servers on 127.0.0.1 (10.0.2.2 in the guests), from 127.0.0.1 into
the guest through a host forward, and between the two guests.
"""

import hashlib
import os
import shlex
import time

import pytest

from bulk import HostPeer, receive_and_hash, repeated_sha256, send_then_close
from daemon import Slirpd, metric, retry_http_get, slirpctl, stream_netdev
from guest import Guest, HostHTTPServer, free_port, wait_for

pytestmark = pytest.mark.e2e

MIB = 1 << 20
BLOB_MIB = 32
BULK_MIB = int(os.environ.get("SLIRPD_VHOST_BULK_MIB", "1024"))
FLOOR_MIBS = 2           # legs fail below this rate (MiB/s) rather than run on
MEMORY_MB = 256          # tmpfs (half of RAM) holds the blob
MAC_S = "52:54:00:7e:00:02"
BODY = os.urandom(2_000_000)


def leg_timeout(mib: float) -> float:
    return 60 + mib / FLOOR_MIBS


def nic_counters(g: Guest) -> dict[str, int]:
    names = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
    out = g.check("cd /sys/class/net/eth0/statistics && cat " + " ".join(names))
    return dict(zip(names, map(int, out.split())))


class VhostNetwork:
    def __init__(self, tmp):
        self.tmp = tmp
        self.vu, self.sock = str(tmp / "net.vu"), str(tmp / "net.sock")
        self.fwd = free_port()
        self.args = ["-o", f"hostfwd=tcp:127.0.0.1:{self.fwd}-10.0.2.15:8080", "--vhost-user", self.vu, "--stream", self.sock,
                     "--state-dir", str(tmp / "state")]
        self.d = Slirpd(self.args, tmp)
        self.http = HostHTTPServer(body=BODY)
        self.blob = os.urandom(BLOB_MIB * MIB)
        self.guests: list[Guest] = []
        out = slirpctl(self.d, "qemu-args", "--transport", "vhost-user", "--memory", f"{MEMORY_MB}M").stdout.strip()
        self.flags = shlex.split(out)
        self.mac = self.flags[self.flags.index("-device") + 1].split("mac=")[1].split(",")[0]
        self.vhost = self.boot(Guest("vu", None, self.mac, extra_args=self.flags, log_dir=tmp, memory_mb=MEMORY_MB))
        self.stream = self.boot(Guest("st", stream_netdev(self.sock), MAC_S, log_dir=tmp))

    def boot(self, g: Guest) -> Guest:
        self.guests.append(g)
        g.wait_ready()
        return g

    def restart_daemon(self):
        self.d.stop()
        self.d = Slirpd(self.args, self.tmp, name="slirpd-again")

    def close(self):
        for g in self.guests:
            g.stop()
        self.d.stop()
        self.http.stop()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    n = VhostNetwork(tmp_path_factory.mktemp("vhost"))
    try:
        yield n
        assert n.d.alive(), "slirpd died"
    finally:
        n.close()


def test_qemu_args_print_the_shared_memory_form(net):
    flags = " ".join(net.flags)
    assert f"-m {MEMORY_MB}M -object memory-backend-memfd,id=mem,size={MEMORY_MB}M,share=on" in flags
    assert f"-chardev socket,id=c0,path={net.vu},reconnect=1 -netdev vhost-user,id=n0,chardev=c0" in flags


def test_the_vhost_user_guest_leases_the_first_address(net):
    lease = net.vhost.lease
    assert lease["ip"] == "10.0.2.15" and lease["router"] == "10.0.2.2" and lease["mtu"] == "1500", lease


def test_fetch_from_a_host_service_through_the_gateway(net):
    out = net.vhost.check(f"wget -q -O - {net.http.url('10.0.2.2')} | sha256sum", timeout=60)
    assert out.split()[0] == hashlib.sha256(BODY).hexdigest()


def test_host_forward_into_the_guest(net):
    body = retry_http_get(f"http://127.0.0.1:{net.fwd}/")
    assert body == f"hello from guest {net.mac}"


def test_vhost_user_and_stream_guests_talk_both_ways(net):
    for client, server in ((net.vhost, "10.0.2.16"), (net.stream, "10.0.2.15")):
        out = client.check(f"wget -q -O - http://{server}:8080/big | wc -c", timeout=90)
        assert out.strip() == str(1 << 20), f"{client.name} <- {server}: {out}"
    out = net.stream.check("wget -q -O - http://10.0.2.15:8080/", timeout=30)
    assert out == f"hello from guest {net.mac}"


def test_a_gib_each_way_is_intact_in_large_segments(net):
    g, times = net.vhost, max(1, BULK_MIB // BLOB_MIB)
    expected = repeated_sha256(net.blob, times)
    with HostPeer(send_then_close(net.blob), timeout=leg_timeout(BLOB_MIB)) as peer:
        out = g.check(f"nc 10.0.2.2 {peer.port} -e sh -c 'cat >/tmp/blob' && sha256sum /tmp/blob",
                      timeout=leg_timeout(BLOB_MIB))
    assert out.split()[0] == hashlib.sha256(net.blob).hexdigest()

    before, segmented = nic_counters(g), metric(net.d, "slirpd_tcp_segmented_total")
    with HostPeer(receive_and_hash, timeout=leg_timeout(BULK_MIB)) as peer:
        t0 = time.monotonic()
        g.check(f"nc 10.0.2.2 {peer.port} -e sh -c 'i=0; while [ $i -lt {times} ]; do cat /tmp/blob; i=$((i+1)); done'",
                timeout=leg_timeout(BULK_MIB))
        [(n, sha)] = peer.results()
        up = time.monotonic() - t0
    assert n == times * len(net.blob) and sha == expected, "guest->host: the host got other bytes"

    with HostPeer(send_then_close(net.blob, times), timeout=leg_timeout(BULK_MIB)) as peer:
        t0 = time.monotonic()
        out = g.check(f"rm -f /tmp/r; nc 10.0.2.2 {peer.port} -e sh -c 'sha256sum >/tmp/r' && cat /tmp/r",
                      timeout=leg_timeout(BULK_MIB))
        [sent] = peer.results()
        down = time.monotonic() - t0
    assert sent == times * len(net.blob) and out.split()[0] == expected, f"host->guest: sha256 in the guest differs: {out}"
    after = nic_counters(g)
    print(f"\n[vhost-user] {BULK_MIB} MiB guest->host in {up:.1f} s, host->guest in {down:.1f} s (bound by sha256sum)")
    # TSO both ways: the guest sent and received segments far above one 1514-byte frame, and
    # slirpd cut nothing for it (the stream guest was idle meanwhile).
    tx = (after["tx_bytes"] - before["tx_bytes"]) / max(1, after["tx_packets"] - before["tx_packets"])
    rx = (after["rx_bytes"] - before["rx_bytes"]) / max(1, after["rx_packets"] - before["rx_packets"])
    assert tx > 4000 and rx > 4000, f"average frame: sent {tx:.0f}, received {rx:.0f} bytes"
    assert metric(net.d, "slirpd_tcp_segmented_total") == segmented


def test_a_restarted_daemon_gets_the_guest_back_with_its_lease_and_forward(net):
    """QEMU's reconnect=1 re-attaches the guest; the lease comes back from the state
    directory, and the forward from the options."""
    net.restart_daemon()
    # The guest's own address never changed; what it reaches again is the proof.
    wait_for(lambda: net.vhost.run("ping -c 1 -W 1 10.0.2.2", timeout=10)[0] == 0, timeout=60, interval=1,
             what="the guest to reach the gateway after the restart")
    out = net.vhost.check(f"wget -q -O - {net.http.url('10.0.2.2')} | sha256sum", timeout=60)
    assert out.split()[0] == hashlib.sha256(BODY).hexdigest()
    assert retry_http_get(f"http://127.0.0.1:{net.fwd}/") == f"hello from guest {net.mac}"
    out = net.vhost.check("udhcpc -i eth0 -n -q -t 10 -T 1 -s /bin/true 2>&1", timeout=60)
    assert "lease of 10.0.2.15 obtained" in out, out
    assert net.d.alive()
