#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, cargo-fuzz) one after another for SECONDS each (default 60)
# and prints each target's closing libFuzzer line (`#N DONE ... exec/s`). Exits non-zero if
# any target crashed, hung or leaked past libFuzzer's limits; the input that did it is in
# fuzz/artifacts/TARGET/ (replay it with the `replay` binary, see fuzz/harness).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 600 frames dns
#
# The committed seeds (fuzz/corpus/TARGET) are read only; what the fuzzer finds on top of
# them goes to fuzz/artifacts/TARGET/corpus, which is not committed but is reused by the
# next run on the same machine. FUZZ_SANITIZER=address runs under ASan (the default is
# none: the stack is safe Rust, where ASan finds nothing and costs half the speed; panics,
# overflow checks and debug assertions are on either way).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frames api dhcp dns cli)
fi
sanitizer=${FUZZ_SANITIZER:-none}

# cargo-fuzz needs nightly flags (-Z sanitizer, -Z coverage options); the machine has only
# a stable toolchain, which accepts them with this.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

passed=0
failed=0
for target in "${targets[@]}"; do
    mkdir -p "artifacts/$target/corpus"
    # Per run, so that two runs at once (two checkouts' CI) do not write into one log.
    log="artifacts/$target/run-$$.log"
    # -timeout: an input that takes this long is a hang (a finding), not a slow machine.
    if cargo fuzz run --sanitizer "$sanitizer" "$target" \
        "artifacts/$target/corpus" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 >"$log" 2>&1; then
        result=$(grep -aE '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
        echo "$target: ${result:-finished (no DONE line; see $log)}"
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "$target: FAILED (see $log)"
        # What failed and where the input is: the panic, libFuzzer's verdict, the artifact.
        grep -aE "panicked at|^thread '|ERROR: libFuzzer|SUMMARY: libFuzzer|Test unit written to|^error" \
            "$log" | head -n 12 | sed 's/^/    /'
        grep -a -A2 "panicked at" "$log" | sed -n 2p | sed 's/^/    /'
    fi
done
# The plain closing line CI reads: one per target, passed meaning no finding.
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
