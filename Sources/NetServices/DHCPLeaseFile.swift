// The lease file: what DHCPServer knows, as text the daemon can save and load.
//
//   slirpd-leases 1
//   52:54:00:12:34:56 10.0.2.15 1763712000 dynamic guest-1
//   52:54:00:00:00:09 10.0.2.9 1763712000 static
//
// One lease a line: MAC, address, expiry (the caller's seconds), `dynamic` or `static`,
// and the hostname when there is one, with every byte outside [A-Za-z0-9._-] written
// as %XX (hostnames come from guests and may hold anything). Lines that do not parse
// are skipped, so one damaged line costs one lease; a missing or other header means a
// format this code does not know, and nothing is read.

import FrameSwitch
import NetOptions

extension DHCPServer {
    public static let leaseFileHeader = "slirpd-leases 1"

    public func encodeLeases() -> String {
        var text = Self.leaseFileHeader + "\n"
        for lease in leases {
            text += "\(lease.mac) \(lease.address) \(lease.expires) \(lease.isStatic ? "static" : "dynamic")"
            if let name = lease.hostname, !name.isEmpty { text += " " + Self.escape(name) }
            text += "\n"
        }
        return text
    }

    public static func decodeLeases(_ text: String) -> [DHCPLease] {
        var leases: [DHCPLease] = []
        var sawHeader = false
        // "\r\n" is one Character in Swift, so it is a separator of its own.
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            if line.isEmpty || line.first == "#" { continue }
            guard sawHeader else {
                guard line == Substring(leaseFileHeader) else { return [] }
                sawHeader = true
                continue
            }
            if let lease = parseLine(line) { leases.append(lease) }
        }
        return leases
    }

    static func parseLine(_ line: Substring) -> DHCPLease? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count == 4 || fields.count == 5,
              let mac = MACAddress(String(fields[0])),
              let address = IPv4Address(String(fields[1])),
              let expires = Int64(fields[2]) else { return nil }
        let isStatic: Bool
        switch fields[3] {
        case "static": isStatic = true
        case "dynamic": isStatic = false
        default: return nil
        }
        var hostname: String?
        if fields.count == 5 {
            guard let name = unescape(fields[4]) else { return nil }
            hostname = name
        }
        return DHCPLease(mac: mac, address: address, hostname: hostname, expires: expires, isStatic: isStatic)
    }

    static func isPlain(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
            return true
        default:
            return false
        }
    }

    static func escape(_ text: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for byte in text.utf8 {
            if isPlain(byte) {
                out.append(byte)
            } else {
                out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func unescape(_ text: Substring) -> String? {
        let bytes = Array(text.utf8)
        var out: [UInt8] = []
        var i = 0
        while i < bytes.count {
            let byte = bytes[i]
            if byte == UInt8(ascii: "%") {
                guard i + 2 < bytes.count, let high = hexValue(bytes[i + 1]), let low = hexValue(bytes[i + 2]) else {
                    return nil
                }
                out.append(high << 4 | low)
                i += 3
            } else {
                guard isPlain(byte) else { return nil }
                out.append(byte)
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
