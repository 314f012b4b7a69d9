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

let package = Package(
    name: "slirpd-fuzz",
    dependencies: [.package(name: "slirpd", path: "..")],
    targets: [
        // Declares LLVMFuzzerRunDriver; the definition comes with -sanitize=fuzzer.
        .systemLibrary(name: "CFuzzerDriver"),
        .executableTarget(
            name: "fuzz-dhcp",
            dependencies: [
                "CFuzzerDriver",
                .product(name: "FrameSwitch", package: "slirpd"),
                .product(name: "NetOptions", package: "slirpd"),
                .product(name: "NetServices", package: "slirpd"),
            ]),
        .executableTarget(
            name: "fuzz-dns",
            dependencies: [
                "CFuzzerDriver",
                .product(name: "NetOptions", package: "slirpd"),
                .product(name: "NetServices", package: "slirpd"),
            ]),
        .executableTarget(
            name: "fuzz-framer",
            dependencies: ["CFuzzerDriver", .product(name: "FrameSwitch", package: "slirpd")]),
        .executableTarget(
            name: "fuzz-options",
            dependencies: ["CFuzzerDriver", .product(name: "NetOptions", package: "slirpd")]),
        .executableTarget(
            name: "fuzz-config",
            dependencies: [
                "CFuzzerDriver",
                .product(name: "DaemonConfig", package: "slirpd"),
                .product(name: "NetOptions", package: "slirpd"),
                .product(name: "NetServices", package: "slirpd"),
            ]),
        // The whole frame path of one network, through SlirpDaemon's FrameFuzzNetwork.
        .executableTarget(
            name: "fuzz-frames",
            dependencies: [
                "CFuzzerDriver",
                .product(name: "FrameSwitch", package: "slirpd"),
                .product(name: "SlirpDaemon", package: "slirpd"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
