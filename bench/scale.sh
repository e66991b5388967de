#!/usr/bin/env bash
# Keel vs etcd 3.4 at scale: one member of each, side by side in one run.
#   bench/scale.sh                               # 10,000,000 keys in each, baseline at 100,000
#   KEYS=50000000 SYSTEMS=keel bench/scale.sh    # Keel alone, past etcd's quota
#   KEYS=1000000 bench/scale.sh                  # a quicker run
#   KEEL_BIN=path/to/keel bench/scale.sh         # skip the cargo build, use this binary
# For each system and size (BASE keys, then KEYS keys), on a fresh member: load the keys, shaped like
# Kubernetes' (/registry/pods/<namespace>/<name>, 256 B values of random letters, every 20th
# 2 KiB: RocksDB's compression gets no repeated bytes bbolt would store whole), with progress
# and an ETA; then, once the member is idle (after a bulk load RocksDB rewrites its bottom level
# once, started by the first read; that is not the store's steady state), its RSS and size on
# disk; put and range p99 at that size (100 clients, random keys, the median of ROUNDS runs); a
# restart (SIGTERM) timed to the first linearizable read served; and the key count after it (a
# linearizable read of /registry/pods/ with limit 1, whose count walks every key: what a paginated
# Kubernetes list costs). etcd runs with --quota-backend-bytes at its maximum (8 GiB).
# Writes bench/results/<UTC time>/scale.{jsonl,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-10000000}
BASE=${BASE:-100000}
ROUNDS=${ROUNDS:-3}
SYSTEMS=${SYSTEMS:-keel etcd}
. bench/lib.sh
cport=25790 pport=25890
url=127.0.0.1:$cport
ctl() { ETCDCTL_API=3 etcdctl --endpoints="$url" --command-timeout=600s "$@"; }
ms() { date +%s%3N; }

