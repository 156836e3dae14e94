#!/usr/bin/env bash
# End-to-end load benchmark, all on loopback, all in one run so ratios compare like with like:
#   (a) the simulated platform directly,
#   (b) nginx as a plain reverse proxy in front of it (proxy_pass, upstream keepalive, one
#       worker, access log on),
#   (c) tollgate in front of it (auth, rate limits set high enough not to reject, ownership
#       check, SQLite store, JSON access log on).
# Workloads: status polling (GET /v1/sora/generations/{id}/, 64 connections) and paid generate
# with a 1 MiB and a 10 MiB base64 image. Prints a table and the ratios tollgate/nginx and
# tollgate/direct, then tollgate's RSS idle and under 20 concurrent 10 MiB uploads.
#
# Needs: wrk and nginx (apt-get install wrk nginx). Usage: bash benches/load.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx)"; exit 1; }

cargo build --release --quiet
BIN=target/release/tollgate
WORK=$(mktemp -d /tmp/tollgate-load.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened"; exit 1; }

TOKEN=bench-platform-token
KEY=bench-tenant-key
P_PORT=$(free_port); N_PORT=$(free_port); T_PORT=$(free_port); A_PORT=$(free_port); U_PORT=$(free_port); UA_PORT=$(free_port)

# (a) the simulated platform; generations stay pending (long step) so polls are uniform.
RUNBLOB_TOKEN=$TOKEN $BIN mock-platform --listen 127.0.0.1:$P_PORT --balance 1000000000 --step-ms 100000000 >"$WORK/mock.log" 2>&1 &
PIDS+=($!)

# (b) nginx, one worker, upstream keepalive, access log on, bodies buffered in memory.
mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
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
PIDS+=($!)

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
RUNBLOB_TOKEN=$TOKEN $BIN run --config "$WORK/tollgate.toml" >"$WORK/tollgate.log" 2>&1 &
TPID=$!
PIDS+=($TPID)
# The same gateway with the status cache off: every poll goes to the platform, as through nginx.
sed -e "s/127.0.0.1:$T_PORT/127.0.0.1:$U_PORT/" -e "s/127.0.0.1:$A_PORT/127.0.0.1:$UA_PORT/" -e "s#tollgate.db#nocache.db#" \
    -e 's/^token_env = "RUNBLOB_TOKEN"/token_env = "RUNBLOB_TOKEN"\nstatus_cache_ms = 0/' "$WORK/tollgate.toml" >"$WORK/nocache.toml"
RUNBLOB_TOKEN=$TOKEN $BIN run --config "$WORK/nocache.toml" >"$WORK/nocache.log" 2>&1 &
PIDS+=($!)
wait_port $P_PORT; wait_port $N_PORT; wait_port $T_PORT; wait_port $U_PORT

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
python3 - "$WORK" <<'EOF'
import base64, struct, sys, zlib
def png(w, h, size):
    ihdr = struct.pack(">II5B", w, h, 8, 6, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    pad = size - len(head) - 12 - 12
    text = b"tEXt" + b"a" * pad
    return head + struct.pack(">I", pad) + text + struct.pack(">I", zlib.crc32(text)) + struct.pack(">I", 0) + b"IEND" + b"\xaeB`\x82"
for name, size in (("1m", 1 << 20), ("10m", 10 << 20)):
    img = base64.b64encode(png(1920, 1080, size)).decode()
    open(f"{sys.argv[1]}/body_{name}.json", "w").write('{"prompt":"animate","image_base64":"%s"}' % img)
EOF

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
post_lua "$WORK/body_1m.json" >"$WORK/post_1m.lua"
post_lua "$WORK/body_10m.json" >"$WORK/post_10m.lua"

# run NAME PORT CONNS SCRIPT PATH → "rps p50_ms p99_ms non2xx"
run() {
  local out
  out=$(wrk -t2 -c"$3" -d"${DUR}s" --latency -s "$4" "http://127.0.0.1:$2$5" 2>&1)
  echo "$out" >"$WORK/wrk_$1.txt"
  local rps p50 p99 bad
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $5}' <<<"$out"); bad=${bad:-0}
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $bad"
}
to_ms() { python3 -c "
import re,sys; v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)', v)
n=float(m.group(1)); u=m.group(2); print(round(n/1000 if u=='us' else n*1000 if u=='s' else n, 3))" "$1"; }

STATUS=/v1/sora/generations/$GEN/
declare -A R
for target in direct:$P_PORT nginx:$N_PORT tollgate:$T_PORT; do
  name=${target%%:*}; port=${target##*:}
  # direct needs the platform token itself.
  script=$WORK/get.lua; [ "$name" = direct ] && { sed "s/$KEY/$TOKEN/" "$WORK/get.lua" >"$WORK/get_direct.lua"; script=$WORK/get_direct.lua; }
  R[status_$name]=$(run "status_$name" "$port" 64 "$script" "$STATUS")
  if [ "$name" = tollgate ]; then
    R[status_tollgate_nocache]=$(run status_tollgate_nocache "$U_PORT" 64 "$script" "/v1/sora/generations/$GEN_NC/")
  fi
  for size in 1m 10m; do
    s=$WORK/post_$size.lua; [ "$name" = direct ] && { sed "s/$KEY/$TOKEN/" "$s" >"$WORK/post_${size}_direct.lua"; s=$WORK/post_${size}_direct.lua; }
    R[gen${size}_$name]=$(run "gen${size}_$name" "$port" 4 "$s" /v1/sora/generate)
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

printf '\n%-22s %12s %10s %10s %8s\n' workload req/s p50_ms p99_ms non2xx
for w in status gen1m gen10m; do
  names="direct nginx tollgate"; [ $w = status ] && names="direct nginx tollgate tollgate_nocache"
  for name in $names; do
    read -r rps p50 p99 bad <<<"${R[${w}_$name]}"
    printf '%-22s %12s %10s %10s %8s\n' "$w/$name" "$rps" "$p50" "$p99" "$bad"
  done
done
ratio() { python3 -c "print(round(float('$1')/float('$2'), 3))"; }
echo
for w in status gen1m gen10m; do
  read -r t_rps t_p50 t_p99 _ <<<"${R[${w}_tollgate]}"
  read -r n_rps n_p50 n_p99 _ <<<"${R[${w}_nginx]}"
  read -r d_rps d_p50 d_p99 _ <<<"${R[${w}_direct]}"
  echo "$w: throughput tollgate/nginx $(ratio "$t_rps" "$n_rps")  tollgate/direct $(ratio "$t_rps" "$d_rps");" \
       "p99 tollgate/nginx $(ratio "$t_p99" "$n_p99");" \
       "p50 added over nginx $(python3 -c "print(round($t_p50-$n_p50, 3))") ms, over direct $(python3 -c "print(round($t_p50-$d_p50, 3))") ms"
done
read -r t_rps _ t_p99 _ <<<"${R[status_tollgate_nocache]}"
read -r n_rps _ n_p99 _ <<<"${R[status_nginx]}"
echo "status with the cache off: throughput tollgate/nginx $(ratio "$t_rps" "$n_rps"); p99 tollgate/nginx $(ratio "$t_p99" "$n_p99")"
echo
echo "tollgate RSS idle: $((IDLE_RSS / 1024)) MiB"
echo "tollgate RSS peak under 20 concurrent 10 MiB uploads: sampled $((PEAK / 1024)) MiB, VmHWM $((HWM / 1024)) MiB" \
     "(bytes in flight: 20 x $((BODY_BYTES / 1024 / 1024)) MiB = $((20 * BODY_BYTES / 1024 / 1024)) MiB;" \
     "ratio $(python3 -c "print(round($HWM*1024/(20*$BODY_BYTES), 2))"))"
echo "raw wrk output: $WORK"
