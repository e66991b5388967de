#!/usr/bin/env bash
# Keel vs etcd (Debian's etcd-server), single member each, same machine, same run, same client
# (`keel bench`), two rounds alternating. Usage: [MEMBERS=3] bench/compare.sh <workload> [keel bench options]
# MEMBERS (default 1) members per cluster, all on this machine; clients talk to every member.
#   bench/compare.sh put --clients=100 --conns=10 --total=30000 --val-size=256
#   bench/compare.sh lease-keepalive --clients=100 --conns=10 --total=100000
#   bench/compare.sh watch-latency --streams=10 --watchers-per-stream=100 --put-total=500
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,7p "$0"; exit 2; }
cargo build --release --bin keel >/dev/null
keel=target/release/keel
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

wait_ready() { for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints="$1" put ready 1 >/dev/null 2>&1 && return; sleep 0.1; done; echo "not ready: $1"; exit 1; }

members=${MEMBERS:-1}
# start <binary> <name> <client port base> <peer port base>: a cluster of $members members.
start() {
  local bin=$1 name=$2 cbase=$3 pbase=$4 cluster="" i
  for ((i = 0; i < members; i++)); do cluster+="${cluster:+,}$name$i=http://127.0.0.1:$((pbase + i))"; done
  for ((i = 0; i < members; i++)); do
    $bin --name "$name$i" --data-dir "$work/$name$i" \
      --listen-client-urls http://127.0.0.1:$((cbase + i)) --advertise-client-urls http://127.0.0.1:$((cbase + i)) \
      --listen-peer-urls http://127.0.0.1:$((pbase + i)) --initial-advertise-peer-urls http://127.0.0.1:$((pbase + i)) \
      --initial-cluster "$cluster" 2>"$work/$name$i.log" &
  done
}
endpoints() { local i out=""; for ((i = 0; i < members; i++)); do out+="${out:+,}127.0.0.1:$(($1 + i))"; done; echo "$out"; }
start "$keel" keel 23790 23890
start etcd etcd 24790 24890
wait_ready "$(endpoints 23790)"
wait_ready "$(endpoints 24790)"
echo "etcd: $(etcd --version | head -1)"

for round in 1 2; do
  for target in keel:23790 etcd:24790; do
    name=${target%%:*}; port=${target##*:}
    printf '%s, %s member(s) (round %s): ' "$name" "$members" "$round"
    $keel bench "$@" --endpoints="$(endpoints "$port")" --json
  done
done
