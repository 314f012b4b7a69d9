"""End-to-end: `slirpctl qemu-args --zephyr`, the flags a Zephyr build takes in
QEMU_EXTRA_FLAGS or CONFIG_QEMU_EXTRA_FLAGS.

There is no Zephyr SDK here, so the printed flags go verbatim onto the test Linux
guest's QEMU command line with qemu_x86's NIC, e1000 (the guest image loads its
driver). Two invocations attach two instances to one network that reach each other,
as a Zephyr echo_server and echo_client would; QEMU's per-instance -netdev user cannot.
Host traffic goes to 127.0.0.1 only.
"""

import ipaddress
import json
import re
import shlex
import subprocess

import pytest

from daemon import Slirpd, dgram_netdev, slirpctl, stream_netdev
from guest import Guest, HostHTTPServer

pytestmark = pytest.mark.e2e


def zephyr_flags(d: Slirpd, *args: str) -> tuple[str, str]:
    """Runs `slirpctl qemu-args --zephyr ARGS`; returns (its output, the flags a shell
    gets from it). Checks that the export line, the west build form and shlex agree."""
    out = slirpctl(d, "qemu-args", "--zephyr", *args).stdout
    res = subprocess.run(["bash", "-c", 'eval "$1" && printf %s "$QEMU_EXTRA_FLAGS"', "_", out],
                         capture_output=True, text=True, timeout=10)
    assert res.returncode == 0 and res.stderr == "", res
    flags = res.stdout
    exports = [line for line in out.splitlines() if not line.startswith("#")]
    assert exports == [f'export QEMU_EXTRA_FLAGS="{flags}"'], out
    assert shlex.split(exports[0]) == ["export", f"QEMU_EXTRA_FLAGS={flags}"]
    # The commented west build line, as the shell splits it: the Kconfig string is one argument.
    west = [line[1:] for line in out.splitlines() if line.startswith("#   west build ")]
    assert len(west) == 1, out
    res = subprocess.run(["bash", "-c", 'eval "set -- $1" && printf "%s\\0" "$@"', "_", west[0]],
                         capture_output=True, text=True, timeout=10)
    argv = res.stdout.split("\0")[:-1]
    assert argv[:2] == ["west", "build"] and argv[-2:] == ["--", f'-DCONFIG_QEMU_EXTRA_FLAGS="{flags}"'], argv
    return out, flags


def flags_mac(flags: str) -> str:
    macs = re.findall(r",(?:mac|macaddr)=([0-9a-f:]{17})\b", flags)
    assert len(macs) == 1, flags
    return macs[0]


def attached_macs(d: Slirpd) -> set[str]:
    return {m for g in json.loads(slirpctl(d, "--json", "guests").stdout) for m in g["macs"]}


def boot(d: Slirpd, name: str, log_dir) -> Guest:
    """A guest whose only network flags are those of one `qemu-args --zephyr --board qemu_x86`."""
    _, flags = zephyr_flags(d, "--board", "qemu_x86")
    return Guest(name, None, flags_mac(flags), extra_args=shlex.split(flags), log_dir=log_dir)


