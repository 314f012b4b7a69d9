"""End-to-end: a Linux guest under QEMU (TCG) attached to slirpd over vhost-user.

QEMU 7.2's form: the guest's RAM is a shared memfd (so slirpd can map it), the chardev
is the daemon's --vhost-user socket, and the NIC is virtio-net-pci on a vhost-user
netdev. Under TCG the NIC needs `vectors=0` (legacy INTx): with MSI-X, QEMU 7.2.22
segfaults in msix_set_vector_notifiers when vhost_net_start sets up the guest notifiers
(seen here with gdb; KVM's irqfd path is not taken under TCG). The guest gets its lease, fetches from a host service through the gateway, and
moves a bulk transfer each way with large (TSO) segments.
"""

import hashlib
import re
import subprocess

import pytest

from daemon import Slirpd, metric
from guest import Guest, HostHTTPServer

pytestmark = pytest.mark.e2e

MAC_V = "52:54:00:7a:00:01"
MEMORY_MB = 256


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


def test_vhost_user_bulk_both_ways_uses_large_segments(vhost_net):
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
