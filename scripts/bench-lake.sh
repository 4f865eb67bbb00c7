#!/usr/bin/env bash
# Measures the cold tier as an open table and prints the figures that
# docs/benchmarks.md records, old and new code in the same run where it
# compares:
#  1. a one-day SQL query over FILES small files (one offload and one Delta
#     commit each), then over the same data once compaction has merged them,
#     and DuckDB's delta_scan of the same day over the compacted table;
#  2. what a reader of the table's newest version reads of its log;
#  3. offload throughput with the Delta table published and the compactor
#     running beside it, and without (`bench offload --lake false`).
#
#   scripts/bench-lake.sh [RUNS] [FILES] [RECORDS_PER_FILE] [OFFLOAD_RECORDS]
#   defaults: 5 runs, 1000 files of 2000 records, 3,000,000 offloaded records
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
files=${2:-1000}
per_file=${3:-2000}
offload_records=${4:-3000000}
bin=${STRATA_BIN:-target/release/strata}
python=target/test-venv/bin/python
port=18183
server="http://127.0.0.1:$port"
data=$(mktemp -d /tmp/strata-bench-lake.XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$data"' EXIT

start() {
  printf '%b' "$1" >"$data/strata.toml"
  "$bin" serve --config "$data/strata.toml" --listen "127.0.0.1:$port" --data-dir "$data/server" \
    2>>"$data/server.log" &
  pid=$!
  for _ in $(seq 300); do curl -sf "$server/health" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
args=(--files "$files" --records-per-file "$per_file" --runs "$runs" --cold-dir "$data/server/cold")
echo "== $files small files, no compaction"
start "[tiering]\ncompaction = false\n"
"$bin" --server "$server" bench lake --phase load "${args[@]}"
stop
echo "== the same data, compacted (background passes every 200 ms)"
start "[tiering]\noffload_interval_ms = 200\n"
duck=()
if "$python" -c 'import duckdb, duckdb_extension_delta' 2>/dev/null; then
  duck=(--duckdb-python "$python")
fi
"$bin" --server "$server" bench lake --phase compacted "${args[@]}" "${duck[@]}"
stop

echo "== offload throughput, $offload_records records: with the table and compactor, and without (alternating)"
for run in 1 2 3; do
  for lake in true false; do
    "$bin" bench offload --records "$offload_records" --lake "$lake" 2>/dev/null | sed "s/^/run $run: /"
  done
done
