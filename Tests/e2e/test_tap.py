"""The tap endpoint: a network namespace joins the shared NAT next to a QEMU guest.

The test makes its own namespace and tap device (root only: ip tuntap / ip netns),
moves the tap into the namespace, and runs busybox's DHCP client and HTTP tools in it.
Traffic stays on loopback and inside the namespace and the virtual network.
"""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from daemon import Slirpd, stream_netdev
from guest import HostHTTPServer, free_port, wait_for

pytestmark = pytest.mark.e2e

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
MAC_G = "52:54:00:7a:00:01"


def sh(*args, check=True, timeout=30):
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture
def namespace_tap(tmp_path):
    """A tap device (in the root namespace until the daemon holds it) and an empty namespace."""
    if os.geteuid() != 0:
        pytest.fail("the tap test needs root to create a tap device and a network namespace")
    suffix = uuid.uuid4().hex[:6]
    tap, ns = f"sltap{suffix}", f"slns{suffix}"
    sh("ip", "tuntap", "add", "mode", "tap", "name", tap)
    sh("ip", "netns", "add", ns)
    script = tmp_path / "udhcpc.sh"
    # Applies the lease in the namespace; prints it for the test.
    script.write_text('#!/bin/sh\ncase "$1" in bound|renew)\n'
                      '  ip addr flush dev "$interface"\n  ip addr add "$ip/$mask" dev "$interface"\n'
                      '  [ -n "$router" ] && ip route add default via "$router"\n'
                      '  echo "LEASE $ip $router" ;;\nesac\n')
    script.chmod(0o755)
    try:
        yield tap, ns, script
    finally:
        sh("ip", "netns", "delete", ns, check=False)
        sh("ip", "link", "delete", tap, check=False)


def in_ns(ns, *args, timeout=30, check=True):
    return sh("ip", "netns", "exec", ns, *args, timeout=timeout, check=check)


def test_namespace_on_a_tap_joins_the_nat_with_a_qemu_guest(tmp_path, namespace_tap, make_guest):
    tap, ns, script = namespace_tap
    sock = tmp_path / "t.sock"
    fwd = free_port()
    with HostHTTPServer() as host_http, \
            Slirpd(["--tap", tap, "--stream", str(sock), "-o", f"hostfwd=tcp:127.0.0.1:{fwd}-10.0.2.15:8080"], tmp_path) as d:
        d.wait_log(f"attached on tap:{tap}")
        # The daemon holds the tap open, so the device keeps working once moved into the namespace.
        sh("ip", "link", "set", tap, "netns", ns)
        in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(ns, "ip", "link", "set", tap, "up")
        lease = in_ns(ns, BUSYBOX, "udhcpc", "-i", tap, "-s", str(script), "-q", "-n", "-t", "10", "-T", "1", timeout=60)
        assert "LEASE 10.0.2.15 10.0.2.2" in lease.stdout, lease.stdout + lease.stderr

        # NAT to a host service through the gateway.
        got = in_ns(ns, BUSYBOX, "wget", "-q", "-O", "-", host_http.url("10.0.2.2"))
        assert got.stdout == host_http.body.decode()

        # A host forward into the namespace's server.
        www = tmp_path / "www"
        www.mkdir()
        (www / "index.html").write_text("hello from the namespace")
        server = subprocess.Popen(["ip", "netns", "exec", ns, BUSYBOX, "httpd", "-f", "-p", "8080", "-h", str(www)])
        try:
            def fetch():
                r = subprocess.run(["curl", "-s", "--max-time", "3", f"http://127.0.0.1:{fwd}/"], capture_output=True, text=True)
                return r.stdout if r.returncode == 0 else ""
            assert wait_for(fetch, 20, what="the forward into the namespace") == "hello from the namespace"

            # A QEMU guest on the same network reaches the namespace, and the other way round.
            g = make_guest("q", stream_netdev(str(sock)), MAC_G)
            g.wait_ready()
            assert g.lease["ip"] == "10.0.2.16"
            rc, out = g.run("wget -q -O - http://10.0.2.15:8080/")
            assert rc == 0 and out.strip() == "hello from the namespace", out
            got = in_ns(ns, BUSYBOX, "wget", "-q", "-O", "-", "http://10.0.2.16:8080/")
            assert got.stdout.strip() == f"hello from guest {MAC_G}"
        finally:
            server.terminate()
            server.wait(10)
