"""Flow caps changed at run time: `slirpctl limits set` (PUT /v1/networks/NAME/flow-limits).

A fake guest on the stream socket opens TCP connections to a listener on the host's
127.0.0.1 (through 10.0.2.2). After `slirpctl limits set --tcp 2` its first two SYNs get
SYN-ACKs and the third a RST from slirpd. The value is kept in the state directory and
in force again after a restart; a SIGHUP that changes another key keeps it, and one that
changes max-tcp itself replaces it. Bad values and unknown networks are refused with
exit status 1 (slirpctl) or 400/404 (API), and change nothing.
"""

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from daemon import Slirpd, slirpctl
from fakeguest import GATEWAY, FakeGuest, fake_mac, tcp_answer, tcp_segment
from netns import LoopbackDNS

pytestmark = pytest.mark.e2e

GUEST_IP = "10.0.2.77"


def limits(d: Slirpd, *extra: str) -> dict:
    return json.loads(slirpctl(d, "limits", "--json", "--network", "default", *extra).stdout)


def answers(d: Slirpd, sock: str, listen_port: int, count: int, first_port: int, mac_n: int) -> list[str]:
    """What a fresh fake guest gets back for `count` SYNs to the host listener, in order."""
    with FakeGuest(("stream", sock), fake_mac(mac_n), GUEST_IP) as g:
        gw = g.arp_gateway()
        out = []
        for i in range(count):
            sport = first_port + i
            g.send(tcp_segment(g.mac, gw, GUEST_IP, GATEWAY, sport, listen_port, 0x02, seq=1000 * i))
            out.append(g.expect(lambda f: tcp_answer(f, sport), 10, f"an answer to SYN {i + 1}"))
        return out


def api(d: Slirpd, method: str, path: str, body: str) -> tuple[int, dict]:
    res = subprocess.run(["curl", "-sS", "--max-time", "10", "--unix-socket", d.control, "-X", method,
                          "-H", "Content-Type: application/json", "--data", body, "-w", "\n%{http_code}",
                          f"http://slirpd{path}"], capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    text, _, status = res.stdout.rpartition("\n")
    return int(status), json.loads(text)


@pytest.fixture
def listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)  # the kernel completes the handshakes; nothing needs to accept
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def upstream():
    dns = LoopbackDNS({})
    yield dns
    dns.close()


def test_set_tcp_cap_applies_at_once_and_survives_restart(tmp_path: Path, listener, upstream):
    sock = str(tmp_path / "g.sock")
    args = ["-o", f"dns-upstream={upstream.address}", "--stream", sock]
    d = Slirpd(args, tmp_path)
    try:
        before = limits(d)
        assert before["maxTCP"] == 512 and before.get("setByAPI", []) == []
        # Three connections pass under the default cap.
        assert answers(d, sock, listener, 3, 41000, 1) == ["syn-ack"] * 3

        out = slirpctl(d, "limits", "set", "--tcp", "2").stdout
        assert "MAX-TCP" in out and "maxTCP" in out, out
        now = limits(d)
        assert now["maxTCP"] == 2 and now["setByAPI"] == ["maxTCP"], now
        assert now["maxUDP"] == before["maxUDP"]
        rows = slirpctl(d, "limits").stdout.splitlines()
        assert rows[0].split()[:5] == ["NETWORK", "MAX-TCP", "MAX-UDP", "MAX-ICMP", "MAX-DNS-TCP"], rows
        assert rows[1].split()[:2] == ["default", "2"] and rows[1].split()[-1] == "maxTCP", rows
        assert json.loads(slirpctl(d, "limits", "--json").stdout)["default"]["maxTCP"] == 2
        # A new guest: two SYN-ACKs, then slirpd's RST.
        assert answers(d, sock, listener, 3, 42000, 2) == ["syn-ack", "syn-ack", "rst"]

        # Bad values: exit status 1, one clear line, nothing changed.
        for flag, value in (("--tcp", "70000"), ("--udp", "-1"), ("--icmp", "many")):
            r = slirpctl(d, "limits", "set", flag, value, check=False)
            assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
            assert f"{flag} expects a whole number from 0 to 65535" in r.stderr, r.stderr
        r = slirpctl(d, "limits", "set", "--network", "nosuch", "--tcp", "5", check=False)
        assert r.returncode == 1 and "no network named 'nosuch'" in r.stderr, r.stderr
        # The daemon checks too.
        status, body = api(d, "PUT", "/v1/networks/default/flow-limits", '{"maxTCP": 70000}')
        assert status == 400 and "between 0 and 65535" in body["error"], body
        status, body = api(d, "PUT", "/v1/networks/default/flow-limits", '{"maxTcp": 5}')
        assert status == 400 and "unknown key 'maxTcp'" in body["error"], body
        status, body = api(d, "PUT", "/v1/networks/default/flow-limits", "{}")
        assert status == 400, body
        assert limits(d)["maxTCP"] == 2
        state = json.loads(Path(d.state_dir, "default.runtime.json").read_text())
        assert state["flowLimits"] == {"max-tcp": {"value": 2, "base": 512}}, state
    finally:
        assert d.stop() == 0

    # The same state directory: the cap is back, and enforced.
    d = Slirpd(args, tmp_path)
    try:
        d.wait_log("flow limits set through the API restored: max-tcp=2")
        assert limits(d)["maxTCP"] == 2
        assert answers(d, sock, listener, 3, 43000, 3) == ["syn-ack", "syn-ack", "rst"]
        # Setting the configured value again removes the override.
        slirpctl(d, "limits", "set", "--tcp", "512")
        assert limits(d).get("setByAPI") == []
    finally:
        assert d.stop() == 0


def test_reload_keeps_api_value_unless_config_changes_that_key(tmp_path: Path, upstream):
    sock = tmp_path / "g.sock"
    cfg = tmp_path / "slirpd.toml"

    def write(max_tcp: int, max_udp: int):
        cfg.write_text(f'[[network]]\nname = "default"\nstream = ["{sock}"]\n'
                       f'dns-upstream = "{upstream.address}"\nmax-tcp = {max_tcp}\nmax-udp = {max_udp}\n')

    write(100, 100)
    d = Slirpd(["--config", str(cfg)], tmp_path)
    try:
        slirpctl(d, "limits", "set", "--tcp", "7", "--icmp", "9")
        # max-udp changes in the file: applied in place; the API's max-tcp stands.
        write(100, 50)
        start = len(d.log)
        os.kill(d.pid, signal.SIGHUP)
        d.wait_log("reload: flow limits now", start=start)
        l = limits(d)
        assert (l["maxTCP"], l["maxUDP"], l["maxICMP"]) == (7, 50, 9), l
        # max-tcp changes in the file: the file wins for that key only.
        write(200, 50)
        start = len(d.log)
        os.kill(d.pid, signal.SIGHUP)
        d.wait_log("max-tcp changed in the configuration", start=start)
        l = limits(d)
        assert (l["maxTCP"], l["maxUDP"], l["maxICMP"], l["setByAPI"]) == (200, 50, 9, ["maxICMP"]), l
        state = json.loads(Path(d.state_dir, "default.runtime.json").read_text())
        assert state["flowLimits"] == {"max-icmp": {"value": 9, "base": 64}}, state
    finally:
        assert d.stop() == 0
