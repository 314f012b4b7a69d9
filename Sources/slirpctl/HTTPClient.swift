// A minimal HTTP/1.1 client over a Unix socket, on SwiftNIO's codec: slirpctl sends one
// request per connection and either collects the response or streams its body out.
import NIOCore
import NIOHTTP1
import NIOPosix
import PosixIO

struct HTTPResponseData {
    var status: Int
    var body: [UInt8]
}

enum ClientError: Error, CustomStringConvertible {
    case cannotConnect(String, any Error)
    case failed(String)

    var description: String {
        switch self {
        case .cannotConnect(let path, let error):
            "cannot reach slirpd's control socket at \(path) (is slirpd running?): "
                + ((error as? NIOCore.IOError).map { errorDescription($0.errnoCode) } ?? "\(error)")
        case .failed(let message): message
        }
    }
}

/// Collects one response; with `stream` set, hands body chunks over as they arrive.
private final class ResponseHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: used only on its channel's event loop, and read after the promise completes.
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<HTTPResponseData>
    private let stream: (@Sendable ([UInt8]) -> Void)?
    private var status = 0
    private var body: [UInt8] = []

    init(promise: EventLoopPromise<HTTPResponseData>, stream: (@Sendable ([UInt8]) -> Void)?) {
        self.promise = promise
        self.stream = stream
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): status = Int(head.status.code)
        case .body(let buffer):
            let bytes = Array(buffer.readableBytesView)
            if let stream, status < 300 { stream(bytes) } else { body += bytes }
        case .end:
            promise.succeed(HTTPResponseData(status: status, body: body))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ClientError.failed("slirpd closed the connection before answering"))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}

struct ControlClient {
    let socketPath: String

    /// Sends one request and waits for the whole response (or, streaming, for its end).
    func request(_ method: HTTPMethod, _ path: String, body: [UInt8]? = nil,
                 stream: (@Sendable ([UInt8]) -> Void)? = nil) throws -> HTTPResponseData {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let promise = group.next().makePromise(of: HTTPResponseData.self)
        let channel: any Channel
        do {
            channel = try ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(ResponseHandler(promise: promise, stream: stream))
                    }
                }
                .connect(unixDomainSocketPath: socketPath).wait()
        } catch {
            promise.fail(error)
            throw ClientError.cannotConnect(socketPath, error)
        }
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers.add(name: "Host", value: "slirpd")
        head.headers.add(name: "Connection", value: "close")
        if let body {
            head.headers.add(name: "Content-Type", value: "application/json")
            head.headers.add(name: "Content-Length", value: String(body.count))
        }
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
        try channel.writeAndFlush(HTTPClientRequestPart.end(nil)).wait()
        return try promise.futureResult.wait()
    }
}
