#!/usr/bin/env bash
# Three Strata nodes on one machine, sharing one file:// root: a replicated
# topic, produce through one node, read through another, kill its leader
# and keep going. See docs/cluster.md.
#
#   examples/cluster/run.sh            # uses target/release/strata (built if missing)
#   STRATA=/path/to/strata examples/cluster/run.sh
#
# Needs curl. Leaves everything under ./cluster-demo (remove it afterwards).
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
strata=${STRATA:-$here/target/release/strata}
if [ ! -x "$strata" ]; then
  (cd "$here" && cargo build --release)
fi
demo=$PWD/cluster-demo
mkdir -p "$demo/lake"
cat > "$demo/strata.toml" <<TOML
[cluster]
heartbeat_interval_ms = 200
failure_timeout_ms = 1500
TOML

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

for n in 1 2 3; do
  "$strata" serve --node-id "n$n" --listen "127.0.0.1:808$n" --data-dir "$demo/n$n" \
    --object-store "file://$demo/lake" --config "$demo/strata.toml" \
    2> "$demo/n$n.log" &
  pids+=($!)
done

echo "waiting until every node sees three live nodes..."
for port in 8081 8082 8083; do
  until [ "$(curl -s "127.0.0.1:$port/v1/cluster" | grep -o '"alive":true' | wc -l)" = 3 ]; do sleep 0.2; done
done
curl -s 127.0.0.1:8081/v1/cluster; echo

echo "a topic of 3 partitions on all three nodes (created through n2):"
curl -s -X POST 127.0.0.1:8082/v1/topics \
  -d '{"name":"orders","partitions":3,"config":{"replication_factor":3}}'; echo

echo "produce through n1 (acknowledged once every in-sync replica has it on disk):"
curl -s -X POST 127.0.0.1:8081/v1/topics/orders/records -H 'Idempotency-Key: demo-1' \
  -d '{"records":[{"key":"a","value":1},{"key":"b","value":2},{"key":"c","value":3}]}'; echo

leader=$(curl -s 127.0.0.1:8083/v1/topics/orders | grep -o '"leader":"n[0-9]"' | head -1 | cut -d'"' -f4)
echo "kill -9 of $leader, the leader of partition 0..."
kill -9 "${pids[${leader#n} - 1]}"
survivor=$([ "$leader" = n1 ] && echo 8082 || echo 8081)

echo "produce through 127.0.0.1:$survivor until it is acknowledged again:"
start=$(date +%s%N)
until curl -sf -X POST "127.0.0.1:$survivor/v1/topics/orders/records" -H 'Idempotency-Key: demo-2' \
      -d '{"records":[{"key":"a","value":4},{"key":"b","value":5},{"key":"c","value":6}]}'; do
  sleep 0.1
done
echo; echo "acknowledged again after $(( ($(date +%s%N) - start) / 1000000 )) ms"

echo "every record, read through 127.0.0.1:$survivor:"
curl -s "127.0.0.1:$survivor/v1/topics/orders/range?format=ndjson"
echo "each partition's leader, replicas and in-sync replicas now:"
curl -s "127.0.0.1:$survivor/v1/topics/orders" | grep -o '"leader":"[^"]*","replicas":\[[^]]*\],"isr":\[[^]]*\]'
