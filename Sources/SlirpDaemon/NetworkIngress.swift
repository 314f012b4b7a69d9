import DataPlane
import Logging

extension Network {
    /// Hands a guest's whole (reassembled) frame to libslirp once NATIngressCheck has
    /// passed or fixed it and the guest's flow budget admits it (NetworkBudget.swift);
    /// false when it is dropped instead, logged paced naming the guest.
    func checkedInput(_ frame: UnsafeRawBufferPointer, from port: GuestPort, now: Int64) -> Bool {
        switch ingressCheck.inspect(frame) {
        case .pass:
            guard admitFlow(frame, from: port, now: now) else { return false }
            return shimInput(frame, from: port, now: now)
        case .rewritten(let fixed):
            if isLoggedOccurrence(ingressCheck.rewritten) {
                log.info("fixed a frame from \(port.label) before the NAT (urgent pointer cleared or IPv6 trailing bytes cut; \(ingressCheck.rewritten) so far)")
            }
            guard fixed.withUnsafeBytes({ admitFlow($0, from: port, now: now) }) else { return false }
            return fixed.withUnsafeBytes { shimInput($0, from: port, now: now) }
        case .drop(let reason):
            let count = ingressCheck.dropped[reason.rawValue]
            if isLoggedOccurrence(count) {
                log.warning("dropped \(reason) from \(port.label) (\(count) such frames dropped so far)")
            }
            return false
        }
    }
}
