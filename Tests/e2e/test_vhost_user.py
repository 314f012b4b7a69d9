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
import re
import shlex
import subprocess
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
        self.guests: list[Guest] = []
        self.d = Slirpd(self.args, tmp)
        self.http = HostHTTPServer(body=BODY)
        self.blob = os.urandom(BLOB_MIB * MIB)

    def start(self):
        """Boots the guests; close() stops whatever started, even if this fails."""
        out = slirpctl(self.d, "qemu-args", "--transport", "vhost-user", "--memory", f"{MEMORY_MB}M").stdout.strip()
        self.flags = shlex.split(out)
        self.mac = self.flags[self.flags.index("-device") + 1].split("mac=")[1].split(",")[0]
        self.vhost = self.boot(Guest("vu", None, self.mac, extra_args=self.flags, log_dir=self.tmp, memory_mb=MEMORY_MB))
        self.stream = self.boot(Guest("st", stream_netdev(self.sock), MAC_S, log_dir=self.tmp))

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
        n.start()
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
    assert lease["ip"] == "10.0.2.15" and lease["router"] == "10.0.2.2" and lease["mtu"] == 1500, lease


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

    merged = metric(net.d, "slirpd_tcp_merged_to_guests_total")
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
    # libslirp's segments (natMSS) reached the guest merged, up to 64 KiB each.
    assert metric(net.d, "slirpd_tcp_merged_to_guests_total") > merged


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


# --- The back end's own checks (hand-written flags, one guest per test) -----------------
# Under TCG the NIC here has `vectors=0` (legacy INTx): with MSI-X, QEMU 7.2.22 segfaulted
# in msix_set_vector_notifiers when vhost_net_start set up the guest notifiers (seen with
# gdb: virtio_set_status -> vhost_net_start -> msix_set_vector_notifiers -> SIGSEGV).

MAC_V = "52:54:00:7a:00:01"


def vhost_user_args(path: str, mac: str, memory_mb: int = MEMORY_MB, reconnect: bool = False) -> list[str]:
    chardev = f"socket,id=c0,path={path}" + (",reconnect=1" if reconnect else "")
    return ["-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
            "-numa", "node,memdev=mem",
            "-chardev", chardev,
            "-netdev", "vhost-user,id=n0,chardev=c0",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},vectors=0"]


def vhost_metric(d: Slirpd, name: str, extra: str = "") -> int:
    """The sum over attached vhost-user guests of one /metrics family (with `extra` labels)."""
    text = subprocess.run(["curl", "-s", "--unix-socket", d.control, "http://slirpd/metrics"],
                          capture_output=True, text=True, check=True, timeout=10).stdout
    values = [int(m.group(1)) for m in re.finditer(rf'^{name}{{network="default",guest="\d+"{extra}}} (\d+)$', text, re.M)]
    assert values, f"no {name} sample for a vhost-user guest in /metrics"
    return sum(values)


def guest_get(guest: Guest, url: str, timeout: float = 60) -> str:
    rc, out = guest.run(f"wget -q -O - {url}", timeout=timeout)
    assert rc == 0, f"{guest.name}: wget {url} failed ({rc}):\n{out}"
    return out.strip()


@pytest.fixture(scope="module")
def vhost_net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vhost")
    path = str(tmp / "vhost.sock")
    daemon = Slirpd(["--vhost-user", path], tmp)
    guest = None
    try:
        guest = Guest("v", None, MAC_V, memory_mb=MEMORY_MB, log_dir=tmp,
                      extra_args=vhost_user_args(path, MAC_V))
        guest.wait_ready()
        yield daemon, guest
    finally:
        if guest is not None:
            guest.stop()
        daemon.stop()


def test_vhost_user_guest_gets_lease(vhost_net):
    daemon, guest = vhost_net
    lease = guest.lease
    assert (lease["ip"], lease["router"], lease["dns"]) == ("10.0.2.15", "10.0.2.2", "10.0.2.3")
    # The attach line names the negotiated features; Linux takes the offloads.
    line = daemon.wait_log("vhost-user queues running")
    assert "guestTSO4" in line and "mrgRXBuf" in line and "takes large TCP segments" in line, line


def test_vhost_user_guest_fetches_host_service(vhost_net):
    daemon, guest = vhost_net
    with HostHTTPServer() as http:
        assert guest_get(guest, http.url("10.0.2.2")) == http.body.decode()
        assert http.requests[-1][0] == "127.0.0.1"


