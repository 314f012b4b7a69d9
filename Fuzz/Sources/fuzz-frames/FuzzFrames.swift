// fuzz-frames: the libFuzzer target for the whole path of a guest's frames into a
// network: the stream reader and framer, the MAC-learning switch, ARP and NDP answering,
// DHCP snooping, slirpd's own DHCP and DNS servers, and libslirp's input.
//
// Theory of operation. One network (SlirpDaemon's FrameFuzzNetwork: restrict=on, no
// endpoints) serves the whole process; each input starts by detaching its guests. An
// input is a list of records: a byte whose low bits pick one of three guests (modulo 3)
// and whose top bit says "raw", a 2-byte big-endian length, then that many bytes (fewer
// at the end of the input). A record is one frame, sent with QEMU's length prefix; a raw
// record goes on the stream as it is, so frames can be split across records, or follow a
// bad prefix. After each record every guest's side is read out. The harness keeps a copy
// of each guest's stream, decoded here from the format alone, to know which frames the
// network must have received.
//
// Besides the crashes the sanitizers catch (in slirpd's Swift, and in libslirp's C, which
// is not instrumented), the target traps when a promise of the code breaks:
// - the switch never hands a frame back to the guest that sent it;
// - what the network writes to a guest is whole, well-sized, length-prefixed frames;
// - every whole frame a guest sends is counted once in its rx counters, and every frame
//   counted in its tx counters reaches it (nothing is queued for ever);
// - a bad length prefix resets the guest's connection, and a reset guest is detached:
//   the network's guest count is the harness's count of open connections;
// - counters are never negative, and drops never go down.

import FrameSwitch
import SlirpDaemon

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("fuzz-frames invariant broken: \(what())") }
}

// nonisolated(unsafe): libFuzzer runs inputs one after another on one thread, the only
// thread that touches the network, as libslirp requires.
nonisolated(unsafe) let network: FrameFuzzNetwork = {
    do {
        return try FrameFuzzNetwork()
    } catch {
        fatalError("fuzz-frames cannot build its network: \(error)")
    }
}()

/// A 14 to 65535-byte frame after a 4-byte big-endian length; anything else is a bad length.
let frameSizes = 14...65535

/// One guest's connection, as the harness wrote it.
struct Stream {
    /// Bytes written and not yet part of a whole frame.
    var pending: [UInt8] = []
    var frames = 0
    var bytes = 0
    var badLength = false

    /// Appends written bytes; returns the frames they completed.
    mutating func append(_ written: [UInt8]) -> [[UInt8]] {
        pending += written
        var completed: [[UInt8]] = []
        while !badLength, pending.count >= 4 {
            let length = pending.prefix(4).reduce(0) { $0 << 8 | Int($1) }
            guard frameSizes.contains(length) else {
                badLength = true
                break
            }
            guard pending.count >= 4 + length else { break }
            completed.append(Array(pending[4..<(4 + length)]))
            pending.removeFirst(4 + length)
            frames += 1
            bytes += length
        }
        return completed
    }
}

/// Splits what the network wrote to a guest into frames; every byte must belong to one.
func frames(in stream: [UInt8], to guest: Int) -> [[UInt8]] {
    var result: [[UInt8]] = []
    var offset = 0
    while offset < stream.count {
        check(stream.count - offset >= 4, "guest \(guest) got \(stream.count - offset) bytes of a length prefix")
        let length = stream[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
        check(frameSizes.contains(length), "guest \(guest) got a frame of \(length) bytes")
        check(stream.count - offset - 4 >= length, "guest \(guest) got part of a \(length)-byte frame")
        result.append(Array(stream[(offset + 4)..<(offset + 4 + length)]))
        offset += 4 + length
    }
    return result
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    network.reset()
    check(network.attachedGuests == 0, "\(network.attachedGuests) guests attached after a reset")
    var streams = Array(repeating: Stream(), count: FrameFuzzNetwork.guestCount)
    var open = Array(repeating: false, count: FrameFuzzNetwork.guestCount)
    var last: [FrameFuzzNetwork.Counters?] = Array(repeating: nil, count: FrameFuzzNetwork.guestCount)
    var offset = 0
    while offset + 3 <= input.count {
        let guest = Int(input[offset] & 0x7F) % FrameFuzzNetwork.guestCount
        let raw = input[offset] & 0x80 != 0
        let length = Int(input[offset + 1]) << 8 | Int(input[offset + 2])
        let body = input[(offset + 3)..<min(input.count, offset + 3 + length)]
        offset += 3 + body.count
        let wire = raw ? Array(body) : StreamFraming.encode(Array(body))

        let attached: Bool
        do {
            attached = try network.send(wire, from: guest)
        } catch {
            fatalError("fuzz-frames cannot attach or write to guest \(guest): \(error)")
        }
        if attached {
            check(!open[guest], "guest \(guest) was attached again while its connection was open")
            streams[guest] = Stream()
            last[guest] = nil
            open[guest] = true
        }
        let sent = streams[guest].append(wire)

        // Counters first: reading a guest's side may find it detached.
        let counters = (0..<FrameFuzzNetwork.guestCount).map { network.counters(of: $0) }
        for other in 0..<FrameFuzzNetwork.guestCount where open[other] {
            let received = network.received(by: other)
            let got = frames(in: received.bytes, to: other)
            if other == guest {
                for frame in got {
                    check(!sent.contains(frame), "guest \(guest) got its own \(frame.count)-byte frame back")
                }
            }
            if other == guest, streams[guest].badLength {
                check(received.hungUp, "guest \(guest) sent a bad length and stays connected")
            }
            guard let now = counters[other] else { continue }
            let before = last[other] ?? FrameFuzzNetwork.Counters()
            check(now.rxFrames >= 0 && now.rxBytes >= 0 && now.txFrames >= 0 && now.txBytes >= 0 && now.drops >= 0,
                  "guest \(other) has negative counters: \(now)")
            check(now.drops >= before.drops, "guest \(other)'s drops went from \(before.drops) to \(now.drops)")
            if received.hungUp {
                open[other] = false
                continue
            }
            check(now.rxFrames == streams[other].frames && now.rxBytes == streams[other].bytes,
                  "guest \(other) sent \(streams[other].frames) frames (\(streams[other].bytes) B), "
                      + "counted \(now.rxFrames) (\(now.rxBytes) B)")
            check(now.txFrames - before.txFrames == got.count,
                  "guest \(other) was counted \(now.txFrames - before.txFrames) frames and got \(got.count)")
            check(now.txBytes - before.txBytes == got.reduce(0) { $0 + $1.count },
                  "guest \(other) was counted \(now.txBytes - before.txBytes) bytes and got \(got.reduce(0) { $0 + $1.count })")
            last[other] = now
        }
        let openCount = open.filter { $0 }.count
        check(network.attachedGuests == openCount, "the network has \(network.attachedGuests) guests, the harness \(openCount)")
    }
    return 0
}
