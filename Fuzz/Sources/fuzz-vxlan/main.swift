// The process entry: hands the command line to libFuzzer's driver, which runs the
// LLVMFuzzerTestOneInput of this module (see Package.swift for why not libFuzzer's main).

import CFuzzerDriver
import Glibc

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
// libFuzzer copies every input into a buffer of its own, so `data` is never nil.
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzz(data!, size) })
