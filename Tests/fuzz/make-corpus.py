#!/usr/bin/env python3
"""Writes the seed corpora for Scripts/fuzz: Tests/fuzz/corpus/NAME/, one folder a target.

Theory of operation. The seeds are small valid inputs that lead libFuzzer past the
first checks of each parser; it mutates them from there. They are built here field by
field, so what each file holds is readable and can be changed, and the output is the
same bytes on every run (the files are committed; rerun this after changing it).

DHCP seeds come in two forms, as fuzz-dhcp reads both: whole Ethernet frames as
busybox udhcpc 1.35 sends them (`udhcpc -O mtu -x hostname:guest1`, the test guests'
command line), and bare BOOTP messages, which the harness wraps in a valid
IPv4/UDP header itself. fuzz-dhcp gives the seeds' client a lease on 10.0.2.15, the
address these messages name. DNS seeds are UDP payloads, plus one TCP length-prefixed query.

framer seeds are fuzz-framer's input: a count N, N read sizes, then a QEMU stream
(4-byte big-endian length, frame): several frames, prefixes split across reads, bad
and borderline lengths. frames seeds are fuzz-frames' records (a guest byte, top bit
"raw", a 2-byte length, the bytes) holding Ethernet frames as the test guests send them:
ARP, DHCP, TCP, UDP and ICMP to the gateway (10.0.2.2) and DNS (10.0.2.3), NDP and
ICMPv6, a VLAN tag, guest-to-guest traffic, a duplicate MAC, truncated and split frames.
nat-stream seeds are fuzz-nat-stream's segment records (flags, urgent pointer, a
data-offset/option-words byte and the options, a payload length and payload, a byte of
length tricks): in-order data as a guest sends it, with and without options, and one
honest urgent segment (pointer inside its payload).
edge seeds are fuzz-edge's inputs (an 18-byte description, then the payload or a raw
frame): IPv4 and IPv6 segments to cut at MSS 1460 and at odd sizes, with options,
padding, FIN/PSH/URG/CWR, a wrong IP length, and edit programs for the coalescer.
options seeds are option strings from README.md and the unit tests; config seeds are the
configs of README.md, ConfigFile.swift's documentation, systemd/slirpd.toml and the unit
tests, taken from those files, and a few more.
"""

import os
import re
import struct
import textwrap

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


def bootp(kind, ciaddr=b"\0\0\0\0", extra=b"", mac=MAC):
    """udhcpc's BOOTREQUEST: init_packet, then add_client_options, padded to 300 bytes."""
    header = struct.pack("!BBBBIHH", 1, 1, 6, 0, XID, 0, 0) + ciaddr + b"\0" * 12
    header += mac + b"\0" * 10 + b"\0" * 64 + b"\0" * 128  # chaddr padding, sname, file
    options = option(53, bytes([kind])) + option(61, b"\x01" + mac) + extra
    options += option(57, struct.pack("!H", 576))
    options += option(55, bytes([1, 3, 6, 12, 15, 26, 28, 42]))  # -O mtu adds 26
    options += option(60, b"udhcp 1.35.0") + option(12, b"guest1") + b"\xff"
    message = header + b"\x63\x82\x53\x63" + options
    return message + b"\0" * max(0, 300 - len(message))


def frame(payload, mac=MAC):
    """The raw-socket broadcast udhcpc sends before it has an address: 0.0.0.0:68 to
    255.255.255.255:67, TTL 64, both checksums set."""
    src, dst = b"\0\0\0\0", b"\xff\xff\xff\xff"
    udp_length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_length)
    udp = struct.pack("!HHHH", 68, 67, udp_length, 0) + payload
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + udp_length, 0, 0, 64, 17, 0) + src + dst
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return b"\xff" * 6 + mac + b"\x08\x00" + ip + udp


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


