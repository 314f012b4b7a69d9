"""End-to-end: what a guest or a local user must not be able to do.

restrict=on cuts guests off while forwards still work; host-loopback=off keeps them off
the host's loopback; isolate=on keeps guests apart; guest-uids/guest-gids admit only the
listed users on the guest sockets; the control API listens on no TCP port; and a guest
that spoofs another's MAC is thrown out while the real one carries on.

Guests talk only to the gateway (host loopback) and each other; host servers bind 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon import Slirpd, retry_http_get, run_slirpd, stream_netdev
from fakeguest import arp_request, prefixed
from guest import HostHTTPServer, free_port
from test_slirpd_e2e import guest_get

pytestmark = pytest.mark.e2e

MAC_A = "52:54:00:15:00:01"
MAC_B = "52:54:00:15:00:02"
NOBODY = 65534


def guest_fetch_fails(guest, url: str) -> str:
    """Runs wget in the guest and returns its output, asserting that it failed."""
    rc, out = guest.run(f"wget -q -O - {url}", timeout=90)
    assert rc != 0, f"{guest.name} fetched {url} although it should not reach it: {out!r}"
    return out


def test_restrict_blocks_outbound_while_forwards_work(tmp_path, make_guest):
    fwd = free_port()
    sock = str(tmp_path / "r.sock")
    with HostHTTPServer() as host_http, \
            Slirpd(["-o", f"restrict=on,hostfwd=tcp:127.0.0.1:{fwd}-:8080", "--stream", sock], tmp_path):
        g = make_guest("r", stream_netdev(sock), MAC_A)
        g.wait_ready()
        guest_fetch_fails(g, host_http.url("10.0.2.2"))
        assert retry_http_get(f"http://127.0.0.1:{fwd}/") == f"hello from guest {MAC_A}"


def test_host_loopback_off_keeps_guests_off_the_hosts_loopback(tmp_path, make_guest):
    """The fetch that works on a default network fails at once with host-loopback=off,
    and the host server sees nothing; a forward into the guest still works."""
    fwd = free_port()
    sock = str(tmp_path / "l.sock")
    seen = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    try:
        with Slirpd(["-o", f"host-loopback=off,hostfwd=tcp:127.0.0.1:{fwd}-:8080", "--stream", sock], tmp_path):
            g = make_guest("l", stream_netdev(sock), MAC_A)
            g.wait_ready()
            started = time.monotonic()
            guest_fetch_fails(g, f"http://10.0.2.2:{server.getsockname()[1]}/")
            assert time.monotonic() - started < 30, "the refused connection should fail, not time out"
            try:
                seen.append(server.accept())
            except socket.timeout:
                pass
            assert not seen, "a connection reached the host's loopback"
            assert retry_http_get(f"http://127.0.0.1:{fwd}/") == f"hello from guest {MAC_A}"
    finally:
        server.close()


def test_isolate_lets_guests_reach_the_nat_but_not_each_other(tmp_path, make_guest):
    """Two guests on isolate=on both lease and reach the host, but neither reaches the
    other; then a fake guest claiming A's MAC is thrown out and A keeps working."""
    sock = str(tmp_path / "i.sock")
    with HostHTTPServer() as host_http, \
            Slirpd(["-o", "isolate=on", "--stream", sock], tmp_path) as d:
        a = make_guest("a", stream_netdev(sock), MAC_A)
        b = make_guest("b", stream_netdev(sock), MAC_B)
        a.wait_ready()
        b.wait_ready()
        assert a.lease["ip"] != b.lease["ip"]
        for g in (a, b):
            assert guest_get(g, host_http.url("10.0.2.2")) == host_http.body.decode()
        guest_fetch_fails(a, f"http://{b.lease['ip']}:8080/")
        guest_fetch_fails(b, f"http://{a.lease['ip']}:8080/")

        # A spoofer: a gratuitous ARP from A's MAC and IP, as a new stream guest.
        start = len(d.log)
        with socket.socket(socket.AF_UNIX) as spoof:
            spoof.connect(sock)
            # A gratuitous ARP: A's MAC, and A's address as both sender and target.
            spoof.sendall(prefixed(arp_request(MAC_A, a.lease["ip"], a.lease["ip"])))
            d.wait_log(f"duplicate MAC {MAC_A}", start=start)
            spoof.settimeout(10)
            assert spoof.recv(65536) == b"", "the spoofing guest should be disconnected"
        assert guest_get(a, host_http.url("10.0.2.2")) == host_http.body.decode()


