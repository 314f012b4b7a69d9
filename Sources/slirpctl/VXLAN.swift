import ArgumentParser
import Foundation
import SlirpAPI

/// `slirpctl vxlan show|add-remote|remove-remote`: a network's VXLAN uplink.
struct VXLANCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vxlan", abstract: "Show a network's VXLAN uplink, or add and remove its remotes at run time.",
        subcommands: [Show.self, AddRemote.self, RemoveRemote.self], defaultSubcommand: Show.self)

    static func printInfo(_ info: VXLANInfo) {
        print("network \(info.network): vni \(info.vni), local \(info.local)")
        table(["REMOTE", "ENCAP FRAMES", "ENCAP BYTES", "DECAP FRAMES", "DECAP BYTES", "MACS"], info.remotes.map {
            [$0.remote, "\($0.encapsulatedFrames)", "\($0.encapsulatedBytes)", "\($0.decapsulatedFrames)",
             "\($0.decapsulatedBytes)", $0.macs.joined(separator: ",")]
        })
        let drops = info.drops.filter { $0.value > 0 }.sorted { $0.key < $1.key }
        if !drops.isEmpty { print("dropped: " + drops.map { "\($0.key) \($0.value)" }.joined(separator: ", ")) }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The VNI, local address, remotes, their counters and learnt MACs.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?

        func run() throws {
            let name = try resolveNetwork(network, global)
            let (info, raw) = try global.get(networkPath(name, "vxlan"), as: VXLANInfo.self)
            if global.json { return printJSON(raw) }
            VXLANCommand.printInfo(info)
        }
    }

    struct AddRemote: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-remote", abstract: "Add a remote VTEP (until the next reload or restart).")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?
        @Argument(help: "IPv4[:PORT], IPv6 or [IPv6]:PORT (port 4789 by default).") var remote: String

        func run() throws {
            let name = try resolveNetwork(network, global)
            let (info, raw) = try global.send(.POST, networkPath(name, "vxlan") + "/remotes",
                                              body: VXLANRemoteRequest(remote: remote), as: VXLANInfo.self)
            if global.json { return printJSON(raw) }
            print("added remote \(remote)")
            VXLANCommand.printInfo(info)
        }
    }

    struct RemoveRemote: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove-remote", abstract: "Remove a remote VTEP and forget the MACs learnt behind it.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The network (needed when slirpd runs several).") var network: String?
        @Argument(help: "The remote as shown by 'slirpctl vxlan show'.") var remote: String

        func run() throws {
            let name = try resolveNetwork(network, global)
            let query = remote.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? remote
            let (info, raw) = try global.send(.DELETE, networkPath(name, "vxlan") + "/remotes?remote=\(query)", as: VXLANInfo.self)
            if global.json { return printJSON(raw) }
            print("removed remote \(remote)")
            VXLANCommand.printInfo(info)
        }
    }
}
