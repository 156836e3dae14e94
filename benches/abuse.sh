#!/usr/bin/env bash
# Hostile-client bench: runs each attack against a local gateway (in front of the simulated
# platform) and, while it runs, times normal tenant requests. Prints one table row per attack:
# connections attempted, the normal request's p50 and max latency, failures, and the gateway's RSS.
#
#   benches/abuse.sh [--short] [--bin PATH]
#
# --short: 8 s per attack (CI); default 20 s. --bin: the tollgate binary (default: a release
# build, built if missing). Needs slowhttptest and h2load (Debian: slowhttptest, nghttp2-client),
# python3 and curl; installs the Debian packages with apt-get when run as root.
# Exit status: 1 if a normal request failed during any attack (or, without --short, took over 2 s;
# the short CI run uses a debug build on a shared machine, where only failures are meaningful).
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=20
SHORT=0
BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --short) DUR=8; SHORT=1 ;;
    --bin) BIN="$2"; shift ;;
    *) echo "usage: $0 [--short] [--bin PATH]" >&2; exit 2 ;;
  esac
  shift
done

need=()
command -v slowhttptest >/dev/null || need+=(slowhttptest)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "abuse.sh needs: ${need[*]} (sudo apt-get install -y ${need[*]})" >&2; exit 2
  fi
fi
if [ -z "$BIN" ]; then
  BIN=target/release/tollgate
  [ -x "$BIN" ] || cargo build --release --locked -q
fi

[ -x "$BIN" ] || { echo "abuse.sh: no tollgate binary at $BIN" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

. scripts/lib.sh

TOKEN=bench-platform-token
KEY=tg_abuse_bench_key
DIGEST=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)

# Free ports are picked, then bound by the children: another process can take one in between,
# so a start that does not come up is retried with other ports.
start_all() {
  P_PORT=$(free_port); T_PORT=$(free_port); A_PORT=$(free_port)
  "$BIN" mock-platform --listen "127.0.0.1:$P_PORT" >"$WORK/mock.log" 2>&1 &
  MPID=$!
  # Defaults everywhere that matters (header deadline, body budget); a small connection cap so a
  # few hundred sockets reach it.
  printf '%s\n' "[server]" "listen = \"127.0.0.1:$T_PORT\"" "admin_listen = \"127.0.0.1:$A_PORT\"" "max_connections = 512" \
    "[upstream]" "base_url = \"http://127.0.0.1:$P_PORT\"" "token_env = \"RUNBLOB_TOKEN\"" "[store]" "backend = \"memory\"" \
    "[pricing]" "sora = { \"10\" = \"0.12\", \"15\" = \"0.18\" }" "[[tenants]]" "id = \"bench\"" "keys_sha256 = [\"$DIGEST\"]" \
    "requests_per_second = 100000" "burst = 100000" "generations_per_minute = 100000" >"$WORK/tollgate.toml"
  RUNBLOB_TOKEN=$TOKEN "$BIN" run --config "$WORK/tollgate.toml" >"$WORK/tollgate.log" 2>&1 &
  GPID=$!
  wait_port "$P_PORT" && wait_port "$T_PORT" && wait_port "$A_PORT"
}
started=0
for attempt in 1 2 3; do
  if start_all; then started=1; break; fi
  kill "$MPID" "$GPID" 2>/dev/null || true
  echo "start attempt $attempt did not come up; retrying with other ports" >&2
done
if [ "$started" != 1 ]; then
  echo "the gateway or the simulated platform did not start:" >&2
  tail -5 "$WORK/mock.log" "$WORK/tollgate.log" >&2
  exit 1
fi
PIDS+=("$MPID" "$GPID")
URL="http://127.0.0.1:$T_PORT"

