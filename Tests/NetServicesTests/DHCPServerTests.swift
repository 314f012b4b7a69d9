import FrameSwitch
import NetOptions
import TestSupport
import Testing

@testable import NetServices

/// Client frames and reply readers for the DHCP server tests. Namespaced, because other
/// test files in this target define helpers of their own.
enum DHCPTestKit {
    static let guestMAC = MACAddress(raw: 0x5254_0012_3456)
    /// libslirp's MAC for the gateway 10.0.2.2: 52:55 and the address.
    static let serverMAC = MACAddress(raw: 0x5255_0A00_0202)
    static let xid: UInt32 = 0x3C1D_9A42

    static func mac(_ n: Int) -> MACAddress { MACAddress(raw: 0x5254_00AA_0000 | UInt64(n)) }

    static func ip(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) -> UInt32 { IPv4Address(a, b, c, d).value }

    static func be32(_ v: UInt32) -> [UInt8] { DHCPFrameBuilder.bytes32(v) }

    /// A client message: Ethernet / IPv4 / UDP 68->67 / BOOTP, with `kind` as option 53
    /// (nil: plain BOOTP), option 12 `hostname`, 50 `requested`, 54 `serverID`, and a
    /// parameter request list, like the DISCOVER libslirp answered in the captures.
    static func message(
        _ kind: UInt8?, mac: MACAddress = guestMAC, xid: UInt32 = xid, ciaddr: UInt32 = 0,
        requested: UInt32? = nil, serverID: UInt32? = nil, hostname: String? = "guest",
        ipSource: UInt32 = 0, ipDestination: UInt32 = 0xFFFF_FFFF, ethDestination: MACAddress = .broadcast,
        parameters: [UInt8]? = [1, 3, 6, 26], vendorClass: String? = nil, clientID: [UInt8]? = nil,
        broadcastFlag: Bool = false
    ) -> [UInt8] {
        var options: [UInt8] = []
        if let kind { options += [53, 1, kind] }
        if let hostname { options += [12, UInt8(hostname.utf8.count)] + Array(hostname.utf8) }
        if let requested { options += [50, 4] + be32(requested) }
        if let serverID { options += [54, 4] + be32(serverID) }
        if let vendorClass { options += [60, UInt8(vendorClass.utf8.count)] + Array(vendorClass.utf8) }
        if let clientID { options += [61, UInt8(clientID.count)] + clientID }
        if let parameters { options += [55, UInt8(parameters.count)] + parameters }
        options.append(255)

        var bootp = [UInt8](repeating: 0, count: 236)
        bootp[0] = 1
        bootp[1] = 1
        bootp[2] = 6
        bootp.replaceSubrange(4..<8, with: be32(xid))
        bootp.replaceSubrange(12..<16, with: be32(ciaddr))
        if broadcastFlag { bootp[10] = 0x80 }
        bootp.replaceSubrange(28..<34, with: mac.bytes)
        bootp += [99, 130, 83, 99] + options
        let udpLength = 8 + bootp.count
        let udp: [UInt8] = [0, 68, 0, 67, UInt8(udpLength >> 8), UInt8(udpLength & 0xFF), 0, 0] + bootp
        let total = 20 + udp.count
        var ipHeader: [UInt8] = [0x45, 0x10, UInt8(total >> 8), UInt8(total & 0xFF), 0, 0, 0, 0, 64, 17, 0, 0]
            + be32(ipSource) + be32(ipDestination)
        let sum = ~IPChecksum.sum(ipHeader)
        ipHeader[10] = UInt8(sum >> 8)
        ipHeader[11] = UInt8(sum & 0xFF)
        return ethDestination.bytes + mac.bytes + [0x08, 0x00] + ipHeader + udp
    }


    /// The options of an untagged reply frame, in order.
    static func options(_ frame: [UInt8]) -> [(code: UInt8, value: [UInt8])] {
        var out: [(code: UInt8, value: [UInt8])] = []
        var i = 14 + 20 + 8 + 240
        while i < frame.count {
            let code = frame[i]
            if code == 255 { break }
            if code == 0 { i += 1; continue }
            guard i + 1 < frame.count else { break }
            let length = Int(frame[i + 1])
            guard i + 2 + length <= frame.count else { break }
            out.append((code, Array(frame[(i + 2)..<(i + 2 + length)])))
            i += 2 + length
        }
        return out
    }

