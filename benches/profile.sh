#!/usr/bin/env bash
# Profiles tollgate on the forwarding path: status polls through a gateway with the status cache
# off, 64 connections, in front of the simulated platform. Records `perf` call graphs (DWARF) of
# the gateway process only and prints the top entries, flat and by caller, then what switches
# its threads out (sched_switch call graphs).
#   bash benches/profile.sh [seconds]       (needs perf and wrk: apt-get install linux-perf wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)"; exit 1; }
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
cargo build --profile production --quiet --bins
BIN=target/production/tollgate
WORK=$(mktemp -d /tmp/tollgate-profile.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
. scripts/lib.sh
P=$(free_port); T=$(free_port); A=$(free_port)
KEY=bench-tenant-key
RUNBLOB_TOKEN=t $BIN mock-platform --listen 127.0.0.1:$P --balance 1000000 --step-ms 100000000 >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
poll_bench_config "$WORK/t.toml" $T $A $P "$WORK/t.db" $KEY
RUNBLOB_TOKEN=t $BIN run --config "$WORK/t.toml" >"$WORK/t.log" 2>&1 &
TPID=$!
PIDS+=($TPID)
wait_port $P; wait_port $T
GEN=$(curl -sf "http://127.0.0.1:$T/v1/sora/generate" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"prompt":"p"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation_id"])')
echo "wrk.headers[\"Authorization\"] = \"Bearer $KEY\"" >"$WORK/get.lua"
wrk -t2 -c64 -d"$((DUR + 5))s" -s "$WORK/get.lua" "http://127.0.0.1:$T/v1/sora/generations/$GEN/" >"$WORK/wrk.txt" &
WPID=$!
sleep 1
perf record -q -F 499 --call-graph dwarf,16384 -p $TPID -o "$WORK/perf.data" -- sleep "$DUR" 2>/dev/null
# Then where its threads are switched out (preempted after a write, or parked), for a shorter time.
perf record -q -e sched:sched_switch --call-graph dwarf,8192 -p $TPID -o "$WORK/switch.data" -- sleep 2 2>/dev/null
wait $WPID
grep -E "Requests/sec" "$WORK/wrk.txt"
short() { sed -E 's/ +- +- +$//; s/(.{150}).*/\1/'; }
echo "--- flat (self) ---"
perf report -i "$WORK/perf.data" --no-children --sort symbol -g none --percent-limit 1 --stdio 2>/dev/null | grep -E "^ +[0-9]" | short | head -30
echo "--- inclusive (children): the gateway's own frames ---"
perf report -i "$WORK/perf.data" --children --sort symbol -g none --percent-limit 0.3 --stdio 2>/dev/null | grep -E "^ +[0-9]" | short \
  | grep -v "(inlined)" | grep -E "\] (tollgate|serde|hyper_util::client|prometheus|tokio::runtime::time)" | head -40
echo "--- context switches by cause ---"
perf report -i "$WORK/switch.data" --no-children --sort symbol -g caller,1,callee,function,percent --stdio 2>/dev/null | grep -E "[0-9]+\.[0-9]+%" | short | head -20
echo "perf data: $WORK/perf.data $WORK/switch.data"
