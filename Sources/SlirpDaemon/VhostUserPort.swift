import DataPlane
import FrameSwitch
import Logging
import PosixIO
import VhostUser

// The daemon's side of a vhost-user guest (VhostUser holds the protocol and the rings).
//
// Theory of operation. Each connection accepted on a `--vhost-user` socket is one guest
// port whose `socket` carries the protocol's messages; they are read header then payload
// (so descriptors land with their message), handled on the loop thread, and answered at
// once. The queues' kick eventfds join the poll set: a TX kick drains the TX ring (at
// most `txBatch` chains per turn; a busy ring kicks itself to come back next turn, so
// one guest cannot hold the loop) into the frame path exactly as a tap's reads go (the
// header checked and its partial checksum completed, UDP super-frames cut), and the
// guest is interrupted once per batch. Frames toward the guest are written straight into
// its RX buffers; when it has none posted they wait in the port's bounded output queue
// and the RX kick (polled only then) retries them, as does a timer: U-Boot posts its RX
// buffers again without a kick (it polls the used ring and expects the device to poll
// too). The timer runs every `rxRetryInterval` while retries find buffers and backs off
// to `rxRetryLimit` while they find none (a paused guest). Calls for RX go out once per loop
// turn, when the flush list is written. A protocol error or a bad ring closes the
// connection with a log line: the device's descriptors are closed and its memory
// unmapped when the port is reaped.

/// Maps the guest's memory and closes descriptors for `VhostUserDevice`.
final class PosixVhostPlatform: VhostUserPlatform {
    func map(descriptor: Int32, length: Int) throws(VhostUserError) -> any MappedRegion {
        do {
            return try SharedMapping(descriptor: descriptor, length: length)
        } catch {
            throw VhostUserError(.mapping, "\(error)")
        }
    }

    func close(descriptor: Int32) {
        closeRawDescriptor(descriptor)
    }
}

extension SharedMapping: MappedRegion {}

/// One vhost-user guest's protocol state, buffers and counters.
final class VhostUserLink {
    /// Chains taken from the TX ring per loop turn.
    static let txBatch = 256
    /// Protocol messages handled per loop turn (QEMU's whole setup is about 30).
    static let messageBatch = 64
    /// How soon frames waiting for RX buffers are offered again without a kick, and how
    /// far that delay doubles while the guest posts nothing.
    static let rxRetryInterval: Int64 = 1_000_000
    static let rxRetryLimit: Int64 = 128_000_000

    let device = VhostUserDevice(platform: PosixVhostPlatform())
    var assembler = MessageAssembler()
    /// One message's header or payload at a time.
    let messageBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostUserMessage.maximumPayload, alignment: 8)
    /// A TX chain gathered: header and the largest frame.
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 12 + VhostUserDevice.maximumFrame, alignment: 16)
    /// Logged once both queues run.
    var announced = false
    /// Frames with a GSO header, from the guest (in) and to it (out).
    var gsoIn = 0, gsoOut = 0
    /// TX chains dropped: a header that does not describe the frame, a frame too short or long.
    var malformed = 0
    /// Frames toward the guest larger than all the buffers it posts, dropped.
    var tooLarge = 0
    var messages = 0
    /// In `Network.vhostRXWaiting`; when its waiting frames are next offered (nil: none wait).
    var rxWaiting = false
    var rxRetryAt: Int64?
    var rxRetryDelay = rxRetryInterval

    deinit {
        messageBuffer.deallocate()
        scratch.deallocate()
    }

    /// Closes the device's descriptors and unmaps the guest's memory, with anything half-read.
    func close() {
        for fd in assembler.takeDescriptors() { closeRawDescriptor(fd) }
        device.close()
    }
}

extension Network {
    /// Reads and handles protocol messages until the socket is drained, or for at most
    /// `messageBatch` messages: a peer that floods the socket with requests gets the rest
    /// of its turn next iteration, after everyone else.
    func readVhostMessages(_ port: GuestPort, _ link: VhostUserLink) {
        var handled = 0
        while port.closeReason == nil, handled < VhostUserLink.messageBatch {
            let wanted = link.assembler.wanted
            let result: IOResult<ReceivedWithDescriptors>
            do {
                result = try port.socket.receive(into: UnsafeMutableRawBufferPointer(rebasing: link.messageBuffer[0..<wanted]),
                                                 maximumDescriptors: VhostUserMessage.maximumDescriptors)
            } catch {
                port.close("read failed: \(error)")
                break
            }
            guard case .done(let received) = result else { break }
            if received.count == 0 {
                for fd in received.descriptors { closeRawDescriptor(fd) }
                port.close(link.assembler.isMidMessage ? "disconnected in the middle of a message" : "disconnected")
                break
            }
            do throws(VhostUserError) {
                if received.truncated {
                    for fd in received.descriptors { closeRawDescriptor(fd) }
                    throw VhostUserError(.protocolViolation, "more descriptors than one message may carry")
                }
                let bytes = UnsafeRawBufferPointer(rebasing: link.messageBuffer[0..<received.count])
                guard let message = try link.assembler.received(bytes, descriptors: received.descriptors) else { continue }
                link.messages += 1
                handled += 1
                // Setup messages once the queues run are rare (a guest reset, a memory change): worth a line.
                log.log(level: link.announced ? .info : .trace, "\(port.label): vhost-user \(VhostUserMessage.name(message.request)) flags 0x\(String(message.flags, radix: 16)) \(message.payload.count) bytes \(message.descriptors.count) descriptors")
                if let reply = try link.device.handle(message) {
                    do {
                        try port.socket.sendAll(reply.encoded)
                    } catch {
                        port.close("write failed: \(error)")
                        break
                    }
                }
                vhostStateChanged(port, link)
            } catch {
                vhostFailed(port, error)
            }
        }
        scheduleClose(port)
    }

