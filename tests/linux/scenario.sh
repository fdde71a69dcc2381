#!/bin/sh
# The Linux-guest scenario, run INSIDE L1 by tests/linux/run.sh (busybox sh: POSIX only).
#
# cma-vmm boots the stock kernel (L2) with the guest-linux initramfs: the agent module
# hot-adds the two lent regions to ZONE_MOVABLE, the guest fills them with checksummed
# tmpfs files, pins one page of region b, times Linux's own alloc_contig_range() on a few
# ranges of b, and reports "populated". Then, through `cma-vmm ctl`:
#
#   1. timing: populated ranges of a taken through the device, shared grants (64K to
#      16M) then exclusive ones (64K to 64M), against the guest's own alloc_contig_range()
#      on same-sized populated ranges of b
#   2. the busy case: 64M in b whose first candidate covers the pinned page; the
#      region's busy-retry counter must go up and the chunk land past the pinned page
#   3. mixed allocations, 64K to 32M, aligned or not, exclusive and shared, by region and
#      by device (map rules), with frees interleaved so several chunks are outstanding
#   4. compaction of region a with unpinned chunks
#   5. everything freed: every region used 0; shutdown: the guest checks every file
#
# Checks along the way (alignment, region, mode, the region statistics against the
# chunks we hold) count as errors. The last line is
#     linux guest: N allocations, M frees, E integrity errors
# (E: the guest's integrity errors plus failed checks); the status is non-zero on any
# error, failed check or timeout.
#
# Environment (from run.sh): CMA_VMM, L2_KERNEL, L2_INITRD, SCRATCH (or SCRATCH_DIR).

# shellcheck disable=SC2154 # NAME_x variables are set through eval
# No `set -u`/`set -e`: whatever fails, the script must reach its summary line.

SCRATCH=${SCRATCH:-${SCRATCH_DIR:-}}
for v in CMA_VMM L2_KERNEL L2_INITRD SCRATCH; do
	eval "val=\${$v:-}"
	if [ -z "$val" ]; then
		echo "scenario: FAILED: \$$v is not set (run me through tests/linux/run.sh)"
		echo "linux guest: 0 allocations, 0 frees, 1 integrity errors"
		exit 1
	fi
done

VMM=$CMA_VMM
SOCK=$SCRATCH/api.sock
LOG=$SCRATCH/vmm.log
OUT=$SCRATCH/ctl.json
PIN_OFFSET=0x2000000
# The sizes timed; the guest benchmarks them in b at offsets 0, 1M, 4M, 16M, 64M (each
# aligned to its size); the device takes shared grants of the first four at the same
# offsets of a, and exclusive grants of all five at the offsets below (all populated).
BENCH_SIZES="64K 1M 4M 16M 64M"
SHARED_SIZES="64K 1M 4M 16M"
EXCLUSIVE_OFFSETS="0x2000000 0x2100000 0x2400000 0x3000000 0x4000000"
MIB=1048576

ALLOCS=0
FREES=0
ERRORS=0
LIVE=""
VMM_PID=

say() { echo "scenario: $*"; }
check_failed() {
	say "CHECK FAILED: $*"
	ERRORS=$((ERRORS + 1))
}

to_bytes() {
	case $1 in
	*K) echo $((${1%K} * 1024)) ;;
	*M) echo $((${1%M} * MIB)) ;;
	*G) echo $((${1%G} * 1024 * MIB)) ;;
	*) echo $(($1)) ;;
	esac
}
hex() { printf '%#x' "$1"; }
ms() { awk -v ns="$1" 'BEGIN { printf "%.1f", ns / 1e6 }'; }

# jget KEY FILE: the first value of "KEY" in a pretty-printed JSON document.
jget() {
	sed -n "s/^ *\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\} *$/\1/p" "$2" | head -n 1
}

# Every wait is bounded: ctl's own deadline, and busybox timeout around it.
ctl() {
	timeout 150 "$VMM" ctl --api-sock "$SOCK" --timeout 120 "$@"
}

