"""Network boot as firmware does it, for the e2e tests (test_firmware.py) and Scripts/bench:
Debian's U-Boot (x86_64 ROM), OVMF and iPXE (QEMU's BIOS option ROMs) under TCG, driven
over their serial console.

- Firmware: one QEMU with a firmware and a NIC; captures the serial console (escape
  sequences and \\r stripped), waits for text, types commands.
- DirHTTPServer: a directory over HTTP/1.1 on 127.0.0.1 (10.0.2.2 in the guests).
- uboot_tftp / ipxe_http: one download each, returning what the firmware reports and how
  long it took on the host's clock (firmware clocks under TCG are not to be trusted).
- grub_efi: GRUB's EFI image with an embedded config that prints a marker.

Traffic goes only to the gateway 10.0.2.2 (the host's 127.0.0.1).
"""

from __future__ import annotations

import http.server
import re
import shlex
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Optional

from guest import QEMU

UBOOT_ROM = "/usr/lib/u-boot/qemu-x86_64/u-boot.rom"
OVMF = "/usr/share/ovmf/OVMF.fd"
GRUB_EFI_MODULES = "/usr/lib/grub/x86_64-efi"
# U-Boot loads at 0x1000000; 50 MiB then ends at 0x4200000, below U-Boot itself in 256 MiB.
UBOOT_LOAD = 0x1000000
MEMORY_MB = 256

_ANSI = re.compile(rb"\x1b\[[0-9;=?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def crc32_hex(path: Path) -> str:
    """The CRC-32 U-Boot's `crc32` prints (8 lowercase hex digits)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


class Firmware:
    """QEMU running a firmware with one NIC on `netdev` (which must define id=n0).
    `bios` is the -bios image (None: SeaBIOS); `device` the -device value without netdev=.
    With netdev None, `extra` brings the NIC and RAM too: the flags `slirpctl qemu-args`
    prints (vhost-user: -m, a shared memory backend, the chardev, -netdev and -device)."""

    def __init__(self, name: str, netdev: Optional[str], device: str, log_dir: Path,
                 bios: Optional[str] = None, extra: tuple = ()):
        self.name = name
        nic = ("-netdev", netdev, "-device", f"{device},netdev=n0") if netdev else ()
        memory = () if "-m" in extra else ("-m", str(MEMORY_MB))
        self.argv = [QEMU, "-accel", "tcg", *memory, "-display", "none",
                     "-nodefaults", "-no-reboot", "-serial", "stdio", "-monitor", "none",
                     *(("-bios", bios) if bios else ()), *nic, *extra]
        self._cond = threading.Condition()
        self._text = ""
        self.log_path = Path(log_dir) / f"{name}.console.log"
        self._log = open(self.log_path, "w", encoding="utf-8", errors="replace")
        self._log.write("# " + shlex.join(self.argv) + "\n")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0)
        self._thread = threading.Thread(target=self._pump, name=f"{name}-console", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            data = self.proc.stdout.read(4096)
            if not data:
                break
            text = _ANSI.sub(b"", data).decode("utf-8", "replace")
            with self._cond:
                self._text += text
                self._log.write(text)
                self._log.flush()
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return self._text

    def mark(self) -> int:
        """An offset into the console for wait(start=)."""
        return len(self.text)

    def wait(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """Waits for the regex `pattern` on the console after offset `start`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._text, start)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    why = "QEMU exited" if self.proc.poll() is not None else f"{timeout:.0f} s passed"
                    raise AssertionError(f"{self.name}: no /{pattern}/ on the console ({why}); "
                                         f"console tail:\n{self._text[-3000:]}")
                self._cond.wait(min(left, 0.5))

    def type(self, line: str) -> None:
        """Types a command line (firmware consoles take \\r as Enter)."""
        self.proc.stdin.write(line.encode() + b"\r")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        with self._cond:
            self._log.close()

    def __enter__(self) -> "Firmware":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class DirHTTPServer:
    """Serves `root` over HTTP/1.1 (keep-alive, Content-Length) on 127.0.0.1, a random port.
    .requests lists (method, path, status)."""

    def __init__(self, root: Path):
        self.requests: list[tuple[str, str, int]] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_request(self, code="-", size="-"):
                outer.requests.append((self.command, self.path, int(code) if str(code).isdigit() else 0))

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="dir-http", daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://10.0.2.2:{self.port}/{path.lstrip('/')}"

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> "DirHTTPServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- U-Boot -----------------------------------------------------------------------------

def uboot(name: str, netdev: Optional[str], log_dir: Path, model: str = "e1000", extra: tuple = ()) -> Firmware:
    """U-Boot x86_64 at its prompt, autoboot stopped, DHCP done (asserted: bound to
    10.0.2.15, server 10.0.2.2). netdev None: `extra` holds the NIC's flags (see Firmware)."""
    fw = Firmware(name, netdev, model, log_dir, bios=UBOOT_ROM, extra=extra)
    try:
        fw.wait(r"Hit any key to stop autoboot", 120)
        fw.type("")
        fw.wait(r"=> ", 30)
        if model.startswith("virtio"):
            fw.type("virtio scan")     # U-Boot probes virtio devices only when asked
        at = fw.mark()
        # autoload=no: dhcp alone, without its TFTP of the boot file.
        fw.type("setenv autoload no; dhcp; echo UB-SERVER=${serverip}")
        fw.wait(r"DHCP client bound to address 10\.0\.2\.15", 60, at)
        fw.wait(r"\nUB-SERVER=10\.0\.2\.2\n", 30, at)
    except BaseException:
        fw.stop()
        raise
    return fw


