// fuzz-vhost: the libFuzzer target for the vhost-user back end (Sources/VhostUser): the
// split-ring parser on random rings in fake guest memory, and the message handler on
// random message streams.
//
// Theory of operation. The first byte picks a mode.
// - Rings (bit 7 clear): guest memory is two heap regions of 2 KiB each (guest-physical
//   0 and 2 KiB, so buffers can cross from one to the next), filled from the input; the
//   queue size, ring placement and features come from the first bytes. Both queues are
//   set up through real messages, then TX is drained and frames of input-chosen sizes are
//   offered to RX until the guest has no room. ASan traps any access outside the two
//   regions; the target traps when a TX frame is larger than the scratch, when the used
//   index moves by more than the chains taken, or when RX reports a delivery the used
//   ring does not show.
// - Messages (bit 7 set): the rest is a byte stream of vhost-user messages, each given
//   the descriptors its header's low bits ask for; every descriptor handed over must end
//   up closed or kept by the device (none lost), and after `close()` all are closed.

import DataPlane
import VhostUser

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-vhost invariant broken: \(what())") }
}

final class Region: MappedRegion {
    let base: UnsafeMutableRawPointer
    let length: Int
    init(_ bytes: ArraySlice<UInt8>, length: Int) {
        self.length = length
        base = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 64)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: length)
        bytes.prefix(length).withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
    deinit { base.deallocate() }
}

final class Platform: VhostUserPlatform {
    var regions: [Int32: Region] = [:]
    var closed: [Int32] = []
    /// Message mode: any descriptor maps to fresh zeroed memory of the length asked, up to 64 KiB.
    var mapsAny = false
    func map(descriptor: Int32, length: Int) throws(VhostUserError) -> any MappedRegion {
        if mapsAny, length <= 65536 { return Region([], length: length) }
        guard let r = regions[descriptor], length <= r.length else { throw VhostUserError(.mapping, "fake") }
        return r
    }
    func close(descriptor: Int32) { closed.append(descriptor) }
}

func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

let half = 2048
let userBase: UInt64 = 0x7F00_0000_0000
// libFuzzer runs one input at a time on one thread: the scratch is never shared.
nonisolated(unsafe) let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 12 + VhostUserDevice.maximumFrame, alignment: 16)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard input.count >= 8 else { return 0 }
    if input[0] & 0x80 != 0 { fuzzMessages(input) } else { fuzzRings(input) }
    return 0
}

func message(_ request: UInt32, _ payload: [UInt8], fds: [Int32] = []) -> VhostUserMessage {
    VhostUserMessage(request: request, payload: payload, descriptors: fds)
}

func fuzzRings(_ input: [UInt8]) {
    let platform = Platform()
    let body = input[8...]
    platform.regions[1] = Region(body, length: half)
    platform.regions[2] = Region(body.dropFirst(half), length: half)
    let device = VhostUserDevice(platform: platform)
    let flags = input[0]
    var features = VhostUserDevice.offeredFeatures
    if flags & 1 != 0 { features &= ~VhostUserDevice.Feature.mrgRXBuf.bit }
    if flags & 2 != 0 { features &= ~VhostUserDevice.Feature.eventIdx.bit }
    if flags & 4 != 0 { features &= ~(VhostUserDevice.Feature.version1.bit | VhostUserDevice.Feature.mrgRXBuf.bit) }
    if flags & 8 != 0 { features &= ~VhostUserDevice.Feature.guestTSO6.bit }
    let queueSize = 1 << Int(1 + input[1] % 5)
    do throws(VhostUserError) {
        _ = try device.handle(message(2, le64(features)))
        var table = le32(2) + le32(0)
        table += le64(0) + le64(UInt64(half)) + le64(userBase) + le64(0)
        table += le64(UInt64(half)) + le64(UInt64(half)) + le64(userBase + 0x100_0000) + le64(0)
        _ = try device.handle(message(5, table, fds: [1, 2]))
        for q in 0..<2 {
            // Ring placement in the first region, 8-byte steps, chosen by the input.
            let at = { (i: Int) -> UInt64 in userBase + UInt64(Int(input[2 + 3 * q + i]) * 8) }
            _ = try device.handle(message(8, le32(UInt32(q)) + le32(UInt32(queueSize))))
            _ = try device.handle(message(10, le32(UInt32(q)) + le32(UInt32(input[1] >> 4))))
            _ = try device.handle(message(9, le32(UInt32(q)) + le32(0) + le64(at(0)) + le64(at(1)) + le64(at(2)) + le64(0)))
            _ = try device.handle(message(12, le64(UInt64(q)), fds: [Int32(10 + q)]))
            _ = try device.handle(message(18, le32(UInt32(q)) + le32(1)))
        }
    } catch {
        return
    }
    do {
        for _ in 0..<4 {
            let before = device.queues[1].size
            let (count, _) = try device.transmit(scratch: scratch, limit: 64) { chain in
                switch chain {
                case .frame(let f): check(f.count <= VhostUserDevice.maximumFrame, "a TX frame of \(f.count) bytes")
                case .udpSegments(let f, let h): h.udpSegments(f) { check($0.count <= f.count, "a UDP segment longer than its super-frame") }
                case .malformed: break
                }
            }
            check(count <= 64 && before == device.queues[1].size, "TX took \(count) chains")
        }
        var sizes = input.suffix(16).makeIterator()
        var frame = [UInt8](repeating: 0xAB, count: 70_000)
        frame.replaceSubrange(0..<14, with: [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x55, 10, 0, 2, 2, 0x88, 0xB5])
        for _ in 0..<16 {
            guard let s = sizes.next() else { break }
            let length = 14 + Int(s) * 257
            let result = try frame.withUnsafeBytes { all in
                try device.receive(UnsafeRawBufferPointer(rebasing: all[0..<length]), mtu: 1500)
            }
            if result == .noRoom { break }
        }
        device.takeNotifications { _ in }
    } catch {
        // A bad ring: the daemon would close the connection. Nothing else to check.
    }
    device.close()
}

func fuzzMessages(_ input: [UInt8]) {
    let platform = Platform()
    platform.mapsAny = true
    let device = VhostUserDevice(platform: platform)
    var assembler = MessageAssembler()
    var handed: [Int32] = []
    var nextFD: Int32 = 100
    var at = 1
    // Each message: 12 header bytes then its payload; fds per message from the header's
    // flags bits 4-7 (which the protocol leaves unused), at most 3 per read.
    outer: while at < input.count {
        let wanted = min(assembler.wanted, input.count - at)
        var fds: [Int32] = []
        if !assembler.isMidMessage, at + 4 < input.count {
            for _ in 0..<Int(input[at + 4] >> 4 & 3) {
                fds.append(nextFD)
                nextFD += 1
            }
        }
        handed += fds
        let chunk = input[at..<(at + wanted)]
        at += wanted
        do {
            guard let m = try chunk.withUnsafeBytes({ b in try assembler.received(b, descriptors: fds) }) else { continue }
            _ = try device.handle(m)
        } catch {
            for fd in assembler.takeDescriptors() { platform.close(descriptor: fd) }
            break outer
        }
    }
    for fd in assembler.takeDescriptors() { platform.close(descriptor: fd) }
    let kept = device.queues.flatMap { [$0.kick, $0.call, $0.err].compactMap { $0 } }
    let accounted = Set(platform.closed + kept)
    for fd in handed { check(accounted.contains(fd), "descriptor \(fd) neither closed nor kept") }
    device.close()
    for fd in handed { check(platform.closed.contains(fd), "descriptor \(fd) still open after close()") }
}
