import Foundation
import SlirpAPI
import Testing

@Suite("FlowLimitsRequest decoding")
struct FlowLimitsRequestTests {
    func decode(_ text: String) throws -> FlowLimitsRequest {
        try JSONDecoder().decode(FlowLimitsRequest.self, from: Data(text.utf8))
    }

    @Test("absent keys stay nil")
    func partial() throws {
        #expect(try decode(#"{"maxTCP": 2}"#) == FlowLimitsRequest(maxTCP: 2))
        #expect(try decode(#"{"maxUDP": 1, "maxICMP": 0, "maxDNSTCP": 3}"#) == FlowLimitsRequest(maxUDP: 1, maxICMP: 0, maxDNSTCP: 3))
        #expect(try decode("{}") == FlowLimitsRequest())
    }

    @Test("unknown keys and wrong types are refused", arguments: [#"{"maxTcp": 2}"#, #"{"maxTCP": "2"}"#, #"{"maxTCP": 2.5}"#, "[]"])
    func refused(text: String) {
        #expect(throws: DecodingError.self) { try decode(text) }
    }

    @Test("encodes only the keys given")
    func encodes() throws {
        let data = try JSONEncoder().encode(FlowLimitsRequest(maxICMP: 4))
        #expect(String(decoding: data, as: UTF8.self) == #"{"maxICMP":4}"#)
    }
}