    static func option(_ code: UInt8, in frame: [UInt8]) -> [UInt8]? {
        options(frame).first { $0.code == code }?.value
    }

    /// Option 119's value, reassembled from its pieces, decoded back to names.
    static func searchNames(in frame: [UInt8]) -> [String] {
        decodeSearchList(options(frame).filter { $0.code == 119 }.flatMap { $0.value })
    }

    /// RFC 1035 names, with pointers, one after another.
    static func decodeSearchList(_ data: [UInt8]) -> [String] {
        var names: [String] = []
        var start = 0
        while start < data.count {
            var labels: [String] = []
            var i = start
            var next: Int?
            var jumps = 0
            while i < data.count {
                let length = Int(data[i])
                if length == 0 {
                    if next == nil { next = i + 1 }
                    break
                }
                if length & 0xC0 == 0xC0 {
                    guard i + 1 < data.count, jumps < 64 else { return names }
                    if next == nil { next = i + 2 }
                    i = (length & 0x3F) << 8 | Int(data[i + 1])
                    jumps += 1
                    continue
                }
                guard i + 1 + length <= data.count else { return names }
                labels.append(String(decoding: data[(i + 1)..<(i + 1 + length)], as: UTF8.self))
                i += 1 + length
            }
            names.append(labels.joined(separator: "."))
            guard let n = next else { break }
            start = n
        }
        return names
    }

    static func yiaddr(_ frame: [UInt8]) -> UInt32 {
        frame[58..<62].reduce(0) { $0 << 8 | UInt32($1) }
    }

    static func kind(_ frame: [UInt8]) -> UInt8? { option(53, in: frame)?.first }

    static func server(_ text: String = "", mtu: Int? = nil, statics: [StaticLease] = [], leases: [DHCPLease] = []) throws -> DHCPServer {
        let options = try NetworkOptions.parse(text)
        return DHCPServer(config: DHCPServerConfig(options: options, mtu: mtu, staticLeases: statics), serverMAC: serverMAC, leases: leases)
    }

    /// DISCOVER then REQUEST of what was offered; the address bound, or nil.
    static func obtain(_ server: inout DHCPServer, mac: MACAddress, now: Int64 = 1000, hostname: String? = nil) -> UInt32? {
        guard let offer = server.handle(frame: message(1, mac: mac, hostname: hostname), now: now)?.replies.first else { return nil }
        let address = yiaddr(offer)
        let ack = server.handle(frame: message(3, mac: mac, requested: address, serverID: ip(10, 0, 2, 2), hostname: hostname), now: now)
        guard let reply = ack?.replies.first, kind(reply) == 5 else { return nil }
        return yiaddr(reply)
    }
}


@Suite("DHCP server")
struct DHCPServerTests {
    typealias K = DHCPTestKit

    @Test("OFFER and ACK are byte for byte libslirp 4.7's, default network")
    func slirpParity() throws {
        var server = try K.server()
        let offer = server.handle(frame: K.message(1), now: 0)
        #expect(offer?.replies == [libslirpDHCPReply(kind: 2)])
        #expect(offer?.events == [])
        let ack = server.handle(frame: K.message(3, requested: K.ip(10, 0, 2, 15), serverID: K.ip(10, 0, 2, 2)), now: 0)
        #expect(ack?.replies == [libslirpDHCPReply(kind: 5)])
        let lease = DHCPLease(mac: K.guestMAC, address: IPv4Address(10, 0, 2, 15), hostname: "guest", expires: 86400, isStatic: false)
        #expect(ack?.events == [.granted(lease)])
        #expect(server.leases == [lease])
    }

