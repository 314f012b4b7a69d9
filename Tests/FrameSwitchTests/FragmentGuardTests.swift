import FrameSwitch
import Testing

@Suite("IPv4 fragments for libslirp")
struct FragmentGuardTests {
    static let second: Int64 = 1_000_000_000

    /// A guard behind a reference, so `#expect` can call its mutating method.
    final class Checked {
        var guard_ = FragmentGuard()
        func admits(_ frame: [UInt8], now: Int64) -> Bool { guard_.admits(frame, now: now) }
        var dropped: Int { guard_.dropped }
        var tracked: Int { guard_.tracked }
    }

    /// A guest's IPv4 fragment to 10.0.2.2: `offset` in bytes, with a valid header checksum.
    static func fragment(id: UInt16 = 7, offset: Int, more: Bool, payload: Int = 16, ttl: UInt8 = 64,
                         source: UInt8 = 15, protocol proto: UInt8 = 17) -> [UInt8] {
        let flags = UInt16(more ? 0x2000 : 0) | UInt16(offset / 8)
        let total = 20 + payload
        var ip: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), UInt8(id >> 8), UInt8(id & 0xFF),
                           UInt8(flags >> 8), UInt8(flags & 0xFF), ttl, proto, 0, 0, 10, 0, 2, source, 10, 0, 2, 2]
        let sum = ~IPChecksum.sum(ip)
        ip[10] = UInt8(sum >> 8)
        ip[11] = UInt8(sum & 0xFF)
        return [0x52, 0x55, 10, 0, 2, 2, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00] + ip + [UInt8](repeating: 0, count: payload)
    }

    @Test("a last fragment with nothing before it is dropped; whole datagrams and other frames pass")
    func loneLast() {
        let guard_ = Checked()
        #expect(!guard_.admits(Self.fragment(offset: 136, more: false), now: 0))
        #expect(guard_.dropped == 1)
        #expect(guard_.admits(Self.fragment(offset: 0, more: false), now: 0))
        var arp = Self.fragment(offset: 136, more: false)
        arp[13] = 0x06
        #expect(guard_.admits(arp, now: 0))
        #expect(guard_.admits(Array(Self.fragment(offset: 136, more: false).prefix(33)), now: 0))
    }

    @Test("fragments in order, and out of order after a first one, pass; the datagram is then forgotten")
    func inOrder() {
        let guard_ = Checked()
        #expect(guard_.admits(Self.fragment(offset: 0, more: true), now: 0))
        #expect(guard_.admits(Self.fragment(offset: 16, more: true), now: 0))
        #expect(guard_.tracked == 1)
        #expect(guard_.admits(Self.fragment(offset: 32, more: false), now: Self.second))
        #expect(guard_.tracked == 0)
        // A second last fragment: libslirp may have completed and freed the queue.
        #expect(!guard_.admits(Self.fragment(offset: 32, more: false), now: Self.second))
        // A middle fragment first opens a queue too.
        #expect(guard_.admits(Self.fragment(id: 8, offset: 16, more: true), now: 0))
        #expect(guard_.admits(Self.fragment(id: 8, offset: 32, more: false), now: 0))
    }

    @Test("a queue is trusted for less than libslirp keeps it; other datagrams' fragments do not count")
    func lifetimeAndKeys() {
        let guard_ = Checked()
        #expect(guard_.admits(Self.fragment(offset: 0, more: true), now: 0))
        #expect(!guard_.admits(Self.fragment(offset: 16, more: false), now: FragmentGuard.lifetime))
        #expect(guard_.admits(Self.fragment(id: 1, offset: 0, more: true), now: 0))
        #expect(!guard_.admits(Self.fragment(id: 2, offset: 16, more: false), now: 0))
        #expect(!guard_.admits(Self.fragment(id: 1, offset: 16, more: false, source: 16), now: 0))
        #expect(!guard_.admits(Self.fragment(id: 1, offset: 16, more: false, protocol: 6), now: 0))
        #expect(guard_.admits(Self.fragment(id: 1, offset: 16, more: false), now: 0))
    }

    @Test("a whole datagram with the same key frees libslirp's queue, so the last fragment after it is dropped")
    func wholeDatagramFreesQueue() {
        let guard_ = Checked()
        #expect(guard_.admits(Self.fragment(offset: 0, more: true), now: 0))
        #expect(guard_.admits(Self.fragment(offset: 0, more: false), now: 0))
        #expect(!guard_.admits(Self.fragment(offset: 16, more: false), now: 0))
    }

    @Test("fragments libslirp drops before reassembly open nothing")
    func droppedEarlyOpenNothing() {
        var badSum = Self.fragment(offset: 0, more: true)
        badSum[24] ^= 0xFF
        var shortTotal = Self.fragment(offset: 0, more: true)
        shortTotal[17] = 19
        var longTotal = Self.fragment(offset: 0, more: true)
        longTotal[17] = 200
        for first in [badSum, shortTotal, longTotal, Self.fragment(offset: 0, more: true, ttl: 0)] {
            let guard_ = Checked()
            #expect(guard_.admits(first, now: 0))
            #expect(guard_.tracked == 0)
            #expect(!guard_.admits(Self.fragment(offset: 16, more: false), now: 0))
        }
    }

    @Test("the table is bounded: past it a new datagram's last fragment is dropped, and expired ones make room")
    func bounded() {
        let guard_ = Checked()
        for id in 0..<UInt16(FragmentGuard.capacity) { _ = guard_.admits(Self.fragment(id: id, offset: 0, more: true), now: 0) }
        #expect(guard_.tracked == FragmentGuard.capacity)
        #expect(guard_.admits(Self.fragment(id: 9999, offset: 0, more: true), now: 1))
        #expect(!guard_.admits(Self.fragment(id: 9999, offset: 16, more: false), now: 1))
        #expect(guard_.admits(Self.fragment(id: 9998, offset: 0, more: true), now: FragmentGuard.lifetime))
        #expect(guard_.tracked == 1)
        #expect(guard_.admits(Self.fragment(id: 9998, offset: 16, more: false), now: FragmentGuard.lifetime))
    }
}
