# Shared by the single-member benchmark scripts (scale.sh, stall.sh, watchers.sh): sourced from
# the repository root. Sets $keel (KEEL_BIN, else a release build), $out (a new results
# directory) and $work (a scratch directory removed on exit, with the members it started).
if [ -z "${KEEL_BIN:-}" ]; then
  cargo build --release --bin keel >/dev/null
  KEEL_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/keel
fi
keel=$KEEL_BIN
out=bench/results/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

# start_member <keel|etcd> <data dir> <client host:port> <peer port> [quota bytes]: one member in
# the background, logging to $work/<system>.log; its pid in $pid.
start_member() {
  local bin=$keel
  [ "$1" = etcd ] && bin=etcd
  $bin --name m --data-dir "$2" ${5:+--quota-backend-bytes="$5"} \
    --listen-client-urls "http://$3" --advertise-client-urls "http://$3" \
    --listen-peer-urls "http://127.0.0.1:$4" --initial-advertise-peer-urls "http://127.0.0.1:$4" \
    --initial-cluster "m=http://127.0.0.1:$4" 2>>"$work/$1.log" &
  pid=$!
}