class ZephyrNet:
    """slirpd on a stream socket, a host HTTP server, and a first guest booted from the flags."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.sock = str(tmp / "net.sock")
        self.host_http = HostHTTPServer()
        self.daemon = Slirpd(["--stream", self.sock], tmp)
        self.a = boot(self.daemon, "a", tmp)

    def close(self):
        self.a.stop()
        self.daemon.stop()
        self.host_http.stop()


@pytest.fixture(scope="module")
def zephyr_net(tmp_path_factory):
    net = ZephyrNet(tmp_path_factory.mktemp("zephyr"))
    try:
        net.a.wait_ready()
        yield net
    finally:
        net.close()


def test_flags_verbatim_on_e1000_guest_lease_and_reach_the_host(zephyr_net):
    a = zephyr_net.a
    assert a.argv[a.argv.index("-netdev"):] == \
        ["-netdev", stream_netdev(zephyr_net.sock), "-device", f"e1000,netdev=n0,mac={a.mac}"]
    assert ipaddress.ip_address(a.lease["ip"]) in ipaddress.ip_network("10.0.2.0/24")
    assert (a.lease["router"], a.lease["dns"]) == ("10.0.2.2", "10.0.2.3")
    assert a.check(f"wget -q -O - {zephyr_net.host_http.url('10.0.2.2')}").strip() == \
        zephyr_net.host_http.body.decode()
    assert attached_macs(zephyr_net.daemon) == {a.mac}


def test_second_instance_gets_its_own_mac_and_reaches_the_first(zephyr_net, make_guest):
    """Like echo_server and echo_client: each instance from its own invocation, each
    serving and each reaching the other at its leased address."""
    d, a = zephyr_net.daemon, zephyr_net.a
    _, flags = zephyr_flags(d, "--board", "qemu_x86/atom")
    mac = flags_mac(flags)
    assert mac != a.mac
    b = make_guest("b", None, mac, extra_args=shlex.split(flags))
    b.wait_ready()
    assert b.lease["ip"] != a.lease["ip"]
    assert ipaddress.ip_address(b.lease["ip"]) in ipaddress.ip_network("10.0.2.0/24")
    assert a.check(f"wget -q -O - http://{b.lease['ip']}:8080/").strip() == f"hello from guest {b.mac}"
    assert b.check(f"wget -q -O - http://{a.lease['ip']}:8080/").strip() == f"hello from guest {a.mac}"
    assert attached_macs(d) == {a.mac, b.mac}
    # The samples' own static addresses (echo_server 192.0.2.1, echo_client 192.0.2.2), outside
    # the NAT's network: frames between the two still go straight through slirpd's switch.
    b.check("ip addr add 192.0.2.1/24 dev eth0")
    a.check("ip addr add 192.0.2.2/24 dev eth0")
    assert a.check("wget -q -O - http://192.0.2.1:8080/").strip() == f"hello from guest {b.mac}"


# --- the printed text only (no ARM guest here) ---------------------------------

@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zephyr_text")
    with Slirpd(["--stream", str(tmp / "net.sock"), "--dgram", str(tmp / "net.dgram")], tmp) as d:
        d.tmp = tmp
        yield d


@pytest.mark.parametrize("args,model", [
    (("--board", "mps2/an385"), "lan9118"),
    (("--board", "mps2_an385"), "lan9118"),
    (("--board", "qemu_cortex_m3"), "stellaris"),
    (("--model", "lan9118"), "lan9118"),
    (("--board", "qemu_x86", "--model", "stellaris"), "stellaris"),
])
def test_on_board_nic_uses_net_nic(bare, args, model):
    out, flags = zephyr_flags(bare, *args)
    mac = flags_mac(flags)
    assert shlex.split(flags) == ["-netdev", stream_netdev(str(bare.tmp / "net.sock")),
                                  "-net", f"nic,model={model},netdev=n0,macaddr={mac}"]
    assert f"NIC {model} (on-board NIC, -net nic)" in out


@pytest.mark.parametrize("board,model", [("qemu_x86", "e1000"), ("qemu_cortex_a53", "e1000")])
def test_pci_nic_uses_device_over_dgram(bare, board, model):
    out, flags = zephyr_flags(bare, "--board", board, "--transport", "dgram")
    mac = flags_mac(flags)
    local = str(bare.tmp / f"guest-{mac.replace(':', '')}.sock")
    assert shlex.split(flags) == ["-netdev", dgram_netdev(local, str(bare.tmp / "net.dgram")),
                                  "-device", f"{model},netdev=n0,mac={mac}"]
    assert f"west build -b {board} APP" in out


def test_every_invocation_a_new_mac(bare):
    macs = [flags_mac(zephyr_flags(bare, "--board", "qemu_x86")[1]) for _ in range(5)]
    assert len(set(macs)) == 5, macs


def test_plain_qemu_args_unchanged(bare):
    argv = shlex.split(slirpctl(bare, "qemu-args").stdout)
    assert argv[:3] == ["-netdev", stream_netdev(str(bare.tmp / "net.sock")), "-device"]
    assert re.fullmatch(r"virtio-net-pci,netdev=n0,mac=52:54:00(:[0-9a-f]{2}){3}", argv[3]), argv


def test_unknown_board_lists_the_known_ones(bare):
    res = slirpctl(bare, "qemu-args", "--zephyr", "--board", "qemu_riscv32", check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "slirpctl: unknown Zephyr board qemu_riscv32: give its NIC with --model (e1000, lan9118, stellaris, ...) "
        "or use one of qemu_x86, qemu_cortex_a53, mps2/an385, mps2_an385, qemu_cortex_m3"]


def test_socket_path_with_a_space_is_refused(tmp_path):
    sock = tmp_path / "my net.sock"
    with Slirpd(["--stream", str(sock)], tmp_path) as d:
        res = slirpctl(d, "qemu-args", "--zephyr", "--board", "qemu_x86", check=False)
        assert res.returncode == 1 and res.stdout == ""
        assert len(res.stderr.splitlines()) == 1 and "contains a space" in res.stderr, res.stderr
        # Plain qemu-args, for a QEMU command line typed by hand, still answers.
        assert slirpctl(d, "qemu-args").stdout.startswith(f"-netdev {stream_netdev(str(sock))} ")
