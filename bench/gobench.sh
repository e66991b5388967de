#!/usr/bin/env bash
# keel bench's put and range workloads through etcd's official Go client (clientv3 of etcd 3.4,
# the client Kubernetes' apiserver uses): builds bench/goload offline against Debian's
# golang-etcd-server-dev (GOPATH mode, nothing downloaded) into ${TMPDIR:-/tmp}/keel-goload,
# rebuilding when bench/goload changed, then runs it with the arguments given:
#   bench/gobench.sh put --endpoints=127.0.0.1:2379 --clients=100 --conns=10 --total=20000 --val-size=256 --json
#   bench/gobench.sh range --clients=100 --conns=10 --key-space-size=1000 --consistency=s
#   bench/gobench.sh --build         # only build it, and print the binary's path
# Flags and --json output as keel bench's (plus "client": "go" and --key-prefix); see
# bench/goload/main.go. Needs golang-go and golang-etcd-server-dev.
set -euo pipefail
src=$(cd "$(dirname "$0")/goload" && pwd)
cache=${TMPDIR:-/tmp}/keel-goload
bin=$cache/goload
gocode=${GOCODE:-/usr/share/gocode}
if [ ! -x "$bin" ] || [ -n "$(find "$src" -newer "$bin" -print -quit)" ]; then
  [ -d "$gocode/src/go.etcd.io/etcd/clientv3" ] ||
    { echo "gobench.sh: no clientv3 under $gocode (apt-get install golang-go golang-etcd-server-dev)" >&2; exit 1; }
  mkdir -p "$cache/gopath"
  # GOPATH mode: the package builds from where it lies, its imports come from Debian's tree.
  (cd "$src" && GO111MODULE=off GOFLAGS='' GOPATH="$cache/gopath:$gocode" GOCACHE="${GOCACHE:-$cache/go-build}" \
    go build -o "$bin.tmp.$$" .)
  mv -f "$bin.tmp.$$" "$bin"
fi
if [ "${1:-}" = --build ]; then echo "$bin"; exit 0; fi
exec "$bin" "$@"
