#!/bin/sh
# /init of the L2 initramfs (busybox sh; PID 1 of a stock Linux kernel booted by cma-vmm).
#
#   1. mount proc, sys, dev; load virtio, virtio_ring, virtio_mmio and the agent, cma_agent
#   2. wait until /sys/kernel/cma_agent/regions lists every lent region as movable
#   3. the workload: fill the lent memory (ZONE_MOVABLE) with tmpfs files of a known
#      pattern, record each file's md5sum, check in /proc/zoneinfo that the movable zone
#      really got filled; apply the optional pins; run the optional in-guest benchmark
#   4. milestone 4 ("lent memory populated": what `cma-vmm ctl wait` waits for)
#   5. wait until the VMM sends Shutdown, unpin, check every file, print
#          linux guest: F files, C checked, E integrity errors
#      and the module's statistics, then exit through the agent's `exit` knob
#
# Parameters, from the kernel command line (`cma-vmm run --cmdline '...'`):
#   cmatest.mode=test|bench|virtio-mem|shell   default test; bench is test with the
#                        in-guest benchmark lines in the form `cma-vmm bench linux` reads;
#                        virtio-mem fills memory a virtio-mem device plugged (no agent) and
#                        prints "cma-bench: populated"; shell gives a shell after step 2
#   cmatest.fill=SIZE    bytes of tmpfs files to write (K/M/G suffixes; default: the lent
#                        regions' total minus 16M)
#   cmatest.file=SIZE    size of one file (default 4M)
#   cmatest.pin=REGION:OFFSET[,REGION:OFFSET...]   pin a page in a lent region (sysfs `pin`)
#   cmatest.bench=REGION cmatest.bench_sizes=SIZE[,SIZE...] cmatest.bench_runs=N
#                        in-guest alloc_contig_range() samples: for each size, N ranges of
#                        that size, aligned to it, one after the other from the start of
#                        REGION; one line each:
#                          cma-bench: contig size=S ns=N ret=R in_use=P migrated=M
#   cmatest.warm_keep=SIZE  with cmatest.warm=1: how much free memory to leave untouched
#                        (default 48M)
#   cmatest.vmem=SIZE    virtio-mem mode: how much memory the device plugs (waited for
#                        in ZONE_MOVABLE before the fill; default: the fill)
#   cmatest.warm=1       after the fill, touch every free page once (a tmpfs file of
#                        nearly all free memory, then deleted), so that pages migrations
#                        later land in are already backed by the host and mapped by the
#                        hypervisor: timings then compare the work, not first touches
#   cmatest.timeout=SECS how long to wait for the agent's regions (default 60)
#
# Exit statuses (through /sys/kernel/cma_agent/exit, or /dev/port before the agent is up):
#   0 every file intact; 6 integrity errors (the reference guest's "workload page failed
#   its check"); 10 bad parameter; 11 a module would not load; 12 no agent device;
#   13 lent regions not usable; 14 the fill failed or did not reach the movable zone;
#   15 a pin failed; 16 the benchmark failed.

export PATH=/bin:/sbin
umask 022

/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

CMA=/sys/kernel/cma_agent
FILL_DIR=/fill
KVER=$(uname -r)
MODDIR=/lib/modules/$KVER

say() { echo "linux guest: $*"; }

# The run's end: the agent's exit knob, else an outb to the VMM's exit port through
# /dev/port (one byte: enough for our statuses), else a power-off.
finish() {
	sync
	if [ -w $CMA/exit ]; then
		echo "$1" >$CMA/exit
	else
		printf "\\$(printf '%03o' "$1")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
	fi
	sleep 2
	poweroff -f
	while :; do sleep 1; done
}

fail() {
	status=$1
	shift
	say "error: $*"
	[ "$MODE" = bench ] || [ "$MODE" = virtio-mem ] && echo "cma-bench: error $*"
	finish "$status"
}

