#!/usr/bin/env bash
# Watch at scale: 100,000 watchers over 1,000 gRPC streams on one member, Keel beside etcd 3.4.
#   bench/watchers.sh                      # 1,000 streams x 100 watchers, 300 puts at 50/s
#   STREAMS=100 bench/watchers.sh          # a smaller run
#   KEEL_BIN=path/to/keel bench/watchers.sh
# `keel bench watch-latency` opens the watchers, puts to the watched key at a fixed rate and times
# each put until every watcher has its event; the member's peak RSS (VmHWM) is read at the end.
# Writes bench/results/<UTC time>/watchers.{jsonl,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS=${STREAMS:-1000}
PER_STREAM=${PER_STREAM:-100}
SYSTEMS=${SYSTEMS:-keel etcd}
. bench/lib.sh
cport=27790 pport=27890
url=127.0.0.1:$cport

for system in $SYSTEMS; do
  start_member "$system" "$work/$system" "$url" "$pport"
  until ETCDCTL_API=3 etcdctl --endpoints="$url" put probe 1 >/dev/null 2>&1; do sleep 0.1; done
  result=$($keel bench watch-latency --endpoints="$url" --streams="$STREAMS" \
    --watchers-per-stream="$PER_STREAM" --put-total=300 --put-rate=50 --json)
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(system=sys.argv[2], watchers=int(sys.argv[3]), peak_rss_mib=round(int(sys.argv[4]) / 1024)); print(json.dumps(r))' \
    "$result" "$system" $((STREAMS * PER_STREAM)) "$hwm" | tee -a "$out/watchers.jsonl" >&2
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/watchers.jsonl")]
lines = ["# Watch at scale, one member", "",
         "| system | watchers | put-to-event p50 ms | p99 ms | max ms | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|"]
for r in rows:
    l = r["latency_ms"]
    lines.append(f"| {r['system']} | {r['watchers']:,} | {l['p50']:.2f} | {l['p99']:.2f} | {l['max']:.1f} | {r['peak_rss_mib']} |")
by = {r["system"]: r for r in rows}
if "keel" in by and "etcd" in by:
    k, e = by["keel"], by["etcd"]
    lines += ["", f"keel / etcd: p99 {k['latency_ms']['p99'] / e['latency_ms']['p99']:.2f}x, peak RSS {k['peak_rss_mib'] / e['peak_rss_mib']:.2f}x"]
open(f"{out}/watchers.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "wrote $out/watchers.md" >&2
