"""End-to-end: slirpd as a service. Socket activation (systemd-socket-activate, and by
hand the way systemd hands sockets over), the notification protocol (READY, STATUS,
RELOADING, STOPPING, WATCHDOG), and guests that live through a daemon restart: a dgram
guest on a socket held across the restart, a QEMU `server=on` guest that slirpd dials
again, and forwards, static leases and attachments added at run time.

Guests talk only to the gateway (host loopback); host servers bind 127.0.0.1.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import threading
import time

import pytest

from daemon import Slirpd, dgram_netdev, slirpctl, stream_netdev, wait_for
from guest import HostHTTPServer, free_port
from test_slirpd_e2e import guest_get

pytestmark = pytest.mark.e2e

MAC_S = "52:54:00:5e:00:01"
MAC_D = "52:54:00:5e:00:02"
MAC_Q = "52:54:00:5e:00:03"


class NotifyListener:
    """A stand-in for systemd's notification socket: collects every datagram."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path if not path.startswith("@") else "\0" + path[1:])
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def wait(self, text: str, timeout: float = 15, after: int = 0) -> int:
        """Waits for a message containing `text` (from index `after`); returns its index."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.messages)):
                if text in self.messages[i][1]:
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no '{text}' from slirpd; got {[m for _, m in self.messages]}")
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                pass

    def drain(self) -> int:
        """Reads what is queued, so later arrival times are live; returns the message count."""
        self.sock.settimeout(0.05)
        try:
            while True:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
        except socket.timeout:
            pass
        finally:
            self.sock.settimeout(0.2)
        return len(self.messages)

    def close(self):
        self.sock.close()


def test_socket_activation_stream_and_dgram_guests_get_leases(tmp_path, make_guest):
    """systemd-socket-activate creates a datagram and a stream socket and starts slirpd
    on the first traffic; both guests attach through the inherited sockets, lease, and
    reach the host. slirpd leaves the socket files, which are systemd's, in place."""
    sock, dgram = str(tmp_path / "act.sock"), str(tmp_path / "act.dgram")
    # One systemd-socket-activate listens on one kind; the outer passes its socket on to
    # the inner (it says so in its --help), so slirpd gets both, named after its network.
    launcher = ["systemd-socket-activate", "--datagram", "-l", dgram, "--fdname=lab",
                "systemd-socket-activate", "-l", sock, "--fdname=lab"]
    d = Slirpd(["--name", "lab"], tmp_path, launcher=launcher, ready=False)
    try:
        wait_for(lambda: os.path.exists(dgram), 10, what="the datagram socket")
        with HostHTTPServer() as host_http:
            gd = make_guest("d", dgram_netdev(str(tmp_path / "d.sock"), dgram), MAC_D)
            # The dgram guest's first frame starts the inner launcher, which makes the stream socket.
            wait_for(lambda: os.path.exists(sock), 60, what="the stream socket")
            gs = make_guest("s", stream_netdev(sock), MAC_S)
            ls, ld = gs.wait_lease(), gd.wait_lease()
            assert ls["ip"] != ld["ip"] and ls["ip"].startswith("10.0.2.") and ld["ip"].startswith("10.0.2.")
            line = d.wait_log("socket activation:")
            assert f"stream:{sock} (lab)" in line and f"dgram:{dgram} (lab)" in line
            assert guest_get(gs, host_http.url("10.0.2.2")) == host_http.body.decode()
            assert guest_get(gd, host_http.url("10.0.2.2")) == host_http.body.decode()
    finally:
        assert d.stop() == 0, d.log[-3000:]
    assert os.path.exists(sock) and os.path.exists(dgram), "slirpd removed socket files that systemd owns"


