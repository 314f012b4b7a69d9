import DataPlane
import Testing

@Suite("FlowLimitOverrides: run-time caps over the configured ones")
struct FlowLimitOverridesTests {
    let base = FlowLimits(tcp: 512, udp: 256, icmp: 64, dnsTCP: 8)

    @Test("an override replaces its key only")
    func overrideOneKey() {
        var o = FlowLimitOverrides()
        #expect(o.limits(over: base) == base)
        o.set(.tcp, to: 2, base: base)
        #expect(o.limits(over: base) == FlowLimits(tcp: 2, udp: 256, icmp: 64, dnsTCP: 8))
        #expect(o.entries == [.tcp: FlowLimitOverride(value: 2, base: 512)])
    }

    @Test("setting the configured value removes the override")
    func configuredValueClears() {
        var o = FlowLimitOverrides()
        o.set(.udp, to: 9, base: base)
        o.set(.udp, to: 256, base: base)
        #expect(o.entries.isEmpty)
    }

    @Test("a reload that leaves a key alone keeps its override; one that changes it drops it")
    func rebase() {
        var o = FlowLimitOverrides()
        o.set(.tcp, to: 7, base: base)
        o.set(.icmp, to: 9, base: base)
        var reloaded = base
        reloaded.udp = 50
        #expect(o.rebase(on: reloaded).isEmpty)
        #expect(o.limits(over: reloaded) == FlowLimits(tcp: 7, udp: 50, icmp: 9, dnsTCP: 8))
        reloaded.tcp = 200
        #expect(o.rebase(on: reloaded) == [.tcp])
        #expect(o.limits(over: reloaded) == FlowLimits(tcp: 200, udp: 50, icmp: 9, dnsTCP: 8))
    }

    @Test("values", arguments: [(0, true), (65535, true), (-1, false), (65536, false), (Int.max, false)])
    func validity(value: Int, valid: Bool) {
        #expect(FlowLimitOverrides.isValid(value) == valid)
    }

    @Test("round trip by option name; unknown names and bad values are left out")
    func saved() {
        var o = FlowLimitOverrides()
        o.set(.dnsTCP, to: 1, base: base)
        o.set(.tcp, to: 3, base: base)
        #expect(o.byOptionName == ["max-dns-tcp": FlowLimitOverride(value: 1, base: 8), "max-tcp": FlowLimitOverride(value: 3, base: 512)])
        #expect(FlowLimitOverrides(byOptionName: o.byOptionName) == o)
        var saved = o.byOptionName
        saved["max-bogus"] = FlowLimitOverride(value: 1, base: 1)
        saved["max-udp"] = FlowLimitOverride(value: -5, base: 256)
        #expect(FlowLimitOverrides(byOptionName: saved) == o)
    }

    @Test("FlowLimits by kind")
    func subscriptByKind() {
        var l = base
        for (i, kind) in FlowKind.allCases.enumerated() { l[kind] = i }
        #expect(l == FlowLimits(tcp: 0, udp: 1, icmp: 2, dnsTCP: 3))
        #expect(FlowKind.allCases.map(\.optionName) == ["max-tcp", "max-udp", "max-icmp", "max-dns-tcp"])
    }
}
