import FrameSwitch

// DNSOverTCP6: DNS over TCP to the network's IPv6 DNS address, through libslirp.
//
// Theory of operation. Over IPv4, libslirp carries a guest's TCP connection to DNS:53
// through a guest forward to DNSService's Unix socket. libslirp 4.7 has no IPv6 guest
// forwards, and with its own DNS off it treats the IPv6 DNS address like every address of
// the IPv6 prefix: as the host's loopback, so [DNS6]:53 became a connection to the
// host's [::1]:53 (refused, or silently dropped with host-loopback=off, hence the
// guests' timeouts; or worse, the host's own resolver if one listens there). So
// DNSService also listens on [::1]:P (a port the kernel picks), and the daemon rewrites
// the port: a guest's TCP segment to [DNS6]:53 goes to libslirp as one to [DNS6]:P,
// which libslirp connects to [::1]:P; libslirp's segments from [DNS6]:P reach the guest
// as from [DNS6]:53. Only the port changes, so the TCP checksum is adjusted
// incrementally (RFC 1624). This needs host-loopback=on (libslirp refuses the loopback
// otherwise) and restrict=off (libslirp 4.7's restricted mode drops IPv6 connections).
public struct DNSOverTCP6: Sendable, Equatable {
    /// The IPv6 DNS address (16 bytes).
    public let address: [UInt8]
    /// The port of DNSService's [::1] listener.
    public let port: UInt16

    public init?(address: [UInt8], port: UInt16) {
        guard address.count == 16, port != 0 else { return nil }
        self.address = address
        self.port = port
    }

    /// A guest's frame with its TCP destination [DNS6]:53 changed to [DNS6]:`port`, or nil
    /// when it is not IPv6 TCP (no extension headers) to that address and port.
    public func towardNAT<C: RandomAccessCollection<UInt8>>(_ frame: C) -> [UInt8]? where C.Index == Int {
        rewrite(frame, addressAt: 38, portAt: 2, from: 53, to: port)
    }

    /// libslirp's frame with its TCP source [DNS6]:`port` changed back to [DNS6]:53, or nil
    /// when it is not IPv6 TCP from that address and port.
    public func towardGuest<C: RandomAccessCollection<UInt8>>(_ frame: C) -> [UInt8]? where C.Index == Int {
        rewrite(frame, addressAt: 22, portAt: 0, from: port, to: 53)
    }

    /// `addressAt`: the offset of the IPv6 address to match; `portAt`: the TCP port field's
    /// offset within the TCP header.
    private func rewrite<C: RandomAccessCollection<UInt8>>(_ frame: C, addressAt: Int, portAt: Int, from old: UInt16,
                                                          to new: UInt16) -> [UInt8]? where C.Index == Int {
        let s = frame.startIndex
        let tcp = 14 + 40
        guard frame.count >= tcp + 20, frame[s + 12] == 0x86, frame[s + 13] == 0xDD, frame[s + 14] >> 4 == 6,
              frame[s + 20] == 6 else { return nil }
        for i in 0..<16 where frame[s + addressAt + i] != address[i] { return nil }
        let at = tcp + portAt
        guard UInt16(frame[s + at]) << 8 | UInt16(frame[s + at + 1]) == old else { return nil }
        var out = Array(frame)
        out[at] = UInt8(new >> 8)
        out[at + 1] = UInt8(new & 0xFF)
        // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
        let checksum = UInt16(out[tcp + 16]) << 8 | UInt16(out[tcp + 17])
        let sum = IPChecksum.add(IPChecksum.add(~checksum, ~old), new)
        let updated = ~sum
        out[tcp + 16] = UInt8(updated >> 8)
        out[tcp + 17] = UInt8(updated & 0xFF)
        return out
    }
}
