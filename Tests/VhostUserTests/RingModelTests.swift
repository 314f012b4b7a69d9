import Testing
import TestSupport
@testable import VhostUser

/// The RX queue against a model of Linux's virtio-net driver with mergeable buffers: a free
/// list of descriptors, buffers posted as descriptors come back, used entries taken lazily
/// (NAPI) and checked against what was posted. Thousands of random frames, sizes and
/// posting patterns; the device must never complete a chain twice or one never posted,
/// and each packet's num_buffers must match the used entries that carry it.
@Suite struct RingModelTests {
    final class LinuxRX {
        let g: FakeGuest
        var free: [UInt16]
        var outstanding: Set<UInt16> = []
        var usedSeen: UInt16 = 0
        /// Buffers of the packet being reassembled still to come, and its bytes so far.
        var remaining = 0
        var bytes = 0
        var packets: [Int] = []
        let slot = 4096

        init(_ g: FakeGuest) {
            self.g = g
            free = (0..<g.size).map { UInt16($0) }
        }

        func address(_ id: UInt16) -> Int { FakeGuest.bufferArea + Int(id) * slot }

        func post(_ count: Int, length: () -> Int) {
            for _ in 0..<min(count, free.count) {
                let id = free.removeLast()
                g.descriptor(0, Int(id), addr: UInt64(address(id)), len: UInt32(length()), flags: 2)
                outstanding.insert(id)
                g.makeAvailable(0, head: id)
            }
        }

        /// Takes up to `budget` used entries, as a NAPI poll would.
        func poll(_ budget: Int) {
            var n = 0
            while usedSeen != g.usedIndex[0], n < budget {
                let e = g.usedEntry(0, Int(usedSeen))
                usedSeen &+= 1
                n += 1
                let id = UInt16(e.id)
                #expect(outstanding.remove(id) != nil, "used id \(id) was not posted (or was used twice)")
                free.append(id)
                if remaining == 0 {
                    let header = g.read(address(id), 12)
                    remaining = Int(header[10]) | Int(header[11]) << 8
                    #expect(remaining >= 1)
                    bytes = 0
                }
                bytes += Int(e.len)
                remaining -= 1
                if remaining == 0 { packets.append(bytes - 12) }
            }
        }
    }

    @Test(arguments: [UInt64(1), 2, 3, 4])
    func rxNeverCompletesAChainTwiceOrOneNeverPosted(seed: UInt64) throws {
        var rng = SeededGenerator(state: seed)
        let g = try FakeGuest(size: 64)
        let linux = LinuxRX(g)
        var waiting: [Int] = []
        var sent: [Int] = []
        let largest = etherFrame(65_000)
        for _ in 0..<20_000 {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0...2:
                linux.post(Int.random(in: 1...64, using: &rng)) { Int.random(in: 1518...4096, using: &rng) }
            case 3...4:
                linux.poll(Int.random(in: 1...64, using: &rng))
            default:
                if waiting.isEmpty {
                    waiting.append(Int.random(in: 0..<4, using: &rng) == 0 ? Int.random(in: 60...1514, using: &rng)
                                                                            : Int.random(in: 1514...65_000, using: &rng))
                }
                // As flushVhost does: the oldest waiting frame first, until one has no room.
                while let n = waiting.first {
                    let result = try largest.withUnsafeBytes { try g.device.receive(UnsafeRawBufferPointer(rebasing: $0[0..<n]), mtu: 1500) }
                    if result == .noRoom { break }
                    waiting.removeFirst()
                    if result == .delivered { sent.append(n) }
                }
            }
            let ring = try #require(g.device.queues[0].ring)
            #expect(ring.lastAvail == ring.usedIndex, "between calls every chain taken is completed")
        }
        linux.poll(.max)
        #expect(linux.packets == sent)
        #expect(sent.count > 1000)
    }
}
