#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with seeds taken from the real captures.
#   MTA->milter streams (*.mta.bin)    seed frames, commands, milter_session
#   milter->MTA streams (*.milter.bin) seed frames, responses, mta_session
# Each seed is named <capture-dir>-<file> and truncated to 64 KiB so the corpus stays small.
# Usage: fuzz/seed.sh [CAPTURES_DIR]   (default: milterkit-proto/testdata/captures)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
captures="${1:-$here/../milterkit-proto/testdata/captures}"
corpus="$here/corpus"
cap=65536

if [ ! -d "$captures" ]; then
    echo "seed.sh: no captures at $captures" >&2
    exit 1
fi

seed() { # seed FILE TARGET...
    local src="$1"; shift
    local name
    name="$(basename "$(dirname "$src")")-$(basename "$src")"
    for t in "$@"; do
        mkdir -p "$corpus/$t"
        head -c "$cap" "$src" > "$corpus/$t/$name"
    done
}

n=0
shopt -s nullglob
for f in "$captures"/*/*.mta.bin; do
    seed "$f" frames commands milter_session served_connection
    n=$((n + 1))
done
for f in "$captures"/*/*.milter.bin; do
    seed "$f" frames responses mta_session
    n=$((n + 1))
done

echo "seed.sh: $n captures seeded into $corpus"
for t in frames commands responses milter_session mta_session served_connection; do
    [ -d "$corpus/$t" ] && printf '  %-15s %4d files %s\n' "$t" \
        "$(find "$corpus/$t" -type f | wc -l)" "$(du -sh "$corpus/$t" | cut -f1)"
done
