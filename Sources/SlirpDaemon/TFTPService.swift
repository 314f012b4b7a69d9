import FrameSwitch
import NetServices
import PosixIO

// slirpd's own TFTP server on the gateway address (`tftp=DIR`), in place of libslirp's.
//
// Theory of operation. With `tftp=` set, SlirpStack leaves libslirp's TFTP off (no
// `tftp_path`) and `serveTFTP` claims every UDP datagram a guest sends to the gateway's
// port 69, over IPv4 or IPv6, for NetServices' `TFTPServer`, a pure state machine. Its
// replies go to the asking guest alone, cut into IP fragments only if the guest's MTU
// is below a default 512-byte block's datagram. Its retransmission timers are one more
// deadline of the loop (`nextServiceDeadline`, `runTimers`). Files are opened through
// PosixIO's `RootedFile`, which keeps them inside the root (README, "Network boot").
// Without `tftp=`, datagrams to port 69 go on to libslirp, which refuses them as before.

/// `tftp=`'s directory as TFTPServer's file source.
struct RootedFileSource: TFTPFileSource {
    let root: String

    func open(_ path: String) -> Result<any TFTPFile, TFTPOpenFailure> {
        do throws(RootedFile.OpenError) {
            return .success(DiskFile(try RootedFile(root: root, relativePath: path)))
        } catch {
            return .failure(error == .notFound ? .notFound : .accessViolation)
        }
    }

    /// RootedFile under TFTPServer's protocol (a wrapper: both types are imported).
    final class DiskFile: TFTPFile {
        let file: RootedFile
        init(_ file: RootedFile) { self.file = file }
        var size: UInt64 { file.size }
        func read(at offset: UInt64, count: Int) -> [UInt8]? { file.read(at: offset, count: count) }
        func hasChanged() -> Bool { file.hasChanged() }
        func close() { file.close() }
    }
}

extension Network {
    func startTFTP() {
        guard let root = config.options.tftpRoot else { return }
        tftp = TFTPServer(serverMAC: Self.natMAC(config.options.host), files: RootedFileSource(root: root))
        log.info("TFTP: serving \(root) read-only on \(config.options.host):69 (blksize, tsize, timeout, windowsize)")
    }

    /// Takes a guest's UDP datagram to the gateway's port 69; true if it was one.
    func serveTFTP(_ port: GuestPort, _ frame: UnsafeRawBufferPointer) -> Bool {
        guard tftp != nil, UDPDatagram.destinationPort(frame: frame) == TFTPServer.port,
              let datagram = UDPDatagram.parse(frame: frame) else { return false }
        let o = config.options
        switch datagram.addresses {
        case .v4(_, let destination): guard destination == o.host.value else { return false }
        case .v6(_, let destination): guard destination == o.ipv6Host.bytes else { return false }
        }
        let frames = tftp?.handle(datagram, guest: port.id.raw, mtu: port.state.mtu, now: monotonicNanoseconds()) ?? []
        for reply in frames { sendTFTP(reply, port) }
        logTFTPEvents()
        return true
    }

    func runTFTPTimers(now: Int64) {
        guard let due = tftp?.nextDeadline, due <= now else { return }
        for out in tftp?.expire(now: now) ?? [] {
            guard let port = ports[PortID(out.guest)] else {
                tftp?.removeGuest(out.guest)  // the guest left: its sessions go too
                continue
            }
            sendTFTP(out.frame, port)
        }
        logTFTPEvents()
    }

    /// Transfers served and requests refused at debug level (a PXE client tries many names
    /// that do not exist); transfers cut short as warnings, paced like other guest-caused lines.
    private func logTFTPEvents() {
        for event in tftp?.takeEvents() ?? [] {
            switch event {
            case .served(let guest, let path, let bytes):
                log.debug("TFTP: port \(guest) fetched \(path) (\(bytes) bytes)")
            case .refused(let guest, let request, let code, let message):
                log.debug("TFTP: port \(guest) asked for '\(request)': error \(code), \(message)")
            case .abandoned(let guest, let path, let reason):
                tftpAbandoned += 1
                if isLoggedOccurrence(tftpAbandoned) {
                    log.warning("TFTP: transfer of \(path) to port \(guest) abandoned: \(reason) (\(tftpAbandoned) so far)")
                }
            }
        }
    }

    private func sendTFTP(_ frame: [UInt8], _ port: GuestPort) {
        let mtu = port.state.mtu
        guard frame.count > 14 + mtu else { return sendToGuest(frame, port) }
        let pieces = frame[12] == 0x86 ? IPv6Fragmentation.fragments(of: frame, mtu: mtu, identification: UInt32(truncatingIfNeeded: monotonicNanoseconds()))
                                       : IPv4Fragmentation.fragments(of: frame, mtu: mtu)
        for piece in pieces { sendToGuest(piece, port) }
    }
}
