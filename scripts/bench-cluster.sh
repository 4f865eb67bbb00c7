#!/usr/bin/env bash
# Replication's cost on ingest (issue #11): one `strata` binary, `bench
# produce` against a single node and against three nodes on this machine
# sharing one file:// root with a topic of replication factor 3 (every
# produce acknowledged once all three have it fsynced), alternated run by
# run so both see the same machine state. The cluster is measured twice:
# every batch sent to one node (which passes the other leaders' parts on)
# and with `--direct` (each producer sends one partition's records to its
# leader, as a partition-aware client does). Prints every run; quote
# medians (docs/benchmarks.md).
#
#   scripts/bench-cluster.sh BINARY [RUNS] [SECONDS] [PARTITIONS]
#       defaults: 3 runs, 20 s of produce per run, 6 partitions
set -euo pipefail
bin=$1 runs=${2:-3} secs=${3:-20} partitions=${4:-6}
work=$(mktemp -d /tmp/strata-bench-cluster.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

wait_up() { # port
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null && return
    sleep 0.1
  done
  echo "node on port $1 did not start" >&2
  exit 1
}
start() { # nodes
  rm -rf "$work/run"
  mkdir -p "$work/run/lake"
  for n in $(seq "$1"); do
    "$bin" serve --node-id "n$n" --listen "127.0.0.1:1828$n" --data-dir "$work/run/n$n" \
      --object-store "file://$work/run/lake" 2>>"$work/server.log" &
    pids+=($!)
  done
  for n in $(seq "$1"); do wait_up "1828$n"; done
  # Every node alive in the controller's view before the topic is made.
  for _ in $(seq 300); do
    [ "$(curl -s 127.0.0.1:18281/v1/cluster | grep -o '"alive":true' | wc -l)" = "$1" ] && break
    sleep 0.1
  done
  curl -sf -X POST 127.0.0.1:18281/v1/topics \
    -d "{\"name\":\"bench-produce\",\"partitions\":$partitions,\"config\":{\"replication_factor\":$1}}" >/dev/null
  # Every partition led, with every replica in sync, before producing: a
  # producer that starts earlier meets refusals it counts as failures.
  [ "$1" -gt 1 ] || return 0
  for _ in $(seq 300); do
    curl -s 127.0.0.1:18281/v1/topics/bench-produce | python3 -c '
import json, sys
d, n = json.load(sys.stdin), int(sys.argv[1])
sys.exit(0 if all(p.get("leader") and len(p.get("isr") or []) == n for p in d["partitions"]) else 1)' "$1" && break
    sleep 0.1
  done
}
stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
for i in $(seq "$runs"); do
  start 1
  echo "[single node run $i] $("$bin" --server http://127.0.0.1:18281 bench produce --duration "$secs" 2>&1 | tail -1)"
  stop
  start 3
  echo "[3 nodes RF 3, via one node, run $i] $("$bin" --server http://127.0.0.1:18281 bench produce --duration "$secs" 2>&1 | tail -1)"
  stop
  start 3
  echo "[3 nodes RF 3, direct to leaders, run $i] $("$bin" --server http://127.0.0.1:18281 bench produce --direct --duration "$secs" 2>&1 | tail -1)"
  stop
done
