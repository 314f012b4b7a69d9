import SlirpAPI
import Testing

@Suite("QEMU flags for a guest")
struct QEMUArgsTests {
    let mac = "52:54:00:12:ab:0c"

    @Test("a -device NIC, with host_mtu only for virtio-net")
    func deviceNIC() throws {
        #expect(try QEMUArgs.flags(endpoint: "stream:/run/net.sock", mac: mac, mtu: 9000)
            == "-netdev stream,id=n0,server=off,addr.type=unix,addr.path=/run/net.sock -device virtio-net-pci,netdev=n0,mac=\(mac),host_mtu=9000")
        #expect(try QEMUArgs.flags(endpoint: "stream:/run/net.sock", mac: mac, model: "e1000", mtu: 9000)
            == "-netdev stream,id=n0,server=off,addr.type=unix,addr.path=/run/net.sock -device e1000,netdev=n0,mac=\(mac)")
    }

    @Test("a datagram guest of the system units puts its socket in /run/slirpd/guests, others beside the network's")
    func datagramGuestSocketPlace() throws {
        #expect(try QEMUArgs.flags(endpoint: "dgram:/run/slirpd/default.dgram", mac: mac, model: "e1000")
            .contains("local.path=/run/slirpd/guests/guest-52540012ab0c.sock,remote.type=unix,remote.path=/run/slirpd/default.dgram "))
        #expect(try QEMUArgs.flags(endpoint: "dgram:/run/slirpd/lab/net.dgram", mac: mac, model: "e1000")
            .contains("local.path=/run/slirpd/lab/guest-52540012ab0c.sock,"))
        #expect(try QEMUArgs.flags(endpoint: "dgram:/tmp/slirpd-1000/default.dgram", mac: mac, model: "e1000")
            .contains("local.path=/tmp/slirpd-1000/guest-52540012ab0c.sock,"))
    }

    @Test("an on-board NIC joins the netdev with -net nic and macaddr=", arguments: ["lan9118", "stellaris"])
    func onBoardNIC(model: String) throws {
        #expect(try QEMUArgs.flags(endpoint: "tcp:0.0.0.0:5555", mac: mac, model: model, mtu: 9000)
            == "-netdev stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=5555 -net nic,model=\(model),netdev=n0,macaddr=\(mac)")
        #expect(try QEMUArgs.flags(endpoint: "dgram:/run/net.dgram", mac: mac, model: model)
            == "-netdev dgram,id=n0,local.type=unix,local.path=/run/guest-52540012ab0c.sock,remote.type=unix,remote.path=/run/net.dgram "
            + "-net nic,model=\(model),netdev=n0,macaddr=\(mac)")
    }

    @Test("a vhost-user endpoint puts the guest's RAM in a shared memfd and reconnects; virtio-net only")
    func vhostUser() throws {
        #expect(try QEMUArgs.flags(endpoint: "vhost-user:/run/net.vu", mac: mac, memory: "1G")
            == "-m 1G -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem "
            + "-chardev socket,id=c0,path=/run/net.vu,reconnect=1 -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0,mac=\(mac),vectors=0")
        #expect(throws: QEMUArgs.Failure.vhostUserNeedsVirtio(model: "e1000")) {
            try QEMUArgs.flags(endpoint: "vhost-user:/run/net.vu", mac: mac, model: "e1000")
        }
    }

    @Test("a fresh MAC is a unicast 52:54:00 address outside the taken ones")
    func freshMAC() {
        let taken = Set((0..<200).map { _ in QEMUArgs.freshMAC() })
        for _ in 0..<200 {
            let mac = QEMUArgs.freshMAC(avoiding: taken)
            #expect(!taken.contains(mac))
            #expect(mac.hasPrefix("52:54:00:") && mac.count == 17)
            #expect(mac.split(separator: ":").allSatisfy { $0.count == 2 && $0.allSatisfy(\.isHexDigit) && $0.lowercased() == $0 })
        }
    }
}
