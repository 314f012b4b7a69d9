// ControlAPI: the HTTP/1.1 + JSON control API on a Unix socket, served by Hummingbird.
//
// Theory of operation: Hummingbird runs on its own NIO threads and Swift's concurrency
// pool, never on the daemon's loop thread. Each request is authorised by the peer
// credentials of its connection (SO_PEERCRED, checked by `PeerCredentialCheck` before
// any request is read), routed here, and answered by asking the `ControlService`,
// which posts the work to the loop and awaits the reply. Paths are versioned (/v1);
// every error is a 4xx (or 5xx for our own faults) with a JSON body {"error": "..."}.
// The API is only ever bound to a Unix socket, so no guest network can reach it.
import FoundationEssentials
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import PosixIO
import ServiceLifecycle
import SlirpAPI
import Synchronization

public struct ControlServerConfig: Sendable {
    public var socketPath: String
    /// Permission bits of the socket file; the credential check applies whatever they are.
    public var socketMode: UInt32
    /// Users allowed besides the daemon's own (and root).
    public var allowedUIDs: Set<UInt32>

    public init(socketPath: String, socketMode: UInt32, allowedUIDs: Set<UInt32>) {
        self.socketPath = socketPath
        self.socketMode = socketMode
        self.allowedUIDs = allowedUIDs
    }
}

/// Stops a running control server gracefully, from any thread: it stops accepting and
/// lets requests in flight finish. (Cancelling its task instead makes Hummingbird log
/// "Waiting on child channel: CancellationError()" as an error on every daemon stop.)
public final class ControlServerStopper: Sendable {
    private let state = Mutex<(group: ServiceGroup?, requested: Bool)>((nil, false))

    public init() {}

    /// Asks the server to stop; before it has started, it stops as soon as it does.
    public func stop() {
        let group = state.withLock { state -> ServiceGroup? in
            state.requested = true
            return state.group
        }
        if let group { Task { await group.triggerGracefulShutdown() } }
    }

    fileprivate func started(_ group: ServiceGroup) {
        let requested = state.withLock { state -> Bool in
            state.group = group
            return state.requested
        }
        if requested { Task { await group.triggerGracefulShutdown() } }
    }
}

