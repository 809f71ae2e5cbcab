#!/usr/bin/env bash
# nginx in front of prefork on the same host: the hyper demo behind `proxy_pass` to a Unix
# socket against the same demo behind `proxy_pass` to TCP on loopback, measured with wrk
# through nginx, rounds alternating between the two, medians of requests per second and of
# p99 latency side by side.
#
#   unix  hyper --addr unix:DIR/app.sock, nginx proxy_pass http://unix:DIR/app.sock
#   tcp   hyper --addr 127.0.0.1:PORT,    nginx proxy_pass http://127.0.0.1:PORT
#
# Both use an upstream block with keep-alive connections to the backend (`keepalive 64`,
# HTTP/1.1), as a production proxy does; nginx and the demo each get `--workers` processes.
#
# Then (unless --profile no): `perf record -g` on the one worker of `hyper --workers 1`
# behind the same nginx over the Unix socket, under the same load, for --duration seconds;
# the frames of the library (symbols starting with `prefork::`) and of the tokio companion
# (`prefork_tokio::`) in `perf report --no-children`, with their self time. The library has
# no code on the request path: none of its frames is expected.
#
# usage: benches/proxy.sh [--rounds N] [--duration SECS] [--connections N] [--workers N]
#                         [--profile yes|no] [--port PORT] [--out DIR]
#
# Needs: cargo, wrk, nginx (installed with apt-get where missing and possible), awk, perf
# (linux-perf) for the profile (skipped, and said, without it). Results go to DIR (default
# target/bench-proxy): wrk outputs, nginx and server logs, the perf report, summary.md.
# Measure on an otherwise idle machine: wrk, nginx and the workers share the cores.
set -euo pipefail
. "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."

rounds=3
duration=5
connections=64
workers=""
profile=yes
port=18580
out=target/bench-proxy
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "proxy.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cores=$(nproc)
workers=${workers:-$cores}
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
install_missing proxy.sh "${missing[@]}"

cargo build --release -q -p prefork-demos --example hyper
hyper=target/release/examples/hyper
rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)
write_wrk_report "$out/report.lua"
front=$((port + 1))
sockets=$(mktemp -d)
chmod 755 "$sockets"

# proxy_conf DIR BACKEND: nginx on 127.0.0.1:$front proxying every request to BACKEND
# (`unix:/path` or `127.0.0.1:PORT`) over keep-alive connections.
proxy_conf() {
  local dir=$1 backend=$2
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $dir;
    proxy_temp_path $dir;
    upstream app {
        server $backend;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$front;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

server_pid=""
server_pgid=""
nginx_pid=""
cleanup() {
  if [ -n "$nginx_pid" ]; then kill -QUIT "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  stop_group proxy.sh "$server_pid" "$server_pgid"
  rm -rf "$sockets"
}
trap cleanup EXIT

# start_pair KIND DIR N: the demo with N workers on KIND's address and nginx in front of it,
# both answering when it returns.
start_pair() {
  local kind=$1 dir=$2 n=$3 addr backend
  mkdir -p "$dir"
  case "$kind" in
    unix) addr="unix:$sockets/app.sock"; backend="unix:$sockets/app.sock" ;;
    tcp) addr="127.0.0.1:$port"; backend="127.0.0.1:$port" ;;
  esac
  # nginx's workers run as an unprivileged user when it is started as root: the socket is
  # made for anyone to connect to (umask 0), in a directory anyone may enter.
  (umask 000; exec setsid "$hyper" --workers "$n" --addr "$addr") \
    >"$dir/server.out" 2>"$dir/server.err" &
  server_pid=$!
  server_pgid=$server_pid
  for _ in $(seq 500); do
    [ "$(grep -c ' serving ' "$dir/server.out" || true)" -ge "$n" ] && break
    sleep 0.01
  done
  proxy_conf "$dir" "$backend"
  nginx -c "$dir/nginx.conf" -p "$dir" >"$dir/nginx.out" 2>&1 &
  nginx_pid=$!
  if ! http_ready "$front" 500 0.01; then
    echo "proxy.sh: nginx in front of $kind does not answer" >&2
    exit 1
  fi
}

