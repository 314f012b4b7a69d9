// TCPOptions: the one walk over a TCP header's options (RFC 9293 3.1), for the stages
// that check them (NATIngressCheck) and read them (TCPWindowShim).
enum TCPOptions {
    /// Visits each option in `frame[start..<end]` that has a length field, as (kind, offset,
    /// length), skipping NOPs and stopping at End of Option List or when `visit` returns
    /// false. False when an option's length is below 2 or runs past `end`.
    static func walk(_ frame: UnsafeRawBufferPointer, from start: Int, to end: Int,
                     _ visit: (_ kind: UInt8, _ offset: Int, _ length: Int) -> Bool) -> Bool {
        var i = start
        while i < end {
            let kind = frame[i]
            if kind == 0 { return true }
            if kind == 1 { i += 1; continue }
            guard i + 1 < end else { return false }
            let length = Int(frame[i + 1])
            guard length >= 2, i + length <= end else { return false }
            if !visit(kind, i, length) { return true }
            i += length
        }
        return true
    }
}
