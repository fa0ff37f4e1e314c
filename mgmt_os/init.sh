#!/bin/sh
# /init of the BAAS management OS (PID 1, busybox sh).
#
# Reads the kernel command line (docs/agent-protocol.md, mgmt_os/README.md):
#   baas.server=<url>       the BAAS server, e.g. http://10.0.2.2:8000   (required)
#   baas.mac=<mac>          the MAC address the machine booted from        (required)
#   baas.token=<token>      the one-time boot token                        (required)
#   baas.disk=<name>=<dev>  map a disk name to a device (repeatable; tests/VMs only)
#   baas.after=poweroff|reboot|shell   what to do when the agent exits (default poweroff)
#   baas.dhcp_timeout=<s>   how long to try DHCP before giving up (default 60)
#   baas.debug=1            trace this script
# brings up the network on the NIC with baas.mac (DHCP), runs baas-agent, and
# powers off (or reboots) when it exits. Every step prints a "BAAS-MGMT:" line
# on the console; this script never exits (PID 1 must not).

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export LANG=C.UTF-8 PYTHONUTF8=1 PYTHONUNBUFFERED=1
export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

mkdir -p /proc /sys /dev /run /tmp /root
mount -t proc -o nosuid,noexec,nodev proc /proc
mount -t sysfs -o nosuid,noexec,nodev sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
exec </dev/console >/dev/console 2>&1

uptime_s() { cut -d' ' -f1 /proc/uptime; }
say() { echo "BAAS-MGMT: $* [$(uptime_s)s]"; }

say "init started: $(cat /etc/baas-mgmt-release 2>/dev/null), kernel $(uname -r)"
hostname baas-mgmt
ip link set lo up

server="" mac="" token="" after=poweroff dhcp_timeout=60 disks=""
set -f # no globbing of the words below
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	baas.server=*) server="${arg#baas.server=}" ;;
	baas.mac=*) mac="${arg#baas.mac=}" ;;
	baas.token=*) token="${arg#baas.token=}" ;;
	baas.disk=*) disks="$disks ${arg#baas.disk=}" ;;
	baas.after=*) after="${arg#baas.after=}" ;;
	baas.dhcp_timeout=*) dhcp_timeout="${arg#baas.dhcp_timeout=}" ;;
	baas.debug=1) set -x ;;
	esac
done
set +f
case "$after" in poweroff | reboot | shell) ;; *)
	say "unknown baas.after=$after, using poweroff"
	after=poweroff
	;;
esac
case "$dhcp_timeout" in '' | *[!0-9]*) dhcp_timeout=60 ;; esac
# MACs compare lower case with colons (iPXE and people also write 52-54-00-…).
mac=$(echo "$mac" | tr 'A-F-' 'a-f:')

finish() {
	sync
	case "$after" in
	reboot)
		say "rebooting"
		reboot -f
		;;
	shell)
		say "dropping to a shell (exit it to power off)"
		setsid cttyhack sh -l
		say "powering off"
		poweroff -f
		;;
	*)
		say "powering off"
		poweroff -f
		;;
	esac
	# Not reached unless the firmware refused: never let PID 1 exit.
	while :; do sleep 3600; done
}

fail() {
	say "error: $* (the agent was not started)"
	finish
}

# Drivers: the modules the build resolved, in dependency order.
while read -r module; do
	[ -n "$module" ] || continue
	insmod "$module" 2>/dev/null || [ -d "/sys/module/$(basename "$module" .ko | tr - _)" ] \
		|| say "could not load $(basename "$module")"
done </etc/baas/modules
say "drivers loaded; disks: $(cd /sys/block && ls -d vd* sd* nvme* hd* 2>/dev/null | tr '\n' ' ')"

[ -n "$server" ] || fail "no baas.server= on the kernel command line"
[ -n "$mac" ] || fail "no baas.mac= on the kernel command line"
[ -n "$token" ] || fail "no baas.token= on the kernel command line"

# The interface with the MAC the machine booted from (NICs probe asynchronously).
find_iface() {
	for dev in /sys/class/net/*; do
		[ "$(cat "$dev/address" 2>/dev/null)" = "$mac" ] && { basename "$dev"; return 0; }
	done
	return 1
}
iface=""
deadline=$(($(cut -d. -f1 /proc/uptime) + 10))
until iface=$(find_iface); do
	[ "$(cut -d. -f1 /proc/uptime)" -lt "$deadline" ] || {
		have=$(cat /sys/class/net/*/address | grep -v '^00:00:00:00:00:00$' | tr '\n' ' ')
		fail "no network interface with MAC $mac (found: ${have:-none})"
	}
	sleep 0.2
done
ip link set "$iface" up

# DHCP: udhcpc stays in the background after the lease to renew it.
deadline=$(($(cut -d. -f1 /proc/uptime) + dhcp_timeout))
until udhcpc -i "$iface" -s /etc/baas/udhcpc.sh -n -t 5 -T 2 -A 1 -x hostname:baas-mgmt \
	-p /run/udhcpc.pid >/run/udhcpc.log 2>&1; do
	[ "$(cut -d. -f1 /proc/uptime)" -lt "$deadline" ] \
		|| fail "no DHCP lease on $iface within ${dhcp_timeout}s: $(tail -n 3 /run/udhcpc.log)"
	sleep 1
done
say "network up: $(cat /run/baas-net)"

set -- --server "$server" --mac "$mac" --token "$token"
for disk in $disks; do
	set -- "$@" --disk "$disk"
done
say "starting agent: baas-agent --server $server --mac $mac --token ****${disks:+ --disk$disks}"
BAAS_SERVER="$server" BAAS_MAC="$mac" BAAS_TOKEN="$token" baas-agent "$@"
rc=$?
say "agent exited $rc"
finish
