#!/usr/bin/env bash
# HTTP benchmark on loopback: the same hyper "hello" handler served five ways, measured
# with wrk, several rounds, medians reported with the core count beside every figure.
#
#   a  prefork, fork mode, n = cores workers, one shared listener
#   b  prefork, fork mode, n = cores workers, one SO_REUSEPORT socket per worker
#   c  one process, tokio multi-thread runtime with `cores` threads (`hyper --single`): the
#      baseline every ratio is taken against
#   d  prefork, exec mode, n = cores workers, shared listener
#   e  nginx, `cores` workers, `return 200` with a body of the same length
#
# Then a perf profile of one worker of (a) under the same load, to show where a request's
# time goes (and that no prefork code is on the request path).
#
# usage: benches/http.sh [--rounds N] [--duration SECS] [--connections N] [--threads N]
#                        [--port PORT] [--no-perf] [--out DIR]
#                        [--pin | --server-cpus LIST --client-cpus LIST] [--pace-ms MS]
#
# Each setup is measured twice per round: saturated (every wrk connection sends its next
# request as soon as the answer arrives: the most requests per second, and latencies that
# are mostly queueing) and paced (each connection waits --pace-ms, default 1, after every
# answer before it sends again, with wrk's Lua `delay`: a load well below saturation, where
# latencies are the servers' own). --pace-ms 0 skips the paced runs.
#
# By default the servers and wrk share every core, and "cores" (the number of workers, of
# runtime threads, of nginx workers) is the machine's. With --server-cpus and --client-cpus
# (taskset CPU lists, such as 1 or 4-7) the servers run on the first list only and wrk on the
# second, and "cores" is the size of the first: wrk then takes no CPU time from the servers.
# --pin splits the machine: wrk on the first half of the CPUs this process may use (at
# least one), the servers on the rest.
#
# Needs: cargo, wrk, nginx (nginx-light), perf (linux-perf) for the profile, awk. Missing
# wrk/nginx/perf are installed with apt-get where it is available (as root). Results go to
# DIR (default target/bench-http): wrk outputs, server logs, summary.md, perf report.
# Measure on an otherwise idle machine: wrk, the servers and anything else share the cores.
set -euo pipefail
. "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."

rounds=3
duration=5
connections=64
threads=""
port=18480
perf=1
out=target/bench-http
server_cpus=""
client_cpus=""
pin=0
pace=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --no-perf) perf=0; shift ;;
    --out) out="$2"; shift 2 ;;
    --server-cpus) server_cpus="$2"; shift 2 ;;
    --client-cpus) client_cpus="$2"; shift 2 ;;
    --pin) pin=1; shift ;;
    --pace-ms) pace="$2"; shift 2 ;;
    *) echo "http.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# The CPUs of a taskset list ("0-3,8" -> "0 1 2 3 8").
expand_cpus() {
  awk -v list="$1" 'BEGIN { n = split(list, parts, ","); for (i = 1; i <= n; i++) {
    if (split(parts[i], r, "-") == 2) { for (c = r[1]; c <= r[2]; c++) printf "%d ", c }
    else if (parts[i] != "") printf "%d ", parts[i] } }'
}
if [ "$pin" = 1 ]; then
  mine=($(taskset -cp $$ | sed 's/.*: //' | { read -r l; expand_cpus "$l"; }))
  if [ "${#mine[@]}" -lt 2 ]; then
    echo "http.sh: --pin needs at least 2 CPUs" >&2
    exit 2
  fi
  half=$(( ${#mine[@]} / 2 ))
  client_cpus=$(IFS=,; echo "${mine[*]:0:$half}")
  server_cpus=$(IFS=,; echo "${mine[*]:$half}")
fi
if [ -n "$server_cpus$client_cpus" ]; then
  if [ -z "$server_cpus" ] || [ -z "$client_cpus" ]; then
    echo "http.sh: --server-cpus and --client-cpus go together" >&2
    exit 2
  fi
  server_list=($(expand_cpus "$server_cpus"))
  client_list=($(expand_cpus "$client_cpus"))
  cores=${#server_list[@]}
  threads=${threads:-${#client_list[@]}}
  on_servers=(taskset -c "$server_cpus")
  on_client=(taskset -c "$client_cpus")
  placement="servers on CPUs $server_cpus, wrk on CPUs $client_cpus"
else
  cores=$(nproc)
  # wrk runs on the same machine: give it half the cores (at least one thread).
  threads=${threads:-$(( cores / 2 > 0 ? cores / 2 : 1 ))}
  on_servers=()
  on_client=()
  placement="server and wrk share them"
fi
addr="127.0.0.1:$port"
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- tools -----------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ "$perf" = 1 ] && ! command -v perf >/dev/null 2>&1; then missing+=(linux-perf); fi
install_missing http.sh "${missing[@]}"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

echo "http.sh: building (release)"
cargo build --release --quiet -p prefork-demos --example hyper
hyper="${CARGO_TARGET_DIR:-target}/release/examples/hyper"

# --- processes ---------------------------------------------------------------------------
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# Waits (bounded) until a GET / is answered.
wait_ready() {
  http_ready "$port" 200 0.05 && return 0
  echo "http.sh: the server did not come up on $addr" >&2
  exit 1
}

# start SETUP LOG: starts the server of one setup in the background.
start() {
  local setup=$1 log=$2
  case "$setup" in
    a) "${on_servers[@]}" "$hyper" --workers "$cores" --addr "$addr" >"$log" 2>&1 & ;;
    b) "${on_servers[@]}" "$hyper" --workers "$cores" --addr "$addr" --reuseport >"$log" 2>&1 & ;;
    c) "${on_servers[@]}" "$hyper" --single --workers "$cores" --addr "$addr" >"$log" 2>&1 & ;;
    d) "${on_servers[@]}" "$hyper" --workers "$cores" --addr "$addr" --mode exec >"$log" 2>&1 & ;;
    e)
      local dir="$out/nginx"
      nginx_conf "$dir" "$cores" "$addr"
      "${on_servers[@]}" "$nginx_bin" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$log" 2>&1 &
      ;;
  esac
  server_pid=$!
  wait_ready
}

