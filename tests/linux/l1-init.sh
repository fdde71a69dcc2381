#!/bin/sh
# /init of the L1 initramfs (busybox sh; PID 1 of the L1 kernel).
#
# Mounts the basics, loads the KVM modules (/etc/l1-modules, in load order), checks that
# /dev/kvm works, then runs the payload named in /etc/l1.conf (the scenario, the test
# suite, or a shell) and ends, whatever happened, with the line
#     L1-RESULT: <exit status of the payload, or 1 if L1 itself could not get there>
# and a power-off, which makes QEMU exit. The host waits for that line.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# The initramfs has no /dev/console node; the kernel's devtmpfs does.
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

finish() {
	echo "L1-RESULT: $1"
	sync
	poweroff -f
	# Not reached; if it were, the kernel panics when init exits, and QEMU was started
	# with -no-reboot and the kernel with panic=-1: QEMU exits either way.
	exit "$1"
}

fail() {
	echo "L1: FAILED: $*"
	finish 1
}

mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# The root file system is already a tmpfs (the unpacked initramfs): /tmp and /scratch are
# plain directories in it. No tmpfs over /tmp, which would hide files run.sh put under /tmp
# (with --suite, everything sits at its host path, and a checkout may live in /tmp).
chmod 1777 /tmp
hostname l1

# shellcheck source=/dev/null # written by run.sh: L1_PAYLOAD, and the payload's variables
. /etc/l1.conf || fail "no /etc/l1.conf"

L1_UP=$(cut -d' ' -f1 /proc/uptime)
echo "L1: up after $L1_UP s of L1 time; $(grep MemTotal /proc/meminfo)"
while read -r mod; do
	insmod "$mod" || fail "insmod $mod failed"
done </etc/l1-modules
# kvm creates /dev/kvm through devtmpfs; it is a character device when KVM works.
[ -c /dev/kvm ] || fail "no /dev/kvm after loading $(tr '\n' ' ' </etc/l1-modules)(is SVM emulated? dmesg: $(dmesg | grep -iE 'kvm|svm' | tail -n 3))"
echo "L1: /dev/kvm is ready ($(dmesg | grep -iE 'nested (virtualization|paging)' | sed 's/^\[[^]]*\] //' | tr '\n' ';'))"

# Shortly before the host's deadline kills QEMU, say what L1 was doing: a hung payload
# otherwise leaves nothing to go on.
if [ "${L1_WATCHDOG_SECS:-0}" -gt 0 ] && [ "$L1_PAYLOAD" != shell ]; then
	(
		sleep "$((L1_WATCHDOG_SECS - ${L1_UP%%.*}))"
		echo "L1: WATCHDOG: still running at ${L1_WATCHDOG_SECS}s of L1 time; the host's deadline is near"
		ps -o pid,ppid,stat,time,args 2>/dev/null || ps
		grep -E 'MemFree|MemAvailable' /proc/meminfo
		dmesg | tail -n 30
	) &
fi

case $L1_PAYLOAD in
shell)
	echo "L1: interactive shell; 'exit' powers L1 off (the environment is in /etc/l1.conf)"
	setsid cttyhack sh -l
	finish $?
	;;
*)
	echo "L1-PAYLOAD-START: $L1_PAYLOAD"
	cd /scratch || fail "no /scratch"
	# No input, as in CI: the console is L1's serial port, and a VMM that forwards its
	# stdin to its guest must not read it.
	"$L1_PAYLOAD" </dev/null
	status=$?
	echo "L1: $L1_PAYLOAD exited with status $status after $(cut -d' ' -f1 /proc/uptime) s of L1 time"
	finish "$status"
	;;
esac
