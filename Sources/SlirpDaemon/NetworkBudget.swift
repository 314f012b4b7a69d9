import DataPlane
import FrameSwitch
import Logging
import PosixIO
import SlirpAPI

/// A network's side of the guests' flow budgets (DataPlane's FlowBudget).
///
/// Theory of operation: each guest's `GuestPort.flows` (its PortState's) counts its flows in
/// libslirp from the frames the FramePath hands libslirp and delivers to the guest, and
/// refuses a new one past the network's caps (`max-tcp=` etc.); the refusals are counted
/// and logged here, and the caps and the descriptor reserve are the network's. Above the guests' caps sits the
/// daemon's own reserve: while fewer than `reserve` (64) descriptors are free, every guest's
/// new flow is refused, so the control API, the lease file, DNS and new guests keep
/// working whatever the guests do (guests themselves stop at 16 free: `descriptorReserve`).
/// Counting open descriptors reads /proc/self/fd, so it is done at most every 10 ms, and
/// each flow admitted in between counts as one more descriptor.
struct FlowAccounting {
    /// Descriptors no guest's new flow may take: 64, or a quarter of a limit under 256, so
    /// that under a tiny limit flows still outlast new guests (which stop at 16 free).
    static func reserve(limit: Int) -> Int { min(64, limit / 4) }
    static let recheckInterval: Int64 = 10_000_000

    var checkedAt: Int64?
    /// Descriptors open at the last count, the limit, and flows admitted since.
    var open = 0
    var limit = Int.max
    var admittedSinceCheck = 0
    var shortage: String?
    /// New flows refused on this network, guests that left included.
    var refused: [FlowKind: Int] = [:]
    var refusedForShortage = 0
    /// Caps changed through the API (FlowLimitOverrides), over the configured ones.
    var overrides = FlowLimitOverrides()
}

extension Network {
    /// The caps in force: the configured ones, with the API's overrides.
    var flowLimits: FlowLimits {
        flowAccounting.overrides.limits(over: configuredFlowLimits)
    }

    var configuredFlowLimits: FlowLimits {
        let o = config.options
        return FlowLimits(tcp: o.maxTCP, udp: o.maxUDP, icmp: o.maxICMP, dnsTCP: o.maxDNSTCP)
    }

    var flowLimitsInfo: FlowLimitsInfo {
        let l = flowLimits
        let set = FlowKind.allCases.filter { flowAccounting.overrides.entries[$0] != nil }.map(\.apiKey)
        return FlowLimitsInfo(maxTCP: l.tcp, maxUDP: l.udp, maxICMP: l.icmp, maxDNSTCP: l.dnsTCP,
                              bufferEstimatePerGuest: l.tcp * FlowBudget.tcpBufferBytes + (l.udp + l.icmp) * FlowBudget.datagramBufferBytes,
                              setByAPI: set)
    }

    /// Changes caps for every guest's new flows (PUT .../flow-limits); open flows stay,
    /// even above a lowered cap. All values are checked before any applies.
    func setFlowLimits(_ request: FlowLimitsRequest) throws(APIError) -> FlowLimitsInfo {
        let wanted: [(FlowKind, Int)] = [(.tcp, request.maxTCP), (.udp, request.maxUDP), (.icmp, request.maxICMP),
                                         (.dnsTCP, request.maxDNSTCP)].compactMap { kind, value in value.map { (kind, $0) } }
        guard !wanted.isEmpty else { throw .badRequest("give at least one of maxTCP, maxUDP, maxICMP, maxDNSTCP") }
        for (kind, value) in wanted {
            if !FlowLimitOverrides.isValid(value) {
                throw .badRequest("\(kind.apiKey) (\(kind.optionName)) must be between \(FlowLimitOverrides.range.lowerBound) and \(FlowLimitOverrides.range.upperBound), not \(value)")
            }
        }
        let base = configuredFlowLimits
        for (kind, value) in wanted { flowAccounting.overrides.set(kind, to: value, base: base) }
        saveRuntimeState()
        let now = flowLimits
        let text = FlowKind.allCases.map { "\($0.optionName)=\(now[$0])" }.joined(separator: ",")
        if !restoringRuntimeState { log.notice("flow limits set through the API: now \(text)") }
        return flowLimitsInfo
    }

