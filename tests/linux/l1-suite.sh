#!/bin/sh
# The --suite payload inside L1 (busybox sh): run each KVM integration test executable
# listed in /etc/l1-suite ("NAME PATH" lines, at the same absolute paths as on the host, so
# that the paths compiled into them, such as the VMM under test, hold), from the directory
# cargo would run them in, and print one machine-readable line per executable:
#     L1-SUITE: NAME passed=N failed=N ignored=N status=S secs=S.SS
# Exit status: 0 if every executable exited 0.

# Wall time from L1's clock (TCG's guest clock follows the host's).
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# shellcheck source=/dev/null # written by run.sh: SUITE_CWD, SUITE_ARGS
. /etc/l1.conf
cd "$SUITE_CWD" || exit 1
overall=0
while read -r name exe; do
	echo "L1-SUITE-START: $name $exe"
	t0=$(uptime_s)
	# Keep the test's own output on the console (a failure explains itself) and a copy
	# for the counts; the status comes back through a file (no pipefail in every shell).
	# shellcheck disable=SC2086 # SUITE_ARGS: words for the test harness
	{
		"$exe" $SUITE_ARGS 2>&1
		echo $? >/tmp/suite-status
	} | tee "/tmp/suite-$name.log"
	t1=$(uptime_s)
	status=$(cat /tmp/suite-status)
	# "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ..."
	counts=$(awk '/^test result:/ {
		for (i = 1; i <= NF; i++) { v = $(i - 1) + 0
			if ($i ~ /^passed/) p += v; if ($i ~ /^failed/) f += v; if ($i ~ /^ignored/) g += v }
	} END { printf "passed=%d failed=%d ignored=%d", p, f, g }' "/tmp/suite-$name.log")
	echo "L1-SUITE: $name $counts status=$status secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
	[ "$status" = 0 ] || overall=1
done </etc/l1-suite
exit $overall
