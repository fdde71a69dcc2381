#!/usr/bin/env bash
# The Linux test platform: boot a stock Debian kernel under QEMU's TCG with emulated AMD
# SVM ("L1", where /dev/kvm works and is fast), and inside it run either the Linux-guest
# scenario (tests/linux/scenario.sh: cma-vmm booting a stock kernel, "L2", with our agent
# module) or, with --suite, our KVM integration tests. Everything comes from Debian
# packages and this repository; see /work/shared/linux-guest.md for why and the figures.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

usage() {
	cat <<'EOF'
Usage: tests/linux/run.sh [options]

Installs what it needs (Debian packages), builds cma-vmm, the Linux guest agent module and
the L2 initramfs, packs an L1 initramfs, boots L1 under QEMU TCG with emulated SVM, runs
tests/linux/scenario.sh inside, and exits with the scenario's status. Console log:
target/linux/l1-console.log.

Options:
  --suite              run the KVM integration tests (the cma-tests crate) inside L1
                       instead of the scenario, and the same executables on the host, and
                       print a table of both wall times
  --suite-no-host      with --suite: do not run them on the host
  --suite-only A,B     with --suite: only these test executables (boot, evict, api, ...)
  --suite-args STR     with --suite: arguments for every test executable (e.g. a test
                       name filter, or --test-threads=1)
  --bench              run `cma-vmm bench linux` inside L1 instead of the scenario (our
                       device against the guest's own alloc_contig_range and QEMU's
                       virtio-mem, same kernel); the report lands in target/linux/bench/
                       (L1 gets 4 GiB and the deadline is 1800 s unless given)
  --bench-runs N       with --bench: samples per size and series (default 5, at most 5)
  --scenario FILE      run FILE inside L1 instead of tests/linux/scenario.sh
  --add HOST:L1PATH    put HOST_PATH into L1 at L1PATH (repeatable; executables bring
                       their shared libraries)
  --release            use the release profile (default: debug, as cargo test builds)
  --timeout SECS       deadline for everything after the builds (default 600); QEMU is
                       killed then and the run fails
  --kver VERSION       the kernel for L1, L2 and the module (default: the newest one in
                       /boot with modules and headers)
  --l1-append STR      more L1 kernel command line
  --platform-only      develop the platform itself: when guest-linux/ has no Makefile or
                       mkinitramfs.sh yet, warn and use a placeholder L2 initramfs
  --keep               keep the work directory (target/linux/work: L1 tree, initramfs)
  --l1-shell           interactive: a shell in L1 instead of the payload (Ctrl-A x quits
                       QEMU); not for CI
  -h, --help           this text

Inside L1 the scenario gets: CMA_VMM (the cma-vmm binary), L2_KERNEL (the same stock
kernel), L2_INITRD (guest-linux's initramfs), SCRATCH_DIR (an empty tmpfs, also its
working directory), KVER. It must exit 0 on success. The last console line of L1 is
"L1-RESULT: <status>".
EOF
}

# ---------------------------------------------------------------- options

PROFILE=debug
TIMEOUT=
BENCH_RUNS=5
SCENARIO=$HERE/scenario.sh
MODE=scenario
SUITE_HOST=1
SUITE_ONLY=
SUITE_ARGS=
PLATFORM_ONLY=0
KEEP=0
SHELL_MODE=0
KVER=
L1_APPEND_EXTRA=
EXTRA=()
# The L1 machine; overridable from the environment for experiments.
L1_CPUS=${L1_CPUS:-2}
L1_MEM=${L1_MEM:-}
L1_ACCEL=${L1_ACCEL:-tcg,thread=multi}
L1_CPU=${L1_CPU:-EPYC,+svm,+npt}