    /// After a message: the port's offloads follow the features, queues that started are serviced.
    private func vhostStateChanged(_ port: GuestPort, _ link: VhostUserLink) {
        let device = link.device
        port.state.takesLargeSegments = device.takesLargeSegments
        let running = device.queues.allSatisfy(\.isActive)
        if running, !link.announced {
            link.announced = true
            log.info("\(port.label): vhost-user queues running (RX \(device.queues[0].size), TX \(device.queues[1].size) entries, \(device.memory.regionCount) memory regions of \(device.memory.totalSize >> 20) MiB), header \(device.headerLength) bytes, features \(device.featureNames)\(device.takesLargeSegments ? "; takes large TCP segments" : "")")
        }
        if running {
            serviceVhostTX(port, link)
            flushVhost(port, link)
        }
    }

    /// Closes a vhost-user guest for a protocol error or a bad ring, counted by kind.
    func vhostFailed(_ port: GuestPort, _ error: VhostUserError) {
        vhostUserCloses[error.kind, default: 0] += 1
        port.close("vhost-user \(error); closing its connection")
    }

    /// A kick: the guest posted TX chains (queue 1) or RX buffers (queue 0).
    func vhostKicked(_ port: GuestPort, _ link: VhostUserLink, queue: Int) {
        guard port.closeReason == nil, let fd = link.device.queues[queue].kick else { return }
        drainEventCounter(fd)
        if queue == VhostUserDevice.txQueue { serviceVhostTX(port, link) } else { flushVhost(port, link) }
        scheduleClose(port)
    }

    /// Takes a batch of frames from the guest's TX ring into the frame path.
    func serviceVhostTX(_ port: GuestPort, _ link: VhostUserLink) {
        guard port.closeReason == nil else { return }
        do {
            let (_, more) = try link.device.transmit(scratch: link.scratch, limit: VhostUserLink.txBatch) { chain in
                switch chain {
                case .frame(let frame):
                    guard frame.count >= StreamFraming.minimumFrame else { return vhostMalformed(port, link, "a frame of \(frame.count) bytes") }
                    if frame.count - EthernetHeader.length > port.state.mtu { link.gsoIn += 1 }
                    fromGuest(port, frame)
                case .udpSegments(let frame, let header):
                    link.gsoIn += 1
                    header.udpSegments(frame) { fromGuest(port, $0) }
                case .malformed(let why):
                    vhostMalformed(port, link, why)
                }
            }
            link.device.takeNotifications { signalEventCounter($0) }
            // More chains wait: come back next turn (a kick to ourselves) rather than hold the loop.
            if more, let kick = link.device.queues[VhostUserDevice.txQueue].kick { signalEventCounter(kick) }
        } catch {
            vhostFailed(port, error)
        }
    }

    private func vhostMalformed(_ port: GuestPort, _ link: VhostUserLink, _ why: String) {
        port.drops += 1
        link.malformed += 1
        if isLoggedOccurrence(link.malformed) {
            log.warning("\(port.label): dropped a TX chain: \(why) (\(link.malformed) so far)")
        }
    }

    enum VhostDelivery { case written, dropped, wait }

    /// Offers a frame to the guest's RX ring now: written, dropped (too large, or the
    /// connection failed), or to wait in the queue for buffers.
    func vhostDeliver(_ frame: UnsafeRawBufferPointer, to port: GuestPort, _ link: VhostUserLink) -> VhostDelivery {
        do {
            switch try link.device.receive(frame, mtu: port.state.mtu) {
            case .delivered:
                if frame.count - EthernetHeader.length > port.state.mtu { link.gsoOut += 1 }
                return .written
            case .tooLarge:
                link.tooLarge += 1
                port.drops += 1
                if isLoggedOccurrence(link.tooLarge) {
                    log.warning("\(port.label): a frame of \(frame.count) bytes does not fit the buffers the guest posts; dropped (\(link.tooLarge) so far)")
                }
                return .dropped
            case .noRoom:
                return .wait
            }
        } catch {
            vhostFailed(port, error)
            return .dropped
        }
    }

    /// Writes queued frames into the guest's RX buffers while it has room, then interrupts it once.
    func flushVhost(_ port: GuestPort, _ link: VhostUserLink) {
        let queue = port.queued
        var moved = false
        while port.closeReason == nil, queue.count >= 4 {
            let bytes = queue.readable
            let length = Int(UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self)))
            guard vhostDeliver(UnsafeRawBufferPointer(rebasing: bytes[4..<(4 + length)]), to: port, link) != .wait else { break }
            queue.consume(4 + length)
            moved = true
        }
        guard port.closeReason == nil else { return }
        link.device.takeNotifications { signalEventCounter($0) }
        guard !queue.isEmpty else {
            link.rxRetryAt = nil
            link.rxRetryDelay = VhostUserLink.rxRetryInterval
            return
        }
        link.rxRetryDelay = moved ? VhostUserLink.rxRetryInterval : min(2 * link.rxRetryDelay, VhostUserLink.rxRetryLimit)
        let at = monotonicNanoseconds() + link.rxRetryDelay
        link.rxRetryAt = at
        vhostRXRetryAt = min(vhostRXRetryAt ?? .max, at)
        if !link.rxWaiting {
            link.rxWaiting = true
            vhostRXWaiting.append(port)
        }
    }
}
