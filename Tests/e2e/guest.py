"""End-to-end test harness: boots the busybox test guest under QEMU (TCG)
and drives it through its serial console.

Traffic rule: guests talk only to the gateway (10.0.2.2 by default, which is
host 127.0.0.1) or to each other, by IP literal. Host-side servers here bind
127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import http.server
import itertools
import os
import re
import secrets
import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

REPO = Path(__file__).resolve().parents[2]
GUEST_IMAGE_SCRIPT = REPO / "Scripts" / "guest-image"
QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
# quiet + dmesg -n 1 in init keep kernel chatter off the console; panic=-1
# together with -no-reboot turns a guest panic into a QEMU exit.
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1"

T = TypeVar("T")

_image: Optional[tuple[str, str]] = None
_image_lock = threading.Lock()


def ensure_image() -> tuple[str, str]:
    """Build (or reuse) the guest image; returns (kernel_path, initrd_path)."""
    global _image
    with _image_lock:
        if _image is None:
            res = subprocess.run(
                [str(GUEST_IMAGE_SCRIPT)], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            if res.returncode != 0:
                raise RuntimeError(
                    f"{GUEST_IMAGE_SCRIPT} failed ({res.returncode}):\n"
                    f"{res.stderr[-4000:]}")
            lines = res.stdout.split()
            if len(lines) != 2:
                raise RuntimeError(f"unexpected guest-image output: {res.stdout!r}")
            _image = (lines[0], lines[1])
        return _image


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.1,
             what: str = "condition") -> T:
    """Poll predicate until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GuestError(RuntimeError):
    pass


_live_guests: "set[Guest]" = set()


@atexit.register
def _stop_leftover_guests() -> None:
    # A crashed test must not leave QEMU running.
    for g in list(_live_guests):
        g.stop()


