// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "slirpd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "slirpd", targets: ["slirpd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // libslirp through Debian's libslirp-dev; no pkg-config (slirp.pc drags in glib-2.0's).
        .systemLibrary(name: "CSlirp", path: "Sources/CSlirp"),
        // Linux-only headers (eventfd, signalfd) that Glibc's module map omits.
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),
        .target(name: "PosixIO", dependencies: ["CLinux"]),
        .target(name: "FrameSwitch"),
        .target(name: "NetOptions"),
        .target(name: "SlirpKit", dependencies: ["CSlirp", "PosixIO", "NetOptions"]),
        .target(
            name: "DaemonConfig",
            dependencies: ["NetOptions", .product(name: "TOMLKit", package: "TOMLKit")]),
        .target(
            name: "SlirpDaemon",
            dependencies: [
                "PosixIO", "SlirpKit", "FrameSwitch", "NetOptions", "DaemonConfig",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "slirpd",
            dependencies: [
                "SlirpDaemon", "NetOptions", "DaemonConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(name: "FrameSwitchTests", dependencies: ["FrameSwitch"]),
        .testTarget(name: "NetOptionsTests", dependencies: ["NetOptions"]),
        .testTarget(name: "SlirpKitTests", dependencies: ["SlirpKit"]),
        .testTarget(name: "DaemonConfigTests", dependencies: ["DaemonConfig", "NetOptions"]),
    ],
    swiftLanguageModes: [.v6]
)
