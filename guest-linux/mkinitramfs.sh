#!/bin/sh
# Build the L2 initramfs for a Linux guest of cma-vmm:
#   busybox (static) with its applets as symlinks, /init (guest-linux/init.sh), the agent
#   module and the stock modules it needs, resolved from the kernel's modules.dep:
#     /etc/modules.agent       virtio, virtio_ring, virtio_mmio, cma_agent (load order)
#     /etc/modules.virtio-mem  virtio_pci and virtio_mem, for `cma-vmm bench linux`'s
#                              virtio-mem comparison under QEMU
#
# usage: guest-linux/mkinitramfs.sh --kver KVER --module PATH/cma_agent.ko --out FILE.cpio.gz
#        [--busybox PATH] [--moddir DIR]
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
KVER=
MODULE=
OUT=
BUSYBOX=/bin/busybox
MODROOT=

die() {
	echo "mkinitramfs: $*" >&2
	exit 1
}

usage() {
	sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
	case $1 in
	--kver) KVER=${2:-} && shift ;;
	--module) MODULE=${2:-} && shift ;;
	--out) OUT=${2:-} && shift ;;
	--busybox) BUSYBOX=${2:-} && shift ;;
	--moddir) MODROOT=${2:-} && shift ;;
	-h | --help) usage && exit 0 ;;
	*) die "unknown option '$1' (see --help)" ;;
	esac
	shift
done
[ -n "$KVER" ] || die "--kver KVER is required (e.g. $(uname -r))"
[ -n "$MODULE" ] || die "--module PATH (cma_agent.ko, from make -C guest-linux) is required"
[ -n "$OUT" ] || die "--out FILE.cpio.gz is required"
[ -n "$MODROOT" ] || MODROOT=/lib/modules/$KVER
[ -f "$MODULE" ] || die "no module $MODULE (build it: make -C guest-linux KDIR=/lib/modules/$KVER/build)"
[ -f "$MODROOT/modules.dep" ] || die "no $MODROOT/modules.dep: is the kernel $KVER installed (linux-image-$KVER)?"
[ -x "$BUSYBOX" ] || die "no $BUSYBOX: install busybox-static"
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
	die "$BUSYBOX is dynamically linked; the initramfs has no libraries: install busybox-static"
fi
for tool in cpio gzip; do
	command -v $tool >/dev/null 2>&1 || die "$tool is missing (apt-get install $tool)"
done
vermagic=$(modinfo -F vermagic "$MODULE" 2>/dev/null | cut -d' ' -f1 || true)
[ -z "$vermagic" ] || [ "$vermagic" = "$KVER" ] ||
	die "$MODULE was built for $vermagic, not $KVER (make -C guest-linux clean all KDIR=/lib/modules/$KVER/build)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT/bin" "$ROOT/sbin" "$ROOT/etc" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" \
	"$ROOT/run" "$ROOT/tmp" "$ROOT/root" "$ROOT/lib/modules/$KVER"

cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$ROOT/bin/$applet"
done
cp "$HERE/init.sh" "$ROOT/init"
chmod 755 "$ROOT/init"

dep_line() {
	grep -E "^(.*/)?$1\.ko(\.[gx]z|\.zst)?:" "$MODROOT/modules.dep" | head -n 1
}

# deps NAME: the modules.dep paths NAME needs, dependencies first, NAME last (a subshell:
# the recursion keeps its own variables).
deps() (
	line=$(dep_line "$1")
	for d in ${line#*:}; do
		n=${d##*/}
		deps "${n%%.ko*}"
	done
	echo "${line%%:*}"
)

# install_list LIST NAME...: copy the modules (uncompressed: busybox insmod may not
# know the compression) and write /etc/modules.LIST, each module once, in load order.
install_list() {
	list=$1
	shift
	: >"$ROOT/etc/modules.$list"
	for name in "$@"; do
		[ -n "$(dep_line "$name")" ] || die "module $name is not in $MODROOT/modules.dep"
		for path in $(deps "$name"); do
			ko=${path%.gz}
			ko=${ko%.xz}
			ko=${ko%.zst}
			grep -qx "$ko" "$ROOT/etc/modules.$list" && continue
			mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$ko")"
			case $path in
			*.gz) gzip -dc "$MODROOT/$path" >"$ROOT/lib/modules/$KVER/$ko" ;;
			*.xz) xz -dc "$MODROOT/$path" >"$ROOT/lib/modules/$KVER/$ko" ;;
			*.zst) zstd -qdc "$MODROOT/$path" >"$ROOT/lib/modules/$KVER/$ko" ;;
			*) cp "$MODROOT/$path" "$ROOT/lib/modules/$KVER/$ko" ;;
			esac
			echo "$ko" >>"$ROOT/etc/modules.$list"
		done
	done
}

install_list agent virtio virtio_ring virtio_mmio
cp "$MODULE" "$ROOT/lib/modules/$KVER/cma_agent.ko"
# Debug information is most of the module's size, and L2 unpacks it under emulation.
if command -v strip >/dev/null 2>&1; then
	strip --strip-debug "$ROOT/lib/modules/$KVER/cma_agent.ko"
fi
echo cma_agent.ko >>"$ROOT/etc/modules.agent"
install_list virtio-mem virtio virtio_ring virtio_pci virtio_mem

mkdir -p "$(dirname "$OUT")"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
	gzip -6 >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "mkinitramfs: $OUT: $(du -k "$OUT" | cut -f1) KiB; modules: $(tr '\n' ' ' <"$ROOT/etc/modules.agent")"