public enum ControlServer {
    /// Serves the API until `stopper` stops it (or the calling task is cancelled).
    /// `onReady` runs once the socket is bound and has its mode.
    public static func run(
        config: ControlServerConfig, service: some ControlService, ownUID: UInt32, logger: Logger,
        stopper: ControlServerStopper = ControlServerStopper(), onReady: @escaping @Sendable () -> Void = {}
    ) async throws {
        let router = Router(context: BasicRequestContext.self)
        routes(router, service: service)
        let allowed = config.allowedUIDs.union([ownUID, 0])
        let check = PeerCredentialCheck.Policy(allowed: allowed, logger: logger)
        let app = Application(
            router: router,
            server: .http1(configuration: .init(additionalChannelHandlers: [PeerCredentialCheck(policy: check)])),
            configuration: .init(address: .unixDomainSocket(path: config.socketPath), serverName: "slirpd"),
            onServerRunning: { _ in
                // Hummingbird binds with the process umask; set the documented mode at once
                // (the credential check guards the moment in between).
                try? setFileMode(config.socketPath, config.socketMode)
                onReady()
            },
            logger: logger)
        // No signal handlers: the daemon's loop owns SIGTERM/SIGINT/SIGHUP (through a
        // signalfd) and stops this server through `stopper`.
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], logger: logger))
        stopper.started(group)
        try await group.run()
    }

    static func routes(_ router: Router<BasicRequestContext>, service: some ControlService) {
        router.middlewares.add(JSONErrors())
        router.get("/v1/networks") { _, _ in try await json { () throws(APIError) in try await service.networks() } }
        router.get("/v1/networks/:network") { _, context in
            try await json { () throws(APIError) in
                let name = try context.parameter("network")
                guard let net = try await service.networks().first(where: { $0.name == name }) else {
                    throw .notFound("no network named '\(name)'")
                }
                return net
            }
        }
        router.get("/v1/guests") { _, _ in try await json { () throws(APIError) in try await service.guests(network: nil) } }
        router.get("/v1/networks/:network/guests") { _, context in
            try await json { () throws(APIError) in try await service.guests(network: context.parameter("network")) }
        }
        router.get("/v1/forwards") { _, _ in try await json { () throws(APIError) in try await service.forwards(network: nil) } }
        router.get("/v1/networks/:network/forwards") { _, context in
            try await json { () throws(APIError) in try await service.forwards(network: context.parameter("network")) }
        }
        router.post("/v1/networks/:network/forwards") { request, context in
            try await json(status: .created) { () throws(APIError) in
                let body = try await decode(ForwardRequest.self, request)
                return try await service.addForward(network: context.parameter("network"), body)
            }
        }
        router.delete("/v1/networks/:network/forwards/:rule") { _, context in
            try await json { () throws(APIError) in
                try await service.removeForward(network: context.parameter("network"), rule: context.parameter("rule"))
            }
        }
        router.get("/v1/guestfwds") { _, _ in try await json { () throws(APIError) in try await service.guestForwards(network: nil) } }
        router.get("/v1/networks/:network/guestfwds") { _, context in
            try await json { () throws(APIError) in try await service.guestForwards(network: context.parameter("network")) }
        }
        router.post("/v1/networks/:network/guestfwds") { request, context in
            try await json(status: .created) { () throws(APIError) in
                let body = try await decode(GuestForwardRequest.self, request)
                return try await service.addGuestForward(network: context.parameter("network"), body)
            }
        }
        router.delete("/v1/networks/:network/guestfwds/:rule") { _, context in
            try await json { () throws(APIError) in
                try await service.removeGuestForward(network: context.parameter("network"), rule: context.parameter("rule"))
            }
        }
        router.get("/v1/connections") { _, _ in try await json { () throws(APIError) in try await service.connections(network: nil) } }
        router.get("/v1/networks/:network/connections") { request, context in
            if request.uri.queryParameters.get("format") == "text" {
                return try await respond { () throws(APIError) in
                    let text = try await service.usernet(network: context.parameter("network"))
                    return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                                    body: .init(byteBuffer: ByteBuffer(string: text)))
                }
            }
            return try await json { () throws(APIError) in try await service.connections(network: context.parameter("network")) }
        }
        router.get("/v1/leases") { _, _ in try await json { () throws(APIError) in try await service.leases(network: nil) } }
        router.get("/v1/networks/:network/leases") { _, context in
            try await json { () throws(APIError) in try await service.leases(network: context.parameter("network")) }
        }
        router.get("/v1/static-leases") { _, _ in try await json { () throws(APIError) in try await service.staticLeases(network: nil) } }
        router.get("/v1/networks/:network/static-leases") { _, context in
            try await json { () throws(APIError) in try await service.staticLeases(network: context.parameter("network")) }
        }
        router.post("/v1/networks/:network/static-leases") { request, context in
            try await json(status: .created) { () throws(APIError) in
                let body = try await decode(StaticLeaseRequest.self, request)
                return try await service.addStaticLease(network: context.parameter("network"), body)
            }
        }
        router.delete("/v1/networks/:network/static-leases/:mac") { _, context in
            try await json { () throws(APIError) in
                try await service.removeStaticLease(network: context.parameter("network"), mac: context.parameter("mac"))
            }
        }
        router.get("/v1/networks/:network/flow-limits") { _, context in
            try await json { () throws(APIError) in try await service.flowLimits(network: context.parameter("network")) }
        }
        router.put("/v1/networks/:network/flow-limits") { request, context in
            try await json { () throws(APIError) in
                let body = try await decode(FlowLimitsRequest.self, request)
                return try await service.setFlowLimits(network: context.parameter("network"), body)
            }
        }
        router.get("/v1/attachments") { _, _ in try await json { () throws(APIError) in try await service.attachments(network: nil) } }
        router.get("/v1/networks/:network/attachments") { _, context in
            try await json { () throws(APIError) in try await service.attachments(network: context.parameter("network")) }
        }
        router.post("/v1/networks/:network/attachments") { request, context in
            try await json(status: .created) { () throws(APIError) in
                let body = try await decode(AttachmentRequest.self, request)
                return try await service.addAttachment(network: context.parameter("network"), body)
            }
        }
        // The target is a path, slashes and all, so it travels as a query parameter.
        router.delete("/v1/networks/:network/attachments") { request, context in
            try await json { () throws(APIError) in
                guard let target = request.uri.queryParameters.get("target") else {
                    throw .badRequest("give the attachment to remove as ?target=unix:/path")
                }
                return try await service.removeAttachment(network: context.parameter("network"), target: target)
            }
        }
        router.get("/v1/networks/:network/vxlan") { _, context in
            try await json { () throws(APIError) in try await service.vxlan(network: context.parameter("network")) }
        }
        router.post("/v1/networks/:network/vxlan/remotes") { request, context in
            try await json(status: .created) { () throws(APIError) in
                let body = try await decode(VXLANRemoteRequest.self, request)
                return try await service.addVXLANRemote(network: context.parameter("network"), body)
            }
        }
        // An IPv6 remote has colons and brackets, so it travels as a query parameter.
        router.delete("/v1/networks/:network/vxlan/remotes") { request, context in
            try await json { () throws(APIError) in
                guard let remote = request.uri.queryParameters.get("remote") else {
                    throw .badRequest("give the remote to remove as ?remote=ADDR[:PORT]")
                }
                return try await service.removeVXLANRemote(network: context.parameter("network"), remote: remote)
            }
        }
        router.get("/v1/events") { _, _ in
            try await respond { () throws(APIError) in
                let events = try await service.events()
                let lines = events.map { event in
                    var line = (try? encoder.encode(event)) ?? Data()
                    line.append(0x0A)
                    return ByteBuffer(bytes: line)
                }
                return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: .init(asyncSequence: lines))
            }
        }
        router.get("/v1/networks/:network/capture") { request, context in
            try await respond { () throws(APIError) in
                let frames = try await service.capture(network: context.parameter("network"),
                                                       guest: request.uri.queryParameters.get("guest"))
                return Response(status: .ok, headers: [.contentType: "application/vnd.tcpdump.pcap"],
                                body: .init(asyncSequence: frames.map { ByteBuffer(bytes: $0) }))
            }
        }
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: await service.metrics())))
        }
    }
}

