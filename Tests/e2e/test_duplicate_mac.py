"""A duplicate MAC is refused only while its holder is still there (issue 19, item 7).

A QEMU guest over -netdev dgram that quits sends no goodbye; a guest that comes back with
its MAC at once (an iPXE chainload, a reboot onto another transport) must not be
refused for that ghost, because QEMU 7.2 never reconnects a refused stream guest. Fake
guests (fakeguest.py) on Unix sockets in the test's directory stand in for QEMU.
"""

import time

import pytest

from daemon import Slirpd
from fakeguest import FakeGuest

pytestmark = pytest.mark.e2e

MAC = "52:54:00:d1:00:01"


def offered(g: FakeGuest, tries: int = 3) -> bool:
    """Whether the guest gets a DHCP offer within a few tries (a retrying client)."""
    for _ in range(tries):
        try:
            g.dhcp_offer(timeout=2)
            return True
        except TimeoutError:
            continue
    return False


def connection_closed(g: FakeGuest, timeout: float) -> bool:
    """Whether slirpd closes the guest's stream within `timeout` (frames before that are read and ignored)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            g.recv_frame(1)
        except (ConnectionError, OSError):
            return True
    return False


def test_a_guest_returning_over_stream_is_not_refused_for_its_gone_dgram_self(tmp_path):
    stream, dgram = str(tmp_path / "s.sock"), str(tmp_path / "d.sock")
    with Slirpd(["--stream", stream, "--dgram", dgram], tmp_path) as d:
        old = FakeGuest(("dgram", (dgram, str(tmp_path / "old.sock"))), MAC)
        assert offered(old)
        d.wait_log(f"is using MAC {MAC}")
        old.vanish()  # quits: its socket file is gone, and slirpd was not told
        start = len(d.log)
        with FakeGuest(("stream", stream), MAC) as new:
            assert offered(new), d.log[start:]
            line = d.wait_log(f"uses MAC {MAC} of a guest that has gone", start=start)
            assert "is gone" in line, line
            # Still connected, and serving: a second exchange works too.
            assert offered(new)
        assert "refused: duplicate MAC" not in d.log[start:]
        assert "refusing" not in d.log[start:]


def test_a_live_holder_still_wins(tmp_path):
    stream, dgram = str(tmp_path / "s.sock"), str(tmp_path / "d.sock")
    with Slirpd(["--stream", stream, "--dgram", dgram], tmp_path) as d:
        holder = FakeGuest(("dgram", (dgram, str(tmp_path / "holder.sock"))), MAC)
        assert offered(holder)
        d.wait_log(f"is using MAC {MAC}")
        start = len(d.log)
        intruder = FakeGuest(("stream", stream), MAC)
        try:
            intruder.send(b"\xff" * 6 + bytes.fromhex(MAC.replace(":", "")) + b"\x08\x06" + b"\0" * 46)
            line = d.wait_log(f"duplicate MAC {MAC}", start=start)
            assert "already used by" in line, line
            # The intruder is disconnected; the holder keeps leasing.
            assert connection_closed(intruder, 10), "the intruder's connection stayed open"
            assert offered(holder)
            assert "of a guest that has gone" not in d.log[start:]
        finally:
            intruder.close()
            holder.vanish()
