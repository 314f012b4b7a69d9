import Testing
@testable import NetOptions

@Suite struct OptionListTests {
    func items(_ list: OptionList) -> [String] { list.items.map { "\($0.key)=\($0.value)" } }

    @Test func splitsKeyValuePairs() {
        let list = OptionList(parsing: "user,id=n0,net=10.1.0.0/16,hostfwd=tcp::2222-:22")
        #expect(list.type == "user")
        #expect(items(list) == ["id=n0", "net=10.1.0.0/16", "hostfwd=tcp::2222-:22"])
    }

    @Test func doubleCommaIsALiteralComma() {
        #expect(items(OptionList(parsing: "hostname=a,,b,tftp=/x")) == ["hostname=a,b", "tftp=/x"])
        #expect(items(OptionList(parsing: "a=x,,,b=1")) == ["a=x,", "b=1"])
        #expect(items(OptionList(parsing: "a=x,,,,b")) == ["a=x,,b"])
        #expect(OptionList(parsing: "us,,er,a=1").type == "us,er")
    }

    @Test func bareWordsAfterTheFirstAreBooleans() {
        let list = OptionList(parsing: "user,restrict,noipv6")
        #expect(items(list) == ["restrict=on", "ipv6=off"])
        // Without a leading type word the first bare word is the type, as in QEMU.
        #expect(OptionList(parsing: "restrict").type == "restrict")
    }

    @Test func edges() {
        #expect(OptionList(parsing: "") == OptionList(parsing: ""))
        #expect(OptionList(parsing: "").items.isEmpty && OptionList(parsing: "").type == nil)
        #expect(items(OptionList(parsing: "a=1,")) == ["a=1"])  // trailing comma
        #expect(items(OptionList(parsing: "a=")) == ["a="])
        #expect(items(OptionList(parsing: "=x")) == ["=x"])
        #expect(items(OptionList(parsing: "a=b=c")) == ["a=b=c"])
        #expect(OptionList(parsing: ",a=1").type == "")
    }
}

@Suite struct CNumberTests {
    @Test func baseZeroLikeStrtol() {
        #expect(CNumber("80", base: 0).clamped == 80)
        #expect(CNumber("0x50", base: 0).clamped == 80)
        #expect(CNumber("0X50", base: 0).clamped == 80)
        #expect(CNumber("010", base: 0).clamped == 8)
        #expect(CNumber(" +80", base: 0).clamped == 80)
        #expect(CNumber("-80", base: 0).clamped == -80)
        #expect(CNumber("080", base: 0).consumedAll == false)  // 8 is not octal
        #expect(CNumber("0x", base: 0).consumedAll == false)  // "0", then "x" left over
        #expect(CNumber("0x", base: 0).clamped == 0)
        #expect(CNumber("99999999999999999999999", base: 0).clamped == Int64.max)
    }

    @Test func emptyAndDigitless() {
        #expect(CNumber("", base: 10).consumedAll)
        #expect(CNumber("", base: 10).sawDigits == false)
        #expect(CNumber(" ", base: 10).consumedAll == false)
        #expect(CNumber("-", base: 10).consumedAll == false)
        #expect(CNumber("x", base: 10).consumedAll == false)
    }

    @Test func baseTen() {
        #expect(CNumber("080", base: 10).clamped == 80)
        #expect(CNumber("0x50", base: 10).consumedAll == false)
        #expect(CNumber("24 ", base: 10).consumedAll == false)
    }

    @Test func wholeInt64() {
        #expect(CNumber("0x40", base: 0).wholeInt64 == 64)
        #expect(CNumber("-9223372036854775808", base: 0).wholeInt64 == Int64.min)
        #expect(CNumber("9223372036854775808", base: 0).wholeInt64 == nil)
        #expect(CNumber("", base: 0).wholeInt64 == nil)
        #expect(CNumber("64 ", base: 0).wholeInt64 == nil)
    }
}
