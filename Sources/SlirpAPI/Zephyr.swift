/// `slirpctl qemu-args --zephyr`: the flags that attach one Zephyr QEMU instance, as
/// Zephyr's build takes them (the `QEMU_EXTRA_FLAGS` environment variable or the
/// `CONFIG_QEMU_EXTRA_FLAGS` Kconfig string).
public enum Zephyr {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case unknownBoard(String)
        case unportable(String, Character)

        public var description: String {
            switch self {
            case .unknownBoard(let board):
                return "unknown Zephyr board \(board): give its NIC with --model (e1000, lan9118, stellaris, ...) "
                    + "or use one of \(Zephyr.boards.map(\.name).joined(separator: ", "))"
            case .unportable(let value, let c):
                return "\(value) contains \(c == " " ? "a space" : "'\(c)'"), which Zephyr's cmake or the shell would break apart "
                    + "(cmake splits QEMU_EXTRA_FLAGS at every space, without quoting): use a path of letters, digits and -_./"
            }
        }
    }

    /// Zephyr boards that QEMU runs with an Ethernet NIC, and that NIC (the board's
    /// CONFIG_ETH_NIC_MODEL); `mps2_an385` is the older name of `mps2/an385`.
    public static let boards: [(name: String, model: String)] = [
        ("qemu_x86", "e1000"), ("qemu_cortex_a53", "e1000"),
        ("mps2/an385", "lan9118"), ("mps2_an385", "lan9118"), ("qemu_cortex_m3", "stellaris"),
    ]

    /// The board's NIC model. A board target with qualifiers (`qemu_x86/atom`) counts as
    /// its longest known prefix.
    public static func nicModel(board: String) throws(Failure) -> String {
        var name = Substring(board)
        while true {
            if let known = boards.first(where: { $0.name == name }) { return known.model }
            guard let slash = name.lastIndex(of: "/") else { throw .unknownBoard(board) }
            name = name[..<slash]
        }
    }

    /// Refuses what would not reach QEMU intact: Zephyr's cmake splits the flags at every
    /// space (no quoting), and the printed lines put them inside shell quotes.
    public static func checkPortable(_ value: String) throws(Failure) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:,=@+%[]")
        if let bad = value.first(where: { !allowed.contains($0) }) { throw .unportable(value, bad) }
    }

    /// What `slirpctl qemu-args --zephyr` prints: a shell line setting QEMU_EXTRA_FLAGS
    /// (the whole text can be `eval`ed), and as comments the `west build` form and what
    /// the build must leave out.
    public static func usage(flags: String, board: String?, model: String, mac: String, endpoint: String, network: String) -> String {
        let kind = QEMUArgs.onBoardModels.contains(model) ? "on-board NIC, -net nic" : "-device"
        return """
            # Zephyr \(board.map { "board \($0), " } ?? "")NIC \(model) (\(kind)), MAC \(mac), on network \(network) over \(endpoint).
            # One instance per invocation: run this again for every further instance (each gets its own MAC).
            export QEMU_EXTRA_FLAGS="\(flags)"
            # Or in the build configuration:
            #   west build -b \(board ?? "BOARD") APP -- '-DCONFIG_QEMU_EXTRA_FLAGS="\(flags)"'
            # Leave CONFIG_NET_QEMU_USER and CONFIG_NET_QEMU_ETHERNET unset, so that Zephyr adds -net none.
            # QEMU_EXTRA_FLAGS is read when cmake configures the build directory, not by west build -t run.

            """
    }
}