# Ethernet frames for fuzz-frames. Guest 0 is QEMU's default MAC on 10.0.2.15, guest 1
# a second QEMU, guest 2 has fuzz-frames' static lease (10.0.2.9). libslirp answers from
# 52:55 and the IPv4 address, and 52:56 and the last 4 bytes of an IPv6 one.
GUESTS = [(MAC, LEASED), (bytes.fromhex("525400000002"), bytes([10, 0, 2, 16])),
          (bytes.fromhex("525400000009"), bytes([10, 0, 2, 9]))]
GATEWAY, DNS = SERVER, bytes([10, 0, 2, 3])
BROADCAST = b"\xff" * 6


def nat_mac(ip):
    return b"\x52\x55" + ip


def ethernet(dst, src, ethertype, payload):
    return dst + src + struct.pack("!H", ethertype) + payload


def arp(op, sha, spa, tha, tpa):
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + tpa


def ipv4(src, dst, proto, payload):
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0x1234, 0x4000, 64, proto, 0) + src + dst
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def udp4(src, dst, sport, dport, payload):
    length = 8 + len(payload)
    datagram = struct.pack("!HHHH", sport, dport, length, 0) + payload
    sum_ = checksum(src + dst + struct.pack("!BBH", 0, 17, length) + datagram) or 0xFFFF
    return ipv4(src, dst, 17, datagram[:6] + struct.pack("!H", sum_) + datagram[8:])


def tcp_syn(src, dst, sport, dport):
    # MSS 1460, as Linux opens a connection (without its other options).
    segment = struct.pack("!HHIIBBHHH", sport, dport, 0x11223344, 0, 0x60, 0x02, 64240, 0, 0) + bytes([2, 4, 5, 0xB4])
    sum_ = checksum(src + dst + struct.pack("!BBH", 0, 6, len(segment)) + segment)
    return ipv4(src, dst, 6, segment[:16] + struct.pack("!H", sum_) + segment[18:])


def echo4(src, dst, seq):
    message = struct.pack("!BBHHH", 8, 0, 0, 0x0BAD, seq) + bytes(range(32))
    return ipv4(src, dst, 1, message[:2] + struct.pack("!H", checksum(message)) + message[4:])


def v6(text):
    """A few fixed IPv6 addresses, by name, as bytes."""
    return {
        "host": bytes.fromhex("fec00000000000000000000000000002"),
        "dns": bytes.fromhex("fec00000000000000000000000000003"),
        "guest": bytes.fromhex("fec0000000000000505400fffe123456"),  # SLAAC: the EUI-64 of 52:54:00:12:34:56
        "link": bytes.fromhex("fe80000000000000505400fffe123456"),
        "routers": bytes.fromhex("ff020000000000000000000000000002"),
        "solicited-host": bytes.fromhex("ff0200000000000000000001ff000002"),
    }[text]


def ipv6(src, dst, nh, payload, hop_limit=255):
    return struct.pack("!IHBB", 0x60000000, len(payload), nh, hop_limit) + src + dst + payload


def icmp6(src, dst, message):
    pseudo = src + dst + struct.pack("!IxxxB", len(message), 58)
    message = message[:2] + struct.pack("!H", checksum(pseudo + message)) + message[4:]
    return ipv6(src, dst, 58, message)


def udp6(src, dst, sport, dport, payload):
    length = 8 + len(payload)
    datagram = struct.pack("!HHHH", sport, dport, length, 0) + payload
    sum_ = checksum(src + dst + struct.pack("!IxxxB", length, 17) + datagram) or 0xFFFF
    return ipv6(src, dst, 17, datagram[:6] + struct.pack("!H", sum_) + datagram[8:], hop_limit=64)


def v6_mac(address):
    return b"\x52\x56" + address[12:]


def record(guest, data, raw=False):
    """One fuzz-frames record: the guest (top bit: raw, no length prefix) and its bytes."""
    return bytes([guest | (0x80 if raw else 0)]) + struct.pack("!H", len(data)) + data


