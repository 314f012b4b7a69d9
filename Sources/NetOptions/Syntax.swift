// The two lexical layers QEMU applies before any option means anything: QemuOpts'
// splitting of `key=value,key=value`, and C's strtol, which QEMU uses for ports and
// prefix lengths. Both are reproduced here so a string means to slirpd what it means
// to QEMU 7.2 (checked against the qemu-system-x86_64 7.2 binary).

/// One `key=value` item of an option string.
struct OptionItem: Equatable {
    var key: String
    var value: String
}

/// The items of a QemuOpts string, and the implied first value (QEMU's `type`) if the
/// string starts with a bare word.
struct OptionList: Equatable {
    var type: String?
    var items: [OptionItem]

    /// QemuOpts rules: items are separated by `,`; in a value `,,` is a literal comma;
    /// a key cannot contain `,` or `=`. A first item without `=` is the implied `type`.
    /// A later item without `=` is a short-form boolean: `KEY` is `KEY=on`, `noKEY` is
    /// `KEY=off` (QEMU 7.2 accepts these with a deprecation warning). A trailing comma
    /// ends the list.
    init(parsing text: String) {
        let bytes = Array(text.utf8)
        var type: String?
        var items: [OptionItem] = []
        var i = 0
        var first = true
        while i < bytes.count {
            var end = i
            while end < bytes.count && bytes[end] != UInt8(ascii: "=") && bytes[end] != UInt8(ascii: ",") {
                end += 1
            }
            if end < bytes.count && bytes[end] == UInt8(ascii: "=") {
                let key = String(decoding: bytes[i..<end], as: UTF8.self)
                let (value, next) = Self.value(bytes, from: end + 1)
                items.append(OptionItem(key: key, value: value))
                i = next
            } else if first {
                let (value, next) = Self.value(bytes, from: i)
                type = value
                i = next
            } else {
                let name = String(decoding: bytes[i..<end], as: UTF8.self)
                if name.hasPrefix("no") {
                    items.append(OptionItem(key: String(name.dropFirst(2)), value: "off"))
                } else {
                    items.append(OptionItem(key: name, value: "on"))
                }
                i = end
            }
            if i < bytes.count { i += 1 }  // the separating comma
            first = false
        }
        self.type = type
        self.items = items
    }

    /// Reads a value up to a single comma, turning `,,` into `,`.
    private static func value(_ bytes: [UInt8], from start: Int) -> (String, Int) {
        var out: [UInt8] = []
        var i = start
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: ",") {
                guard i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: ",") else { break }
                out.append(UInt8(ascii: ","))
                i += 2
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return (String(decoding: out, as: UTF8.self), i)
    }
}

/// What C's strtol/strtoul make of a string. QEMU 7.2 reads hostfwd ports with
/// strtol(base 0), so `0x50` is 80, `010` is 8 and ` 80` is 80 there; mirroring that
/// keeps every rule meaning the same port in slirpd as in QEMU.
struct CNumber {
    /// True when digits were found.
    var sawDigits: Bool
    /// True when nothing follows the number (C's `*end == '\0'`). Like C, an empty
    /// string counts as fully consumed (value 0), but one with no digits otherwise does not.
    var consumedAll: Bool
    var negative: Bool
    /// The absolute value; saturates at UInt64.max.
    var magnitude: UInt64
    /// True when the digits exceed UInt64.
    var overflowed: Bool

    /// strtol's result: clamped to Int64's range as C clamps to LONG_MIN/LONG_MAX.
    var clamped: Int64 {
        if negative {
            return magnitude > UInt64(Int64.max) ? .min : -Int64(magnitude)
        }
        return magnitude > UInt64(Int64.max) ? .max : Int64(magnitude)
    }

    /// qemu_strtoi64's rule: digits, nothing after them, and within Int64.
    var wholeInt64: Int64? {
        guard sawDigits, consumedAll, !overflowed else { return nil }
        if negative { return magnitude <= UInt64(Int64.max) + 1 ? Int64(truncatingIfNeeded: 0 &- magnitude) : nil }
        return magnitude <= UInt64(Int64.max) ? Int64(magnitude) : nil
    }

    /// `base` is 0 (C prefixes: 0x hex, 0 octal, else decimal), 8, 10 or 16.
    init(_ text: Substring, base: Int) {
        let bytes = Array(text.utf8)
        var i = 0
        // C isspace in the "C" locale.
        while i < bytes.count, [0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D].contains(bytes[i]) { i += 1 }
        negative = false
        if i < bytes.count && (bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-")) {
            negative = bytes[i] == UInt8(ascii: "-")
            i += 1
        }
        var radix = base
        let hexPrefix = i + 2 < bytes.count && bytes[i] == UInt8(ascii: "0")
            && (bytes[i + 1] | 0x20) == UInt8(ascii: "x") && hexDigitValue(bytes[i + 2]) != nil
        if (radix == 0 || radix == 16) && hexPrefix {
            radix = 16
            i += 2
        } else if radix == 0 {
            radix = i < bytes.count && bytes[i] == UInt8(ascii: "0") ? 8 : 10
        }
        let digitsStart = i
        var magnitude: UInt64 = 0
        var overflowed = false
        while i < bytes.count, let digit = hexDigitValue(bytes[i]), digit < radix {
            let (shifted, o1) = magnitude.multipliedReportingOverflow(by: UInt64(radix))
            let (sum, o2) = shifted.addingReportingOverflow(UInt64(digit))
            if o1 || o2 { overflowed = true }
            magnitude = overflowed ? .max : sum
            i += 1
        }
        sawDigits = i > digitsStart
        // With no digits C points `end` back at the start of the string.
        consumedAll = sawDigits ? i == bytes.count : bytes.isEmpty
        self.magnitude = magnitude
        self.overflowed = overflowed
        if !sawDigits { negative = false }
    }
}