need_arg() { (($1 >= 2)) || die "$2 needs a value (see --help)"; }
while (($#)); do
	case $1 in
	--suite) MODE=suite ;;
	--bench) MODE=bench ;;
	--bench-runs) need_arg $# "$1" && BENCH_RUNS=$2 && shift ;;
	--suite-no-host) SUITE_HOST=0 ;;
	--suite-only) need_arg $# "$1" && SUITE_ONLY=$2 && shift ;;
	--suite-args) need_arg $# "$1" && SUITE_ARGS=$2 && shift ;;
	--scenario) need_arg $# "$1" && SCENARIO=$(realpath "$2") && shift ;;
	--add) need_arg $# "$1" && EXTRA+=("$2") && shift ;;
	--release) PROFILE=release ;;
	--timeout) need_arg $# "$1" && TIMEOUT=$2 && shift ;;
	--kver) need_arg $# "$1" && KVER=$2 && shift ;;
	--l1-append) need_arg $# "$1" && L1_APPEND_EXTRA=$2 && shift ;;
	--platform-only) PLATFORM_ONLY=1 ;;
	--keep) KEEP=1 ;;
	--l1-shell) SHELL_MODE=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*) die "unknown option '$1' (see --help)" ;;
	esac
	shift
done
# The benchmark's guest has 2.25 GiB and fills it, then QEMU's guest runs: more room and time.
if [[ $MODE == bench ]]; then
	TIMEOUT=${TIMEOUT:-1800} L1_MEM=${L1_MEM:-4G}
else
	TIMEOUT=${TIMEOUT:-600} L1_MEM=${L1_MEM:-3G}