# to_bytes SIZE: 123, 4K, 64M, 2G -> bytes (empty on a malformed size)
to_bytes() {
	case $1 in
	*[!0-9KkMmGg]* | "" | [KkMmGg]*) return ;;
	*[Kk]) echo $((${1%?} * 1024)) ;;
	*[Mm]) echo $((${1%?} * 1048576)) ;;
	*[Gg]) echo $((${1%?} * 1073741824)) ;;
	*[0-9]) echo $(($1)) ;;
	*) return ;;
	esac
}

mib() { echo $(($1 / 1048576)); }

# ---------------------------------------------------------------- parameters

MODE=test
FILL=
FILE_SIZE=$((4 * 1048576))
PINS=
BENCH=
BENCH_SIZES=
BENCH_RUNS=1
VMEM=
WARM=0
WARM_KEEP=$((48 * 1048576))
TIMEOUT=60
for word in $(cat /proc/cmdline); do
	case $word in
	cmatest.mode=*) MODE=${word#*=} ;;
	cmatest.fill=*) FILL=$(to_bytes "${word#*=}") || true
		[ -n "$FILL" ] || fail 10 "bad $word" ;;
	cmatest.file=*) FILE_SIZE=$(to_bytes "${word#*=}")
		[ -n "$FILE_SIZE" ] && [ "$FILE_SIZE" -ge 4096 ] || fail 10 "bad $word" ;;
	cmatest.pin=*) PINS=${word#*=} ;;
	cmatest.bench=*) BENCH=${word#*=} ;;
	cmatest.bench_sizes=*) BENCH_SIZES=${word#*=} ;;
	cmatest.bench_runs=*) BENCH_RUNS=${word#*=}
		case $BENCH_RUNS in *[!0-9]* | "") fail 10 "bad $word" ;; esac ;;
	cmatest.vmem=*) VMEM=$(to_bytes "${word#*=}") || true
		[ -n "$VMEM" ] || fail 10 "bad $word" ;;
	cmatest.warm_keep=*) WARM_KEEP=$(to_bytes "${word#*=}") || true
		[ -n "$WARM_KEEP" ] || fail 10 "bad $word" ;;
	cmatest.warm=*) WARM=${word#*=}
		case $WARM in 0 | 1) ;; *) fail 10 "bad $word (0 or 1)" ;; esac ;;
	cmatest.timeout=*) TIMEOUT=${word#*=}
		case $TIMEOUT in *[!0-9]* | "") fail 10 "bad $word" ;; esac ;;
	cmatest.*) fail 10 "unknown parameter $word" ;;
	esac
done
case $MODE in test | bench | virtio-mem | shell) ;; *) fail 10 "unknown cmatest.mode=$MODE" ;; esac

say "up after $(cut -d' ' -f1 /proc/uptime) s: kernel $KVER, $(grep MemTotal /proc/meminfo | tr -s ' ')"

