#!/usr/bin/env bash
# The control socket, measured on the hello example (--release):
#
#   status   round trip of `status` (connect, request, the whole reply, close) with
#            $WORKERS_STATUS workers (64), $STATUS_REQUESTS (1000) back to back from one client
#            (python3, the stdlib's socket module); p50, p99, max. Then the same with the
#            `metrics` request.
#   upgrade  $UPGRADES (10) binary upgrades of a 4-worker server, alternating: `hello ctl
#            upgrade` timed from its start to its exit (the answer), and `kill -USR2` timed
#            from the signal to the PID file naming the new master (written by the new master
#            when its workers serve, polled every 0.5 ms). Median and max of each, and their
#            ratio.
#   loaded   the p99 latency of a loopback HTTP load (prefork-load, 4 keep-alive clients,
#            $LOADED_SECS (5) s per window) on 4 workers, in $LOADED_PAIRS (5) pairs of windows:
#            one with nothing else, then one while a client sends 1,000 `status` requests
#            back to back (or as many as fit in the window).
#
# Usage: benches/control.sh [status] [upgrade] [loaded]   (all by default). Loopback and a temporary
# directory only; every server started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(status upgrade loaded)
command -v python3 >/dev/null || { echo "control.sh: python3 is required" >&2; exit 1; }

cargo build --release --quiet --example hello
cargo build --release --quiet -p prefork-demos --bin prefork-load
load_bin=target/release/prefork-load
tmp=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # A new master of the last upgrade, if any, is named by the PID file.
    [ -f "$tmp/hello.pid" ] && kill -TERM "$(cat "$tmp/hello.pid")" 2>/dev/null || true
  fi
  sleep 0.5
  rm -rf "$tmp"
}
trap cleanup EXIT
cp target/release/examples/hello "$tmp/hello"

start() { # workers
  : >"$tmp/log"
  rm -f "$tmp/hello.pid"
  setsid "$tmp/hello" --workers "$1" --addr 127.0.0.1:0 --control "$tmp/c.sock" \
    --pid-file "$tmp/hello.pid" >>"$tmp/log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    [ -f "$tmp/hello.pid" ] && return 0
    sleep 0.05
  done
  echo "control.sh: the server did not become ready" >&2
  tail -20 "$tmp/log" >&2
  exit 1
}

stop() {
  local pid
  pid=$(cat "$tmp/hello.pid")
  "$tmp/hello" ctl --control "$tmp/c.sock" stop >/dev/null
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  server_pid=""
}

if [[ " ${sections[*]} " == *" status "* ]]; then
  workers=${WORKERS_STATUS:-64}
  n=${STATUS_REQUESTS:-1000}
  start "$workers"
  python3 - "$tmp/c.sock" "$n" "$workers" <<'EOF'
import socket, sys, time
path, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for command in (b"status\n", b"metrics\n"):
    times, size = [], 0
    for _ in range(n):
        t = time.perf_counter_ns()
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(command)
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        s.close()
        times.append(time.perf_counter_ns() - t)
        size = len(reply)
        assert reply.startswith(b'{"v":1,"ok":true'), reply[:200]
    times.sort()
    us = lambda q: times[min(len(times) - 1, int(q * len(times)))] / 1e3
    print(f"{command.decode().strip()} with {workers} workers: {n} round trips, reply {size} bytes: "
          f"p50 {us(0.5):.0f} us, p99 {us(0.99):.0f} us, max {times[-1] / 1e3:.0f} us")
EOF
  stop
fi

if [[ " ${sections[*]} " == *" upgrade "* ]]; then
  rounds=${UPGRADES:-10}
  start 4
  ctl_ms=()
  usr2_ms=()
  for i in $(seq 1 "$rounds"); do
    old=$(cat "$tmp/hello.pid")
    t0=$(date +%s%N)
    reply=$("$tmp/hello" ctl --control "$tmp/c.sock" upgrade)
    t1=$(date +%s%N)
    case "$reply" in *'"ok":true'*) ;; *) echo "upgrade failed: $reply" >&2; exit 1 ;; esac
    while kill -0 "$old" 2>/dev/null; do sleep 0.05; done
    ctl_ms+=("$(( (t1 - t0) / 1000 ))")
    old=$(cat "$tmp/hello.pid")
    t0=$(date +%s%N)
    kill -USR2 "$old"
    while [ "$(cat "$tmp/hello.pid" 2>/dev/null)" = "$old" ]; do sleep 0.0005; done
    t1=$(date +%s%N)
    while kill -0 "$old" 2>/dev/null; do sleep 0.05; done
    usr2_ms+=("$(( (t1 - t0) / 1000 ))")
  done
  python3 - "${ctl_ms[*]}" "${usr2_ms[*]}" <<'EOF'
import statistics, sys
ctl = [int(x) / 1e3 for x in sys.argv[1].split()]
usr2 = [int(x) / 1e3 for x in sys.argv[2].split()]
m_ctl, m_usr2 = statistics.median(ctl), statistics.median(usr2)
print(f"upgrade, 4 workers, {len(ctl)} each: ctl upgrade to its answer median {m_ctl:.1f} ms "
      f"(max {max(ctl):.1f}); USR2 to the new master's PID file median {m_usr2:.1f} ms "
      f"(max {max(usr2):.1f}); ratio {m_ctl / m_usr2:.2f}")
EOF
  stop
fi

if [[ " ${sections[*]} " == *" loaded "* ]]; then
  secs=${LOADED_SECS:-5}
  pairs=${LOADED_PAIRS:-5}
  start 4
  # The workers announce their address on stdout, which went to the log.
  addr=$(grep -m1 -o 'serving http://[0-9.:]*' "$tmp/log" | sed 's|serving http://||')
  p99() { # the p99 of a prefork-load report that lost nothing
    python3 -c 'import json,sys
r = json.loads(sys.argv[1])
assert r["ok"] > 0 and r["ok"] == r["requests"], r
print(r["latency_us"]["p99"])' "$1"
  }
  quiet=()
  busy=()
  for i in $(seq 1 "$pairs"); do
    r=$("$load_bin" --addr "$addr" --conn keepalive --clients 4 --duration "$secs" 2>/dev/null)
    quiet+=("$(p99 "$r")")
    python3 - "$tmp/c.sock" "$secs" >"$tmp/status.out" <<'EOF' &
import socket, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
end, n = time.monotonic() + secs, 0
while n < 1000 and time.monotonic() < end:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"status\n")
    while s.recv(65536):
        pass
    s.close()
    n += 1
print(n)
EOF
    client=$!
    r=$("$load_bin" --addr "$addr" --conn keepalive --clients 4 --duration "$secs" 2>/dev/null)
    wait "$client"
    busy+=("$(p99 "$r")")
    echo "pair $i: p99 ${quiet[-1]} us alone, ${busy[-1]} us with $(cat "$tmp/status.out") status requests"
  done
  python3 - "${quiet[*]}" "${busy[*]}" <<'EOF'
import statistics, sys
quiet = [int(x) for x in sys.argv[1].split()]
busy = [int(x) for x in sys.argv[2].split()]
print(f"loaded: p99 median {statistics.median(quiet)} us alone (range {min(quiet)}-{max(quiet)}), "
      f"{statistics.median(busy)} us with status requests (range {min(busy)}-{max(busy)})")
EOF
  stop
fi