fi
[[ $BENCH_RUNS =~ ^[1-5]$ ]] || die "--bench-runs takes 1 to 5, not '$BENCH_RUNS'"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--timeout takes a whole number of seconds, not '$TIMEOUT'"
for e in "${EXTRA[@]}"; do
	[[ $e == ?*:/* ]] || die "--add takes HOST_PATH:/L1/PATH, not '$e'"
done

OUT=$REPO/target/linux
WORK=$OUT/work
LOG=$OUT/l1-console.log
mkdir -p "$OUT"
# One run at a time: they share target/linux.
exec {lock}>"$OUT/.lock"
flock -n "$lock" || die "another tests/linux/run.sh is running (lock $OUT/.lock)"

L1_QEMU_PID=
cleanup() {
	[[ -n $L1_QEMU_PID ]] && kill -KILL "$L1_QEMU_PID" 2>/dev/null
	if ((KEEP)); then
		log "work directory kept: $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM

cd "$REPO"
T_ALL=$(now_us)

# ---------------------------------------------------------------- 1. packages

phase_begin "install"
packages=(qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static cpio)
# The agent module is built against linux-headers-amd64, which does not pull make in.
[[ $MODE == scenario || $MODE == bench ]] && packages+=(make gcc)
# --suite: python3 reads cargo's JSON messages; strip (binutils) slims the test executables.
[[ $MODE == suite ]] && packages+=(binutils) && ! command -v python3 >/dev/null && packages+=(python3)
ensure_packages "${packages[@]}"
command -v cargo >/dev/null || die "cargo is missing: install Rust (stable) first"
[[ -n $KVER ]] || KVER=$(pick_kver)
[[ -f /boot/vmlinuz-$KVER && -r /boot/vmlinuz-$KVER ]] || die "cannot read /boot/vmlinuz-$KVER"
log "kernel for L1 and L2: $KVER"
phase_end

# ---------------------------------------------------------------- 2. builds

cargo_profile=()
[[ $PROFILE == release ]] && cargo_profile=(--release)
CMA_VMM_BIN=$REPO/target/$PROFILE/cma-vmm
rm -rf "$WORK"
mkdir -p "$WORK"

# missing_piece WHAT: without guest-linux's piece, fail, or in --platform-only mode
# warn loudly and go on.
missing_piece() {
	if ((PLATFORM_ONLY)); then
		warn "*** $1 is missing: --platform-only, going on WITHOUT it ***"
	else
		die "$1 is missing (use --platform-only to test the platform without it)"
	fi
}

# A stand-in L2 initramfs for --platform-only: busybox and an /init that says it is up.
placeholder_l2_initrd() {
	local root=$WORK/l2-placeholder
	mkdir -p "$root"/{bin,proc,sys,dev}
	cp /bin/busybox "$root/bin/busybox"
	ln -s busybox "$root/bin/sh"
	cat >"$root/init" <<-'EOF'
		#!/bin/busybox sh
		/bin/busybox mount -t devtmpfs dev /dev
		exec </dev/console >/dev/console 2>&1
		/bin/busybox mount -t proc proc /proc
		echo "L2-PLACEHOLDER: up: $(/bin/busybox uname -r), $(/bin/busybox grep MemTotal /proc/meminfo)"
		/bin/busybox poweroff -f
	EOF
	chmod 755 "$root/init"
	(cd "$root" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$1"
}

phase_begin "build: cma-vmm ($PROFILE)"
cargo build -p vmm "${cargo_profile[@]}" || die "cargo build -p vmm failed"
[[ -x $CMA_VMM_BIN ]] || die "cargo build -p vmm did not produce $CMA_VMM_BIN"
phase_end

L2_INITRD_HOST=$WORK/l2-initrd.cpio.gz
if [[ $MODE == scenario || $MODE == bench ]]; then
	phase_begin "build: agent module"
	AGENT_KO=$REPO/guest-linux/cma_agent.ko
	if [[ -f guest-linux/Makefile ]]; then
		make -C guest-linux KDIR="/lib/modules/$KVER/build" || die "building the agent module failed"
		[[ -f $AGENT_KO ]] || die "make -C guest-linux did not produce $AGENT_KO"
	else
		missing_piece "guest-linux/Makefile (the agent module)"
		AGENT_KO=
	fi
	phase_end

	phase_begin "build: L2 initramfs"
	if [[ -x guest-linux/mkinitramfs.sh && -n $AGENT_KO ]]; then
		guest-linux/mkinitramfs.sh --kver "$KVER" --module "$AGENT_KO" --out "$L2_INITRD_HOST" ||
			die "guest-linux/mkinitramfs.sh failed"
		[[ -s $L2_INITRD_HOST ]] || die "guest-linux/mkinitramfs.sh did not write $L2_INITRD_HOST"
	else
		missing_piece "guest-linux/mkinitramfs.sh (the L2 initramfs) or its input, the module,"
		warn "*** L2_INITRD is a PLACEHOLDER: busybox and an /init that prints L2-PLACEHOLDER and powers off ***"
		placeholder_l2_initrd "$L2_INITRD_HOST"
	fi
	phase_end
	if ((!SHELL_MODE)); then
		[[ -f $SCENARIO ]] || die "no scenario $SCENARIO (tests/linux/scenario.sh, or --scenario FILE)"
	fi
fi

# --suite: the cma-tests crate's test executables, and the binaries they spawn (the VMM
# under test, whose path is compiled into them), from cargo's own list of artifacts.
SUITE_LIST=$WORK/suite.list
# Test executables that cannot run in L1, and why: run on the host only, marked in the table.
declare -A SUITE_HOST_ONLY=(
	[linux_protocol]="compiles a C program with gcc, which L1 has not; it needs no KVM"
)
if [[ $MODE == suite ]]; then
	phase_begin "build: test executables ($PROFILE)"
	cargo test --workspace --no-run "${cargo_profile[@]}" \
		--message-format=json-render-diagnostics >"$WORK/cargo-test.json" ||
		die "cargo test --workspace --no-run failed"
	python3 - "$WORK/cargo-test.json" "$REPO/tests/Cargo.toml" "$SUITE_ONLY" >"$SUITE_LIST" <<-'EOF'
		import json, sys
		messages, manifest = sys.argv[1], sys.argv[2]
		only = [n for n in sys.argv[3].split(",") if n]
		for line in open(messages):
		    if not line.startswith("{"):
		        continue
		    m = json.loads(line)
		    if m.get("reason") != "compiler-artifact" or m.get("manifest_path") != manifest:
		        continue
		    name, kinds, exe = m["target"]["name"], m["target"]["kind"], m.get("executable")
		    if exe and kinds == ["test"] and (not only or name in only):
		        print("test", name, exe)
		    elif exe and kinds == ["bin"]:
		        print("bin", name, exe)
	EOF
	sort -k2,2 -o "$SUITE_LIST" "$SUITE_LIST"
	for n in "${!SUITE_HOST_ONLY[@]}"; do
		grep -q "^test $n " "$SUITE_LIST" || continue
		sed -i "s/^test $n /hostonly $n /" "$SUITE_LIST"
		warn "$n is not run in L1: ${SUITE_HOST_ONLY[$n]}"
	done
	grep -q '^test ' "$SUITE_LIST" || die "no test executables of tests/Cargo.toml (--suite-only '$SUITE_ONLY'?)"
	if [[ -n $SUITE_ONLY ]]; then
		for n in ${SUITE_ONLY//,/ }; do
			grep -q "^test $n " "$SUITE_LIST" || die "--suite-only: no test executable '$n'"
		done
	fi
	sed 's/^/linux-test:   /' "$SUITE_LIST"
	phase_end
fi

# ---------------------------------------------------------------- 3. the L1 initramfs

phase_begin "build: L1 initramfs"
l1_begin "$WORK/l1-root"
l1_add_busybox
# bash too, so a payload may be a bash script.
l1_add /bin/bash /bin/bash
l1_add_modules "$KVER" irqbypass ccp kvm kvm-amd
l1_add "$HERE/l1-init.sh" /init
chmod 755 "$L1_ROOT/init"
conf=$L1_ROOT/etc/l1.conf
{
	echo "# written by tests/linux/run.sh"
	echo "export KVER='$KVER' HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1"
	# L1's clock starts about when QEMU does, which is when the deadline starts counting.
	echo "L1_WATCHDOG_SECS=$((TIMEOUT > 60 ? TIMEOUT - 20 : TIMEOUT * 2 / 3))"
} >"$conf"
if [[ $MODE == scenario || $MODE == bench ]]; then
	l1_add "$CMA_VMM_BIN" /usr/local/bin/cma-vmm
	l1_add "/boot/vmlinuz-$KVER" /l2/vmlinuz
	l1_add "$L2_INITRD_HOST" /l2/initrd.cpio.gz
	[[ -f $SCENARIO ]] && l1_add "$SCENARIO" /scenario.sh && chmod 755 "$L1_ROOT/scenario.sh"
	cat >>"$conf" <<-'EOF'
		export CMA_VMM=/usr/local/bin/cma-vmm L2_KERNEL=/l2/vmlinuz L2_INITRD=/l2/initrd.cpio.gz SCRATCH_DIR=/scratch
		L1_PAYLOAD=/scenario.sh
	EOF
fi
if [[ $MODE == bench ]]; then
	# QEMU for the virtio-mem comparison, with the firmware a -kernel boot of the pc
	# machine reads (SeaBIOS and the option ROMs) in the one directory it is given (-L).
	l1_add /usr/bin/qemu-system-x86_64 /usr/bin/qemu-system-x86_64
	l1_add /usr/share/seabios/bios-256k.bin /usr/share/qemu/bios-256k.bin
	for f in linuxboot_dma.bin linuxboot.bin kvmvapic.bin; do
		l1_add "/usr/share/qemu/$f" "/usr/share/qemu/$f"
	done
	l1_add "$HERE/bench.sh" /bench.sh
	chmod 755 "$L1_ROOT/bench.sh"
	cat >>"$conf" <<-EOF
		export BENCH_RUNS=$BENCH_RUNS
		L1_PAYLOAD=/bench.sh
	EOF
elif [[ $MODE == suite ]]; then
	# Same absolute paths as on the host. Without their debug information (symbols stay,
	# so backtraces keep function names): ~27 MB each otherwise, which L1 would load and
	# unpack under TCG.
	while read -r kind name exe; do
		[[ $kind == hostonly ]] && continue
		l1_add "$exe"
		strip --strip-debug "$L1_ROOT$exe"
		[[ $kind == test ]] && echo "$name $exe" >>"$L1_ROOT/etc/l1-suite"
	done <"$SUITE_LIST"
	# Source files the tests read, relative to tests/ as cargo runs them or through
	# CARGO_MANIFEST_DIR: boot.rs uses ../resources/vm.toml, and Cargo.toml as a file that
	# is not a guest image; fuzz_regressions replays ../fuzz/{corpus,regressions}.
	for f in tests/Cargo.toml resources fuzz/corpus fuzz/regressions; do
		[[ -e $f ]] || continue
		mkdir -p "$L1_ROOT$REPO/$(dirname "$f")"
		cp -r "$f" "$L1_ROOT$REPO/$f"
	done
	l1_add "$HERE/l1-suite.sh" /suite.sh
	chmod 755 "$L1_ROOT/suite.sh"
	cat >>"$conf" <<-EOF
		SUITE_CWD='$REPO/tests'
		SUITE_ARGS='$SUITE_ARGS'
		L1_PAYLOAD=/suite.sh
	EOF
fi
for e in "${EXTRA[@]}"; do
	l1_add "${e%%:/*}" "/${e#*:/}"
done
((SHELL_MODE)) && echo "L1_PAYLOAD=shell" >>"$conf"
L1_INITRD=$WORK/l1-initrd.cpio.gz
l1_pack "$L1_INITRD"
phase_end

# ---------------------------------------------------------------- 4. boot L1

# quiet: the kernel's boot messages would drown the payload's; panic=-1 with QEMU's
# -no-reboot: a panic ends QEMU at once instead of waiting for the deadline.
append="console=ttyS0 rdinit=/init panic=-1 quiet $L1_APPEND_EXTRA"
l1_qemu_cmd "/boot/vmlinuz-$KVER" "$L1_INITRD" "$append"

if ((SHELL_MODE)); then
	log "L1 shell: Ctrl-A x quits QEMU; 'exit' powers L1 off"
	"${L1_QEMU[@]}" -serial mon:stdio
	exit 0
fi

DEADLINE=$(($(now_us) + TIMEOUT * 1000000))
# The stock L2 kernel sometimes dies of a triple fault under the emulated SVM, at any point
# (boot included; tests/linux/README.md, "Known problems"). The scenario then fails, and
# runs again while the deadline leaves room: at most 3 attempts, each one reported. Any
# other failure, or a triple fault in every attempt, fails the run.
L2_CRASH='guest crashed on vCPU [0-9]*: triple fault'
attempt=1
while :; do
	log "booting L1 (deadline ${TIMEOUT}s, attempt $attempt): ${L1_QEMU[*]}"
	l1_boot "$LOG" "$DEADLINE"
	if [[ -n $L1_T_PAYLOAD ]]; then
		phase_record "L1 boot to $MODE start" $((L1_T_PAYLOAD - L1_T_START))
		if ((L1_TIMED_OUT)); then
			phase_record "$MODE in L1 (TIMED OUT)" $((L1_T_END - L1_T_PAYLOAD))
		else
			phase_record "$MODE in L1 (to power-off)" $((L1_T_END - L1_T_PAYLOAD))
		fi
	else
		phase_record "L1 (never reached the $MODE)" $((L1_T_END - L1_T_START))
	fi
	left=$(((DEADLINE - $(now_us)) / 1000000))
	if [[ $MODE == scenario && $L1_RESULT != 0 ]] && ((!L1_TIMED_OUT && attempt < 3 && left > 150)) &&
		grep -q "$L2_CRASH" "$LOG"; then
		cp "$LOG" "$OUT/l1-console.attempt$attempt.log"
		warn "attempt $attempt: the L2 guest died of a triple fault ($(grep -o "$L2_CRASH" "$LOG" | head -n 1)); console in $OUT/l1-console.attempt$attempt.log; running the scenario again"
		attempt=$((attempt + 1))
		continue
	fi
	break
done
((attempt == 1)) || log "scenario attempts: $attempt (the earlier ones: L2 triple faults)"

# ---------------------------------------------------------------- 5. --suite on the host

failed=0
if [[ $MODE == suite ]]; then
	declare -A host_counts=() host_secs=()
	if ((SUITE_HOST)); then
		phase_begin "suite on the host"
		# As cargo test runs them: from the package's directory.
		while read -r kind name exe; do
			[[ $kind == test || $kind == hostonly ]] || continue
			left=$(((DEADLINE - $(now_us)) / 1000000))
			if ((left <= 0)); then
				warn "deadline reached: $name not run on the host"
				host_counts[$name]="timeout"
				failed=1
				continue
			fi
			log "host: $name"
			t0=$(now_us)
			status=0
			# shellcheck disable=SC2086 # SUITE_ARGS: words for the test harness
			(cd tests && timeout -k 5 "$left" "$exe" $SUITE_ARGS) >"$OUT/host-$name.log" 2>&1 || status=$?
			host_secs[$name]=$(awk -v us=$(($(now_us) - t0)) 'BEGIN { printf "%.2f", us / 1e6 }')
			host_counts[$name]=$(awk '/^test result:/ { for (i = 2; i <= NF; i++) {
				v = $(i - 1) + 0; if ($i ~ /^passed/) p += v; if ($i ~ /^failed/) f += v } }
				END { printf "%d/%d", p, f }' "$OUT/host-$name.log")
			((status == 124 || status == 137)) && host_counts[$name]+=" TIMEOUT"
			((status == 0)) || warn "host: $name exited $status (log: $OUT/host-$name.log)"
		done <"$SUITE_LIST"
		phase_end
	fi
	# The table: one line per test executable, from L1's "L1-SUITE: NAME k=v..." lines.
	log "suite: passed/failed per test executable; wall times in seconds"
	printf 'linux-test: %-20s %12s %9s %12s %9s %7s\n' "executable" "L1 pass/fail" "L1 secs" \
		"host p/f" "host secs" "host/L1"
	while read -r kind name exe; do
		[[ $kind == test || $kind == hostonly ]] || continue
		line=$(grep "^L1-SUITE: $name " "$LOG" | tail -n 1 || true)
		if [[ $kind == hostonly ]]; then
			l1pf="host only" l1s="-"
		elif [[ -z $line ]]; then
			l1pf="not run" l1s="-" failed=1
		else
			p=$(sed -n 's/.* passed=\([0-9]*\).*/\1/p' <<<"$line")
			f=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$line")
			st=$(sed -n 's/.* status=\([0-9]*\).*/\1/p' <<<"$line")
			l1s=$(sed -n 's/.* secs=\([0-9.]*\).*/\1/p' <<<"$line")
			l1pf="$p/$f"
			[[ $st == 0 ]] || { l1pf+=" exit$st" && failed=1; }
		fi
		hs=${host_secs[$name]:--}
		ratio=-
		[[ $hs != - && $l1s != - ]] && ratio=$(awk -v h="$hs" -v l="$l1s" 'BEGIN { if (l > 0) printf "%.1fx", h / l }')
		printf 'linux-test: %-20s %12s %9s %12s %9s %7s\n' "$name" "$l1pf" "$l1s" \
			"${host_counts[$name]:--}" "$hs" "$ratio"
	done <"$SUITE_LIST"
fi

# ---------------------------------------------------------------- --bench: the report

if [[ $MODE == bench ]]; then
	# Files bench.sh printed between markers (the serial console adds carriage returns).
	rm -rf "$OUT/bench" && mkdir -p "$OUT/bench"
	tr -d '\r' <"$LOG" | awk -v dir="$OUT/bench" '
		/^L1-FILE-BEGIN / { name = $2; file = dir "/" name; printf "" > file; next }
		/^L1-FILE-END / { close(file); file = ""; next }
		file != "" { print >> file }'
	for f in "$OUT"/bench/*; do
		[[ -e $f ]] && log "bench report: $f"
	done
	tr -d '\r' <"$LOG" | sed -n '/^taking back populated guest memory/,/^wrote /p' | grep -v '^wrote ' || true
fi

# ---------------------------------------------------------------- verdict

phase_summary
log "total: $(fmt_secs $(($(now_us) - T_ALL))) s; L1 console log: $LOG"
if ((L1_TIMED_OUT)); then
	die "timed out after ${TIMEOUT}s (QEMU killed); see $LOG"
fi
[[ -n $L1_RESULT ]] || die "L1 ended without an L1-RESULT line (crashed or powered off early?); see $LOG"
[[ $L1_RESULT == 0 ]] || die "L1-RESULT: $L1_RESULT (the $MODE failed inside L1); see $LOG"
((failed == 0)) || die "the suite failed (see the table above)"
log "OK"
