// NetServices: the network services slirpd answers itself instead of libslirp, as pure
// logic over frames and messages: a DHCPv4 server (DHCPServer.swift), a DNS responder
// (DNS*.swift) and the port rewrite that carries DNS over TCP on IPv6 through libslirp
// (DNSOverTCP6.swift). No I/O here; the daemon's loop (SlirpDaemon/NetworkServices.swift
// and DNSService.swift) feeds them frames and sends what they return.
