import SlirpAPI
import Testing

@Suite("slirpctl qemu-args --zephyr")
struct ZephyrTests {
    @Test("each board's NIC, qualifiers ignored", arguments: [
        ("qemu_x86", "e1000"), ("qemu_x86/atom", "e1000"), ("qemu_cortex_a53", "e1000"),
        ("qemu_cortex_a53/qemu_cortex_a53/smp", "e1000"), ("mps2/an385", "lan9118"), ("mps2_an385", "lan9118"),
        ("qemu_cortex_m3", "stellaris"), ("qemu_cortex_m3/ti_lm3s6965", "stellaris"),
    ])
    func boardModel(board: String, model: String) throws {
        #expect(try Zephyr.nicModel(board: board) == model)
    }

    @Test("an unknown board names the known ones", arguments: ["qemu_x86_64", "mps2", "", "/qemu_x86"])
    func unknownBoard(board: String) {
        #expect(throws: Zephyr.Failure.unknownBoard(board)) { try Zephyr.nicModel(board: board) }
        let message = "\(Zephyr.Failure.unknownBoard(board))"
        #expect(message.contains("--model") && message.contains("qemu_x86, qemu_cortex_a53, mps2/an385, mps2_an385, qemu_cortex_m3"))
    }

    @Test("only text that cmake and the shell pass through unchanged",
          arguments: ["stream:/tmp/my dir/net.sock", "stream:/tmp/\"x\".sock", "stream:/tmp/$HOME.sock", "stream:/tmp/a;b",
                      "stream:/tmp/a'b", "stream:/tmp/a\\b", "stream:/tmp/`id`", "e1000\t"])
    func unportable(value: String) {
        #expect(throws: Zephyr.Failure.self) { try Zephyr.checkPortable(value) }
    }

    @Test(arguments: ["stream:/run/user/1000/slirpd/default.sock", "tcp:[::1]:5555", "dgram:/tmp/slirpd-0/lab_2.dgram", "imx.enet"])
    func portable(value: String) throws {
        try Zephyr.checkPortable(value)
    }

    @Test("the usage text: an export line and the west build form")
    func usage() throws {
        let flags = "-netdev stream,id=n0,server=off,addr.type=unix,addr.path=/t/n.sock -device e1000,netdev=n0,mac=52:54:00:00:00:01"
        let lines = Zephyr.usage(flags: flags, board: "qemu_x86", model: "e1000", mac: "52:54:00:00:00:01",
                                 endpoint: "stream:/t/n.sock", network: "default").split(separator: "\n")
        #expect(lines.filter { !$0.hasPrefix("#") } == ["export QEMU_EXTRA_FLAGS=\"\(flags)\""])
        #expect(lines.contains("#   west build -b qemu_x86 APP -- '-DCONFIG_QEMU_EXTRA_FLAGS=\"\(flags)\"'"))
        #expect(lines[0].contains("board qemu_x86, NIC e1000 (-device), MAC 52:54:00:00:00:01"))
        let onBoard = Zephyr.usage(flags: flags, board: nil, model: "lan9118", mac: "52:54:00:00:00:01",
                                   endpoint: "stream:/t/n.sock", network: "default")
        #expect(onBoard.contains("NIC lan9118 (on-board NIC, -net nic)") && onBoard.contains("west build -b BOARD APP"))
    }
}