# load_modules LIST: the modules of /etc/modules.LIST, in dependency order
load_modules() {
	while read -r ko; do
		name=${ko##*/}
		name=${name%.ko}
		grep -q "^$(echo "$name" | tr - _) " /proc/modules && continue
		insmod "$MODDIR/$ko" || fail 11 "insmod $ko failed"
	done <"/etc/modules.$1"
}

# The movable zone's managed and free pages, from /proc/zoneinfo: "MANAGED FREE".
movable_zone() {
	awk '/^Node/ { z = ($4 == "Movable") } z && $1 == "pages" && $2 == "free" { f += $3 }
		z && $1 == "managed" { m += $2 } END { print m + 0, f + 0 }' /proc/zoneinfo
}

# fill BYTES: tmpfs files of FILE_SIZE bytes in $FILL_DIR, each a rotation of one random
# seed by a different, page-unaligned amount (so no 4 KiB page repeats between files),
# and their md5sums in /run/md5sums. Random per file would be the same check, but reading
# /dev/urandom costs most of the time in a nested guest.
fill() {
	mkdir -p $FILL_DIR /run
	mount -t tmpfs -o size=$(($1 + 64 * 1048576)) tmpfs $FILL_DIR || fail 14 "cannot mount tmpfs"
	dd if=/dev/urandom of=/run/seed bs=$FILE_SIZE count=1 2>/dev/null || fail 14 "no seed"
	files=$((($1 + FILE_SIZE - 1) / FILE_SIZE))
	i=0
	while [ $i -lt $files ]; do
		rot=$(((i * 4104 + 8) % FILE_SIZE))
		{
			tail -c $((FILE_SIZE - rot)) /run/seed
			head -c $rot /run/seed
		} >$FILL_DIR/f$i || fail 14 "writing $FILL_DIR/f$i failed (tmpfs full?)"
		i=$((i + 1))
	done
	rm -f /run/seed
	(cd $FILL_DIR && md5sum f*) >/run/md5sums || fail 14 "md5sum failed"
	FILES=$files
}

# ---------------------------------------------------------------- virtio-mem (bench)

if [ "$MODE" = virtio-mem ]; then
	load_modules virtio-mem
	[ -n "$FILL" ] || fail 10 "cmatest.mode=virtio-mem needs cmatest.fill"
	# Wait for the plugged memory (cmatest.vmem, else the fill) to be online and movable.
	i=0
	while :; do
		set -- $(movable_zone)
		[ $(($1 * 4096)) -ge "${VMEM:-$FILL}" ] && break
		i=$((i + 1))
		[ $i -le $((TIMEOUT * 5)) ] || fail 13 "virtio-mem memory did not come up movable ($(mib $(($1 * 4096)))M)"
		sleep 0.2
	done
	say "virtio-mem: $(mib $(($1 * 4096)))M online in ZONE_MOVABLE"
	fill "$FILL"
	set -- $(movable_zone)
	say "filled $(mib "$FILL")M in $FILES files; movable zone $(mib $(($1 * 4096)))M, $(mib $(($2 * 4096)))M free"
	echo "cma-bench: populated"
	while :; do sleep 3600; done
fi

# ---------------------------------------------------------------- the agent

load_modules agent
[ -d $CMA ] || fail 12 "no $CMA: the cma_agent driver found no agent device (dmesg: $(dmesg | grep -i cma_agent | tail -n 3 | tr '\n' ' '))"

# Wait until every lent region is movable; a refused one fails at once.
i=0
while :; do
	lent=0 movable=0
	while read -r id name base size kind state rest; do
		[ "$kind" = lent ] || continue
		lent=$((lent + 1))
		case $state in
		movable) movable=$((movable + 1)) ;;
		refused*) fail 13 "region $name ($base +$size) refused: $rest" ;;
		esac
	done <$CMA/regions
	[ $lent -gt 0 ] && [ $movable -eq $lent ] && break
	i=$((i + 1))
	[ $i -le $((TIMEOUT * 5)) ] || fail 13 "after ${TIMEOUT}s, $movable of $lent lent regions movable: $(tr '\n' ';' <$CMA/regions)"
	sleep 0.2
done
LENT_BYTES=0
while read -r id name base size kind state rest; do
	[ "$kind" = lent ] && LENT_BYTES=$((LENT_BYTES + size))
	say "region $id $name [$base +$size] $kind $state $rest"
done <$CMA/regions

if [ "$MODE" = shell ]; then
	say "shell (cmatest.mode=shell); 'exit' ends the run"
	setsid cttyhack sh -l
	finish $?
fi

# ---------------------------------------------------------------- the workload

