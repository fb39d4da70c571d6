#!/usr/bin/env bash
# The benchmark suite (issue 7): milterkit against libmilter, a no-library "ceiling" responder
# and, when it installs, pymilter, all serving the same milter (continue everywhere, add
# "X-Bench: 1" at end of message).
#
#   bash bench/run.sh           full run (about 5 minutes plus the build): writes bench/results.json and the
#                               table in BENCHMARKS.md
#   bash bench/run.sh --smoke   tiny settings (well under a minute once built): checks that every
#                               row is produced, exits non-zero if one is missing; writes nothing
#                               into the checkout
#
# It installs what it needs with apt-get when missing (gcc, libmilter-dev, valgrind, python3,
# and optionally python3-milter), builds in release mode, then runs bench/bench.py.
set -euo pipefail
# Cargo's target directory: CARGO_TARGET_DIR if set (a relative one from where this was started,
# as cargo takes it), else target/ in the checkout. Exported absolute, for bench/bench.py.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  CARGO_TARGET_DIR="$(realpath -m -- "$CARGO_TARGET_DIR")"
  export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"

smoke=""
case "${1:-}" in
  "") ;;
  --smoke) smoke=--smoke ;;
  *) echo "usage: bash bench/run.sh [--smoke]" >&2; exit 2 ;;
esac

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=""
for p in gcc libc6-dev libmilter-dev valgrind python3; do
  installed "$p" || missing="$missing $p"
done
if [ -n "$missing" ] || ! installed python3-milter; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [ -n "$missing" ]; then
      echo "== bench: installing:$missing"
      apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    # Optional contestant: pymilter (runs on libmilter). Left out if it does not install.
    installed python3-milter || apt-get install -y -qq --no-install-recommends python3-milter >/dev/null \
      || echo "== bench: python3-milter did not install; pymilter is left out"
  elif [ -n "$missing" ]; then
    echo "error: missing$missing and no apt-get" >&2
    exit 1
  fi
fi

# 10,000 idle connections need more than the usual 1,024 descriptors, in the milters and in the
# opener; children inherit this.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== bench: building (release)"
cargo build --release --locked -q -p milterkit-cli --bin milterkit
cargo build --release --locked -q -p milterkit-bench
cargo build --release --locked -q --manifest-path bench/proto-ir/Cargo.toml \
  --target-dir "$target/bench-proto-ir"
mkdir -p "$target/bench"
gcc -O2 -Wall -Wextra -o "$target/bench/libmilter_bench" bench/c/libmilter_bench.c -lmilter -pthread
gcc -O2 -Wall -Wextra -o "$target/bench/ceiling" bench/c/ceiling.c

if [ -n "$smoke" ]; then
  # bench/proto-ir is a workspace of its own: the workspace's fmt and clippy do not see it.
  cargo fmt --manifest-path bench/proto-ir/Cargo.toml -- --check
  cargo clippy --release --locked -q --manifest-path bench/proto-ir/Cargo.toml \
    --target-dir "$target/bench-proto-ir" -- -D warnings
fi

python=python3
[ -x /usr/bin/python3 ] && python=/usr/bin/python3   # Debian's: the one python3-milter is for
"$python" bench/bench.py $smoke
# The whole-message layer against the raw API (milterkit::filter), same machine, same load tool.
"$python" bench/filter.py $smoke
# The milter's cost to real Postfix (root, Postfix and libmilter-dev from scripts/test.sh).
if [ -n "$smoke" ]; then
  cargo run --release --locked -q -p interop --bin postfix-bench -- --messages 40 --rounds 1
else
  cargo run --release --locked -q -p interop --bin postfix-bench -- --write
fi
# milterkit chain (issue #20): 1, 2, 4 children behind the chain against the same listed directly
# in Postfix, then the chain's own CPU per message without an MTA.
if [ -n "$smoke" ]; then
  cargo run --release --locked -q -p interop --bin postfix-bench -- --chain --messages 40 --rounds 1
  bash bench/chain.sh 200 1 1
else
  cargo run --release --locked -q -p interop --bin postfix-bench -- --chain --write
  bash bench/chain.sh --write
fi