def test_socket_activation_refuses_a_name_that_matches_no_network(tmp_path):
    """With two networks, each inherited socket must name one; otherwise slirpd says so and exits 1."""
    config = tmp_path / "two.toml"
    config.write_text(f'[[network]]\nname = "a"\nstream = ["{tmp_path}/a.sock"]\n'
                      f'[[network]]\nname = "b"\noptions = "net=10.0.3.0/24"\nstream = ["{tmp_path}/b.sock"]\n')
    sock = str(tmp_path / "c.sock")
    d = Slirpd(["--config", str(config)], tmp_path, ready=False,
               launcher=["systemd-socket-activate", "-l", sock, "--fdname=c"])
    wait_for(lambda: os.path.exists(sock), 10, what="the socket")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)       # starts slirpd
        wait_for(lambda: not d.alive(), 20, what="slirpd to refuse the socket")
    assert d.stop() == 1
    assert "FileDescriptorName=c, which names no network (networks: a, b)" in d.log


def test_notify_ready_status_reloading_watchdog_stopping(tmp_path):
    """The notification socket gets READY=1 with a STATUS= line once slirpd serves,
    WATCHDOG=1 at half WATCHDOG_USEC, RELOADING=1 then READY=1 around a SIGHUP reload,
    and STOPPING=1 on SIGTERM; an abstract-namespace socket (@name) works the same."""
    for address in (str(tmp_path / "notify"), f"@slirpd-test-{os.getpid()}"):
        listener = NotifyListener(address)
        config = tmp_path / "n.toml"
        config.write_text(f'[[network]]\nname = "n"\nstream = ["{tmp_path}/n.sock"]\n')
        env = dict(os.environ, NOTIFY_SOCKET=address, WATCHDOG_USEC="400000")
        d = Slirpd(["--config", str(config)], tmp_path, env=env)
        try:
            ready = listener.wait("READY=1")
            assert "STATUS=0 guests on 1 network: n 0" in listener.messages[ready][1]
            listener.wait("WATCHDOG=1", timeout=3, after=ready)
            # Counted over a window, not timed one by one: arrival times here jitter
            # with the test's own threads.
            before = listener.drain()
            time.sleep(1.0)
            pings = sum("WATCHDOG=1" in m for _, m in listener.messages[before:listener.drain()])
            assert 3 <= pings <= 7, f"{pings} watchdog pings in 1 s; WATCHDOG_USEC=400000 asks for one every 0.2 s"
            second = len(listener.messages) - 1
            d.proc.send_signal(signal.SIGHUP)
            reloading = listener.wait("RELOADING=1", after=second)
            assert "MONOTONIC_USEC=" in listener.messages[reloading][1]
            listener.wait("READY=1", after=reloading + 1)
            d.proc.send_signal(signal.SIGTERM)
            listener.wait("STOPPING=1")
            assert d.stop() == 0
        finally:
            d.stop()
            listener.close()


def hold_and_launch(sock: socket.socket, name: str):
    """What systemd does for a .socket unit: it keeps `sock` and passes it to each new
    slirpd as descriptor 3 with LISTEN_FDS=1, LISTEN_FDNAMES and LISTEN_PID (set by the
    shell to its own PID, which exec keeps)."""
    fd = sock.fileno()
    # bash, not sh: dash takes only one-digit descriptors in redirections.
    launcher = ["bash", "-c", f'exec 3<&{fd} {fd}<&-; LISTEN_PID=$$ exec "$0" "$@"']
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES=name)
    return dict(launcher=launcher, env=env, popen_kw=dict(pass_fds=(fd,)))


class RequestLog(http.server.ThreadingHTTPServer):
    """A host HTTP server on loopback that notes when each request arrived."""

    def __init__(self):
        times = self.times = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                times.append(time.monotonic())
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


def test_dgram_guest_reaches_the_host_within_1s_of_a_restart(tmp_path, make_guest):
    """With the datagram socket held across the restart (as systemd holds a .socket
    unit's), a guest fetching from the host in a loop gets through again within 1 s of
    the new slirpd being ready."""
    path = str(tmp_path / "held.dgram")
    held = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    held.bind(path)
    server = RequestLog()
    try:
        d = Slirpd([], tmp_path, name="first", **hold_and_launch(held, "default"))
        g = make_guest("h", dgram_netdev(str(tmp_path / "h.sock"), path), MAC_D)
        g.wait_ready()
        g.check(f"(while :; do wget -q -O /dev/null http://10.0.2.2:{server.port}/; usleep 100000; done) "
                ">/dev/null 2>&1 &")
        wait_for(lambda: len(server.times) >= 3, 30, what="the guest's fetch loop")
        assert d.stop() == 0
        assert os.path.exists(path), "slirpd removed the held socket's file"
        time.sleep(1)
        down = len(server.times)
        d = Slirpd([], tmp_path, name="second", **hold_and_launch(held, "default"))
        ready = time.monotonic()
        try:
            wait_for(lambda: len(server.times) > down, 10, what="a fetch after the restart")
            delay = server.times[down] - ready
            assert delay < 1.0, f"the guest reached the host {delay:.2f} s after the restarted slirpd was ready"
            assert "socket activation: dgram:" in d.log
        finally:
            assert d.stop() == 0
    finally:
        server.close()
        held.close()


