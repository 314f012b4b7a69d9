"""Fixtures for the end-to-end tests (see guest.py for the harness)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guest import Guest, ensure_image  # noqa: E402


def pytest_configure(config):
    # Also in pytest.ini; repeated so the marker is known when another
    # rootdir/ini is in effect (e.g. pytest started with several paths).
    config.addinivalue_line(
        "markers", "e2e: boots QEMU guests (slow; needs qemu-system-x86)")


@pytest.fixture(scope="session")
def guest_image():
    """(kernel_path, initrd_path), built once per session."""
    return ensure_image()


@pytest.fixture
def e2e_dir(tmp_path_factory, request):
    """Per-test scratch directory for sockets and console logs.

    The name is truncated because AF_UNIX socket paths are limited to
    107 bytes.
    """
    safe = "".join(c if c.isalnum() else "_" for c in request.node.name)[:24]
    return tmp_path_factory.mktemp(safe, numbered=True)


@pytest.fixture
def make_guest(guest_image, e2e_dir):
    """Factory: make_guest(name, netdev, mac, **kw) -> Guest, logging to
    e2e_dir and stopped at teardown."""
    started = []

    def make(name, netdev, mac, **kw):
        kw.setdefault("log_dir", e2e_dir)
        g = Guest(name, netdev, mac, **kw)
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()
