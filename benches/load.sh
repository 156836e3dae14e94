#!/usr/bin/env bash
# End-to-end load benchmark, all on loopback, all in one run so ratios compare like with like:
#   (a) the simulated platform directly,
#   (b) nginx as a plain reverse proxy in front of it (proxy_pass, upstream keepalive, one
#       worker, access log on),
#   (c) a zero-policy hyper proxy (examples/bare_proxy.rs): the floor for this stack,
#   (d) tollgate in front of it (auth, rate limits set high enough not to reject, ownership
#       check, SQLite store, JSON access log on), status cache off: every poll is forwarded,
#       as through nginx. This is the headline comparison;
#   (e) the same tollgate with its status cache on (1 s): a feature, reported apart.
# Every proxy gets the same number of worker threads, WORKERS (default 1, as nginx's usual
# benchmark setting): nginx `worker_processes`, and TOKIO_WORKER_THREADS for the two tokio
# proxies (which otherwise start one worker per core). The simulated platform keeps its default.
# Workloads: status polling (GET /v1/sora/generations/{id}/, 64 connections), a small paid
# generate (32 connections; tollgate holds and settles each in SQLite) and paid generates
# with a 1 MiB and a 10 MiB base64 image (4 connections). Each row has the proxy's own CPU time per request
# (utime+stime from /proc over the run, divided by the requests wrk completed). Prints a table,
# the ratios against nginx, then tollgate's RSS idle and under 20 concurrent 10 MiB uploads.
#
# TOLLGATE_BIN measures another build of the gateway in rows (d) and (e), e.g. the one
# scripts/build-pgo makes (target/pgo/production/tollgate); everything else stays the plain
# release build, the simulated platform included.
#
# Needs: wrk and nginx (apt-get install wrk nginx).
# Usage: [WORKERS=n] [TOLLGATE_BIN=path] bash benches/load.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
WORKERS=${WORKERS:-1}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx)"; exit 1; }

cargo build --profile production --quiet --bins --examples
BIN=target/production/tollgate
GATEWAY=${TOLLGATE_BIN:-$BIN}
[ -x "$GATEWAY" ] || { echo "no gateway binary at $GATEWAY"; exit 1; }
BARE=target/production/examples/bare_proxy
WORK=$(mktemp -d /tmp/tollgate-load.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

. scripts/lib.sh

TOKEN=bench-platform-token
KEY=bench-tenant-key
P_PORT=$(free_port); N_PORT=$(free_port); T_PORT=$(free_port); A_PORT=$(free_port); U_PORT=$(free_port); UA_PORT=$(free_port); B_PORT=$(free_port)

# (a) the simulated platform; generations stay pending (long step) so polls are uniform.
RUNBLOB_TOKEN=$TOKEN $BIN mock-platform --listen 127.0.0.1:$P_PORT --balance 1000000000 --step-ms 100000000 >"$WORK/mock.log" 2>&1 &
PIDS+=($!)

# (b) nginx, WORKERS workers, upstream keepalive, access log on, bodies buffered in memory.
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
error_log $WORK/nginx/logs/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx/logs/access.log;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  client_max_body_size 16m;
  client_body_buffer_size 16m;
  upstream platform { server 127.0.0.1:$P_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$N_PORT;
    location / {
      proxy_pass http://platform;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $TOKEN";
    }
  }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
NPID=$!
PIDS+=($NPID)
MPID=${PIDS[0]}

# (c) the zero-policy hyper proxy.
TOKIO_WORKER_THREADS=$WORKERS $BARE 127.0.0.1:$B_PORT http://127.0.0.1:$P_PORT $TOKEN >"$WORK/bare.log" 2>&1 &
BPID=$!
PIDS+=($BPID)

# (c) tollgate.
DIGEST=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
cat >"$WORK/tollgate.toml" <<EOF
[server]
listen = "127.0.0.1:$T_PORT"
admin_listen = "127.0.0.1:$A_PORT"
# One tenant drives all the load here: give it the whole body budget.
max_buffered_body_bytes_per_tenant = 536870912
max_uploads_per_tenant = 64
[upstream]
base_url = "http://127.0.0.1:$P_PORT"
token_env = "RUNBLOB_TOKEN"
[store]
backend = "sqlite"
path = "$WORK/tollgate.db"
[balance]
cache_ttl_ms = 5000
[pricing]
sora = { "10" = "0.12", "15" = "0.18" }
[[tenants]]
id = "bench"
keys_sha256 = ["$DIGEST"]
requests_per_second = 1000000
burst = 1000000
generations_per_minute = 1000000
EOF
TOKIO_WORKER_THREADS=$WORKERS RUNBLOB_TOKEN=$TOKEN $GATEWAY run --config "$WORK/tollgate.toml" >"$WORK/tollgate.log" 2>&1 &
TPID=$!
PIDS+=($TPID)
# The same gateway with the status cache off: every poll goes to the platform, as through nginx.
sed -e "s/127.0.0.1:$T_PORT/127.0.0.1:$U_PORT/" -e "s/127.0.0.1:$A_PORT/127.0.0.1:$UA_PORT/" -e "s#tollgate.db#nocache.db#" \
    -e 's/^token_env = "RUNBLOB_TOKEN"/token_env = "RUNBLOB_TOKEN"\nstatus_cache_ms = 0/' "$WORK/tollgate.toml" >"$WORK/nocache.toml"
TOKIO_WORKER_THREADS=$WORKERS RUNBLOB_TOKEN=$TOKEN $GATEWAY run --config "$WORK/nocache.toml" >"$WORK/nocache.log" 2>&1 &
UPID=$!
PIDS+=($UPID)
wait_port $P_PORT; wait_port $N_PORT; wait_port $T_PORT; wait_port $U_PORT; wait_port $B_PORT

# A generation owned by the bench tenant, polled through all three.
new_gen() {
  curl -sf "http://127.0.0.1:$1/v1/sora/generate" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d '{"prompt":"benchmark"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation_id"])'
}
GEN=$(new_gen $T_PORT)
GEN_NC=$(new_gen $U_PORT)
sleep 1
IDLE_RSS=$(awk '/VmRSS/ {print $2}' /proc/$TPID/status)

# Bodies: a PNG padded to 1 MiB and to 10 MiB, base64 in a Sora image-to-video request.
image_bodies "$WORK"

cat >"$WORK/get.lua" <<EOF
wrk.headers["Authorization"] = "Bearer $KEY"
EOF
post_lua() { cat <<EOF
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $KEY"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$1", "rb"); wrk.body = f:read("*a"); f:close()
EOF
}
echo '{"prompt":"benchmark"}' >"$WORK/body_small.json"
post_lua "$WORK/body_small.json" >"$WORK/post_small.lua"
post_lua "$WORK/body_1m.json" >"$WORK/post_1m.lua"
post_lua "$WORK/body_10m.json" >"$WORK/post_10m.lua"

