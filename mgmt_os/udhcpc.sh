#!/bin/sh
# busybox udhcpc hook of the BAAS management OS: applies a DHCP lease.
# udhcpc passes the event in $1 and the lease in $interface, $ip, $mask (prefix
# length), $router, $dns, $domain and $mtu.

case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
	if [ -n "$router" ]; then
		while ip route del default dev "$interface" 2>/dev/null; do :; done
		for gateway in $router; do
			ip route add default via "$gateway" dev "$interface" && break
		done
	fi
	: >/etc/resolv.conf
	[ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
	for server in $dns; do
		echo "nameserver $server" >>/etc/resolv.conf
	done
	echo "$interface $ip/${mask:-24} gateway ${router:-none} dns ${dns:-none}" >/run/baas-net
	;;
esac
exit 0