[ -n "$FILL" ] || FILL=$((LENT_BYTES - 16 * 1048576))
[ "$FILL" -gt 0 ] || fail 10 "nothing to fill (cmatest.fill=$FILL)"
set -- $(movable_zone)
free_before=$2
t0=$(cut -d' ' -f1 /proc/uptime)
fill "$FILL"
set -- $(movable_zone)
managed=$1 free_after=$2
filled=$(((free_before - free_after) * 4096))
say "workload: $FILES files of $(mib $FILE_SIZE)M ($(mib "$FILL")M) written and checksummed in $(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s"
say "movable zone: $(mib $((managed * 4096)))M managed, $(mib "$filled")M filled by the workload, $(mib $((free_after * 4096)))M free ($((100 - free_after * 100 / (managed + 1)))% in use)"
# Most of the fill must land in ZONE_MOVABLE, or the evictions would have nothing to move.
expect=$FILL
[ "$expect" -le $((managed * 4096)) ] || expect=$((managed * 4096))
[ $((filled * 2)) -ge "$expect" ] || fail 14 "only $(mib "$filled")M of the workload went to the movable zone"

for pin in $(echo "$PINS" | tr , ' '); do
	region=${pin%%:*}
	offset=${pin#*:}
	[ "$region" != "$pin" ] || fail 10 "bad cmatest.pin entry $pin (REGION:OFFSET)"
	echo "$region $offset" >$CMA/pin || fail 15 "pin $pin failed"
done
[ -n "$PINS" ] && say "pinned: $(tr '\n' ' ' <$CMA/pinned)"

if [ "$WARM" = 1 ]; then
	# Leave cmatest.warm_keep (default 48M) untouched: tmpfs pages cannot be reclaimed, and
	# the kernel's watermarks and per-zone reserves grow with memory (a 2.25G guest that
	# kept only 48M free ran out of memory here and panicked; `bench linux` keeps more).
	free=$(($(awk '/^MemFree:/ { print $2 }' /proc/meminfo) / 1024))
	warm=$((free - WARM_KEEP / 1048576))
	if [ $warm -gt 0 ]; then
		mkdir -p /warm
		mount -t tmpfs -o size=${warm}m tmpfs /warm &&
			dd if=/dev/zero of=/warm/w bs=1M count=$warm 2>/dev/null
		rm -f /warm/w
		umount /warm
		say "warmed ${warm}M of free memory (every free page touched once)"
	fi
fi

if [ -n "$BENCH" ]; then
	[ -n "$BENCH_SIZES" ] || fail 10 "cmatest.bench needs cmatest.bench_sizes"
	offset=0
	for size in $(echo "$BENCH_SIZES" | tr , ' '); do
		size=$(to_bytes "$size")
		[ -n "$size" ] && [ "$size" -gt 0 ] || fail 10 "bad cmatest.bench_sizes=$BENCH_SIZES"
		offset=$(((offset + size - 1) / size * size))
		run=0
		while [ $run -lt "$BENCH_RUNS" ]; do
			echo "$BENCH $offset $size" >$CMA/bench || fail 16 "bench $BENCH +$offset size $size refused"
			read -r result <$CMA/bench
			set -- $result
			ret=${1#ret=} ns=${2#ns=} in_use=${3#in_use_before=} migrated=${4#migrated=}
			echo "cma-bench: contig size=$size ns=$ns ret=$ret in_use=$in_use migrated=$migrated"
			[ "$ret" = 0 ] || say "warning: alloc_contig_range at $BENCH+$offset returned $ret"
			offset=$((offset + size))
			run=$((run + 1))
		done
	done
fi

echo 4 >$CMA/milestone
say "lent memory populated (milestone 4); waiting for the VMM's shutdown request"

while [ "$(cat $CMA/shutdown)" = 0 ]; do
	sleep 0.2
done

say "shutdown requested: checking $FILES files"
echo all >$CMA/unpin
checked=0 errors=0
out=$(cd $FILL_DIR && md5sum -c /run/md5sums 2>&1)
checked=$(echo "$out" | grep -c ': OK$')
errors=$((FILES - checked))
echo "$out" | grep -v ': OK$' | head -n 20 | sed 's/^/linux guest: FAILED /'
say "$FILES files, $checked checked, $errors integrity errors"
sed 's/^/linux guest: stat /' $CMA/stats
if [ $errors -eq 0 ]; then
	finish 0
else
	finish 6
fi
