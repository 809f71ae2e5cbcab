#!/usr/bin/env bash
# Lifecycle benchmark on loopback: what clients see while the server restarts its workers,
# scales, or is upgraded, against the same load with no signal (steady state).
#
# Servers (n = --workers, 4 by default), each started afresh for every trial:
#   fork       the hello example (examples/hello.rs, --release), fork mode, one shared listener
#   reuseport  the same, --reuseport (one SO_REUSEPORT socket per worker, kept by the master)
#   exec       the same, --mode exec (every worker re-executes the binary)
#   nginx      nginx-light, n workers, `return 200` with the same body, a throw-away config
#
# Scenarios, each a window of --duration seconds under the same load:
#   steady     no signal: the baseline of every ratio
#   hup        three rolling restarts, at 1/4, 1/2 and 3/4 of the window (HUP to the master;
#              nginx: `nginx -s reload`)
#   scale      TTOU at 1/3 of the window, TTIN at 2/3 (ours only)
#   upgrade    binary upgrade at 1/2 of the window (ours only): the server runs from a copy of
#              hello in a temp dir; before USR2 that file is replaced (rename) by a wrapper
#              script that execs another copy, as a deploy replaces the program on disk.
#              Timed: USR2 to the old master's exit.
#   stopstart  what a deploy does without upgrades (ours only): TERM at 1/2 of the window,
#              wait for the master's exit, start the server again. Timed: TERM to the exit,
#              and the exit to the new server's first answer.
#
# The load, all at once for the whole window (closed loop: at most 10 requests in flight):
#   wrk -t1 -c8 with a 1 ms pause between a connection's requests (keep-alive): latency
#     percentiles from wrk's own histogram, and its socket errors (wrk counts a keep-alive
#     connection the server closes while it is idle as a read error: not a failed request)
#   prefork-load --conn new --clients 1: a new connection per request, every request's
#     outcome (ok, refused, reset, timeout, other) and its latency (connect included)
#   prefork-load --conn keepalive --clients 1: the same on one reused connection; a request
#     the server never started (its idle connection was closed) is retried, as HTTP allows
# Timeouts are 10 s (wrk and prefork-load), so that a stall of a shared machine shows as
# latency rather than as a failure; "stalled rounds" counts the rounds whose wrk maximum
# exceeds 100 ms, in steady state too.
#
# usage: benches/lifecycle.sh [--rounds N] [--duration SECS] [--workers N] [--port PORT]
#                             [--modes "fork reuseport exec nginx"]
#                             [--scenarios "steady hup scale upgrade stopstart"] [--out DIR]
#
# Needs: cargo, wrk, nginx (nginx-light), awk, setsid. Missing wrk/nginx are installed with
# apt-get where it is available (as root). Results go to DIR (default
# target/bench-lifecycle): every load report, server log, results.tsv, summary.md.
# Measure on an otherwise idle machine: the load and the servers share the cores.
set -euo pipefail
. "$(dirname "$0")/common.sh"
export LC_ALL=C # a decimal point in $EPOCHREALTIME and awk
cd "$(dirname "$0")/.."

rounds=5
duration=6
workers=4
port=18490
modes="fork reuseport exec nginx"
scenarios="steady hup scale upgrade stopstart"
out=target/bench-lifecycle
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    --scenarios) scenarios="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "lifecycle.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for m in $modes; do
  case "$m" in fork | reuseport | exec | nginx) ;; *) echo "lifecycle.sh: unknown mode $m" >&2; exit 2 ;; esac
done
for s in $scenarios; do
  case "$s" in steady | hup | scale | upgrade | stopstart) ;; *) echo "lifecycle.sh: unknown scenario $s" >&2; exit 2 ;; esac
done

cores=$(nproc)
addr="127.0.0.1:$port"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- tools -----------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
case " $modes " in
  *" nginx "*) command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light) ;;
esac
install_missing lifecycle.sh "${missing[@]}"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

echo "lifecycle.sh: building (release)"
cargo build --release --quiet --example hello --features control-client
cargo build --release --quiet -p prefork-demos --bin prefork-load
target="${CARGO_TARGET_DIR:-target}/release"

# Private copies: a rebuild in the checkout during the run changes nothing here, and the
# upgrade scenario replaces the server's program file.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/prefork-lifecycle.XXXXXX")
cp "$target/examples/hello" "$tmp/hello.build"
cp "$target/prefork-load" "$tmp/prefork-load"
load_bin="$tmp/prefork-load"

