import FoundationEssentials
import HTTPTypes
import Logging
import NIOCore
import NIOHTTPTypes
import PosixIO
import SlirpAPI

/// Refuses API connections from users not on the allow-list, whatever the socket's mode.
///
/// The kernel's SO_PEERCRED gives the uid of the process that connected. It is read
/// when the handler joins the pipeline, before any request can arrive; a refused peer
/// gets one 403 answer to its first request and the connection is closed.
final class PeerCredentialCheck: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    struct Policy: Sendable {
        var allowed: Set<UInt32>
        var logger: Logger
    }

    private let policy: Policy
    /// nil until known; a refusal message once the peer is refused.
    private var refusal: String?
    private var checked = false

    init(policy: Policy) {
        self.policy = policy
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard let provider = context.channel as? SocketOptionProvider else {
            refusal = "cannot read the peer's credentials"
            return
        }
        let future: EventLoopFuture<ucredentials> = provider.unsafeGetSocketOption(
            level: .socket, name: NIOBSDSocket.Option(rawValue: peerCredentialsSocketOption))
        // On the channel's own event loop the option is read synchronously, so this
        // completes before the first read is delivered.
        future.assumeIsolated().whenComplete { result in
            self.checked = true
            switch result {
            case .success(let cred) where self.policy.allowed.contains(cred.uid):
                self.refusal = nil
            case .success(let cred):
                self.refusal = "uid \(cred.uid) is not allowed to use this API (allowed: the daemon's user, root, and the configured allow-list)"
                self.policy.logger.warning("refused a control API connection from pid \(cred.pid) uid \(cred.uid)")
            case .failure(let error):
                self.refusal = "cannot read the peer's credentials: \(error)"
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard checked, refusal == nil else {
            if case .head = unwrapInboundIn(data) { refuse(context) }
            return
        }
        context.fireChannelRead(data)
    }

    private func refuse(_ context: ChannelHandlerContext) {
        let message = refusal ?? "peer credentials not checked"
        let body = ByteBuffer(bytes: ((try? JSONEncoder().encode(APIError.Body(error: message))) ?? Data("{}".utf8)) + [0x0A])
        var head = HTTPResponse(status: .forbidden)
        head.headerFields[.contentType] = "application/json"
        head.headerFields[.contentLength] = String(body.readableBytes)
        head.headerFields[.connection] = "close"
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}

/// struct ucred (SO_PEERCRED), which Glibc's module leaves out without _GNU_SOURCE.
struct ucredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}
