#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine with a Rust toolchain.
# It installs what the tests need first (crates come through cargo), then checks formatting,
# lints and every test, including doc tests. Set CI=true to make missing pieces fatal.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: a C milter on libmilter, OpenDKIM; and for the
# interop tests (interop/), a private Postfix, swaks, m4, and Sendmail's run-time libraries.
PACKAGES="gcc libc6-dev libmilter-dev opendkim opendkim-tools"
PACKAGES="$PACKAGES postfix swaks m4 libdb5.3 libldap-2.5-0 liblockfile1 libnsl2 libsasl2-2 libssl3 libwrap0"
PACKAGES="$PACKAGES miltertest"
# dkimpy for Debian's /usr/bin/python3: interop/tests/chain.rs verifies OpenDKIM's signatures
# with it, without DNS (interop/src/opendkim.rs).
PACKAGES="$PACKAGES python3-dkim"
# systemd-socket-activate and systemd-analyze, for the daemon tests (socket activation, units).
PACKAGES="$PACKAGES systemd"
# The rate-limit example's Redis (ratelimit/) and the failover test's balancer: the tests start
# private redis-server and haproxy instances.
PACKAGES="$PACKAGES redis-server haproxy"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

# Sendmail is never installed: sendmail-bin conflicts with postfix (both are the
# mail-transport-agent). Its packages are downloaded and extracted with dpkg -x into
# MILTERKIT_SENDMAIL_ROOT instead; the interop tests run the binary from there.
SENDMAIL_ROOT="${MILTERKIT_SENDMAIL_ROOT:-/var/cache/milterkit/sendmail}"
SENDMAIL_DEBS="${SENDMAIL_ROOT%/*}/debs"
need_sendmail=""
[ -x "$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail" ] && [ -f "$SENDMAIL_ROOT/usr/share/sendmail/cf/m4/cf.m4" ] \
  || need_sendmail=yes

if [ -n "$missing" ] || [ -n "$need_sendmail" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [ -n "$missing" ]; then
      echo "== installing:$missing"
      # "No configuration": Postfix is installed without configuring or starting the system
      # instance; the tests run private ones.
      echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
      apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    if [ -n "$need_sendmail" ]; then
      echo "== extracting sendmail-bin and sendmail-cf into $SENDMAIL_ROOT"
      mkdir -p "$SENDMAIL_DEBS"
      rm -f "$SENDMAIL_DEBS"/sendmail-*.deb
      (cd "$SENDMAIL_DEBS" && apt-get download -qq -o APT::Sandbox::User=root sendmail-bin sendmail-cf)
      rm -rf "$SENDMAIL_ROOT.tmp"
      for deb in "$SENDMAIL_DEBS"/sendmail-bin_*.deb "$SENDMAIL_DEBS"/sendmail-cf_*.deb; do
        dpkg -x "$deb" "$SENDMAIL_ROOT.tmp"
      done
      rm -rf "$SENDMAIL_ROOT"
      mv "$SENDMAIL_ROOT.tmp" "$SENDMAIL_ROOT"
    fi
  else
    echo "warning: apt-get not found; tests that need$missing${need_sendmail:+ sendmail} will skip (or fail under CI=true)" >&2
  fi
fi

echo "== toolchain"
cargo --version
rustc --version

# Lean build artifacts: this script builds the workspace in several feature sets, the published
# packages and the benchmarks, and a CI machine's disk is not large. Incremental caches are for
# edit-compile loops, not one run from a fresh clone (they were half of a full run's target/), and
# line tables keep file:line in panics and backtraces without full debug info. A caller's own
# setting wins.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
echo "== disk: $(df -h . | awk 'NR==2 {print $4 " free of " $2}')"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

# `cargo test --all-targets` builds the criterion benches too and runs each once as a test.

# milterkit without its default features is tokio and tracing only (what a library user who wants
# just `serve` compiles); with every feature on too; and the docs as docs.rs builds them.
echo "== features"
cargo build -p milterkit --no-default-features --locked
if cargo tree -p milterkit --no-default-features -e normal --prefix none --locked \
  | grep -E '^(clap|nix|listenfd|sd-notify|tracing-subscriber|prometheus-client) '; then
  echo "error: milterkit --no-default-features depends on the crates above" >&2
  exit 1
fi
cargo clippy -p milterkit --no-default-features --all-targets --locked -- -D warnings
# milterkit alone with its default features, as a user's Cargo.toml gets it (the workspace's runs
# above unify in the features other members turn on, such as the CLI's `chain`).
cargo clippy -p milterkit --all-targets --locked -- -D warnings
# Logging setup without the daemon: tracing-subscriber, no clap or systemd crates.
cargo build -p milterkit --no-default-features --features logging --locked
if cargo tree -p milterkit --no-default-features --features logging -e normal --prefix none --locked \
  | grep -E '^(clap|nix|listenfd|sd-notify|prometheus-client) '; then
  echo "error: milterkit with only the logging feature depends on the crates above" >&2
  exit 1
fi
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --locked

# The published crates as crates.io would receive them: each is built from its own package, the
# ones depending on milterkit-proto and milterkit against the packages made here (cargo's temporary
# local registry), so nothing has to be published first. Local edits are packaged too
# (--allow-dirty); nothing is uploaded. interop and bench/milter are publish = false.
echo "== cargo package"
# Verifying milterkit against the milterkit-proto packaged in the same run goes through a local
# registry. Cargo takes registry crates as immutable: it extracts them into CARGO_HOME once per
# name and version, and never rebuilds them for changed sources. An extraction or a build left by
# an earlier run of the same version would stand in for today's sources; both go first.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
target_dir="$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)"
for c in milterkit-proto milterkit-macros milterkit milterkit-cli; do
  rm -rf "$cargo_home"/registry/src/*/"$c"-[0-9]* "$cargo_home"/registry/cache/*/"$c"-[0-9]*.crate \
    "$target_dir"/debug/.fingerprint/"$c"-[0-9a-f]*
done
cargo package -p milterkit-proto -p milterkit-macros -p milterkit -p milterkit-cli --locked --allow-dirty

# The protocol core's tests run from its unpacked package, as a user of the published crate would
# run them: its captures travel with it (testdata/captures).
echo "== milterkit-proto's tests from its package"
# Always the same folder (outside the workspace), with fresh times (tar -m), so that cargo
# rebuilds what changed.
unpacked="${TMPDIR:-/tmp}/milterkit-unpacked-package"
rm -rf "$unpacked" && mkdir -p "$unpacked"
tar xzmf "$target_dir"/package/milterkit-proto-*.crate -C "$unpacked"
(cd "$unpacked"/milterkit-proto-* && CARGO_TARGET_DIR="$target_dir/unpacked" cargo test --locked -q)
# Its own target folder holds a second build of the dev-dependencies (criterion, proptest): gone
# before the benchmarks build theirs.
rm -rf "$target_dir/unpacked" "$unpacked"

# The benchmark suite's smoke run (bench/run.sh; BENCHMARKS.md has the full run's table): every
# contestant through every workload with tiny settings; fails if any row is missing.
echo "== bench smoke"
bash bench/run.sh --smoke