# start <system> <data dir>: one member (etcd's quota at its maximum, Keel's past it).
start() {
  local quota=$((64 << 30))
  [ "$1" = etcd ] && quota=$((8 << 30))
  start_member "$1" "$2" "$url" "$pport" "$quota"
}
# Waits for the first linearizable read served.
wait_read() { until ctl get "$1" >/dev/null 2>&1; do sleep 0.05; done; }
bench() { $keel bench "$@" --endpoints="$url" --kube-keys --val-size=256 --random-values --json; }
# The median of several runs of a bench: "$@" is the bench's arguments.
median_of() {
  local runs=() i
  for i in $(seq "$ROUNDS"); do runs+=("$(bench "$@")"); done
  printf '%s\n' "${runs[@]}" | python3 -c '
import json, sys
runs = sorted((json.loads(l) for l in sys.stdin), key=lambda r: r["latency_ms"]["p99"])
mid = runs[len(runs) // 2]
mid["p99_runs"] = [r["latency_ms"]["p99"] for r in runs]
print(json.dumps(mid))'
}
# CPU seconds the process has used so far.
cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
# Waits until the member uses under 2% of a core over 5 s (at most 20 minutes); prints the seconds waited.
settle() {
  local t0=$SECONDS a b
  while [ $((SECONDS - t0)) -lt 1200 ]; do
    a=$(cpu_s "$pid"); sleep 5; b=$(cpu_s "$pid")
    python3 -c "import sys; sys.exit(0 if $b - $a < 0.1 else 1)" && break
  done
  echo $((SECONDS - t0))
}
field() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(eval(sys.argv[1], {}, r))' "$1"; }

# measure <system> <keys>: one JSON line.
measure() {
  local system=$1 n=$2 dir=$work/$1-$2 load put range rss disk t0 t1 restart count_ms count settled
  rm -rf "$dir"
  start "$system" "$dir"
  wait_read probe
  echo "$system: loading $n keys" >&2
  load=$(bench put --clients=200 --conns=20 --total="$n" --key-space-size="$n" --sequential-keys \
    --large-val-size=2048 --large-every=20)
  ctl put /registry/pods/last/written "$n" >/dev/null
  # RocksDB starts the rewrite when a read releases its snapshot: the first read after the load.
  ctl get /registry/pods/last/written >/dev/null
  echo "$system: waiting for the member to be idle" >&2
  settled=$(settle)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  disk=$(du -sb "$dir" | cut -f1)
  put=$(median_of put --clients=100 --conns=10 --total=20000 --key-space-size="$n")
  range=$(median_of range --no-prefill --clients=100 --conns=10 --total=50000 --key-space-size="$n")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  t0=$(ms)
  start "$system" "$dir"
  wait_read /registry/pods/last/written
  t1=$(ms)
  restart=$((t1 - t0))
  count=$(ctl get /registry/pods/ --prefix --keys-only --limit=1 -w json | field count)
  count_ms=$(($(ms) - t1))
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  python3 - "$system" "$n" "$load" "$put" "$range" "$rss" "$disk" "$restart" "$count" "$count_ms" "$settled" <<'EOF' | tee -a "$out/scale.jsonl" >&2
import json, sys
system, n, load, put, rng, rss, disk, restart, count, count_ms, settled = sys.argv[1:]
load, put, rng = json.loads(load), json.loads(put), json.loads(rng)
print(json.dumps(dict(system=system, keys=int(n), load_per_sec=round(load["requests_per_sec"]),
    load_errors=load["errors"], settle_s=int(settled), put_p99_ms=put["latency_ms"]["p99"], put_per_sec=round(put["requests_per_sec"]),
    range_p99_ms=rng["latency_ms"]["p99"], range_per_sec=round(rng["requests_per_sec"]),
    put_p99_runs=put["p99_runs"], range_p99_runs=rng["p99_runs"],
    rss_mib=round(int(rss) / 1024), disk_mib=round(int(disk) / 2**20), restart_ms=int(restart),
    count_after_restart=int(count), count_ms=int(count_ms))))
EOF
}

for system in $SYSTEMS; do
  measure "$system" "$BASE"
  measure "$system" "$KEYS"
done

python3 - "$out" "$KEYS" "$BASE" <<'EOF'
import json, sys
out, keys, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(l) for l in open(f"{out}/scale.jsonl")]
by = {(r["system"], r["keys"]): r for r in rows}
cols = ["load_per_sec", "settle_s", "put_p99_ms", "range_p99_ms", "rss_mib", "disk_mib", "restart_ms", "count_ms", "count_after_restart"]
lines = [f"# Scale: {keys:,} keys (baseline {base:,}), one member each", "",
         "| system | keys | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
for r in rows:
    lines.append(f"| {r['system']} | {r['keys']:,} | " + " | ".join(str(r[c]) for c in cols) + " |")
lines.append("")
for s in sorted({r["system"] for r in rows}):
    if (s, keys) in by and (s, base) in by:
        big, small = by[(s, keys)], by[(s, base)]
        lines.append(f"- {s}: p99 at {keys:,} / at {base:,}: put {big['put_p99_ms'] / small['put_p99_ms']:.2f}x, "
                     f"range {big['range_p99_ms'] / small['range_p99_ms']:.2f}x")
if ("keel", keys) in by and ("etcd", keys) in by:
    k, e = by[("keel", keys)], by[("etcd", keys)]
    lines.append(f"- keel / etcd at {keys:,}: RSS {k['rss_mib'] / e['rss_mib']:.2f}x, restart {k['restart_ms'] / e['restart_ms']:.2f}x, "
                 f"disk {k['disk_mib'] / e['disk_mib']:.2f}x, put p99 {k['put_p99_ms'] / e['put_p99_ms']:.2f}x, range p99 {k['range_p99_ms'] / e['range_p99_ms']:.2f}x")
open(f"{out}/scale.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "wrote $out/scale.md" >&2
