"""slirpd's own TFTP server (tftp=), from a network namespace on a tap: busybox's tftp
and curl fetch multi-MB files whole; a client that drops one DATA block and re-ACKs the
one before gets the missing block, never the next, across the block-number wrap of a
40 MiB file at 512-byte blocks; escapes from the root get ERROR packets (issue 23).
Traffic stays inside the namespace and the virtual network.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from daemon import Slirpd, dgram_netdev, metric, stream_netdev
from netns import BUSYBOX, Namespaces

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tftp_net(tmp_path):
    root = tmp_path / "tftp"
    (root / "boot").mkdir(parents=True)
    (root / "boot" / "kernel.img").write_bytes(os.urandom(6 * 1024 * 1024 + 123))
    (root / "big.img").write_bytes(os.urandom(40 * 1024 * 1024))
    (tmp_path / "outside.txt").write_text("not for guests\n")
    (root / "abs-link").symlink_to("/etc/passwd")
    (root / "rel-link").symlink_to("../outside.txt")
    (root / "inside-link").symlink_to("boot/kernel.img")
    with Namespaces(1, tmp_path) as nss, Slirpd([*nss.tap_args, "-o", f"tftp={root}"], tmp_path) as d:
        d.wait_log(f"attached on tap:{nss.tap(0)}")
        nss.move()
        assert nss.dhcp([0])[0]["ip"] == "10.0.2.15"
        yield nss, d, root, tmp_path


def client(nss, *args, timeout=150):
    r = nss.exec(0, sys.executable, str(HERE / "tftpclient.py"), *args, timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_busybox_and_curl_fetch_whole_files(tftp_net):
    nss, d, root, tmp = tftp_net
    want = sha256(root / "boot" / "kernel.img")
    out = tmp / "bb.img"
    nss.exec(0, BUSYBOX, "tftp", "-g", "-r", "boot/kernel.img", "-l", str(out), "10.0.2.2", timeout=120)
    assert sha256(out) == want
    out2 = tmp / "bb1468.img"
    nss.exec(0, BUSYBOX, "tftp", "-g", "-b", "1468", "-r", "/boot/kernel.img", "-l", str(out2), "10.0.2.2", timeout=120)
    assert sha256(out2) == want
    out3 = tmp / "curl.img"
    nss.exec(0, "curl", "-sS", "--max-time", "120", "--tftp-blksize", "1468", "-o", str(out3),
             "tftp://10.0.2.2/inside-link", timeout=130)
    assert sha256(out3) == want
    # Our own client with a window of 16 blocks of 1468 bytes.
    r = client(nss, "get", "10.0.2.2", "boot/kernel.img", str(tmp / "win.img"), "--blksize", "1468", "--windowsize", "16")
    assert r.get("sha256") == want, r
    assert metric(d, "slirpd_tftp_bytes_total") >= 4 * (6 * 1024 * 1024 + 123)
    assert metric(d, "slirpd_tftp_sessions") == 0
    d.wait_log("TFTP: port 1 fetched inside-link (6291579 bytes)")


def test_a_dropped_block_is_resent_never_the_next_across_the_wrap(tftp_net):
    nss, d, root, tmp = tftp_net
    # Drop block 70000, past the wrap at 65536 (its wire number is 4464).
    r = client(nss, "get", "10.0.2.2", "big.img", str(tmp / "big.out"), "--drop", "70000")
    assert "error" not in r and not r.get("timeout"), r
    assert r["sha256"] == sha256(root / "big.img"), r
    assert r["blocks"] == 40 * 1024 * 1024 // 512 + 1
    # What came after the drop: block 70000 again (4464), never 70001 (4465) first.
    assert r["after_drop"][0] == 70000 & 0xFFFF, r
    assert metric(d, "slirpd_tftp_retransmissions_total") >= 1


def test_escapes_get_error_packets(tftp_net):
    nss, d, root, tmp = tftp_net
    for name, code in [("../outside.txt", 2), ("boot/../../outside.txt", 2), ("abs-link", 2), ("rel-link", 2),
                       ("/etc/passwd", 1), ("missing", 1), ("boot", 2)]:
        r = client(nss, "error", "10.0.2.2", name, timeout=20)
        assert (r["op"], r["code"]) == (5, code), (name, r)
    assert metric(d, "slirpd_tftp_errors_total") == 7
    d.wait_log("asked for 'rel-link': error 2, Access violation")


@pytest.mark.parametrize("transport,model", [("stream", "e1000"), ("dgram", "virtio-net-pci")])
def test_qemu_guest_fetches_with_busybox_tftp(tmp_path, e2e_dir, make_guest, transport, model):
    """A real guest (TCG) fetches 6 MB with busybox's tftp at 512 and 1468-byte blocks."""
    root = tmp_path / "tftp"
    root.mkdir()
    data = os.urandom(6 * 1024 * 1024 + 777)
    (root / "kernel.img").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    sock, remote, local = e2e_dir / "t.sock", e2e_dir / "d.sock", e2e_dir / "q.sock"
    endpoint = ["--stream", str(sock)] if transport == "stream" else ["--dgram", str(remote)]
    with Slirpd([*endpoint, "-o", f"tftp={root}"], tmp_path) as d:
        netdev = stream_netdev(str(sock)) if transport == "stream" else dgram_netdev(str(local), str(remote))
        g = make_guest("t", netdev, "52:54:00:7f:00:01", model=model)
        g.wait_ready()
        for blocks in ("", "-b 1468 "):
            rc, out = g.run(f"rm -f /tmp/k; tftp -g {blocks}-r kernel.img -l /tmp/k 10.0.2.2 && sha256sum /tmp/k", timeout=180)
            assert rc == 0 and want in out, (blocks, out)
        assert metric(d, "slirpd_tftp_bytes_total") >= 2 * len(data)