def uboot_tftp(fw: Firmware, filename: str, blocksize: Optional[int] = None,
               windowsize: Optional[int] = None, timeout: float = 300) -> tuple[int, str, float]:
    """`tftpboot` of `filename` (then `crc32` of what arrived); returns (bytes, crc32, seconds).
    Without blocksize/windowsize U-Boot's defaults (1468-byte blocks, one per ACK) apply."""
    fw.type(f"setenv tftpblocksize {blocksize or ''}; setenv tftpwindowsize {windowsize or ''}")
    at = fw.mark()
    fw.type(f"tftpboot {UBOOT_LOAD:x} {filename} && crc32 {UBOOT_LOAD:x} ${{filesize}}; echo UB-DONE")
    fw.wait(r"Load address", 60, at)
    t0 = time.monotonic()
    done = fw.wait(r"Bytes transferred = (\d+) \(|TFTP error|Retry count exceeded|\nUB-DONE", timeout, at)
    took = time.monotonic() - t0
    if not done.group(1):
        raise AssertionError(f"tftpboot failed: {fw.text[at:][-2000:]}")
    size = int(done.group(1))
    crc = fw.wait(r"==> ([0-9a-f]{8})", 120, at).group(1)
    fw.wait(r"\nUB-DONE", 30, at)
    return size, crc, took


# --- iPXE -------------------------------------------------------------------------------

def sercon_file(log_dir: Path) -> Path:
    """SeaBIOS's serial console port (0x3f8, a little-endian u16): SeaBIOS and the iPXE
    option ROM then print on -serial, with no VGA."""
    p = Path(log_dir) / "sercon-port.bin"
    p.write_bytes((0x3F8).to_bytes(2, "little"))
    return p


def ipxe_script(path: Path, url: str) -> None:
    """An iPXE script that fetches `url` and prints the image's size (imgstat): iPXE 1.0.0
    of 2019 has no digest commands, so a short or failed download is what can be seen."""
    path.write_text("#!ipxe\necho IPXE-SCRIPT\n"
                    f"imgfetch --name big {url} || goto failed\n"
                    "imgstat\necho IPXE-FETCHED\nexit\n"
                    ":failed\necho IPXE-FAILED\n")


def ipxe_http(name: str, netdev: Optional[str], model: str, log_dir: Path, timeout: float = 300,
              flags: tuple = ()) -> tuple[Firmware, int, float]:
    """SeaBIOS network-boots the NIC's iPXE ROM (-boot n), which runs DHCP, chains the
    script that is the DHCP boot file (see ipxe_script) and fetches the image. netdev None:
    `flags` bring the NIC (see Firmware).
    Returns (firmware, image size reported by imgstat, seconds for the fetch); the caller
    stops the firmware."""
    fw = Firmware(name, netdev, model, log_dir,
                  extra=(*flags, "-boot", "n", "-fw_cfg", f"name=etc/sercon-port,file={sercon_file(log_dir)}"))
    try:
        fw.wait(r"Configuring \(net0 [0-9a-f:]+\)[. ]*ok", 180)
        fw.wait(r"net0: 10\.0\.2\.15/255\.255\.255\.0 gw 10\.0\.2\.2", 30)
        fw.wait(r"\nIPXE-SCRIPT\n", 120)
        at = fw.mark()
        t0 = time.monotonic()
        end = fw.wait(r"\nIPXE-(FETCHED|FAILED)\n", timeout, at)
        took = time.monotonic() - t0
        if end.group(1) != "FETCHED":
            raise AssertionError(f"iPXE fetch failed: {fw.text[at:][-2000:]}")
        size = int(fw.wait(r"big : (\d+) bytes", 10, at).group(1))
    except BaseException:
        fw.stop()
        raise
    return fw, size, took


# --- OVMF + GRUB ------------------------------------------------------------------------

def grub_efi(out: Path, marker: str) -> Path:
    """GRUB's x86_64 EFI image (grub-mkstandalone) whose embedded grub.cfg prints `marker`
    and halts."""
    cfg = out.parent / "grub-embedded.cfg"
    cfg.write_text(f"echo {marker}\nhalt\n")
    subprocess.run(["grub-mkstandalone", "-O", "x86_64-efi", "-d", GRUB_EFI_MODULES, "-o", str(out),
                    "--install-modules=normal echo halt configfile", "--locales=", "--fonts=", "--themes=",
                    f"boot/grub/grub.cfg={cfg}"], check=True, capture_output=True, timeout=120)
    return out


def ovmf(name: str, netdev: Optional[str], log_dir: Path, pxe: bool = True, flags: tuple = ()) -> Firmware:
    """OVMF with virtio-net (OVMF's own driver: romfile= keeps iPXE's EFI ROM out) first in
    the boot order. OVMF then tries, in order: PXEv4, PXEv6, HTTPv4, HTTPv6. With pxe=False,
    OVMF's fw_cfg knobs leave PXE out, so HTTP boot over IPv4 comes first (PXEv6 alone
    waits minutes for a DHCPv6 offer under TCG). netdev None: `flags` bring the NIC (see
    Firmware); their -device gets the same romfile= and bootindex=."""
    knobs = () if pxe else ("-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
                            "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n")
    options = "romfile=,bootindex=1"
    flags = tuple(f"{v},{options}" if i and flags[i - 1] == "-device" else v for i, v in enumerate(flags))
    return Firmware(name, netdev, f"virtio-net-pci,{options}", log_dir, bios=OVMF, extra=(*flags, *knobs))
