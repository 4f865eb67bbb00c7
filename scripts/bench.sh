#!/usr/bin/env bash
# Measures Strata's hot paths on this machine and prints the figures that
# docs/benchmarks.md records: the disk's fsynced sequential write bandwidth,
# `strata bench produce` (median of RUNS runs), an independent check with wrk,
# `strata bench consume`, and the server's peak RSS.
#
#   scripts/bench.sh [RUNS] [SECONDS]      defaults: 5 runs of 30 s
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
secs=${2:-30}
port=18181
server="http://127.0.0.1:$port"
data=$(mktemp -d /tmp/strata-bench.XXXXXX)
cargo build --release --quiet
bin=target/release/strata

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "== disk: fsynced sequential write (1 GiB, 1 MiB blocks)"
if command -v fio >/dev/null; then
  fio --name=seq --filename="$data/fio" --rw=write --bs=1m --size=1g --ioengine=psync --direct=1 --fdatasync=1 \
    --end_fsync=1 2>&1 | grep -E "WRITE:" | sed 's/^ */fio direct+fdatasync each 1 MiB: /'
  rm -f "$data/fio"
fi
dd if=/dev/zero of="$data/dd" bs=1M count=1024 conv=fdatasync 2>&1 | tail -1 | sed 's/^/dd conv=fdatasync: /'
rm -f "$data/dd"

"$bin" serve --listen "127.0.0.1:$port" --data-dir "$data/server" 2>"$data/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "$server/health" >/dev/null && break; sleep 0.1; done

echo "== strata bench produce: $runs x ${secs}s, 16 producers, batches of 1000 ~120-byte records (load generator on the same cores)"
for i in $(seq "$runs"); do
  curl -s -X DELETE "$server/v1/topics/bench-produce" >/dev/null
  "$bin" --server "$server" bench produce --duration "$secs" | tee -a "$data/produce.txt"
done
echo "median records/s: $(grep -o '[0-9]* records/s' "$data/produce.txt" | awk '{print $1}' | median)"
echo "median p99 ms:    $(grep -o 'p99 [0-9.]* ms' "$data/produce.txt" | awk '{print $2}' | median)"
curl -s -X DELETE "$server/v1/topics/bench-produce" >/dev/null

if command -v wrk >/dev/null; then
  echo "== wrk: 1 thread, 16 connections, the same 1000-record batch, 3 x ${secs}s"
  python3 - "$data/batch.json" <<'PY'
import sys
recs = []
for n in range(1000):
    head = '{"value":{"user":"user-%06d","page":"/products/%05d","n":%d,"pad":"' % (n, n, n)
    recs.append(head + 'x' * max(0, 120 - len(head) - 4) + '"}}')
open(sys.argv[1], 'w').write('{"records":[' + ','.join(recs) + ']}')
PY
  cat >"$data/post.lua" <<LUA
wrk.method = "POST"
local f = io.open("$data/batch.json", "r")
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA
  curl -s -X POST "$server/v1/topics" -d '{"name":"wrk"}' >/dev/null
  for i in 1 2 3; do
    wrk -t1 -c16 -d"${secs}s" --latency -s "$data/post.lua" "$server/v1/topics/wrk/records" \
      | awk '/ 99%/ {p99=$2} /Requests\/sec/ {rps=$2} END {printf "wrk: %.0f records/s, p99 %s\n", rps*1000, p99}'
  done
  curl -s -X DELETE "$server/v1/topics/wrk" >/dev/null
fi

echo "== strata bench consume: 5,000,000 records in 2 partitions; first pass reads from disk, then $runs warm runs"
"$bin" --server "$server" bench consume --records 5000000 2>&1 | sed 's/^/first pass (cold): /'
for i in $(seq "$runs"); do
  "$bin" --server "$server" bench consume --records 5000000 | tee -a "$data/consume.txt"
done
echo "median records/s: $(grep -o '[0-9]* records/s' "$data/consume.txt" | awk '{print $1}' | median)"
echo "== server peak RSS: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)"
