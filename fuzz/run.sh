#!/usr/bin/env bash
# Runs every fuzz target for SECONDS_PER_TARGET seconds (default 120), one after another.
# The corpus of each target is fuzz/corpus/<target>/ (libFuzzer adds new inputs there);
# crashing inputs go to fuzz/artifacts/<target>/; full logs to fuzz-logs/<target>.log in the
# target directory (CARGO_TARGET_DIR if set, a relative one from where this was started as cargo
# takes it; else fuzz/target).
# Prints, per target, the executions, the wall time and whether a crash was found.
# Exits 1 if any target crashed.
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET] [extra libFuzzer flags...]
#   TARGETS="frames commands" fuzz/run.sh 60     # only some targets
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
secs="${1:-120}"
shift || true
case "$secs" in ''|*[!0-9]*) echo "run.sh: SECONDS_PER_TARGET must be a number, got '$secs'" >&2; exit 2 ;; esac

# Absolute, so that it means the same after the cd below.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    CARGO_TARGET_DIR="$(realpath -m -- "$CARGO_TARGET_DIR")"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
targets="${TARGETS:-frames commands responses milter_session mta_session served_connection}"
logs="$CARGO_TARGET_DIR/fuzz-logs"
mkdir -p "$logs"
cd "$here"

echo "run.sh: building fuzz targets (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
if ! cargo +nightly fuzz build --fuzz-dir "$here" >"$logs/build.log" 2>&1; then
    cat "$logs/build.log" >&2
    echo "run.sh: build failed" >&2
    exit 2
fi

summary=()
crashed=0
for t in $targets; do
    mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
    before="$(find "$here/corpus/$t" -type f | wc -l)"
    artifacts_before="$(find "$here/artifacts/$t" -type f | sort)"
    log="$logs/$t.log"
    echo "run.sh: fuzzing $t for ${secs}s (log: $log)"
    start=$SECONDS
    cargo +nightly fuzz run --fuzz-dir "$here" "$t" "$here/corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 "$@" >"$log" 2>&1
    rc=$?
    took=$((SECONDS - start))
    after="$(find "$here/corpus/$t" -type f | wc -l)"
    execs="$(grep -aE '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 | sed -E 's/^#([0-9]+).*/\1/')"
    if [ -z "$execs" ]; then
        execs="$(grep -a 'stat::number_of_executed_units:' "$log" | tail -n1 | awk '{print $2}')"
    fi
    new_artifacts="$(comm -13 <(printf '%s\n' "$artifacts_before") \
        <(find "$here/artifacts/$t" -type f | sort) | sed '/^$/d')"
    if [ "$rc" -ne 0 ] || [ -n "$new_artifacts" ]; then
        crashed=1
        what="CRASH (exit $rc): ${new_artifacts:-see log}"
        grep -aE "panicked at|ERROR: libFuzzer|SUMMARY:" "$log" | head -n 5 | sed 's/^/    /'
    else
        what="no crash"
    fi
    summary+=("$(printf '%-15s execs=%-11s time=%4ss corpus=%s->%s  %s' \
        "$t" "${execs:-?}" "$took" "$before" "$after" "$what")")
done

echo
echo "run.sh: summary (${secs}s per target)"
printf '  %s\n' "${summary[@]}"
exit "$crashed"
