#!/usr/bin/env bash
# Keel vs etcd (Debian's etcd-server), single member each, same machine, same run, same client
# (`keel bench`), two rounds alternating. Usage: bench/compare.sh <workload> [keel bench options]
#   bench/compare.sh put --clients=100 --conns=10 --total=30000 --val-size=256
#   bench/compare.sh lease-keepalive --clients=100 --conns=10 --total=100000
#   bench/compare.sh watch-latency --streams=10 --watchers-per-stream=100 --put-total=500
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,7p "$0"; exit 2; }
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
echo "etcd: $(etcd --version | head -1)"

for round in 1 2; do
  for target in keel:23790 etcd:23791; do
    name=${target%%:*}; port=${target##*:}
    printf '%s (round %s): ' "$name" "$round"
    $keel bench "$@" --endpoints=127.0.0.1:$port --json
  done
done
