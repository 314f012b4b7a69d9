import FrameSwitch
import NetOptions
import PosixIO
import SlirpAPI

/// A live capture: frames go to the HTTP response through an AsyncStream.
struct CaptureSink {
    var continuation: AsyncStream<[UInt8]>.Continuation
    /// nil: the whole network. Otherwise what that guest's NIC sees: frames from or to its
    /// MAC, and broadcast/multicast (libslirp's DHCP answers are broadcast).
    var mac: MACAddress?

    func wants(_ header: EthernetHeader) -> Bool {
        guard let mac else { return true }
        return header.source == mac || header.destination == mac || header.destination.isGroup
    }
}

extension Network {
    // MARK: Capture

    /// Starts a pcap stream; it ends when the reader goes away or the network stops.
    /// A reader that falls behind loses the oldest frames past 8192, never the daemon's memory.
    func startCapture(guest: MACAddress?, mailbox: Mailbox) -> AsyncStream<[UInt8]> {
        let (stream, continuation) = AsyncStream.makeStream(of: [UInt8].self, bufferingPolicy: .bufferingNewest(8192))
        continuation.yield(Pcap.fileHeader())
        let id = nextCaptureID
        nextCaptureID += 1
        let name = config.name
        continuation.onTermination = { _ in
            mailbox.post { daemon in daemon.networks.first { $0.config.name == name }?.stopCapture(id) }
        }
        captures[id] = CaptureSink(continuation: continuation, mac: guest)
        log.info("capture \(id) started\(guest.map { " for guest \($0)" } ?? "")")
        return stream
    }

    func stopCapture(_ id: Int) {
        guard captures.removeValue(forKey: id) != nil else { return }
        log.info("capture \(id) stopped")
    }

    func finishCaptures() {
        for sink in captures.values { sink.continuation.finish() }
        captures.removeAll()
    }

    /// Copies one frame to every interested capture (only called while captures exist).
    func capture(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader) {
        let now = realtimeNanoseconds()
        for sink in captures.values where sink.wants(header) {
            var record: [UInt8] = []
            record.reserveCapacity(16 + frame.count)
            Pcap.append(frame: frame, timestampNanoseconds: now, snapLength: 65535, to: &record)
            sink.continuation.yield(record)
        }
    }
}
