"""End-to-end: the control API and slirpctl against the real slirpd and real QEMU guests.

Everything goes through the real `slirpctl` binary (or curl on the control socket for
/metrics and the permission check), as a user would. Host traffic goes to 127.0.0.1
only; guests never resolve names.
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from daemon import SLIRPCTL, NetworkWithGuest, Slirpd, retry_http_get, slirpctl, stream_netdev
from guest import Guest, free_port, wait_for

pytestmark = pytest.mark.e2e

MAC_A = "52:54:00:c7:00:01"     # the shared network's guest
MAC_W1 = "52:54:00:c7:01:01"    # first guest named web1
MAC_W2 = "52:54:00:c7:01:02"    # second guest named web1


def slirpctl_background(d: Slirpd, out_path: Path, *args: str) -> subprocess.Popen:
    """Starts a streaming slirpctl (capture, events) with stdout to a file; stop it with stop()."""
    with open(out_path, "wb") as out:
        return subprocess.Popen([SLIRPCTL, "--control", d.control, *args], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM by PID (SIGKILL after 5 s); returns its stderr."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stderr.read().decode(errors="replace")


def table(text: str) -> list[dict]:
    """Parses slirpctl's table: columns start where the header's names start (cells may be empty)."""
    lines = text.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    names = [lines[0][s:e].strip() for s, e in zip(starts, starts[1:] + [None])]
    return [{n: line[s:e].strip() for n, s, e in zip(names, starts, starts[1:] + [None])} for line in lines[1:]]


def control_get(d: Slirpd, path: str, user: int | None = None) -> tuple[int, str]:
    """GET on the control socket with curl, optionally as another uid; returns (status, body)."""
    ids = {} if user is None else {"user": user, "group": user, "extra_groups": [], "cwd": "/"}
    res = subprocess.run(["curl", "-sS", "--max-time", "10", "--unix-socket", d.control,
                          "-w", "\n%{http_code}", f"http://slirpd{path}"],
                         capture_output=True, text=True, timeout=20, **ids)
    assert res.returncode == 0, f"curl failed ({res.returncode}): {res.stderr}"
    body, _, status = res.stdout.rpartition("\n")
    return int(status), body


# --- one daemon and one guest for the read-only checks and forwards ---------

class ControlNet(NetworkWithGuest):
    def __init__(self, tmp: Path):
        # A fixed forward to guest A: host traffic that must not show in another guest's capture.
        self.fwd_port = free_port()
        super().__init__(tmp, ["-o", f"hostfwd=tcp:127.0.0.1:{self.fwd_port}-:8080"], MAC_A)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    yield from ControlNet(tmp_path_factory.mktemp("ctlnet")).serve()


def test_forward_add_list_remove(net):
    d, port = net.daemon, free_port()
    rule = f"tcp:127.0.0.1:{port}-10.0.2.15:8080"
    assert slirpctl(d, "forward", "add", rule).stdout.strip() == f"added {rule}"
    assert retry_http_get(f"http://127.0.0.1:{port}/").strip() == f"hello from guest {MAC_A}"

    rows = [r for r in table(slirpctl(d, "forward", "list").stdout) if r["RULE"] == rule]
    assert len(rows) == 1, rows
    assert (rows[0]["PROTO"], rows[0]["HOST"], rows[0]["TO"]) == ("tcp", f"127.0.0.1:{port}", "10.0.2.15:8080")

    assert slirpctl(d, "forward", "remove", f"tcp:127.0.0.1:{port}").stdout.strip() == f"removed {rule}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

    again = slirpctl(d, "forward", "remove", f"tcp:127.0.0.1:{port}", check=False)
    assert again.returncode == 1 and again.stdout == ""
    lines = again.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("slirpctl: ") and str(port) in lines[0], again.stderr
    # The fixed forward is untouched.
    assert retry_http_get(f"http://127.0.0.1:{net.fwd_port}/").strip() == f"hello from guest {MAC_A}"


def test_guests_leases_networks(net):
    d = net.daemon
    rows = [r for r in table(slirpctl(d, "guests").stdout) if r["MAC"] == MAC_A]
    assert len(rows) == 1, rows
    assert (rows[0]["NETWORK"], rows[0]["TRANSPORT"], rows[0]["IP"]) == ("default", "stream", "10.0.2.15")

    guests = json.loads(slirpctl(d, "--json", "guests").stdout)
    mine = [g for g in guests if MAC_A in g["macs"]]
    assert len(mine) == 1 and mine[0]["ips"] == ["10.0.2.15"] and mine[0]["transport"] == "stream", guests
    assert mine[0]["counters"]["rxFrames"] > 0 and mine[0]["counters"]["txFrames"] > 0
    assert mine[0]["peer"] == f"pid {net.guest.pid} uid {os.getuid()}"

    leases = [r for r in table(slirpctl(d, "leases").stdout) if r["MAC"] == MAC_A]
    assert len(leases) == 1 and leases[0]["IP"] == "10.0.2.15" and leases[0]["NETWORK"] == "default", leases

    nets = table(slirpctl(d, "networks").stdout)
    assert len(nets) == 1, nets
    assert (nets[0]["NAME"], nets[0]["NETWORK"], nets[0]["GATEWAY"], nets[0]["GUESTS"]) == \
        ("default", "10.0.2.0/24", "10.0.2.2", "1")
    assert nets[0]["ENDPOINTS"] == f"stream:{net.sock}"


def test_metrics_parse_as_prometheus_text(net):
    from prometheus_client.parser import text_string_to_metric_families

    status, body = control_get(net.daemon, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    default = (("network", "default"),)
    assert samples[("slirpd_guests", default)] == 1
    assert samples[("slirpd_rx_frames_total", default)] > 0
    guest_rx = [v for (name, labels), v in samples.items()
                if name == "slirpd_guest_rx_frames_total" and ("mac", MAC_A) in labels]
    assert len(guest_rx) == 1 and guest_rx[0] > 0, samples


# --- a second guest attached with `slirpctl qemu-args`, observed from before it starts ---

class ObservedBoot:
    """Boots one guest on the shared network from `slirpctl qemu-args` while a whole-network
    capture, a capture of that guest and an event stream run; stops them and the guest after."""

    def __init__(self, net: ControlNet):
        d, tmp = net.daemon, net.tmp
        self.attached_before = {m for g in json.loads(slirpctl(d, "--json", "guests").stdout) for m in g["macs"]}
        self.flags = slirpctl(d, "qemu-args").stdout.strip()
        argv = shlex.split(self.flags)
        assert len(argv) == 4 and argv[0] == "-netdev" and argv[2] == "-device", self.flags
        self.netdev = argv[1]
        # -device MODEL,netdev=n0,mac=MAC[,more]: Guest rebuilds exactly this from model and mac.
        m = re.fullmatch(r"([^,]+),netdev=n0,mac=([0-9a-f:]{17})((?:,.*)?)", argv[3])
        assert m, self.flags
        self.mac, model = m.group(2), m.group(1) + m.group(3)

        self.all_pcap, self.guest_pcap, self.events_path = tmp / "all.pcap", tmp / "guest.pcap", tmp / "events.ndjson"
        start = len(d.log)
        observers = [slirpctl_background(d, self.all_pcap, "capture"),
                     slirpctl_background(d, self.guest_pcap, "capture", "--guest", self.mac),
                     slirpctl_background(d, self.events_path, "--json", "events")]
        self.guest = None
        try:
            wait_for(lambda: len(re.findall(r"capture \d+ started", d.log[start:])) == 2, 10,
                     what="both captures to start")
            # The event stream is live once it shows a forward added after it started.
            self.sync_port = free_port()
            slirpctl(d, "forward", "add", f"tcp:127.0.0.1:{self.sync_port}-:9")
            wait_for(lambda: str(self.sync_port) in self.events_path.read_text(), 10, what="the event stream")
            slirpctl(d, "forward", "remove", f"tcp:127.0.0.1:{self.sync_port}")

            self.guest = Guest("b", self.netdev, self.mac, model=model, log_dir=tmp)
            self.guest.wait_ready()
            self.guests_while_attached = json.loads(slirpctl(d, "--json", "guests").stdout)
            # Unicast host traffic to guest A, which only the whole-network capture may show.
            assert retry_http_get(f"http://127.0.0.1:{net.fwd_port}/").strip() == f"hello from guest {MAC_A}"
            time.sleep(0.5)
        finally:
            self.observer_errors = [stop(p) for p in observers]
            if self.guest is not None:
                self.guest.stop()
        self.events = [json.loads(line) for line in self.events_path.read_text().splitlines()]


@pytest.fixture(scope="module")
def observed(net):
    return ObservedBoot(net)


def test_qemu_args_attach_a_guest_with_a_fresh_mac(net, observed):
    assert observed.guest.lease["ip"] == "10.0.2.16"
    assert observed.mac not in observed.attached_before and MAC_A in observed.attached_before
    macs = [g["macs"] for g in observed.guests_while_attached]
    assert sorted(m for ms in macs for m in ms) == sorted([MAC_A, observed.mac]), macs
    assert observed.netdev == stream_netdev(net.sock)


def tshark_fields(pcap: Path, display_filter: str, *fields: str) -> list[str]:
    """tshark -r pcap -Y filter -T fields -e ...; one string per packet."""
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (Scripts/test installs it)")
    res = subprocess.run(["tshark", "-r", str(pcap), "-Y", display_filter, "-T", "fields",
                          *[a for f in fields for a in ("-e", f)]], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"tshark -r {pcap} -Y {display_filter!r} failed:\n{res.stderr}"
    return res.stdout.splitlines()


def dhcp_proto() -> str:
    """'dhcp' (Wireshark 3.0+) or 'bootp' (older)."""
    res = subprocess.run(["tshark", "-G", "protocols"], capture_output=True, text=True, timeout=60)
    # Each line: name, short name, filter name, tab separated.
    return "dhcp" if re.search(r"\tdhcp$", res.stdout, re.M) else "bootp"


@pytest.mark.parametrize("which", ["all", "guest"])
def test_capture_shows_the_guests_dhcp_exchange(observed, which):
    pcap = observed.all_pcap if which == "all" else observed.guest_pcap
    assert all(err == "" for err in observed.observer_errors), observed.observer_errors
    assert len(tshark_fields(pcap, "frame", "frame.number")) > 0
    # libslirp sends OFFER and ACK from the gateway to broadcast, so select by the client
    # hardware address in the DHCP header (eth.addr would only match DISCOVER and REQUEST).
    p = dhcp_proto()
    kinds = tshark_fields(pcap, f"{p} && {p}.hw.mac_addr=={observed.mac}", f"{p}.option.dhcp")
    assert {"1", "2", "3", "5"} <= set(kinds), kinds  # DISCOVER, OFFER, REQUEST, ACK
    hello = tshark_fields(pcap, f"tcp.srcport==8080 && eth.src=={MAC_A} && http", "frame.number")
    if which == "all":
        assert hello, "the whole-network capture should show guest A's HTTP answer"
    else:
        # Only frames from or to this guest, or sent to a group address.
        stray = tshark_fields(pcap, f"!(eth.addr=={observed.mac}) && eth.dst.ig==0", "frame.number")
        assert hello == [] and stray == [], (hello, stray)


def test_events_show_the_guest_attaching_and_its_lease(net, observed):
    types = [e["type"] for e in observed.events]
    assert "forward-added" in types and "forward-removed" in types, types
    ids = [g["id"] for g in observed.guests_while_attached if observed.mac in g["macs"]]
    assert len(ids) == 1
    attached = [i for i, e in enumerate(observed.events) if e["type"] == "guest-attached" and e.get("guest") == ids[0]]
    leased = [i for i, e in enumerate(observed.events) if e["type"] == "lease-granted" and e.get("mac") == observed.mac]
    assert len(attached) == 1 and leased, observed.events
    e = observed.events[attached[0]]
    assert e["network"] == "default" and e["detail"] == f"stream:{net.sock}", e
    # The attach event comes before the guest has sent a frame, so it may not know the MAC yet.
    assert e.get("mac") in (None, observed.mac), e
    assert observed.events[leased[0]]["ip"] == "10.0.2.16" and attached[0] < leased[0], observed.events


# --- forwards that follow a guest by DHCP hostname or MAC --------------------

def test_forward_by_hostname_follows_the_guest(tmp_path, make_guest):
    sock = str(tmp_path / "h.sock")
    with Slirpd(["--stream", sock], tmp_path) as d:
        port = free_port()
        out = slirpctl(d, "forward", "add", "--guest", "web1", f"tcp:127.0.0.1:{port}-:8080").stdout
        assert "waiting for guest web1" in out, out
        [row] = [r for r in table(slirpctl(d, "forward", "list").stdout) if r["HOST"] == f"127.0.0.1:{port}"]
        assert (row["GUEST"], row["TO"]) == ("web1", "(no lease yet)")

        a = make_guest("a", stream_netdev(sock), MAC_W1, append="slirpd.hostname=web1")
        a.wait_ready()
        assert retry_http_get(f"http://127.0.0.1:{port}/").strip() == f"hello from guest {MAC_W1}"
        leases = {r["MAC"]: r for r in table(slirpctl(d, "leases").stdout)}
        assert leases[MAC_W1]["HOSTNAME"] == "web1" and leases[MAC_W1]["IP"] == a.lease["ip"]

        start = len(d.log)
        a.stop()
        d.wait_log("detached", start=start)
        b = make_guest("b", stream_netdev(sock), MAC_W2, append="slirpd.hostname=web1")
        b.wait_ready()
        # libslirp keeps A's lease, so B gets the next address and the forward must move.
        assert (a.lease["ip"], b.lease["ip"]) == ("10.0.2.15", "10.0.2.16")
        assert retry_http_get(f"http://127.0.0.1:{port}/").strip() == f"hello from guest {MAC_W2}"
        [row] = [r for r in table(slirpctl(d, "forward", "list").stdout) if r["HOST"] == f"127.0.0.1:{port}"]
        assert row["TO"] == "10.0.2.16:8080", row

        # By MAC, for a guest that already has its lease.
        by_mac = free_port()
        out = slirpctl(d, "forward", "add", "--guest", MAC_W2, f"tcp:127.0.0.1:{by_mac}-:8080").stdout
        assert out.strip() == f"added tcp:127.0.0.1:{by_mac}-10.0.2.16:8080", out
        assert retry_http_get(f"http://127.0.0.1:{by_mac}/").strip() == f"hello from guest {MAC_W2}"

        # By hostname once two leases carry it: the guest that holds it now, not the one gone.
        late = free_port()
        out = slirpctl(d, "forward", "add", "--guest", "web1", f"tcp:127.0.0.1:{late}-:8080").stdout
        # The departed guest's lease for the same name must not win.
        assert out.strip() == f"added tcp:127.0.0.1:{late}-10.0.2.16:8080", out
        assert retry_http_get(f"http://127.0.0.1:{late}/").strip() == f"hello from guest {MAC_W2}"


# --- who may use the API ------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run curl as uid 65534")
def test_control_api_refuses_uids_not_on_the_allow_list():
    # uid 65534 must reach the socket: a fresh 0755 directory (pytest's tmp is 0700).
    base = Path(tempfile.mkdtemp(prefix="slirpd-ctl-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        for allow in (False, True):
            name = "allow" if allow else "deny"
            args = ["--control-mode", "0666", "--stream", str(base / f"{name}.sock")]
            with Slirpd(args + (["--allow-uid", "65534"] if allow else []), base, name=name) as d:
                assert os.stat(d.control).st_mode & 0o777 == 0o666
                start = len(d.log)
                status, body = control_get(d, "/v1/networks", user=65534)
                if allow:
                    assert status == 200 and [n["name"] for n in json.loads(body)] == ["default"], body
                else:
                    assert status == 403, body
                    assert "uid 65534" in json.loads(body)["error"], body
                    d.wait_log("refused a control API connection from pid", start=start)
                # The daemon's own user is always allowed.
                assert control_get(d, "/v1/networks")[0] == 200
    finally:
        shutil.rmtree(base, ignore_errors=True)
