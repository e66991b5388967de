#!/usr/bin/env bash
# Keel vs etcd 3.4 (Debian's etcd-server) on this machine, in one run: every workload against a
# single member of each, then against 3 members of each, then the memory and restart test
# (1,000,000 keys of 256 B). Each workload runs through `keel bench`; put and range also run
# through etcd's official Go client (clientv3, what Kubernetes and most users drive etcd with) by
# bench/gobench.sh, so the comparison does not rest on our own client alone. Writes
# bench/results/<UTC time>/{results.jsonl,results.md,throughput.png} (each JSON line names its
# "client": keel or go) and copies the Markdown to bench/results/latest.md.
#   bench/compare.sh                  # everything (about 25 minutes)
#   bench/compare.sh put range        # only the workloads whose name starts with these words
#   QUICK=1 bench/compare.sh          # a tenth of the requests, no memory test (a smoke run)
#   ROUNDS=3 bench/compare.sh         # each workload 3 times per system, taking turns; the report
#                                     # shows the median run of each and the rounds' ratios
#   CLIENTS=keel bench/compare.sh     # the clients put and range run through (default "keel go");
#                                     # the other workloads always run through keel bench
#   KEEL_BIN=/path/to/keel bench/compare.sh   # that binary instead of `cargo build --release`
# Needs etcd, etcdctl, python3 and gnuplot (apt-get install etcd-server etcd-client gnuplot-nox),
# and for the Go client golang-go and golang-etcd-server-dev (built offline, GOPATH mode).
set -euo pipefail
keel=${KEEL_BIN:+$(realpath "$KEEL_BIN")} # before the cd, so a relative path means what it says
cd "$(dirname "$0")/.."
if [ -n "$keel" ]; then
  [ -x "$keel" ] || { echo "KEEL_BIN=$KEEL_BIN is not an executable" >&2; exit 1; }
else
  cargo build --release --bin keel >/dev/null
  keel=$PWD/target/release/keel
fi
read -ra clients <<<"${CLIENTS:-keel go}"
for c in "${clients[@]}"; do
  case $c in
    keel) ;;
    go) goload=$(bench/gobench.sh --build) ;; # built now, before any member runs
    *) echo "CLIENTS: unknown client '$c' (keel, go)" >&2; exit 1 ;;
  esac
