// FlowLimitOverrides: a network's flow caps as changed at run time (control API, slirpctl).
//
// Theory of operation: the configuration (`-o max-tcp=` etc., or the TOML file) gives
// the base caps; an override replaces one key's cap and is kept apart from the options,
// remembering the base it replaced. The rule: an override stands, across SIGHUP reloads
// and restarts (it is saved in the run-time state file), until the configuration's own
// value for that key changes; then the configuration wins, since someone edited that very
// setting after the override was made. Setting a key to its configured value removes
// the override. Caps apply to new flows only: the budget compares counts with the cap
// when a flow starts, so lowering one never cuts an open flow.

/// One overridden cap, and the configured value it replaced.
public struct FlowLimitOverride: Sendable, Equatable, Codable {
    public var value: Int
    public var base: Int

    public init(value: Int, base: Int) {
        self.value = value
        self.base = base
    }
}

public struct FlowLimitOverrides: Sendable, Equatable {
    /// What a cap may be (`max-tcp=` etc. accept the same).
    public static let range = 0...65535

    public private(set) var entries: [FlowKind: FlowLimitOverride] = [:]

    public init() {}

    /// The caps in force over the configured `base`.
    public func limits(over base: FlowLimits) -> FlowLimits {
        var limits = base
        for (kind, entry) in entries { limits[kind] = entry.value }
        return limits
    }

    public static func isValid(_ value: Int) -> Bool { range.contains(value) }

    /// Sets one cap (already checked with `isValid`); its configured value drops the override.
    public mutating func set(_ kind: FlowKind, to value: Int, base: FlowLimits) {
        entries[kind] = value == base[kind] ? nil : FlowLimitOverride(value: value, base: base[kind])
    }

    /// Drops the overrides whose key the configuration changed; returns those keys.
    public mutating func rebase(on base: FlowLimits) -> [FlowKind] {
        let stale = FlowKind.allCases.filter { kind in entries[kind].map { $0.base != base[kind] } ?? false }
        for kind in stale { entries[kind] = nil }
        return stale
    }

    /// Keyed by option name (`max-tcp`), as the run-time state file keeps them.
    public var byOptionName: [String: FlowLimitOverride] {
        Dictionary(uniqueKeysWithValues: entries.map { ($0.key.optionName, $0.value) })
    }

    /// From `byOptionName`; unknown names and values out of range are left out (and returned).
    public init(byOptionName saved: [String: FlowLimitOverride]) {
        for (name, entry) in saved {
            guard let kind = FlowKind.allCases.first(where: { $0.optionName == name }),
                  Self.range.contains(entry.value) else { continue }
            entries[kind] = entry
        }
    }
}

extension FlowKind {
    /// The option that sets this cap.
    public var optionName: String { "max-\(rawValue)" }
}

extension FlowLimits {
    public subscript(kind: FlowKind) -> Int {
        get {
            switch kind {
            case .tcp: tcp
            case .udp: udp
            case .icmp: icmp
            case .dnsTCP: dnsTCP
            }
        }
        set {
            switch kind {
            case .tcp: tcp = newValue
            case .udp: udp = newValue
            case .icmp: icmp = newValue
            case .dnsTCP: dnsTCP = newValue
            }
        }
    }
}
