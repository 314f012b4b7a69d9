"""Clients nobody here wrote, against slirpd (issue 19): ISC dhclient 4.4 and dhcpcd 9.4
lease in network namespaces on taps and write resolv.conf with their own Debian scripts,
and promtool 2.42 (Prometheus's checker) lints /metrics.

`ip netns exec NS` binds /etc/netns/NS/resolv.conf over /etc/resolv.conf, so the clients'
resolv.conf writes stay in that file; the test makes it and removes it. dhcpcd's hostname
hook is off (`--nohook hostname`): a namespace shares the machine's hostname. promtool
comes unpacked from Debian's prometheus package into .build-e2e (Scripts/test), not
installed: the package would start a Prometheus server. Traffic stays inside the
namespaces and the virtual network; every client is stopped by PID.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from daemon import Slirpd
from netns import BUSYBOX, Namespaces

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = REPO / ".build-e2e" / "prometheus" / "usr" / "bin" / "promtool"
SEARCH = "lab.example"


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is missing (Scripts/test installs it)")
    return path


class NetnsEtc:
    """/etc/netns/NS/resolv.conf for the namespace's clients to write, removed afterwards."""

    def __init__(self, ns: str):
        self.dir = Path("/etc/netns") / ns
        self.dir.mkdir(parents=True, exist_ok=False)
        self.resolv = self.dir / "resolv.conf"
        self.resolv.write_text("# slirpd e2e: a DHCP client writes here\n")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        if proc.poll() is not None and not check():
            break
        time.sleep(0.2)
    out = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
    raise AssertionError(f"{what} within {timeout} s; client output: {out[-1500:]}")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.stdout.read() if proc.stdout else ""


def addresses(nss: Namespaces, i: int) -> str:
    return nss.exec(i, "ip", "-4", "-o", "addr", "show", "dev", nss.tap(i)).stdout


def test_isc_dhclient_leases_and_writes_resolv_conf(tmp_path):
    with Namespaces(1, tmp_path) as nss, Slirpd(["-o", f"dnssearch={SEARCH}", *nss.tap_args], tmp_path):
        nss.move()
        etc = NetnsEtc(nss.ns(0))
        leases, pid = tmp_path / "dhclient.leases", tmp_path / "dhclient.pid"
        proc = nss.popen(0, tool("dhclient"), "-4", "-1", "-d", "-v", "-pf", str(pid), "-lf", str(leases),
                         nss.tap(0), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: "10.0.2.15/24" in addresses(nss, 0) and "nameserver" in etc.resolv.read_text(),
                       90, "dhclient configured no lease", proc)
            lease = leases.read_text()
            resolv = etc.resolv.read_text()
            routes = nss.exec(0, "ip", "-4", "route").stdout
        finally:
            out = stop(proc)
            etc.close()
        print(out[-1500:], lease, resolv, sep="\n")
        assert re.search(r"fixed-address 10\.0\.2\.15;", lease), lease
        assert re.search(r"option routers 10\.0\.2\.2;", lease), lease
        assert re.search(r"option domain-name-servers 10\.0\.2\.3;", lease), lease
        assert re.search(r"option dhcp-server-identifier 10\.0\.2\.2;", lease), lease
        assert "default via 10.0.2.2" in routes, routes
        assert re.search(r"^nameserver 10\.0\.2\.3$", resolv, re.M), resolv
        assert re.search(rf"^search .*\b{re.escape(SEARCH)}\b", resolv, re.M), resolv


def test_dhcpcd_leases_and_writes_resolv_conf(tmp_path):
    with Namespaces(1, tmp_path) as nss, Slirpd(["-o", f"dnssearch={SEARCH}", *nss.tap_args], tmp_path):
        nss.move()
        etc = NetnsEtc(nss.ns(0))
        tap = nss.tap(0)
        # -1: exit once configured; -B: in the foreground; -4: DHCP only; -t: give up after 60 s.
        proc = nss.popen(0, tool("dhcpcd"), "-4", "-1", "-B", "-t", "60", "--nohook", "hostname", tap,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: "10.0.2.15/24" in addresses(nss, 0) and "nameserver" in etc.resolv.read_text(),
                       90, "dhcpcd configured no lease", proc)
            resolv = etc.resolv.read_text()
            routes = nss.exec(0, "ip", "-4", "route").stdout
        finally:
            out = stop(proc)
            etc.close()
            # dhcpcd keeps its lease in its database directory, by interface name.
            for leftover in Path("/var/lib/dhcpcd").glob(f"{tap}*"):
                leftover.unlink()
        print(out[-1500:], resolv, sep="\n")
        assert "default via 10.0.2.2" in routes, routes
        assert re.search(r"^nameserver 10\.0\.2\.3$", resolv, re.M), resolv
        assert re.search(rf"^search .*\b{re.escape(SEARCH)}\b", resolv, re.M), resolv


def test_promtool_finds_nothing_to_lint_in_metrics(tmp_path):
    if not PROMTOOL.exists():
        pytest.fail(f"{PROMTOOL} is missing (Scripts/test unpacks Debian's prometheus package there)")
    with Namespaces(1, tmp_path) as nss, Slirpd([*nss.tap_args], tmp_path) as d:
        nss.move()
        nss.dhcp([0])
        # Some traffic of every kind the metrics count: DNS, a TCP connection refused by the host.
        nss.exec(0, BUSYBOX, "nslookup", "host.slirpd.internal", "10.0.2.3", check=False, timeout=20)
        nss.exec(0, BUSYBOX, "wget", "-q", "-T", "3", "-O", "/dev/null", "http://10.0.2.2:9/", check=False, timeout=20)
        text = subprocess.run(["curl", "-s", "--unix-socket", d.control, "http://slirpd/metrics"],
                              capture_output=True, text=True, check=True, timeout=10).stdout
    assert "slirpd_" in text, text[:500]
    lint = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    print(lint.stdout, lint.stderr)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), \
        f"promtool: rc {lint.returncode}\n{lint.stdout}\n{lint.stderr}"
