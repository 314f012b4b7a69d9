"""One owner per state directory, and state files that survive kill -9.

A second daemon for the same network name on the same state directory must stop at once
(non-zero, naming the directory and the holder's PID) while the first keeps serving; a
daemon killed with SIGKILL while it rewrites its run-time state leaves files that the
next start reads whole. Everything runs on Unix sockets in the test's directory.
"""

import json
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon import SLIRPD, Slirpd, slirpctl
from fakeguest import (BROADCAST, ETH_IPV4, FakeGuest, dhcp_discover, dhcp_reply_type, ethernet, ipv4,
                       mac_bytes)

pytestmark = pytest.mark.e2e


def stream_guest_connects(path: str) -> bool:
    """Whether a stream endpoint accepts a connection and keeps it open a moment."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_a_second_daemon_on_the_same_state_directory_exits_and_the_first_keeps_serving(tmp_path):
    state = tmp_path / "state"
    with Slirpd(["--stream", str(tmp_path / "a.sock"), "--state-dir", str(state)], tmp_path, name="first") as first:
        second = subprocess.run([SLIRPD, "--no-control", "--state-dir", str(state), "--stream", str(tmp_path / "b.sock")],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
        out = second.stdout + second.stderr
        assert second.returncode != 0, out
        assert str(state) in out and f"PID {first.pid}" in out, out
        assert not (tmp_path / "b.sock").exists(), "the refused daemon left its socket behind"
        # The first is untouched: its API answers, its endpoint takes guests, its lock stands.
        assert first.alive()
        assert "default" in slirpctl(first, "networks").stdout
        assert stream_guest_connects(str(tmp_path / "a.sock"))
        assert (state / "default.lock").read_text().strip() == str(first.pid)
        # Another network name on the same directory is a different owner and may start.
        with Slirpd(["--name", "other", "--stream", str(tmp_path / "c.sock"), "--state-dir", str(state)],
                    tmp_path, name="other") as other:
            assert other.alive()
    # Once the first has gone, the directory is free again (the lock died with it).
    with Slirpd(["--stream", str(tmp_path / "a.sock"), "--state-dir", str(state)], tmp_path, name="after") as after:
        assert after.alive()


def api(control: str, method: str, path: str, body: dict | None = None) -> int:
    data = [] if body is None else ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    res = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "5", "--unix-socket", control, "-X", method,
                          *data, "-w", "%{http_code}", f"http://slirpd{path}"], capture_output=True, text=True, timeout=10)
    return int(res.stdout or 0)


def dhcp_request(mac: str, xid: int, address: bytes) -> bytes:
    """DHCPREQUEST (selecting) for `address` from server 10.0.2.2, as after an OFFER."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, b"\0" * 4,
                        b"\0" * 4, b"\0" * 4, mac_bytes(mac), b"", b"")
    options = (b"\x63\x82\x53\x63" + bytes([53, 1, 3]) + bytes([50, 4]) + address
               + bytes([54, 4, 10, 0, 2, 2]) + b"\xff")
    payload = bootp + options
    payload += b"\0" * max(0, 300 - len(payload))
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    return ethernet(BROADCAST, mac, ETH_IPV4, ipv4("0.0.0.0", "255.255.255.255", 17, udp))


def lease(stream: str, mac: str) -> bool:
    """A fake guest takes a DHCP lease (DISCOVER, OFFER, REQUEST, ACK) and leaves."""
    try:
        with FakeGuest(("stream", stream), mac, timeout=3) as g:
            xid = random.getrandbits(32)
            g.send(dhcp_discover(mac, xid))
            offer = g.expect(lambda f: f if dhcp_reply_type(f, xid) == 2 else None, 3, "DHCP OFFER")
            bootp = 14 + (offer[14] & 0x0F) * 4 + 8
            g.send(dhcp_request(mac, xid, offer[bootp + 16:bootp + 20]))
            g.expect(lambda f: dhcp_reply_type(f, xid) == 5, 3, "DHCP ACK")
            return True
    except (OSError, TimeoutError, ConnectionError):
        return False  # the daemon was killed mid-exchange


def test_kill_9_while_writing_state_leaves_intact_files(tmp_path):
    state = tmp_path / "state"
    runtime = state / "default.runtime.json"
    leases = state / "default.leases"
    base = "/v1/networks/default/static-leases"
    granted = 0
    rng = random.Random(19)
    for round_ in range(6):
        d = Slirpd(["--stream", str(tmp_path / "s.sock"), "--state-dir", str(state)], tmp_path, name=f"r{round_}")
        if round_ > 0:
            assert "cannot read run-time changes" not in d.log, d.log
            assert "cannot read saved leases" not in d.log, d.log
            if runtime.exists():
                expected = json.loads(runtime.read_text())["staticLeases"]
                listed = json.loads(slirpctl(d, "--json", "static-lease", "list").stdout)
                assert sorted(l["mac"] for l in listed) == sorted(l["mac"] for l in expected), (listed, expected)
        stop = threading.Event()
        writes = [0]

        def writer():
            i = 0
            while not stop.is_set():
                # Each round its own MACs and addresses, so leases restored from earlier rounds never conflict.
                mac = f"52:54:00:77:{round_:02x}:{i % 30:02x}"
                status = api(d.control, "POST", base, {"mac": mac, "ip": f"10.0.2.{40 + 30 * round_ + i % 30}", "hostname": f"h{i}"})
                if status in (200, 201):
                    writes[0] += 1
                if i % 3 == 2:
                    api(d.control, "DELETE", f"{base}/{mac}")
                i += 1

        leased = [0]

        def leaser():
            # New guests keep leasing, so the lease file is rewritten (at most once a second).
            i = 0
            while not stop.is_set():
                if lease(str(tmp_path / "s.sock"), f"52:54:00:78:{round_:02x}:{i % 250:02x}"):
                    leased[0] += 1
                i += 1

        threads = [threading.Thread(target=writer, daemon=True), threading.Thread(target=leaser, daemon=True)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(1.2, 2.5))
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(15)
        granted += leased[0]
        assert writes[0] > 0, "no run-time change was written before the kill"
        # Whatever moment the kill hit, the file is whole JSON (the old version or the new),
        # and the lease file whole lines.
        json.loads(runtime.read_text())
        if leases.exists():
            lines = leases.read_text().split("\n")
            assert lines[0] == "slirpd-leases 1" and lines[-1] == "", lines[-3:]
            assert all(len(line.split()) in (4, 5) for line in lines[1:-1]), lines
    d = Slirpd(["--stream", str(tmp_path / "s.sock"), "--state-dir", str(state)], tmp_path, name="final")
    try:
        assert "cannot read run-time changes" not in d.log and "cannot read saved leases" not in d.log, d.log
        assert granted > 0, "no guest leased during the rounds"
        assert leases.exists(), "the lease file was never written"
        assert d.alive()
    finally:
        assert d.stop() == 0
