#!/usr/bin/env bash
# Snapshot save and restore of 1,000,000 keys (256-byte values), Keel beside etcd 3.4 in one run:
# each loaded through `keel bench put`, then `etcdctl snapshot save` from each, `etcdctl snapshot
# status`, `keel snapshot restore` of Keel's file and `etcdctl snapshot restore` of etcd's. Prints
# one line per step with its wall time and the file's size.
#   bench/snapshot.sh            # 1,000,000 keys
#   KEYS=100000 bench/snapshot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin keel >/dev/null
keel=$PWD/target/release/keel
keys=${KEYS:-1000000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
export ETCDCTL_API=3

start() { # <binary> <name> <client port> <peer port>
  $1 --name "$2" --data-dir "$work/$2" --quota-backend-bytes=8589934592 \
    --listen-client-urls http://127.0.0.1:$3 --advertise-client-urls http://127.0.0.1:$3 \
    --listen-peer-urls http://127.0.0.1:$4 --initial-advertise-peer-urls http://127.0.0.1:$4 \
    --initial-cluster "$2=http://127.0.0.1:$4" 2>>"$work/$2.log" &
  for _ in $(seq 300); do etcdctl --endpoints=127.0.0.1:$3 endpoint health >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$2 did not start" >&2; exit 1
}
timed() { # <label> <command...>: the command's wall time in seconds
  local t0 t1; t0=$(date +%s.%N); "${@:2}" >/dev/null 2>&1; t1=$(date +%s.%N)
  printf '%-44s %7.2f s\n' "$1" "$(echo "$t1 - $t0" | bc)"
}

start "$keel" keel 25790 25791
start etcd etcd 26790 26791
for sys in keel:25790 etcd:26790; do
  timed "${sys%%:*}: load $keys keys" "$keel" bench put --endpoints=127.0.0.1:${sys##*:} \
    --clients 64 --conns 8 --total "$keys" --key-space-size "$keys" --sequential-keys --val-size 256
done
for sys in keel:25790 etcd:26790; do
  name=${sys%%:*}
  timed "$name: etcdctl snapshot save" etcdctl --endpoints=127.0.0.1:${sys##*:} snapshot save "$work/$name.db"
  printf '%-44s %s\n' "$name: snapshot file" "$(du -h "$work/$name.db" | cut -f1)"
  timed "$name: etcdctl snapshot status" etcdctl snapshot status "$work/$name.db"
  echo "  $(etcdctl snapshot status -w json "$work/$name.db")"
done
timed "keel snapshot status of keel's file" "$keel" snapshot status "$work/keel.db"
timed "keel snapshot restore of keel's file" "$keel" snapshot restore "$work/keel.db" --name r \
  --data-dir "$work/keel-restored" --initial-cluster r=http://127.0.0.1:27791 --initial-advertise-peer-urls http://127.0.0.1:27791
timed "etcdctl snapshot restore of etcd's file" etcdctl snapshot restore "$work/etcd.db" --name r \
  --data-dir "$work/etcd-restored" --initial-cluster r=http://127.0.0.1:27791 --initial-advertise-peer-urls http://127.0.0.1:27791
timed "etcdctl snapshot restore of keel's file" etcdctl snapshot restore "$work/keel.db" --name r \
  --data-dir "$work/etcd-from-keel" --initial-cluster r=http://127.0.0.1:27791 --initial-advertise-peer-urls http://127.0.0.1:27791
timed "keel snapshot restore of etcd's file" "$keel" snapshot restore "$work/etcd.db" --name r \
  --data-dir "$work/keel-from-etcd" --initial-cluster r=http://127.0.0.1:27791 --initial-advertise-peer-urls http://127.0.0.1:27791
