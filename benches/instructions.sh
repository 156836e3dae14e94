#!/usr/bin/env bash
# Instructions per forwarded status poll, counted exactly by valgrind's callgrind: the one
# figure of the forwarding path that this noisy 2-core machine cannot blur (the same binary
# gives the same count run after run, to a fraction of a percent). Wall-clock CPU per request
# still comes from benches/load.sh; this shows where the user-space part of it goes.
#
# Runs, each under callgrind behind the simulated platform (which runs natively):
#   - the zero-policy hyper proxy (examples/bare_proxy.rs): the floor for this stack;
#   - tollgate, status cache off (every poll forwarded), SQLite store, access log on.
# Both run with WORKERS worker threads (default 1, as in benches/load.sh: tokio's
# single-threaded scheduler).
# Warms each up with 500 polls, zeroes the counters, sends N more (h2load, 8 connections,
# HTTP/1.1), and divides the instructions of all the process's threads by N. Then prints
# tollgate's heaviest own frames, inclusive, per request.
#
# Caveat: valgrind hides SHA-NI from the CPU, so the key digest runs sha2's portable code
# (about 3,500 instructions here, a few hundred cycles with SHA-NI).
#
# Needs valgrind and h2load (apt-get install valgrind nghttp2-client).
#   bash benches/instructions.sh [N]        (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
export TOKIO_WORKER_THREADS=${WORKERS:-1}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 1; }
command -v h2load >/dev/null || { echo "needs h2load (apt-get install nghttp2-client)"; exit 1; }
cargo build --profile production --quiet --bins --examples
BIN=target/production/tollgate
BARE=target/production/examples/bare_proxy
WORK=$(mktemp -d /tmp/tollgate-instructions.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
. scripts/lib.sh

KEY=bench-tenant-key
P=$(free_port)
RUNBLOB_TOKEN=t $BIN mock-platform --listen 127.0.0.1:$P --balance 1000000 --step-ms 100000000 >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_port $P

# measure FILE LABEL PORT PID: polls through PORT, prints instructions per request; the profile
# of the measured requests is left in $WORK/FILE.callgrind.
measure() {
  local file=$1 label=$2 port=$3 pid=$4 gen
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  gen=$(curl -sf "http://127.0.0.1:$port/v1/sora/generate" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' -d '{"prompt":"p"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation_id"])')
  local url="http://127.0.0.1:$port/v1/sora/generations/$gen/"
  h2load --h1 -n 500 -c 8 -H "Authorization: Bearer $KEY" "$url" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  h2load --h1 -n "$N" -c 8 -H "Authorization: Bearer $KEY" "$url" >"$WORK/$file.h2load"
  grep -q "$N succeeded" "$WORK/$file.h2load" || { echo "$label: not every poll succeeded"; cat "$WORK/$file.h2load"; exit 1; }
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  # The dump is written beside the --callgrind-out-file name, with a part number.
  local out; out=$(ls -t "$WORK/$file".out.* | head -1)
  # (Not FILE.out: callgrind writes its exit dump there when the process is stopped.)
  mv "$out" "$WORK/$file.callgrind"
  local total; total=$(callgrind_annotate "$WORK/$file.callgrind" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  printf '%-30s %8d instructions per request\n' "$label" $((total / N))
  kill "$pid" 2>/dev/null || true
}

B=$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$WORK/bare.out" $BARE 127.0.0.1:$B http://127.0.0.1:$P t >"$WORK/bare.log" 2>&1 &
PIDS+=($!)
# The bare proxy forwards any path and puts its own token on every request.
measure bare "bare hyper proxy" $B $!

T=$(free_port); A=$(free_port)
poll_bench_config "$WORK/t.toml" $T $A $P "$WORK/t.db" $KEY
RUNBLOB_TOKEN=t valgrind --tool=callgrind --callgrind-out-file="$WORK/tollgate.out" $BIN run --config "$WORK/t.toml" >"$WORK/tollgate.log" 2>&1 &
PIDS+=($!)
measure tollgate "tollgate (status cache off)" $T $!

echo "--- tollgate's own frames, inclusive, instructions per request ---"
# callgrind splits an inlined function's cost by source file; each function's largest entry is
# its inclusive cost.
callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$WORK/tollgate.callgrind" 2>/dev/null | python3 -c '
import re, sys
n, best = int(sys.argv[1]), {}
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+[^:]*:(.*?)(?: \[[^]]*\])?$", line)
    if m and re.match(r"<?tollgate::", m.group(2)):
        best[m.group(2)] = max(best.get(m.group(2), 0), int(m.group(1).replace(",", "")))
for f, c in sorted(best.items(), key=lambda kv: -kv[1])[:25]:
    print(f"{c // n:8d}  {f[:150]}")
' "$N"
echo "profiles: $WORK/{bare,tollgate}.callgrind (callgrind_annotate, kcachegrind)"
