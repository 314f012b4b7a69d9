import FrameSwitch
import NetOptions
import Testing

@testable import NetServices

/// One port posing as many clients (DHCP starvation): the per-port cap and short offers.
@Suite("DHCP per-port cap")
struct DHCPPortCapTests {
    typealias K = DHCPTestKit
    static let flooder = PortID(7), other = PortID(8)

    static func discover(_ server: inout DHCPServer, _ mac: MACAddress, _ port: PortID, now: Int64) -> (replies: [[UInt8]], events: [DHCPEvent])? {
        server.handle(frame: K.message(1, mac: mac), now: now, port: port)
    }

    static func request(_ server: inout DHCPServer, _ mac: MACAddress, _ address: UInt32, _ port: PortID, now: Int64) -> UInt8? {
        server.handle(frame: K.message(3, mac: mac, requested: address, serverID: K.ip(10, 0, 2, 2)), now: now, port: port)?
            .replies.first.flatMap(K.kind)
    }

    @Test("a port gets at most max-macs offers; the next client is refused and another port still leases")
    func offersCapped() throws {
        var server = try K.server("max-macs=3")
        for n in 0..<3 {
            #expect(Self.discover(&server, K.mac(n), Self.flooder, now: 100)?.replies.count == 1)
        }
        for n in 3..<300 {
            let result = Self.discover(&server, K.mac(n), Self.flooder, now: 100)
            #expect(result?.replies == [])
            #expect(result?.events == [.portCap(K.mac(n), Self.flooder)])
        }
        #expect(server.pendingOffers == 3)
        var other = server
        let offer = try #require(Self.discover(&other, K.mac(1000), Self.other, now: 100)?.replies.first)
        #expect(Self.request(&other, K.mac(1000), K.yiaddr(offer), Self.other, now: 101) == 5)
    }

    @Test("offers expire within seconds and free the port's places; leases count until they expire or go")
    func offersExpire() throws {
        var server = try K.server("max-macs=2")
        let first = try #require(Self.discover(&server, K.mac(1), Self.flooder, now: 100)?.replies.first)
        #expect(Self.request(&server, K.mac(1), K.yiaddr(first), Self.flooder, now: 100) == 5)
        #expect(Self.discover(&server, K.mac(2), Self.flooder, now: 100)?.replies.count == 1)
        #expect(Self.discover(&server, K.mac(3), Self.flooder, now: 101)?.events == [.portCap(K.mac(3), Self.flooder)])
        // The offer to mac 2 is gone after offerHoldSeconds: mac 3 fits; the lease of mac 1 still counts.
        let later = 100 + DHCPServer.offerHoldSeconds
        #expect(DHCPServer.offerHoldSeconds <= 10)
        #expect(server.pendingOffers == 1)
        #expect(Self.discover(&server, K.mac(3), Self.flooder, now: later)?.replies.count == 1)
        #expect(server.pendingOffers == 1)
        #expect(Self.discover(&server, K.mac(4), Self.flooder, now: later)?.events == [.portCap(K.mac(4), Self.flooder)])
        // The leased client renews whatever the cap: it is one of the port's clients.
        #expect(Self.request(&server, K.mac(1), K.yiaddr(first), Self.flooder, now: later) == 5)
    }

    @Test("a late REQUEST still gets its address when nobody took it after the offer expired")
    func lateRequest() throws {
        var server = try K.server()
        let offer = try #require(Self.discover(&server, K.mac(1), Self.other, now: 100)?.replies.first)
        #expect(Self.request(&server, K.mac(1), K.yiaddr(offer), Self.other, now: 100 + 3 * DHCPServer.offerHoldSeconds) == 5)
    }

    @Test("a port that leaves drops its offers at once; its clients' leases move with them")
    func portLeaves() throws {
        var server = try K.server("max-macs=1")
        let offer = try #require(Self.discover(&server, K.mac(1), Self.flooder, now: 100)?.replies.first)
        #expect(Self.request(&server, K.mac(1), K.yiaddr(offer), Self.flooder, now: 100) == 5)
        #expect(Self.discover(&server, K.mac(2), Self.flooder, now: 100)?.events == [.portCap(K.mac(2), Self.flooder)])
        #expect(Self.discover(&server, K.mac(3), Self.other, now: 100)?.replies.count == 1)
        server.removePort(Self.other)
        #expect(server.pendingOffers == 0)
        server.removePort(Self.flooder)
        // The guest is back on a new port and renews; that port is then full.
        #expect(Self.request(&server, K.mac(1), K.yiaddr(offer), Self.other, now: 200) == 5)
        #expect(Self.discover(&server, K.mac(4), Self.other, now: 200)?.events == [.portCap(K.mac(4), Self.other)])
    }

    @Test("static leases are never capped")
    func staticsExempt() throws {
        let fixed = StaticLease(mac: K.mac(9), address: IPv4Address(10, 0, 2, 50))
        var server = try K.server("max-macs=1", statics: [fixed])
        #expect(Self.discover(&server, K.mac(1), Self.flooder, now: 100)?.replies.count == 1)
        let offer = try #require(Self.discover(&server, K.mac(9), Self.flooder, now: 100)?.replies.first)
        #expect(K.yiaddr(offer) == K.ip(10, 0, 2, 50))
    }

    @Test("a flood of 600 MACs on one port never keeps another port from leasing or renewing")
    func floodWhileOthersLease() throws {
        var server = try K.server()
        let first = try #require(K.obtain(&server, mac: K.mac(5000), now: 0))
        var now: Int64 = 1
        for round in 0..<6 {
            for n in 0..<100 { _ = Self.discover(&server, K.mac(round * 100 + n), Self.flooder, now: now) }
            // A new guest on a port of its own.
            let port = PortID(100 + UInt32(round))
            let offer = try #require(Self.discover(&server, K.mac(6000 + round), port, now: now)?.replies.first)
            #expect(Self.request(&server, K.mac(6000 + round), K.yiaddr(offer), port, now: now) == 5)
            #expect(server.handle(frame: K.message(3, mac: K.mac(5000), ciaddr: first, ipSource: first), now: now, port: PortID(9))?
                .replies.first.flatMap(K.kind) == 5)
            now += 1
        }
        #expect(server.activeLeases(now: now).count == 7)
    }
}
