#!/usr/bin/env bash
# slow_clients — slowhttptest's three slow-client attacks against umbra while a
# normal client (wrk) measures its latency: a benchmark with figures, not a
# pass/fail test.
#
#   UMBRA_BIN=build/umbra bash tests/soak/slow_clients.sh        # defaults below
#   SECONDS_PER_ATTACK=30 CONNS=1000 RATE=200 bash tests/soak/slow_clients.sh
#
# Runs, on loopback: `umbra echo` (the primary for normal traffic), a Python
# static server with a 4 MiB file (what the slow readers fetch), and umbra
# with limits set as an operator would against these attacks. Then:
#   baseline    wrk alone
#   slowloris   slowhttptest -H: heads trickled forever (header_timeout)
#   slow body   slowhttptest -B: bodies trickled forever (min_body_rate)
#   slow read   slowhttptest -X: 4 MiB responses read a few bytes at a time (send_timeout)
# For each it prints wrk's p50/p99 and the p99 ratio against the baseline, and
# umbra's open client connections and RSS every 2 s.
# Needs: slowhttptest, wrk, curl (scripts/install-deps.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
umbra=${UMBRA_BIN:-$root/build/umbra}
secs=${SECONDS_PER_ATTACK:-30}
conns=${CONNS:-1000}
rate=${RATE:-200}

for tool in slowhttptest wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "slow_clients: $tool is missing" >&2; exit 2; }
done
[[ -x $umbra ]] || { echo "slow_clients: $umbra is not executable (set UMBRA_BIN)" >&2; exit 2; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/umbra-slow-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_log() { # FILE REGEX -> first capture group, within 10 s
  for _ in $(seq 100); do
    if m=$(grep -oE "$2" "$1" 2>/dev/null | head -1) && [[ -n $m ]]; then echo "${m##*:}"; return 0; fi
    sleep 0.1
  done
  echo "slow_clients: no '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

"$umbra" echo --listen 127.0.0.1:0 2>"$work/echo.log" & pids+=($!)
echo_port=$(wait_log "$work/echo.log" 'listening on 127\.0\.0\.1:[0-9]+')

mkdir -p "$work/static/big"
head -c $((4 << 20)) /dev/zero >"$work/static/big/file.bin"
static_port=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$work/static" "$static_port" >"$work/static.log" 2>&1 & pids+=($!)

cat >"$work/umbra.yaml" <<EOF
workers: 2
admin: {listen: 127.0.0.1:0}
listeners:
  - name: ingress
    listen: 127.0.0.1:0
    limits:
      header_timeout: 10s
      body_timeout: 10s
      min_body_rate: 1KiB
      send_timeout: 10s
      idle_timeout: 30s
      max_connections: 20000
clusters:
  - name: echo
    endpoints: [127.0.0.1:$echo_port]
  - name: static
    endpoints: [127.0.0.1:$static_port]
    max_connections: 4096
routes:
  - name: big
    match: {prefix: /big/}
    cluster: static
  - name: default
    match: {prefix: /}
    cluster: echo
EOF
"$umbra" -c "$work/umbra.yaml" 2>"$work/umbra.log" & umbra_pid=$!; pids+=($umbra_pid)
port=$(wait_log "$work/umbra.log" 'listener ingress listening on 127\.0\.0\.1:[0-9]+')
admin=$(wait_log "$work/umbra.log" 'admin listening on 127\.0\.0\.1:[0-9]+')
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$static_port/big/file.bin" -o /dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port"
echo "slow_clients: umbra $umbra on :$port (admin :$admin), $conns connections at $rate/s, ${secs}s per attack"

to_ms() { # wrk latency "123.45us" / "1.23ms" / "1.02s" -> milliseconds
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

measure() { # NAME DURATION -> prints and sets p50 p99
  local out
  out=$(wrk -t1 -c8 -d"${2}s" --timeout 10s --latency "$url/normal")
  p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")
  local rps errs
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  errs=$(echo "$out" | awk '/Socket errors|Non-2xx/ {printf "%s ", $0}')
  printf '  %-10s normal client: p50 %8.3f ms  p99 %8.3f ms  %s req/s %s\n' "$1" "$p50" "$p99" "$rps" "$errs"
}

sample() { # umbra's connections and RSS every 2 s until killed
  local t=0
  while :; do
    local rss cx
    rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$umbra_pid/status" 2>/dev/null || echo "?")
    cx=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '$1 == "umbra_downstream_connections_open" {print $2}')
    printf '    t=%3ds  client connections %6s  RSS %7s MB\n' "$t" "${cx:-?}" "$rss"
    sleep 2
    t=$((t + 2))
  done
}

timeouts() {
  curl -s "http://127.0.0.1:$admin/metrics" |
    awk -F'[{}"]' '/^umbra_downstream_timeouts_total/ {split($0, v, " "); printf "%s=%s ", $3, v[2]} END {print ""}'
}

measure baseline "$secs"
base_p99=$p99

attack() { # NAME slowhttptest-args...
  local name=$1
  shift
  echo "== $name: slowhttptest $*"
  sample & local sampler=$!
  slowhttptest "$@" -c "$conns" -r "$rate" -l "$secs" -u "$url$URL_PATH" -p 5 >"$work/$name.out" 2>&1 & local slow=$!
  sleep 5
  measure "$name" $((secs - 8))
  wait "$slow" || true
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  awk -v a="$p99" -v b="$base_p99" 'BEGIN { printf "  p99 ratio vs unloaded: %.2f\n", (b > 0 ? a / b : 0) }'
  echo "  slowhttptest: $(grep -E 'service available' "$work/$name.out" | tail -1 | sed 's/\x1b\[[0-9;]*m//g; s/^[[:space:]]*//; s/[[:space:]]\+/ /g')"
  echo "  timeouts so far: $(timeouts)"
}

URL_PATH=/slowloris attack slowloris -H -i 5 -x 24
URL_PATH=/slowbody attack slowbody -B -i 5 -s 1000000 -x 10
URL_PATH=/big/file.bin attack slowread -X -w 512 -y 1024 -n 5 -z 32 -k 1
echo "slow_clients: done"