# The end: one summary line, the status.
finish() {
	status=$1
	guest=$(grep -o 'linux guest: [0-9]* files, [0-9]* checked, [0-9]* integrity errors' "$LOG" 2>/dev/null | tail -n 1)
	guest_errors=$(echo "$guest" | sed -n 's/.* \([0-9]*\) integrity errors/\1/p')
	if [ -z "$guest_errors" ]; then
		say "the guest never reported its integrity check"
		guest_errors=0
		ERRORS=$((ERRORS + 1))
	fi
	say "guest console (agent and workload lines):"
	grep -E 'linux guest:|cma_agent|cma-bench:|Kernel panic|BUG:|Oops|WARNING:' "$LOG" 2>/dev/null |
		sed 's/^/  | /'
	[ "$status" -ne 0 ] && { say "last lines of the VMM's output:"; tail -n 30 "$LOG" | sed 's/^/  | /'; }
	total=$((guest_errors + ERRORS))
	echo "linux guest: $ALLOCS allocations, $FREES frees, $total integrity errors"
	[ "$total" -eq 0 ] && [ "$status" -eq 0 ] && exit 0
	exit 1
}

abort() {
	say "FAILED: $*"
	ERRORS=$((ERRORS + 1))
	if [ -n "$VMM_PID" ] && kill -0 "$VMM_PID" 2>/dev/null; then
		kill "$VMM_PID" 2>/dev/null
		sleep 2
		kill -9 "$VMM_PID" 2>/dev/null
	fi
	finish 1
}

# region_field REGION KEY
region_field() {
	# (Runs in a command substitution: no abort from here; the caller's checks fail.)
	ctl regions "$1" >"$OUT.r" 2>&1 || { echo "?"; return; }
	jget "$2" "$OUT.r"
}

# After a failed request: if the VMM is gone, nothing more can be checked.
vmm_alive() {
	kill -0 "$VMM_PID" 2>/dev/null && return 0
	wait "$VMM_PID"
	st=$?
	VMM_PID=
	abort "the VMM exited (status $st) in the middle of the scenario"
}

# alloc NAME ctl-alloc-arguments...: allocate, check, remember as NAME.
alloc() {
	name=$1
	shift
	if ! ctl alloc "$@" >"$OUT" 2>&1; then
		check_failed "alloc $name ($*): $(tr -d '\n' <"$OUT" | head -c 300)"
		vmm_alive
		return 1
	fi
	ALLOCS=$((ALLOCS + 1))
	id=$(jget id "$OUT")
	gpa=$(jget gpa "$OUT")
	len=$(jget len "$OUT")
	region=$(jget region "$OUT")
	mode=$(jget mode "$OUT")
	ns=$(jget elapsed_ns "$OUT")
	migrated=$(jget pages_migrated "$OUT")
	eval "ID_$name=$id GPA_$name=$gpa LEN_$name=$len REGION_$name=$region NS_$name=$ns MIG_$name=$migrated"
	LIVE="$LIVE $name"
	say "alloc $name ($*): $id [$(hex "$gpa") +$(hex "$len")] in $region, $mode, $migrated pages migrated, $(ms "$ns") ms"

	# What we asked for is what we got.
	want_size='' want_align='' want_offset=0 want_mode=exclusive want_region=''
	while [ $# -gt 0 ]; do
		case $1 in
		--size) want_size=$(to_bytes "$2") ;;
		--align) want_align=$(to_bytes "$2") ;;
		--offset) want_offset=$(($2)) ;;
		--mode) want_mode=$2 ;;
		--regions) want_region=$2 ;;
		--device) [ "$2" = cam ] && want_region=a || want_region=b ;;
		esac
		[ "$1" = --unpinned ] && shift || shift 2
	done
	[ "$len" = "$want_size" ] || check_failed "$name: length $len, asked $want_size"
	[ -z "$want_align" ] || [ $((gpa % want_align)) -eq "$want_offset" ] ||
		check_failed "$name: $(hex "$gpa") is not at $want_offset past a multiple of $want_align"
	case ",$want_region," in *",$region,"*) ;; *) check_failed "$name: landed in $region, expected $want_region" ;; esac
	[ "$mode" = "$want_mode" ] || check_failed "$name: mode $mode, asked $want_mode"
	eval "base=\${BASE_$region:-0} size=\${SIZE_$region:-0}"
	[ "$gpa" -ge "$base" ] && [ $((gpa + len)) -le $((base + size)) ] ||
		check_failed "$name: [$(hex "$gpa") +$(hex "$len")] outside region $region"
	# The chunk is listed, in its mode.
	if ctl chunk "$id" >"$OUT.c" 2>&1; then
		[ "$(jget mode "$OUT.c")" = "$want_mode" ] || check_failed "$name: ctl chunk shows mode $(jget mode "$OUT.c")"
	else
		check_failed "$name: ctl chunk $id: $(tr -d '\n' <"$OUT.c" | head -c 200)"
	fi
}

