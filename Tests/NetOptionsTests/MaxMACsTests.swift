import Testing

@testable import NetOptions

@Suite("max-macs=")
struct MaxMACsTests {
    @Test("default 4, any number from 1 to 4096, the last one given wins")
    func values() throws {
        #expect(try NetworkOptions.parse("").maxMACs == 4)
        #expect(try NetworkOptions.parse("max-macs=1").maxMACs == 1)
        #expect(try NetworkOptions.parse("max-macs=16,max-macs=4096").maxMACs == 4096)
    }

    @Test("0, past 4096, and non-numbers are refused in one wording", arguments: ["0", "4097", "99999", "", "-1", "four"])
    func refused(_ value: String) {
        #expect(throws: OptionError("Parameter 'max-macs' expects a number from 1 to 4096")) {
            try NetworkOptions.parse("max-macs=\(value)")
        }
    }
}
