"""The daemon's own DHCP and DNS, seen from namespace guests on taps.

Each test starts slirpd with a DNS upstream of its own on loopback (never the
machine's resolver), so every name that is not local is answered, or not, by it.
"""

import signal
import subprocess
import time

import pytest

from daemon import Slirpd
from netns import BUSYBOX, LoopbackDNS, Namespaces, query_in

pytestmark = pytest.mark.e2e

PTR = 12


def test_local_names_ptr_and_upstream_over_udp_and_tcp(tmp_path):
    with LoopbackDNS({"www.example.test": "192.0.2.7"}) as upstream, Namespaces(2, tmp_path) as nss, \
            Slirpd(["-o", f"dns-upstream={upstream.address}", *nss.tap_args], tmp_path) as d:
        nss.move()
        leases = nss.dhcp([0, 1], hostnames={0: "alpha", 1: "beta"})
        alpha, beta = leases[0]["ip"], leases[1]["ip"]
        assert alpha != beta
        assert leases[0]["dns"] == "10.0.2.3" and leases[0]["router"] == "10.0.2.2"

        for proto in ("udp", "tcp"):
            r = query_in(nss, 1, "alpha.slirpd.internal", proto=proto)
            assert r["rcode"] == 0 and r["aa"] and r["answers"] == [("A", alpha)], (proto, r)
            r = query_in(nss, 0, "BETA.slirpd.internal", proto=proto)
            assert r["answers"] == [("A", beta)], (proto, r)
            r = query_in(nss, 0, "host.slirpd.internal", proto=proto)
            assert r["answers"] == [("A", "10.0.2.2")], (proto, r)
            reverse = ".".join(reversed(alpha.split("."))) + ".in-addr.arpa"
            r = query_in(nss, 1, reverse, qtype=PTR, proto=proto)
            assert r["answers"] == [("PTR", "alpha.slirpd.internal")], (proto, r)
            r = query_in(nss, 1, "nobody.slirpd.internal", proto=proto)
            assert r["rcode"] == 3 and r["answers"] == [], (proto, r)
            # Not ours: the loopback upstream answers it.
            before = upstream.asked.count("www.example.test")
            r = query_in(nss, 0, "www.example.test", proto=proto)
            assert r["rcode"] == 0 and r["answers"] == [("A", "192.0.2.7")], (proto, r)
            assert upstream.asked.count("www.example.test") == before + 1
            r = query_in(nss, 0, "missing.example.test", proto=proto)
            assert r["rcode"] == 3, (proto, r)
        # Local names never reach the upstream.
        assert not [n for n in upstream.asked if n.endswith("slirpd.internal")]
        # Ping to the DNS address is answered.
        nss.exec(0, BUSYBOX, "ping", "-c", "1", "-W", "5", "10.0.2.3")
        assert "DNS: answering 10.0.2.3" in d.log


def test_upstream_failure_is_a_prompt_servfail(tmp_path):
    # A port nobody listens on: the daemon's connected socket sees ECONNREFUSED.
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    with Namespaces(1, tmp_path) as nss, Slirpd(["-o", f"dns-upstream=127.0.0.1:{dead}", *nss.tap_args], tmp_path):
        nss.move()
        nss.dhcp([0])
        for proto in ("udp", "tcp"):
            started = time.monotonic()
            r = query_in(nss, 0, "www.example.test", proto=proto)
            assert r["rcode"] == 2, (proto, r)  # SERVFAIL
            assert time.monotonic() - started < 6, "SERVFAIL must come by the daemon's 4 s timeout at the latest"
        # Local names still work without an upstream.
        r = query_in(nss, 0, "host.slirpd.internal")
        assert r["answers"] == [("A", "10.0.2.2")]


def test_static_lease_from_config_gives_ip_and_name(tmp_path):
    with LoopbackDNS({}) as upstream, Namespaces(2, tmp_path) as nss:
        mac = "52:54:00:5a:00:09"
        subprocess.run(["ip", "link", "set", nss.tap(0), "address", mac], check=True)
        cfg = tmp_path / "slirpd.toml"
        cfg.write_text(f"""
[[network]]
name = "lab"
dns-upstream = "{upstream.address}"
dns-domain = "lab.test"
tap = ["{nss.tap(0)}", "{nss.tap(1)}"]

[[network.static-lease]]
mac = "{mac}"
ip = "10.0.2.9"
hostname = "fixed"
""")
        with Slirpd(["--config", str(cfg)], tmp_path):
            nss.move()
            leases = nss.dhcp([0, 1], hostnames={0: "ignored-for-static", 1: "other"})
            assert leases[0]["ip"] == "10.0.2.9"
            assert leases[1]["ip"] != "10.0.2.9"
            r = query_in(nss, 1, "fixed.lab.test")
            assert r["answers"] == [("A", "10.0.2.9")], r
            r = query_in(nss, 0, "other.lab.test")
            assert r["answers"] == [("A", leases[1]["ip"])], r
            # The default domain is not served once another is set: it goes upstream.
            r = query_in(nss, 0, "fixed.slirpd.internal")
            assert r["rcode"] == 3 and "fixed.slirpd.internal" in upstream.asked


def test_leases_survive_a_restart(tmp_path):
    """A renews after a restart and keeps its address although B, new, asked first: B
    would have been given A's address by a daemon that forgot its leases."""
    with LoopbackDNS({}) as upstream, Namespaces(2, tmp_path) as nss:
        args = ["-o", f"dns-upstream={upstream.address}", "--state-dir", str(tmp_path / "state"), *nss.tap_args]
        first = Slirpd(args, tmp_path, name="first")
        try:
            nss.move()
            a = nss.dhcp([0], hostnames={0: "a"})[0]["ip"]
        finally:
            first.stop()
        assert (tmp_path / "state" / "default.leases").read_text().count(a) == 1
        # The taps are in the namespaces now; the new daemon opens them there by name... so
        # they come back to the root namespace first.
        for i in range(2):
            nss.exec(i, "ip", "link", "set", nss.tap(i), "netns", "1")
        with Slirpd(args, tmp_path, name="second") as second:
            nss.move()
            b = nss.dhcp([1], hostnames={1: "b"})[1]["ip"]
            assert b != a, "the restarted daemon gave A's address to a new guest"
            renewed = nss.dhcp([0], requested={0: a})[0]["ip"]
            assert renewed == a
            # Its name came back with the lease file too.
            r = query_in(nss, 1, "a.slirpd.internal")
            assert r["answers"] == [("A", a)], r
            assert "saved leases still valid" in second.log


def test_a_full_pool_is_logged_and_the_last_guest_gets_no_lease(tmp_path):
    # A /29 from .4 has .4, .5 and .6 to lease: the fourth namespace must go without.
    with LoopbackDNS({}) as upstream, Namespaces(4, tmp_path) as nss, \
            Slirpd(["-o", f"net=10.0.2.0/29,dhcpstart=10.0.2.4,dns-upstream={upstream.address}", *nss.tap_args],
                   tmp_path) as d:
        nss.move()
        leases = nss.dhcp([0, 1, 2])
        assert sorted(lease["ip"] for lease in leases.values()) == ["10.0.2.4", "10.0.2.5", "10.0.2.6"]
        r = subprocess.run(nss.dhcp_command(3, tries=2), capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "LEASE" not in r.stdout
        line = d.wait_log("DHCP pool full")
        assert "10.0.2.4-10.0.2.6" in line