    /// After a reload: the configuration's value wins for each key it changed
    /// (FlowLimitOverrides' rule); true when caps in force changed.
    func reapplyFlowLimits(oldConfigured: FlowLimits) -> Bool {
        let before = flowAccounting.overrides.limits(over: oldConfigured)
        let stale = flowAccounting.overrides.rebase(on: configuredFlowLimits)
        for kind in stale {
            log.notice("reload: \(kind.optionName) changed in the configuration: now \(configuredFlowLimits[kind]), replacing the value set through the API")
        }
        if !stale.isEmpty { saveRuntimeState() }
        return flowLimits != before
    }

    /// Counts and logs (paced) a guest's new flow the frame path refused; the refusal
    /// (RST, ICMP unreachable, or nothing) has gone to the guest already.
    func flowRefused(_ port: GuestPort, _ kind: FlowKind, shortage: Bool) {
        if shortage {
            flowAccounting.refusedForShortage += 1
            if isLoggedOccurrence(flowAccounting.refusedForShortage) {
                log.error("refusing a new \(kind.rawValue) flow of \(port.label): \(flowAccounting.shortage ?? "short of descriptors") (\(flowAccounting.refusedForShortage) refused so far)")
            }
        } else {
            flowAccounting.refused[kind, default: 0] += 1
            let count = port.flows.refusedByCap[kind] ?? 0
            if isLoggedOccurrence(count) {
                log.warning("refusing a new \(kind.rawValue) flow of \(port.label): it has \(openFlows(kind, port.flows)) open, its cap (\(capOption(kind))=\(cap(kind))) (\(count) refused so far)")
            }
        }
    }

    /// Why no guest may open a flow now, or nil; asked just before a flow is admitted,
    /// which then counts as one more descriptor until the next count.
    func flowShortage(now: Int64) -> String? {
        if flowAccounting.checkedAt.map({ now - $0 >= FlowAccounting.recheckInterval }) ?? true {
            flowAccounting.checkedAt = now
            flowAccounting.admittedSinceCheck = 0
            if let usage = descriptorUsage() {
                (flowAccounting.open, flowAccounting.limit) = (usage.open, usage.limit)
            }
        }
        let open = flowAccounting.open + flowAccounting.admittedSinceCheck
        let reserve = FlowAccounting.reserve(limit: flowAccounting.limit)
        guard open + reserve >= flowAccounting.limit else {
            flowAccounting.admittedSinceCheck += 1
            return nil
        }
        flowAccounting.shortage = "\(open) of \(flowAccounting.limit) descriptors in use and \(reserve) kept for the daemon"
        return flowAccounting.shortage
    }

    private func openFlows(_ kind: FlowKind, _ flows: FlowBudget) -> Int {
        switch kind {
        case .tcp: flows.tcpCount
        case .udp: flows.udpCount
        case .icmp: flows.icmpCount
        case .dnsTCP: flows.dnsTCPCount
        }
    }

    private func cap(_ kind: FlowKind) -> Int { flowLimits[kind] }

    private func capOption(_ kind: FlowKind) -> String { kind.optionName }
}

extension FlowKind {
    /// The key in the API's FlowLimitsRequest and FlowLimitsInfo.
    var apiKey: String {
        switch self {
        case .tcp: "maxTCP"
        case .udp: "maxUDP"
        case .icmp: "maxICMP"
        case .dnsTCP: "maxDNSTCP"
        }
    }
}

extension FlowBudget {
    var info: GuestFlows {
        GuestFlows(tcp: tcpCount, udp: udpCount, icmp: icmpCount, dnsTCP: dnsTCPCount,
                   refused: refusedByCap.values.reduce(0, +), refusedForShortage: refusedForShortage, bufferEstimate: bufferEstimate)
    }
}
