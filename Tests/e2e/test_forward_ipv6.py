"""A host forward on an IPv6 host address (slirp_add_hostxfwd) reaches a real guest."""

import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from daemon import SLIRPD, Slirpd, stream_netdev
from guest import free_port, wait_for

pytestmark = pytest.mark.e2e

SLIRPCTL = os.environ.get("SLIRPCTL", str(Path(SLIRPD).with_name("slirpctl")))
MAC = "52:54:00:66:00:01"


def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode().strip()
    except OSError:
        return ""


def test_ipv6_host_forward_reaches_guest(tmp_path, make_guest):
    sock = tmp_path / "v6.sock"
    port = free_port()
    with Slirpd(["--stream", str(sock)], tmp_path) as d:
        g = make_guest("v6", stream_netdev(str(sock)), MAC)
        g.wait_ready()
        ctl = [SLIRPCTL, "--control", d.control]
        # libslirp forwards within one family, so the guest side is its SLAAC address in fec0::/64.
        def guest_v6():
            # fec0::/64 is site scope; wait until duplicate address detection is done.
            rc, out = g.run("ip -6 addr show dev eth0 | grep fec0:: | grep -v tentative | grep -o 'fec0::[0-9a-f:]*'")
            return out.strip().splitlines()[0] if rc == 0 and out.strip() else None
        addr = wait_for(guest_v6, 30, interval=1, what="the guest's IPv6 address")
        mixed = subprocess.run([*ctl, "forward", "add", f"tcp:[::1]:{port}-10.0.2.15:8080"], capture_output=True, text=True, timeout=10)
        assert mixed.returncode == 1 and "IPv6 addresses on both sides" in mixed.stderr, mixed.stderr
        subprocess.run([*ctl, "forward", "add", f"tcp:[::1]:{port}-[{addr}]:8080"], check=True, timeout=10)
        assert wait_for(lambda: get(f"http://[::1]:{port}/") == f"hello from guest {MAC}", 30, what="the IPv6 forward")
        # IPv6 only: the IPv4 loopback port stays free for a forward of its own.
        assert get(f"http://127.0.0.1:{port}/") == ""
        listed = subprocess.run([*ctl, "forward", "list"], capture_output=True, text=True, check=True, timeout=10).stdout
        assert f"[::1]:{port}" in listed and addr in listed
        subprocess.run([*ctl, "forward", "remove", f"tcp:[::1]:{port}"], check=True, timeout=10)
        assert get(f"http://[::1]:{port}/") == ""