# A client run as another user: connects (stream) or sends from its own socket file
# (dgram), then reports whether slirpd kept the connection.
CLIENT = r"""
import os, socket, struct, sys, time
kind, path, own = sys.argv[1], sys.argv[2], sys.argv[3]
frame = b"\xff" * 6 + bytes.fromhex("525400150099") + b"\x08\x06" + b"\0" * 46
if kind == "stream":
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.settimeout(3)
    try:
        s.sendall(struct.pack(">I", len(frame)) + frame)
        print("closed" if s.recv(65536) == b"" else "open")
    except socket.timeout:
        print("open")
    except (ConnectionResetError, BrokenPipeError):
        print("closed")
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(own)
    s.sendto(frame, path)
    time.sleep(1)
    print("sent")
"""


def run_as(uid: int, gid: int, *args: str) -> str:
    def drop():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    # The system interpreter: one under /root (pyenv) is out of other users' reach.
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    res = subprocess.run([python, "-c", CLIENT, *args], capture_output=True, text=True,
                         timeout=30, preexec_fn=drop)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_guest_allow_lists_admit_only_listed_users(tmp_path):
    """--guest-uid 4242: on the stream socket nobody is refused (and logged) while uid
    4242 and root are admitted; on the datagram socket a sender whose socket file belongs
    to nobody is ignored and one owned by 4242 becomes a guest. With a TCP endpoint the
    network is refused at start."""
    shared = Path(f"/tmp/slirpd-acl-{os.getpid()}")
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)          # every test user may bind its own socket file here
    try:
        sock, dgram = str(shared / "g.sock"), str(shared / "g.dgram")
        with Slirpd(["--guest-uid", "4242", "--stream", sock, "--dgram", dgram, "--socket-mode", "0666"],
                    tmp_path) as d:
            assert run_as(NOBODY, NOBODY, "stream", sock, "") == "closed"
            line = d.wait_log("refusing a guest on stream:")
            assert f"uid {NOBODY}" in line and "not in guest-uids or guest-gids" in line
            assert run_as(4242, 4242, "stream", sock, "") == "open"
            assert run_as(0, 0, "stream", sock, "") == "open"

            assert run_as(NOBODY, NOBODY, "dgram", dgram, str(shared / "nobody.sock")) == "sent"
            line = d.wait_log("refusing a guest on dgram:")
            assert f"owner uid {NOBODY}" in line
            assert run_as(4242, 4242, "dgram", dgram, str(shared / "listed.sock")) == "sent"
            d.wait_log(f"(dgram {shared}/listed.sock) attached")
            assert f"(dgram {shared}/nobody.sock) attached" not in d.log

        res = run_slirpd(["--guest-gid", "100", "--tcp", f"127.0.0.1:{free_port()}", "--no-control",
                          "--state-dir", str(tmp_path / "st")])
        assert res.returncode == 1
        assert "guest-uids and guest-gids check Unix socket peers" in res.stderr
    finally:
        for f in shared.iterdir():
            f.unlink()
        shared.rmdir()


def ip_listeners(pid: int) -> list[tuple[str, str]]:
    """The TCP listeners among a process's sockets: (table, local address:port as hex)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    assert inodes, "no sockets found: the check would prove nothing"
    listeners = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:      # 0A: LISTEN
                    listeners.append((table, cols[1]))
    return listeners


def test_control_api_listens_on_no_inet_port(tmp_path):
    """Guests reach the host only over IP, through the gateway; the control API is a
    Unix socket only, so none of slirpd's sockets is an IP listener, but one: the relay
    for DNS over TCP to the IPv6 DNS address, on [::1] only (libslirp 4.7 takes such a
    connection to the host's loopback; DNSOverTCP6.swift), which -o ipv6=off removes."""
    loopback6 = "00000000000000000000000001000000:"
    with Slirpd(["--stream", str(tmp_path / "c.sock")], tmp_path) as d:
        listeners = ip_listeners(d.pid)
        assert len(listeners) <= 1 and all(t == "tcp6" and a.startswith(loopback6) for t, a in listeners), \
            f"slirpd listens on {listeners}"
        assert os.stat(d.control).st_mode & 0o777 == 0o600
    with Slirpd(["-o", "ipv6=off", "--stream", str(tmp_path / "c4.sock")], tmp_path, name="v4") as d:
        assert ip_listeners(d.pid) == []


def test_no_new_privileges_once_serving(tmp_path):
    """Once its sockets are open slirpd sets no_new_privs, so neither it nor a guestfwd
    command it starts can gain privileges through exec (setuid files, capabilities)."""
    with Slirpd(["--stream", str(tmp_path / "p.sock")], tmp_path) as d:
        status = Path(f"/proc/{d.pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status, status
