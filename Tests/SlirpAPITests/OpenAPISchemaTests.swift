import Foundation
import SlirpAPI
import Testing

/// openapi.yaml and the code name the same guest transports: GuestTransport is the list.
@Suite struct OpenAPISchemaTests {
    static var schemaPath: String {
        // Tests/SlirpAPITests/ -> the repository root.
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("openapi.yaml").path
    }

    /// The enum of `transport` inside the GuestInfo schema.
    static func transportEnum(_ yaml: String) -> [String]? {
        guard let start = yaml.range(of: "\n    GuestInfo:\n") else { return nil }
        let rest = yaml[start.upperBound...]
        guard let line = rest.split(separator: "\n").first(where: { $0.trimmingCharacters(in: .whitespaces).hasPrefix("transport:") }),
              let open = line.range(of: "enum: ["), let close = line[open.upperBound...].firstIndex(of: "]") else { return nil }
        return line[open.upperBound..<close].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    }

    @Test func guestTransportsMatchTheSchema() throws {
        let yaml = try String(contentsOfFile: Self.schemaPath, encoding: .utf8)
        let listed = try #require(Self.transportEnum(yaml), "no GuestInfo.transport enum in openapi.yaml")
        #expect(listed == GuestTransport.allCases.map(\.rawValue))
        #expect(listed.contains("tap") && listed.contains("vhost-user"))
    }

    @Test func theReaderFindsAChangedList() {
        let yaml = "x:\n    GuestInfo:\n      properties:\n        transport: { type: string, enum: [stream, tcp] }\n"
        #expect(Self.transportEnum(yaml) == ["stream", "tcp"])
    }
}