# --- processes -------------------------------------------------------------------------
# Every server runs in a process group of its own (setsid): its master, its workers and a
# master started by an upgrade (which is not this script's child) are stopped as a group.
server_pid=""  # the current master (nginx: its master process)
server_pgid="" # the group of the server's processes
loaders=()

# Stops the server: TERM to its master, up to 10 s for the group to end, then KILL.
stop_server() {
  stop_group lifecycle.sh "$server_pid" "$server_pgid"
  server_pid=""
  server_pgid=""
}

cleanup() {
  local p
  for p in "${loaders[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  stop_server
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Waits (bounded, 10 s) until a GET / is answered; polls every 5 ms.
wait_ready() {
  http_ready "$port" 2000 0.005 && return 0
  echo "lifecycle.sh: the server did not come up on $addr" >&2
  exit 1
}

nginx_dir="$tmp/nginx"

# start MODE LOG: starts a server in the background, in a new process group, and waits
# until it answers. Ours run from $tmp/hello, the file the upgrade scenario replaces.
start_server() {
  local mode=$1 log=$2
  case "$mode" in
    fork) setsid "$tmp/hello" --workers "$workers" --addr "$addr" >>"$log" 2>&1 & ;;
    reuseport) setsid "$tmp/hello" --workers "$workers" --addr "$addr" --reuseport >>"$log" 2>&1 & ;;
    exec) setsid "$tmp/hello" --workers "$workers" --addr "$addr" --mode exec >>"$log" 2>&1 & ;;
    nginx) setsid "$nginx_bin" -p "$nginx_dir" -c "$nginx_dir/nginx.conf" -e "$nginx_dir/error.log" >>"$log" 2>&1 & ;;
  esac
  # setsid execs in place (a background job of a script is no group leader), so $! is the
  # master and the group's id.
  server_pid=$!
  server_pgid=$!
  wait_ready
}

# The wrapper that replaces the program file before USR2: the "new build". It notes its
# pid (the new master's: it execs in place) unless it runs as an exec-mode worker.
cat >"$tmp/hello.wrapper" <<EOF
#!/bin/sh
[ -n "\${FASTHTTP_PREFORK_CHILD:-}" ] || echo \$\$ >"$tmp/new-master.pid"
exec "$tmp/hello.new" "\$@"
EOF
chmod +x "$tmp/hello.wrapper"
cp "$tmp/hello.build" "$tmp/hello.new"
nginx_conf "$nginx_dir" "$workers" "$addr"

# wrk: a 1 ms pause between a connection's requests; latency percentiles (µs) and errors
# from wrk's own histogram and counters.
cat >"$out/paced.lua" <<'EOF'
function delay()
  return 1
end
done = function(summary, latency, requests)
  io.write(string.format("LATENCY_US %d %d %d %d\n", latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9), latency.max))
  local e = summary.errors
  io.write(string.format("ERRORS %d %d %d %d %d\n", e.connect, e.read, e.write, e.status,
    e.timeout))
  io.write(string.format("REQUESTS %d\n", summary.requests))
end
EOF

ms_since() { # $1: an $EPOCHREALTIME value; prints the milliseconds since, to 0.1 ms
  awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", (b - a) * 1000 }'
}

