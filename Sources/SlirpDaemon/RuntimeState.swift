import DataPlane
import FoundationEssentials
import NetServices
import PosixIO
import SlirpAPI

/// What was changed through the API, kept in `NAME.runtime.json` in the state directory.
///
/// Theory of operation: the configuration (command line or file) is the base; host and
/// guest forwards, static leases and attachments added at run time are layered on top.
/// Every change through the API rewrites this file (atomically: a temporary file, then
/// rename), and a network that starts, whether at daemon start or on a reload that
/// restarts it, replays the file through the same calls the API uses. A replayed item
/// that no longer fits (its port now taken, its address outside a changed network) is
/// logged and left out of the file. Flow caps set through the API are restored unless
/// the configuration's value for that key changed since (FlowLimitOverrides).
struct RuntimeState: Codable, Equatable {
    var forwards: [ForwardRequest] = []
    var guestForwards: [String] = []
    var staticLeases: [StaticLeaseRequest] = []
    var attachments: [String] = []
    /// Flow caps set through the API, by option name (`max-tcp`), each with the configured
    /// value it replaced: one whose configured value has since changed is not restored.
    var flowLimits: [String: FlowLimitOverride]?

    var isEmpty: Bool { self == RuntimeState() }
}

extension Network {
    var runtimeStatePath: String? { stateDirectory.map { "\($0)/\(config.name).runtime.json" } }

    /// The API's additions as they stand.
    private var runtimeState: RuntimeState {
        RuntimeState(
            forwards: apiForwards, guestForwards: apiGuestForwards,
            staticLeases: apiStaticLeases.map { StaticLeaseRequest(mac: "\($0.mac)", ip: "\($0.address)", hostname: $0.hostname) },
            attachments: dialTargets.filter(\.fromAPI).map { "unix:\($0.path)" },
            flowLimits: flowAccounting.overrides.entries.isEmpty ? nil : flowAccounting.overrides.byOptionName)
    }

    /// Writes the file after an API change (not while replaying it).
    func saveRuntimeState() {
        guard !restoringRuntimeState, let path = runtimeStatePath else { return }
        do {
            let data = try JSONEncoder().encode(runtimeState)
            try writeFileAtomically(path, String(decoding: data, as: UTF8.self))
        } catch {
            log.error("cannot save run-time changes to \(path): \(error); they will be lost at the next restart")
        }
    }

    /// Replays the file written by an earlier run.
    func restoreRuntimeState() {
        guard let path = runtimeStatePath else { return }
        let state: RuntimeState
        do {
            state = try JSONDecoder().decode(RuntimeState.self, from: Data(readWholeFile(path, limit: 16 << 20)))
        } catch let error as IOError where error.fileIsMissing {
            return
        } catch {
            log.error("cannot read run-time changes from \(path): \(error); starting without them")
            return
        }
        restoringRuntimeState = true
        var restored = 0, dropped = 0
        func replay(_ what: String, _ body: () throws(APIError) -> Void) {
            do {
                try body()
                restored += 1
            } catch {
                dropped += 1
                log.warning("not restoring \(what): \(error.message)")
            }
        }
        for lease in state.staticLeases {
            replay("static lease \(lease.mac)") { () throws(APIError) in _ = try addStaticLease(StaticLease(lease)) }
        }
        for request in state.forwards {
            replay("forward \(request.rule)") { () throws(APIError) in _ = try addForward(request) }
        }
        for rule in state.guestForwards {
            replay("guest forward \(rule)") { () throws(APIError) in _ = try addGuestForward(rule) }
        }
        for target in state.attachments {
            replay("attachment \(target)") { () throws(APIError) in _ = try addAttachment(target) }
        }
        if let saved = state.flowLimits {
            var overrides = FlowLimitOverrides(byOptionName: saved)
            if overrides.entries.count < saved.count {
                dropped += saved.count - overrides.entries.count
                log.warning("not restoring unknown or out-of-range flow limits in \(path)")
            }
            for kind in overrides.rebase(on: configuredFlowLimits) {
                dropped += 1
                log.warning("not restoring \(kind.optionName) set through the API: the configuration's value changed since")
            }
            restored += overrides.entries.count
            flowAccounting.overrides = overrides
            if !overrides.entries.isEmpty {
                log.notice("flow limits set through the API restored: \(overrides.byOptionName.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.value)" }.joined(separator: ","))")
            }
        }
        restoringRuntimeState = false
        log.notice("restored \(restored) run-time change(s) from \(path)\(dropped > 0 ? "; \(dropped) no longer apply" : "")")
        if dropped > 0 { saveRuntimeState() }
    }
}