def frames_seeds(discover, request):
    """name -> the records of one fuzz-frames seed."""
    (mac0, ip0), (mac1, ip1), (mac2, ip2) = GUESTS
    zero = b"\0" * 6
    arp_gateway = ethernet(BROADCAST, mac0, 0x0806, arp(1, mac0, ip0, zero, GATEWAY))
    ping_gateway = ethernet(nat_mac(GATEWAY), mac0, 0x0800, echo4(ip0, GATEWAY, 1))
    link, host6 = v6("link"), v6("host")
    router_solicitation = struct.pack("!BBHI", 133, 0, 0, 0) + bytes([1, 1]) + mac0
    neighbor_solicitation = struct.pack("!BBHI", 135, 0, 0, 0) + host6 + bytes([1, 1]) + mac0
    echo6 = struct.pack("!BBHHH", 128, 0, 0, 0x0BAD, 1) + b"ping6"
    arp_for_1 = ethernet(BROADCAST, mac0, 0x0806, arp(1, mac0, ip0, zero, ip1))
    arp_reply_1 = ethernet(mac0, mac1, 0x0806, arp(2, mac1, ip1, mac0, ip0))
    ping_1 = ethernet(mac1, mac0, 0x0800, echo4(ip0, ip1, 1))
    return {
        "arp-gateway": [record(0, arp_gateway)],
        "arp-dns": [record(0, ethernet(BROADCAST, mac0, 0x0806, arp(1, mac0, ip0, zero, DNS)))],
        "gratuitous-arp": [record(1, ethernet(BROADCAST, mac1, 0x0806, arp(1, mac1, ip1, zero, ip1)))],
        "dhcp-lease": [record(0, discover), record(0, request)],
        "dhcp-static": [record(2, frame(bootp(1, mac=mac2), mac=mac2))],
        "tcp-syn-gateway": [record(0, arp_gateway),
                            record(0, ethernet(nat_mac(GATEWAY), mac0, 0x0800, tcp_syn(ip0, GATEWAY, 40000, 80)))],
        "udp-gateway": [record(0, ethernet(nat_mac(GATEWAY), mac0, 0x0800, udp4(ip0, GATEWAY, 40001, 7, b"echo")))],
        # No ARP first: libslirp asks who has 10.0.2.15, and slirpd's ARP proxy answers.
        "ping-gateway": [record(0, ping_gateway)],
        "ping-dns": [record(0, ethernet(nat_mac(DNS), mac0, 0x0800, echo4(ip0, DNS, 2)))],
        "dns-local": [record(0, ethernet(nat_mac(DNS), mac0, 0x0800,
                                         udp4(ip0, DNS, 40002, 53, dns_query("host.slirpd.internal", 1, qid=0x2001))))],
        # restrict=on: answered SERVFAIL at once.
        "dns-other": [record(1, ethernet(nat_mac(DNS), mac1, 0x0800,
                                         udp4(ip1, DNS, 40003, 53, dns_query("example.com", 28, qid=0x2002))))],
        "ndp-router-solicitation": [record(0, ethernet(b"\x33\x33\x00\x00\x00\x02", mac0, 0x86DD,
                                                       icmp6(link, v6("routers"), router_solicitation)))],
        "ndp-neighbor-solicitation": [record(0, ethernet(b"\x33\x33\xff\x00\x00\x02", mac0, 0x86DD,
                                                         icmp6(v6("guest"), v6("solicited-host"), neighbor_solicitation)))],
        "ping6-host": [record(0, ethernet(v6_mac(host6), mac0, 0x86DD, icmp6(v6("guest"), host6, echo6)))],
        "dns6": [record(0, ethernet(v6_mac(v6("dns")), mac0, 0x86DD,
                                    udp6(v6("guest"), v6("dns"), 40004, 53, dns_query("web1.slirpd.internal", 28, qid=0x2003))))],
        "vlan-arp": [record(0, ethernet(BROADCAST, mac0, 0x8100, struct.pack("!HH", 5, 0x0806)
                                        + arp(1, mac0, ip0, zero, GATEWAY)))],
        "guest-to-guest": [record(0, arp_for_1), record(1, arp_reply_1), record(0, ping_1),
                           record(1, ethernet(mac0, mac1, 0x0800, echo4(ip1, ip0, 1))),
                           record(2, ethernet(BROADCAST, mac2, 0x0806, arp(1, mac2, ip2, zero, ip0)))],
        "duplicate-mac": [record(0, arp_gateway), record(1, arp_gateway)],
        # Truncated: an IPv4 header claiming more than follows, a bare Ethernet header,
        # and 13 bytes (a bad length: the guest's connection is reset).
        "truncated": [record(0, ping_gateway[:34]), record(1, ping_gateway[:14]), record(2, ping_gateway[:13])],
        # One frame written in three pieces (the prefix split too), then a bad prefix.
        "split": [record(0, encode_stream([arp_gateway])[:2], raw=True),
                  record(0, encode_stream([arp_gateway])[2:30], raw=True),
                  record(0, encode_stream([arp_gateway])[30:] + struct.pack("!I", 70000), raw=True)],
    }


