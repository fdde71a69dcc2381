#!/bin/sh
# The `--bench` payload of tests/linux/run.sh, run inside L1: `cma-vmm bench linux` with
# the stock L2 kernel and guest-linux's initramfs, the virtio-mem comparison under the
# QEMU that run.sh put into L1, and the report printed between markers so that run.sh can
# take it out of the console log:
#     L1-FILE-BEGIN NAME
#     ...
#     L1-FILE-END NAME
set -u
cd "$SCRATCH_DIR" || exit 1
# QMP of the virtio-mem guest listens on 127.0.0.1.
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up || { echo "bench: no loopback"; exit 1; }
status=0
"$CMA_VMM" bench linux --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --runs "${BENCH_RUNS:-5}" \
	--qemu /usr/bin/qemu-system-x86_64 --qemu-initrd "$L2_INITRD" \
	--json "$SCRATCH_DIR/linux.json" --quiet || status=$?
for f in "$SCRATCH_DIR"/linux*; do
	[ -f "$f" ] || continue
	echo "L1-FILE-BEGIN ${f##*/}"
	cat "$f"
	echo "L1-FILE-END ${f##*/}"
done
exit $status