# release NAME: free the chunk.
release() {
	eval "id=\${ID_$1:-}"
	[ -n "$id" ] || { check_failed "free $1: no such chunk"; return; }
	if ctl free "$id" >"$OUT" 2>&1; then
		FREES=$((FREES + 1))
		say "free $1 ($id)"
	else
		check_failed "free $1 ($id): $(tr -d '\n' <"$OUT" | head -c 300)"
		vmm_alive
	fi
	rest=""
	for n in $LIVE; do [ "$n" = "$1" ] || rest="$rest $n"; done
	LIVE=$rest
	ctl chunk "$id" >/dev/null 2>&1 && check_failed "$1 ($id) is still listed after its free"
}

# check_region R: the region's statistics agree with the chunks we hold there.
check_region() {
	ctl regions "$1" >"$OUT.r" 2>&1 || { check_failed "ctl regions $1"; vmm_alive; return; }
	used=$(jget used "$OUT.r")
	free_b=$(jget free "$OUT.r")
	largest=$(jget largest_free "$OUT.r")
	size=$(jget size "$OUT.r")
	want=0
	for n in $LIVE; do
		eval "r=\$REGION_$n l=\$LEN_$n"
		[ "$r" = "$1" ] && want=$((want + l))
	done
	[ "$used" = "$want" ] || check_failed "region $1: used $used, the chunks we hold make $want"
	[ $((used + free_b)) -eq "$size" ] || check_failed "region $1: used $used + free $free_b != size $size"
	[ "$largest" -le "$free_b" ] || check_failed "region $1: largest free $largest > free $free_b"
	if [ "$want" -eq 0 ] && [ "$largest" -ne "$size" ]; then
		check_failed "region $1: empty but largest free $largest != $size"
	fi
	say "region $1: used $(($used / 1024))K, free $(($free_b / 1024))K, largest free $(($largest / 1024))K: consistent with $(echo $LIVE | wc -w) live chunks"
}

# ---------------------------------------------------------------- boot

CMDLINE="cmatest.fill=240M cmatest.warm=1 cmatest.pin=b:$PIN_OFFSET cmatest.bench=b cmatest.bench_sizes=$(echo $BENCH_SIZES | tr ' ' ,) cmatest.bench_runs=1"
rm -f "$SOCK"
say "booting L2: $(basename "$L2_KERNEL"), 768M, regions a and b of 128M lent; $CMDLINE"
T0=$(cut -d' ' -f1 /proc/uptime)
"$VMM" run --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --memory 768M --vcpus 2 \
	--cma name=a,size=128M --cma name=b,size=128M --cma-map 'cam=a;*=b' \
	--api-sock "$SOCK" --evict-timeout 30000 --timeout 900 --stats \
	--cmdline "$CMDLINE" </dev/null >"$LOG" 2>&1 &
VMM_PID=$!

# Wait for "populated" in short steps, so that a VMM that died (a crashed guest) ends the
# wait at once instead of at its deadline.
until timeout 30 "$VMM" ctl --api-sock "$SOCK" --timeout 15 wait >"$OUT" 2>&1; do
	kill -0 "$VMM_PID" 2>/dev/null || { wait "$VMM_PID"; st=$?; VMM_PID=; abort "the VMM exited (status $st) before the guest populated its lent memory"; }
	waited=$(awk -v a="$T0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%d", b - a }')
	[ "$waited" -lt 400 ] || abort "the guest did not populate its lent memory within 400 s: $(tr -d '\n' <"$OUT" | head -c 400)"
	sleep 1
