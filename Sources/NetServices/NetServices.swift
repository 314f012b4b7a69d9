// NetServices: the network services slirpd answers itself instead of libslirp, as pure
// logic over frames and messages: a DHCPv4 server (DHCPServer.swift) and a DNS
// responder (DNS*.swift). No I/O here; the daemon's loop feeds them frames and sends
// what they return. They are not wired into the daemon yet.
