#!/usr/bin/env bash
# CPU per request of a cluster's members, with the client's as the yardstick. On a small shared VM
# throughput moves +-15% between identical runs; the members' CPU time divided by the client's CPU
# time (the same client binary doing the same requests) moves far less, so two builds compare by
# that ratio over alternating rounds:
#   bench/cpu.sh A_BINARY B_BINARY [rounds] -- <keel bench args>
#   bench/cpu.sh /tmp/keel.before target/release/keel 4 -- put --clients=1000 --conns=100 --total=150000 --val-size=256
# Each round starts a fresh 3-member cluster (MEMBERS to change) of A, then of B, runs the
# workload with target/release/keel's bench (CLIENT to change) and prints req/s, the client's
# CPU seconds, the members' CPU seconds and their ratio. Either binary may be `etcd`.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=4
shift 2
if [ "$1" != "--" ]; then rounds=$1; shift; fi
shift
members=${MEMBERS:-3}
client=${CLIENT:-$PWD/target/release/keel}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, in clock ticks
hz=$(getconf CLK_TCK)

# one <binary> <bench args...>: a fresh cluster of <binary>, one bench run, one line of figures.
one() {
  local bin=$1 cluster="" eps="" pids=() i
  shift
  for ((i = 0; i < members; i++)); do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((27800 + i))"
    eps+="${eps:+,}127.0.0.1:$((27700 + i))"
  done
  for ((i = 0; i < members; i++)); do
    $bin --name "m$i" --data-dir "$work/m$i" \
      --listen-client-urls http://127.0.0.1:$((27700 + i)) --advertise-client-urls http://127.0.0.1:$((27700 + i)) \
      --listen-peer-urls http://127.0.0.1:$((27800 + i)) --initial-advertise-peer-urls http://127.0.0.1:$((27800 + i)) \
      --initial-cluster "$cluster" 2>>"$work/m$i.log" &
    pids+=($!)
  done
  for _ in $(seq 300); do ETCDCTL_API=3 etcdctl --endpoints="$eps" put ready 1 >/dev/null 2>&1 && break; sleep 0.1; done
  local before=0 after=0 p
  for p in "${pids[@]}"; do before=$((before + $(ticks "$p"))); done
  local out
  out=$($client bench "$@" --endpoints="$eps" --json)
  for p in "${pids[@]}"; do after=$((after + $(ticks "$p"))); done
  python3 -c '
import json, sys
r = json.loads(sys.argv[1]); members = (int(sys.argv[2]) - int(sys.argv[3])) / int(sys.argv[4])
client = r["client_cpu_cores"] * r["seconds"]
print("%-40s %9.0f req/s  client %6.2f s  members %6.2f s  members/client %.2f" % (sys.argv[5][-40:], r["requests_per_sec"], client, members, members / client))
' "$out" "$after" "$before" "$hz" "$bin"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  rm -rf "${work:?}"/*
}

for ((r = 0; r < rounds; r++)); do
  one "$a" "$@"
  one "$b" "$@"
done
