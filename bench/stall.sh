#!/usr/bin/env bash
# Compaction and defragmentation under a steady put load: Keel beside etcd 3.4, one member each.
#   bench/stall.sh                         # 5,000,000 revisions over 100,000 keys
#   REVS=1000000 bench/stall.sh            # a quicker run
#   KEEL_BIN=path/to/keel bench/stall.sh   # skip the cargo build, use this binary
# For each system, on a fresh member: write REVS puts over KEYS keys (256 B; progress and ETA),
# measure peak put throughput (100 clients), then run three windows of a steady put load at half
# of that peak (DURATION each) and report each window's p99: one alone, one with `etcdctl compact`
# of every revision written so far issued 3 s in, one with `etcdctl defrag` 3 s in (and how long
# the command took). Writes bench/results/<UTC time>/stall.{jsonl,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
REVS=${REVS:-5000000}
KEYS=${KEYS:-100000}
DURATION=${DURATION:-30s}
SYSTEMS=${SYSTEMS:-keel etcd}
. bench/lib.sh
cport=26790 pport=26890
url=127.0.0.1:$cport
ctl() { ETCDCTL_API=3 etcdctl --endpoints="$url" --command-timeout=600s "$@"; }
ms() { date +%s%3N; }
put() { $keel bench put --endpoints="$url" --clients=100 --conns=10 --key-space-size="$KEYS" --val-size=256 --json "$@"; }

# window <label> <rate> [command...]: a steady load; the command runs 3 s in, timed.
window() {
  local label=$1 rate=$2 took=0 t0 result; shift 2
  put --rate="$rate" --duration="$DURATION" >"$work/load.json" &
  local load=$!
  if [ $# -gt 0 ]; then
    sleep 3
    t0=$(ms)
    "$@" >/dev/null
    took=$(($(ms) - t0))
  fi
  wait "$load"
  result=$(cat "$work/load.json")
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(json.dumps(dict(window=sys.argv[2], rate=int(sys.argv[3]), command_ms=int(sys.argv[4]), p50_ms=r["latency_ms"]["p50"], p99_ms=r["latency_ms"]["p99"], max_ms=r["latency_ms"]["max"], per_sec=round(r["requests_per_sec"]), errors=r["errors"])))' \
    "$result" "$label" "$rate" "$took"
}

for system in $SYSTEMS; do
  quota=$((64 << 30))
  [ "$system" = etcd ] && quota=$((8 << 30))
  start_member "$system" "$work/$system" "$url" "$pport" "$quota"
  until ctl put probe 1 >/dev/null 2>&1; do sleep 0.1; done
  echo "$system: writing $REVS revisions over $KEYS keys" >&2
  put --clients=200 --conns=20 --total="$REVS" --sequential-keys >/dev/null
  peak=$(put --duration=15s | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["requests_per_sec"]))')
  rate=$((peak / 2))
  rev=$(ctl get probe -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
  {
    window "steady load alone" "$rate"
    window "compact $rev revisions" "$rate" ctl compact "$rev"
    window "defrag" "$rate" ctl defrag
  } | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line); r.update(system=sys.argv[1], peak_per_sec=int(sys.argv[2])); print(json.dumps(r))' "$system" "$peak" |
    tee -a "$out/stall.jsonl" >&2
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "${work:?}/$system"
done

python3 - "$out" "$REVS" "$DURATION" <<'EOF'
import json, sys
out, revs, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in open(f"{out}/stall.jsonl")]
lines = [f"# Compaction and defrag under a steady put load ({revs:,} revisions written first; {duration} windows at half of peak)", "",
         "| system | window | rate/s | command ms | p50 ms | p99 ms | max ms | p99 / alone | errors |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
alone = {r["system"]: r["p99_ms"] for r in rows if r["window"] == "steady load alone"}
for r in rows:
    lines.append(f"| {r['system']} | {r['window']} | {r['rate']} | {r['command_ms']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['p99_ms'] / alone[r['system']]:.2f}x | {r['errors']} |")
open(f"{out}/stall.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "wrote $out/stall.md" >&2
