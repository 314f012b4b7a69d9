"""End-to-end: network boot with Debian's firmware through slirpd, over stream and dgram
(issue 23), as a firmware developer does it every day:

- U-Boot x86_64 (e1000): `dhcp`, then `tftpboot` of 50 MiB from slirpd's own TFTP server,
  `crc32` equal to the host's; once with U-Boot's defaults (1468-byte blocks, one per ACK)
  and once with `tftpblocksize 1468` + `tftpwindowsize 16` (on stream an expected failure,
  QEMU's; see STREAM_E1000_WINDOW), and the window once more on virtio-net; on
  virtio-net over slirpd's vhost-user endpoint: defaults, window 16, then window 64.
- OVMF (virtio-net, OVMF's own network stack): PXE over IPv4 (TFTP) of GRUB's EFI image
  (also over vhost-user), and UEFI HTTP boot over IPv4 of the same (DHCP answers option 60
  HTTPClient); GRUB's embedded config prints a marker on the serial console.
- iPXE (QEMU's BIOS ROM for e1000): DHCP, then an iPXE script (the DHCP boot file, over
  HTTP) fetches 50 MiB; imgstat must report every byte. The same with iPXE's virtio-net
  driver over vhost-user.

Firmware under TCG is slow: bounds are generous; they are bounds, not speed goals
(those are in Scripts/bench). Traffic goes only to 127.0.0.1 (10.0.2.2 in the guests).
"""

import os
import shlex
import shutil
from pathlib import Path

import pytest

from daemon import Slirpd, dgram_netdev, slirpctl, stream_netdev
from firmware import (MEMORY_MB, DirHTTPServer, crc32_hex, grub_efi, ipxe_http, ipxe_script, ovmf,
                      uboot, uboot_tftp)

pytestmark = pytest.mark.e2e

BIG = 50 * 1024 * 1024
MARKER = "FW-MARKER-grub-ran-5c1f"


def _need(*paths):
    missing = [p for p in paths if not (Path(p).exists() or shutil.which(p))]
    if missing:
        # Scripts/test installs them; a run without them must fail, not skip.
        raise AssertionError(f"missing (Scripts/test installs them): {missing}")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fwroot")
    big = root / "big.img"
    with open(big, "wb") as f:
        f.write(os.urandom(BIG))
    _need("grub-mkstandalone")
    grub_efi(root / "grub.efi", MARKER)
    return root


def network(kind, tmp_path, opts):
    """(slirpd args, netdev) for one guest over `kind`; vhost-user has no netdev: the NIC
    comes with nic_flags() once the daemon runs."""
    if kind == "vhost-user":
        return ["-o", opts, "--vhost-user", str(tmp_path / "n.vu")], None
    if kind == "stream":
        sock = str(tmp_path / "n.sock")
        return ["-o", opts, "--stream", sock], stream_netdev(sock)
    srv = str(tmp_path / "n.dgram")
    return ["-o", opts, "--dgram", srv], dgram_netdev(str(tmp_path / "g.dgram"), srv)


def nic_flags(d, netdev):
    """Without a netdev (vhost-user): the NIC and RAM flags `slirpctl qemu-args --transport
    vhost-user` prints for daemon d, as a user would paste them."""
    if netdev is not None:
        return ()
    return tuple(shlex.split(slirpctl(d, "qemu-args", "--transport", "vhost-user",
                                      "--memory", f"{MEMORY_MB}M").stdout))


def _uboot_fetch(files, tmp_path, kind, model, *settings):
    """U-Boot's `tftpboot` of big.img once per (blocksize, windowsize) in `settings`
    (None: U-Boot's own), then a file that is not there."""
    _need("/usr/lib/u-boot/qemu-x86_64/u-boot.rom")
    args, netdev = network(kind, tmp_path, f"tftp={files}")
    want = crc32_hex(files / "big.img")
    with Slirpd(args, tmp_path) as d:
        with uboot("uboot", netdev, tmp_path, model=model, extra=nic_flags(d, netdev)) as fw:
            for blocksize, windowsize in settings or [(None, None)]:
                size, crc, took = uboot_tftp(fw, "big.img", blocksize, windowsize, timeout=600)
                print(f"\n[firmware] U-Boot {model} {kind} blksize {blocksize or 'default'} "
                      f"window {windowsize or 'default'}: 50 MiB in {took:.1f} s")
                assert (size, crc) == (BIG, want)
            # A file that is not there: U-Boot reports the server's ERROR.
            at = fw.mark()
            fw.type("tftpboot 1000000 no-such-file")
            fw.wait(r"TFTP error: '[^']*' \(1\)", 60, at)
        d.wait_log("fetched big.img (52428800 bytes)", timeout=10)
        assert d.alive()


@pytest.mark.parametrize("kind", ["stream", "dgram"])
def test_uboot_dhcp_and_tftpboot_50_mib(files, tmp_path, kind):
    """U-Boot's defaults: 1468-byte blocks (CONFIG_TFTP_BLOCKSIZE), one per ACK."""
    _uboot_fetch(files, tmp_path, kind, "e1000")


