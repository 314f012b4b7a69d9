"""IPv6 discovery and DNS as a third-party client sees them, in network namespaces on taps.

rdisc6 (package ndisc6) solicits a router advertisement and prints its options: slirpd
must add RDNSS for its IPv6 DNS address, DNSSL for the search domains and the port's MTU
to libslirp's RA. Traffic stays inside the namespaces and the virtual network.
"""

import re
import shutil

import pytest

from daemon import Slirpd
from netns import Namespaces, sh

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
