// swift-tools-version: 6.1
import PackageDescription

/// Release builds of the frame path leave out Swift's dynamic exclusivity checks: every
/// access to a class's stored property in the one-thread loop otherwise costs a runtime
/// call (callgrind: 28% of slirpd's instructions per 1-byte TCP round trip). Debug builds,
/// which the tests and fuzzers run, keep them.
let fastRelease: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release))]

/// The daemon's release link, for idle memory (issue 20; VmRSS 24.5 -> 18.9 MiB measured):
/// the Swift runtime and FoundationEssentials linked in statically and unused code
/// dropped (`--gc-sections`, identical code folded), so the daemon maps one file, not a
/// dozen shared libraries each resident in 64 KiB blocks around every page it touches;
/// relative relocations packed (DT_RELR: 1.6 MB of `.rela.dyn` read in full at start,
/// 13 KB now); no exported symbol table (SwiftPM exports an executable's symbols so tests
/// can import it; none does, and the loader searched that 2.3 MB table first for every
/// library symbol). lld, the toolchain's linker: Debian's ld.gold has no DT_RELR.
let leanReleaseLink: [LinkerSetting] = [.unsafeFlags([
    "-static-stdlib", "-l_FoundationCollections", "-l_FoundationCShims", "-use-ld=lld", "-Xlinker", "--gc-sections", "-Xlinker", "--icf=all",
    "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic",
], .when(configuration: .release))]

let package = Package(
    name: "slirpd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "slirpd", targets: ["slirpd"]),
        .executable(name: "slirpctl", targets: ["slirpctl"]),
        // The daemon's TOML parser, run as a process so TOMLKit (and full Foundation) stay out of slirpd.
        .executable(name: "slirpd-toml", targets: ["slirpd-toml"]),
        // For the fuzz package in Fuzz/, which builds these with -sanitize=fuzzer.
        .library(name: "FrameSwitch", targets: ["FrameSwitch"]),
        .library(name: "DataPlane", targets: ["DataPlane"]),
        .library(name: "VhostUser", targets: ["VhostUser"]),
        .library(name: "NetOptions", targets: ["NetOptions"]),
        .library(name: "NetServices", targets: ["NetServices"]),
        .library(name: "DaemonConfig", targets: ["DaemonConfig"]),
        .library(name: "ConfigTOML", targets: ["ConfigTOML"]),
        .library(name: "SlirpDaemon", targets: ["SlirpDaemon"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        // No traits: the default FullFoundation links Foundation with ICU (11 MiB resident) into
        // the daemon for URL-encoded forms, and ConfigurationSupport is unused.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.20.0", traits: []),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
    ],
    targets: [
        // libslirp through Debian's libslirp-dev; no pkg-config (slirp.pc drags in glib-2.0's).
        .systemLibrary(name: "CSlirp", path: "Sources/CSlirp"),
        // Linux-only headers (eventfd, signalfd) that Glibc's module map omits.
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),
        .target(name: "PosixIO", dependencies: ["CLinux"], swiftSettings: fastRelease),
        .target(name: "FrameSwitch", swiftSettings: fastRelease),
        // Pure stages on the frame path between the switch and libslirp (frames in, frames out).
        .target(name: "DataPlane", dependencies: ["FrameSwitch"], swiftSettings: fastRelease),
        // The vhost-user protocol and split virtqueues (pure: memory mapping is injected).
        .target(name: "VhostUser", dependencies: ["DataPlane"], swiftSettings: fastRelease),
        .target(name: "NetOptions"),
        .target(name: "NetServices", dependencies: ["FrameSwitch", "NetOptions"], swiftSettings: fastRelease),
        .target(name: "SlirpKit", dependencies: ["CSlirp", "PosixIO", "NetOptions", "SlirpAPI"], swiftSettings: fastRelease),
        .target(
            name: "DaemonConfig",
            dependencies: ["NetOptions", "NetServices", "FrameSwitch", "PosixIO"]),
        // TOMLKit behind DaemonConfig's TOMLReader; never linked into slirpd (see TOMLNode.swift).
        .target(name: "ConfigTOML", dependencies: ["DaemonConfig", .product(name: "TOMLKit", package: "TOMLKit")]),
        .executableTarget(name: "slirpd-toml", dependencies: ["ConfigTOML", "DaemonConfig"]),
        // The API's JSON vocabulary, shared by the daemon and slirpctl.
        .target(name: "SlirpAPI"),
        .target(
            name: "ControlAPI",
            dependencies: [
                "SlirpAPI", "PosixIO",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "SlirpDaemon",
            dependencies: [
                "PosixIO", "SlirpKit", "FrameSwitch", "DataPlane", "VhostUser", "NetOptions", "DaemonConfig", "SlirpAPI",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: fastRelease),
        .executableTarget(
            name: "slirpd",
            dependencies: [
                "SlirpDaemon", "NetOptions", "DaemonConfig", "ControlAPI", "SlirpAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            linkerSettings: leanReleaseLink),
        .executableTarget(
            name: "slirpctl",
            dependencies: [
                "SlirpAPI", "PosixIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
        // Benchmark support: a tap device joined to a QEMU stream socket (Scripts/bench).
        .executableTarget(
            name: "tap-bridge",
            dependencies: ["PosixIO", "FrameSwitch", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Tests/TapBridge"),
        // Shared by test targets only.
        .target(name: "TestSupport", dependencies: ["FrameSwitch"], path: "Tests/TestSupport"),
        .testTarget(name: "FrameSwitchTests", dependencies: ["FrameSwitch", "TestSupport"]),
        .testTarget(name: "DataPlaneTests", dependencies: ["DataPlane", "FrameSwitch", "TestSupport"]),
        .testTarget(name: "VhostUserTests", dependencies: ["VhostUser", "DataPlane", "FrameSwitch", "TestSupport"]),
        .testTarget(name: "NetOptionsTests", dependencies: ["NetOptions"]),
        .testTarget(name: "NetServicesTests", dependencies: ["NetServices", "FrameSwitch", "NetOptions", "SlirpKit", "TestSupport"]),
        .testTarget(name: "SlirpKitTests", dependencies: ["SlirpKit", "SlirpAPI", "FrameSwitch", "DataPlane", "NetOptions", "PosixIO"]),
        .testTarget(name: "SlirpAPITests", dependencies: ["SlirpAPI"]),
        .testTarget(name: "DaemonConfigTests", dependencies: ["DaemonConfig", "ConfigTOML", "NetOptions"]),
    ],
    swiftLanguageModes: [.v6]
)