    @Test("a full DISCOVER / OFFER / REQUEST / ACK cycle, and what FrameSwitch's parser reads back")
    func cycle() throws {
        var server = try K.server("hostname=vm,domainname=example.test,dnssearch=a.example.test,dnssearch=example.test,tftp-server-name=boot.example.test,bootfile=pxelinux.0", mtu: 1400)
        let offerFrame = try #require(server.handle(frame: K.message(1, xid: 77), now: 50)?.replies.first)
        let offer = try #require(DHCPMessage.parse(frame: offerFrame))
        #expect(offer.kind == .offer)
        #expect(offer.transactionID == 77)
        #expect(offer.clientMAC == K.guestMAC)
        #expect(offer.yourAddress == K.ip(10, 0, 2, 15))
        #expect(offer.mtu == 1400)
        #expect(offer.hostname == "vm")
        #expect(K.options(offerFrame).map { $0.code } == [53, 54, 1, 3, 6, 51, 12, 15, 66, 67, 119, 26])
        #expect(K.option(15, in: offerFrame) == Array("example.test".utf8))
        #expect(K.option(66, in: offerFrame) == Array("boot.example.test".utf8))
        #expect(K.searchNames(in: offerFrame) == ["a.example.test", "example.test"])
        // The second name is only a pointer into the first.
        #expect(K.option(119, in: offerFrame)?.count == 16 + 2)
        #expect(Array(offerFrame[(42 + 108)..<(42 + 118)]) == Array("pxelinux.0".utf8))
        #expect(Array(offerFrame[(42 + 44)..<(42 + 61)]) == Array("boot.example.test".utf8))
        #expect(offerFrame.count == 590)

        let ackFrame = try #require(server.handle(frame: K.message(3, xid: 78, requested: offer.yourAddress, serverID: K.ip(10, 0, 2, 2)), now: 60)?.replies.first)
        let ack = try #require(DHCPMessage.parse(frame: ackFrame))
        #expect(ack.kind == .ack)
        #expect(ack.transactionID == 78)
        #expect(ack.leaseSeconds == 86400)
        #expect(server.activeLeases(now: 60).map(\.address) == [IPv4Address(10, 0, 2, 15)])
        #expect(server.activeLeases(now: 60 + 86400) == [])
    }

    @Test("the configuration is derived from the network options as libslirp derives it")
    func configuration() throws {
        let plain = DHCPServerConfig(options: NetworkOptions(), mtu: nil, staticLeases: [])
        #expect(plain.network.description == "10.0.2.0/24")
        #expect(plain.server == IPv4Address(10, 0, 2, 2))
        #expect(plain.router == IPv4Address(10, 0, 2, 2))
        #expect(plain.dns == IPv4Address(10, 0, 2, 3))
        #expect(plain.poolStart == IPv4Address(10, 0, 2, 15))
        #expect(plain.poolEnd == IPv4Address(10, 0, 2, 254))
        #expect(plain.leaseSeconds == 86400)
        #expect(plain.mtu == nil)

        let options = try NetworkOptions.parse(
            "restrict=on,hostname=h,domainname=d.test,dnssearch=a.test,bootfile=f,tftp-server-name=t,guestfwd=tcp:10.0.2.100:1-cmd:true")
        let config = DHCPServerConfig(options: options, mtu: 9000, staticLeases: [])
        #expect(config.router == nil)
        #expect(config.dns == nil)
        #expect(config.excluded == [IPv4Address(10, 0, 2, 2), IPv4Address(10, 0, 2, 3), IPv4Address(10, 0, 2, 100)])
        #expect(config.hostname == "h")
        #expect(config.domainName == "d.test")
        #expect(config.searchList == ["a.test"])
        #expect(config.bootfile == "f")
        #expect(config.tftpServerName == "t")
        #expect(config.mtu == 9000)
    }

    @Test("a /8 (net= without a mask) costs nothing until it fills")
    func bigNetwork() throws {
        var server = try K.server("net=10.0.0.0")
        #expect(server.config.poolEnd == IPv4Address(10, 255, 255, 254))
        let first = K.obtain(&server, mac: K.mac(1))
        #expect(first == K.ip(10, 0, 2, 15))
        let asked = server.handle(frame: K.message(1, mac: K.mac(2), requested: K.ip(10, 200, 0, 1)), now: 0)
        #expect(asked?.replies.first.map(K.yiaddr) == K.ip(10, 200, 0, 1))
    }

    @Test("restrict=on offers no router and no DNS, as libslirp")
    func restricted() throws {
        var server = try K.server("restrict=on")
        let offer = try #require(server.handle(frame: K.message(1), now: 0)?.replies.first)
        #expect(K.options(offer).map { $0.code } == [53, 54, 1, 51])
    }

