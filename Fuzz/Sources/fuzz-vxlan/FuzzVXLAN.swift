// fuzz-vxlan: the libFuzzer target for VXLAN decapsulation and the uplink's frame path
// (DataPlane's VXLAN.swift and FramePathUplink.swift), what a remote host (or anyone who
// can send UDP to the uplink's port) controls.
//
// Theory of operation. The input is a sequence of datagrams (a 2-byte length, then the
// bytes; the first byte of each picks whether it gets a valid header for the VNI) fed to
// `VXLANHeader.decode` and, when that accepts, to `FramePath.fromUplink` of a network with
// one local guest. Between them, local guest frames from the input go through `fromGuest`.
// The target traps when a promise breaks:
// - decode accepts only an 8-byte header with flags 0x08 and the VNI, and the frame's
//   range lies inside the datagram, at offset 8, with at least an Ethernet header;
// - a frame from the uplink never reaches libslirp or slirpd's services and is never sent
//   back to the uplink; one delivered to the guest was not for a NAT MAC and was not DHCP;
// - the guest's frames for the uplink are never for a NAT MAC, never DHCP, and never
//   larger than the uplink MTU plus the Ethernet header.

import DataPlane
import FrameSwitch

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-vxlan invariant broken: \(what())") }
}

let vni: UInt32 = 42

final class Sink: FramePathSink {
    var delivered = 0
    var lastDelivered: [UInt8] = []
    var toNAT = 0
    var served = 0
    var uplink: [[UInt8]] = []
    var flowLimits = FlowLimits(tcp: 16, udp: 16, icmp: 16, dnsTCP: 4)
    func deliver(_ frame: UnsafeRawBufferPointer, to port: PortID) {
        delivered += 1
        lastDelivered = Array(frame)
    }
    func send(_ frame: [UInt8], to port: PortID) {}
    func inputToNAT(_ frame: UnsafeRawBufferPointer) { toNAT += 1 }
    func serveLocally(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, from port: PortID) -> Bool {
        served += 1
        return false
    }
    func isShortOfDescriptors(now: Int64) -> Bool { false }
    func frameEvent(_ event: FramePathEvent) {}
    func toUplink(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) { uplink.append(Array(frame)) }
}

func isDHCP(_ f: [UInt8]) -> Bool {
    guard f.count >= 38, f[12] == 8, f[13] == 0, f[14] >> 4 == 4, f[23] == 17 else { return false }
    let ihl = Int(f[14] & 0x0F) * 4
    guard f.count >= 14 + ihl + 4 else { return false }
    let s = Int(f[14 + ihl]) << 8 | Int(f[15 + ihl]), d = Int(f[16 + ihl]) << 8 | Int(f[17 + ihl])
    return (s == 68 && d == 67) || (s == 67 && d == 68)
}

func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    let path = FramePath(natPort: PortID(0), settings: FramePath.Settings(isolateGuests: false, ipv6: true,
                                                                          network: 0x0A00_0200, mask: 0xFFFF_FF00))
    path.security = PortSecurity(addresses: PortSecurity.Addresses(network: 0x0A00_0200, mask: 0xFFFF_FF00,
                                                                   reserved: [0x0A00_0202, 0x0A00_0203], reserved6: []))
    let guest = PortState(id: PortID(1), closesOnDuplicateMAC: false)
    path.addPort(guest)
    path.uplinkPort = PortID(9)
    path.uplinkMTU = 1500
    let sink = Sink()
    var at = 0
    var now: Int64 = 1_000_000_000
    while at + 3 <= size {
        let length = Int(input[at]) << 8 | Int(input[at + 1])
        let kind = input[at + 2]
        at += 3
        let body = Array(input[at..<min(size, at + length)])
        at += body.count
        now += 1_000_000
        if kind & 1 == 1 {
            // A local guest's frame.
            let before = sink.uplink.count
            if let header = body.withUnsafeBytes({ EthernetHeader($0) }) {
                body.withUnsafeBytes { path.fromGuest($0, header, from: guest, now: now, sink: sink) }
            }
            for f in sink.uplink[before...] {
                check(f.count >= 14, "a runt frame for the uplink")
                let dst = MACAddress(raw: f.prefix(6).reduce(0) { $0 << 8 | UInt64($1) })
                check(!EthernetSwitch.isNATMAC(dst), "a frame for the NAT's MAC went to the uplink")
                check(!isDHCP(f), "DHCP went to the uplink")
                check(f.count - 14 <= 1500, "a frame above the uplink MTU went out: \(f.count)")
            }
            continue
        }
        // A datagram from a remote: a valid header for the VNI, or the raw bytes.
        let datagram = kind & 2 == 0 ? body.withUnsafeBytes { VXLANHeader.encapsulate($0, vni: vni) } : body
        let decoded = datagram.withUnsafeBytes { VXLANHeader.decode($0, vni: vni) }
        guard case .success(let range) = decoded else { continue }
        check(datagram.count >= 22 && datagram[0] == 0x08, "decode accepted bad flags or a runt")
        check(Int(datagram[4]) << 16 | Int(datagram[5]) << 8 | Int(datagram[6]) == Int(vni), "decode accepted another VNI")
        check(range == 8..<datagram.count, "decode's range is not the rest of the datagram")
        let nat = sink.toNAT, served = sink.served, uplink = sink.uplink.count, delivered = sink.delivered
        let frame = Array(datagram[range])
        let dropped = frame.withUnsafeBytes { path.fromUplink($0, EthernetHeader($0)!, now: now, sink: sink) }
        check(sink.toNAT == nat && sink.served == served, "a frame from the uplink reached libslirp or slirpd's services")
        check(sink.uplink.count == uplink, "a frame from the uplink went back to the uplink")
        if sink.delivered > delivered {
            check(dropped == nil, "a dropped frame was delivered")
            let dst = MACAddress(raw: frame.prefix(6).reduce(0) { $0 << 8 | UInt64($1) })
            check(!EthernetSwitch.isNATMAC(dst) && !isDHCP(frame), "gateway traffic from the uplink reached the guest")
        }
        if now % 7 == 0 { path.housekeeping(now: now) }
    }
    return 0
}
