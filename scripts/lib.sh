# Helpers shared by scripts/test, scripts/api-check, scripts/check-deploy and the scripts in
# benches/ (sourced, not run).

# apt_install WHO PKG...: installs Debian packages as root or with passwordless sudo; otherwise
# prints the one line to run first and fails.
apt_install() {
  local who=$1 sudo
  shift
  if [ "$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$who: needs: $*" >&2
    echo "  install it first, e.g.: sudo apt-get install -y $*   (or your system's equivalent)" >&2
    return 1
  fi
  echo "$who: installing $* with apt-get" >&2
  # Quiet unless it fails: apt and debconf print notices a passing run should not show.
  local log; log=$(mktemp)
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

# Python tools live in one virtualenv under target/tools.
TOOLS_VENV=target/tools/venv

# venv_tool WHO EXE REQUIREMENT: installs REQUIREMENT (pinned) in the venv unless EXE is there.
venv_tool() {
  if [ ! -x "$TOOLS_VENV/bin/$2" ]; then
    echo "$1: installing $3 in $TOOLS_VENV" >&2
    python3 -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install -q --disable-pip-version-check "$3"
  fi
}

# free_port: prints a TCP port free on 127.0.0.1 right now (a child binds it soon after).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: waits up to 15 s for a listener on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on port $1" >&2
  return 1
}

# poll_bench_config FILE LISTEN_PORT ADMIN_PORT PLATFORM_PORT DB KEY: the gateway of the
# forwarding benches (profile.sh, instructions.sh): status cache off, SQLite at DB, one tenant
# holding KEY with limits high enough never to refuse.
poll_bench_config() {
  cat >"$1" <<TOML
[server]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
[upstream]
base_url = "http://127.0.0.1:$4"
token_env = "RUNBLOB_TOKEN"
status_cache_ms = 0
[store]
backend = "sqlite"
path = "$5"
[pricing]
sora = "0.12"
[[tenants]]
id = "bench"
keys_sha256 = ["$(printf %s "$6" | sha256sum | cut -d' ' -f1)"]
requests_per_second = 1000000
burst = 1000000
generations_per_minute = 1000000
TOML
}

# image_bodies DIR: writes DIR/body_1m.json and DIR/body_10m.json, Sora image-to-video requests
# whose image is a 1920x1080 PNG padded to 1 MiB and to 10 MiB, base64 (benches/load.sh and
# scripts/build-pgo send them).
image_bodies() {
  python3 - "$1" <<'EOF'
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
}
