"""More guests than libslirp's 16-entry ARP table, all through the NAT at once.

Twenty network namespaces, each behind its own tap with a static address (libslirp's
DHCP stops at 16 leases), fetch from a host service concurrently, twice. libslirp keeps
forgetting some of their MACs; the switch must answer its ARP requests so that no
fetch fails. Traffic stays on loopback and inside the namespaces the test creates.
"""

import os
import re
import shutil
import subprocess
import uuid

import pytest

from daemon import SLIRPD, Slirpd
from guest import HostHTTPServer

pytestmark = pytest.mark.e2e

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
COUNT = 20
SLIRPCTL = os.environ.get("SLIRPCTL", os.path.join(os.path.dirname(SLIRPD), "slirpctl"))


def sh(*args, check=True, timeout=30):
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def test_twenty_namespaces_fetch_through_the_nat_at_once(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test needs root to create tap devices and network namespaces")
    tag = uuid.uuid4().hex[:4]
    names = [(f"slt{tag}{i:02d}", f"sln{tag}{i:02d}") for i in range(COUNT)]
    for tap, ns in names:
        sh("ip", "tuntap", "add", "mode", "tap", "name", tap)
        sh("ip", "netns", "add", ns)
    try:
        body = "x" * 100_000
        with HostHTTPServer(body=body) as host_http, \
                Slirpd([a for tap, _ in names for a in ("--tap", tap)], tmp_path) as d:
            for i, (tap, ns) in enumerate(names):
                sh("ip", "link", "set", tap, "netns", ns)
                for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", tap, "up"],
                            ["ip", "addr", "add", f"10.0.2.{100 + i}/24", "dev", tap],
                            ["ip", "route", "add", "default", "via", "10.0.2.2"]):
                    sh("ip", "netns", "exec", ns, *cmd)
            url = host_http.url("10.0.2.2")
            for round in range(2):
                procs = [subprocess.Popen(["ip", "netns", "exec", ns, "timeout", "30", BUSYBOX, "wget", "-q", "-O", "-", url],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _, ns in names]
                results = []
                for p in procs:
                    out, err = p.communicate(timeout=60)
                    results.append((p.returncode, len(out), err.strip()))
                failed = [(names[i][1], r) for i, r in enumerate(results) if r[0] != 0 or r[1] != len(body)]
                assert not failed, f"round {round + 1}: {len(failed)} of {COUNT} fetches failed: {failed[:5]}"
            metrics = sh("curl", "-s", "--unix-socket", d.control, "http://slirpd/metrics").stdout
            proxied = int(re.search(r'^slirpd_arp_proxied_total\{network="default"\} (\d+)$', metrics, re.M).group(1))
            guests = int(re.search(r'^slirpd_guests\{network="default"\} (\d+)$', metrics, re.M).group(1))
            assert guests == COUNT
            assert proxied > 0, "with 20 guests libslirp must have asked the switch for some of them"
            # Static addresses show in the guest list too, learnt from the guests' own frames.
            import json
            listed = json.loads(sh(SLIRPCTL, "--control", d.control, "--json", "guests").stdout)
            assert sorted(ip for g in listed for ip in g["ips"]) == sorted(f"10.0.2.{100 + i}" for i in range(COUNT))
    finally:
        for tap, ns in names:
            sh("ip", "netns", "delete", ns, check=False)
            sh("ip", "link", "delete", tap, check=False)