    @Test("200 clients get 200 distinct addresses, far past libslirp's 16")
    func manyClients() throws {
        var server = try K.server()
        var seen: Set<UInt32> = []
        for n in 0..<200 {
            let address = try #require(K.obtain(&server, mac: K.mac(n)))
            #expect(seen.insert(address).inserted)
            #expect(address >= K.ip(10, 0, 2, 15) && address <= K.ip(10, 0, 2, 254))
        }
        #expect(server.leases.count == 200)
        // The /24 holds 240 pool addresses from .15 to .254: all of them go, then no more.
        for n in 200..<240 { #expect(K.obtain(&server, mac: K.mac(n)) != nil) }
        #expect(server.handle(frame: K.message(1, mac: K.mac(240)), now: 1000)?.events == [.poolFull(K.mac(240))])
    }

    @Test("the pool skips the gateway, DNS, guest-forward and static addresses")
    func poolSkips() throws {
        let statics = [StaticLease(mac: K.mac(900), address: IPv4Address(10, 0, 2, 6))]
        var server = try K.server("dhcpstart=10.0.2.1,guestfwd=tcp:10.0.2.5:80-cmd:true", statics: statics)
        var got: [UInt32] = []
        for n in 0..<4 { got.append(try #require(K.obtain(&server, mac: K.mac(n)))) }
        #expect(got == [K.ip(10, 0, 2, 1), K.ip(10, 0, 2, 4), K.ip(10, 0, 2, 7), K.ip(10, 0, 2, 8)])
    }

    @Test("a static lease is honoured, with its hostname, and never given to another")
    func staticLease() throws {
        let fixed = StaticLease(mac: K.mac(1), address: IPv4Address(10, 0, 2, 15), hostname: "db")
        var server = try K.server(statics: [fixed])
        let offer = try #require(server.handle(frame: K.message(1, mac: K.mac(1), requested: K.ip(10, 0, 2, 40)), now: 0)?.replies.first)
        #expect(K.yiaddr(offer) == K.ip(10, 0, 2, 15))
        #expect(K.option(12, in: offer) == Array("db".utf8))
        let ack = server.handle(frame: K.message(3, mac: K.mac(1), requested: K.ip(10, 0, 2, 15), serverID: K.ip(10, 0, 2, 2), hostname: "other"), now: 0)
        #expect(ack?.events == [.granted(DHCPLease(mac: K.mac(1), address: IPv4Address(10, 0, 2, 15), hostname: "db", expires: 86400, isStatic: true))])
        // Another client asking for the static address is refused and gets the next one.
        let nak = try #require(server.handle(frame: K.message(3, mac: K.mac(2), requested: K.ip(10, 0, 2, 15)), now: 0)?.replies.first)
        #expect(K.kind(nak) == 6)
        #expect(K.obtain(&server, mac: K.mac(2)) == K.ip(10, 0, 2, 16))
        // The static client asking for any other address is refused too.
        let wrong = try #require(server.handle(frame: K.message(3, mac: K.mac(1), requested: K.ip(10, 0, 2, 50)), now: 0)?.replies.first)
        #expect(K.kind(wrong) == 6)
    }

    @Test("a /28 runs out: poolFull and no reply")
    func exhaustion() throws {
        var server = try K.server("net=10.0.2.0/28,dhcpstart=10.0.2.4")
        // .4 to .14: 11 addresses.
        for n in 0..<11 { #expect(K.obtain(&server, mac: K.mac(n)) != nil) }
        let full = server.handle(frame: K.message(1, mac: K.mac(99)), now: 1000)
        #expect(full?.replies == [])
        #expect(full?.events == [.poolFull(K.mac(99))])
        // An expired lease frees its address for newcomers.
        #expect(K.obtain(&server, mac: K.mac(99), now: 1000 + 86400) != nil)
    }

    @Test("a hostname ends with its lease: after RELEASE or expiry a lease asked for without option 12 has none; a renewal keeps it")
    func hostnameEndsWithTheLease() throws {
        var server = try K.server()
        let first = try #require(K.obtain(&server, mac: K.mac(1), now: 1000, hostname: "vm"))
        #expect(server.activeLeases(now: 1000).map(\.hostname) == ["vm"])
        #expect(K.obtain(&server, mac: K.mac(1), now: 1100) == first)
        #expect(server.activeLeases(now: 1100).map(\.hostname) == ["vm"])
        _ = server.handle(frame: K.message(7, mac: K.mac(1), ciaddr: first, serverID: K.ip(10, 0, 2, 2), ipSource: first, ipDestination: K.ip(10, 0, 2, 2)), now: 1200)
        #expect(!server.encodeLeases().contains("vm"))
        #expect(K.obtain(&server, mac: K.mac(1), now: 1300) == first)
        #expect(server.activeLeases(now: 1300).map(\.hostname) == [nil])
        // Expiry likewise.
        #expect(K.obtain(&server, mac: K.mac(1), now: 1400, hostname: "vm2") == first)
        let later: Int64 = 1400 + 86400 + 1
        #expect(K.obtain(&server, mac: K.mac(1), now: later) == first)
        #expect(server.activeLeases(now: later).map(\.hostname) == [nil])
    }

    @Test("RELEASE frees the address; the client gets it back, others get it only when nothing else is left")
    func releaseAndReuse() throws {
        var server = try K.server("net=10.0.2.0/28,dhcpstart=10.0.2.4")
        let first = try #require(K.obtain(&server, mac: K.mac(1)))
        let release = server.handle(frame: K.message(7, mac: K.mac(1), ciaddr: first, serverID: K.ip(10, 0, 2, 2), ipSource: first, ipDestination: K.ip(10, 0, 2, 2)), now: 1100)
        #expect(release?.replies == [])
        #expect(release?.events == [.released(K.mac(1), IPv4Address(first))])
        #expect(server.activeLeases(now: 1100) == [])
        // A newcomer takes a never-used address first ...
        #expect(K.obtain(&server, mac: K.mac(2), now: 1200) == first + 1)
        // ... and the returning client gets its old one.
        #expect(K.obtain(&server, mac: K.mac(1), now: 1300) == first)
        // Released again, and the rest of the pool taken: now it is reused.
        _ = server.handle(frame: K.message(7, mac: K.mac(1), ciaddr: first, ipSource: first, ipDestination: K.ip(10, 0, 2, 2)), now: 1400)
        for n in 3..<12 { #expect(K.obtain(&server, mac: K.mac(n), now: 1500) != nil) }
        #expect(K.obtain(&server, mac: K.mac(50), now: 1500) == first)
        #expect(server.handle(frame: K.message(1, mac: K.mac(1)), now: 1500)?.events == [.poolFull(K.mac(1))])
    }

    @Test("a REQUEST for another server is ignored and withdraws the offer")
    func foreignServer() throws {
        var server = try K.server("net=10.0.2.0/28,dhcpstart=10.0.2.14")
        let offer = try #require(server.handle(frame: K.message(1, mac: K.mac(1)), now: 0)?.replies.first)
        #expect(K.yiaddr(offer) == K.ip(10, 0, 2, 14))
        // While offered, the only address is not for anybody else.
        #expect(server.handle(frame: K.message(1, mac: K.mac(2)), now: 0)?.events == [.poolFull(K.mac(2))])
        #expect(server.handle(frame: K.message(3, mac: K.mac(1), requested: K.ip(10, 0, 2, 14), serverID: K.ip(10, 0, 2, 9)), now: 1) == nil)
        #expect(K.obtain(&server, mac: K.mac(2), now: 2) == K.ip(10, 0, 2, 14))
        // A RELEASE or DECLINE naming another server is not ours either.
        #expect(server.handle(frame: K.message(7, mac: K.mac(2), ciaddr: K.ip(10, 0, 2, 14), serverID: K.ip(10, 0, 2, 9)), now: 3) == nil)
    }

    @Test("REQUESTs for addresses we cannot give are NAKed")
    func naks() throws {
        var server = try K.server()
        let a = try #require(K.obtain(&server, mac: K.mac(1)))
        for bad in [K.ip(192, 168, 1, 20), a, K.ip(10, 0, 2, 2), K.ip(10, 0, 2, 3), K.ip(10, 0, 2, 255), K.ip(10, 0, 2, 5)] {
            let reply = try #require(server.handle(frame: K.message(3, mac: K.mac(2), requested: bad), now: 1000)?.replies.first)
            let nak = try #require(DHCPMessage.parse(frame: reply))
            #expect(nak.kind == .nak, "\(IPv4Address(bad))")
            #expect(nak.yourAddress == 0)
            #expect(K.option(56, in: reply) == Array("requested address not available".utf8))
            #expect(Array(reply[0..<6]) == MACAddress.broadcast.bytes)
        }
        // INIT-REBOOT for a free pool address is fine (the server may have restarted).
        let ok = try #require(server.handle(frame: K.message(3, mac: K.mac(2), requested: K.ip(10, 0, 2, 100)), now: 1000)?.replies.first)
        #expect(K.kind(ok) == 5)
    }

    @Test("renewal: ciaddr, no options 50/54, answered by unicast")
    func renewal() throws {
        var server = try K.server()
        let a = try #require(K.obtain(&server, mac: K.mac(1), now: 0))
        let renew = server.handle(frame: K.message(3, mac: K.mac(1), ciaddr: a, ipSource: a, ipDestination: K.ip(10, 0, 2, 2), ethDestination: K.serverMAC), now: 40000)
        let reply = try #require(renew?.replies.first)
        #expect(K.kind(reply) == 5)
        #expect(Array(reply[0..<6]) == K.mac(1).bytes)
        #expect(Array(reply[30..<34]) == K.be32(a))
        let expires: Int64? = server.leases.first?.expires
        #expect(expires == 126_400)
        // A request to some other unicast address is not for this server.
        #expect(server.handle(frame: K.message(3, mac: K.mac(1), ciaddr: a, ipSource: a, ipDestination: K.ip(10, 0, 2, 9)), now: 40000) == nil)
    }

    @Test("INFORM gets options without a lease; BOOTP without option 53 gets an address")
    func informAndBootp() throws {
        var server = try K.server()
        let inform = server.handle(frame: K.message(8, mac: K.mac(1), ciaddr: K.ip(10, 0, 2, 77), ipSource: K.ip(10, 0, 2, 77), ipDestination: K.ip(10, 0, 2, 2)), now: 0)
        let reply = try #require(inform?.replies.first)
        #expect(K.kind(reply) == 5)
        #expect(K.yiaddr(reply) == 0)
        #expect(K.option(51, in: reply) == nil)
        #expect(K.option(1, in: reply) != nil)
        #expect(server.leases == [])

        let bootp = server.handle(frame: K.message(nil, mac: K.mac(2)), now: 0)
        #expect(bootp?.replies.first.map(K.yiaddr) == K.ip(10, 0, 2, 15))
        #expect(server.leases.count == 1)
    }

    @Test("DECLINE sets the address aside for a while")
    func decline() throws {
        var server = try K.server()
        let a = try #require(K.obtain(&server, mac: K.mac(1), now: 0))
        // Someone else's address cannot be declined.
        #expect(server.handle(frame: K.message(4, mac: K.mac(2), requested: a), now: 1)?.events == [])
        let declined = server.handle(frame: K.message(4, mac: K.mac(1), requested: a), now: 1)
        #expect(declined?.events == [.declined(K.mac(1), IPv4Address(a))])
        #expect(K.obtain(&server, mac: K.mac(1), now: 2) == a + 1)
        #expect(K.obtain(&server, mac: K.mac(3), now: 3) == a + 2)
        #expect(K.obtain(&server, mac: K.mac(4), now: 2 + DHCPServer.declineHoldSeconds) == a)
    }

    @Test("frames that are not requests to this server are left alone")
    func notForUs() throws {
        var server = try K.server()
        #expect(server.handle(frame: libslirpDHCPReply(kind: 2), now: 0) == nil)  // a reply
        #expect(server.handle(frame: [UInt8](repeating: 0, count: 60), now: 0) == nil)
        var tagged = K.message(1)
        tagged.insert(contentsOf: [0x81, 0x00, 0x00, 0x05], at: 12)
        #expect(DHCPMessage.parse(frame: tagged) != nil)
        #expect(server.handle(frame: tagged, now: 0) == nil)
        #expect(server.handle(frame: K.message(2), now: 0) == nil)  // OFFER type in a request
        #expect(server.leases == [])
    }

    @Test("leases survive encode and decode; bad lines are skipped")
    func persistence() throws {
        var server = try K.server(statics: [StaticLease(mac: K.mac(9), address: IPv4Address(10, 0, 2, 9), hostname: "fixed")])
        _ = K.obtain(&server, mac: K.mac(1), hostname: "web 1%é")
        _ = K.obtain(&server, mac: K.mac(2), hostname: nil)
        _ = K.obtain(&server, mac: K.mac(9))
        let text = server.encodeLeases()
        #expect(text.hasPrefix("slirpd-leases 1\n"))
        #expect(text.contains("52:54:00:aa:00:01 10.0.2.15 87400 dynamic web%201%25%C3%A9\n"))
        let decoded = DHCPServer.decodeLeases(text)
        #expect(decoded == server.leases)

        let damaged = text.split(separator: "\n").joined(separator: "\r\n") + "\r\n"
            + "garbage\n52:54:00:aa:00:07 10.0.2.300 5 dynamic\n52:54:00:aa:00:07 10.0.2.30 x dynamic\n"
            + "52:54:00:aa:00:07 10.0.2.30 5 maybe\n52:54:00:aa:00:07 10.0.2.30 5 dynamic bad%zz\n"
            + "52:54:00:aa:00:07 10.0.2.30 5 dynamic a b\n# comment\n\n52:54:00:aa:00:08 10.0.2.31 5 dynamic\n"
        let lenient = DHCPServer.decodeLeases(damaged)
        #expect(lenient == server.leases + [DHCPLease(mac: K.mac(8), address: IPv4Address(10, 0, 2, 31), hostname: nil, expires: 5, isStatic: false)])
        #expect(DHCPServer.decodeLeases("slirpd-leases 2\n52:54:00:aa:00:08 10.0.2.31 5 dynamic\n") == [])
        #expect(DHCPServer.decodeLeases("") == [])

        // A restarted server gives clients their addresses back.
        var restarted = try K.server(statics: [StaticLease(mac: K.mac(9), address: IPv4Address(10, 0, 2, 9))], leases: decoded)
        #expect(restarted.leases == server.leases)
        #expect(K.obtain(&restarted, mac: K.mac(3)) == K.ip(10, 0, 2, 17))
        #expect(K.obtain(&restarted, mac: K.mac(2), now: 200_000) == K.ip(10, 0, 2, 16))
    }

    @Test("loaded leases that no longer fit the configuration are dropped")
    func loadSanitizes() throws {
        let leases = [
            DHCPLease(mac: K.mac(1), address: IPv4Address(10, 0, 2, 20), hostname: nil, expires: 10, isStatic: false),
            DHCPLease(mac: K.mac(2), address: IPv4Address(10, 0, 2, 20), hostname: nil, expires: 20, isStatic: false),  // same address, later: wins
            DHCPLease(mac: K.mac(3), address: IPv4Address(192, 168, 0, 20), hostname: nil, expires: 20, isStatic: false),  // other network
            DHCPLease(mac: K.mac(4), address: IPv4Address(10, 0, 2, 3), hostname: nil, expires: 20, isStatic: false),  // the DNS address
            DHCPLease(mac: K.mac(5), address: IPv4Address(10, 0, 2, 30), hostname: nil, expires: 20, isStatic: true),  // no such static lease
        ]
        let server = try K.server(leases: leases)
        #expect(server.leases.map(\.mac) == [K.mac(2)])
    }

    @Test("option 119 encoding: pointers for shared suffixes, split past 255 bytes")
    func searchList() {
        let names = ["corp.example.com", "example.com", "lab.example.com.", "example.org"]
        let data = DHCPSearchList.encode(names)
        #expect(K.decodeSearchList(data) == ["corp.example.com", "example.com", "lab.example.com", "example.org"])
        #expect(data.count == 18 + 2 + 6 + 13)
        let long = (0..<12).map { "host\($0)-" + String(repeating: "x", count: 30) + ".test\($0)" }
        let options = DHCPSearchList.options(long)
        #expect(options.count > 255)
        var pieces: [UInt8] = []
        var i = 0
        while i < options.count {
            #expect(options[i] == 119)
            let length = Int(options[i + 1])
            pieces += options[(i + 2)..<(i + 2 + length)]
            i += 2 + length
        }
        #expect(K.decodeSearchList(pieces) == long)
    }

    @Test("5000 clients on a /16, each in about one step")
    func scale() throws {
        var server = try K.server("net=10.0.0.0/16")
        var seen: Set<UInt32> = []
        for n in 0..<5000 {
            let address = K.obtain(&server, mac: K.mac(n))
            #expect(address.map { seen.insert($0).inserted } == true)
        }
        #expect(server.leases.count == 5000)
    }

    @Test("random traffic from 40 clients on an 11-address pool keeps every invariant")
    func model() throws {
        var server = try K.server(
            "net=10.0.2.0/28,dhcpstart=10.0.2.4",
            statics: [StaticLease(mac: K.mac(0), address: IPv4Address(10, 0, 2, 9), hostname: "s")])
        var rng = SeededGenerator(state: 2132)
        var now: Int64 = 0
        for _ in 0..<20_000 {
            now += Int64.random(in: 0...600, using: &rng)
            let mac = K.mac(Int.random(in: 0..<40, using: &rng))
            let held = server.activeLeases(now: now).first { $0.mac == mac }?.address.value
            let some = K.ip(10, 0, 2, UInt8.random(in: 0...15, using: &rng))
            let frame: [UInt8]
            switch Int.random(in: 0..<6, using: &rng) {
            case 0: frame = K.message(1, mac: mac)
            case 1: frame = K.message(3, mac: mac, requested: some, serverID: K.ip(10, 0, 2, 2))
            case 2: frame = K.message(3, mac: mac, ciaddr: held ?? some, ipSource: held ?? some, ipDestination: K.ip(10, 0, 2, 2))
            case 3: frame = K.message(7, mac: mac, ciaddr: held ?? some)
            case 4: frame = K.message(4, mac: mac, requested: held ?? some)
            default: frame = K.message(3, mac: mac)
            }
            let before = server.activeLeases(now: now)
            let result = server.handle(frame: frame, now: now)
            let active = server.activeLeases(now: now)
            #expect(Set(active.map(\.address)).count == active.count)
            #expect(Set(active.map(\.mac)).count == active.count)
            for lease in active {
                let a = lease.address.value
                #expect(lease.isStatic == (lease.mac == K.mac(0)))
                #expect(lease.isStatic ? a == K.ip(10, 0, 2, 9) : (a >= K.ip(10, 0, 2, 4) && a <= K.ip(10, 0, 2, 14) && a != K.ip(10, 0, 2, 9)))
            }
            for reply in result?.replies ?? [] {
                let yiaddr = K.yiaddr(reply)
                switch K.kind(reply) {
                case 2:
                    // Never an address someone else holds.
                    #expect(!before.contains { $0.address.value == yiaddr && $0.mac != mac })
                case 5:
                    #expect(active.contains { $0.address.value == yiaddr && $0.mac == mac })
                case 6:
                    #expect(yiaddr == 0)
                default:
                    Issue.record("unexpected reply kind \(String(describing: K.kind(reply)))")
                }
            }
        }
    }

    @Test("arbitrary frames never trap")
    func fuzz() throws {
        var server = try K.server("net=10.0.2.0/28,dhcpstart=10.0.2.4")
        let seeds = [
            K.message(1), K.message(3, requested: K.ip(10, 0, 2, 4), serverID: K.ip(10, 0, 2, 2)),
            K.message(7, ciaddr: K.ip(10, 0, 2, 4)), K.message(4, requested: K.ip(10, 0, 2, 4)),
            K.message(8, ciaddr: K.ip(10, 0, 2, 9)), K.message(nil),
        ]
        var rng = SeededGenerator(state: 2131)
        var answered = 0
        for round in 0..<20_000 {
            var f = seeds[round % seeds.count]
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                // Mostly the client's identity and the options, so the server's logic runs.
                let hot = [6 + 5, 42 + 28 + 5, 42 + 12 + 3, 42 + 242, 42 + 246, 42 + 247, 42 + 248, 42 + 249, 42 + 250, 42 + 251]
                let i = Bool.random(using: &rng) ? (hot.randomElement(using: &rng) ?? 0) : Int.random(in: 0..<f.count, using: &rng)
                if i < f.count { f[i] = UInt8.random(in: 0...255, using: &rng) }
            }
            if Int.random(in: 0..<8, using: &rng) == 0 { f.removeLast(Int.random(in: 0..<f.count, using: &rng)) }
            if let result = server.handle(frame: f, now: Int64(round)) {
                answered += 1
                for reply in result.replies { #expect(reply.count == 590) }
            }
        }
        #expect(answered > 1000)
        #expect(server.leases.count <= 11)
        for _ in 0..<2000 {
            let junk = (0..<Int.random(in: 0..<600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            _ = server.handle(frame: junk, now: 0)
        }
    }
}