stop() {
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# Latency percentiles (µs) and errors, from wrk's own histogram.
write_wrk_report "$out/report.lua"

# The same report, with each connection waiting $pace ms after every answer.
{ echo "function delay() return $pace end"; cat "$out/report.lua"; } >"$out/paced.lua"

# wrk_run SECONDS [SCRIPT]
wrk_run() {
  "${on_client[@]}" wrk -t "$threads" -c "$connections" -d "${1}s" --latency -s "${2:-$out/report.lua}" "http://$addr/"
}

# --- rounds ------------------------------------------------------------------------------
results="$out/results.tsv"
printf 'round\tload\tsetup\trps\tp50\tp99\tp999\tmax\terrors\tbalance\n' >"$results"
loads=saturated
[ "$pace" != 0 ] && loads="saturated paced"
echo "http.sh: $rounds rounds of ${duration}s per setup and load ($loads), wrk -t$threads -c$connections, $cores cores ($placement)"
for round in $(seq "$rounds"); do
  for setup in a b c d e; do
    log="$out/server-$setup-$round.log"
    start "$setup" "$log"
    wrk_run 1 >/dev/null # warm-up
    for load in $loads; do
      script="$out/report.lua"
      [ "$load" = paced ] && script="$out/paced.lua"
      wrk_run "$duration" "$script" >"$out/wrk-$setup-$load-$round.txt"
    done
    stop
    # Requests served per worker (the hyper example prints its count when it drains, so the
    # figure covers both loads): the busiest worker's count over the idlest one's.
    balance=$(awk '/ served [0-9]+ requests/ {
        for (i = 1; i <= NF; i++) if ($i == "served") n = $(i + 1)
        if (min == "" || n < min) min = n; if (n > max) max = n; w++ }
      END { if (w > 1 && min > 0) printf "%.2f", max / min; else print "-" }' "$log")
    for load in $loads; do
      report="$out/wrk-$setup-$load-$round.txt"
      rps=$(awk '/^Requests\/sec:/ {print $2}' "$report")
      read -r p50 p99 p999 max < <(awk '/^LATENCY_US/ {print $2, $3, $4, $5}' "$report")
      errors=$(awk '/^ERRORS/ {print $2 + $3 + $4 + $5 + $6}' "$report")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$load" "$setup" "$rps" "$p50" "$p99" \
        "$p999" "$max" "$errors" "$balance" >>"$results"
      printf '  round %s setup %s %s: %s req/s, p50 %s µs, p99 %s µs, p99.9 %s µs, errors %s, balance %s\n' \
        "$round" "$setup" "$load" "$rps" "$p50" "$p99" "$p999" "$errors" "$balance"
    done
  done
done

# --- summary -----------------------------------------------------------------------------
summary="$out/summary.md"
: >"$summary"
for load in $loads; do
awk -F'\t' -v load="$load" -v pace="$pace" -v cores="$cores" -v placement="$placement" -v rounds="$rounds" -v dur="$duration" -v c="$connections" -v t="$threads" '
  NR == 1 || $2 != load { next }
  { s = $3; n[s]++; rps[s, n[s]] = $4; p50[s, n[s]] = $5; p99[s, n[s]] = $6; p999[s, n[s]] = $7
    err[s] += $9; bal[s, n[s]] = $10 }
  function median(arr, s, k,   i, j, v, tmp, m) {
    m = 0
    for (i = 1; i <= k; i++) if (arr[s, i] != "-") { m++; v[m] = arr[s, i] + 0 }
    if (m == 0) return "-"
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { tmp = v[i]; v[i] = v[j]; v[j] = tmp }
    return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
  }
  END {
    name["a"] = "a. prefork fork, shared listener, n = " cores
    name["b"] = "b. prefork fork, reuseport, n = " cores
    name["c"] = "c. one process, tokio multi-thread, " cores " threads"
    name["d"] = "d. prefork exec, shared listener, n = " cores
    name["e"] = "e. nginx, " cores " workers"
    for (s in n) { R[s] = median(rps, s, n[s]); P50[s] = median(p50, s, n[s]);
      P99[s] = median(p99, s, n[s]); P999[s] = median(p999, s, n[s]); B[s] = median(bal, s, n[s]) }
    if (load == "paced")
      printf "### Paced: each connection waits %s ms after every answer\n\n", pace
    else
      printf "### Saturated: each connection sends again as soon as it is answered\n\n"
    printf "wrk -t%s -c%s -d%ss --latency, %s rounds, medians; %s cores (%s)\n\n", t, c, dur, rounds, cores, placement
    printf "| setup | cores | req/s | vs c | p50 µs | vs c | p99 µs | vs c | p99.9 µs | vs c | balance max/min | errors |\n"
    printf "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    split("a b c d e", order, " ")
    for (i = 1; i <= 5; i++) {
      s = order[i]; if (!(s in n)) continue
      printf "| %s | %s | %.0f | %.2f | %d | %.2f | %d | %.2f | %d | %.2f | %s | %d |\n", name[s], cores, R[s], R[s] / R["c"],
        P50[s], P50[s] / P50["c"], P99[s], P99[s] / P99["c"], P999[s], P999[s] / P999["c"], B[s], err[s]
    }
    # The same comparisons round by round: each setup against c of the same round (rounds
    # run the setups one after the other, so a round shares the machine'"'"'s state).
    printf "\nRound by round against c of the same round: the median of the ratios, and in how many rounds the setup did better (more req/s, lower p99).\n\n"
    printf "| setup | req/s vs c (median of rounds) | rounds with more req/s | p99 vs c (median of rounds) | rounds with a lower p99 |\n"
    printf "|---|---|---|---|---|\n"
    for (i = 1; i <= 5; i++) {
      s = order[i]; if (!(s in n) || s == "c") continue
      k = 0; more = 0; lower = 0
      for (r = 1; r <= n[s] && r <= n["c"]; r++) {
        k++; rr[s, k] = rps[s, r] / rps["c", r]; pr[s, k] = p99[s, r] / p99["c", r]
        if (rps[s, r] + 0 > rps["c", r] + 0) more++
        if (p99[s, r] + 0 < p99["c", r] + 0) lower++
      }
      printf "| %s | %.2f | %d of %d | %.2f | %d of %d |\n", name[s], median(rr, s, k), more, k, median(pr, s, k), lower, k
    }
    printf "\n"
  }' "$results" >>"$summary"
done
echo
cat "$summary"

# --- profile -----------------------------------------------------------------------------
if [ "$perf" = 1 ]; then
  echo
  echo "http.sh: perf profile of one worker of setup a under load"
  start a "$out/server-perf.log"
  worker=$(pgrep -P "$server_pid" | head -n 1)
  wrk_run $((duration + 2)) >"$out/wrk-perf.txt" &
  wrk_pid=$!
  sleep 1
  if perf record -F 499 --call-graph dwarf,16384 -p "$worker" -o "$out/perf.data" -- sleep "$duration" \
    >"$out/perf-record.log" 2>&1; then
    wait "$wrk_pid" || true
    stop
    report() {
      perf report -i "$out/perf.data" --stdio --no-children -g none --percent-limit 1 "$@" 2>/dev/null |
        grep -v -e '^#' -e '^$' | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//'
    }
    report --sort dso >"$out/perf-dso.txt" || true
    report --sort dso,symbol >"$out/perf-report.txt" || true
    perf script -i "$out/perf.data" -F comm,tid,ip,sym >"$out/perf-script.txt" 2>/dev/null || true
    # Each sample's stack, leaf first. prefork calls the worker's `serve` closure, so its
    # frames sit at the root of every stack (fork_master -> child::run -> serve); what counts
    # is whether a prefork frame appears between a sample's leaf and the example's
    # `serve_worker`, the request path.
    read -r samples rooted on_path < <(awk '
      function end_sample() { if (n) { total++; if (seen) rooted++; if (hit) path++ } n = 0; seen = 0; hit = 0 }
      NF == 0 { end_sample(); next }
      /^[^ \t]/ { end_sample(); next }
      { n++; if ($0 ~ /hyper::serve_worker/) seen = 1; else if (!seen && $0 ~ /[^_]prefork::/) hit = 1 }
      END { end_sample(); print total + 0, rooted + 0, path + 0 }' "$out/perf-script.txt")
    {
      echo "perf: worker pid $worker of setup a, ${duration}s at 499 Hz, dwarf call graphs, $cores cores"
      echo "samples: $samples; stacks unwound down to serve_worker: $rooted;" \
        "samples with a prefork:: frame between the leaf and serve_worker: $on_path"
      echo "self time by object, then by symbol (1 % and above):"
      cat "$out/perf-dso.txt"
      echo
      head -n 30 "$out/perf-report.txt"
    } >"$out/perf-summary.txt"
    cat "$out/perf-summary.txt"
  else
    wait "$wrk_pid" || true
    stop
    echo "perf record failed (see $out/perf-record.log): $(tail -n 1 "$out/perf-record.log")"
  fi
fi
echo
echo "http.sh: results in $out"
