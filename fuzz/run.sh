#!/usr/bin/env bash
# Run every fuzz target for a bounded time, one after the other.
#
#   fuzz/run.sh [seconds-per-target] [target...]     (default: 60 s, every target)
#
# Needs the nightly toolchain; installs cargo-fuzz if it is missing. Each target starts
# from its committed seeds (fuzz/corpus/<target>/seed-*) and the regression inputs
# (fuzz/regressions/<target>/); what it learns stays in fuzz/corpus/<target>/ (not
# committed). A crash stops that target and leaves its input in fuzz/artifacts/<target>/:
# minimise it with `cargo +nightly fuzz tmin <target> <file>` and copy the result into
# fuzz/regressions/<target>/, where stable `cargo test` replays it.
set -euo pipefail

seconds="${1:-60}"
shift || true
cd "$(dirname "$0")"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(boot_info agent_messages config agent_queue api_request)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

failed=()
for target in "${targets[@]}"; do
    echo "=== $target: ${seconds}s"
    mkdir -p "corpus/$target" "regressions/$target"
    # -timeout: one input running longer than 10 s is a hang, and a finding.
    if ! cargo +nightly fuzz run "$target" "corpus/$target" "regressions/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "no crashes in: ${targets[*]}"
