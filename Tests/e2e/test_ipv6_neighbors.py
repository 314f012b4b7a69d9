"""More IPv6 guests than libslirp's 16-entry NDP table.

Twenty namespaces take SLAAC addresses from libslirp's router advertisements and fetch
from a host service on [::1] through the gateway fec0::2 at once. libslirp asks for
each guest's MAC with a Neighbor Solicitation; the switch must answer from its own
table. Then one namespace downloads 32 MiB over IPv6, at MTU 1500 and at 65520.
"""

import hashlib
import http.server
import re
import socket
import subprocess
import threading

import pytest

from daemon import Slirpd
from guest import wait_for
from netns import BUSYBOX, LoopbackDNS, Namespaces

pytestmark = pytest.mark.e2e

COUNT = 20
BODY = b"v6" * 1000
BULK = bytes(range(256)) * (1 << 17)   # 32 MiB


class IPv6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = BULK if self.path == "/bulk" else BODY
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_twenty_ipv6_guests_fetch_at_once(tmp_path):
    server = IPv6Server(("::1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with LoopbackDNS({}) as upstream, Namespaces(COUNT, tmp_path) as nss, \
                Slirpd(["-o", f"dns-upstream={upstream.address}", *nss.tap_args], tmp_path) as d:
            nss.move()
            for i in range(COUNT):
                wait_for(lambda: "fec0::" in nss.exec(i, "ip", "-6", "addr", "show", "scope", "site").stdout
                         and "tentative" not in nss.exec(i, "ip", "-6", "addr", "show", "scope", "site").stdout,
                         30, what=f"a SLAAC address in {nss.ns(i)}")
            for round in range(2):
                procs = [nss.popen(i, "timeout", "30", BUSYBOX, "wget", "-q", "-O", "-", f"http://[fec0::2]:{port}/",
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(COUNT)]
                results = [(p.communicate(timeout=60)[0], p.returncode) for p in procs]
                failed = [(nss.ns(i), rc, len(out)) for i, (out, rc) in enumerate(results) if rc != 0 or out != BODY]
                assert not failed, f"round {round + 1}: {len(failed)} of {COUNT} fetches failed: {failed[:5]}"
            metrics = subprocess.run(["curl", "-s", "--unix-socket", d.control, "http://slirpd/metrics"],
                                     capture_output=True, text=True, check=True).stdout
            proxied = int(re.search(r'^slirpd_ndp_proxied_total\{network="default"\} (\d+)$', metrics, re.M).group(1))
            assert proxied >= COUNT - 16, f"libslirp's NDP table cannot hold {COUNT} guests; the switch answered {proxied}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mtu", [1500, 65520])
def test_a_bulk_ipv6_download_arrives_whole(tmp_path, mtu):
    server = IPv6Server(("::1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Namespaces(1, tmp_path) as nss, Slirpd(["--mtu", str(mtu), *nss.tap_args], tmp_path):
            nss.move()
            nss.exec(0, "ip", "link", "set", nss.tap(0), "mtu", str(mtu))
            wait_for(lambda: "fec0::" in nss.exec(0, "ip", "-6", "addr", "show", "scope", "site").stdout
                     and "tentative" not in nss.exec(0, "ip", "-6", "addr", "show", "scope", "site").stdout,
                     30, what="a SLAAC address")
            out = nss.exec(0, "sh", "-c", f"timeout 60 {BUSYBOX} wget -q -O - http://[fec0::2]:{port}/bulk | md5sum",
                           timeout=90).stdout.split()[0]
            assert out == hashlib.md5(BULK).hexdigest(), out
    finally:
        server.shutdown()
        server.server_close()