done
say "guest populated after $(awk -v a="$T0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s"

for r in a b; do
	ctl regions "$r" >"$OUT" 2>&1 || abort "ctl regions $r"
	eval "BASE_$r=$(jget base "$OUT") SIZE_$r=$(jget size "$OUT")"
done
PINNED=$(sed -n 's/.*linux guest: pinned: \(0x[0-9a-f]*\).*/\1/p' "$LOG" | head -n 1)
[ -n "$PINNED" ] || abort "the guest did not report its pinned page"
say "region a [$(hex "$BASE_a") +$(hex "$SIZE_a")], b [$(hex "$BASE_b") +$(hex "$SIZE_b")]; pinned page $PINNED (b + $PIN_OFFSET)"
[ $((PINNED)) -ge $((BASE_b + PIN_OFFSET)) ] && [ $((PINNED)) -lt $((BASE_b + SIZE_b)) ] ||
	check_failed "pinned page $PINNED is not at or after b + $PIN_OFFSET"

# ---------------------------------------------------------------- 1. timing

# Populated ranges of a, timed end to end through the device: first shared grants (the
# guest keeps access: no KVM slot change), then exclusive ones (the range leaves the
# guest's address space), against Linux's own alloc_contig_range() the guest timed on
# same-sized populated ranges of b before reporting "populated".
say "1. timing: populated ranges of a, shared then exclusive, against the guest's own alloc_contig_range on b"
i=0
for s in $SHARED_SIZES; do
	i=$((i + 1))
	alloc s$i --regions a --size "$s" --align "$s" --mode shared
done
i=0
for s in $BENCH_SIZES; do
	i=$((i + 1))
	set -- $EXCLUSIVE_OFFSETS
	shift $((i - 1))
	alloc x$i --regions a --size "$s" --align 128M --offset "$1" --mode exclusive
done
check_region a

# guest_evict_ns NAME: the agent's own alloc_contig_range() time for that chunk's Evict.
guest_evict_ns() {
	eval "g=\${GPA_$1:-0} l=\${LEN_$1:-0}"
	grep "evict [0-9]* \[$(hex "$g") +$(hex "$l")\]: done" "$LOG" | tail -n 1 |
		sed -n 's/.*alloc_contig_range() \([0-9]*\) ns.*/\1/p'
}
say "   end to end through the device, ms [of which the guest's alloc_contig_range]; pages migrated"
say "   size       shared grant              exclusive grant           guest alloc_contig_range (no device)"
i=0
for s in $BENCH_SIZES; do
	i=$((i + 1))
	bytes=$(to_bytes "$s")
	shared="-"
	case " $SHARED_SIZES " in *" $s "*)
		eval "ns=\${NS_s$i:-0} mig=\${MIG_s$i:-0}"
		shared="$(ms "$ns") [$(ms "$(guest_evict_ns s$i)")] $mig" ;;
	esac
	eval "ns=\${NS_x$i:-0} mig=\${MIG_x$i:-0}"
	exclusive="$(ms "$ns") [$(ms "$(guest_evict_ns x$i)")] $mig"
	line=$(grep "cma-bench: contig size=$bytes " "$LOG" | head -n 1)
	gns=$(echo "$line" | sed -n 's/.* ns=\([0-9]*\).*/\1/p')
	guse=$(echo "$line" | sed -n 's/.* in_use=\([0-9]*\).*/\1/p')
	gret=$(echo "$line" | sed -n 's/.* ret=\([-0-9]*\).*/\1/p')
	[ "$gret" = 0 ] || check_failed "the guest's alloc_contig_range of $s returned '$gret'"
	printf 'scenario:   %4s   %-24s  %-24s  %s [%s pages in use]\n' "$s" "$shared" "$exclusive" \
		"$(ms "${gns:-0}")" "${guse:-?}"
done
for n in $LIVE; do release "$n"; done
check_region a

# ---------------------------------------------------------------- 2. busy

