// swift-tools-version: 6.0
// libFuzzer targets for slirpd's readers of guest-supplied bytes and of its option strings
// and config file, in a package of their own so that the root package's `swift build` and
// `swift test` never see them or the fuzzer flags: Scripts/fuzz builds this one with
// `-Xswiftc -sanitize=fuzzer,...` into Fuzz/.build.
//
// Each target's `LLVMFuzzerTestOneInput` is the function under test; its main.swift
// starts libFuzzer's driver. libFuzzer's own `main` cannot be used: SwiftPM links every
// executable with `--defsym main=<module>_main` (so tests can link executable modules),
// which takes `main` away from libFuzzer and, with `-parse-as-library`, fails to link
// for want of `<module>_main`. Top-level code in main.swift is exactly `<module>_main`.
import PackageDescription

/// One fuzz target: libFuzzer's driver declaration and these products of slirpd.
func fuzzTarget(_ name: String, _ products: [String]) -> Target {
    let slirpd: [Target.Dependency] = products.map { .product(name: $0, package: "slirpd") }
    return .executableTarget(name: name, dependencies: ["CFuzzerDriver"] + slirpd)
}

let package = Package(
    name: "slirpd-fuzz",
    dependencies: [.package(name: "slirpd", path: "..")],
    targets: [
        // Declares LLVMFuzzerRunDriver; the definition comes with -sanitize=fuzzer.
        .systemLibrary(name: "CFuzzerDriver"),
        fuzzTarget("fuzz-dhcp", ["FrameSwitch", "NetOptions", "NetServices"]),
        fuzzTarget("fuzz-dns", ["NetOptions", "NetServices"]),
        fuzzTarget("fuzz-framer", ["FrameSwitch"]),
        fuzzTarget("fuzz-options", ["NetOptions"]),
        fuzzTarget("fuzz-config", ["DaemonConfig", "ConfigTOML", "NetOptions", "NetServices"]),
        // The whole frame path of one network, through SlirpDaemon's FrameFuzzNetwork.
        fuzzTarget("fuzz-frames", ["FrameSwitch", "SlirpDaemon"]),
        // A guest's TCP stream to a loopback listener through the same path: what libslirp
        // writes to the host is what the guest sent (issue 22).
        fuzzTarget("fuzz-nat-stream", ["FrameSwitch", "SlirpDaemon"]),
        // The TCP window shim: both sides' frames in any order (DataPlane/TCPWindowShim.swift).
        fuzzTarget("fuzz-tcp-shim", ["FrameSwitch", "DataPlane"]),
        // The edge stages: software TSO and GRO (DataPlane/TCPSegmentation.swift, TCPCoalescer.swift).
        fuzzTarget("fuzz-edge", ["FrameSwitch", "DataPlane"]),
        // The tap's virtio-net header: random headers and frame sizes (DataPlane/VirtioNetHeader.swift).
        fuzzTarget("fuzz-vnet", ["FrameSwitch", "DataPlane"]),
        // VXLAN decapsulation and the distributed gateway's rules (DataPlane/VXLAN.swift, FramePathUplink.swift).
        fuzzTarget("fuzz-vxlan", ["FrameSwitch", "DataPlane"]),
        // The vhost-user back end: random rings in fake guest memory, random message streams (VhostUser).
        fuzzTarget("fuzz-vhost", ["DataPlane", "VhostUser"]),
    ],
    swiftLanguageModes: [.v6]
)
