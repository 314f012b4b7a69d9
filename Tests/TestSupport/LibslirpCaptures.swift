/// Bytes from hex text; whitespace and other non-hex characters are skipped.
public func hexBytes(_ hex: String) -> [UInt8] {
    var out: [UInt8] = []
    var pending: UInt8?
    for ch in hex where !ch.isWhitespace {
        guard let nibble = ch.hexDigitValue.map(UInt8.init) else { continue }
        if let high = pending {
            out.append(high << 4 | nibble)
            pending = nil
        } else {
            pending = nibble
        }
    }
    return out
}

/// libslirp 4.7.0's DHCPOFFER (`kind` 2) or DHCPACK (5) to a DISCOVER/REQUEST from
/// 52:54:00:12:34:56 with xid 0x3c1d9a42, captured from its send_packet callback:
/// 10.0.2.0/24, host 10.0.2.2, DNS 10.0.2.3, lease 86400 s. All bytes not spelled out are zero.
public func libslirpDHCPReply(kind: UInt8) -> [UInt8] {
    let ipID: [UInt8] = kind == 2 ? [0x00, 0x00] : [0x00, 0x01]
    let ipSum: [UInt8] = kind == 2 ? [0x6c, 0x9c] : [0x6c, 0x9b]
    let udpSum: [UInt8] = kind == 2 ? [0xe5, 0x11] : [0xe2, 0x11]
    var f = hexBytes("ffffffffffff 52550a000202 0800 45100240") + ipID + hexBytes("0000 4011") + ipSum
        + hexBytes("0a000202 ffffffff 0043 0044 022c") + udpSum
        + hexBytes("02010600 3c1d9a42 00000000 00000000 0a00020f 0a000202 00000000 525400123456")
    f += [UInt8](repeating: 0, count: 278 - f.count)
    f += hexBytes("63825363 3501") + [kind] + hexBytes("36040a000202 0104ffffff00 03040a000202 06040a000203 330400015180 ff")
    f += [UInt8](repeating: 0, count: 590 - f.count)
    return f
}
