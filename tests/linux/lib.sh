# shellcheck shell=bash
# Globals set here are read by run.sh (shellcheck checks this file alone too):
# shellcheck disable=SC2034
# Helpers for tests/linux/run.sh (sourced, not run): messages and phase times, Debian
# packages, the kernel to use, the L1 initramfs, and booting L1 under QEMU.
#
# L1 is a stock Debian kernel under QEMU's TCG with emulated AMD SVM: the only place on
# this kind of machine where /dev/kvm is fast enough to boot Linux guests (L2) and to run
# our KVM tests (see /work/shared/linux-guest.md).

# ---------------------------------------------------------------- messages and timing

log() { printf 'linux-test: %s\n' "$*"; }
warn() { printf 'linux-test: WARNING: %s\n' "$*" >&2; }
die() {
	printf 'linux-test: FAILED: %s\n' "$*" >&2
	exit 1
}

# Wall clock in microseconds (EPOCHREALTIME is bash 5; run.sh sets LC_ALL=C so its
# separator is a dot).
now_us() {
	local t=$EPOCHREALTIME
	echo "${t/./}"
}

# fmt_secs MICROSECONDS: "12.3"
fmt_secs() {
	printf '%d.%d' $(($1 / 1000000)) $(($1 / 100000 % 10))
}

# Phases: phase_begin NAME ... phase_end; the summary prints every phase's duration.
PHASE_NAMES=()
PHASE_SECS=()
phase_begin() {
	PHASE_NAME=$1
	PHASE_T0=$(now_us)
	log "== $PHASE_NAME"
}
phase_end() {
	phase_record "$PHASE_NAME" $(($(now_us) - PHASE_T0))
}
# phase_record NAME MICROSECONDS (for phases measured elsewhere, e.g. from console marks)
phase_record() {
	PHASE_NAMES+=("$1")
	PHASE_SECS+=("$(fmt_secs "$2")")
	log "== $1: $(fmt_secs "$2") s"
}
phase_summary() {
	local i
	log "phase times:"
	for i in "${!PHASE_NAMES[@]}"; do
		printf 'linux-test:   %-32s %8s s\n' "${PHASE_NAMES[i]}" "${PHASE_SECS[i]}"
	done
}

# ---------------------------------------------------------------- Debian packages

# ensure_packages PKG...: install the missing ones, or fail loudly. A fresh CI machine has
# none of them; a skipped test would look like a passed one, so never skip.
ensure_packages() {
	local missing=() p
	for p in "$@"; do
		# shellcheck disable=SC2016 # ${Status} is dpkg-query's field, not ours
		[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == *" ok installed" ]] || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	log "installing Debian packages: ${missing[*]}"
	command -v apt-get >/dev/null ||
		die "need the Debian packages ${missing[*]}, but there is no apt-get here; install them by hand"
	[[ $EUID -eq 0 ]] ||
		die "need the Debian packages ${missing[*]}; run as root, or: sudo apt-get install --no-install-recommends ${missing[*]}"
	local apt=(apt-get -y -o DPkg::Lock::Timeout=300)
	# The package lists of a fresh machine may be stale or empty: update only on failure.
	if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${missing[@]}"; then
		log "apt-get install failed; running apt-get update and trying again"
		DEBIAN_FRONTEND=noninteractive "${apt[@]}" update ||
			die "apt-get update failed: cannot install ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${missing[@]}" ||
			die "cannot install the Debian packages ${missing[*]}"
	fi
}

# ---------------------------------------------------------------- the kernel

