"""IPv6 discovery and DNS as a third-party client sees them, in network namespaces on taps.

rdisc6 (package ndisc6) solicits a router advertisement and prints its options: slirpd
must add RDNSS for its IPv6 DNS address, DNSSL for the search domains and the port's MTU
to libslirp's RA. Traffic stays inside the namespaces and the virtual network.
"""

import re
import shutil

import pytest

from daemon import Slirpd
from guest import wait_for
from netns import BUSYBOX, Namespaces, sh

pytestmark = pytest.mark.e2e


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing (Scripts/test installs it)")
    return path


def move_without_dad(nss: Namespaces) -> None:
    """Moves each tap into its namespace with duplicate address detection off, so its
    link-local address (and a SLAAC one) is usable at once."""
    for i in range(len(nss.pairs)):
        ns, tap = nss.ns(i), nss.tap(i)
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            nss.exec(i, "sysctl", "-qw", f"{key}=0")
        sh("ip", "link", "set", tap, "netns", ns)
        nss.exec(i, "ip", "link", "set", "lo", "up")
        nss.exec(i, "ip", "link", "set", tap, "up")


def solicit(nss: Namespaces, i: int) -> str:
    """rdisc6's report of the RA that answers its solicitation."""
    r = nss.exec(i, tool("rdisc6"), "-1", "-r", "5", "-w", "2000", nss.tap(i), timeout=30, check=False)
    assert r.returncode == 0, f"rdisc6 got no advertisement: {r.stdout} {r.stderr}"
    return r.stdout


def field(report: str, name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^\s*{re.escape(name)}\s*:\s*(.+)$", report, re.M)]


def test_rdisc6_sees_rdnss_dnssl_and_each_ports_mtu(tmp_path):
    with Namespaces(1, tmp_path) as nss, \
            Slirpd(["--mtu", "9000", "-o", "dnssearch=example.test,dnssearch=lab.example", *nss.tap_args], tmp_path):
        move_without_dad(nss)
        report = solicit(nss, 0)
        print(report)
        assert field(report, "Prefix") == ["fec0::/64"], report
        assert field(report, "Recursive DNS server") == ["fec0::3"], report
        lifetime = field(report, "DNS server lifetime")
        assert lifetime and lifetime[0].split()[0] == "1800", report
        assert field(report, "MTU") and field(report, "MTU")[0].split()[0] == "9000", report
        assert [f.split() for f in field(report, "DNS search list")] == [["example.test", "lab.example"]], report


def test_rdisc6_without_search_domains_sees_no_dnssl_and_the_default_mtu(tmp_path):
    with Namespaces(1, tmp_path) as nss, Slirpd([*nss.tap_args], tmp_path):
        move_without_dad(nss)
        report = solicit(nss, 0)
        print(report)
        assert field(report, "Recursive DNS server") == ["fec0::3"], report
        assert field(report, "MTU")[0].split()[0] == "1500", report
        assert field(report, "DNS search list") == [], report


def dig(nss: Namespaces, i: int, *args: str) -> str:
    r = nss.exec(i, tool("dig"), "+time=3", "+tries=2", *args, timeout=30, check=False)
    assert r.returncode == 0, f"dig {' '.join(args)} failed: {r.stdout} {r.stderr}"
    return r.stdout


def section(out: str, name: str) -> list[list[str]]:
    """The records of one section of dig's output, each split into fields."""
    m = re.search(rf";; {name} SECTION:\n(.*?)(?:\n\n|\Z)", out, re.S)
    return [line.split() for line in m.group(1).splitlines()] if m else []


def slaac_address(nss: Namespaces, i: int):
    """The namespace's address in fec0::/64, or None yet."""
    out = nss.exec(i, "ip", "-6", "-o", "addr", "show", "dev", nss.tap(i), "scope", "site").stdout
    m = re.search(r"inet6 (fec0:[0-9a-f:]+)/64", out)
    return m.group(1) if m else None


def test_ipv6_only_namespace_resolves_through_the_rdnss_address(tmp_path):
    """An IPv6-only namespace (no DHCP) finds the DNS server in the RA and resolves AAAA
    names, gets SOA in negative answers, reverse names of the prefix answered locally,
    and DNS over TCP to the IPv6 address."""
    from netns import LoopbackDNS
    with LoopbackDNS({"www.example.test": "192.0.2.7"}) as upstream, Namespaces(2, tmp_path) as nss, \
            Slirpd(["-o", f"dns-upstream={upstream.address}", *nss.tap_args], tmp_path):
        move_without_dad(nss)
        dns = field(solicit(nss, 0), "Recursive DNS server")
        assert dns == ["fec0::3"], dns
        server = "@" + dns[0]

        out = dig(nss, 0, server, "host.slirpd.internal", "AAAA")
        assert [r[4] for r in section(out, "ANSWER")] == ["fec0::2"], out

        # A guest with a DHCP hostname and a SLAAC address gets an AAAA record once it
        # has used the address.
        nss.dhcp([1], hostnames={1: "sixer"})
        guest6 = wait_for(lambda: slaac_address(nss, 1), 10, what="a SLAAC address")
        # Any packet from the address will do; the answer does not matter.
        p = nss.exec(1, BUSYBOX, "ping", "-6", "-c", "1", "-W", "2", "fec0::2", check=False)
        assert "exec of" not in p.stderr, p.stderr
        out = dig(nss, 0, server, "sixer.slirpd.internal", "AAAA")
        assert [r[4] for r in section(out, "ANSWER")] == [guest6], out
        out = dig(nss, 0, server, "-x", guest6)
        assert [r[4] for r in section(out, "ANSWER")] == ["sixer.slirpd.internal."], out

        # Negative answers carry the zone's SOA (RFC 2308): NXDOMAIN and NODATA.
        out = dig(nss, 0, server, "nope.slirpd.internal", "A")
        assert "status: NXDOMAIN" in out, out
        soa = section(out, "AUTHORITY")
        assert len(soa) == 1 and soa[0][0] == "slirpd.internal." and soa[0][3] == "SOA", out
        out = dig(nss, 0, server, "host.slirpd.internal", "MX")
        assert "status: NOERROR" in out and section(out, "ANSWER") == [], out
        assert [r[3] for r in section(out, "AUTHORITY")] == ["SOA"], out

        # The prefix's reverse zone is answered here and never asked upstream.
        out = dig(nss, 0, server, "-x", "fec0::1234")
        assert "status: NXDOMAIN" in out and [r[3] for r in section(out, "AUTHORITY")] == ["SOA"], out
        assert not [n for n in upstream.asked if n.endswith("ip6.arpa")], upstream.asked

        # DNS over TCP to the IPv6 address, local and forwarded names.
        out = dig(nss, 0, "+tcp", server, "host.slirpd.internal", "AAAA")
        assert [r[4] for r in section(out, "ANSWER")] == ["fec0::2"] and "(TCP)" in out, out
        out = dig(nss, 0, "+tcp", server, "www.example.test", "A")
        assert [r[4] for r in section(out, "ANSWER")] == ["192.0.2.7"], out
