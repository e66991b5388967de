#!/usr/bin/env bash
# Recovery times of a 3-member cluster, Keel and etcd (Debian's etcd-server) side by side:
#  - election: kill -9 the leader, time until another member reports a new leader;
#  - catch-up: stop a follower, write N keys (default 10,000) through the others, restart it, time
#    until its applied raft index reaches the leader's.
# Usage: bench/recovery.sh [N]   (needs `jq` and `etcdctl`)
set -euo pipefail
cd "$(dirname "$0")/.."
writes=${1:-10000}
cargo build --release --bin keel >/dev/null
keel=target/release/keel
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; [ -z "${KEEP_LOGS:-}" ] || cp -r "$work" "$KEEP_LOGS"; rm -rf "$work"' EXIT
now_ms() { date +%s%3N; }
ctl() { ETCDCTL_API=3 etcdctl --dial-timeout=300ms --command-timeout=1s "$@"; }

# start_member <binary> <name> <i> <client base> <peer base> <cluster>
start_member() {
  local bin=$1 name=$2 i=$3 cbase=$4 pbase=$5 cluster=$6
  $bin --name "$name$i" --data-dir "$work/$name$i" --snapshot-count 2000 \
    --listen-client-urls http://127.0.0.1:$((cbase + i)) --advertise-client-urls http://127.0.0.1:$((cbase + i)) \
    --listen-peer-urls http://127.0.0.1:$((pbase + i)) --initial-advertise-peer-urls http://127.0.0.1:$((pbase + i)) \
    --initial-cluster "$cluster" --initial-cluster-state new 2>>"$work/$name$i.log" &
  echo $! >"$work/$name$i.pid"
}

leader_of() { # prints the index of the member that leads as member $2 reports it (or nothing); skips member $3
  local cbase=$1 i=$2 skip=${3:-} status leader
  status=$(ctl --endpoints=127.0.0.1:$((cbase + i)) endpoint status -w json 2>/dev/null) || return 0
  leader=$(jq -r '.[0].Status.leader' <<<"$status")
  for j in 0 1 2; do
    [ "$j" = "$skip" ] && continue
    id=$(ctl --endpoints=127.0.0.1:$((cbase + j)) endpoint status -w json 2>/dev/null | jq -r '.[0].Status.header.member_id') || continue
    if [ "$id" = "$leader" ] && [ "$leader" != 0 ]; then echo "$j"; return 0; fi
  done
  return 0
}

applied() { # the member's applied raft index; 0 while it does not answer
  local n
  # Not listening yet: answer at once (etcdctl would spend up to a second retrying).
  (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null || { echo 0; return; }
  n=$(ctl --endpoints=127.0.0.1:$1 endpoint status -w json 2>/dev/null | jq -r '.[0].Status.raftAppliedIndex // 0' 2>/dev/null) || true
  echo "${n:-0}"
}

run() {
  local bin=$1 name=$2 cbase=$3 pbase=$4 cluster="" i leader
  for i in 0 1 2; do cluster+="${cluster:+,}$name$i=http://127.0.0.1:$((pbase + i))"; done
  for i in 0 1 2; do start_member "$bin" "$name" "$i" "$cbase" "$pbase" "$cluster"; done
  for _ in $(seq 100); do ctl --endpoints=127.0.0.1:$cbase put ready 1 >/dev/null 2>&1 && break; sleep 0.1; done
  leader=""; while [ -z "$leader" ]; do leader=$(leader_of "$cbase" 0); done
  # Election after kill -9 of the leader.
  local other=$(((leader + 1) % 3)) t0 new=""
  kill -9 "$(cat "$work/$name$leader.pid")"; t0=$(now_ms)
  while [ -z "$new" ] || [ "$new" = "$leader" ]; do new=$(leader_of "$cbase" "$other" "$leader"); done
  echo "$name: new leader elected $(($(now_ms) - t0)) ms after kill -9 of the leader"
  start_member "$bin" "$name" "$leader" "$cbase" "$pbase" "$cluster"
  sleep 2
  # Catch-up of a member $writes writes behind.
  local lag=$(((new + 1) % 3))
  kill -9 "$(cat "$work/$name$lag.pid")"
  ETCDCTL_API=3 $keel bench put --endpoints=127.0.0.1:$((cbase + new)) --clients=50 --conns=5 --total="$writes" --val-size=256 >/dev/null
  local target; target=$(applied $((cbase + new)))
  start_member "$bin" "$name" "$lag" "$cbase" "$pbase" "$cluster"; t0=$(now_ms)
  while a=$(applied $((cbase + lag))); [ "$a" -lt "$target" ]; do [ -z "${DEBUG:-}" ] || echo "$(now_ms) applied $a target $target" >&2; sleep 0.05; done
  echo "$name: a member $writes writes behind caught up $(($(now_ms) - t0)) ms after restart (incl. start-up)"
  for i in 0 1 2; do kill -9 "$(cat "$work/$name$i.pid")" 2>/dev/null || true; done
}

echo "etcd: $(etcd --version | head -1)"
[ "${ONLY:-}" = etcd ] || run "$keel" keel 33790 33890
[ "${ONLY:-}" = keel ] || run etcd etcd 34790 34890
