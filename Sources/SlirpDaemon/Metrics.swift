import DataPlane
import FrameSwitch
import NetServices
import SlirpAPI
import SlirpKit
import VhostUser

/// The Prometheus text exposition format (version 0.0.4) for every network and guest.
enum Metrics {
    static func render(_ networks: [Network]) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: Int)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for s in samples { out += "\(name){\(s.labels)} \(s.value)\n" }
        }
        let nets = networks.map { (label: "network=\"\(escape($0.config.name))\"", net: $0) }
        family("slirpd_guests", "gauge", "Guests attached.", nets.map { ($0.label, $0.net.ports.count) })
        family("slirpd_leases", "gauge", "DHCP leases granted (including restored ones).", nets.map { ($0.label, $0.net.leases.count) })
        family("slirpd_dhcp_offers_pending", "gauge", "DHCP offers made and not yet taken up (held a few seconds each).",
               nets.map { ($0.label, $0.net.dhcp?.pendingOffers ?? 0) })
        family("slirpd_forwards", "gauge", "Host forwards configured.", nets.map { ($0.label, $0.net.forwards.count) })
        family("slirpd_arp_proxied_total", "counter", "ARP requests from the NAT answered by the switch for attached guests.",
               nets.map { ($0.label, $0.net.framePath.arpProxied) })
        family("slirpd_ndp_proxied_total", "counter", "Neighbor Solicitations from the NAT answered by the switch for attached guests.",
               nets.map { ($0.label, $0.net.framePath.ndpProxied) })
        family("slirpd_port_security_dropped_total", "counter",
               "Guest frames port security dropped, by reason: nat_mac, mac_limit, reserved_address, taken_address, invalid_source, address_limit, dhcp_chaddr_mismatch, dhcp_client_limit, dhcp_port_cap.",
               nets.flatMap { n in SecurityViolation.allCases.map { ("\(n.label),reason=\"\($0.rawValue)\"", n.net.framePath.securityDrops[$0, default: 0]) } })
        family("slirpd_nat_ingress_dropped_total", "counter",
               "Guest frames for the NAT dropped because libslirp would misread their lengths, by reason.",
               nets.flatMap { n in NATIngressCheck.Reason.allCases.map { ("\(n.label),reason=\"\($0.label)\"", n.net.framePath.ingressCheck.dropped[$0.rawValue]) } })
        family("slirpd_nat_ingress_rewritten_total", "counter",
               "Guest frames for the NAT rewritten before libslirp: TCP urgent pointer cleared, IPv6 bytes past the payload cut.",
               nets.map { ($0.label, $0.net.framePath.ingressCheck.rewritten) })
        family("slirpd_tcp_shim_flows", "gauge", "TCP flows the window shim tracks.", nets.map { ($0.label, $0.net.framePath.tcpShim.flowCount) })
        family("slirpd_tcp_shim_scaled_flows", "gauge", "TCP flows offered a scaled window beyond libslirp's 64 KiB.",
               nets.map { ($0.label, $0.net.framePath.tcpShim.scaledFlowCount) })
        family("slirpd_tcp_shim_queued_bytes", "gauge", "Guest TCP payload held until libslirp's window takes it.",
               nets.map { ($0.label, $0.net.framePath.tcpShim.queuedBytes) })
        family("slirpd_tcp_shim_dropped_total", "counter",
               "Guest TCP segments the window shim dropped: beyond the window offered, already held, or over a cap.",
               nets.map { ($0.label, $0.net.framePath.tcpShim.droppedTotal) })
        family("slirpd_tcp_early_ack_flows", "gauge", "TCP flows whose data from libslirp slirpd acknowledges early and delivers itself.",
               nets.map { ($0.label, $0.net.framePath.earlyACK.flowCount) })
        family("slirpd_tcp_early_ack_held_bytes", "gauge", "libslirp's TCP data acknowledged to it and kept until the guest acknowledges it.",
               nets.map { ($0.label, $0.net.framePath.earlyACK.heldBytes) })
        family("slirpd_tcp_early_acks_total", "counter", "ACKs sent to libslirp on a guest's behalf.",
               nets.map { ($0.label, $0.net.framePath.earlyACK.earlyACKsSent) })
        family("slirpd_tcp_early_ack_retransmits_total", "counter", "Kept TCP segments resent to a guest, by cause: dup_ack (duplicate or partial ACKs), timeout.",
               nets.flatMap { n in [("\(n.label),cause=\"dup_ack\"", n.net.framePath.earlyACK.fastRetransmits),
                                    ("\(n.label),cause=\"timeout\"", n.net.framePath.earlyACK.timeoutRetransmits)] })
        family("slirpd_tcp_early_ack_window_cuts_total", "counter", "Congestion windows toward guests cut for a loss (slirpd resends for libslirp).",
               nets.map { ($0.label, $0.net.framePath.earlyACK.windowCuts) })
        family("slirpd_tcp_early_ack_resets_total", "counter", "TCP flows reset because the guest stopped answering slirpd's retransmissions.",
               nets.map { ($0.label, $0.net.framePath.earlyACK.flowsReset) })
        family("slirpd_tcp_early_ack_absorbed_total", "counter", "Guest ACKs not passed to libslirp because they told it nothing new.",
               nets.map { ($0.label, $0.net.framePath.earlyACK.guestACKsAbsorbed) })
        family("slirpd_tcp_segmented_total", "counter",
               "TCP segments larger than a guest's MTU cut into segments of its MSS (software TSO).",
               nets.map { ($0.label, $0.net.framePath.segmentedFrames) })
        family("slirpd_tcp_syns_replayed_total", "counter",
               "Guest SYNs given to libslirp again once it answered them, so it reads their MSS (libslirp 4.7 drops it otherwise).",
               nets.map { ($0.label, $0.net.framePath.synsReplayed) })
        family("slirpd_tcp_coalesced_total", "counter",
               "Guest TCP segments merged into the one before them for libslirp (software GRO).",
               nets.map { ($0.label, $0.net.framePath.coalescedSegments) })
        family("slirpd_tcp_merged_to_guests_total", "counter",
               "libslirp's TCP segments merged into the one before them toward a guest that takes large segments.",
               nets.map { ($0.label, $0.net.framePath.mergedTowardGuests) })
        family("slirpd_ip_fragmented_total", "counter",
               "IP packets larger than a guest's MTU sent to it as fragments.",
               nets.map { ($0.label, $0.net.framePath.fragmentedFrames) })
        family("slirpd_oversized_dropped_total", "counter",
               "Frames larger than a guest's MTU that could not be cut (IPv4 with DF, not IP), dropped.",
               nets.map { ($0.label, $0.net.framePath.oversizedDropped) })
        family("slirpd_nat_unknown_unicast_dropped_total", "counter",
               "Unicast frames from the NAT to a destination no guest holds, dropped instead of flooded to every guest.",
               nets.map { ($0.label, $0.net.framePath.natUnknownUnicastDropped) })
        // VXLAN (VXLANUplink.swift): only networks with an uplink have these samples.
        let uplinks = nets.compactMap { n in n.net.uplink.map { (label: n.label, net: n.net, uplink: $0) } }
        func perRemote(_ value: (VXLANUplink.RemoteCounters) -> Int) -> [(labels: String, value: Int)] {
            uplinks.flatMap { u in
                u.uplink.shownEndpoints.map { r in
                    ("\(u.label),remote=\"\(escape(r.description))\"", value(u.uplink.counters[VXLANUplink.peer(r)] ?? VXLANUplink.RemoteCounters()))
                }
            }
        }
        family("slirpd_vxlan_encapsulated_frames_total", "counter", "Frames sent over the VXLAN uplink, per remote (a flood counts once per remote).",
               perRemote(\.encapsulatedFrames))
        family("slirpd_vxlan_encapsulated_bytes_total", "counter", "Inner frame bytes sent over the VXLAN uplink, per remote.",
               perRemote(\.encapsulatedBytes))
        family("slirpd_vxlan_decapsulated_frames_total", "counter", "Frames received over the VXLAN uplink from each remote (before the switch's checks).",
               perRemote(\.decapsulatedFrames))
        family("slirpd_vxlan_decapsulated_bytes_total", "counter", "Inner frame bytes received over the VXLAN uplink, per remote.",
               perRemote(\.decapsulatedBytes))
        family("slirpd_vxlan_dropped_total", "counter",
               "VXLAN datagrams and frames dropped, by reason: unknown_remote, bad_header, wrong_vni, truncated, send_failed (the uplink socket); local_source, gateway, dhcp, spoofed_address, table_full, not_local (the distributed gateway's rules).",
               uplinks.flatMap { u in
                   VXLANUplink.Drop.allCases.map { ("\(u.label),reason=\"\($0.rawValue)\"", u.uplink.drops[$0, default: 0]) }
                   + FramePath.UplinkDrop.allCases.map { ("\(u.label),reason=\"\($0.rawValue)\"", u.net.framePath.uplinkDrops[$0, default: 0]) }
               })
        family("slirpd_vxlan_remote_macs", "gauge", "MACs learnt behind the VXLAN uplink.",
               uplinks.map { ($0.label, $0.uplink.table.count) })
        family("slirpd_nat_connections_reset_total", "counter", "NAT connections reset for guests that left without closing them.",
               nets.map { ($0.label, $0.net.natConnectionsReset) })
        family("slirpd_ipv4_reassembled_total", "counter", "IPv4 datagrams from guests to the NAT put back together from fragments.",
               nets.map { ($0.label, $0.net.framePath.reassembly.reassembled) })
        family("slirpd_ipv4_fragments_dropped_total", "counter", "IPv4 fragments from guests to the NAT dropped (malformed, overlapping, or over the limits).",
               nets.map { ($0.label, $0.net.framePath.fragmentsDropped) })
        family("slirpd_dns_queries_total", "counter", "DNS queries answered from the network's own names.",
               nets.map { ($0.label, $0.net.dns?.answeredLocally ?? 0) })
        family("slirpd_dns_forwarded_total", "counter", "DNS queries sent to the upstream resolver.",
               nets.map { ($0.label, $0.net.dns?.forwarded ?? 0) })
        family("slirpd_dns_failures_total", "counter", "DNS queries answered SERVFAIL (upstream timeout, error or none).",
               nets.map { ($0.label, $0.net.dns?.failed ?? 0) })
        family("slirpd_dns_fragmented_queries_total", "counter", "DNS queries over UDP put back together from IPv4 fragments.",
               nets.map { ($0.label, $0.net.dns?.queryFragments.reassembled ?? 0) })
        family("slirpd_dns_fragments_dropped_total", "counter", "IPv4 fragments to the DNS address dropped (malformed, overlapping, not a query, or over the limits).",
               nets.map { ($0.label, $0.net.dns?.fragmentsDropped ?? 0) })
        family("slirpd_dns_tcp_connections", "gauge", "DNS-over-TCP connections open.",
               nets.map { ($0.label, $0.net.dns?.connections.count ?? 0) })
        family("slirpd_dns_tcp_evicted_total", "counter", "DNS-over-TCP connections closed, the idlest first, to make room for a new one.",
               nets.map { ($0.label, $0.net.dns?.connectionsEvicted ?? 0) })
        family("slirpd_dns_tcp_timed_out_total", "counter", "DNS-over-TCP connections closed for being idle or stuck in a partial message.",
               nets.map { ($0.label, $0.net.dns?.connectionsTimedOut ?? 0) })
        family("slirpd_tftp_sessions", "gauge", "TFTP transfers in progress (tftp=).",
               nets.map { ($0.label, $0.net.tftp?.sessionCount ?? 0) })
        family("slirpd_tftp_sessions_total", "counter", "TFTP transfers started, by outcome so far: started, completed (last block acknowledged), timed_out.",
               nets.flatMap { n in
                   let c = n.net.tftp?.counters ?? TFTPServer.Counters()
                   return [("\(n.label),outcome=\"started\"", c.sessionsStarted), ("\(n.label),outcome=\"completed\"", c.sessionsCompleted),
                           ("\(n.label),outcome=\"timed_out\"", c.sessionsTimedOut)]
               })
        family("slirpd_tftp_bytes_total", "counter", "TFTP DATA payload bytes sent, retransmissions included.",
               nets.map { ($0.label, $0.net.tftp?.counters.bytesSent ?? 0) })
        family("slirpd_tftp_retransmissions_total", "counter", "TFTP DATA blocks and OACKs sent again: timeouts, repeated ACKs, gaps in a window.",
               nets.map { ($0.label, $0.net.tftp?.counters.retransmissions ?? 0) })
        family("slirpd_tftp_errors_total", "counter", "TFTP ERROR packets sent (file not found, access violation, option refused, timeouts...).",
               nets.map { ($0.label, $0.net.tftp?.counters.errorsSent ?? 0) })
        family("slirpd_flows_refused_total", "counter", "New guest flows toward libslirp refused for the guest's cap (max-tcp= etc.), by kind.",
               nets.flatMap { n in FlowKind.allCases.map { ("\(n.label),kind=\"\($0.rawValue)\"", n.net.flowAccounting.refused[$0] ?? 0) } })
        family("slirpd_flows_refused_shortage_total", "counter", "New guest flows refused because slirpd was short of descriptors.",
               nets.map { ($0.label, $0.net.flowAccounting.refusedForShortage) })
        family("slirpd_guest_flows", "gauge", "Flows a guest holds open in libslirp, by kind (dns-tcp is part of tcp).", nets.flatMap { n in
            n.net.ports.values.sorted { $0.id < $1.id }.flatMap { port in
                let f = port.flows
                let label = "\(n.label),guest=\"\(port.id.raw)\""
                return [("\(label),kind=\"tcp\"", f.tcpCount), ("\(label),kind=\"udp\"", f.udpCount),
                        ("\(label),kind=\"icmp\"", f.icmpCount), ("\(label),kind=\"dns-tcp\"", f.dnsTCPCount)]
            }
        })
        family("slirpd_guest_flow_buffer_bytes", "gauge", "libslirp buffer memory of a guest's flows, estimated.", nets.flatMap { n in
            n.net.ports.values.sorted { $0.id < $1.id }.map { ("\(n.label),guest=\"\($0.id.raw)\"", $0.flows.bufferEstimate) }
        })
        let totals: [(name: String, help: String, key: KeyPath<Counters, Int>)] = [
            ("rx_frames", "Frames received from guests.", \.rxFrames),
            ("rx_bytes", "Bytes received from guests.", \.rxBytes),
            ("tx_frames", "Frames queued to guests.", \.txFrames),
            ("tx_bytes", "Bytes queued to guests.", \.txBytes),
            ("dropped_frames", "Frames dropped: full guest queues, refused or invalid sources.", \.drops),
        ]
        for (name, help, key) in totals {
            family("slirpd_\(name)_total", "counter", help + " Per network, including guests that have left.",
                   nets.map { ($0.label, $0.net.totalCounters[keyPath: key]) })
        }
        for (name, help, key) in totals {
            family("slirpd_guest_\(name)_total", "counter", help + " Per attached guest.", nets.flatMap { n in
                n.net.ports.values.sorted { $0.id < $1.id }.map { port in
                    let mac = port.mac.map { ",mac=\"\($0)\"" } ?? ""
                    return ("\(n.label),guest=\"\(port.id.raw)\",transport=\"\(port.transport.rawValue)\"\(mac)", port.counters[keyPath: key])
                }
            })
        }
        // Per-guest samples of what some ports have (a tap's offloads, a vhost-user link).
        func perGuest<T>(_ pick: (GuestPort) -> T?) -> [(String, T)] {
            nets.flatMap { n in
                n.net.ports.values.sorted { $0.id < $1.id }.compactMap { port in
                    pick(port).map { ("\(n.label),guest=\"\(port.id.raw)\"", $0) }
                }
            }
        }
        let taps = perGuest(\.tapOffload)
        family("slirpd_tap_gso_frames_total", "counter",
               "Frames with a GSO virtio-net header (one TCP or UDP super-frame) read from a tap (in) or written to it (out). Per attached tap.",
               taps.flatMap { t in [("\(t.0),direction=\"in\"", t.1.gsoIn), ("\(t.0),direction=\"out\"", t.1.gsoOut)] })
        family("slirpd_tap_malformed_headers_total", "counter",
               "Frames read from a tap whose virtio-net header did not describe them, dropped. Per attached tap.",
               taps.map { ($0.0, $0.1.malformedTotal) })
        family("slirpd_tap_refused_frames_total", "counter",
               "Frames a tap's kernel refused as invalid on write (EINVAL), dropped. Per attached tap.",
               taps.map { ($0.0, $0.1.refused) })
        let vhosts = perGuest(\.vhostUser)
        family("slirpd_vhost_user_gso_frames_total", "counter",
               "Frames larger than the guest's MTU (GSO) taken from a vhost-user guest's TX ring (in) or written to its RX ring (out). Per attached vhost-user guest.",
               vhosts.flatMap { v in [("\(v.0),direction=\"in\"", v.1.gsoIn), ("\(v.0),direction=\"out\"", v.1.gsoOut)] })
        family("slirpd_vhost_user_malformed_frames_total", "counter",
               "TX chains from a vhost-user guest dropped: a virtio-net header that does not describe its frame, or a frame too short or too long. Per attached vhost-user guest.",
               vhosts.map { ($0.0, $0.1.malformed) })
        family("slirpd_vhost_user_too_large_frames_total", "counter",
               "Frames toward a vhost-user guest larger than all the RX buffers it posts, dropped. Per attached vhost-user guest.",
               vhosts.map { ($0.0, $0.1.tooLarge) })
        family("slirpd_vhost_user_closed_total", "counter",
               "vhost-user connections closed by slirpd, by reason: protocol (a malformed, unknown or out-of-order message), bad ring (a ring or descriptor outside the rules), mapping (the guest's memory could not be mapped).",
               nets.flatMap { n in VhostUserError.Kind.allCases.map { ("\(n.label),reason=\"\($0.rawValue.replacing(" ", with: "_"))\"", n.net.vhostUserCloses[$0, default: 0]) } })
        out += "# HELP slirpd_build_info The libslirp in use.\n# TYPE slirpd_build_info gauge\n"
        out += "slirpd_build_info{libslirp=\"\(escape(SlirpStack.libraryVersion))\"} 1\n"
        return out
    }

    /// Label values escape backslash, quote and newline.
    static func escape(_ value: String) -> String {
        var s = ""
        for c in value {
            switch c {
            case "\\": s += "\\\\"
            case "\"": s += "\\\""
            case "\n": s += "\\n"
            default: s.append(c)
            }
        }
        return s
    }
}