// MARK: Encoding and errors

/// Errors Hummingbird raises itself (no such route, a malformed request) also get a JSON body.
struct JSONErrors: RouterMiddleware {
    typealias Context = BasicRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            let message = error.body ?? (error.status == .notFound ? "no route for \(request.method) \(request.uri.path)" : error.status.reasonPhrase)
            return errorResponse(APIError(Int(error.status.code), message))
        }
    }
}

private let encoder: JSONEncoder = {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys]
    return e
}()

/// Runs `body` and encodes its value as JSON, or its APIError as a JSON error response.
func json<T: Encodable>(status: HTTPResponse.Status = .ok, _ body: () async throws(APIError) -> T) async throws -> Response {
    try await respond { () throws(APIError) in
        let value = try await body()
        guard let data = try? encoder.encode(value) else { throw APIError(500, "cannot encode the response") }
        return Response(status: status, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data + [0x0A])))
    }
}

func respond(_ body: () async throws(APIError) -> Response) async throws -> Response {
    do {
        return try await body()
    } catch {
        return errorResponse(error)
    }
}

func errorResponse(_ error: APIError) -> Response {
    let data = (try? encoder.encode(APIError.Body(error: error.message))) ?? Data("{\"error\":\"internal error\"}".utf8)
    return Response(status: .init(code: error.status), headers: [.contentType: "application/json"],
                    body: .init(byteBuffer: ByteBuffer(bytes: data + [0x0A])))
}

/// Reads and decodes a JSON request body of at most 64 KiB.
func decode<T: Decodable>(_ type: T.Type, _ request: Request) async throws(APIError) -> T {
    let buffer: ByteBuffer
    do {
        buffer = try await request.body.collect(upTo: 64 * 1024)
    } catch {
        throw .badRequest("request body missing or larger than 64 KiB")
    }
    do {
        return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
    } catch {
        throw .badRequest("request body is not a valid \(T.self) JSON object: \(describe(error))")
    }
}

private func describe(_ error: any Error) -> String {
    switch error {
    case DecodingError.keyNotFound(let key, _): "missing key '\(key.stringValue)'"
    case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx):
        "wrong type at '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'"
    // With a coding path it is a key's fault (StaticLeaseRequest's unknown keys), not the syntax's.
    case DecodingError.dataCorrupted(let ctx) where !ctx.codingPath.isEmpty: ctx.debugDescription
    case DecodingError.dataCorrupted: "malformed JSON"
    default: "\(error)"
    }
}

extension BasicRequestContext {
    /// A path parameter, decoded from percent-encoding (rules contain ':').
    func parameter(_ name: String) throws(APIError) -> String {
        guard let raw = parameters.get(name) else { throw .badRequest("missing path parameter '\(name)'") }
        return percentDecoded(raw) ?? raw
    }
}

/// `%XX` escapes decoded, as Foundation's `removingPercentEncoding` does (which needs the
/// full Foundation): nil for a bad escape or bytes that are not UTF-8.
func percentDecoded(_ text: String) -> String? {
    var bytes: [UInt8] = []
    var input = text.utf8.makeIterator()
    while let byte = input.next() {
        guard byte == UInt8(ascii: "%") else {
            bytes.append(byte)
            continue
        }
        guard let high = input.next().flatMap(hexValue), let low = input.next().flatMap(hexValue) else { return nil }
        bytes.append(high << 4 | low)
    }
    return String(validating: bytes, as: UTF8.self)
}

private func hexValue(_ digit: UInt8) -> UInt8? {
    switch digit {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
    default: nil
    }
}
