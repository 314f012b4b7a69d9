// DataPlane: the pure stages of a network's frame path between the switch and libslirp.
//
// Theory of operation. Every frame between a guest and libslirp passes through slirpd, so
// what libslirp 4.7 gets wrong or cannot bound is made right here, on the wire: each stage
// takes frames (and the time) and returns frames or a verdict, owns its own per-guest or
// per-flow state, and touches no socket, so it is tested with crafted frames and fuzzed.
// `FramePath` (FramePath.swift) wires the stages in order for one network and calls out
// through `FramePathSink`; `Network` (SlirpDaemon) owns one FramePath per network and
// implements the sink with its sockets, libslirp and services.