class Guest:
    """One QEMU guest on the serial console.

    netdev is the full -netdev value and must define id=n0, e.g.
    "user,id=n0" or
    "stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/x.sock".
    With netdev=None the guest gets no -netdev/-device of its own: the network
    flags come verbatim in extra_args (e.g. from `slirpctl qemu-args`), and mac
    must be the MAC they give the NIC.
    """

    # Patterns end in \n, not $: output arrives in chunks, and $ would also
    # match a line cut short at the end of the buffer (e.g. "mtu=1" of 1500).
    _LEASE_RE = re.compile(r"^GUEST-LEASE ip=(\S+) mask=(\S*) router=(\S+) "
                           r"dns=(\S+) mtu=(\d+)\n", re.M)

    def __init__(self, name: str, netdev: Optional[str], mac: str,
                 model: str = "virtio-net-pci", extra_args: Iterable[str] = (),
                 log_dir: Optional[os.PathLike | str] = None,
                 memory_mb: int = 192, append: str = ""):
        if netdev is not None and not re.search(r"(^|,)id=n0(,|$)", netdev):
            raise ValueError(f"netdev must contain id=n0: {netdev!r}")
        self.name = name
        self.mac = mac.lower()
        self.netdev = netdev
        self.model = model
        kernel, initrd = ensure_image()
        cmdline = KERNEL_CMDLINE + (" " + append if append else "")
        self.argv = [
            QEMU, "-accel", "tcg", "-m", str(memory_mb),
            "-display", "none", "-no-reboot", "-nodefaults",
            "-serial", "stdio", "-monitor", "none",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
            *(() if netdev is None else
              ("-netdev", netdev, "-device", f"{model},netdev=n0,mac={self.mac}")),
            *extra_args,
        ]
        self._cond = threading.Condition()
        self._console = ""          # guest serial output, \r stripped
        self._stderr = ""           # QEMU's own diagnostics
        self._cmd_counter = itertools.count(1)
        self._stopped = False
        self.lease: Optional[dict] = None
        self.log_path: Optional[Path] = None
        self._log = None
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.log_path = Path(log_dir) / f"{name}.console.log"
            self._log = open(self.log_path, "w", encoding="utf-8")
            self._log.write("# " + shlex.join(self.argv) + "\n")
            self._log.flush()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, bufsize=0)
        self.pid = self.proc.pid
        _live_guests.add(self)
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, False),
                             name=f"{name}-console", daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, True),
                             name=f"{name}-stderr", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # --- output capture ---------------------------------------------------

    def _pump(self, stream, is_stderr: bool) -> None:
        while True:
            try:
                data = os.read(stream.fileno(), 65536)
            except OSError:
                data = b""
            if not data:
                break
            text = data.decode("utf-8", errors="replace").replace("\r", "")
            with self._cond:
                if is_stderr:
                    self._stderr += text
                else:
                    self._console += text
                if self._log is not None and not self._log.closed:
                    if is_stderr:
                        text = "".join(f"[qemu-stderr] {l}\n"
                                       for l in text.splitlines())
                    self._log.write(text)
                    self._log.flush()
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def console_text(self) -> str:
        with self._cond:
            return self._console

    def stderr_text(self) -> str:
        with self._cond:
            return self._stderr

    def _diagnostics(self, tail: int = 3000) -> str:
        # Also called with _cond held: Condition() defaults to an RLock.
        with self._cond:
            msg = f"--- {self.name} console tail ---\n{self._console[-tail:]}"
            if self._stderr:
                msg += f"\n--- qemu stderr ---\n{self._stderr[-tail:]}"
        if self.log_path:
            msg += f"\n(full log: {self.log_path})"
        return msg

    def _wait_console(self, pattern: re.Pattern, timeout: float, what: str,
                      start: int = 0,
                      fail: Optional[re.Pattern] = None) -> re.Match:
        """Wait until pattern matches console text from offset start."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = pattern.search(self._console, start)
                if m:
                    return m
                if fail is not None and fail.search(self._console, start):
                    raise GuestError(f"{self.name}: {what} failed\n"
                                     + self._diagnostics())
                if self.proc.poll() is not None:
                    raise GuestError(
                        f"{self.name}: QEMU exited ({self.proc.returncode}) "
                        f"while waiting for {what}\n" + self._diagnostics())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}: no {what} after {timeout}s\n"
                                       + self._diagnostics())
                # Wake periodically: process exit does not always notify.
                self._cond.wait(min(remaining, 0.5))

    # --- guest milestones -------------------------------------------------

    def wait_lease(self, timeout: float = 120) -> dict:
        """Wait for the DHCP lease line; returns ip, mask, router, dns, mtu."""
        m = self._wait_console(self._LEASE_RE, timeout, "GUEST-LEASE",
                               fail=re.compile(r"^GUEST-LEASE-FAILED", re.M))
        ip, mask, router, dns, mtu = m.groups()
        self.lease = {
            "ip": ip, "mask": mask, "router": router,
            "dns": dns, "mtu": int(mtu),
            "seconds": time.monotonic() - self.started_at,
        }
        return self.lease

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait for the lease, then until init has started httpd and the shell."""
        if self.lease is None:
            self.wait_lease(timeout)
        self._wait_console(re.compile(r"^GUEST-READY\n", re.M), timeout,
                           "GUEST-READY")

    # --- shell ------------------------------------------------------------

    def write(self, data: str) -> None:
        """Raw input to the serial console (e.g. "\\x03" for ^C)."""
        self.proc.stdin.write(data.encode())
        self.proc.stdin.flush()

    def run(self, cmd: str, timeout: float = 30) -> tuple[int, str]:
        """Run one shell command line in the guest; returns (rc, output).

        The output is what the command printed (stdout and stderr, with \\r
        removed), excluding the echoed command line. End the command with &
        to background it. On timeout, ^C is sent and TimeoutError raised.
        """
        if "\n" in cmd:
            raise ValueError("cmd must be a single line (join with ';')")
        self.wait_ready(timeout=max(timeout, 120))
        n = next(self._cmd_counter)
        # The quotes split the markers in the typed (echoed) line, so only
        # the shell's output of echo can match them.
        begin = f"__BEGIN_{n}__\n"
        end_re = re.compile(rf"__END_{n}__ (\d+)\n")
        body = cmd.strip().rstrip(";").rstrip()
        # "x &; echo" is a syntax error; "&" already separates commands.
        sep = " " if body.endswith("&") and not body.endswith("&&") else "; "
        line = (f'echo __BE""GIN_{n}__; {body}{sep}'
                f'echo __E""ND_{n}__ $?\n')
        with self._cond:
            start = len(self._console)
        self.write(line)
        try:
            b = self._wait_console(re.compile(re.escape(begin)), timeout,
                                   f"start of {cmd!r}", start=start)
            e = self._wait_console(end_re, timeout, f"end of {cmd!r}",
                                   start=b.end())
        except TimeoutError:
            self.write("\x03")
            raise
        with self._cond:
            output = self._console[b.end():e.start()]
        return int(e.group(1)), output

    def check(self, cmd: str, timeout: float = 30) -> str:
        """run() that raises unless the command exits 0; returns output."""
        rc, out = self.run(cmd, timeout)
        if rc != 0:
            raise GuestError(f"{self.name}: {cmd!r} exited {rc}:\n{out}")
        return out

    # --- lifecycle --------------------------------------------------------

    def stop(self) -> None:
        """Terminate QEMU (SIGTERM, SIGKILL after 5 s). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        proc = self.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in self._threads:
            t.join(timeout=2)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        with self._cond:
            if self._log is not None:
                self._log.close()
        _live_guests.discard(self)

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Guest {self.name} pid={self.pid} mac={self.mac}>"


class HostHTTPServer:
    """HTTP server on 127.0.0.1 (random port) serving a fixed body at
    url_path ("/" by default); other paths get 404. The default body carries
    a random token so a test can tell this server's reply from any other.
    Records (client_ip, path) per request in .requests.

    With `size`, the body is that many bytes made on the fly (no copy in memory), for
    long transfers; .sent counts the body bytes written so far, over all requests.
    """

    def __init__(self, body: Optional[bytes | str] = None,
                 url_path: str = "/", size: Optional[int] = None):
        token = secrets.token_hex(8)
        if body is None:
            body = f"hello from host {token}"
        self.body: bytes = body.encode() if isinstance(body, str) else body
        self.size = len(self.body) if size is None else size
        self.url_path = url_path
        self.requests: list[tuple[str, str]] = []
        self.sent = 0
        self.aborted = 0
        outer = self
        chunk = bytes(range(256)) * 256

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.client_address[0], self.path))
                if self.path != outer.url_path:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(outer.size))
                self.end_headers()
                if size is None:
                    self.wfile.write(outer.body)
                    outer.sent += len(outer.body)
                    return
                left = outer.size
                try:
                    while left > 0:
                        n = self.wfile.write(chunk[:min(left, len(chunk))])
                        outer.sent += n
                        left -= n
                except (BrokenPipeError, ConnectionResetError):
                    outer.aborted += 1   # the client went away (some tests kill it)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="host-http", daemon=True)
        self._thread.start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{self.url_path}"

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> "HostHTTPServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