# QEMU 7.2's e1000 under U-Boot: U-Boot hands the NIC one receive buffer at a time, and
# when the guest refills it QEMU's queue flush delivers every queued frame without asking
# the NIC whether it can take it; all but the first are dropped (e1000_receive_iov returns
# -1 on overrun). The stream netdev reads a whole window in one read and queues it all, so
# every window loses all but a block or two and U-Boot gives up. The dgram netdev reads
# one datagram and stops until it is delivered, so it gets through.
STREAM_E1000_WINDOW = pytest.mark.xfail(strict=True, reason="QEMU 7.2 e1000 + stream netdev drop the "
                                        "frames of a TFTP window behind U-Boot's one-buffer receive ring")


@pytest.mark.parametrize("kind", [pytest.param("stream", marks=STREAM_E1000_WINDOW), "dgram"])
def test_uboot_tftpboot_50_mib_with_blocksize_and_window(files, tmp_path, kind):
    _uboot_fetch(files, tmp_path, kind, "e1000", (1468, 16))


@pytest.mark.parametrize("kind", ["stream", "dgram"])
def test_uboot_virtio_tftpboot_50_mib_with_blocksize_and_window(files, tmp_path, kind):
    """virtio-net queues what its ring cannot take, so windows arrive whole on both transports."""
    _uboot_fetch(files, tmp_path, kind, "virtio-net-pci", (1468, 16))


def test_uboot_virtio_tftpboot_50_mib_over_vhost_user(files, tmp_path):
    """virtio firmware on slirpd's vhost-user endpoint: slirpd writes U-Boot's receive ring
    itself, so no QEMU socket hop sits between an ACK and the next block (the fastest
    network boot, see BENCHMARKS.md). Defaults, blksize 1468 + window 16, then window 64:
    twice U-Boot's 32 receive buffers, which it posts again without a kick, so the frames
    that wait for them get there only because slirpd looks at the ring again by itself."""
    _uboot_fetch(files, tmp_path, "vhost-user", "virtio-net-pci", (None, None), (1468, 16), (1468, 64))


@pytest.mark.parametrize("kind", ["stream", "dgram", "vhost-user"])
def test_ovmf_pxe_boots_grub(files, tmp_path, kind):
    _need("/usr/share/ovmf/OVMF.fd")
    args, netdev = network(kind, tmp_path, f"tftp={files},bootfile=grub.efi")
    with Slirpd(args, tmp_path) as d:
        with ovmf("ovmf-pxe", netdev, tmp_path, flags=nic_flags(d, netdev)) as fw:
            fw.wait(r"Start PXE over IPv4", 120)
            fw.wait(r"NBP filename is grub\.efi", 60)
            fw.wait(r"NBP file downloaded successfully", 60)
            fw.wait(MARKER, 60)
        assert d.alive()


@pytest.mark.parametrize("kind", ["stream", "dgram"])
def test_ovmf_http_boot_boots_grub(files, tmp_path, kind):
    _need("/usr/share/ovmf/OVMF.fd")
    with DirHTTPServer(files) as http:
        url = http.url("grub.efi")
        args, netdev = network(kind, tmp_path, f"bootfile={url}")
        with Slirpd(args, tmp_path) as d:
            with ovmf("ovmf-http", netdev, tmp_path, pxe=False) as fw:
                # HTTP boot over IPv4 needs option 60 HTTPClient in the OFFER.
                fw.wait(r"Start HTTP Boot over IPv4", 180)
                fw.wait(r"URI: " + url.replace(".", r"\."), 60)
                fw.wait(MARKER, 120)
            assert d.alive()
        assert ("GET", "/grub.efi", 200) in http.requests


@pytest.mark.parametrize("kind", ["stream", "dgram"])
def test_ipxe_dhcp_and_http_50_mib(files, tmp_path, kind):
    _need("/usr/lib/ipxe/qemu/pxe-e1000.rom")
    with DirHTTPServer(files) as http:
        ipxe_script(files / f"boot-{kind}.ipxe", http.url("big.img"))
        args, netdev = network(kind, tmp_path, f"bootfile={http.url(f'boot-{kind}.ipxe')}")
        with Slirpd(args, tmp_path) as d:
            fw, size, took = ipxe_http("ipxe", netdev, "e1000", tmp_path)
            fw.stop()
            print(f"\n[firmware] iPXE e1000 {kind}: 50 MiB over HTTP in {took:.1f} s")
            assert size == BIG
            assert d.alive()
        assert ("GET", "/big.img", 200) in http.requests


def test_ipxe_virtio_http_50_mib_over_vhost_user(files, tmp_path):
    """iPXE's virtio-net driver (QEMU's ROM for virtio-net-pci) on the vhost-user endpoint."""
    _need("/usr/lib/ipxe/qemu/efi-virtio.rom")
    with DirHTTPServer(files) as http:
        ipxe_script(files / "boot-vhost-user.ipxe", http.url("big.img"))
        args, netdev = network("vhost-user", tmp_path, f"bootfile={http.url('boot-vhost-user.ipxe')}")
        with Slirpd(args, tmp_path) as d:
            fw, size, took = ipxe_http("ipxe", netdev, "virtio-net-pci", tmp_path, flags=nic_flags(d, netdev))
            fw.stop()
            print(f"\n[firmware] iPXE virtio-net vhost-user: 50 MiB over HTTP in {took:.1f} s")
            assert size == BIG
            assert d.alive()
        assert ("GET", "/big.img", 200) in http.requests