# A number from prefork-load's JSON line: json KEY FILE (0 if absent: the trial's note
# says the report is missing).
json() {
  local v
  v=$(sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$2" | head -n 1)
  echo "${v:-0}"
}

# --- one trial -------------------------------------------------------------------------
# trial ROUND MODE SCENARIO: starts the server, loads it for the window while the scenario
# runs, stops it, appends a line to results.tsv.
trial() {
  local round=$1 mode=$2 scen=$3
  local tag="$mode-$scen-$round"
  local log="$out/server-$tag.log"
  : >"$log"
  cp "$tmp/hello.build" "$tmp/hello"
  rm -f "$tmp/new-master.pid"
  start_server "$mode" "$log"
  local old_master=$server_pid
  "$load_bin" --addr "$addr" --conn new --clients 1 --duration 1 --timeout 2000 >/dev/null 2>&1 # warm-up

  wrk -t1 -c8 -d"${duration}s" --timeout 10s -s "$out/paced.lua" "http://$addr/" >"$out/wrk-$tag.txt" 2>&1 &
  loaders=($!)
  "$load_bin" --addr "$addr" --conn new --clients 1 --duration "$duration" --timeout 10000 \
    >"$out/new-$tag.json" 2>"$out/new-$tag.err" &
  loaders+=($!)
  "$load_bin" --addr "$addr" --conn keepalive --clients 1 --duration "$duration" --timeout 10000 \
    >"$out/ka-$tag.json" 2>"$out/ka-$tag.err" &
  loaders+=($!)
  local t_start=$EPOCHREALTIME
  # at FRACTION: sleeps until that fraction of the window has passed.
  at() {
    local left
    left=$(awk -v f="$1" -v d="$duration" -v s="$t_start" -v n="$EPOCHREALTIME" \
      'BEGIN { l = f * d - (n - s); printf "%.3f", (l > 0 ? l : 0) }')
    sleep "$left"
  }
  local event1="-" event2="-" note=""
  case "$scen" in
    steady) ;;
    hup)
      for f in 0.25 0.5 0.75; do
        at "$f"
        if [ "$mode" = nginx ]; then
          "$nginx_bin" -p "$nginx_dir" -c "$nginx_dir/nginx.conf" -e "$nginx_dir/error.log" -s reload \
            >>"$log" 2>&1
        else
          kill -HUP "$server_pid"
        fi
      done
      ;;
    scale)
      at 0.333; kill -TTOU "$server_pid"
      at 0.667; kill -TTIN "$server_pid"
      ;;
    upgrade)
      at 0.5
      cp "$tmp/hello.wrapper" "$tmp/hello.next"
      mv -f "$tmp/hello.next" "$tmp/hello"
      local t0=$EPOCHREALTIME
      kill -USR2 "$server_pid"
      wait "$server_pid" || note="old master exit status $?"
      event1=$(ms_since "$t0")
      if [ -s "$tmp/new-master.pid" ]; then
        server_pid=$(cat "$tmp/new-master.pid")
      else
        note="no new master"
        server_pid=""
      fi
      ;;
    stopstart)
      at 0.5
      local t0=$EPOCHREALTIME
      kill -TERM "$server_pid"
      wait "$server_pid" || note="exit status $?"
      event1=$(ms_since "$t0")
      local t1=$EPOCHREALTIME
      start_server "$mode" "$log"
      event2=$(ms_since "$t1")
      ;;
  esac
  local p
  for p in "${loaders[@]}"; do wait "$p" || true; done
  loaders=()
  if [ -n "$server_pid" ] && ! kill -0 "$server_pid" 2>/dev/null; then note="${note:+$note; }server gone"; fi
  stop_server

  local wf="$out/wrk-$tag.txt" nf="$out/new-$tag.json" kf="$out/ka-$tag.json"
  local lat err wreq nreq nfail np99 nmax kreq kfail kp99 kretry kreconn killed
  lat=$(awk '/^LATENCY_US/ {print $2 "\t" $3 "\t" $4 "\t" $5}' "$wf")
  err=$(awk '/^ERRORS/ {print $2 "/" $3 "/" $4 "/" $5 "/" $6}' "$wf")
  wreq=$(awk '/^REQUESTS/ {print $2}' "$wf")
  if [ -z "$lat" ] || [ -z "$err" ] || [ -z "$wreq" ]; then
    lat=$(printf -- '-\t-\t-\t-') err="0/0/0/0/0" wreq=0 note="${note:+$note; }no wrk report"
  fi
  local f
  for f in "$nf" "$kf"; do
    grep -q '"requests"' "$f" || note="${note:+$note; }no report in $(basename "$f")"
  done
  nreq=$(json requests "$nf")
  nfail=$(($(json refused "$nf") + $(json reset "$nf") + $(json timeout "$nf") + $(json other "$nf")))
  np99=$(json p99 "$nf")
  nmax=$(json max "$nf")
  kreq=$(json requests "$kf")
  kfail=$(($(json refused "$kf") + $(json reset "$kf") + $(json timeout "$kf") + $(json other "$kf")))
  kp99=$(json p99 "$kf")
  kretry=$(json retried "$kf")
  kreconn=$(json reconnects "$kf")
  # Workers the master had to KILL because their drain outlived the grace period.
  killed=$(grep -c 'did not finish draining' "$log" || true)
  if [ "$scen" = hup ] && [ "$mode" != nginx ]; then
    local done
    done=$(grep -c 'rolling restart done' "$log" || true)
    [ "$done" = 3 ] || note="${note:+$note; }$done of 3 rolling restarts finished"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$round" "$mode" "$scen" "$wreq" "$lat" "$err" "$nreq" "$nfail" "$np99" "$nmax" \
    "$kreq" "$kfail" "$kp99" "$kretry" "$kreconn" "$killed" "$event1" "$event2" "${note:--}" >>"$results"
  printf '  round %s %-9s %-9s wrk p99 %s µs, errors %s | new: %s req, %s failed, p99 %s µs | keep-alive: %s req, %s failed | %s %s %s\n' \
    "$round" "$mode" "$scen" "$(cut -f2 <<<"$lat")" "$err" "$nreq" "$nfail" "$np99" "$kreq" "$kfail" \
    "$event1" "$event2" "$note"
}

