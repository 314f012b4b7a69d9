import ArgumentParser
import Foundation
import SlirpAPI

/// `unix:PATH` with a relative PATH made absolute here: the daemon's working directory is not the user's.
private func absoluteTarget(_ text: String) -> String {
    guard text.hasPrefix("unix:"), !text.hasPrefix("unix:/") else { return text }
    return "unix:" + FileManager.default.currentDirectoryPath + "/" + text.dropFirst("unix:".count)
}

struct Attach: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Dial a QEMU '-netdev stream,server=on' socket; slirpd re-dials it after drops and restarts.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The network (needed when slirpd runs several).") var network: String?
    @Argument(help: "unix:PATH, QEMU's addr.path") var target: String

    func run() throws {
        let name = try resolveNetwork(network, global)
        let (info, raw) = try global.send(.POST, networkPath(name, "attachments"),
                                          body: AttachmentRequest(target: absoluteTarget(target)), as: AttachmentInfo.self)
        if global.json { return printJSON(raw) }
        print(info.connected ? "attached \(info.target) as guest \(info.guest.map(String.init) ?? "?")"
                             : "added \(info.target); not reachable yet (\(info.lastError ?? "no answer")), retrying")
    }
}

struct Detach: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop dialling a QEMU socket added with attach, and drop its connection.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The network (needed when slirpd runs several).") var network: String?
    @Argument(help: "unix:PATH, as attached") var target: String

    func run() throws {
        let name = try resolveNetwork(network, global)
        let query = absoluteTarget(target).addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~/:"))) ?? target
        let (info, raw) = try global.send(.DELETE, networkPath(name, "attachments") + "?target=\(query)", as: AttachmentInfo.self)
        if global.json { return printJSON(raw) }
        print("detached \(info.target)")
    }
}

struct Attachments: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the QEMU sockets slirpd dials, and whether each is connected.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this network.") var network: String?

    func run() throws {
        let (rows, raw) = try global.get(listPath(network, "attachments"), as: [AttachmentInfo].self)
        if global.json { return printJSON(raw) }
        table(["NETWORK", "TARGET", "SOURCE", "CONNECTED", "GUEST", "FAILURES", "LAST ERROR"], rows.map {
            [$0.network, $0.target, $0.source.rawValue, $0.connected ? "yes" : "no", $0.guest.map(String.init) ?? "",
             "\($0.failures)", $0.lastError ?? ""]
        })
    }
}
