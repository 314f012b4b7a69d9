import DataPlane
import FrameSwitch

// The TCP window shim (DataPlane/TCPWindowShim.swift) on this network's frame path:
// guest frames for libslirp go through `shimInput`, libslirp's unicast frames for a guest
// through `shimDeliver`. libslirp's ACK for a fed segment comes back through send_packet
// (fromNAT -> shimDeliver -> tcpShim.fromNAT) during `stack.input`, so the shim is never
// being mutated when libslirp is called: each frame it hands over is copied out of it
// first, and `releaseHeld` asks for one held segment at a time.
extension Network {
    /// Hands a checked, admitted guest frame to libslirp through the shim; false when the
    /// shim dropped it (beyond the window it offered the guest, or a duplicate of held data).
    func shimInput(_ frame: UnsafeRawBufferPointer, from port: GuestPort, now: Int64) -> Bool {
        switch tcpShim.fromGuest(frame, port: port.id, now: now) {
        case .pass:
            stack.input(frame)
        case .rewritten:
            let out = tcpShim.guestOutput
            out.withUnsafeBytes { stack.input($0) }
        case .queued:
            break
        case .drop:
            if isLoggedOccurrence(tcpShim.droppedTotal) {
                log.info("dropped a TCP segment from \(port.label) beyond the window offered or already held (\(tcpShim.droppedTotal) so far)")
            }
            return false
        }
        releaseHeld()
        return true
    }

    /// Feeds libslirp the held segments its window now takes; each one's ACK may open it further.
    func releaseHeld() {
        while let frame = tcpShim.nextRelease() {
            frame.withUnsafeBytes { stack.input($0) }
        }
    }

    /// Delivers libslirp's frame for `port`, its TCP window scaled for the guest.
    func shimDeliver(_ frame: UnsafeRawBufferPointer, to port: GuestPort, now: Int64) {
        if tcpShim.fromNAT(frame, port: port.id, now: now) == .rewritten {
            let out = tcpShim.natOutput
            out.withUnsafeBytes { deliver($0, to: port) }
        } else {
            deliver(frame, to: port)
        }
    }
}
