"""End-to-end: a guest whose NIC has a small receive ring (QEMU's pcnet under TCG) downloads
from the host through slirpd, next to an e1000 guest.

A burst larger than the ring is partly dropped inside the emulated NIC, so TCP must recover
in small steps. libslirp runs at MTU 65520 inside slirpd; without slirpd replaying the
guest's SYN (SYNReplay) it ignored the guest's MSS on connections the guest opens and
resent each hole as a 32 KiB segment, 22 frames, which the ring dropped again: the pcnet
download never finished (QEMU's built-in -netdev user: 2 s for 20 MiB). Checked as a user
would: sha256 of what arrives, within a time bound (a bound, not a speed goal).

Traffic goes only to a server on 127.0.0.1 (10.0.2.2 in the guests).
"""

import hashlib
import os
import time

import pytest

from daemon import Slirpd, stream_netdev
from guest import Guest, HostHTTPServer

pytestmark = pytest.mark.e2e

BODY = os.urandom(20 << 20)
BOUND_S = 60


@pytest.mark.parametrize("model", ["pcnet", "e1000"])
def test_a_20_mib_download_completes_intact(tmp_path, model):
    http = HostHTTPServer(body=BODY)
    sock = str(tmp_path / "n.sock")
    try:
        with Slirpd(["--stream", sock], tmp_path) as d:
            g = Guest(model, stream_netdev(sock), "52:54:00:5a:00:01", model=model, log_dir=tmp_path)
            try:
                g.wait_ready()
                t0 = time.monotonic()
                out = g.check(f"wget -q -O - {http.url('10.0.2.2')} | sha256sum", timeout=BOUND_S)
                took = time.monotonic() - t0
                print(f"\n[small-nic] {model}: 20 MiB in {took:.1f} s")
                assert out.split()[0] == hashlib.sha256(BODY).hexdigest()
            finally:
                g.stop()
            assert d.alive()
    finally:
        http.stop()
