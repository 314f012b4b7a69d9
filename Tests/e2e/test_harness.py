"""Harness self-test and baseline: QEMU's built-in user networking
(-netdev user, i.e. libslirp inside QEMU) with the test guest."""

import urllib.request

import pytest

from guest import Guest, HostHTTPServer, free_port, wait_for

pytestmark = pytest.mark.e2e

MAC = "52:54:00:12:34:01"


def http_get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def test_qemu_user_baseline(guest_image, e2e_dir):
    host_port = free_port()
    netdev = f"user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:8080"
    with HostHTTPServer() as server, \
            Guest("baseline", netdev, MAC, log_dir=e2e_dir) as g:
        lease = g.wait_lease()
        print(f"boot-to-lease {lease['seconds']:.1f}s lease={lease}")
        assert lease["ip"] == "10.0.2.15"
        assert lease["mask"] == "255.255.255.0"
        assert lease["router"] == "10.0.2.2"
        assert lease["dns"] == "10.0.2.3"
        assert lease["mtu"] == 1500
        g.wait_ready()

        # Guest -> host: the gateway maps to host loopback.
        rc, out = g.run(f"wget -q -O - http://10.0.2.2:{server.port}/")
        assert rc == 0, out
        assert out == server.body.decode()
        assert server.requests == [("127.0.0.1", "/")]

        # The harness reports exit codes and the echo is not in the output.
        assert g.run("false") == (1, "")
        assert g.run("echo one; echo two") == (0, "one\ntwo\n")

        # Host -> guest through hostfwd. The forward exists from QEMU start,
        # but httpd answers only once the guest is up, hence the retry.
        url = f"http://127.0.0.1:{host_port}/"

        def fetch():
            try:
                return http_get(url)
            except OSError:
                return None

        body = wait_for(fetch, timeout=30, what=url)
        assert body.decode() == f"hello from guest {MAC}"
        big = http_get(f"http://127.0.0.1:{host_port}/big", timeout=30)
        assert big == bytes(1024 * 1024)
