#!/bin/sh
# udhcpc event script for the test guest. Prints exactly one GUEST-LEASE line
# per lease. Deliberately writes no /etc/resolv.conf: tests must never make
# the guest resolve names.

case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    # $subnet is dotted; ifconfig accepts it directly.
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    if [ -n "$mtu" ]; then
        ip link set dev "$interface" mtu "$mtu"
    fi
    gw=
    for r in $router; do gw=$r; break; done
    if [ -n "$gw" ]; then
        ip route add default via "$gw" dev "$interface"
    fi
    # Lists are space separated; commas keep the line key=value parseable.
    dnslist=$(echo $dns | tr ' ' ',')
    echo "GUEST-LEASE ip=$ip mask=${subnet:-} router=${gw:-none} dns=${dnslist:-none} mtu=${mtu:-1500}"
    ;;
esac
exit 0
