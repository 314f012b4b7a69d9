// Memory given back to the system after many guests leave.
//
// Theory of operation: glibc's malloc keeps freed memory for reuse. Two habits of it
// kept the memory of departed guests resident (issue 19 item 6): the mmap threshold
// rises to the size of the largest block freed (up to 32 MiB), so once a guest's grown
// output queue was freed, later ones came from the heap instead of their own mappings;
// and free pages in the middle of the heap are returned only by `malloc_trim`. The
// daemon pins the threshold at 256 KiB, so larger blocks are their own mappings and go
// back whole when freed, and trims once after a wave of departures (not per guest: a
// trim walks the whole heap). Not at glibc's default 128 KiB: libslirp gives every TCP
// socket two 128 KiB buffers, which would then be an mmap and a munmap each per
// connection (a quarter of the daemon's system time at 3,000 connections/s).
// The trim threshold is pinned too, at 4 MiB: pinning the mmap threshold leaves it at
// glibc's 128 KiB, and a bulk transfer frees a few hundred KiB at the top of the heap
// every loop turn (libslirp's 32 KiB segments, TCPEarlyACK's copies once the guest ACKs
// them), so every turn gave the pages back with brk and faulted them in again: 11,000 to
// 34,000 page faults in 5 s of host->namespace at MTU 65520, none with 4 MiB. Heap pages
// above that, and any after a wave of departures, still go back.
import CLinux
import Glibc

/// Pins the mmap threshold (which also stops the trim threshold from growing with it)
/// and the trim threshold. The corresponding C calls are `mallopt(M_MMAP_THRESHOLD, ...)`
/// and `mallopt(M_TRIM_THRESHOLD, ...)`.
public func pinAllocatorThresholds(mmapThreshold: Int32 = 256 * 1024, trimThreshold: Int32 = 4 << 20) {
    _ = mallopt(M_MMAP_THRESHOLD, mmapThreshold)
    _ = mallopt(M_TRIM_THRESHOLD, trimThreshold)
}

/// Returns the allocator's free pages to the system; true when some were.
/// The corresponding C call is `malloc_trim(0)`.
@discardableResult
public func releaseFreeMemory() -> Bool {
    malloc_trim(0) != 0
}

/// The process's resident anonymous memory in bytes (`RssAnon` of /proc/self/status),
/// nil when it cannot be read.
public func residentAnonymousBytes() -> Int? {
    guard let file = fopen("/proc/self/status", "r") else { return nil }
    defer { fclose(file) }
    var line = [UInt8](repeating: 0, count: 256)
    while line.withUnsafeMutableBufferPointer({ p in
        p.withMemoryRebound(to: CChar.self) { fgets($0.baseAddress, Int32($0.count), file) != nil }
    }) {
        let text = String(decoding: line.prefix { $0 != 0 }, as: UTF8.self)
        guard text.hasPrefix("RssAnon:") else { continue }
        let digits = text.dropFirst(8).filter(\.isNumber)
        return Int(digits).map { $0 * 1024 }
    }
    return nil
}