# stop_pair: nginx, then the demo.
stop_pair() {
  kill -QUIT "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  nginx_pid=""
  stop_group proxy.sh "$server_pid" "$server_pgid"
  server_pid=""
  server_pgid=""
}

# run_one KIND ROUND: starts the demo and nginx for KIND, measures, stops both.
run_one() {
  local kind=$1 round=$2 dir=$out/$1-$2
  mkdir -p "$dir"
  start_pair "$kind" "$dir" "$workers"
  wrk -t "$(( cores < 4 ? cores : 4 ))" -c "$connections" -d "${duration}s" \
    -s "$out/report.lua" "http://127.0.0.1:$front/" >"$dir/wrk.txt"
  stop_pair
  local rps p99 errors
  rps=$(awk '/^REQUESTS/ { printf "%.0f", $2 / ($3 / 1e6) }' "$dir/wrk.txt")
  p99=$(awk '/^LATENCY_US/ { print $3 }' "$dir/wrk.txt")
  errors=$(awk '/^ERRORS/ { print $2 + $3 + $4 + $5 + $6 }' "$dir/wrk.txt")
  echo "$kind $round $rps $p99 $errors" >>"$out/results.txt"
  echo "round $round $kind: $rps requests/s, p99 $p99 µs, $errors errors"
}

for r in $(seq "$rounds"); do
  # Alternating, so that a change of the machine's load falls on both.
  if [ $((r % 2)) = 1 ]; then run_one unix "$r"; run_one tcp "$r"; else run_one tcp "$r"; run_one unix "$r"; fi
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
{
  echo "# nginx in front of the hyper demo: Unix socket vs TCP"
  echo
  echo "$cores cores, $workers nginx workers and $workers prefork workers, wrk -c $connections," \
    "${duration} s per run, medians of $rounds rounds"
  echo
  echo "| backend | requests/s | p99 (µs) | errors |"
  echo "|---|---|---|---|"
  for kind in unix tcp; do
    rps=$(awk -v k="$kind" '$1 == k { print $3 }' "$out/results.txt" | median)
    p99=$(awk -v k="$kind" '$1 == k { print $4 }' "$out/results.txt" | median)
    errors=$(awk -v k="$kind" '$1 == k { s += $5 } END { print s + 0 }' "$out/results.txt")
    echo "| $kind | $rps | $p99 | $errors |"
  done
} | tee "$out/summary.md"

if [ "$profile" = yes ] && command -v perf >/dev/null 2>&1; then
  dir=$out/profile
  mkdir -p "$dir"
  start_pair unix "$dir" 1
  worker=$(pgrep -P "$server_pid" | head -n1 || true)
  if [ -n "$worker" ]; then
    wrk -t "$(( cores < 4 ? cores : 4 ))" -c "$connections" -d "$((duration + 2))s" \
      "http://127.0.0.1:$front/" >"$dir/wrk.txt" &
    wrk_pid=$!
    sleep 1
    perf record -q -g -p "$worker" -o "$dir/perf.data" -- sleep "$duration" >/dev/null 2>&1 || true
    wait "$wrk_pid" || true
    perf report -i "$dir/perf.data" --stdio --no-children --sort symbol 2>/dev/null >"$dir/perf.txt" || true
    samples=$(awk '/^# Samples:/ { print $3; exit }' "$dir/perf.txt")
    {
      echo
      echo "Profile: the one worker of \`hyper --workers 1\` behind nginx over the Unix socket," \
        "perf record -g for ${duration} s (${samples:-?} samples); self time of the frames of"
      echo "the library (prefork::) and of the tokio companion (prefork_tokio::):"
      echo
      echo '```'
      grep -E '^ +[0-9.]+%.* prefork(_tokio)?::' "$dir/perf.txt" | sed -E 's/[[:space:]-]+$//' ||
        echo "(none)"
      echo '```'
    } | tee -a "$out/summary.md"
  else
    echo "proxy.sh: no worker to profile" >&2
  fi
  stop_pair
elif [ "$profile" = yes ]; then
  echo "(profile skipped: perf is not installed)" | tee -a "$out/summary.md"
fi
