#!/usr/bin/env bash
# Serving reads (issue #12): `strata bench serve` against one server on a
# temporary directory — key lookups from the key index, multi-gets,
# range?key=, SQL by key beside DuckDB on the same Parquet files (when
# `duckdb` is installed in the test venv), ingest with and without three
# materialized views and their reads — then the server's peak RSS and the
# key index's and the cold tier's sizes. Quote medians (docs/benchmarks.md).
#
#   scripts/bench-serve.sh BINARY [RECORDS] [KEYS] [VIEW_RECORDS]
#       defaults: 10,000,000 records of 100,000 keys over 30 days;
#       2,000,000 records per view-ingest run
set -euo pipefail
bin=$1 records=${2:-10000000} keys=${3:-100000} view_records=${4:-2000000}
port=18186
server="http://127.0.0.1:$port"
work=$(mktemp -d /tmp/strata-bench-serve.XXXXXX)
python=target/test-venv/bin/python
# pytz: DuckDB's Python API needs it to return timestamps with a time zone.
if [ -x "$python" ] && ! "$python" -c 'import duckdb, pytz' 2>/dev/null; then
  target/test-venv/bin/pip install --quiet duckdb pytz || true
fi
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" 2>>"$work/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; [ -n "${KEEP_INDEX:-}" ] && cp "$work/data/index/keys.redb" "$KEEP_INDEX"; rm -rf "$work"' EXIT
for _ in $(seq 300); do curl -sf "$server/health" >/dev/null && break; sleep 0.1; done

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
duck=()
if [ -x "$python" ] && "$python" -c 'import duckdb' 2>/dev/null; then
  duck=(--duckdb-python "$python" --cold-dir "$work/data/cold")
fi
"$bin" --server "$server" bench serve --records "$records" --keys "$keys" \
  --view-records "$view_records" "${duck[@]}"
echo "server peak RSS: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)"
echo "key index: $(du -sh "$work/data/index/keys.redb" | cut -f1), views: $(du -sh "$work/data/index/views.redb" | cut -f1), cold tier: $(du -sh "$work/data/cold" | cut -f1)"
