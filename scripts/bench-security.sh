#!/usr/bin/env bash
# The cost of authentication and TLS on ingest (issue #14): one `strata`
# binary, `bench produce` against a server without them and against one
# with `--auth` and `--tls-cert`/`--tls-key` (a bearer token on every
# request, HTTPS with a self-signed P-256 certificate), alternated run by
# run so both see the same machine state. Prints every run; quote medians
# (docs/benchmarks.md).
#
#   scripts/bench-security.sh BINARY [RUNS] [SECONDS]
#       defaults: 3 runs, 20 s of produce per run
set -euo pipefail
bin=$1 runs=${2:-3} secs=${3:-20}
port=18184
work=$(mktemp -d /tmp/strata-bench-security.XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=strata-bench -addext subjectAltName=IP:127.0.0.1 \
  -addext basicConstraints=critical,CA:FALSE \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
token="st_$(openssl rand -hex 32)"

start() { # scheme, extra serve args...
  local scheme=$1
  shift
  rm -rf "$work/data"
  STRATA_BOOTSTRAP_TOKEN=$token "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" "$@" \
    2>>"$work/server.log" &
  pid=$!
  for _ in $(seq 300); do
    curl -sf --cacert "$work/cert.pem" "$scheme://127.0.0.1:$port/health" >/dev/null && return
    sleep 0.1
  done
  echo "server did not start" >&2
  exit 1
}
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
for i in $(seq "$runs"); do
  start http
  echo "[plain run $i] $(env -u STRATA_TOKEN "$bin" --server "http://127.0.0.1:$port" bench produce --duration "$secs" | tail -1)"
  stop
  start https --auth --tls-cert "$work/cert.pem" --tls-key "$work/key.pem"
  echo "[auth+tls run $i] $(STRATA_TOKEN=$token STRATA_CA_CERT=$work/cert.pem "$bin" --server "https://127.0.0.1:$port" bench produce --duration "$secs" | tail -1)"
  stop
done