# CPU seconds (utime+stime) used so far by the given PIDs and their children threads.
TICKS=$(getconf CLK_TCK)
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
# run NAME PORT CONNS SCRIPT PATH PIDS... → "rps p50_ms p99_ms non2xx cpu_us_per_req"
run() {
  local name=$1 port=$2 conns=$3 script=$4 path=$5; shift 5
  local before after out
  before=$(cpu_ticks "$@")
  out=$(wrk -t2 -c"$conns" -d"${DUR}s" --latency -s "$script" "http://127.0.0.1:$port$path" 2>&1)
  after=$(cpu_ticks "$@")
  echo "$out" >"$WORK/wrk_$name.txt"
  local rps p50 p99 bad reqs cpu
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $5}' <<<"$out"); bad=${bad:-0}
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(python3 -c "print(round(($after-$before)/$TICKS*1e6/max($reqs,1), 1))")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $bad $cpu"
}
to_ms() { python3 -c "
import re,sys; v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)', v)
n=float(m.group(1)); u=m.group(2); print(round(n/1000 if u=='us' else n*1000 if u=='s' else n, 3))" "$1"; }

STATUS=/v1/sora/generations/$GEN/
NGINX_PIDS="$NPID $(pgrep -P $NPID | tr '\n' ' ')"
declare -A R
# name:port:pids (pids comma-separated)
for target in direct:$P_PORT:$MPID nginx:$N_PORT:${NGINX_PIDS// /,} bare:$B_PORT:$BPID tollgate_nocache:$U_PORT:$UPID tollgate:$T_PORT:$TPID; do
  IFS=: read -r name port pids <<<"$target"
  pids=${pids//,/ }
  # direct needs the platform token itself; the bare proxy sends it for any caller.
  script=$WORK/get.lua; [ "$name" = direct ] && { sed "s/$KEY/$TOKEN/" "$WORK/get.lua" >"$WORK/get_direct.lua"; script=$WORK/get_direct.lua; }
  gen=$GEN; [ "$name" = tollgate_nocache ] && gen=$GEN_NC
  # shellcheck disable=SC2086
  R[status_$name]=$(run "status_$name" "$port" 64 "$script" "/v1/sora/generations/$gen/" $pids)
  # Generates once per proxy: the cache only concerns polls.
  [ "$name" = tollgate ] && continue
  for size in small 1m 10m; do
    # Small paid requests come many at a time; image uploads a few.
    conns=4; [ $size = small ] && conns=32
    s=$WORK/post_$size.lua; [ "$name" = direct ] && { sed "s/$KEY/$TOKEN/" "$s" >"$WORK/post_${size}_direct.lua"; s=$WORK/post_${size}_direct.lua; }
    # shellcheck disable=SC2086
    R[gen${size}_$name]=$(run "gen${size}_$name" "$port" $conns "$s" /v1/sora/generate $pids)
  done
done

# Peak RSS of tollgate under 20 concurrent 10 MiB uploads (fresh high-water mark).
echo 5 >/proc/$TPID/clear_refs 2>/dev/null || true
BASE_HWM=$(awk '/VmHWM/ {print $2}' /proc/$TPID/status)
wrk -t2 -c20 -d"${DUR}s" -s "$WORK/post_10m.lua" "http://127.0.0.1:$T_PORT/v1/sora/generate" >"$WORK/wrk_rss.txt" 2>&1 &
WPID=$!
PEAK=0
while kill -0 $WPID 2>/dev/null; do
  r=$(awk '/VmRSS/ {print $2}' /proc/$TPID/status); [ "$r" -gt "$PEAK" ] && PEAK=$r
  sleep 0.05
done
HWM=$(awk '/VmHWM/ {print $2}' /proc/$TPID/status)
BODY_BYTES=$(stat -c %s "$WORK/body_10m.json")

echo "worker threads per proxy: $WORKERS"
echo "gateway binary: $GATEWAY"
printf '\n%-24s %10s %9s %9s %7s %12s\n' workload req/s p50_ms p99_ms non2xx cpu_us/req
for w in status gensmall gen1m gen10m; do
  names="direct nginx bare tollgate_nocache"; [ $w = status ] && names="direct nginx bare tollgate_nocache tollgate"
  for name in $names; do
    read -r rps p50 p99 bad cpu <<<"${R[${w}_$name]}"
    label=$name; [ $w != status ] && [ $name = tollgate_nocache ] && label=tollgate
    [ $w = status ] && [ $name = tollgate ] && label="tollgate (cache on)"
    printf '%-24s %10s %9s %9s %7s %12s\n' "$w/$label" "$rps" "$p50" "$p99" "$bad" "$cpu"
  done
done
ratio() { python3 -c "print(round(float('$1')/float('$2'), 2))"; }
vs_nginx() {
  read -r t_rps t_p50 t_p99 _ t_cpu <<<"${R[$2]}"
  read -r n_rps n_p50 n_p99 _ n_cpu <<<"${R[$3]}"
  echo "$1: throughput $(ratio "$t_rps" "$n_rps")x nginx, p99 $(ratio "$t_p99" "$n_p99")x, CPU/request $(ratio "$t_cpu" "$n_cpu")x," \
       "p50 added $(python3 -c "print(round($t_p50-$n_p50, 3))") ms"
}
echo
echo "Headline, forwarding every request (status cache off), against nginx in the same run:"
vs_nginx "  tollgate, status polls" status_tollgate_nocache status_nginx
vs_nginx "  tollgate, small paid generate" gensmall_tollgate_nocache gensmall_nginx
vs_nginx "  tollgate, 1 MiB generate" gen1m_tollgate_nocache gen1m_nginx
vs_nginx "  tollgate, 10 MiB generate" gen10m_tollgate_nocache gen10m_nginx
echo "The floor for this stack (zero-policy hyper proxy):"
vs_nginx "  bare hyper, status polls" status_bare status_nginx
vs_nginx "  bare hyper, 10 MiB generate" gen10m_bare gen10m_nginx
echo "A separate feature, not a forwarding figure: the status cache (1 s) answers repeat polls from memory:"
vs_nginx "  tollgate (cache on), status polls" status_tollgate status_nginx
echo
echo "tollgate RSS idle: $((IDLE_RSS / 1024)) MiB"
echo "tollgate RSS peak under 20 concurrent 10 MiB uploads: sampled $((PEAK / 1024)) MiB, VmHWM $((HWM / 1024)) MiB" \
     "(bytes in flight: 20 x $((BODY_BYTES / 1024 / 1024)) MiB = $((20 * BODY_BYTES / 1024 / 1024)) MiB;" \
     "ratio $(python3 -c "print(round($HWM*1024/(20*$BODY_BYTES), 2))"))"
echo "raw wrk output: $WORK"
