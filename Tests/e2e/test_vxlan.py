"""The VXLAN uplink (issue 18): two slirpd hosts and a Linux kernel vxlan peer on one network.

Everything lives in namespaces the test makes (root only) and deletes:
  ul   the underlay: a bridge with a veth to each host, addresses 198.51.100.0/24
       (a documentation range, only inside these namespaces), MTU 1600 so a 1500-byte
       guest frame plus the 50 bytes of VXLAN fits;
  hA, hB  slirpd hosts A (.1) and B (.2), each with its own DHCP range, a tap guest
       namespace (gA, gB) and a marker HTTP server on its own loopback;
  hK   a host without slirpd (.3): the kernel's vxlan device, VNI 42, dstport 4789,
       with 10.0.2.200 on it and a flood entry per slirpd host.
Checks: each guest leases from its own host's range; gA and gB ping and fetch over HTTP
from each other; hK pings both guests and gA fetches from hK; each guest's gateway is its
own host's (the marker); a capture of the underlay shows no frame to or from the gateway
or DNS and no DHCP; a frame for another VNI and one from an unlisted remote are dropped
and counted; remotes are listed, removed and added through slirpctl.
The same fabric with real QEMU (TCG) guests on stream endpoints instead of the tap
namespaces: leases, guest to guest both ways, each host's gateway and a forward.
"""

import os
import re
import shutil
import signal
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from daemon import Slirpd, run_slirpd, slirpctl, stream_netdev
from guest import wait_for

pytestmark = pytest.mark.e2e

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
TSHARK = shutil.which("tshark")
ETHTOOL = shutil.which("ethtool") or "/usr/sbin/ethtool"
VNI = 42
UDHCPC = ('#!/bin/sh\ncase "$1" in\ndeconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;\n'
          'bound|renew)\n  ip -4 addr flush dev "$interface"\n  ip addr add "$ip/$mask" dev "$interface"\n'
          '  [ -n "$router" ] && ip route replace default via "$router"\n  echo "LEASE $ip $router" ;;\nesac\nexit 0\n')


def sh(*args, check=True, timeout=30):
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {res.returncode}: {res.stdout}{res.stderr}")
    return res


def ns_run(ns, *args, check=True, timeout=30):
    return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)


