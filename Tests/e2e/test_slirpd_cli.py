"""Integration: the real slirpd binary on temporary sockets, no guest.

Option errors use QEMU's wording and exit non-zero before anything is bound;
socket files get the right mode, a stale one is replaced, a live one is not,
and all are removed on SIGTERM.
"""

import os
import socket
import stat

import pytest

from daemon import Slirpd, run_slirpd


@pytest.mark.parametrize("opts,message", [
    ("hostfwd=tcp::80", "Invalid host forwarding rule 'tcp::80' (Bad host port separator)"),
    ("hostfwd=foo:1:2-:3", "Invalid host forwarding rule 'foo:1:2-:3' (Bad protocol name)"),
    ("net=10.0.2.0/33", "Invalid netmask provided (must be in range 4-32)"),
    ("net=10.0.2.0/24,host=10.0.3.2", "Host doesn't belong to network"),
    ("dns=10.0.2.2", "DNS must be different from host"),
    ("ipv4=off,ipv6=off", "IPv4 and IPv6 disabled"),
    ("restrict=maybe", "Parameter 'restrict' expects 'on' or 'off'"),
    ("bogus=1", "Invalid parameter 'bogus'"),
    ("guestfwd=tcp:10.0.2.100:80", "Invalid guest forwarding rule 'tcp:10.0.2.100:80'"),
    ("smb=/srv", "smb"),
])
def test_bad_options_exit_nonzero_with_qemu_wording(tmp_path, opts, message):
    sock = tmp_path / "x.sock"
    r = run_slirpd(["-o", opts, "--stream", str(sock)])
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert r.stderr.startswith("slirpd: ")
    assert not sock.exists(), "nothing may be bound when the options are bad"


@pytest.mark.parametrize("args,message", [
    (["--mtu", "67"], "Invalid MTU 67"),
    (["--mtu", "65522"], "Invalid MTU 65522"),
    (["--tcp", "nohost"], "invalid --tcp 'nohost'"),
    (["--socket-mode", "999"], "invalid socket mode"),
    (["--busy-poll", "1001"], "--busy-poll must be 0-1000 microseconds, not 1001"),
    (["--busy-poll=-1"], "--busy-poll must be 0-1000 microseconds, not -1"),
])
def test_bad_flags(tmp_path, args, message):
    r = run_slirpd([*args, "--stream", str(tmp_path / "x.sock")])
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_sockets_mode_stale_replacement_and_cleanup(tmp_path):
    s, d = tmp_path / "s.sock", tmp_path / "d.sock"
    # A stale stream socket file, as left by a process that died.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(s))
    stale.close()
    assert s.exists()
    daemon = Slirpd(["--stream", str(s), "--dgram", str(d)], tmp_path)
    try:
        for p in (s, d):
            st = os.stat(p)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o660
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(s))
        # The exact QEMU flags are printed for each endpoint.
        assert f"-netdev stream,id=n0,server=off,addr.type=unix,addr.path={s} -device virtio-net-pci,netdev=n0,mac=52:54:00:" in daemon.log
        assert f"remote.type=unix,remote.path={d} -device virtio-net-pci" in daemon.log

        # A second daemon on a live socket is refused and leaves the first one's file alone.
        r = run_slirpd(["--stream", str(s)])
        assert r.returncode != 0 and "in use" in r.stderr, r.stderr
        assert s.exists() and daemon.alive()
    finally:
        assert daemon.stop() == 0
    assert not s.exists() and not d.exists(), "socket files must be removed on exit"
    assert "SIGTERM: shutting down" in daemon.log
    assert not os.path.exists(daemon.control), "the control socket must be removed on exit"


def test_stopping_with_api_clients_connected_is_clean(tmp_path):
    """The control API's server used to be cancelled on SIGTERM: with clients connected it
    then logged "Waiting on child channel: CancellationError()" as an error, and once here
    the process died of SIGILL. It is now shut down gracefully. Several rounds, as the old
    failure depended on timing (2 of 8 rounds logged the error)."""
    for round in range(6):
        d = Slirpd(["--stream", str(tmp_path / f"c{round}.sock")], tmp_path, name=f"stop{round}")
        try:
            served = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            served.connect(d.control)
            served.sendall(b"GET /v1/networks HTTP/1.1\r\nHost: slirpd\r\n\r\n")
            served.settimeout(10)
            assert served.recv(65536).startswith(b"HTTP/1.1 200")
            idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.connect(d.control)
        finally:
            rc = d.stop()
        stop = d.log[d.log.index("SIGTERM: shutting down"):]
        assert rc == 0, (round, rc, stop)
        assert " error " not in stop and "CancellationError" not in stop, (round, stop)
        served.close()
        idle.close()


def test_refuses_to_replace_a_regular_file(tmp_path):
    f = tmp_path / "file.sock"
    f.write_text("precious")
    r = run_slirpd(["--stream", str(f)])
    assert r.returncode != 0 and "not a socket" in r.stderr, r.stderr
    assert f.read_text() == "precious"


def test_repeated_options_add_up(tmp_path):
    """A second -o adds to the first (joined with a comma) instead of replacing it, even
    when pasted with QEMU's leading `user,`."""
    s = tmp_path / "o.sock"
    with Slirpd(["-o", "net=10.9.0.0/24", "-o", f"user,tftp={tmp_path}", "--stream", str(s)], tmp_path) as d:
        d.wait_log("network default: 10.9.0.0/24, gateway 10.9.0.2")
        d.wait_log(f"TFTP: serving {tmp_path} read-only on 10.9.0.2:69")


def test_socket_mode_option(tmp_path):
    s = tmp_path / "m.sock"
    with Slirpd(["--stream", str(s), "--socket-mode", "600"], tmp_path):
        assert stat.S_IMODE(os.stat(s).st_mode) == 0o600


def test_default_endpoint_under_xdg_runtime_dir(tmp_path):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    d = Slirpd(["--name", "lab"], tmp_path, env=env)
    try:
        path = tmp_path / "slirpd" / "lab.sock"
        assert path.exists()
        assert f"addr.path={path} " in d.log
        assert "network lab: 10.0.2.0/24, gateway 10.0.2.2, DNS 10.0.2.3, DHCP from 10.0.2.15" in d.log
    finally:
        assert d.stop() == 0
    assert not (tmp_path / "slirpd" / "lab.sock").exists()


def test_sigint_stops_cleanly(tmp_path):
    import signal
    s = tmp_path / "i.sock"
    d = Slirpd(["--stream", str(s)], tmp_path)
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(10) == 0
    assert not s.exists()


def test_socket_group_from_config_and_cleanup_on_failure(tmp_path):
    import grp
    s = tmp_path / "g.sock"
    good = tmp_path / "good.toml"
    good.write_text(f'[[network]]\nname = "g"\nstream = ["{s}"]\nsocket-group = "users"\n')
    with Slirpd(["--config", str(good)], tmp_path):
        assert os.stat(s).st_gid == grp.getgrnam("users").gr_gid
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[network]]\nname = "g"\nstream = ["{s}"]\nsocket-group = "no-such-group-here"\n')
    r = run_slirpd(["--config", str(bad), "--no-control"])
    assert r.returncode == 1 and "no group named 'no-such-group-here'" in r.stderr, r.stderr
    assert not s.exists(), "a failed start must not leave its socket file behind"
