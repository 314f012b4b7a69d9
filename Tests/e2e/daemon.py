"""Starts the real slirpd binary for tests and reads its log.

The binary is $SLIRPD (Scripts/test sets it), else the debug build.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

from guest import REPO, wait_for

SLIRPD = os.environ.get("SLIRPD", str(REPO / ".build" / "debug" / "slirpd"))
SLIRPCTL = os.environ.get("SLIRPCTL", str(REPO / ".build" / "debug" / "slirpctl"))


class Slirpd:
    """One daemon process. `args` are slirpd's command-line arguments."""

    def __init__(self, args: list[str], log_dir: Path, name: str = "slirpd",
                 env: Optional[dict] = None, ready: bool = True,
                 launcher: list[str] = (), popen_kw: Optional[dict] = None, binary: Optional[str] = None):
        """`launcher` goes before the binary (e.g. systemd-socket-activate and its flags);
        `popen_kw` goes to Popen (pass_fds and preexec_fn, for socket activation by hand);
        `binary` replaces $SLIRPD (a copy prepared for valgrind, say)."""
        # Each daemon gets its own control socket, so several can run at once.
        self.control = str(Path(log_dir) / f"{name}.ctl")
        extra = [] if ("--control" in args or "--no-control" in args) else ["--control", self.control]
        # And its own lease files and DNS socket: a shared state directory would hand one
        # test's leases to the next.
        self.state_dir = str(Path(log_dir) / f"{name}.state")
        state = [] if "--state-dir" in args else ["--state-dir", self.state_dir]
        self.args = [*launcher, binary or SLIRPD, "--log-level", "debug", *extra, *state, *args]
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = ""
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, text=True, **(popen_kw or {}))
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        if ready:
            started = "control API listening" if extra else "attach a guest"
            wait_for(lambda: started in self.log or self.proc.poll() is not None, 30, what="slirpd to start")
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise RuntimeError(f"slirpd exited with {self.proc.returncode}:\n{self.log}")

    def _pump(self) -> None:
        with open(self.log_path, "w", encoding="utf-8") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                with self._lock:
                    self._log += line

    @property
    def log(self) -> str:
        with self._lock:
            return self._log

    def wait_log(self, text: str, timeout: float = 10, start: int = 0) -> str:
        """Waits for `text` in the log after offset `start`; returns the matching line."""
        def find():
            log = self.log[start:]
            i = log.find(text)
            if i < 0:
                return None
            end = log.find("\n", i)
            return log[log.rfind("\n", 0, i) + 1:end if end >= 0 else None]
        try:
            return wait_for(find, timeout, what=f"'{text}' in the slirpd log")
        except TimeoutError:
            raise AssertionError(f"'{text}' not in slirpd log:\n{self.log[-4000:]}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> "Slirpd":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def fd_count(pid: int) -> int:
    """How many descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            out[key] = int(value.split()[0])
    return out


def metric(d: "Slirpd", name: str, reason: Optional[str] = None, network: str = "default") -> int:
    """One sample of /metrics, read through the control socket: `name{network=...[,reason=...]}`."""
    text = subprocess.run(["curl", "-s", "--unix-socket", d.control, "http://slirpd/metrics"],
                          capture_output=True, text=True, check=True, timeout=10).stdout
    labels = f'network="{network}"' + (f',reason="{reason}"' if reason else "")
    m = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\d+)$", text, re.M)
    assert m, f"no {name}{{{labels}}} in /metrics"
    return int(m.group(1))


def slirpctl(d: Slirpd, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs slirpctl against daemon d's control socket."""
    res = subprocess.run([SLIRPCTL, "--control", d.control, *args], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"slirpctl {shlex.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
    return res


def run_slirpd(args: list[str], timeout: float = 10, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Runs slirpd expecting it to exit by itself (bad options and the like)."""
    return subprocess.run([SLIRPD, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=env)


def stream_netdev(path: str) -> str:
    return f"stream,id=n0,server=off,addr.type=unix,addr.path={path}"


def dgram_netdev(local: str, remote: str) -> str:
    return f"dgram,id=n0,local.type=unix,local.path={local},remote.type=unix,remote.path={remote}"


def tcp_stream_netdev(host: str, port: int) -> str:
    return f"stream,id=n0,server=off,addr.type=inet,addr.host={host},addr.port={port}"


def http_get(url: str, timeout: float = 10) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def retry_http_get(url: str, timeout: float = 30) -> str:
    """Fetches, retrying while the path is still coming up (a forward's first SYN can race the guest's ARP)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            return http_get(url, timeout=5)
        except OSError as e:
            last = e
            time.sleep(0.5)
    raise AssertionError(f"GET {url} kept failing: {last}")


class NetworkWithGuest:
    """One daemon with a stream endpoint and one guest attached to it, for module
    fixtures; `args` are the daemon's other arguments. close() stops both."""

    def __init__(self, tmp: Path, args: list[str], mac: str, name: str = "a"):
        from guest import Guest
        self.tmp = tmp
        self.sock = str(Path(tmp) / "net.sock")
        self.daemon = Slirpd([*args, "--stream", self.sock], tmp)
        self.guest = Guest(name, stream_netdev(self.sock), mac, log_dir=tmp)

    def close(self):
        self.guest.stop()
        self.daemon.stop()

    def serve(self):
        """For pytest fixtures (`yield from net.serve()`): waits for the guest, yields
        this network, and closes it whatever happens."""
        try:
            self.guest.wait_ready()
            yield self
        finally:
            self.close()