def test_vhost_user_download_uses_large_segments(vhost_net):
    daemon, guest = vhost_net
    size = 8 << 20
    body = bytes(range(256)) * (size // 256)
    out_before = vhost_metric(daemon, "slirpd_vhost_user_gso_frames_total", ',direction="out"')
    with HostHTTPServer(body=body) as http:
        out = guest.check(f"wget -q -O - {http.url('10.0.2.2')} | sha256sum", timeout=120)
    assert out.split()[0] == hashlib.sha256(body).hexdigest()
    # Toward the guest the NAT's large segments went whole into its buffers (GSO).
    assert vhost_metric(daemon, "slirpd_vhost_user_gso_frames_total", ',direction="out"') > out_before
    assert "closing its connection" not in daemon.log, daemon.log[-3000:]


def test_vhost_user_upload_uses_large_segments(vhost_net):
    from bulk import HostPeer, receive_and_hash
    daemon, guest = vhost_net
    mib = 16
    in_before = vhost_metric(daemon, "slirpd_vhost_user_gso_frames_total", ',direction="in"')
    with HostPeer(receive_and_hash, timeout=120) as peer:
        guest.check(f"nc 10.0.2.2 {peer.port} -e sh -c 'dd if=/dev/zero bs=1048576 count={mib} 2>/dev/null'", timeout=120)
        n, sha = peer.results()[0]
    assert n == mib << 20
    assert sha == hashlib.sha256(bytes(mib << 20)).hexdigest()
    # The guest's TSO: TCP segments over its MTU came out of its TX ring whole.
    assert vhost_metric(daemon, "slirpd_vhost_user_gso_frames_total", ',direction="in"') > in_before
    assert "closing its connection" not in daemon.log, daemon.log[-3000:]


def test_vhost_user_guest_survives_slirpd_restart_with_reconnect(tmp_path):
    """QEMU's `-chardev socket,...,reconnect=1` attaches the guest again after slirpd
    restarts: QEMU sends the whole setup again and the rings resume from the used
    index. The guest keeps its lease (the new slirpd restores it from its state
    directory) and its forward, without a new DHCP exchange."""
    from daemon import retry_http_get
    from guest import free_port
    path = str(tmp_path / "vhost.sock")
    port = free_port()
    state = str(tmp_path / "state")
    args = ["--vhost-user", path, "--state-dir", state, "-o", f"hostfwd=tcp:127.0.0.1:{port}-:8080"]
    first = Slirpd(args, tmp_path, name="first")
    guest = None
    try:
        guest = Guest("r", None, MAC_V, memory_mb=MEMORY_MB, log_dir=tmp_path,
                      extra_args=vhost_user_args(path, MAC_V, reconnect=True))
        guest.wait_ready()
        assert retry_http_get(f"http://127.0.0.1:{port}/").strip() == f"hello from guest {MAC_V}"
        first.wait_log("vhost-user queues running")
        first.stop()
        second = Slirpd(args, tmp_path, name="second")
        try:
            second.wait_log("vhost-user queues running", timeout=30)
            # The lease came back from the state directory, not from a new exchange.
            with HostHTTPServer() as http:
                assert guest_get(guest, http.url("10.0.2.2")) == http.body.decode()
            assert retry_http_get(f"http://127.0.0.1:{port}/").strip() == f"hello from guest {MAC_V}"
            assert "1 of 1 saved leases still valid" in second.log
            assert f"lease: {MAC_V} has" not in second.log, "the guest asked for a new lease"
            assert "closing its connection" not in second.log, second.log[-3000:]
        finally:
            second.stop()
    finally:
        if guest is not None:
            guest.stop()
        first.stop()


def _vu_message(request: int, payload: bytes = b"", flags: int = 1) -> bytes:
    import struct
    return struct.pack("<III", request, flags, len(payload)) + payload


def test_vhost_user_protocol_errors_close_only_that_connection(tmp_path):
    """A front end that breaks the protocol (extra descriptors, an unsealed memfd, a
    request never offered) loses its own connection, with a log line and a count in
    /metrics; the daemon and a well-behaved front end on the same socket carry on.
    Descriptors travel over SCM_RIGHTS, as QEMU sends them."""
    import fcntl
    import socket
    import struct
    path = str(tmp_path / "vu.sock")
    d = Slirpd(["--vhost-user", path], tmp_path)
    try:
        good = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        good.settimeout(10)
        good.connect(path)
        good.sendall(_vu_message(1))  # GET_FEATURES
        reply = good.recv(20)
        request, flags, size, features = struct.unpack("<IIIQ", reply)
        assert (request, flags & 7, size) == (1, 5, 8), reply
        assert features & (1 << 32) and features & (1 << 11) and not features & (1 << 22), hex(features)

        def broken(send) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            send(s)
            assert s.recv(64) == b"", "slirpd should have closed this connection"
            s.close()

        e1, e2 = os.eventfd(0), os.eventfd(0)
        # SET_VRING_CALL with two descriptors where one belongs.
        broken(lambda s: socket.send_fds(s, [_vu_message(13, struct.pack("<Q", 0))], [e1, e2]))
        # SET_MEM_TABLE with a memfd that could shrink under the mapping (no F_SEAL_SHRINK).
        mem = os.memfd_create("guest", os.MFD_ALLOW_SEALING)
        os.ftruncate(mem, 1 << 20)
        table = struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 1 << 20, 0x7F0000000000, 0)
        broken(lambda s: socket.send_fds(s, [_vu_message(5, table)], [mem]))
        # The same memfd sealed maps, and the connection stays; a request never offered closes it.
        fcntl.fcntl(mem, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)

        def mapped_then_log_base(s):
            socket.send_fds(s, [_vu_message(5, table, flags=1 | 8)], [mem])   # need_reply, no REPLY_ACK: no answer
            s.sendall(_vu_message(6, struct.pack("<QQ", 4096, 0)))           # SET_LOG_BASE: LOG_ALL never offered
        broken(mapped_then_log_base)
        for fd in (e1, e2, mem):
            os.close(fd)

        assert metric(d, "slirpd_vhost_user_closed_total", reason="protocol") == 2
        assert metric(d, "slirpd_vhost_user_closed_total", reason="mapping") == 1
        assert "setVringCall with 2 descriptors (expected 1)" in d.log, d.log[-3000:]
        assert "not sealed against shrinking" in d.log
        assert "setLogBase, whose feature was never offered" in d.log
        # The well-behaved connection is still served.
        good.sendall(_vu_message(15))  # GET_PROTOCOL_FEATURES
        request, flags, size, value = struct.unpack("<IIIQ", good.recv(20))
        assert (request, size, value) == (15, 8, 1 << 3)
        good.close()
        assert d.alive()
    finally:
        d.stop()
