"""The config file and SIGHUP reload, with a real guest whose TCP connection must survive.

A guest streams "tick" lines to a TCP server on the host's loopback through the NAT
while the file is changed under the daemon: a network added, a forward moved, an
invalid file, a network removed. The connection must never drop.
"""

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from daemon import SLIRPD, Slirpd, run_slirpd, stream_netdev
from guest import free_port, wait_for

pytestmark = pytest.mark.e2e

SLIRPCTL = os.environ.get("SLIRPCTL", str(Path(SLIRPD).with_name("slirpctl")))
MAC = "52:54:00:c0:00:01"


def networks(control: str) -> list:
    out = subprocess.run([SLIRPCTL, "--control", control, "--json", "networks"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return json.loads(out)


def fetch(port: int) -> str:
    """The page behind a forward, or "" while it does not answer (so wait_for retries)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return r.read().decode().strip()
    except OSError:
        return ""


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


class TickServer:
    """Accepts one connection on 127.0.0.1 and counts the lines it receives."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.lines = 0
        self.closed = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            buf = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    self.closed = True
                    return
                buf += data
                self.lines = buf.count(b"\n")

    def stop(self):
        self.sock.close()


def test_config_errors_name_file_and_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[network]]\nname = "lab"\nhostfwd = ["tcp::80"]\n')
    r = run_slirpd(["--config", str(cfg), "--no-control"])
    assert r.returncode == 1
    assert f"{cfg}:3: Invalid host forwarding rule 'tcp::80' (Bad host port separator)" in r.stderr, r.stderr
    r = run_slirpd(["--config", str(cfg), "-o", "net=10.1.0.0/24"])
    assert r.returncode == 1 and "--config replaces" in r.stderr


def test_sighup_reload_keeps_guest_connection(tmp_path, make_guest):
    s1, s2 = tmp_path / "lab.sock", tmp_path / "lab2.sock"
    p1, p2 = free_port(), free_port()
    cfg = tmp_path / "slirpd.toml"

    def write(text):
        cfg.write_text(text)

    lab = f'[[network]]\nname = "lab"\nstream = ["{s1}"]\nhostfwd = ["tcp:127.0.0.1:{{port}}-:8080"]\n'
    write(lab.format(port=p1))
    ticks = TickServer()
    d = Slirpd(["--config", str(cfg)], tmp_path)
    try:
        g = make_guest("g", stream_netdev(str(s1)), MAC)
        g.wait_ready()
        assert wait_for(lambda: fetch(p1) == f"hello from guest {MAC}", 30, what="the forward from the file")
        rc, out = g.run(f"(while true; do echo tick; sleep 0.3; done) | nc 10.0.2.2 {ticks.port} &")
        assert rc == 0, out
        wait_for(lambda: ticks.lines >= 3, 30, what="ticks from the guest")

        # 1. Add a network and move the forward from p1 to p2.
        write(lab.format(port=p2) + f'\n[[network]]\nname = "lab2"\noptions = "net=10.9.0.0/24"\nstream = ["{s2}"]\n')
        start = len(d.log)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload: network lab2 started", start=start)
        assert wait_for(lambda: fetch(p2) == f"hello from guest {MAC}", 30, what="the moved forward")
        assert refused(p1)
        assert s2.exists()
        assert sorted(n["name"] for n in networks(d.control)) == ["lab", "lab2"]

        # 2. A broken file is refused with its line; everything keeps running.
        write(lab.format(port=p2) + "[[network]\n")
        start = len(d.log)
        d.proc.send_signal(signal.SIGHUP)
        line = d.wait_log("keeping the running configuration", start=start)
        assert f"{cfg}:5:" in line, line
        assert fetch(p2) == f"hello from guest {MAC}"

        # 3. Remove the second network.
        write(lab.format(port=p2))
        start = len(d.log)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("reload: network lab2 removed", start=start)
        assert not s2.exists()

        # The guest's connection lived through all three reloads.
        before = ticks.lines
        wait_for(lambda: ticks.lines >= before + 3, 10, what="ticks after the reloads")
        assert not ticks.closed
        assert "detached" not in d.log, "no guest may be disconnected by these reloads"
    finally:
        d.stop()
        ticks.stop()
