// fuzz-dhcp: the libFuzzer target for the DHCP code that reads guest-supplied bytes.
//
// Theory of operation. Each input goes, as it is, to every parser that takes a whole
// frame (DHCPMessage.parse, UDPDatagram.parse, DHCPServer.handle) and, as text, to the
// lease-file decoder. Mutated frames rarely keep their IPv4 and UDP lengths consistent,
// so the input is also sent as the BOOTP payload of a well-formed broadcast datagram
// to port 67: that is the path into the server's state machine (seeds exist in both
// forms). Each run builds its servers afresh, so a run depends on its input alone, as
// libFuzzer needs; a fixed lease table and a static lease give the state machine
// existing leases to collide with, and replaying the message later on (a retransmit,
// then after every lease expired) reaches the renew and expiry paths.
//
// Besides the crashes the sanitizers catch, the target traps when an invariant the
// code promises breaks: a parser must read the same from a slice that does not start
// at index 0, every reply the server sends must parse as a BOOTREPLY to the same
// transaction, and a lease table written out with encodeLeases must read back equal.

import FrameSwitch
import NetOptions
import NetServices

let serverMAC = MACAddress(raw: 0x5255_0A00_0202)
let clientMAC = MACAddress(raw: 0x5254_0012_3456)

let config = DHCPServerConfig(
    options: NetworkOptions(), mtu: nil,
    staticLeases: [
        StaticLease(mac: MACAddress(raw: 0x5254_0000_0009), address: IPv4Address(10, 0, 2, 9), hostname: "fixed"),
    ])

/// The clock the replays start from; any fixed value keeps runs reproducible.
let start: Int64 = 1_763_712_000

/// The seeds' client (52:54:00:12:34:56) holds 10.0.2.15, so the seeds' REQUEST, RELEASE
/// and DECLINE reach past "not your address"; another client's active lease and an
/// expired one give new clients something to collide with.
let knownLeases: [DHCPLease] = [
    DHCPLease(mac: clientMAC, address: IPv4Address(10, 0, 2, 15), hostname: "guest1",
              expires: start + 3600, isStatic: false),
    DHCPLease(mac: MACAddress(raw: 0x5254_00AA_0001), address: IPv4Address(10, 0, 2, 16), hostname: "other",
              expires: start + 3600, isStatic: false),
    DHCPLease(mac: MACAddress(raw: 0x5254_00AA_0002), address: IPv4Address(10, 0, 2, 17), hostname: nil,
              expires: start - 3600, isStatic: false),
]

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-dhcp invariant broken: \(what())") }
}

/// The same bytes at indices 3..., to catch reads that forget `startIndex`.
func offsetSlice(_ bytes: [UInt8]) -> ArraySlice<UInt8> {
    ([0xEE, 0xEE, 0xEE] + bytes)[3...]
}

/// `frame` through two identical servers, once as an Array and once as an offset slice;
/// both must answer the same.
func handleBoth(_ frame: [UInt8], _ a: inout DHCPServer, _ b: inout DHCPServer, now: Int64) {
    let fromArray = a.handle(frame: frame, now: now)
    let fromSlice = b.handle(frame: offsetSlice(frame), now: now)
    check(fromArray?.replies == fromSlice?.replies && fromArray?.events == fromSlice?.events,
          "DHCPServer.handle differs for an offset slice")
    guard let fromArray else { return }
    let request = DHCPMessage.parse(frame: frame)
    for reply in fromArray.replies {
        let parsed = DHCPMessage.parse(frame: reply)
        check(parsed?.op == 2, "a reply frame does not parse as a BOOTREPLY")
        check(parsed?.transactionID == request?.transactionID, "a reply carries another transaction ID")
        check(UDPDatagram.parse(frame: reply)?.sourcePort == 67, "a reply frame is not UDP from port 67")
    }
}

/// encodeLeases then decodeLeases gives back the same table.
func checkLeaseFileRoundTrip(_ server: DHCPServer) {
    let text = server.encodeLeases()
    check(DHCPServer.decodeLeases(text) == server.leases, "lease file does not round-trip:\n\(text)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))

    // The parsers alone, on the raw input.
    let message = DHCPMessage.parse(frame: input)
    check(DHCPMessage.parse(frame: offsetSlice(input)) == message, "DHCPMessage.parse differs for an offset slice")
    let datagram = UDPDatagram.parse(frame: input)
    check(UDPDatagram.parse(frame: offsetSlice(input)) == datagram, "UDPDatagram.parse differs for an offset slice")
    check(UDPDatagram.destinationPort(frame: input) == datagram?.destinationPort,
          "UDPDatagram.destinationPort disagrees with parse")

    // The lease file: whatever it yields must survive the server's filtering and a
    // write-out and read-back.
    let decoded = DHCPServer.decodeLeases(String(decoding: input, as: UTF8.self))
    checkLeaseFileRoundTrip(DHCPServer(config: config, serverMAC: serverMAC, leases: decoded))

    // The server: the raw input, then the input as a well-formed DHCP datagram, replayed.
    var a = DHCPServer(config: config, serverMAC: serverMAC, leases: knownLeases)
    var b = a
    handleBoth(input, &a, &b, now: start)
    let wrapped = UDPDatagram(
        sourceMAC: clientMAC, destinationMAC: .broadcast, addresses: .v4(source: 0, destination: 0xFFFF_FFFF),
        sourcePort: 68, destinationPort: 67, payload: input
    ).frame()
    for now in [start, start + 30, start + 200_000] {
        handleBoth(wrapped, &a, &b, now: now)
    }
    _ = a.activeLeases(now: start + 30)
    checkLeaseFileRoundTrip(a)
    return 0
}