def encode_stream(frames):
    """QEMU's stream transport: each frame after its 4-byte big-endian length."""
    return b"".join(struct.pack("!I", len(f)) + f for f in frames)


def framer_seed(stream, sizes=()):
    """fuzz-framer's input: the number of read sizes, the sizes (each byte + 1), the stream."""
    return bytes([len(sizes)]) + bytes(size - 1 for size in sizes) + stream


OPTION_STRINGS = {
    # README.md
    "readme-net": "net=192.168.0.0/24",
    "readme-hostfwd": "hostfwd=tcp:127.0.0.1:4242-:4242",
    "readme-domainname": "domainname=slirpd.internal",
    # The unit tests (Tests/NetOptionsTests)
    "qemu-user": "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22,restrict=on",
    "short-booleans": "user,restrict=on,norestrict",
    "type-user": "type=user,id=n1,net=10.7.0.0/24",
    "dotted-mask": "net=10.9.0.0/255.255.0.0",
    "dhcpstart": "net=192.168.7.0/24,dhcpstart=192.168.7.50",
    "ip-and-net": "ip=10.1.2.3,net=10.5.0.0/16",
    "families": "ipv4=on,ipv6=on,net=10.1.0.0/16",
    "ipv6": "ipv6-net=fd00::/48,ipv6-host=fd00:0:0:9::1,ipv6-dns=fd00::53",
    "ipv6-prefixlen": "ipv6-prefix=fd00::,ipv6-prefixlen=0x30",
    "guestfwd": "net=192.168.9.0/24,guestfwd=tcp:192.168.9.100:80-cmd:a",
    "forwards": "hostfwd=tcp::0x15b4-:0x50,hostfwd=udp:127.0.0.1:5555-10.0.2.15:5555,"
                "guestfwd=tcp:10.0.2.100:1234-cmd:netcat 127.0.0.1 22,guestfwd=:10.0.2.101:80-tcp:[::1]:80,"
                "guestfwd=::81-unix:/run/web.sock",
    "strings": "hostname=guest,,1,domainname=lab.example,dnssearch=lab.example,dnssearch=example.,"
               "tftp=/srv/tftp,tftp-server-name=boot,bootfile=pxelinux.0",
    "slirpd-dns": "dns-upstream=[::1]:5353,dns-domain=Lab.Internal.",
    "restricted-dns": "restrict=on,net=10.0.3.0/24,dns=10.0.3.3,ipv6-dns=fec0::53",
    "error-hostfwd": "hostfwd=tcp::80",
    # slirpd's own keys (a bare `isolate` once rendered without its value)
    "slirpd-keys": "user,isolate,host-loopback=off,dhcpend=10.0.2.99,max-tcp=64,max-udp=32,max-icmp=8,"
                   "max-dns-tcp=4,max-macs=2",
}


