#!/usr/bin/env bash
# A flamegraph of a single Keel member under a `keel bench` workload at saturation:
#   bench/flamegraph.sh put --clients=100 --conns=10 --total=200000 --val-size=256
# Writes bench/results/flamegraphs/<workload>.svg and <workload>.top.txt (self time by function). Needs perf and inferno (cargo install inferno).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin keel >/dev/null
keel=$PWD/target/release/keel
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
$keel --name fg --data-dir "$work/fg" --listen-client-urls http://127.0.0.1:26379 \
  --advertise-client-urls http://127.0.0.1:26379 --listen-peer-urls http://127.0.0.1:26380 \
  --initial-advertise-peer-urls http://127.0.0.1:26380 --initial-cluster fg=http://127.0.0.1:26380 2>"$work/log" &
pid=$!
for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:26379 put ready 1 >/dev/null 2>&1 && break; sleep 0.1; done
$keel bench "$@" --endpoints=127.0.0.1:26379 &
bench=$!
sleep 2 # past any prefill and connection set-up
perf record -F 499 -g --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep 8 2>/dev/null
wait $bench
mkdir -p bench/results/flamegraphs
out=bench/results/flamegraphs/$1.svg
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/folded"
inferno-flamegraph --title "keel: $*" <"$work/folded" >"$out"
# The functions with the most samples on top of the stack (self time).
awk '{n = $NF; $NF = ""; k = split($0, f, ";"); self[f[k]] += n; total += n}
  END {for (s in self) printf "%6.2f%% %s\n", 100 * self[s] / total, s}' "$work/folded" |
  sort -rn | head -25 >"${out%.svg}.top.txt"
echo "wrote $out" >&2
