#!/usr/bin/env bash
# Measures the query service on this machine and prints the figures that
# docs/benchmarks.md records: `strata bench query` over RECORDS records
# spanning 30 days (mostly in the cold tier), DuckDB on the same Parquet
# files with the same SQL (when `duckdb` is installed in the test venv), and
# the server's peak RSS while it streams the full history (> 2 GiB of NDJSON).
#
#   scripts/bench-query.sh [RUNS] [RECORDS]      defaults: 5 runs, 13,000,000 records
#   (13 M records make the full-history NDJSON result 2.3 GiB)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
records=${2:-13000000}
port=18182
server="http://127.0.0.1:$port"
data=$(mktemp -d /tmp/strata-bench-query.XXXXXX)
cargo build --release --quiet
bin=target/release/strata
python=target/test-venv/bin/python
if [ -x "$python" ] && ! "$python" -c 'import duckdb' 2>/dev/null; then
  target/test-venv/bin/pip install --quiet duckdb || true
fi

start() {
  "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data/server" 2>>"$data/server.log" &
  pid=$!
  for _ in $(seq 300); do curl -sf "$server/health" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "== load: $records records over 30 days, 4 partitions; all but the last 1 % offloaded"
start
"$bin" --server "$server" bench query --records "$records" --runs 1 >/dev/null
kill -TERM $pid; wait $pid || true
echo "cold tier: $(du -sh "$data/server/cold" | cut -f1), local segments: $(du -sh "$data/server/topics" | cut -f1)"

echo "== strata bench query: median of $runs runs (fresh server, so the peak RSS below is the queries')"
start
args=(--records "$records" --runs "$runs")
if [ -x "$python" ] && "$python" -c 'import duckdb' 2>/dev/null; then
  args+=(--duckdb-python "$python" --cold-dir "$data/server/cold")
fi
"$bin" --server "$server" bench query "${args[@]}"
echo "== server peak RSS during the queries: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)"