def shipped_configs():
    """name -> text: the configs the project ships or documents: the ```toml blocks of
    README.md and of ConfigFile.swift's documentation (every key), systemd/slirpd.toml,
    and the unit tests' full example."""
    root = os.path.join(HERE, "..", "..")

    def read(*path):
        with open(os.path.join(root, *path), encoding="utf-8") as f:
            return f.read()

    configs = {}
    for index, text in enumerate(re.findall(r"```toml\n(.*?)```", read("README.md"), re.S)):
        configs[f"readme-{index + 1}"] = text
    doc = re.search(r"/// ```toml\n(.*?)/// ```", read("Sources", "DaemonConfig", "ConfigFile.swift"), re.S)
    configs["every-key"] = re.sub(r"^/// ?", "", doc.group(1), flags=re.M)
    configs["systemd-slirpd"] = read("systemd", "slirpd.toml")
    test = re.search(r'func fullExample\(\) throws \{\n\s*let config = try parse\("""\n(.*?)\n\s*"""\)',
                     read("Tests", "DaemonConfigTests", "ConfigFileTests.swift"), re.S)
    configs["unit-test-example"] = textwrap.dedent(test.group(1)) + "\n"
    return configs


CONFIGS = {
    # The other form of static lease, and the endpoints the shipped examples leave out.
    "inline-lease-tap-connect": '[[network]]\nname = "a"\ntap = ["tap0"]\nconnect = ["unix:/tmp/vm.sock"]\n'
                                'static-lease = [{ mac = "52:54:00:00:00:02", ip = "10.0.2.20" }]\n',
    # Mistakes the parser must place: a duplicate name, an endpoint used twice, a typo,
    # an option error, a header toml++ must not see.
    "duplicate-name": '[[network]]\nname = "a"\n\n[[network]]\nname = "a"\n',
    "shared-socket": '[[network]]\nname = "a"\nstream = ["/tmp/x"]\n\n[[network]]\nname = "b"\ndgram = ["/tmp/x"]\n',
    "typo": '[[network]]\nname = "a"\nstrem = ["/tmp/x"]\nmtu = 40\n',
    "option-error-line": '[[network]]\nname = "a"\noptions = "net=10.0.0.0/8"\nhost = "192.168.0.2"\n',
    "bad-header": '[[network]]\nname = "a"\n\n[.network]\nmtu = 1500\n',
}


