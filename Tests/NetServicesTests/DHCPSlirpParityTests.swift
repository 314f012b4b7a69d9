import FrameSwitch
import NetOptions
import SlirpKit
import Testing

@testable import NetServices

/// The same DISCOVER and REQUEST to real libslirp and to DHCPServer: the replies must carry
/// the same options with the same values. Only DHCP goes into libslirp, which answers it
/// without any network traffic. Everything happens in one test, on one thread, because
/// libslirp keeps process-wide state.
@Suite("DHCP server against real libslirp", .serialized)
struct DHCPSlirpParityTests {
    typealias K = DHCPTestKit

    /// The option list, with 119 reassembled and decoded (libslirp may compress the names
    /// differently) and 67 left out (DHCPServer adds it; libslirp has the file field only).
    static func comparable(_ frame: [UInt8]) -> [String] {
        var out: [String] = []
        var search: [UInt8] = []
        for (code, value) in K.options(frame) {
            switch code {
            case 119: search += value
            case 67: break
            default: out.append("\(code)=\(value)")
            }
        }
        if !search.isEmpty { out.append("119=\(K.decodeSearchList(search))") }
        return out
    }

    static func slirpReplies(options: NetworkOptions, frames: [[UInt8]]) throws -> [[[UInt8]]] {
        let stack = try SlirpStack(options: options, mtu: 0)
        defer { stack.close() }
        var captured: [[UInt8]] = []
        stack.onOutput = { captured.append(Array($0)) }
        var replies: [[[UInt8]]] = []
        for frame in frames {
            captured = []
            frame.withUnsafeBytes { stack.input($0) }
            // Only UDP 67 -> 68 counts; libslirp may emit other frames (ARP) meanwhile.
            replies.append(captured.filter { $0.count > 42 && $0[12] == 0x08 && $0[13] == 0 && $0[23] == 17 && $0[35] == 67 && $0[37] == 68 })
        }
        return replies
    }

    @Test("OFFER, ACK and NAK options match libslirp's for several configurations")
    func parity() throws {
        let configurations = [
            "",
            "restrict=on",
            "net=192.168.76.0/24,host=192.168.76.1,dns=192.168.76.53,dhcpstart=192.168.76.100",
            "hostname=guest-vm,domainname=example.test,tftp-server-name=tftp.example.test,bootfile=boot/pxelinux.0",
            "dnssearch=corp.example.com,dnssearch=example.com,dnssearch=lab.example.com,dnssearch=example.org",
        ]
        for text in configurations {
            let options = try NetworkOptions.parse(text)
            let serverAddress = options.host.value
            let discover = K.message(1)
            let slirpFirst = try Self.slirpReplies(options: options, frames: [discover])
            let slirpOffer = try #require(slirpFirst.first?.first, "libslirp sent no OFFER for '\(text)'")
            let offered = K.yiaddr(slirpOffer)
            let request = K.message(3, requested: offered, serverID: serverAddress)
            let badRequest = K.message(3, mac: K.mac(5), requested: serverAddress)

            let slirp = try Self.slirpReplies(options: options, frames: [discover, request, badRequest])
            var ours = DHCPServer(
                config: DHCPServerConfig(options: options, mtu: nil, staticLeases: []), serverMAC: K.serverMAC)
            let ourOffer = ours.handle(frame: discover, now: 0)?.replies ?? []
            let ourAck = ours.handle(frame: request, now: 0)?.replies ?? []
            let ourNak = ours.handle(frame: badRequest, now: 0)?.replies ?? []

            #expect(slirp.map(\.count) == [1, 1, 1], "'\(text)'")
            #expect([ourOffer.count, ourAck.count, ourNak.count] == [1, 1, 1], "'\(text)'")
            guard let so = slirp[0].first, let sa = slirp[1].first, let sn = slirp[2].first,
                  let oo = ourOffer.first, let oa = ourAck.first, let on = ourNak.first else { continue }

            for (theirs, mine) in [(so, oo), (sa, oa)] {
                #expect(Self.comparable(mine) == Self.comparable(theirs), "'\(text)'")
                #expect(mine.count == theirs.count, "'\(text)'")
                // Ethernet and IP destinations, and the BOOTP header up to sname.
                #expect(Array(mine[0..<6]) == Array(theirs[0..<6]), "'\(text)'")
                #expect(Array(mine[26..<34]) == Array(theirs[26..<34]), "'\(text)'")
                #expect(Array(mine[42..<(42 + 44)]) == Array(theirs[42..<(42 + 44)]), "'\(text)'")
                // The file field (bootfile=).
                #expect(Array(mine[(42 + 108)..<(42 + 236)]) == Array(theirs[(42 + 108)..<(42 + 236)]), "'\(text)'")
            }
            #expect(K.kind(sn) == 6)
            #expect(K.kind(on) == 6)
            #expect(K.option(56, in: on) == K.option(56, in: sn))
        }
    }
}

