#!/usr/bin/env python3
"""Writes the seed corpora for Scripts/fuzz: Tests/fuzz/corpus/{dhcp,dns}/.

Theory of operation. The seeds are small valid inputs that lead libFuzzer past the
first checks of each parser; it mutates them from there. They are built here field by
field, so what each file holds is readable and can be changed, and the output is the
same bytes on every run (the files are committed; rerun this after changing it).

DHCP seeds come in two forms, as fuzz-dhcp reads both: whole Ethernet frames as
busybox udhcpc 1.35 sends them (`udhcpc -O mtu -x hostname:guest1`, the test guests'
command line), and bare BOOTP messages, which the harness wraps in a valid
IPv4/UDP header itself. fuzz-dhcp gives the seeds' client a lease on 10.0.2.15, the
address these messages name. DNS seeds are UDP payloads, plus one TCP length-prefixed query.
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MAC = bytes.fromhex("525400123456")
XID = 0x3C1D9A42
SERVER = bytes([10, 0, 2, 2])
LEASED = bytes([10, 0, 2, 15])


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def option(code, value):
    return bytes([code, len(value)]) + value


def bootp(kind, ciaddr=b"\0\0\0\0", extra=b""):
    """udhcpc's BOOTREQUEST: init_packet, then add_client_options, padded to 300 bytes."""
    header = struct.pack("!BBBBIHH", 1, 1, 6, 0, XID, 0, 0) + ciaddr + b"\0" * 12
    header += MAC + b"\0" * 10 + b"\0" * 64 + b"\0" * 128  # chaddr padding, sname, file
    options = option(53, bytes([kind])) + option(61, b"\x01" + MAC) + extra
    options += option(57, struct.pack("!H", 576))
    options += option(55, bytes([1, 3, 6, 12, 15, 26, 28, 42]))  # -O mtu adds 26
    options += option(60, b"udhcp 1.35.0") + option(12, b"guest1") + b"\xff"
    message = header + b"\x63\x82\x53\x63" + options
    return message + b"\0" * max(0, 300 - len(message))


def frame(payload):
    """The raw-socket broadcast udhcpc sends before it has an address: 0.0.0.0:68 to
    255.255.255.255:67, TTL 64, both checksums set."""
    src, dst = b"\0\0\0\0", b"\xff\xff\xff\xff"
    udp_length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_length)
    udp = struct.pack("!HHHH", 68, 67, udp_length, 0) + payload
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + udp_length, 0, 0, 64, 17, 0) + src + dst
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return b"\xff" * 6 + MAC + b"\x08\x00" + ip + udp


def dns_name(text, pointers=None, offset=0):
    """Wire form of `text`; with `pointers` (suffix -> offset), compressed against it."""
    labels = text.rstrip(".").split(".") if text.strip(".") else []
    out = b""
    for i in range(len(labels)):
        suffix = ".".join(labels[i:])
        if pointers is not None and suffix in pointers:
            return out + struct.pack("!H", 0xC000 | pointers[suffix])
        if pointers is not None:
            pointers[suffix] = offset + len(out)
        out += bytes([len(labels[i])]) + labels[i].encode()
    return out + b"\0"


def dns_query(name, qtype, edns=None, qid=0):
    flags = 0x0100  # RD
    message = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if edns is not None else 0)
    message += dns_name(name) + struct.pack("!HH", qtype, 1)
    if edns is not None:
        payload_size, do_bit, options = edns
        message += b"\0" + struct.pack("!HHIH", 41, payload_size, 0x8000 if do_bit else 0, len(options)) + options
    return message


def dns_response():
    """www.example.com A, answered through a CNAME, with NS and OPT: every name after
    the question is a compression pointer or ends in one."""
    pointers = {}
    message = struct.pack("!HHHHHH", 0xBEEF, 0x8180, 1, 2, 1, 1)

    def name(text):
        return dns_name(text, pointers, len(message))

    def rr(owner, rtype, rdata_fn, ttl=300):
        nonlocal message
        message += name(owner) + struct.pack("!HHI", rtype, 1, ttl)
        length_at = len(message)
        message += b"\0\0"
        rdata = rdata_fn()
        message += rdata
        message = message[:length_at] + struct.pack("!H", len(rdata)) + message[length_at + 2:]

    message += name("www.example.com") + struct.pack("!HH", 1, 1)

    def target(text):
        return lambda: name(text)

    rr("www.example.com", 5, target("web.example.com"))
    rr("web.example.com", 1, lambda: bytes([192, 0, 2, 1]))
    rr("example.com", 2, target("ns1.example.com"), ttl=3600)
    message += b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return message


def write(kind, name, data):
    path = os.path.join(HERE, "corpus", kind, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main():
    request_extra = option(50, LEASED) + option(54, SERVER)
    discover = bootp(1)
    request = bootp(3, extra=request_extra)
    write("dhcp", "udhcpc-discover.frame", frame(discover))
    write("dhcp", "udhcpc-request.frame", frame(request))
    write("dhcp", "discover.bootp", discover)
    write("dhcp", "request.bootp", request)
    # RENEWING: ciaddr set, no option 50; unicast to the server.
    write("dhcp", "renew.bootp", bootp(3, ciaddr=LEASED))
    write("dhcp", "release.bootp", bootp(7, ciaddr=LEASED, extra=option(54, SERVER)))
    # udhcpc -a declines an address another host answers ARP for.
    write("dhcp", "decline.bootp", bootp(4, extra=request_extra))
    # udhcpc sends no INFORM; this one is shaped like its other messages.
    write("dhcp", "inform.bootp", bootp(8, ciaddr=LEASED))
    write("dhcp", "leases.txt",
          b"slirpd-leases 1\n"
          b"52:54:00:12:34:56 10.0.2.15 1763712000 dynamic guest%2D1\n"
          b"52:54:00:00:00:09 10.0.2.9 1763712000 static\n")

    cookie = struct.pack("!HH", 10, 8) + bytes.fromhex("0123456789abcdef")  # as dig sends
    write("dns", "a-local.query", dns_query("web1.slirpd.internal", 1, qid=0x1001))
    write("dns", "a-edns.query", dns_query("example.com", 1, edns=(1232, True, cookie), qid=0x1002))
    write("dns", "ptr.query", dns_query("15.2.0.10.in-addr.arpa", 12, qid=0x1003))
    write("dns", "any-nxdomain.query", dns_query("nope.slirpd.internal", 255, edns=(4096, False, b""), qid=0x1004))
    write("dns", "compressed.response", dns_response())
    tcp = dns_query("host.slirpd.internal", 28, qid=0x1005)
    write("dns", "aaaa-tcp.query", struct.pack("!H", len(tcp)) + tcp)


if __name__ == "__main__":
    main()