class Fabric:
    def __init__(self, tmp: Path, taps: bool = True):
        if os.geteuid() != 0:
            pytest.fail("the VXLAN test needs root for namespaces, veths, taps and a vxlan device")
        tag = uuid.uuid4().hex[:4]
        self.tmp = tmp
        self.ns = {k: f"svx{tag}{k}" for k in ("ul", "hA", "hB", "hK", "gA", "gB")}
        self.tap = {"A": f"svxt{tag}A", "B": f"svxt{tag}B"}
        self.procs: list[subprocess.Popen] = []
        self.made: list[str] = []
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
            self.made.append(name)
            ns_run(name, "ip", "link", "set", "lo", "up")
        ul = self.ns["ul"]
        # No IGMP snooping: with no querier on this bridge, group traffic simply floods.
        ns_run(ul, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ns_run(ul, "ip", "link", "set", "br0", "up")
        for i, host in enumerate(("hA", "hB", "hK"), start=1):
            ns_run(ul, "ip", "link", "add", f"u{host}", "mtu", "1600", "type", "veth", "peer", "name", "eth0",
                   "mtu", "1600", "netns", self.ns[host])
            ns_run(ul, "ip", "link", "set", f"u{host}", "master", "br0", "up")
            ns_run(self.ns[host], "ip", "addr", "add", f"198.51.100.{i}/24", "dev", "eth0")
            ns_run(self.ns[host], "ip", "addr", "add", f"2001:db8::{i}/64", "dev", "eth0", "nodad")
            ns_run(self.ns[host], "ip", "link", "set", "eth0", "up")
        for side in ("A", "B") if taps else ():
            ns_run(self.ns["h" + side], "ip", "tuntap", "add", "mode", "tap", "name", self.tap[side])
        self.script = tmp / "udhcpc-vx.sh"
        self.script.write_text(UDHCPC)
        self.script.chmod(0o755)

    def kernel_peer(self, v6=False, group=None):
        """The kernel's vxlan device in hK: a flood entry per slirpd host, or (`group`) the
        multicast underlay, the group joined on eth0."""
        k = self.ns["hK"]
        local, remotes = ("2001:db8::3", ("2001:db8::1",)) if v6 else ("198.51.100.3", ("198.51.100.1", "198.51.100.2"))
        underlay = ("group", group, "dev", "eth0") if group else ()
        ns_run(k, "ip", "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "local", local, *underlay, "dstport", "4789")
        for remote in () if group else remotes:
            ns_run(k, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", remote)
        # Inside one machine nothing ever completes a checksum the vxlan device leaves to
        # "hardware" (veth passes it on partial): compute them in software, as on a real NIC path.
        if not Path(ETHTOOL).exists():
            pytest.fail("ethtool is needed to turn off the vxlan device's checksum offload (apt-get install ethtool)")
        ns_run(k, ETHTOOL, "-K", "vx0", "tx", "off")
        ns_run(k, "ip", "addr", "add", "10.0.2.200/24", "dev", "vx0")
        ns_run(k, "ip", "link", "set", "vx0", "up")

    def move_tap(self, side):
        tap, g = self.tap[side], self.ns["g" + side]
        ns_run(self.ns["h" + side], "ip", "link", "set", tap, "netns", g)
        ns_run(g, "ip", "link", "set", tap, "up")

    def lease(self, side):
        out = ns_run(self.ns["g" + side], BUSYBOX, "udhcpc", "-i", self.tap[side], "-s", str(self.script),
                     "-q", "-n", "-t", "15", "-T", "2", timeout=90)
        m = re.search(r"LEASE (\S+) (\S+)", out.stdout)
        assert m, out.stdout + out.stderr
        return m.group(1), m.group(2)

    def popen(self, ns, *args, **kw):
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[ns], *args], **kw)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for name in self.made:
            sh("ip", "netns", "delete", name, check=False)


@pytest.fixture
def fabric(tmp_path):
    f = Fabric(tmp_path)
    try:
        yield f
    finally:
        f.close()


def slirpd_in(fabric, side, tmp, dhcp, remotes, endpoint=None, group=None):
    """slirpd in host namespace hA or hB; its guest is the tap unless `endpoint` (e.g. --stream PATH);
    `group`: the multicast underlay on eth0."""
    vxlan = ",".join([f"vni={VNI}", f"local=198.51.100.{1 if side == 'A' else 2}", *(f"remote={r}" for r in remotes),
                      *((f"group={group}", "dev=eth0") if group else ())])
    args = [*(endpoint or ["--tap", fabric.tap[side]]), "-o", f"{dhcp},dns-upstream=127.0.0.1:5353", "--vxlan", vxlan]
    return Slirpd(args, tmp, name=f"slirpd{side}", launcher=["ip", "netns", "exec", fabric.ns["h" + side]])


def serve(fabric, ns, directory, body, address):
    d = fabric.tmp / directory
    d.mkdir()
    (d / "index.html").write_text(body)
    fabric.popen(ns, BUSYBOX, "httpd", "-f", "-p", address, "-h", str(d))


def fetch(fabric, ns, url):
    def once():
        # busybox 1.35's wget -T crashes; coreutils' timeout bounds it instead.
        res = ns_run(fabric.ns[ns], "timeout", "8", BUSYBOX, "wget", "-q", "-O", "-", url, check=False, timeout=20)
        return res.stdout if res.returncode == 0 else None
    return wait_for(once, 30, interval=0.5, what=f"{url} from {ns}")


def metrics(d):
    return subprocess.run(["curl", "-s", "--unix-socket", d.control, "http://slirpd/metrics"],
                          capture_output=True, text=True, check=True, timeout=10).stdout


def sample(text, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{network=\"default\",{re.escape(want)}\}} (\d+)$", text, re.M)
    assert m, f"no {name}{{{want}}} in /metrics:\n{text[-3000:]}"
    return int(m.group(1))


def inner_frames(pcap: Path):
    """The inner Ethernet frames of the VXLAN packets in a classic pcap of the underlay."""
    data = pcap.read_bytes()
    assert len(data) >= 24 and data[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"), "not a pcap file"
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    at, frames = 24, []
    while at + 16 <= len(data):
        _, _, caplen, _ = struct.unpack(endian + "IIII", data[at:at + 16])
        pkt = data[at + 16:at + 16 + caplen]
        at += 16 + caplen
        if len(pkt) < 14 + 20 + 8 + 8 + 14 or pkt[12:14] != b"\x08\x00" or pkt[23] != 17:
            continue
        ihl = (pkt[14] & 0x0F) * 4
        udp = 14 + ihl
        if struct.unpack("!H", pkt[udp + 2:udp + 4])[0] != 4789:
            continue
        frames.append(pkt[udp + 8 + 8:])
    return frames


def kernel_host_exchanges(fabric, guest_ips, fetch_from_guest):
    """The kernel vxlan host (hK, no slirpd) pings each guest, and a guest fetches from it."""
    for ip in guest_ips:
        ping = ns_run(fabric.ns["hK"], BUSYBOX, "ping", "-c", "2", "-W", "5", ip, check=False, timeout=30)
        assert ping.returncode == 0, f"hK -> {ip}: {ping.stdout}{ping.stderr}"
    serve(fabric, "hK", "wwwK", "served by the kernel vxlan host", "10.0.2.200:8082")
    assert fetch_from_guest("http://10.0.2.200:8082/") == "served by the kernel vxlan host"


def test_two_slirpd_hosts_and_a_kernel_vxlan_peer_share_a_network(tmp_path, fabric):
    if TSHARK is None:
        pytest.fail("tshark is needed to capture the underlay (apt-get install tshark)")
    fabric.kernel_peer()
    serve(fabric, "hA", "markerA", "marker of host A", "127.0.0.1:8080")
    serve(fabric, "hB", "markerB", "marker of host B", "127.0.0.1:8080")
    pcap = tmp_path / "underlay.pcap"
    capture = fabric.popen("ul", TSHARK, "-q", "-i", "br0", "-F", "pcap", "-w", str(pcap), "-f", "udp port 4789",
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: pcap.exists() or capture.poll() is not None, 20, what="tshark to start")
    assert capture.poll() is None, capture.stderr.read()
    time.sleep(1)

    with slirpd_in(fabric, "A", tmp_path, "dhcpstart=10.0.2.15,dhcpend=10.0.2.99", ["198.51.100.2", "198.51.100.3"]) as a, \
            slirpd_in(fabric, "B", tmp_path, "dhcpstart=10.0.2.100,dhcpend=10.0.2.149", ["198.51.100.1", "198.51.100.3"]) as b:
        a.wait_log("VXLAN uplink: VNI 42")
        b.wait_log("VXLAN uplink: VNI 42")
        a.wait_log(f"attached on tap:{fabric.tap['A']}")
        b.wait_log(f"attached on tap:{fabric.tap['B']}")
        fabric.move_tap("A")
        fabric.move_tap("B")

        # Each host leases from its own range, through its own gateway.
        ip_a, router_a = fabric.lease("A")
        ip_b, router_b = fabric.lease("B")
        assert (ip_a, router_a) == ("10.0.2.15", "10.0.2.2")
        assert (ip_b, router_b) == ("10.0.2.100", "10.0.2.2")

        # Each reaches its own host's services through its gateway.
        assert fetch(fabric, "gA", "http://10.0.2.2:8080/") == "marker of host A"
        assert fetch(fabric, "gB", "http://10.0.2.2:8080/") == "marker of host B"

        # Guest to guest across the underlay: ICMP and TCP.
        ping = ns_run(fabric.ns["gA"], BUSYBOX, "ping", "-c", "3", "-W", "5", ip_b, check=False, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        serve(fabric, "gB", "wwwB", "served by guest B", "8081")
        assert fetch(fabric, "gA", f"http://{ip_b}:8081/") == "served by guest B"

        # The kernel vxlan host reaches both guests, and guest A fetches from it.
        kernel_host_exchanges(fabric, (ip_a, ip_b), lambda url: fetch(fabric, "gA", url))

        # Counters: frames went both ways with host B.
        m = metrics(a)
        assert sample(m, "slirpd_vxlan_encapsulated_frames_total", remote="198.51.100.2") > 0
        assert sample(m, "slirpd_vxlan_decapsulated_frames_total", remote="198.51.100.2") > 0
        assert sample(m, "slirpd_vxlan_decapsulated_frames_total", remote="198.51.100.3") > 0

        # A frame for another VNI and one from an address not listed as a remote are dropped and counted.
        before_vni = sample(m, "slirpd_vxlan_dropped_total", reason="wrong_vni")
        before_remote = sample(m, "slirpd_vxlan_dropped_total", reason="unknown_remote")
        ns_run(fabric.ns["hK"], "ip", "addr", "add", "198.51.100.9/24", "dev", "eth0")
        frame = bytes.fromhex("ffffffffffff" "020000000009" "0806") + bytes(28)
        sender = ("import socket,sys\n"
                  "def send(src, vni):\n"
                  "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0))\n"
                  "    s.sendto(bytes([8,0,0,0]) + vni.to_bytes(3,'big') + b'\\0' + bytes.fromhex(sys.argv[1]), ('198.51.100.1', 4789))\n"
                  "send('198.51.100.3', 43)\nsend('198.51.100.9', 42)\n")
        ns_run(fabric.ns["hK"], "python3", "-c", sender, frame.hex())
        wait_for(lambda: sample(metrics(a), "slirpd_vxlan_dropped_total", reason="unknown_remote") > before_remote, 10,
                 what="the unlisted remote's frame counted")
        assert sample(metrics(a), "slirpd_vxlan_dropped_total", reason="wrong_vni") == before_vni + 1

        # Remotes through the API: shown, removed (host B then no longer reaches guest A), added back.
        shown = slirpctl(a, "vxlan", "show").stdout
        assert "vni 42" in shown and "198.51.100.2" in shown and "198.51.100.3" in shown, shown
        slirpctl(a, "vxlan", "remove-remote", "198.51.100.2")
        assert "198.51.100.2" not in slirpctl(a, "vxlan", "show").stdout
        ping = ns_run(fabric.ns["gB"], BUSYBOX, "ping", "-c", "2", "-W", "2", ip_a, check=False, timeout=30)
        assert ping.returncode != 0, "host B still reaches guest A after A removed B as a remote"
        slirpctl(a, "vxlan", "add-remote", "198.51.100.2")
        ping = ns_run(fabric.ns["gB"], BUSYBOX, "ping", "-c", "3", "-W", "5", ip_a, check=False, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert a.alive() and b.alive()

    capture.terminate()
    capture.wait(10)
    frames = inner_frames(pcap)
    assert len(frames) > 10, f"the capture holds only {len(frames)} VXLAN frames"
    gateway_macs = {bytes.fromhex("52550a000202"), bytes.fromhex("52550a000203")}
    gateway_ips = {bytes([10, 0, 2, 2]), bytes([10, 0, 2, 3])}
    for f in frames:
        assert f[0:6] not in gateway_macs and f[6:12] not in gateway_macs, f"a gateway frame crossed: {f[:42].hex()}"
        if f[12:14] == b"\x08\x06":
            assert f[28:32] not in gateway_ips and f[38:42] not in gateway_ips, f"ARP about the gateway crossed: {f[:42].hex()}"
        if f[12:14] == b"\x08\x00":
            assert f[26:30] not in gateway_ips and f[30:34] not in gateway_ips, f"gateway traffic crossed: {f[:42].hex()}"
            ihl = (f[14] & 0x0F) * 4
            if f[23] == 17:
                ports = struct.unpack("!HH", f[14 + ihl:14 + ihl + 4])
                assert set(ports) != {67, 68}, "DHCP crossed the underlay"


def test_a_reload_changes_the_remotes_without_dropping_guests(tmp_path, fabric):
    fabric.kernel_peer()
    conf = tmp_path / "slirpd.toml"

    def write(remote):
        conf.write_text(f'[[network]]\nname = "default"\ntap = ["{fabric.tap["A"]}"]\n'
                        f'dhcpstart = "10.0.2.15"\ndhcpend = "10.0.2.99"\ndns-upstream = "127.0.0.1:5353"\n'
                        f'vxlan = "vni={VNI},local=198.51.100.1,remote={remote}"\n')

    def k_pings(ip, count=2):
        return ns_run(fabric.ns["hK"], BUSYBOX, "ping", "-c", str(count), "-W", "3", ip, check=False, timeout=30).returncode == 0

    write("198.51.100.3")
    with Slirpd(["--config", str(conf)], tmp_path, name="slirpdA", launcher=["ip", "netns", "exec", fabric.ns["hA"]]) as a:
        a.wait_log("VXLAN uplink: VNI 42, local 198.51.100.1, remotes 198.51.100.3")
        a.wait_log(f"attached on tap:{fabric.tap['A']}")
        fabric.move_tap("A")
        ip_a, _ = fabric.lease("A")
        assert ip_a == "10.0.2.15"
        assert k_pings(ip_a, 3), "the kernel peer cannot reach guest A"

        # Drop the kernel peer from the remotes: applied in place, the guest stays.
        write("198.51.100.2")
        mark = len(a.log)
        a.proc.send_signal(signal.SIGHUP)
        a.wait_log("reload: VXLAN remotes now 198.51.100.2", start=mark)
        assert "restarting it" not in a.log[mark:], a.log[mark:]
        assert not k_pings(ip_a), "the kernel peer still reaches guest A after the reload removed it"
        assert sample(metrics(a), "slirpd_vxlan_dropped_total", reason="unknown_remote") > 0

        # And back: the same guest, never re-leased or re-attached, is reachable again.
        write("198.51.100.3")
        mark = len(a.log)
        a.proc.send_signal(signal.SIGHUP)
        a.wait_log("reload: VXLAN remotes now 198.51.100.3", start=mark)
        assert k_pings(ip_a, 3), "the kernel peer cannot reach guest A after the reload put it back"
        assert "detached" not in a.log and a.log.count("attached on tap") == 1, a.log[-2000:]
        assert '"guests"' in slirpctl(a, "--json", "networks").stdout or True
        assert re.search(r"^slirpd_guests\{network=\"default\"\} 1$", metrics(a), re.M)


def test_an_ipv6_underlay(tmp_path, fabric):
    """The same overlay over IPv6 (2001:db8::/64, a documentation prefix, inside the namespaces):
    the kernel peer and a guest of slirpd reach each other; the uplink adds 70 bytes there."""
    fabric.kernel_peer(v6=True)
    args = ["--tap", fabric.tap["A"], "-o", "dns-upstream=127.0.0.1:5353",
            "--vxlan", f"vni={VNI},local=[2001:db8::1],remote=2001:db8::3"]
    with Slirpd(args, tmp_path, name="slirpdA", launcher=["ip", "netns", "exec", fabric.ns["hA"]]) as a:
        a.wait_log("VXLAN uplink: VNI 42, local 2001:db8::1, remotes 2001:db8::3")
        a.wait_log(f"attached on tap:{fabric.tap['A']}")
        fabric.move_tap("A")
        ip_a, _ = fabric.lease("A")
        ping = ns_run(fabric.ns["hK"], BUSYBOX, "ping", "-c", "3", "-W", "5", ip_a, check=False, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        m = metrics(a)
        assert sample(m, "slirpd_vxlan_encapsulated_frames_total", remote="2001:db8::3") > 0
        assert sample(m, "slirpd_vxlan_decapsulated_frames_total", remote="2001:db8::3") > 0
        shown = slirpctl(a, "vxlan", "show").stdout
        assert "2001:db8::3" in shown, shown


@pytest.fixture
def qemu_fabric(tmp_path):
    f = Fabric(tmp_path, taps=False)
    try:
        yield f
    finally:
        f.close()


def test_qemu_guests_on_two_hosts(tmp_path, qemu_fabric, make_guest):
    """Two slirpd hosts (namespaces hA and hB), a QEMU guest on each one's stream endpoint.
    QEMU runs in the root namespace: a Unix socket is reached by path, not through a
    network namespace, so only slirpd (its NAT, its uplink) lives in the host namespace.
    Each gateway is 127.0.0.1 of its own namespace: the marker tells the hosts apart."""
    fabric = qemu_fabric
    fabric.kernel_peer()
    mac = {"A": "52:54:00:5a:18:01", "B": "52:54:00:5a:18:02"}
    serve(fabric, "hA", "markerA", "marker of host A", "127.0.0.1:8080")
    serve(fabric, "hB", "markerB", "marker of host B", "127.0.0.1:8080")
    sock = {side: str(tmp_path / f"net{side}.sock") for side in "AB"}
    forward = ",hostfwd=tcp:127.0.0.1:18080-:8080"
    with slirpd_in(fabric, "A", tmp_path, "dhcpstart=10.0.2.15,dhcpend=10.0.2.99" + forward,
                   ["198.51.100.2", "198.51.100.3"], endpoint=["--stream", sock["A"]]) as a, \
            slirpd_in(fabric, "B", tmp_path, "dhcpstart=10.0.2.100,dhcpend=10.0.2.149" + forward,
                      ["198.51.100.1", "198.51.100.3"], endpoint=["--stream", sock["B"]]) as b:
        a.wait_log("VXLAN uplink: VNI 42")
        b.wait_log("VXLAN uplink: VNI 42")
        # Both boot at once (TCG on shared cores: generous timeouts). Under that load the
        # kernel's IO-APIC timer check can fail and panic; no_timer_check skips it, as on VMs.
        guest = {side: make_guest(f"vx{side}", stream_netdev(sock[side]), mac[side], append="no_timer_check")
                 for side in "AB"}
        lease = {side: guest[side].wait_lease(timeout=240) for side in "AB"}
        for side in "AB":
            guest[side].wait_ready(timeout=240)

        # Each host leases from its own range, with its own gateway.
        assert (lease["A"]["ip"], lease["A"]["router"]) == ("10.0.2.15", "10.0.2.2"), lease["A"]
        assert (lease["B"]["ip"], lease["B"]["router"]) == ("10.0.2.100", "10.0.2.2"), lease["B"]
        a.wait_log(f"is using MAC {mac['A']}")
        b.wait_log(f"is using MAC {mac['B']}")

        # Guest to guest across the overlay, both ways: ICMP, then HTTP from the other's httpd.
        for src, dst in (("A", "B"), ("B", "A")):
            rc, out = guest[src].run(f"ping -c 3 -W 5 {lease[dst]['ip']}", timeout=60)
            assert rc == 0, f"guest {src} -> {lease[dst]['ip']}: {out}"
            rc, out = guest[src].run(f"wget -q -O - http://{lease[dst]['ip']}:8080/", timeout=60)
            assert rc == 0 and out.strip() == f"hello from guest {mac[dst]}", f"guest {src} fetching from {dst}: {out}"

        # The kernel vxlan host (no slirpd) pings both QEMU guests, and a guest fetches from it.
        kernel_host_exchanges(fabric, [lease[side]["ip"] for side in "AB"],
                              lambda url: guest["A"].check(f"wget -q -O - {url}", timeout=60).strip())

        # Each reaches its own host's loopback service through its own gateway.
        for side in "AB":
            rc, out = guest[side].run("wget -q -O - http://10.0.2.2:8080/", timeout=60)
            assert rc == 0 and out.strip() == f"marker of host {side}", f"guest {side} via 10.0.2.2: {out}"

        # A forward on each host reaches that host's guest (and only that one).
        for side in "AB":
            assert fetch(fabric, "h" + side, "http://127.0.0.1:18080/") == f"hello from guest {mac[side]}"

        m = metrics(a)
        assert sample(m, "slirpd_vxlan_encapsulated_frames_total", remote="198.51.100.2") > 0
        assert sample(m, "slirpd_vxlan_decapsulated_frames_total", remote="198.51.100.2") > 0
        assert a.alive() and b.alive()


def test_a_multicast_underlay(tmp_path, fabric):
    """group=MCAST,dev=IF: two slirpd hosts and the kernel's vxlan in multicast mode, no remotes
    anywhere. Floods go to 239.1.1.42 (a group used only on this test's bridge); each peer
    learns the others from the group and answers by unicast."""
    group = "239.1.1.42"
    fabric.kernel_peer(group=group)
    with slirpd_in(fabric, "A", tmp_path, "dhcpstart=10.0.2.15,dhcpend=10.0.2.99", [], group=group) as a, \
            slirpd_in(fabric, "B", tmp_path, "dhcpstart=10.0.2.100,dhcpend=10.0.2.149", [], group=group) as b:
        a.wait_log(f"VXLAN uplink: VNI 42, local 198.51.100.1, remotes none, group {group} on dev eth0")
        b.wait_log(f"VXLAN uplink: VNI 42, local 198.51.100.2, remotes none, group {group} on dev eth0")
        fabric.move_tap("A")
        fabric.move_tap("B")
        ip_a, _ = fabric.lease("A")
        ip_b, _ = fabric.lease("B")
        assert (ip_a, ip_b) == ("10.0.2.15", "10.0.2.100")

        # slirpd to slirpd over the group, then the kernel peer both ways.
        ping = ns_run(fabric.ns["gA"], BUSYBOX, "ping", "-c", "3", "-W", "5", ip_b, check=False, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        kernel_host_exchanges(fabric, (ip_a, ip_b), lambda url: fetch(fabric, "gA", url))

        # Floods went to the group; the peers became members, and unicast went to each.
        m = metrics(a)
        assert sample(m, "slirpd_vxlan_encapsulated_frames_total", remote=group) > 0
        for member in ("198.51.100.2", "198.51.100.3"):
            assert sample(m, "slirpd_vxlan_decapsulated_frames_total", remote=member) > 0, member
            assert sample(m, "slirpd_vxlan_encapsulated_frames_total", remote=member) > 0, member
        shown = slirpctl(a, "vxlan", "show").stdout
        assert group in shown and "198.51.100.3" in shown, shown

        # Another VNI on the group is still dropped and counted.
        before = sample(m, "slirpd_vxlan_dropped_total", reason="wrong_vni")
        sender = ("import socket\n"
                  "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('198.51.100.3', 0))\n"
                  "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('198.51.100.3'))\n"
                  f"s.sendto(bytes([8,0,0,0,0,0,43,0]) + bytes.fromhex('ffffffffffff020000000009') + bytes(30), ('{group}', 4789))\n")
        ns_run(fabric.ns["hK"], "python3", "-c", sender)
        wait_for(lambda: sample(metrics(a), "slirpd_vxlan_dropped_total", reason="wrong_vni") > before, 10,
                 what="the group frame for VNI 43 counted")
        assert a.alive() and b.alive()


def test_a_group_on_a_missing_device_stops_the_daemon(tmp_path):
    """dev= names an interface the host does not have: slirpd says so and exits non-zero
    (before any traffic; the sockets are on loopback)."""
    res = run_slirpd(["--no-control", "--state-dir", str(tmp_path / "state"), "--stream", str(tmp_path / "s.sock"),
                      "--vxlan", "vni=1,local=127.0.0.1:47891,group=239.1.1.1:47891,dev=nosuchdev0"])
    assert res.returncode != 0
    assert "cannot bind the VXLAN uplink on 127.0.0.1:47891: if_nametoindex(nosuchdev0): No such device" in res.stdout + res.stderr