def qemu_server_netdev(path: str) -> str:
    return f"stream,id=n0,server=on,addr.type=unix,addr.path={path}"


def test_server_on_guest_forward_and_static_lease_survive_restart(tmp_path, make_guest):
    """A QEMU listening with server=on is attached at run time (slirpctl attach); a forward
    into it and a static lease are added the same way. After SIGTERM and a new slirpd on
    the same state directory, slirpd dials the guest again, which reaches the host, and
    the forward and the static lease are back."""
    qsock = str(tmp_path / "q.sock")
    state = str(tmp_path / "state")
    net = str(tmp_path / "net.sock")
    g = make_guest("q", qemu_server_netdev(qsock), MAC_Q)
    wait_for(lambda: os.path.exists(qsock), 30, what="QEMU's listening socket")
    fwd = free_port()
    with HostHTTPServer() as host_http:
        d = Slirpd(["--stream", net, "--state-dir", state], tmp_path, name="first")
        try:
            out = slirpctl(d, "attach", f"unix:{qsock}").stdout
            assert f"attached unix:{qsock}" in out, out
            lease = g.wait_lease()
            g.wait_ready()      # the guest serves /www on 8080
            slirpctl(d, "forward", "add", f"tcp:127.0.0.1:{fwd}-{lease['ip']}:8080")
            slirpctl(d, "static-lease", "add", "52:54:00:5e:00:99", "10.0.2.77", "--hostname", "kept")
            assert guest_get(g, host_http.url("10.0.2.2")) == host_http.body.decode()
        finally:
            assert d.stop() == 0
        with Slirpd(["--stream", net, "--state-dir", state], tmp_path, name="second") as d:
            d.wait_log("restored 3 run-time change(s)")
            d.wait_log(f"attached on connect:unix:{qsock}")
            assert guest_get(g, host_http.url("10.0.2.2")) == host_http.body.decode()
            import urllib.request
            with urllib.request.urlopen(f"http://127.0.0.1:{fwd}/", timeout=20) as r:
                assert r.read().decode() == f"hello from guest {MAC_Q}"
            rows = slirpctl(d, "attachments").stdout
            assert f"unix:{qsock}" in rows and "api" in rows and "yes" in rows, rows
            assert "10.0.2.77" in slirpctl(d, "static-lease", "list").stdout
            # Detached, it stays detached across the next restart.
            assert "detached" in slirpctl(d, "detach", f"unix:{qsock}").stdout
            assert f"unix:{qsock}" not in slirpctl(d, "attachments").stdout


def test_configured_connect_redials_after_qemu_returns(tmp_path, make_guest):
    """--connect dials a QEMU that is not there yet (backing off, logged once), attaches
    it when it appears, and dials it again after QEMU restarts."""
    qsock = str(tmp_path / "late.sock")
    with Slirpd(["--connect", f"unix:{qsock}", "--stream", str(tmp_path / "n.sock")], tmp_path) as d:
        d.wait_log(f"cannot reach QEMU at unix:{qsock}")
        with HostHTTPServer() as host_http:
            for round in (1, 2):
                g = make_guest(f"late{round}", qemu_server_netdev(qsock), MAC_Q)
                g.wait_lease()
                assert guest_get(g, host_http.url("10.0.2.2")) == host_http.body.decode()
                g.stop()
                if os.path.exists(qsock):
                    os.unlink(qsock)
        assert d.log.count(f"attached on connect:unix:{qsock}") == 2, d.log[-3000:]
