"""Memory after many guests leave (issue 19 item 6).

Three rounds: 300 stream guests attach at once, each takes a DHCP offer, some broadcast
full-size frames (so every queue grows), then all close. RssAnon of the daemon must come
back within 2 MiB of its idle level after each round (slirpd shrinks drained queues and
gives the heap's free pages back after a wave of departures), and an idle attached guest
must cost at most 16 KiB. Fake guests only: nothing leaves slirpd.
"""

import time

import pytest

from daemon import Slirpd
from fakeguest import FakeGuest, fake_mac, junk_broadcast

pytestmark = pytest.mark.e2e

GUESTS = 300
ROUNDS = 3
MIB = 1 << 20


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/PID/status")


def guests_attached(d: Slirpd) -> int:
    return d.log.count(" attached on ") - d.log.count(" detached: ")


def settle(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


def test_rss_returns_to_idle_after_rounds_of_many_stream_guests(tmp_path):
    sock = tmp_path / "s.sock"
    with Slirpd(["-o", "net=10.0.0.0/22,host=10.0.0.2,dns=10.0.0.3,dhcpstart=10.0.0.15", "--stream", str(sock)], tmp_path) as d:
        # Idle: one guest attached and gone first, so one-time allocations (DHCP, logging) are in.
        with FakeGuest(("stream", str(sock)), fake_mac(0xFFFF)) as g:
            g.dhcp_offer()
        assert settle(lambda: guests_attached(d) == 0, 10)
        time.sleep(1.5)
        idle = rss_anon(d.pid)
        figures = []
        for rnd in range(ROUNDS):
            guests = []
            # In batches, so the listener's backlog never overflows (connect would fail with EAGAIN).
            for i in range(GUESTS):
                guests.append(FakeGuest(("stream", str(sock)), fake_mac(rnd * 10_000 + i), ip="10.0.1.1", timeout=30))
                if len(guests) % 50 == 0:
                    assert settle(lambda: guests_attached(d) == len(guests), 30), f"round {rnd + 1}: guests not attached"
            for g in guests:
                g.dhcp_offer(timeout=30)
            assert settle(lambda: guests_attached(d) == GUESTS, 30), f"round {rnd + 1}: not all {GUESTS} guests attached"
            time.sleep(1)
            attached = rss_anon(d.pid)
            per_guest = (attached - idle) / GUESTS
            # Queues grow: ten guests broadcast full-size frames that every other guest gets.
            for g in guests[:10]:
                for _ in range(4):
                    g.send(junk_broadcast(g.mac, 1500))
            time.sleep(1)
            loaded = rss_anon(d.pid)
            for g in guests:
                g.close()
            assert settle(lambda: guests_attached(d) == 0, 30), f"round {rnd + 1}: guests still attached"
            # The trim comes a second after the wave of departures.
            back = settle(lambda: rss_anon(d.pid) - idle <= 2 * MIB, 15)
            after = rss_anon(d.pid)
            figures.append((per_guest, attached, loaded, after))
            print(f"round {rnd + 1}: idle {idle / MIB:.1f} MiB, {GUESTS} attached {attached / MIB:.1f} MiB "
                  f"({per_guest / 1024:.1f} KiB per guest), after broadcasts {loaded / MIB:.1f} MiB, "
                  f"after they left {after / MIB:.1f} MiB")
            assert back, (f"round {rnd + 1}: RssAnon {after / MIB:.1f} MiB after {GUESTS} guests left, "
                          f"more than 2 MiB above idle {idle / MIB:.1f} MiB; rounds so far: {figures}")
            assert per_guest <= 16 * 1024, f"round {rnd + 1}: an idle attached guest costs {per_guest / 1024:.1f} KiB (goal 16)"
        assert d.alive()
        assert "many guests left: gave free memory back" in d.log
