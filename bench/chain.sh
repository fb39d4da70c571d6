#!/usr/bin/env bash
# The chain's cost per child without an MTA (issue #20): `milterkit bench` drives
# `milterkit chain` (one thread) in front of 1, 2 and 4 benchmark milters (bench_milter, one
# thread each: continue at every stage, X-Bench at end of message), and, for comparison, one
# benchmark milter directly. Load shaped like an MTA's: each connection waits for each reply.
# Reports messages per second (median of the rounds) and the CPU the chain process spent per
# message, from /proc (user + system), which is what each child adds to the chain.
#
# Usage: bash bench/chain.sh [--write] [MESSAGES] [ROUNDS] [CONNECTIONS]   (defaults 5000, 3, 1);
# --write puts the table into BENCHMARKS.md (between the chain-sh markers).
set -euo pipefail
cd "$(dirname "$0")/.."
write=""
if [ "${1:-}" = "--write" ]; then write=yes; shift; fi
messages=${1:-5000}
rounds=${2:-3}
connections=${3:-1}
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -q -p milterkit-cli -p milterkit-bench
bin="$target/release"
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}
# user + system CPU of a process, in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

children=()
for i in 1 2 3 4; do
  port=$(free_port)
  "$bin/bench_milter" --current-thread "inet:$port@127.0.0.1" &
  pids+=($!)
  children+=("$port")
  wait_port "$port"
done

# run SPEC PID: messages per second, and CPU microseconds per message of process PID.
run() {
  local before after out rate
  before=$(ticks "$2")
  out=$("$bin/milterkit" bench "$1" --connections "$connections" --messages "$messages" --json)
  after=$(ticks "$2")
  rate=$(python3 -c 'import json,sys; print(round(json.load(sys.stdin)["messages_per_second"]))' <<<"$out")
  echo "$rate $(( (after - before) * 1000000 / hz / messages ))"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A rates cpus
for round in $(seq "$rounds"); do
  read -r r c < <(run "inet:${children[0]}@127.0.0.1" "${pids[0]}")
  rates[direct]+="$r "; cpus[direct]+="$c "
  echo "round $round: one child directly: $r msg/s" >&2
  for n in 1 2 4; do
    config="$dir/chain-$n.toml"
    : >"$config"
    for i in $(seq 0 $((n - 1))); do
      printf '[[milter]]\nname = "c%s"\nsocket = "inet:%s@127.0.0.1"\n' "$i" "${children[$i]}" >>"$config"
    done
    port=$(free_port)
    "$bin/milterkit" chain --config "$config" --socket "inet:$port@127.0.0.1" --threads 1 \
      --log warn 2>"$dir/chain-$n.log" &
    chain=$!
    wait_port "$port"
    read -r r c < <(run "inet:$port@127.0.0.1" "$chain")
    kill "$chain"; wait "$chain" 2>/dev/null || true
    rates[$n]+="$r "; cpus[$n]+="$c "
    echo "round $round: chain of $n: $r msg/s, $c µs CPU per message in the chain" >&2
  done
done

table() {
  echo "Run with \`bash bench/chain.sh $messages $rounds $connections\`: $connections connection(s), $messages messages of 1 KiB a run, $rounds rounds; medians (runs)."
  echo
  echo "| milter | messages per second | vs one child directly | chain CPU per message (µs) |"
  echo "|---|---:|---:|---:|"
  direct=$(tr ' ' '\n' <<<"${rates[direct]}" | grep . | median)
  echo "| one benchmark milter, directly | $direct (${rates[direct]% }) | 1.00× | – |"
  for n in 1 2 4; do
    r=$(tr ' ' '\n' <<<"${rates[$n]}" | grep . | median)
    c=$(tr ' ' '\n' <<<"${cpus[$n]}" | grep . | median)
    ratio=$(python3 -c "print(f'{$r / $direct:.2f}')")
    echo "| chain of $n | $r (${rates[$n]% }) | ${ratio}× | $c (${cpus[$n]% }) |"
  done
}

table
if [ -n "$write" ]; then
  table | python3 -c '
import sys
table = sys.stdin.read()
path = "BENCHMARKS.md"
doc = open(path).read()
begin, end = "<!-- chain-sh:begin -->", "<!-- chain-sh:end -->"
a, b = doc.index(begin), doc.index(end)
open(path, "w").write(doc[:a] + begin + "\n" + table + doc[b:])
'
fi
