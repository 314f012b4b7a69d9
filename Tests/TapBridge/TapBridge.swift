// tap-bridge: benchmark support that joins a tap device to a QEMU stream socket.
//
// Theory of operation: whatever sits behind the tap (a network namespace) becomes one
// guest of a NAT that speaks QEMU's stream protocol (4-byte big-endian length, then the
// frame), such as passt or slirpd's stream endpoint. One thread polls both descriptors:
// frames read from the tap are length-prefixed into a bounded queue and written to the
// socket; bytes from the socket are cut into frames and written to the tap one by one.
// The tap is read only while the queue has room for another frame, so a slow NAT slows
// the namespace down (TCP backs off) instead of making the bridge drop; a tap that
// refuses a frame (interface down, queue full) costs that frame, which is counted.
import ArgumentParser
import FrameSwitch
import PosixIO

@main
struct TapBridge: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap-bridge",
        abstract: "Relay frames between a tap device and a QEMU stream socket (benchmark support).")

    @Argument(help: "An existing tap device, e.g. made by `ip tuntap add mode tap name NAME`.")
    var tap: String

    @Argument(help: "The Unix stream socket of the NAT (passt's --socket, slirpd's --stream).")
    var socket: String

    func run() throws {
        let bridge = try Bridge(tap: openTap(name: tap), peer: connectUnix(to: UnixAddress(path: socket), kind: .stream))
        try bridge.run()
        writeStandardError("tap-bridge: \(socket) closed the connection (\(bridge.dropped) frames dropped)\n")
    }
}

final class Bridge {
    static let frameLimit = StreamFraming.prefixLength + StreamFraming.maximumFrame

    let tap: Descriptor
    let peer: Descriptor
    let fromTap = ByteBuffer(capacity: StreamFraming.maximumFrame)
    let toSocket = ByteBuffer(capacity: 1 << 20)
    let fromSocket = ByteBuffer(capacity: 2 * Bridge.frameLimit)
    var dropped = 0

    init(tap: Descriptor, peer: Descriptor) {
        self.tap = tap
        self.peer = peer
        peer.setBufferSizes(send: 4 << 20, receive: 4 << 20)
    }

    var queueHasRoom: Bool { toSocket.capacity - toSocket.count >= Bridge.frameLimit }

    /// Relays until the socket's peer closes the connection.
    func run() throws {
        var set = PollSet()
        while true {
            set.removeAll()
            set.add(tap.raw, queueHasRoom ? .input : [])
            set.add(peer.raw, toSocket.isEmpty ? .input : [.input, .output])
            guard try set.wait(timeoutMilliseconds: -1) else { continue }
            try tapToSocket()
            guard try socketToTap() else { return }
        }
    }

    /// Queues what fits from the tap, then writes what the socket takes.
    func tapToSocket() throws {
        while queueHasRoom {
            guard case .done(let n) = try tap.readFrame(into: fromTap), n > 0 else { break }
            if n >= StreamFraming.minimumFrame { _ = toSocket.appendFrame(fromTap.readable) }
        }
        while !toSocket.isEmpty {
            guard case .done = try peer.write(from: toSocket) else { break }
        }
    }

    /// Writes every whole frame received so far to the tap; false once the socket is closed.
    func socketToTap() throws -> Bool {
        while case .done(let n) = try peer.read(into: fromSocket) {
            if n == 0 { return false }
            frames: while true {
                let bytes = fromSocket.readable
                switch StreamFraming.scan(bytes) {
                case .needMore:
                    break frames
                case .badLength(let length):
                    throw ValidationError("the socket sent a frame length of \(length): not QEMU's stream protocol")
                case .frame(let length):
                    let end = StreamFraming.prefixLength + length
                    writeToTap(UnsafeRawBufferPointer(rebasing: bytes[StreamFraming.prefixLength..<end]))
                    fromSocket.consume(end)
                }
            }
        }
        return true
    }

    /// A tap that refuses a frame (interface down, queue full) costs that frame.
    func writeToTap(_ frame: UnsafeRawBufferPointer) {
        do {
            if case .wouldBlock = try tap.writeFrame(frame) { dropped += 1 }
        } catch {
            dropped += 1
        }
    }
}
