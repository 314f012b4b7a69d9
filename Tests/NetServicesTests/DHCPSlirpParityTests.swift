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
