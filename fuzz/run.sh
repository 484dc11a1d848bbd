#!/usr/bin/env bash
# Runs fuzz targets for a while each: `fuzz/run.sh SECONDS [TARGET...]` (all targets by
# default), one after another, never two at once. Used by `make fuzz`; long runs are the
# same command with more seconds. Installs cargo-fuzz and the nightly toolchain when they
# are missing. Each run's final statistics (inputs run, inputs per second) are appended
# to fuzz/target/fuzz-log.txt; crash inputs land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(client_event path config token http_request ws_handshake)
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# No sanitizer: ChitChat forbids unsafe code, so AddressSanitizer would mostly slow the
# runs down; debug assertions (-a) keep integer overflow checks on.
flags=(-s none -a)
cargo +nightly fuzz build "${flags[@]}"

dict_for() {
    case "$1" in
        http_request | ws_handshake) echo fuzz/dicts/http.dict ;;
        *) echo fuzz/dicts/json.dict ;;
    esac
}

# http_request inputs must reach past the head's caps (8 KiB request line, 32 KiB head).
max_len_for() {
    case "$1" in
        http_request) echo -max_len=40000 ;;
    esac
}

failed=()
mkdir -p fuzz/target
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    echo "== $target: $seconds s"
    log="fuzz/target/$target.last.log"
    started=$(date +%s)
    set +e
    nice -n 19 cargo +nightly fuzz run "${flags[@]}" "$target" \
        "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 \
        -dict="$(dict_for "$target")" $(max_len_for "$target") >"$log" 2>&1
    status=$?
    set -e
    grep -E '(DONE|panicked|SUMMARY|Test unit written|after [0-9]+ inputs)' "$log" || true
    ended=$(date +%s)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    echo "$(date -u +%FT%TZ) $target seconds=$((ended - started)) execs=${execs:-?} execs_per_s=${rate:-?} exit=$status" |
        tee -a fuzz/target/fuzz-log.txt
    if [ "$status" -ne 0 ]; then
        echo "fuzz target $target failed: see $log and fuzz/artifacts/$target/" >&2
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "findings in: ${failed[*]}" >&2
    exit 1
fi