# Times one normal request every 250 ms for $1 seconds; prints "p50_ms max_ms failures".
probe() {
  local until=$(( $(date +%s) + $1 )) times=() fails=0 t code
  while [ "$(date +%s)" -lt "$until" ]; do
    out=$(curl -s -o /dev/null -m 10 -w '%{http_code} %{time_total}' "$URL/v1/data/balance" -H "Authorization: Bearer $KEY" || echo "000 10")
    code=${out%% *}; t=${out##* }
    [ "$code" = 200 ] || fails=$((fails + 1))
    times+=("$t")
    sleep 0.25
  done
  printf '%s\n' "${times[@]}" | sort -n | awk -v f="$fails" '{a[NR]=$1} END {printf "%.1f %.1f %d\n", a[int((NR+1)/2)]*1000, a[NR]*1000, f}'
}

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$GPID/status"; }

BAD=0
ROWS=()
row() { # name conns "p50 max fails"
  local name=$1 conns=$2; read -r p50 max fails <<<"$3"
  ROWS+=("| $name | $conns | $p50 | $max | $fails | $(rss_mb) |")
  [ "$SHORT" = 1 ] || ! awk -v m="$max" 'BEGIN {exit !(m > 2000)}' || BAD=1
  [ "$fails" = 0 ] || BAD=1
}

# Silent sockets: connect and never send a byte (or half an HTTP/2 preface).
silent() {
  python3 - "$T_PORT" "$1" "$2" >/dev/null 2>&1 <<'PY' &
import socket, sys, time
port, n, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks, end = [], time.time() + secs
while time.time() < end:
    while len(socks) < n:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            if len(socks) % 2:
                s.send(b"PRI * HTTP/2.0\r\n")
            socks.append(s)
        except OSError:
            break
    time.sleep(0.5)
    # Reopen whatever the gateway closed.
    alive = []
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                s.close(); continue
        except BlockingIOError:
            pass
        except OSError:
            s.close(); continue
        alive.append(s)
    socks = alive
PY
  echo $!
}

row "baseline (no attack)" 0 "$(probe 3)"

pid=$(silent 2000 "$DUR"); row "silent sockets + half h2 prefaces (reopened)" 2000 "$(probe "$DUR")"; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true

slowhttptest -q -c 1000 -H -i 10 -r 200 -t GET -u "$URL/v1/data/balance" -x 24 -p 3 -l "$DUR" -o "$WORK/sl" >/dev/null 2>&1 &
pid=$!; row "slowloris (slowhttptest -H)" 1000 "$(probe "$DUR")"; wait "$pid" 2>/dev/null || true

slowhttptest -q -c 1000 -B -i 10 -r 200 -s 16384 -t POST -u "$URL/v1/sora/generate" -x 10 -p 3 -l "$DUR" -o "$WORK/sb" >/dev/null 2>&1 &
pid=$!; row "slow body (slowhttptest -B)" 1000 "$(probe "$DUR")"; wait "$pid" 2>/dev/null || true

slowhttptest -q -c 1000 -X -r 200 -w 512 -y 1024 -n 5 -z 32 -k 3 -u "$URL/v1/data/balance" -p 3 -l "$DUR" -o "$WORK/sr" >/dev/null 2>&1 &
pid=$!; row "slow read (slowhttptest -X)" 1000 "$(probe "$DUR")"; wait "$pid" 2>/dev/null || true

timeout "$DUR" h2load -c 20 -m 256 -D "$DUR" -H "Authorization: Bearer $KEY" "$URL/v1/data/balance" >/dev/null 2>&1 &
pid=$!; row "h2 stream flood (h2load -c 20 -m 256)" 20 "$(probe "$DUR")"; wait "$pid" 2>/dev/null || true

timeout "$DUR" h2load -c 50 -m 64 -D "$DUR" -H "Authorization: Bearer wrong-key" "$URL/v1/data/balance" >/dev/null 2>&1 &
pid=$!; row "h2 wrong-key flood (h2load -c 50)" 50 "$(probe "$DUR")"; wait "$pid" 2>/dev/null || true

echo
echo "$BIN under attack, ${DUR} s each; normal request = GET /v1/data/balance every 250 ms"
echo
echo "| attack | connections | normal p50 ms | normal max ms | normal failures | gateway RSS MB |"
echo "|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
exit $BAD