/// Issue 23: the clients network boot firmware is, each with and without a parameter
/// request list, a client identifier and a hostname, against several boot configurations.
/// Every reply is compared with libslirp's header field by header field and option by
/// option. The one header difference allowed is `sname`, which DHCPServer fills with
/// `tftp-server-name=` (README, "DHCP and DNS"). An extension of the serialized suite
/// above, so that no two tests drive libslirp at once.
extension DHCPSlirpParityTests {

    struct Client: CustomStringConvertible {
        var vendorClass: String?
        var parameters: [UInt8]?
        var clientID: [UInt8]?
        var hostname: String?
        var description: String {
            "class=\(vendorClass ?? "-") params=\(parameters != nil) clientid=\(clientID != nil) hostname=\(hostname ?? "-")"
        }
    }

    static var clients: [Client] {
        // What EDK2, iPXE and U-Boot ask for, roughly: boot file, TFTP server, vendor class.
        let bootParameters: [UInt8] = [1, 3, 6, 12, 15, 26, 28, 43, 60, 66, 67, 119, 128, 129]
        var out: [Client] = []
        for vendorClass in [nil, "PXEClient:Arch:00000:UNDI:002001", "PXEClient:Arch:00007:UNDI:003016",
                            "HTTPClient:Arch:00016:UNDI:003000"] {
            for parameters in [bootParameters, nil] {
                for clientID in [[1, 0x52, 0x54, 0, 0x12, 0x34, 0x56], nil] as [[UInt8]?] {
                    for hostname in ["board7", nil] as [String?] {
                        out.append(Client(vendorClass: vendorClass, parameters: parameters, clientID: clientID, hostname: hostname))
                    }
                }
            }
        }
        return out
    }

    /// Header fields of a reply frame (Ethernet + 20-byte IPv4 + UDP) that must agree.
    static func header(_ frame: [UInt8]) -> [String: [UInt8]] {
        let b = 42
        return [
            "eth dst": Array(frame[0..<6]), "ip src": Array(frame[26..<30]), "ip dst": Array(frame[30..<34]),
            "udp ports": Array(frame[34..<38]), "op/htype/hlen/hops": Array(frame[b..<(b + 4)]),
            "xid": Array(frame[(b + 4)..<(b + 8)]), "secs": Array(frame[(b + 8)..<(b + 10)]),
            "flags": Array(frame[(b + 10)..<(b + 12)]), "ciaddr": Array(frame[(b + 12)..<(b + 16)]),
            "yiaddr": Array(frame[(b + 16)..<(b + 20)]), "siaddr": Array(frame[(b + 20)..<(b + 24)]),
            "giaddr": Array(frame[(b + 24)..<(b + 28)]), "chaddr": Array(frame[(b + 28)..<(b + 44)]),
            "file": Array(frame[(b + 108)..<(b + 236)]), "length": [UInt8(frame.count >> 8), UInt8(frame.count & 0xFF)],
        ]
    }

    static func differences(_ mine: [UInt8], _ theirs: [UInt8]) -> [String] {
        let a = header(mine), b = header(theirs)
        var out = a.keys.sorted().filter { a[$0] != b[$0] }.map { "\($0): ours \(a[$0]!) libslirp \(b[$0]!)" }
        let (x, y) = (DHCPSlirpParityTests.comparable(mine), DHCPSlirpParityTests.comparable(theirs))
        if x != y { out.append("options: ours \(x) libslirp \(y)") }
        return out
    }