say "2. busy: 64M in b, whose first candidate covers the pinned page $PINNED"
retries0=$(region_field b busy_retries)
vmm_alive
if alloc busy --regions b --size 64M --mode exclusive; then
	retries1=$(region_field b busy_retries)
	say "   busy retries in b: $retries0 -> $retries1; chunk at $(hex "$GPA_busy")"
	[ "$retries1" -gt "$retries0" ] || check_failed "busy retries of b did not go up ($retries0 -> $retries1)"
	[ "$GPA_busy" -gt $((PINNED)) ] || check_failed "the chunk $(hex "$GPA_busy") is not past the pinned page $PINNED"
	check_region b
	release busy
fi

# ---------------------------------------------------------------- 3. mixed

say "3. mixed allocations and frees"
alloc m1 --regions a --size 256K --align 64K --mode exclusive
alloc m2 --device cam --size 1M --align 1M --mode shared
alloc m3 --device other --size 512K --mode exclusive
alloc m4 --regions b --size 8M --align 2M --mode shared
check_region a
check_region b
release m1
alloc m5 --regions a --size 2M --align 2M --mode exclusive
alloc m6 --regions a,b --size 16M --align 4M --mode exclusive
release m3
alloc m7 --regions b --size 64K --mode exclusive
alloc m8 --regions a --size 32M --align 32M --mode shared
check_region a
check_region b
release m2
release m5
alloc m9 --regions b --size 128K --align 128K --mode exclusive
alloc m10 --device cam --size 4M --mode exclusive
release m4
release m6
alloc m11 --regions b --size 2M --align 1M --mode shared
alloc m12 --regions a --size 64K --align 64K --mode exclusive
check_region a
check_region b
for n in $LIVE; do release "$n"; done
check_region a
check_region b

# ---------------------------------------------------------------- 4. compaction

say "4. compaction of a: four unpinned 1M chunks, two freed, then compact"
alloc c1 --regions a --size 1M --mode exclusive --unpinned
alloc c2 --regions a --size 1M --mode exclusive --unpinned
alloc c3 --regions a --size 1M --mode shared --unpinned
alloc c4 --regions a --size 1M --mode exclusive --unpinned
release c1
release c3
before=$(region_field a largest_free)
if ctl compact a >"$OUT" 2>&1; then
	moved=$(jget chunks_moved "$OUT")
	failed=$(jget moves_failed "$OUT")
	after=$(jget largest_free_after "$OUT")
	say "   compaction: $moved chunks moved, $failed failed; largest free $((before / 1024))K -> $((after / 1024))K"
	[ "${moved:-0}" -ge 1 ] || check_failed "compaction moved no chunk"
	[ "${failed:-1}" -eq 0 ] || check_failed "compaction: $failed moves failed"
	[ "${after:-0}" -gt "$before" ] || check_failed "compaction did not grow the largest free run ($before -> $after)"
	for n in c2 c4; do
		eval "id=\$ID_$n"
		ctl chunk "$id" >"$OUT.c" 2>&1 || check_failed "$n ($id) lost by the compaction"
		eval "GPA_$n=$(jget gpa "$OUT.c")"
	done
else
	check_failed "ctl compact a: $(tr -d '\n' <"$OUT" | head -c 300)"
fi
check_region a
release c2
release c4

# ---------------------------------------------------------------- 5. the end

ctl chunks >"$OUT" 2>&1 || check_failed "ctl chunks"
grep -q '"id"' "$OUT" && check_failed "chunks left: $(tr -d '\n ' <"$OUT")"
for r in a b; do
	u=$(region_field "$r" used)
	[ "$u" = 0 ] || check_failed "region $r: used $u at the end"
done
check_region a
check_region b

say "5. shutdown: the guest checks its files"
ctl shutdown >"$OUT" 2>&1 || check_failed "ctl shutdown: $(tr -d '\n' <"$OUT")"
i=0
while kill -0 "$VMM_PID" 2>/dev/null; do
	i=$((i + 1))
	[ $i -le 300 ] || abort "the VMM did not exit within 300 s of the shutdown request"
	sleep 1
done
wait "$VMM_PID"
status=$?
VMM_PID=
say "the VMM exited with status $status (the guest's)"
[ "$status" -eq 0 ] || check_failed "the guest's exit status is $status"
grep -E '^cma-vmm: region' "$LOG" | sed 's/^/  /'
finish "$status"
