import DaemonConfig
import DataPlane
import NetOptions
import PosixIO
import SlirpAPI

// Reloading the config file (SIGHUP).
//
// Theory of operation: the new file is read and checked in full first; if anything is
// wrong the running configuration stays and the error is logged with its line. Then
// networks are matched by name: removed ones stop, new ones start, and one whose shape
// changed (options other than forwards, endpoints, MTU, socket mode or group) restarts,
// which disconnects its guests. For the rest only forwards, static leases and the guest
// allow-lists change: forwards and static leases the old file
// listed and the new one does not are removed, new ones added. Forwards added through
// the API are not the file's to remove, so they stay. Flow caps (max-tcp= etc.) change
// in place too, for new flows; one set through the API stays unless the file changed
// that key (FlowLimitOverrides). Guests of these networks keep their connections.

extension NetworkConfig {
    /// Whether `other` can be applied to a running network by changing forwards alone.
    func sameShape(as other: NetworkConfig) -> Bool {
        var a = self, b = other
        a.options.hostForwards = []
        b.options.hostForwards = []
        a.options.guestForwards = []
        b.options.guestForwards = []
        a.optionText = ""
        b.optionText = ""
        a.staticLeases = []
        b.staticLeases = []
        // Checked at attach time: new lists apply to guests that attach after the reload.
        a.guestAccess = b.guestAccess
        // Flow caps apply to new flows, so they change in place (reapplyFlowLimits).
        a.options.maxTCP = b.options.maxTCP
        a.options.maxUDP = b.options.maxUDP
        a.options.maxICMP = b.options.maxICMP
        a.options.maxDNSTCP = b.options.maxDNSTCP
        // The MAC cap changes in place too (applyStaticLeases gives DHCP its new cap).
        a.options.maxMACs = b.options.maxMACs
        // The VXLAN uplink and the DHCP pool's end change in place (applyUplink, applyStaticLeases).
        a.vxlan = b.vxlan
        a.options.dhcpEnd = b.options.dhcpEnd
        return a == b
    }
}

/// What makes two host forwards the same, whatever their text.
private func key(_ rule: HostForward) -> String {
    "\(rule.proto.rawValue):\(rule.hostAddress):\(rule.hostPort)-\(rule.guestAddress):\(rule.guestPort)"
}

private func key(_ rule: GuestForward, _ options: NetworkOptions) -> String {
    "\(rule.resolvedAddress(in: options)):\(rule.port)-\(rule.target)"
}

extension Network {
    /// Applies a same-shaped config's forwards; returns how many changed.
    func applyForwards(from new: NetworkConfig) -> Int {
        var changes = 0
        let newHost = Set(new.options.hostForwards.map(key))
        let oldHost = Set(config.options.hostForwards.map(key))
        for rule in config.options.hostForwards where !newHost.contains(key(rule)) {
            if let index = forwards.firstIndex(where: { $0.installed.map(key) == key(rule) || key($0.rule) == key(rule) }) {
                let entry = forwards.remove(at: index)
                if let installed = entry.installed { try? stack.removeHostForward(installed) }
                log.notice("reload: forward removed: \(rule.rule)")
                emit(.forwardRemoved, detail: rule.rule)
                changes += 1
            }
        }
        for rule in new.options.hostForwards where !oldHost.contains(key(rule)) {
            do {
                try stack.addHostForward(rule)
                forwards.append(ForwardEntry(rule: rule, hostAddress6: nil, guestAddress6: nil, selector: .address(rule.guestAddress), installed: rule))
                log.notice("reload: forward added: \(rule.rule)")
                emit(.forwardAdded, detail: rule.rule)
                changes += 1
            } catch {
                log.error("reload: \(error.message)")
            }
        }
        let newGuest = Set(new.options.guestForwards.map { key($0, new.options) })
        let oldGuest = Set(config.options.guestForwards.map { key($0, config.options) })
        for rule in config.options.guestForwards where !newGuest.contains(key(rule, config.options)) {
            let address = rule.resolvedAddress(in: config.options)
            stack.removeGuestForward(address: address, port: rule.port)
            guestForwardRules.removeAll { $0.resolvedAddress(in: config.options) == address && $0.port == rule.port }
            log.notice("reload: guest forward removed: \(rule.rule)")
            changes += 1
        }
        for rule in new.options.guestForwards where !oldGuest.contains(key(rule, new.options)) {
            do {
                try installGuestForward(rule)
                guestForwardRules.append(rule)
                log.notice("reload: guest forward added: \(rule.rule)")
                changes += 1
            } catch {
                log.error("reload: \(error.message)")
            }
        }
        let staticLeasesChanged = config.staticLeases != new.staticLeases || config.options.dhcpEnd != new.options.dhcpEnd
        let macCapChanged = config.options.maxMACs != new.options.maxMACs
        changes += applyUplink(new.vxlan)
        let oldFlowLimits = configuredFlowLimits
        config = new
        framePath.settings = Self.framePathSettings(new.options)
        // A cap set through the API stands unless the file changed that very key.
        if reapplyFlowLimits(oldConfigured: oldFlowLimits) {
            log.notice("reload: flow limits now \(FlowKind.allCases.map { "\($0.optionName)=\(flowLimits[$0])" }.joined(separator: ","))")
            changes += 1
        }
        refreshSecurityAddresses()
        if staticLeasesChanged {
            applyStaticLeases()
            log.notice("reload: static leases now \(new.staticLeases.count), DHCP pool ends at \(dhcpConfig().poolEnd)")
            changes += 1
        }
        if macCapChanged {
            framePath.setMACsPerPort(new.options.maxMACs)
            if !staticLeasesChanged { applyStaticLeases() }
            log.notice("reload: max-macs now \(new.options.maxMACs)")
            changes += 1
        }
        return changes
    }
}

extension Daemon {
    /// Re-reads the config file and applies the difference.
    func reload() {
        guard let reloadSource else {
            log.notice("SIGHUP: nothing to reload (slirpd was started without --config)")
            return
        }
        let configs: [NetworkConfig]
        do {
            configs = try reloadSource()
        } catch {
            log.error("SIGHUP: \(error.message); keeping the running configuration")
            return
        }
        log.notice("SIGHUP: reloading the configuration")
        notifier.send("RELOADING=1\nMONOTONIC_USEC=\(monotonicNanoseconds() / 1000)")
        defer { notify("READY=1") }
        var kept: [Network] = []
        for net in networks {
            if configs.contains(where: { $0.name == net.config.name }) {
                kept.append(net)
            } else {
                net.shutdown()
                stateLocks[net.config.name] = nil  // closing the descriptor releases the lock
                log.notice("reload: network \(net.config.name) removed")
            }
        }
        networks = kept
        for config in configs {
            if let index = networks.firstIndex(where: { $0.config.name == config.name }) {
                let net = networks[index]
                if net.config.sameShape(as: config) {
                    let changes = net.applyForwards(from: config)
                    if changes > 0 { log.notice("reload: network \(config.name): \(changes) change(s) to forwards or static leases") }
                    continue
                }
                log.notice("reload: network \(config.name) changed beyond its forwards: restarting it (its guests must reconnect)")
                net.shutdown()
                networks.remove(at: index)
            }
            do {
                let net = try startNetwork(config)
                log.notice("reload: network \(config.name) started")
                for line in attachLines(net) { log.notice("\(line)") }
            } catch {
                log.error("reload: cannot start network \(config.name): \(error.message)")
            }
        }
    }
}