# --- rounds ------------------------------------------------------------------------------
results="$out/results.tsv"
printf 'round\tmode\tscenario\twrk_requests\twrk_p50\twrk_p99\twrk_p999\twrk_max\twrk_errors_c/r/w/s/t\tnew_requests\tnew_failed\tnew_p99\tnew_max\tka_requests\tka_failed\tka_p99\tka_retried\tka_reconnects\tdrain_kills\tevent_ms\tevent2_ms\tnote\n' >"$results"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "lifecycle.sh: $rounds rounds, ${duration}s windows, $workers workers, $cores cores; modes: $modes; scenarios: $scenarios"
for round in $(seq "$rounds"); do
  for mode in $modes; do
    for scen in $scenarios; do
      if [ "$mode" = nginx ] && [ "$scen" != steady ] && [ "$scen" != hup ]; then continue; fi
      trial "$round" "$mode" "$scen"
    done
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- summary -----------------------------------------------------------------------------
summary="$out/summary.md"
awk -F'\t' -v cores="$cores" -v rounds="$rounds" -v dur="$duration" -v n="$workers" \
  -v la0="$load_start" -v la1="$load_end" -v modes="$modes" -v scens="$scenarios" '
  NR == 1 { next }
  {
    k = $2 SUBSEP $3; c = ++cnt[k]
    wrps[k, c] = $4 / dur; wp50[k, c] = $5; wp99[k, c] = $6; wp999[k, c] = $7; wmax[k, c] = $8
    np99[k, c] = $12; nmax[k, c] = $13; kp99[k, c] = $16; ev1[k, c] = $20; ev2[k, c] = $21
    wreq[k] += $4; nreq[k] += $10; nfail[k] += $11; kreq[k] += $14; kfail[k] += $15
    kretry[k] += $17; kreconn[k] += $18; kills[k] += $19
    if ($8 != "-" && $8 > 100000) stalls[k]++
    split($9, e, "/"); for (i = 1; i <= 5; i++) werr[k, i] += e[i]
    if ($22 != "-") notes[k] = notes[k] (notes[k] == "" ? "" : "; ") "round " $1 ": " $22
  }
  function median(arr, k, m,   i, j, v, t, q) {
    q = 0
    for (i = 1; i <= m; i++) if (arr[k, i] != "-" && arr[k, i] != "") { q++; v[q] = arr[k, i] + 0 }
    if (q == 0) return "-"
    for (i = 1; i <= q; i++) for (j = i + 1; j <= q; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return (q % 2) ? v[(q + 1) / 2] : (v[q / 2] + v[q / 2 + 1]) / 2
  }
  function range(arr, k, m,   i, lo, hi, x) {
    lo = ""; hi = ""
    for (i = 1; i <= m; i++) { x = arr[k, i]; if (x == "-" || x == "") continue; x += 0
      if (lo == "" || x < lo) lo = x; if (hi == "" || x > hi) hi = x }
    return lo == "" ? "-" : sprintf("%.1f to %.1f", lo, hi)
  }
  function ratio(a, b) { return (a == "-" || b == "-" || b == 0) ? "-" : sprintf("%.2f", a / b) }
  END {
    name["fork"] = "prefork fork, shared listener"; name["reuseport"] = "prefork fork, reuseport"
    name["exec"] = "prefork exec"; name["nginx"] = "nginx"
    what["steady"] = "steady (no signal)"; what["hup"] = "3 x HUP"; what["scale"] = "TTOU, TTIN"
    what["upgrade"] = "USR2 upgrade"; what["stopstart"] = "TERM, exit, start"
    nm = split(modes, M, " "); ns = split(scens, S, " ")
    printf "%s rounds of %s s per trial, %s workers, medians over rounds (sums for counts); %s cores, shared with the load; load average %s at start, %s at end\n\n", rounds, dur, n, cores, la0, la1
    printf "Failed requests (sums over %s rounds; %s cores)\n\n", rounds, cores
    printf "| server | scenario | new-conn requests | new-conn failed | keep-alive requests | keep-alive failed | keep-alive retried / reconnects | wrk requests | wrk socket errors connect/read/write/status/timeout | drains KILLed |\n"
    printf "|---|---|---:|---:|---:|---:|---:|---:|---|---:|\n"
    for (a = 1; a <= nm; a++) for (b = 1; b <= ns; b++) {
      k = M[a] SUBSEP S[b]; if (!(k in cnt)) continue
      printf "| %s | %s | %d | %d | %d | %d | %d / %d | %d | %d/%d/%d/%d/%d | %d |\n", name[M[a]], what[S[b]],
        nreq[k], nfail[k], kreq[k], kfail[k], kretry[k], kreconn[k], wreq[k],
        werr[k, 1], werr[k, 2], werr[k, 3], werr[k, 4], werr[k, 5], kills[k]
    }
    printf "\nLatency (µs, median over %s rounds; %s cores; x steady: over the same server'"'"'s steady state in this run)\n\n", rounds, cores
    printf "| server | scenario | wrk req/s | wrk p50 | wrk p99 | x steady | wrk p99.9 | wrk max | stalled rounds | new-conn p99 | x steady | new-conn max | keep-alive p99 | x steady |\n"
    printf "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    for (a = 1; a <= nm; a++) {
      s0 = M[a] SUBSEP "steady"
      W0 = (s0 in cnt) ? median(wp99, s0, cnt[s0]) : "-"
      N0 = (s0 in cnt) ? median(np99, s0, cnt[s0]) : "-"
      K0 = (s0 in cnt) ? median(kp99, s0, cnt[s0]) : "-"
      for (b = 1; b <= ns; b++) {
        k = M[a] SUBSEP S[b]; if (!(k in cnt)) continue; m = cnt[k]
        W = median(wp99, k, m); N = median(np99, k, m); K = median(kp99, k, m)
        printf "| %s | %s | %.0f | %s | %s | %s | %s | %s | %d of %d | %s | %s | %s | %s | %s |\n", name[M[a]], what[S[b]],
          median(wrps, k, m), median(wp50, k, m), W, ratio(W, W0), median(wp999, k, m), median(wmax, k, m),
          stalls[k], m, N, ratio(N, N0), median(nmax, k, m), K, ratio(K, K0)
      }
    }
    hdr = 0
    for (a = 1; a <= nm; a++) for (b = 1; b <= ns; b++) {
      k = M[a] SUBSEP S[b]; if (!(k in cnt) || (S[b] != "upgrade" && S[b] != "stopstart")) continue
      if (!hdr) {
        printf "\nTimes (ms, median and range over %s rounds; %s cores)\n\n", rounds, cores
        printf "| server | scenario | signal to the old master'"'"'s exit | range | exit to the new server'"'"'s first answer | range |\n"
        printf "|---|---|---:|---|---:|---|\n"; hdr = 1
      }
      m = cnt[k]
      printf "| %s | %s | %s | %s | %s | %s |\n", name[M[a]], what[S[b]], median(ev1, k, m), range(ev1, k, m),
        median(ev2, k, m), range(ev2, k, m)
    }
    first = 1
    for (a = 1; a <= nm; a++) for (b = 1; b <= ns; b++) {
      k = M[a] SUBSEP S[b]; if (notes[k] == "") continue
      if (first) { printf "\nNotes\n\n"; first = 0 }
      printf "* %s, %s: %s\n", name[M[a]], what[S[b]], notes[k]
    }
  }' "$results" >"$summary"
echo
cat "$summary"
echo
echo "lifecycle.sh: results in $out"
