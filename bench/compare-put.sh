#!/usr/bin/env bash
# Put throughput, Keel vs etcd (Debian's etcd-server), single member each, same machine, same run,
# same client (`keel bench put`). Usage: bench/compare-put.sh [clients] [conns] [total]
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-100}; conns=${2:-10}; total=${3:-50000}
cargo build --release --bin keel >/dev/null
keel=target/release/keel
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

wait_ready() { for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints="$1" put ready 1 >/dev/null 2>&1 && return; sleep 0.1; done; echo "not ready: $1"; exit 1; }

$keel --data-dir "$work/keel" --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster default=http://127.0.0.1:23800 2>"$work/keel.log" &
etcd --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:23791 --advertise-client-urls http://127.0.0.1:23791 \
  --listen-peer-urls http://127.0.0.1:23801 --initial-advertise-peer-urls http://127.0.0.1:23801 \
  --initial-cluster default=http://127.0.0.1:23801 2>"$work/etcd.log" &
wait_ready 127.0.0.1:23790
wait_ready 127.0.0.1:23791

for round in 1 2; do
  for target in keel:23790 etcd:23791; do
    name=${target%%:*}; port=${target##*:}
    printf '%s (round %s): ' "$name" "$round"
    $keel bench put --endpoints=127.0.0.1:$port --clients=$clients --conns=$conns --total=$total --val-size=256 --json
  done
done