    @Test("OFFER, ACK and NAK for PXE, HTTP and plain clients match libslirp's")
    func bootClients() throws {
        let configurations = [
            "",
            "tftp=/srv/tftp,bootfile=pxelinux.0",
            "tftp-server-name=tftp.example.test,bootfile=efi/grubx64.efi,hostname=node",
            "bootfile=http://10.0.2.2:8080/EFI/BOOT/BOOTX64.EFI",
            "bootfile=http://10.0.2.2/boot.efi,restrict=on,domainname=boot.test,dnssearch=boot.test",
        ]
        var compared = 0
        for text in configurations {
            let options = try NetworkOptions.parse(text)
            let server = options.host.value
            for client in Self.clients {
                func message(_ kind: UInt8, mac: MACAddress = K.guestMAC, requested: UInt32? = nil, serverID: UInt32? = nil) -> [UInt8] {
                    K.message(kind, mac: mac, requested: requested, serverID: serverID, hostname: client.hostname,
                              parameters: client.parameters, vendorClass: client.vendorClass, clientID: client.clientID)
                }
                let discover = message(1)
                let first = try DHCPSlirpParityTests.slirpReplies(options: options, frames: [discover])
                let offer = try #require(first.first?.first, "libslirp sent no OFFER for '\(text)' \(client)")
                let request = message(3, requested: K.yiaddr(offer), serverID: server)
                let bad = message(3, mac: K.mac(9), requested: server)
                let slirp = try DHCPSlirpParityTests.slirpReplies(options: options, frames: [discover, request, bad])
                var ours = DHCPServer(config: DHCPServerConfig(options: options, mtu: nil, staticLeases: []), serverMAC: K.serverMAC)
                let mine = [discover, request, bad].map { ours.handle(frame: $0, now: 0)?.replies ?? [] }
                #expect(slirp.map(\.count) == [1, 1, 1], "'\(text)' \(client)")
                #expect(mine.map(\.count) == [1, 1, 1], "'\(text)' \(client)")
                for (step, (theirs, ours)) in zip(["OFFER", "ACK", "NAK"], zip(slirp, mine)) {
                    guard let t = theirs.first, let o = ours.first else { continue }
                    var diff = Self.differences(o, t)
                    if step == "NAK" {
                        // Known and kept (README): libslirp's NAK carries siaddr, yiaddr
                        // 255.255.255.255 and no option 54; RFC 2131 table 3 wants both
                        // addresses 0 and option 54, as ours has.
                        let s = server
                        let known = ["siaddr: ours [0, 0, 0, 0] libslirp \(K.be32(s))",
                                     "yiaddr: ours [0, 0, 0, 0] libslirp [255, 255, 255, 255]",
                                     "options: ours [\"53=[6]\", \"54=\(K.be32(s))\", \"56=\(Array(DHCPFrameBuilder.nakMessage.utf8))\"] libslirp [\"53=[6]\", \"56=\(Array(DHCPFrameBuilder.nakMessage.utf8))\"]"]
                        #expect(diff == known, "NAK for '\(text)' \(client)")
                        diff = []
                    }
                    #expect(diff.isEmpty, "\(step) for '\(text)' \(client): \(diff)")
                    // sname: libslirp leaves it empty; ours names tftp-server-name= (README).
                    let sname = (o[(42 + 44)..<(42 + 108)], t[(42 + 44)..<(42 + 108)])
                    #expect(sname.1.allSatisfy { $0 == 0 })
                    let name = step == "NAK" ? [] : Array((options.tftpServerName ?? "").utf8)
                    #expect(Array(sname.0.prefix { $0 != 0 }) == name, "\(step) sname for '\(text)'")
                    compared += 1
                }
            }
        }
        #expect(compared == 5 * 32 * 3)
    }

    @Test("option 60 HTTPClient exactly when the boot file is an http:// URL, as libslirp")
    func httpClientClass() throws {
        for (text, expected) in [("bootfile=http://10.0.2.2/a.efi", Array("HTTPClient".utf8)),
                                 ("bootfile=pxelinux.0", nil), ("bootfile=https://10.0.2.2/a.efi", nil)] as [(String, [UInt8]?)] {
            let options = try NetworkOptions.parse(text)
            var ours = DHCPServer(config: DHCPServerConfig(options: options, mtu: nil, staticLeases: []), serverMAC: K.serverMAC)
            let offer = try #require(ours.handle(frame: K.message(1, vendorClass: "HTTPClient:Arch:00016:UNDI:003000"), now: 0)?.replies.first)
            #expect(K.option(60, in: offer) == expected, "'\(text)'")
        }
    }
}
