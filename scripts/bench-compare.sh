#!/usr/bin/env bash
# Compares two `strata` binaries on this machine, alternating them run by
# run so that both see the same machine state: ingest (`bench produce`),
# hot and cold consume (`bench consume`, `--cold`), offload (`bench
# offload`, in-process) and queries (`bench query`, mostly cold data).
# Prints every run; quote medians (docs/benchmarks.md).
#
#   scripts/bench-compare.sh OLD_BINARY NEW_BINARY [RUNS] [SECONDS]
#       defaults: 3 runs, 20 s of produce per run
set -euo pipefail
old=$1 new=$2 runs=${3:-3} secs=${4:-20}
port=18183
server="http://127.0.0.1:$port"
data=$(mktemp -d /tmp/strata-bench-compare.XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$data"' EXIT

start() {
  rm -rf "$data/server"
  "$1" serve --listen "127.0.0.1:$port" --data-dir "$data/server" 2>>"$data/server.log" &
  pid=$!
  for _ in $(seq 300); do curl -sf "$server/health" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
for i in $(seq "$runs"); do
  for which in old new; do
    bin=$old; [ "$which" = new ] && bin=$new
    start "$bin"
    echo "[$which run $i] produce: $("$bin" --server "$server" bench produce --duration "$secs" | tail -1)"
    echo "[$which run $i] consume hot: $("$bin" --server "$server" bench consume --records 3000000 | tail -1)"
    echo "[$which run $i] consume cold: $("$bin" --server "$server" bench consume --topic bench-cold --records 3000000 --cold | tail -1)"
    echo "[$which run $i] query: $("$bin" --server "$server" bench query --records 2000000 --runs 3 | tr '\n' ' ')"
    stop
    echo "[$which run $i] offload: $("$bin" bench offload --records 2000000 | tail -1)"
  done
done
