#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine with a Rust toolchain.
# It installs what the tests need first (crates come through cargo), then checks formatting,
# lints and every test, including doc tests. Set CI=true to make missing pieces fatal.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: a C milter on libmilter, OpenDKIM.
PACKAGES="gcc libc6-dev libmilter-dev opendkim opendkim-tools"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "== installing:$missing"
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing
  else
    echo "warning: apt-get not found; tests that need$missing will skip (or fail under CI=true)" >&2
  fi
fi

echo "== toolchain"
cargo --version
rustc --version

# The golden tests read the real captures in ../shared/fixtures (beside the checkout).
if [ -z "${MILTERKIT_FIXTURES:-}" ] && [ ! -d ../shared/fixtures/captures ]; then
  echo "error: ../shared/fixtures/captures not found (set MILTERKIT_FIXTURES to the captures folder)" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

echo "== benches compile"
cargo bench --workspace --no-run --locked >/dev/null