done
out=bench/results/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
scale() { if [ -n "${QUICK:-}" ]; then echo $(($1 / 10)); else echo "$1"; fi; }
filters=("$@")
wanted() { [ ${#filters[@]} -eq 0 ] && return 0; for f in "${filters[@]}"; do [[ $1 == "$f"* ]] && return 0; done; return 1; }

wait_ready() { for _ in $(seq 300); do ETCDCTL_API=3 etcdctl --endpoints="$1" put ready 1 >/dev/null 2>&1 && return; sleep 0.1; done; echo "not ready: $1" >&2; exit 1; }

# start <binary> <name> <members> <client port base> <peer port base>
start() {
  local bin=$1 name=$2 members=$3 cbase=$4 pbase=$5 cluster="" i
  for ((i = 0; i < members; i++)); do cluster+="${cluster:+,}$name$i=http://127.0.0.1:$((pbase + i))"; done
  for ((i = 0; i < members; i++)); do
    $bin --name "$name$i" --data-dir "$work/$name$i" \
      --listen-client-urls http://127.0.0.1:$((cbase + i)) --advertise-client-urls http://127.0.0.1:$((cbase + i)) \
      --listen-peer-urls http://127.0.0.1:$((pbase + i)) --initial-advertise-peer-urls http://127.0.0.1:$((pbase + i)) \
      --initial-cluster "$cluster" 2>>"$work/$name$i.log" &
    echo $! >"$work/$name$i.pid"
  done
}
endpoints() { local i out=""; for ((i = 0; i < $2; i++)); do out+="${out:+,}127.0.0.1:$(($1 + i))"; done; echo "$out"; }
# shellcheck disable=SC2046 # one pid per word
stop_all() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "${work:?}"/*; }

# run <members> <label> <workload> <args...>: the workload against Keel and etcd, one JSON line
# each per client, ROUNDS times (default 1), the two systems taking turns to go first: throughput
# on a shared VM drifts by +-15% over minutes, and alternating keeps the drift from favouring
# either. Clients: keel bench, and for put and range each of CLIENTS (keel bench runs the
# workloads the Go client lacks whatever CLIENTS says).
run() {
  local members=$1 label=$2 round order target client; shift 2
  wanted "$label" || return 0
  local with=(keel)
  case $1 in put | range) with=("${clients[@]}") ;; esac
  for ((round = 1; round <= ${ROUNDS:-1}; round++)); do
    order="keel:23790 etcd:24790"
    ((round % 2 == 0)) && order="etcd:24790 keel:23790"
    for client in "${with[@]}"; do
      for target in $order; do
        local name=${target%%:*} port=${target##*:} tool=("$keel" bench)
        if [ "$client" = go ]; then tool=("$goload"); fi
        printf '%-8s %-4s %s member(s) %-28s ' "$name" "$client" "$members" "$label" >&2
        "${tool[@]}" "$@" --endpoints="$(endpoints "$port" "$members")" --json |
          python3 -c 'import json,sys; r=json.load(sys.stdin); r.update(system=sys.argv[1], members=int(sys.argv[2]), label=sys.argv[3], round=int(sys.argv[4]), client=sys.argv[5]); print(json.dumps(r))' "$name" "$members" "$label" "$round" "$client" |
          tee -a "$out/results.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%10.0f req/s  p50 %.2f  p99 %.2f ms  errors %d" % (r["requests_per_sec"], r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["errors"]))' >&2
      done
    done
  done
}

for members in 1 3; do
  start "$keel" keel "$members" 23790 23890
  start etcd etcd "$members" 24790 24890
  wait_ready "$(endpoints 23790 "$members")"
  wait_ready "$(endpoints 24790 "$members")"
  if [ "$members" = 1 ]; then
    if wanted fsync; then
      $keel bench fsync --dir "$work" --total "$(scale 2000)" --json |
        python3 -c 'import json,sys; r=json.load(sys.stdin); r.update(system="disk", members=1, label="fsync floor", client="keel"); print(json.dumps(r))' | tee -a "$out/results.jsonl" >&2
    fi
    run 1 "put, 1 client" put --clients=1 --conns=1 --total="$(scale 3000)" --val-size=256
    run 1 "put, 100 clients" put --clients=100 --conns=10 --total="$(scale 60000)" --val-size=256
    run 1 "range l, 100 clients" range --clients=100 --conns=10 --total="$(scale 150000)" --key-space-size=1000 --val-size=256 --consistency=l
    run 1 "range s, 100 clients" range --clients=100 --conns=10 --total="$(scale 150000)" --key-space-size=1000 --val-size=256 --consistency=s
    run 1 "txn-put, 100 clients" txn-put --clients=100 --conns=10 --total="$(scale 60000)" --val-size=256
    run 1 "txn-mixed, 100 clients" txn-mixed --clients=100 --conns=10 --total="$(scale 60000)" --key-space-size=1000 --val-size=256
    run 1 "mixed 90% reads, 100 clients" mixed --clients=100 --conns=10 --total="$(scale 100000)" --key-space-size=1000 --val-size=256
    run 1 "lease-keepalive, 100 clients" lease-keepalive --clients=100 --conns=10 --total="$(scale 100000)"
    run 1 "watch-latency, 10k watchers" watch-latency --streams=100 --watchers-per-stream=100 --put-total="$(scale 300)" --put-rate=50
    run 1 "watch events, 1k watchers" watch --streams=10 --watchers-per-stream=100 --key-space-size=100 --put-total="$(scale 20000)"
  else
    run 3 "put, 1000 clients" put --clients=1000 --conns=100 --total="$(scale 100000)" --val-size=256
    run 3 "put, 100 clients" put --clients=100 --conns=10 --total="$(scale 60000)" --val-size=256
    run 3 "range l, 100 clients" range --clients=100 --conns=10 --total="$(scale 150000)" --key-space-size=1000 --val-size=256 --consistency=l
    run 3 "range s, 100 clients" range --clients=100 --conns=10 --total="$(scale 150000)" --key-space-size=1000 --val-size=256 --consistency=s
    run 3 "lease-keepalive, 100 clients" lease-keepalive --clients=100 --conns=10 --total="$(scale 100000)"
  fi
  stop_all
done

# Memory and restart: 1,000,000 keys of 256 B into one member of each, then RSS, then the time a
# restarted member takes to serve a read.
if [ -z "${QUICK:-}" ] && wanted memory; then
  for target in keel:23790:23890 etcd:24790:24890; do
    IFS=: read -r name cport pport <<<"$target"
    bin=$keel; [ "$name" = etcd ] && bin=etcd
    start "$bin" "$name" 1 "$cport" "$pport"
    wait_ready "127.0.0.1:$cport"
    $keel bench put --endpoints="127.0.0.1:$cport" --clients=100 --conns=10 --total=1000000 \
      --key-space-size=1000000 --sequential-keys --key-size=16 --val-size=256 --json >/dev/null
    sleep 5
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/${name}0.pid")/status")
    kill "$(cat "$work/${name}0.pid")"; wait "$(cat "$work/${name}0.pid")" 2>/dev/null || true
    t0=$(date +%s%3N)
    $bin --name "${name}0" --data-dir "$work/${name}0" \
      --listen-client-urls http://127.0.0.1:"$cport" --advertise-client-urls http://127.0.0.1:"$cport" \
      --listen-peer-urls http://127.0.0.1:"$pport" --initial-advertise-peer-urls http://127.0.0.1:"$pport" \
      --initial-cluster "${name}0=http://127.0.0.1:$pport" 2>>"$work/${name}0.log" &
    until ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:"$cport" get 0000000000999999 >/dev/null 2>&1; do sleep 0.05; done
    t1=$(date +%s%3N)
    printf '{"system":"%s","members":1,"label":"memory and restart, 1M keys","client":"keel","rss_kib":%s,"restart_ms":%s}\n' \
      "$name" "$rss" $((t1 - t0)) | tee -a "$out/results.jsonl" >&2
    stop_all
  done
fi

python3 bench/report.py "$out"
sed "s|(throughput.png)|($(basename "$out")/throughput.png)|" "$out/results.md" >bench/results/latest.md
echo "wrote $out/results.md and $out/throughput.png (copied to bench/results/latest.md)" >&2