# pick_kver: the newest /boot/vmlinuz-VER that has its modules (/lib/modules/VER) and its
# headers (/lib/modules/VER/build): L1, L2 and the agent module all use that one kernel.
pick_kver() {
	local k v found=()
	for k in /boot/vmlinuz-*; do
		[[ -f $k ]] || continue
		v=${k#/boot/vmlinuz-}
		[[ -f /lib/modules/$v/modules.dep && -f /lib/modules/$v/build/Makefile ]] || continue
		found+=("$v")
	done
	((${#found[@]})) ||
		die "no kernel in /boot with modules and headers in /lib/modules/VER/{,build} (are linux-image-amd64 and linux-headers-amd64 installed?)"
	printf '%s\n' "${found[@]}" | sort -V | tail -n 1
}

# ---------------------------------------------------------------- the L1 initramfs

# The initramfs is staged in L1_ROOT (l1_begin), filled with l1_add*, packed by l1_pack.
L1_ROOT=

l1_begin() {
	L1_ROOT=$1
	rm -rf "$L1_ROOT"
	mkdir -p "$L1_ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,scratch}
}

# l1_add HOST_PATH [L1_PATH]: copy a file into L1 (default: at the same path), and, if it
# is a dynamically linked executable, every shared library ldd lists and the loader, at
# the paths ldd prints.
l1_add() {
	local src=$1 dst=${2:-$1}
	[[ -f $src ]] || die "cannot add $src to L1: no such file"
	[[ $dst == /* ]] || die "L1 paths are absolute: $dst"
	mkdir -p "$L1_ROOT$(dirname "$dst")"
	cp -L --preserve=mode "$src" "$L1_ROOT$dst"
	if [[ -x $src && $(head -c 4 "$src") == $'\x7fELF' ]]; then
		l1_add_libs "$src"
	fi
}

# l1_add_libs EXE: its shared libraries (none for a static executable).
l1_add_libs() {
	local out lib
	# ldd fails on static executables ("not a dynamic executable"): nothing to add.
	out=$(ldd "$1" 2>/dev/null) || return 0
	if grep -q 'not found' <<<"$out"; then
		die "$1 needs a shared library that is missing here: $(grep 'not found' <<<"$out")"
	fi
	# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
	while read -r lib; do
		[[ -e $L1_ROOT$lib ]] && continue
		mkdir -p "$L1_ROOT$(dirname "$lib")"
		cp -L "$lib" "$L1_ROOT$lib"
	done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out")
}

# l1_add_busybox: the static busybox, with every applet as a symlink (sh, mount, insmod...).
l1_add_busybox() {
	local bb=/bin/busybox applet
	[[ -x $bb ]] || die "$bb is missing (Debian package busybox-static)"
	if ldd "$bb" >/dev/null 2>&1; then
		die "$bb is dynamically linked: L1 needs the static one (Debian package busybox-static)"
	fi
	cp "$bb" "$L1_ROOT/bin/busybox"
	for applet in $("$bb" --list-full); do
		[[ -e $L1_ROOT/$applet || -L $L1_ROOT/$applet ]] && continue
		mkdir -p "$L1_ROOT/$(dirname "$applet")"
		ln -s /bin/busybox "$L1_ROOT/$applet"
	done
}

# _moddep KVER NAME: NAME's modules.dep line ("path: dep-path..."); '-' and '_' are the
# same in module names.
_moddep() {
	awk -F: -v want="${2//-/_}" '{
		n = $1; sub(/.*\//, "", n); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", n); gsub(/-/, "_", n)
		if (n == want) { print; exit }
	}' "/lib/modules/$1/modules.dep"
}

# l1_add_modules KVER MODULE...: the modules and their dependencies, from the kernel's own
# modules.dep, decompressed (busybox's insmod then needs no xz/zstd), their load order in
# /etc/l1-modules. A module built into the kernel is skipped.
l1_add_modules() {
	local kver=$1 m line
	shift
	local -A seen=()
	local order=()
	# modules.dep lists each module's whole dependency closure, the modules it needs
	# directly first; loading that list backwards loads every dependency before its users.
	_l1_visit() {
		local path=$1 deps d i
		[[ -n ${seen[$path]:-} ]] && return 0
		seen[$path]=1
		deps=$(awk -F': *' -v p="$path" '$1 == p { print $2; exit }' "/lib/modules/$kver/modules.dep")
		read -r -a d <<<"$deps"
		for ((i = ${#d[@]} - 1; i >= 0; i--)); do _l1_visit "${d[i]}"; done
		order+=("$path")
	}
	for m in "$@"; do
		line=$(_moddep "$kver" "$m")
		if [[ -z $line ]]; then
			if grep -Eq "/${m//[-_]/[-_]}\.ko\$" "/lib/modules/$kver/modules.builtin" 2>/dev/null; then
				log "module $m is built into $kver"
				continue
			fi
			die "module $m is not in /lib/modules/$kver/modules.dep"
		fi
		_l1_visit "${line%%:*}"
	done
	local src dst list=()
	for m in "${order[@]}"; do
		src=/lib/modules/$kver/$m
		dst=/lib/modules/$kver/${m%.xz}
		dst=${dst%.zst}
		dst=${dst%.gz}
		mkdir -p "$L1_ROOT$(dirname "$dst")"
		case $m in
		*.xz) xz -dc "$src" >"$L1_ROOT$dst" || die "cannot decompress $src (xz-utils)" ;;
		*.zst) zstd -qdc "$src" >"$L1_ROOT$dst" || die "cannot decompress $src (zstd)" ;;
		*.gz) gzip -dc "$src" >"$L1_ROOT$dst" || die "cannot decompress $src" ;;
		*) cp "$src" "$L1_ROOT$dst" ;;
		esac
		list+=("$dst")
	done
	printf '%s\n' "${list[@]}" >"$L1_ROOT/etc/l1-modules"
	log "L1 modules, in load order: $(printf '%s ' "${list[@]##*/}")"
}

# l1_pack OUT: the staged tree as a gzipped newc cpio, every file owned by root.
l1_pack() {
	(cd "$L1_ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
		gzip -1 >"$1"
	log "L1 initramfs: $1 ($(du -h "$1" | cut -f1))"
}

# ---------------------------------------------------------------- booting L1

# The QEMU command line for L1 (in the array L1_QEMU): TCG with emulated AMD SVM and nested
# paging, so that kvm-amd loads inside. No disk, no network, no display: a serial console.
l1_qemu_cmd() {
	local kernel=$1 initrd=$2 append=$3
	# shellcheck disable=SC2054 # the commas belong to QEMU's option syntax
	L1_QEMU=(qemu-system-x86_64
		-accel "$L1_ACCEL" -cpu "$L1_CPU" -smp "$L1_CPUS" -m "$L1_MEM"
		-kernel "$kernel" -initrd "$initrd" -append "$append"
		-nodefaults -display none -net none -no-reboot)
	# Debian's QEMU finds SeaBIOS by itself; say where it is anyway (linux-guest.md).
	[[ -d /usr/share/seabios ]] && L1_QEMU+=(-L /usr/share/seabios)
	return 0
}

# l1_boot LOG DEADLINE_US: boot L1 (l1_qemu_cmd), stream its console to stdout and LOG,
# stop it at DEADLINE_US (now_us clock). Sets L1_RESULT (the L1-RESULT status, or empty),
# L1_TIMED_OUT (0/1), L1_T_START and L1_T_PAYLOAD and L1_T_END (now_us at QEMU start, at
# the payload's start mark, at the end; L1_T_PAYLOAD empty if never reached).
l1_boot() {
	local logf=$1 deadline=$2 line left qpid fd lfd status
	L1_RESULT='' L1_TIMED_OUT=0 L1_T_PAYLOAD='' L1_T_START=$(now_us)
	exec {lfd}>"$logf"
	# stdin from /dev/null: no TTY in CI, and a TTY must not be put in raw mode.
	exec {fd}< <(exec "${L1_QEMU[@]}" -serial stdio </dev/null 2>&1)
	qpid=$!
	L1_QEMU_PID=$qpid
	local pending="" step
	while :; do
		left=$(((deadline - $(now_us)) / 1000000))
		if ((left <= 0)); then
			L1_TIMED_OUT=1
			[[ -n $pending ]] && printf '%s\n' "${pending%$'\r'}" | tee /dev/fd/"$lfd"
			break
		fi
		# Wait at most 30 s for a line: when L1 is quiet that long, say how long it has
		# run and how long it has left (progress; not in the log).
		step=$((left < 30 ? left : 30))
		if IFS= read -r -t "$step" -u "$fd" line; then
			line=$pending$line pending=''
		else
			status=$?
			if ((status > 128)); then # read timed out: keep what came of the line
				pending+=$line
				((left > step)) && printf 'linux-test: L1 running for %s s; deadline in %s s\n' \
					$((($(now_us) - L1_T_START) / 1000000)) $((left - step))
				continue
			fi
			line=$pending$line pending=''
			[[ -z $line ]] && break # end of output: QEMU exited
		fi
		line=${line%$'\r'}
		printf '%s\n' "$line" >&"$lfd"
		# QEMU lists every EPYC feature TCG lacks, twice; harmless, and only in the log.
		[[ $line == *"TCG doesn't support requested feature"* ]] && continue
		printf '%s\n' "$line"
		# The last L1-RESULT wins: the one /init prints just before powering off.
		if [[ $line =~ L1-RESULT:\ ([0-9]+) ]]; then
			L1_RESULT=${BASH_REMATCH[1]}
		elif [[ -z $L1_T_PAYLOAD && $line == *L1-PAYLOAD-START* ]]; then
			L1_T_PAYLOAD=$(now_us)
		fi
	done
	if ((L1_TIMED_OUT)); then
		warn "L1 still running at the deadline: killing QEMU (pid $qpid)"
		kill -TERM "$qpid" 2>/dev/null || true
		sleep 2
		kill -KILL "$qpid" 2>/dev/null || true
	fi
	exec {fd}<&- {lfd}>&-
	wait "$qpid" 2>/dev/null || true
	L1_QEMU_PID=
	L1_T_END=$(now_us)
}