def nat_segment(payload, flags=0x18, urgent=0, options=b"", tricks=0):
    """One fuzz-nat-stream record (see its theory of operation)."""
    assert len(options) % 4 == 0 and len(payload) < 256
    return (bytes([flags]) + struct.pack("!H", urgent) + bytes([len(options) // 4]) + options
            + bytes([len(payload)]) + payload + bytes([tricks]))


NAT_STREAM_SEEDS = {
    "one-segment": nat_segment(b"GET / HTTP/1.0\r\n\r\n"),
    "three-segments": nat_segment(b"first ") + nat_segment(b"second ", flags=0x10) + nat_segment(b"third\n"),
    "timestamps": nat_segment(b"with options", options=bytes([1, 1, 8, 10]) + bytes(8)),
    "honest-urgent": nat_segment(b"0123456789", flags=0x38, urgent=5) + nat_segment(b"after"),
    "padded": nat_segment(b"ab") + nat_segment(b"cd", tricks=0x40) + bytes([6]),
    "fin": nat_segment(b"bye", flags=0x19),
}


def edge_seed(payload, mode=0, flags=0x10, mss=1459, urgent=0, split=700, max_payload=64999, seq=0xFFFFF000,
              delta=0, program=(0x3F, 0x3F, 0x3F)):
    """One fuzz-edge input (see its theory of operation): mode bits 0 IPv6, 1 raw frame,
    2 TCP options, 3 IPv4 options, 4 padding, 5 length trick, 7 MSS taken as is (else 1 +
    mss % 1500); the program's bytes: top 2 bits corrupt/drop/duplicate/insert, low 6 the piece."""
    return (bytes([mode, flags]) + struct.pack("!HHHHI", mss, urgent, split, max_payload, seq)
            + struct.pack("!b", delta) + bytes(program) + payload)


def edge_payload(n):
    return bytes((i * 7 + (i >> 8)) & 0xFF for i in range(n))


EDGE_SEEDS = {
    "v4-psh-mss1460": edge_seed(edge_payload(3000), flags=0x18),
    "v6-fin-mss7": edge_seed(edge_payload(101), mode=0x01, flags=0x19, mss=6, split=50),
    "v4-options-padding-urgent": edge_seed(edge_payload(200), mode=0x1C, flags=0xB0, mss=31, urgent=50, split=1),
    "v6-options-cwr-ece": edge_seed(edge_payload(999), mode=0x05, flags=0xD8, mss=99),
    "v4-short-ip-length": edge_seed(edge_payload(300), mode=0x20, mss=99, delta=-3),
    "v6-long-ip-length": edge_seed(edge_payload(300), mode=0x21, mss=99, delta=5),
    "coalesce-corrupt-drop-dup": edge_seed(edge_payload(1200), mss=199, program=(0x02, 0x43, 0x81)),
    "coalesce-insert-small-cap": edge_seed(edge_payload(1200), mss=99, max_payload=299, program=(0xC3, 0x3F, 0x3F)),
    "syn-not-cut": edge_seed(edge_payload(2000), flags=0x12, mss=99),
    "mss-as-is-zero": edge_seed(edge_payload(50), mode=0x80, mss=0),
    "raw-frame": edge_seed(bytes.fromhex("5255 0a000202 525400123456 0800 4500 0030 0001 0000 4006 0000")
                           + bytes([10, 0, 2, 2, 10, 0, 2, 15]) + bytes(28), mode=0x02, mss=3),
}


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

    arp_gateway = ethernet(BROADCAST, MAC, 0x0806, arp(1, MAC, LEASED, b"\0" * 6, GATEWAY))
    three = encode_stream([arp_gateway, frame(discover), arp_gateway[:14]])
    write("framer", "three-frames.stream", framer_seed(three))
    write("framer", "split-prefixes.stream", framer_seed(three, sizes=[1, 2, 3, 5, 41]))
    write("framer", "reads-of-7.stream", framer_seed(three, sizes=[7]))
    write("framer", "bad-length-13.stream", framer_seed(encode_stream([arp_gateway]) + struct.pack("!I", 13) + b"x" * 13))
    write("framer", "bad-length-65536.stream", framer_seed(struct.pack("!I", 65536) + arp_gateway, sizes=[2]))
    write("framer", "zero-length.stream", framer_seed(struct.pack("!I", 0)))
    write("framer", "largest-incomplete.stream", framer_seed(struct.pack("!I", 65535) + arp_gateway * 10, sizes=[100]))
    write("framer", "partial-prefix.stream", framer_seed(encode_stream([arp_gateway[:14]]) + b"\0\0"))

    for name, records in frames_seeds(frame(discover), frame(request)).items():
        write("frames", name + ".records", b"".join(records))

    for name, records in NAT_STREAM_SEEDS.items():
        write("nat-stream", name + ".records", records)

    for name, data in EDGE_SEEDS.items():
        write("edge", name + ".bin", data)

    for name, text in OPTION_STRINGS.items():
        write("options", name + ".opts", text.encode())

    for name, text in {**shipped_configs(), **CONFIGS}.items():
        write("config", name + ".toml", text.encode())


if __name__ == "__main__":
    main()
