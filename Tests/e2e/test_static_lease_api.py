"""End-to-end: static DHCP leases added at run time through slirpctl and the API.

One guest boots, with a static lease added for its MAC beforehand; the error cases need
no guest. Host traffic goes only to the control socket.
"""

import json
import os
import shlex
import subprocess
from datetime import datetime

import pytest

from daemon import Slirpd, stream_netdev
from guest import REPO

pytestmark = pytest.mark.e2e

SLIRPCTL = os.environ.get("SLIRPCTL", str(REPO / ".build" / "debug" / "slirpctl"))

MAC_S = "52:54:00:5a:00:01"     # the guest with a static lease
MAC_OTHER = "52:54:00:5a:00:02"  # never boots
STATIC_IP = "10.0.2.50"          # not the pool's first address, which the guest would get anyway


def slirpctl(d: Slirpd, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([SLIRPCTL, "--control", d.control, *args], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise AssertionError(f"slirpctl {shlex.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
    return res


def slirpctl_fails(d: Slirpd, *args: str) -> str:
    """Runs slirpctl expecting exit status 1 and one line on stderr; returns that line."""
    res = slirpctl(d, *args, check=False)
    assert res.returncode == 1 and res.stdout == "", (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("slirpctl: "), res.stderr
    return lines[0]


def api(d: Slirpd, method: str, path: str, body: str | None = None) -> tuple[int, object]:
    """One request on the control socket with curl; returns (status, decoded JSON body)."""
    data = [] if body is None else ["-H", "Content-Type: application/json", "--data-binary", body]
    res = subprocess.run(["curl", "-sS", "--max-time", "10", "--unix-socket", d.control, "-X", method, *data,
                          "-w", "\n%{http_code}", f"http://slirpd{path}"], capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, f"curl failed ({res.returncode}): {res.stderr}"
    text, _, status = res.stdout.rpartition("\n")
    return int(status), json.loads(text)


def table(text: str) -> list[dict]:
    """slirpctl's table as dicts, split on blanks: no cell in these tests is empty or has a space."""
    lines = text.splitlines()
    header = lines[0].split()
    rows = [line.split() for line in lines[1:]]
    return [dict(zip(header, row)) for row in rows]


def rfc3339(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00")


def test_static_lease_reaches_the_guest(tmp_path, make_guest):
    sock = str(tmp_path / "s.sock")
    with Slirpd(["--stream", sock], tmp_path) as d:
        out = slirpctl(d, "static-lease", "add", MAC_S, STATIC_IP, "--hostname", "pinned").stdout
        assert out.strip() == f"added {MAC_S} -> {STATIC_IP} (pinned)", out
        [row] = table(slirpctl(d, "static-lease", "list").stdout)
        assert row == {"NETWORK": "default", "MAC": MAC_S, "IP": STATIC_IP, "HOSTNAME": "pinned", "SOURCE": "api"}

        # The guest asks for another name: the static lease's wins.
        g = make_guest("s", stream_netdev(sock), MAC_S, append="slirpd.hostname=asked")
        assert g.wait_lease()["ip"] == STATIC_IP

        leases = json.loads(slirpctl(d, "--json", "leases").stdout)
        [lease] = [l for l in leases if l["mac"] == MAC_S]
        assert (lease["ip"], lease["hostname"], lease["static"]) == (STATIC_IP, "pinned", True), lease
        granted, expires = rfc3339(lease["granted"]), rfc3339(lease["expires"])
        assert granted < expires and (expires - granted).days <= 7, lease

        [row] = [r for r in table(slirpctl(d, "leases").stdout) if r["MAC"] == MAC_S]
        assert (row["IP"], row["HOSTNAME"], row["STATIC"], row["EXPIRES"]) == \
            (STATIC_IP, "pinned", "yes", lease["expires"]), row

        out = slirpctl(d, "static-lease", "remove", MAC_S).stdout
        assert out.strip() == f"removed {MAC_S} -> {STATIC_IP}", out
        assert json.loads(slirpctl(d, "--json", "static-lease", "list").stdout) == []


def test_static_lease_errors(tmp_path):
    with Slirpd(["--stream", str(tmp_path / "s.sock")], tmp_path) as d:
        base = "/v1/networks/default/static-leases"

        status, body = api(d, "POST", base, json.dumps({"mac": "52:54:00:5a:00", "ip": "10.0.2.60"}))
        assert status == 400 and "'52:54:00:5a:00' is not a MAC address" in body["error"], body
        assert "is not a MAC address" in slirpctl_fails(d, "static-lease", "add", "nonsense", "10.0.2.60")
        status, body = api(d, "DELETE", f"{base}/nonsense")
        assert status == 400 and "'nonsense' is not a MAC address" in body["error"], body

        status, body = api(d, "POST", base, json.dumps({"mac": MAC_OTHER, "ip": "10.0.2.060"}))
        assert status == 400 and "is not an IPv4 address" in body["error"], body
        line = slirpctl_fails(d, "static-lease", "add", MAC_OTHER, "192.168.7.5")
        assert "192.168.7.5 is outside the network 10.0.2.0/24" in line, line

        # Unknown keys and broken JSON are the client's mistakes too.
        status, body = api(d, "POST", base, json.dumps({"mac": MAC_OTHER, "ip": "10.0.2.60", "hostnme": "x"}))
        assert status == 400 and "unknown key 'hostnme'" in body["error"], body
        status, body = api(d, "POST", base, '{"mac": ')
        assert status == 400 and "malformed JSON" in body["error"], body

        slirpctl(d, "static-lease", "add", MAC_S, STATIC_IP)
        status, body = api(d, "POST", base, json.dumps({"mac": MAC_OTHER, "ip": STATIC_IP}))
        assert status == 409 and f"IP {STATIC_IP} is already fixed for {MAC_S}" in body["error"], body
        line = slirpctl_fails(d, "static-lease", "add", MAC_OTHER, STATIC_IP)
        assert f"already fixed for {MAC_S}" in line, line

        status, body = api(d, "DELETE", f"{base}/{MAC_OTHER}")
        assert status == 404 and f"no static lease for {MAC_OTHER}" in body["error"], body
        line = slirpctl_fails(d, "static-lease", "remove", MAC_OTHER)
        assert f"no static lease for {MAC_OTHER}" in line, line
        status, body = api(d, "POST", "/v1/networks/nope/static-leases", json.dumps({"mac": MAC_OTHER, "ip": "10.0.2.61"}))
        assert status == 404 and "no network named 'nope'" in body["error"], body

        # None of the refusals changed anything.
        status, body = api(d, "GET", "/v1/static-leases")
        assert status == 200 and body == [
            {"network": "default", "mac": MAC_S, "ip": STATIC_IP, "source": "api"}], body
