"""Sixty-four guests on one network: 63 namespaces on taps and one QEMU guest.

libslirp alone would stop at 16 DHCP leases and keep forgetting guests in its 16-entry
ARP table. Here every guest must get its own lease from the daemon's DHCP server, find
another guest by name through the daemon's DNS and fetch from it, and all 64 must fetch
a page from a host service through the NAT at the same time without one failing.
Traffic stays on loopback, inside the namespaces and on the virtual network.
"""

import json
import re
import subprocess
import threading

import pytest

from daemon import Slirpd, stream_netdev
from guest import HostHTTPServer
from netns import BUSYBOX, LoopbackDNS, Namespaces

pytestmark = pytest.mark.e2e

NAMESPACES = 63
DOMAIN = "slirpd.internal"
GUEST_MAC = "52:54:00:64:00:01"


def nslookup_address(output: str, name: str) -> str | None:
    """The address busybox nslookup printed for `name` (after its server lines)."""
    seen = False
    for line in output.splitlines():
        if line.startswith("Name:") and name in line:
            seen = True
        elif seen and line.startswith("Address"):
            return line.split()[-1]
    return None


def run_all(nss: Namespaces, commands: dict[int, list[str]], timeout=90) -> dict[int, subprocess.CompletedProcess]:
    procs = {i: nss.popen(i, *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, cmd in commands.items()}
    results = {}
    for i, p in procs.items():
        out, err = p.communicate(timeout=timeout)
        results[i] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return results


def test_sixty_four_guests_lease_resolve_each_other_and_fetch_at_once(tmp_path, make_guest):
    sock = tmp_path / "q.sock"
    body = "y" * 100_000
    with LoopbackDNS({}) as upstream, Namespaces(NAMESPACES, tmp_path) as nss, HostHTTPServer(body=body) as host_http, \
            Slirpd(["-o", f"dns-upstream={upstream.address}", "--stream", str(sock), *nss.tap_args], tmp_path) as d:
        nss.move()
        names = {i: f"g{i:02d}" for i in range(NAMESPACES)}
        guest = make_guest("q64", stream_netdev(str(sock)), GUEST_MAC, append="slirpd.hostname=qemu0")
        leases = nss.dhcp(range(NAMESPACES), hostnames=names)
        guest.wait_ready()
        ips = {i: lease["ip"] for i, lease in leases.items()}
        ips[NAMESPACES] = guest.lease["ip"]
        assert len(set(ips.values())) == 64, f"leases are not distinct: {sorted(ips.values())}"
        listed = json.loads(subprocess.run(["curl", "-s", "--unix-socket", d.control, "http://slirpd/v1/leases"],
                                           capture_output=True, text=True, check=True).stdout)
        assert len(listed) == 64

        # Each namespace serves its own name; the QEMU guest serves "hello from guest MAC".
        www = tmp_path / "www"
        for i in range(NAMESPACES):
            (www / names[i]).mkdir(parents=True)
            (www / names[i] / "index.html").write_text(f"I am {names[i]}")
            nss.popen(i, BUSYBOX, "httpd", "-f", "-p", "8080", "-h", str(www / names[i]))

        # Each namespace resolves the next one's name (the last resolves the QEMU guest).
        target = {i: (names[i + 1] if i + 1 < NAMESPACES else "qemu0") for i in range(NAMESPACES)}
        looked_up = run_all(nss, {i: [BUSYBOX, "nslookup", f"{target[i]}.{DOMAIN}", "10.0.2.3"] for i in range(NAMESPACES)})
        resolved = {}
        for i, r in looked_up.items():
            address = nslookup_address(r.stdout, f"{target[i]}.{DOMAIN}")
            expected = ips[i + 1]
            assert address == expected, f"{names[i]} resolved {target[i]} to {address}, not {expected}: {r.stdout} {r.stderr}"
            resolved[i] = address
        rc, out = guest.run(f"nslookup g00.{DOMAIN} 10.0.2.3")
        assert rc == 0 and nslookup_address(out, f"g00.{DOMAIN}") == ips[0], out

        # ... and fetches from it, all at once.
        fetched = run_all(nss, {i: ["timeout", "30", BUSYBOX, "wget", "-q", "-O", "-", f"http://{resolved[i]}:8080/"]
                                for i in range(NAMESPACES)})
        for i, r in fetched.items():
            want = f"hello from guest {GUEST_MAC}" if target[i] == "qemu0" else f"I am {target[i]}"
            assert r.returncode == 0 and r.stdout.strip() == want, f"{names[i]} fetching from {target[i]}: {r}"
        rc, out = guest.run(f"wget -q -O - http://{ips[0]}:8080/")
        assert rc == 0 and out.strip() == "I am g00", out

        # All 64 fetch 100 kB from the host through the NAT at the same moment, twice.
        url = host_http.url("10.0.2.2")
        for round in range(2):
            guest_result = {}

            def guest_fetch():
                guest_result["r"] = guest.run(f"wget -q -O - {url} | wc -c", timeout=90)

            t = threading.Thread(target=guest_fetch)
            t.start()
            results = run_all(nss, {i: ["timeout", "60", BUSYBOX, "wget", "-q", "-O", "-", url] for i in range(NAMESPACES)})
            t.join(120)
            failed = [(names[i], r.returncode, len(r.stdout), r.stderr.strip()[:200])
                      for i, r in results.items() if r.returncode != 0 or len(r.stdout) != len(body)]
            assert not failed, f"round {round + 1}: {len(failed)} of {NAMESPACES} namespace fetches failed: {failed[:5]}"
            rc, out = guest_result["r"]
            assert rc == 0 and out.strip() == str(len(body)), f"round {round + 1}: the QEMU guest's fetch: {out}"

        metrics = subprocess.run(["curl", "-s", "--unix-socket", d.control, "http://slirpd/metrics"],
                                 capture_output=True, text=True, check=True).stdout
        guests = int(re.search(r'^slirpd_guests\{network="default"\} (\d+)$', metrics, re.M).group(1))
        proxied = int(re.search(r'^slirpd_arp_proxied_total\{network="default"\} (\d+)$', metrics, re.M).group(1))
        assert guests == 64
        assert proxied > 0, "with 64 guests libslirp's ARP table must have overflowed into the switch's"
        assert not upstream.asked, f"local names went upstream: {upstream.asked[:5]}"
