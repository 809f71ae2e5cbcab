#!/usr/bin/env bash
# Drain benchmark on loopback: requests LOST by tokio workers (the hyper and axum demos, which
# drain with preforked-tokio) over N lifecycle events of each kind, with nginx beside them as
# the anchor; then what the drain costs in steady state, and a profile of one worker.
#
# Servers (--workers, 3 by default), each started afresh for every trial:
#   hyper  demos/examples/hyper.rs (--release), fork mode
#   axum   demos/examples/axum.rs (--release), fork mode
#   nginx  nginx-light, the same number of workers, `return 200` with a body like the demos'
#          answers, access log off, a throw-away configuration in a temporary directory
#
# Kinds of event (--kinds), N of each (--events, 20 by default):
#   term            TERM to the master (nginx: `nginx -s quit`, its graceful stop), wait for
#                   its exit, start the same command again and wait until it answers
#   hup             HUP to the master: a rolling restart, done when every old worker has exited
#                   (nginx: `nginx -s reload`, done when every old worker has exited)
#   ttou            TTOU (one worker less; it drains), then, once it has exited, TTIN (one
#                   worker more) and wait until the new worker serves (ours only)
#   ttou-reuseport  the same on a server started with --reuseport (ours only)
#   usr2            binary upgrade (ours only): USR2 makes the master execute its own program
#                   again (a copy in a temporary directory) with the listening sockets; done
#                   when the old master has exited (after the new one serves and the old
#                   workers drained); the next event goes to the new master
#   none            the control: no signal; the script polls the server's log for 100 ms as
#                   during an event. Its "x steady" is what the ratio is without any event
#                   (the noise of the machine and of the windows), to read the others against
#   none-fork       the same control with the polling of this script's earlier versions: 20
#                   times a `grep -c` of the log in a command substitution and a `sleep
#                   0.005`, each a new process (not in the default kinds; it shows what that
#                   polling alone did to "p99 during events")
# nginx has no counterpart of ttou (its worker count changes only with a reload); its own
# binary upgrade (USR2, then QUIT to the old master) is another procedure, not measured here.
#
# The load, for each kind separately with --conns (both by default):
#   new        prefork-load --conn new --clients 16: one request per connection
#   keepalive  prefork-load --conn keepalive --clients 16: reused connections; a request sent
#              on a reused connection that ends without a byte of answer is sent again, once
#              (RFC 9112 9.3.1; counted as retried, not lost)
# Each event gets a load window of its own, a fresh prefork-load run of --window seconds (1.0;
# --term-window, 1.3, for term, which includes the restart and the 1 s SYN retransmission of a
# client whose SYN arrived during the stop); the event is sent 0.1 s after every client had a
# first answer, and the window must outlast the event (a note says when it did not). Before
# the first event window and then one in --steady-every (5), a steady window as long as the
# event windows (or --steady seconds) on the same server, watched as an event window is up to
# the event (the wait for every client's first answer, then 0.1 s) and then left alone: the
# baseline of the "x steady" ratios, in the same run, between the events. (Keep the two lengths equal: in one check with
# keep-alive clients and no event, the median p99 of 1 s windows was 1.5x that of 0.5 s ones.)
# "p99 during events" is the median over the event windows of each window's p99. Within each
# event window, prefork-load (--span-file) also splits the requests: those in flight at any
# time of the event's span (from the signal to the end of the event, as defined above) and
# the others; "p99 in the event spans" and "p99 outside them" are the medians over the event
# windows of their p99s, against the same steady p99. The busiest worker's share of a
# window's answers (the answers name their worker) says how the connections were spread.
#
# Counted per window from prefork-load's JSON line: LOST = reset + timeout + other (a request
# the server accepted, or the kernel accepted for it, without a complete 200); refused (the
# port closed, during a stop and restart) is reported apart. Timeouts are 10 s, so that a
# stall of a shared machine shows as latency, not as a loss.
#
# Then (unless --cost no):
#   cost     the steady-state cost of the drain: the hyper and axum demos of commit 98113a8
#            (--before, the commit before preforked-tokio existed; built in a git worktree at
#            /tmp/drain-before with a CARGO_TARGET_DIR of their own, target/bench-drain-before,
#            the worktree removed once built) against the current ones, `wrk -t1 -c16 -d5s`,
#            --rounds rounds (5), before and after alternating; p50, p99, req/s as
#            after/before. --cost-workers workers (1): with several, how the kernel spreads
#            wrk's 16 long-lived connections over them (anything from 16/0/0 to 6/5/5, in
#            either version) moves p99 more than the code does
#   profile  `perf record -g` on the one worker of `hyper --workers 1` under the same wrk load
#            for 5 s, then `perf record --call-graph dwarf` for 5 s more; the prefork_tokio
#            frames of `perf report --stdio`, self and children
#
# usage: benches/drain.sh [--events N] [--servers "hyper axum nginx"]
#                         [--kinds "term hup ttou ttou-reuseport usr2 none"] [--conns "new keepalive"]
#                         [--workers N] [--clients N] [--window SECS] [--term-window SECS]
#                         [--steady SECS] [--steady-every N]
#                         [--cost yes|no] [--rounds N] [--before REV] [--cost-workers N]
#                         [--port PORT] [--out DIR] [--autogroup-nice N]
# (--kinds "" runs the cost and profile parts alone; --cost no the events alone)
# --autogroup-nice N (-20..19; below 0 needs root) sets the scheduling weight of the script's
# session and of every server's session (each server runs in a session of its own, so in an
# autogroup of its own where the kernel has them, /proc/PID/autogroup): on a machine shared
# with other jobs, -10 gives the servers and the load most of the CPU when the jobs compete
# for it, alike in steady and in event windows.
#
# Every loop is bounded in count and time; traffic goes to 127.0.0.1 only. Needs: cargo, git,
# wrk, nginx (nginx-light), perf (linux-perf), awk, setsid, ps. Missing wrk/nginx/perf are
# installed with apt-get where it is available (as root); without perf the profile is
# skipped (said in the summary). Results go to DIR (default target/bench-drain): every load
# report and server log, results.tsv, cost.tsv, the perf reports, summary.md.
set -euo pipefail
. "$(dirname "$0")/common.sh"
export LC_ALL=C # a decimal point in $EPOCHREALTIME and awk
cd "$(dirname "$0")/.."

events=20
servers="hyper axum nginx"
kinds="term hup ttou ttou-reuseport usr2 none"
conns="new keepalive"
workers=3
clients=16
window=1.0
term_window=1.3
steady="" # the trial's event window
steady_every=5
cost=yes
rounds=5
before=98113a8
cost_workers=1
port=18590
out=target/bench-drain
autogroup_nice=""
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || { echo "drain.sh: $1 needs a value" >&2; exit 2; }
  case "$1" in
    --events) events="$2" ;;
    --servers) servers="$2" ;;
    --kinds) kinds="$2" ;;
    --conns) conns="$2" ;;
    --workers) workers="$2" ;;
    --clients) clients="$2" ;;
    --window) window="$2" ;;
    --term-window) term_window="$2" ;;
    --steady) steady="$2" ;;
    --steady-every) steady_every="$2" ;;
    --cost) cost="$2" ;;
    --rounds) rounds="$2" ;;
    --before) before="$2" ;;
    --cost-workers) cost_workers="$2" ;;
    --port) port="$2" ;;
    --out) out="$2" ;;
    --autogroup-nice) autogroup_nice="$2" ;;
    *) echo "drain.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift 2
done
int_in() { # int_in NAME VALUE MIN MAX
  [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] && [ "$2" -le "$4" ] && return 0
  echo "drain.sh: $1 must be an integer in $3..$4" >&2
  exit 2
}
secs_in() { # secs_in NAME VALUE: a number of seconds in [0.2, 30]
  [[ "$2" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v v="$2" 'BEGIN { exit !(v >= 0.2 && v <= 30) }' && return 0
  echo "drain.sh: $1 must be a number of seconds in 0.2..30" >&2
  exit 2
}
int_in --events "$events" 1 200
int_in --workers "$workers" 2 64
int_in --clients "$clients" 1 256
int_in --rounds "$rounds" 1 20
int_in --cost-workers "$cost_workers" 1 64
int_in --port "$port" 1024 65535
secs_in --window "$window"
secs_in --term-window "$term_window"
[ -z "$steady" ] || secs_in --steady "$steady"
int_in --steady-every "$steady_every" 1 200
if [ -n "$autogroup_nice" ]; then
  if ! [[ "$autogroup_nice" =~ ^-?[0-9]+$ ]] || [ "$autogroup_nice" -lt -20 ] || [ "$autogroup_nice" -gt 19 ]; then
    echo "drain.sh: --autogroup-nice must be an integer in -20..19" >&2
    exit 2
  fi
  if ! echo "$autogroup_nice" 2>/dev/null >"/proc/$$/autogroup"; then
    echo "drain.sh: cannot set the autogroup nice value ($autogroup_nice) of /proc/$$/autogroup" \
      "(no autogroups in this kernel, or a value below 0 without root)" >&2
    exit 2
  fi
fi
case "$cost" in yes | no) ;; *) echo "drain.sh: --cost yes or no" >&2; exit 2 ;; esac
for s in $servers; do
  case "$s" in hyper | axum | nginx) ;; *) echo "drain.sh: unknown server $s" >&2; exit 2 ;; esac
done
for k in $kinds; do
  case "$k" in term | hup | ttou | ttou-reuseport | usr2 | none | none-fork) ;; *) echo "drain.sh: unknown kind $k" >&2; exit 2 ;; esac
done
for c in $conns; do
  case "$c" in new | keepalive) ;; *) echo "drain.sh: unknown load $c (new, keepalive)" >&2; exit 2 ;; esac
done

cores=$(nproc)
addr="127.0.0.1:$port"
mkdir -p "$out"
out=$(cd "$out" && pwd)
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
target=$(cd "$target" && pwd)
before_target="$target/bench-drain-before" # the old demos' own CARGO_TARGET_DIR (kept: a rerun is quick)
worktree=/tmp/drain-before

if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
  exec 3<&- 3>&-
  echo "drain.sh: something already listens on $addr; choose another --port" >&2
  exit 1
fi

# --- tools -----------------------------------------------------------------------------
has() { command -v "$1" >/dev/null 2>&1; }
missing=()
case " $servers " in *" nginx "*) has nginx || [ -x /usr/sbin/nginx ] || missing+=(nginx-light) ;; esac
if [ "$cost" = yes ]; then has wrk || missing+=(wrk); fi
install_missing drain.sh "${missing[@]}"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
perf_ok=0
if [ "$cost" = yes ]; then
  has perf || install_missing drain.sh linux-perf || true
  has perf && perf_ok=1
fi

echo "drain.sh: building (release)"
cargo build --release --quiet -p prefork-demos --examples --bins
rev=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain -- Cargo.toml Cargo.lock src preforked-tokio demos | wc -l)

# Private copies: a rebuild in the checkout during the run changes nothing here, and USR2
# executes the program again from this path.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/prefork-drain.XXXXXX")
for b in hyper axum; do cp "$target/release/examples/$b" "$tmp/$b"; done
cp "$target/release/prefork-load" "$tmp/prefork-load"
load_bin="$tmp/prefork-load"

# --- processes -------------------------------------------------------------------------
# Every server runs in a process group of its own (setsid): its master, its workers and the
# masters started by upgrades (not this script's children) are stopped as a group.
server_pid=""  # the current master (nginx: its master process)
server_pgid="" # the group of the server's processes
server=""      # hyper, axum or nginx
reuseport=""   # --reuseport or empty
log=""         # the server's log (stdout and stderr of every master and worker)
load_pid=""
worktree_made=""

# Whether process $1 exists and is not a zombie (no fork: the loops below poll it).
alive() {
  local s
  [ -n "$1" ] && read -r s 2>/dev/null <"/proc/$1/stat" || return 1
  s=${s##*) }
  [ "${s%% *}" != Z ]
}

# The waits of an event poll every 5 ms without starting a process: a poll that forks (a
# `grep` of the log, `sleep 0.005`) costs a few milliseconds of CPU each on a loaded 2-core
# machine, 200 times a second, on the cores the server and the load share, and that would
# be counted against the server in "p99 during events" ("Why p99 rises during an event" in
# docs/benchmarks.md measures it). A read with a timeout on a pipe nobody writes is the pause.
exec {pause_fd}<> <(:)
pause() { read -r -t "$1" -u "$pause_fd" _ || true; } # pause SECS

# until_true SECS CMD...: polls CMD every 5 ms until it succeeds; fails after SECS seconds.
until_true() {
  local tries i
  tries=$(awk -v s="$1" 'BEGIN { printf "%d", s * 200 }')
  shift
  for ((i = 0; i < tries; i++)); do
    "$@" && return 0
    pause 0.005
  done
  "$@"
}

# The server's log as read so far, line by line, read on from where the last look ended.
log_fd=""
log_lines=()
log_part="" # the last line, not ended yet
declare -A log_upto=() log_hits=()
open_log() { # open_log: after the log was emptied
  if [ -n "$log_fd" ]; then exec {log_fd}<&-; fi
  exec {log_fd}<"$log"
  log_lines=()
  log_part=""
  log_upto=()
  log_hits=()
}
read_log() {
  local line
  while IFS= read -r -u "$log_fd" line; do
    log_lines+=("$log_part$line")
    log_part=""
  done
  log_part+=$line
}
# count REGEX: sets $counted to the number of lines of the server's log that match the
# extended regular expression (only the lines new since the last count of it are matched).
counted=0
count() {
  read_log
  local re=$1 i=${log_upto[$1]:-0} n=${log_hits[$1]:-0}
  for ((; i < ${#log_lines[@]}; i++)); do
    if [[ ${log_lines[i]} =~ $re ]]; then n=$((n + 1)); fi
  done
  log_upto[$1]=$i
  log_hits[$1]=$n
  counted=$n
}
at_least() { count "$1"; [ "$counted" -ge "$2" ]; } # at_least REGEX N
# has_line FILE TEXT: whether FILE holds TEXT (read without a process).
has_line() {
  local text=""
  [ -r "$1" ] && IFS= read -r -d '' text <"$1"
  [[ $text == *"$2"* ]]
}

nginx_dir="$tmp/nginx"
nginx_conf "$nginx_dir" "$workers" "$addr"
nginx_cmd() { "$nginx_bin" -p "$nginx_dir" -c "$nginx_dir/nginx.conf" -e "$nginx_dir/error.log" "$@"; }

# Starts $server in the background, in a new process group, and waits (10 s at most) until
# it answers.
start_server() {
  case "$server" in
    nginx) setsid "$nginx_bin" -p "$nginx_dir" -c "$nginx_dir/nginx.conf" -e "$nginx_dir/error.log" >>"$log" 2>&1 & ;;
    *) setsid "$tmp/$server" --workers "$workers" --addr "$addr" $reuseport >>"$log" 2>&1 & ;;
  esac
  # setsid execs in place (a background job of a script is no group leader), so $! is the
  # master and the group's id.
  server_pid=$!
  server_pgid=$!
  if [ -n "$autogroup_nice" ]; then echo "$autogroup_nice" >"/proc/$server_pid/autogroup" || true; fi
  if ! http_ready "$port" 2000 0.005; then
    echo "drain.sh: $server did not come up on $addr; its log: $log" >&2
    exit 1
  fi
}

# Stops the server: TERM to its master, up to 10 s for the group to end, then KILL.
stop_server() {
  stop_group drain.sh "$server_pid" "$server_pgid"
  server_pid=""
  server_pgid=""
}

cleanup() {
  if [ -n "$load_pid" ]; then kill -KILL "$load_pid" 2>/dev/null || true; fi
  stop_server
  wait 2>/dev/null || true
  if [ -n "$worktree_made" ]; then git worktree remove --force "$worktree" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- events ----------------------------------------------------------------------------
# Each sends its signal and returns once the event is over (every wait bounded); on trouble
# it sets $note.
note=""
add_note() { note="${note:+$note; }$1"; }

event_term() {
  local old=$server_pid
  if [ "$server" = nginx ]; then nginx_cmd -s quit >>"$log" 2>&1; else kill -TERM "$old"; fi
  until_true 15 eval '! alive "$old"' || add_note "master $old still running 15 s after the stop"
  wait "$old" 2>/dev/null || add_note "master exit status $?"
  stop_server # nothing left to stop unless the master hung (then it is killed)
  start_server
}

event_hup() {
  if [ "$server" = nginx ]; then
    local olds p
    olds=$(ps -o pid= --ppid "$server_pid" | tr '\n' ' ')
    nginx_cmd -s reload >>"$log" 2>&1
    for p in $olds; do
      until_true 15 eval '! alive "$p"' || { add_note "old nginx worker $p still running after 15 s"; break; }
    done
  else
    local n
    count '\(replaced by HUP\)'
    n=$counted
    kill -HUP "$server_pid"
    until_true 15 at_least '\(replaced by HUP\)' $((n + workers)) ||
      add_note "rolling restart not over after 15 s"
  fi
}

event_ttou() {
  local retired serving
  count '\(retired by TTOU\)'
  retired=$counted
  count '^worker [0-9]+ serving http'
  serving=$counted
  kill -TTOU "$server_pid"
  until_true 15 at_least '\(retired by TTOU\)' $((retired + 1)) ||
    add_note "retired worker not gone after 15 s"
  kill -TTIN "$server_pid"
  until_true 15 at_least '^worker [0-9]+ serving http' $((serving + 1)) ||
    add_note "TTIN's worker not serving after 15 s"
}

# No event: the control. The script waits 100 ms polling the server's log as it does
# during an event, and sends nothing.
event_none() {
  until_true 0.1 at_least '^no server writes this line$' 1 || true
}

# The control with the earlier polling: processes started 200 times a second.
event_none_fork() {
  local i
  for i in $(seq 20); do
    [ "$(grep -cE '^no server writes this line$' "$log" || true)" -ge 1 ] && break
    sleep 0.005
  done
}

event_usr2() {
  local old=$server_pid n new
  count 'upgrade: new master [0-9]+ started'
  n=$counted
  kill -USR2 "$old"
  if until_true 15 at_least 'upgrade: new master [0-9]+ started' $((n + 1)); then
    new=$(grep -oE 'upgrade: new master [0-9]+ started' "$log" | tail -n 1 | grep -oE '[0-9]+')
  else
    add_note "no new master after 15 s"
    return 0
  fi
  until_true 15 eval '! alive "$old"' || add_note "old master $old still running 15 s after USR2"
  wait "$old" 2>/dev/null || true # only the first master is this script's child
  if grep -q "upgrade: new master $new stopped" "$log"; then add_note "upgrade to $new rolled back"; fi
  alive "$new" && server_pid=$new || add_note "new master $new gone"
}

# --- windows ---------------------------------------------------------------------------
results="$out/results.tsv"
printf 'server\tkind\tconn\tevent\twindow\trequests\tok\trefused\treset\ttimeout\tother\tretried\treconnects\tp50_us\tp99_us\tp999_us\tmax_us\tevent_ms\tnote\ttop_share\tspan_n\tspan_p99_us\trest_p99_us\n' >"$results"

# window KIND CONN I WHAT SECS: one load window of SECS seconds; WHAT is steady or event (the
# event of KIND sent 0.1 s after every client had a first answer). Appends a row.
window() {
  local kind=$1 conn=$2 i=$3 what=$4 secs=$5
  local f="$out/load-$server-$kind-$conn-$i-$what"
  local ev_ms="-"
  note=""
  local span=()
  # The event's span (signal to end), for the p99 of the requests in flight during it.
  [ "$what" = event ] && span=(--span-file "$f.span")
  rm -f "$f.span"
  "$load_bin" --addr "$addr" --conn "$conn" --clients "$clients" --duration "$secs" \
    --timeout 10000 "${span[@]}" >"$f.json" 2>"$f.err" &
  load_pid=$!
  # Steady and event windows are watched alike up to the event (the script polls the load's
  # output for the clients' first answers, then pauses 0.1 s), so that the only difference
  # between them is the event.
  until_true 5 has_line "$f.err" 'have had a first answer' || add_note "clients not all answered after 5 s"
  pause 0.1
  if [ "$what" = event ]; then
    alive "$load_pid" || add_note "load over before the event"
    local t0=$EPOCHREALTIME
    case "$kind" in
      term) event_term ;;
      hup) event_hup ;;
      ttou | ttou-reuseport) event_ttou ;;
      usr2) event_usr2 ;;
      none) event_none ;;
      none-fork) event_none_fork ;;
    esac
    local t1=$EPOCHREALTIME
    echo "${t0/./} ${t1/./}" >"$f.span"
    ev_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
    alive "$load_pid" || add_note "event outlived its load window"
  fi
  wait "$load_pid" || add_note "prefork-load exit status $?"
  load_pid=""
  local vals
  if ! grep -q '"requests"' "$f.json"; then add_note "no report"; fi
  # requests ok refused reset timeout other retried reconnects p50 p99 p99.9 max (0 if absent)
  read -r -a vals < <(awk '{
      n = split("requests ok refused reset timeout other retried reconnects p50 p99 p99.9 max", K, " ")
      for (i = 1; i <= n; i++) {
        v = 0
        if (match($0, "\"" K[i] "\":[0-9.]+")) v = substr($0, RSTART + length(K[i]) + 3, RLENGTH - length(K[i]) - 3)
        printf "%s%s", v, (i < n ? " " : "\n")
      }
      exit
    }' "$f.json")
  [ "${#vals[@]}" = 12 ] || vals=(0 0 0 0 0 0 0 0 0 0 0 0)
  # The busiest worker's share of the window's answers (the demos and nginx answer with a
  # first line naming the worker): how evenly the connections were spread.
  local top
  top=$(awk '{
      s = $0; t = 0; m = 0
      if (!match(s, /"bodies":\{[^}]*\}/)) { print "-"; exit }
      s = substr(s, RSTART + 10, RLENGTH - 11)
      while (match(s, /":[0-9]+/)) { v = substr(s, RSTART + 2, RLENGTH - 2) + 0; t += v; if (v > m) m = v; s = substr(s, RSTART + RLENGTH) }
      if (t > 0) printf "%.2f\n", m / t; else print "-"
      exit
    }' "$f.json")
  # The event's span: requests in flight during it, their p99, and the p99 of the others.
  local spanv
  spanv=$(awk '{
      if (!match($0, /"span":\{"n":[0-9]+,"p99":[0-9]+,"rest_p99":[0-9]+\}/)) { print "-\t-\t-"; exit }
      s = substr($0, RSTART + 8, RLENGTH - 9); n = split(s, kv, ",")
      for (i = 1; i <= n; i++) { split(kv[i], p, ":"); v[i] = p[2] }
      printf "%s\t%s\t%s\n", v[1], v[2], v[3]; exit
    }' "$f.json")
  local IFS=$'\t'
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$kind" "$conn" "$i" "$what" "${vals[*]}" \
    "$ev_ms" "${note:--}" "${top:--}" "${spanv:--	-	-}" >>"$results"
  # Lost (reset + timeout + other) or notes: say so at once.
  local lost=$((vals[3] + vals[4] + vals[5]))
  if [ "$lost" -gt 0 ] || [ -n "$note" ]; then
    echo "  $server $kind $conn #$i $what: $lost lost (reset ${vals[3]}, timeout ${vals[4]}, other ${vals[5]}), refused ${vals[2]}${note:+; $note}"
  fi
}

# trial SERVER KIND CONN: a fresh server, then $events event windows, with a steady window
# before every $steady_every-th.
trial() {
  server=$1
  local kind=$2 conn=$3 i secs=$window
  [ "$kind" = term ] && secs=$term_window
  reuseport=""
  [ "$kind" = ttou-reuseport ] && reuseport=--reuseport
  log="$out/server-$server-$kind-$conn.log"
  : >"$log"
  open_log
  if [ "$server" = nginx ]; then : >"$nginx_dir/error.log"; fi
  start_server
  "$load_bin" --addr "$addr" --conn "$conn" --clients "$clients" --duration 0.5 --timeout 10000 \
    >/dev/null 2>&1 # warm-up
  local t0=$SECONDS
  for i in $(seq "$events"); do
    if [ $(((i - 1) % steady_every)) = 0 ]; then window "$kind" "$conn" "$i" steady "${steady:-$secs}"; fi
    window "$kind" "$conn" "$i" event "$secs"
  done
  stop_server
  if [ "$server" = nginx ]; then cp "$nginx_dir/error.log" "$out/nginx-error-$kind-$conn.log"; fi
  local killed
  count 'did not finish draining'
  killed=$counted
  printf '%s\t%s\t%s\t%s\n' "$server" "$kind" "$conn" "$killed" >>"$out/kills.tsv"
  awk -F'\t' -v s="$server" -v k="$kind" -v c="$conn" -v t=$((SECONDS - t0)) '
    $1 == s && $2 == k && $3 == c && $5 == "event" { n++; req += $6; lost += $9 + $10 + $11; ref += $8; ret += $12 }
    END { printf "  %-5s %-14s %-9s %d events in %d s: %d requests, %d lost, %d refused, %d retried\n", s, k, c, n, t, req, lost, ref, ret }' "$results"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
date_start=$(date -u '+%Y-%m-%d %H:%M UTC')
: >"$out/kills.tsv"
echo "drain.sh: $events events of each kind; servers: $servers; kinds: $kinds; loads: $conns;" \
  "$workers workers, $clients clients, event windows ${window}s (term ${term_window}s)," \
  "steady windows ${steady:-as long}${steady:+s} before one event window in ${steady_every}; $cores cores"
for server_name in $servers; do
  for kind in $kinds; do
    case "$server_name:$kind" in nginx:ttou* | nginx:usr2) continue ;; esac
    for conn in $conns; do
      trial "$server_name" "$kind" "$conn"
    done
  done
done
load_events=$(cut -d' ' -f1-3 /proc/loadavg)

# --- cost: the demos before the drain against the current ones ---------------------------
write_wrk_report "$out/report.lua"
cost_tsv="$out/cost.tsv"
cost_servers=""
for s in $servers; do [ "$s" = nginx ] || cost_servers="$cost_servers $s"; done
if [ "$cost" = yes ] && [ -n "$cost_servers" ]; then
  echo "drain.sh: building the demos of $before (worktree $worktree, target $before_target)"
  if [ -e "$worktree" ]; then
    git worktree remove --force "$worktree" || { echo "drain.sh: $worktree is in the way" >&2; exit 1; }
  fi
  git worktree add --detach --quiet "$worktree" "$before"
  worktree_made=1
  (cd "$worktree" && CARGO_TARGET_DIR="$before_target" cargo build --release --quiet -p prefork-demos \
    --example hyper --example axum)
  for b in hyper axum; do cp "$before_target/release/examples/$b" "$tmp/$b.before"; done
  git worktree remove --force "$worktree"
  worktree_made=""
  for b in hyper axum; do cp "$tmp/$b" "$tmp/$b.after"; done

  printf 'server\tversion\tround\trps\tp50_us\tp99_us\tp999_us\tmax_us\terrors_c/r/w/s/t\n' >"$cost_tsv"
  echo "drain.sh: steady state, before ($before) and after ($rev), $cost_workers worker(s)," \
    "wrk -t1 -c16 -d5s, $rounds rounds"
  for r in $(seq "$rounds"); do
    for s in $cost_servers; do
      order="before after"
      [ $((r % 2)) = 0 ] && order="after before"
      for v in $order; do
        server="$s.$v"
        reuseport=""
        log="$out/server-cost-$s-$v-$r.log"
        : >"$log"
        saved_workers=$workers
        workers=$cost_workers
        start_server
        workers=$saved_workers
        "$load_bin" --addr "$addr" --conn keepalive --clients 16 --duration 0.5 >/dev/null 2>&1 # warm-up
        wf="$out/wrk-$s-$v-$r.txt"
        wrk -t1 -c16 -d5s --timeout 10s -s "$out/report.lua" "http://$addr/" >"$wf" 2>&1 || true
        stop_server
        awk -v s="$s" -v v="$v" -v r="$r" '
          /^LATENCY_US/ { p50 = $2; p99 = $3; p999 = $4; mx = $5 }
          /^ERRORS/ { err = $2 "/" $3 "/" $4 "/" $5 "/" $6 }
          /^REQUESTS/ { rps = ($3 > 0) ? $2 / ($3 / 1e6) : 0 }
          END { if (err == "") exit 1
                printf "%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\n", s, v, r, rps, p50, p99, p999, mx, err }' \
          "$wf" >>"$cost_tsv" || echo "drain.sh: no wrk report in $wf" >&2
        tail -n 1 "$cost_tsv" | awk -F'\t' '{ printf "  round %s %-5s %-6s %s req/s, p50 %s µs, p99 %s µs\n", $3, $1, $2, $4, $5, $6 }'
      done
    done
  done
fi

# --- profile: one hyper worker under wrk load --------------------------------------------
# `perf record -g` unwinds with frame pointers, which Rust release code does not keep: its
# self times are right, its call chains stop early. A second record with DWARF call graphs
# (debug = 1 in the release profile) shows every frame on the sampled stacks, inlined ones
# included.
perf_summary="$out/perf-summary.txt"
: >"$perf_summary"
perf_lines() { # perf_lines FILE: report lines naming prefork_tokio, trailing columns cut
  grep prefork_tokio "$1" | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' || echo "  (none)"
}
if [ "$cost" = yes ] && [ "$perf_ok" = 1 ]; then
  echo "drain.sh: perf record on the worker of hyper --workers 1 under wrk -t1 -c16: -g 5 s, then dwarf 5 s"
  server=hyper
  reuseport=""
  log="$out/server-perf.log"
  : >"$log"
  saved_workers=$workers
  workers=1
  start_server
  workers=$saved_workers
  wpid=$(ps -o pid= --ppid "$server_pid" | sed -n '1{s/ //g;p}')
  wrk -t1 -c16 -d12s --timeout 10s "http://$addr/" >"$out/wrk-perf.txt" 2>&1 &
  wrk_pid=$!
  sleep 1
  if perf record -g -o "$out/perf.data" -p "$wpid" -- sleep 5 >"$out/perf-record.log" 2>&1; then
    perf record -F 999 --call-graph dwarf,16384 -o "$out/perf-dwarf.data" -p "$wpid" -- sleep 5 \
      >>"$out/perf-record.log" 2>&1 || true
    wait "$wrk_pid" || true
    stop_server
    report() { perf report --stdio -g none --percent-limit 0 "$@" 2>/dev/null || true; }
    report -i "$out/perf.data" --no-children --sort dso,symbol >"$out/perf-self.txt"
    report -i "$out/perf.data" --children >"$out/perf-children.txt"
    report -i "$out/perf.data" --no-children --sort dso >"$out/perf-dso.txt"
    if [ -s "$out/perf-dwarf.data" ]; then
      report -i "$out/perf-dwarf.data" --children >"$out/perf-dwarf-children.txt"
      rm -f "$out/perf-dwarf.data" # tens of MB; the report stays
    fi
    {
      echo "the worker (pid $wpid) of hyper --workers 1, 5 s under wrk -t1 -c16 (keep-alive), $cores cores"
      echo
      echo "perf record -g: $(grep -m1 -oE '^# Samples: [^ ]+' "$out/perf-self.txt" | cut -c3-) samples;" \
        "self time of prefork_tokio symbols (perf report --no-children), in all" \
        "$(grep prefork_tokio "$out/perf-self.txt" | awk '{ s += $1 } END { printf "%.2f%%", s }'):"
      perf_lines "$out/perf-self.txt"
      echo "the same, --children (frame-pointer chains: children are incomplete):"
      perf_lines "$out/perf-children.txt"
      echo "self time by object:"
      grep -vE '^#|^$' "$out/perf-dso.txt" | sed -E 's/[[:space:]]+$//' | sed -n '1,8p'
      if [ -s "$out/perf-dwarf-children.txt" ]; then
        echo
        echo "perf record --call-graph dwarf: $(grep -m1 -oE '^# Samples: [^ ]+' "$out/perf-dwarf-children.txt" | cut -c3-)" \
          "samples; prefork_tokio frames on the sampled stacks (children = the frame and what it called;" \
          "(inlined) frames have no self time of their own, it is their caller's):"
        perf_lines "$out/perf-dwarf-children.txt"
      fi
    } >"$perf_summary"
  else
    wait "$wrk_pid" || true
    stop_server
    echo "perf record failed in this environment: $(sed -n '$p' "$out/perf-record.log")" >"$perf_summary"
  fi
elif [ "$cost" = yes ]; then
  echo "perf is not available (linux-perf could not be installed): no profile" >"$perf_summary"
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- summary -----------------------------------------------------------------------------
summary="$out/summary.md"
awk -F'\t' -v cores="$cores" -v events="$events" -v n="$workers" -v clients="$clients" \
  -v win="$window" -v twin="$term_window" -v swin="$steady" -v sev="$steady_every" -v la0="$load_start" -v la1="$load_events" -v la2="$load_end" -v agn="$autogroup_nice" \
  -v date0="$date_start" -v rev="$rev" -v dirty="$dirty" -v servers="$servers" -v kinds="$kinds" \
  -v conns="$conns" -v killsf="$out/kills.tsv" '
  function median(arr, m,   i, j, t, q, v) {
    q = 0
    for (i = 1; i <= m; i++) v[++q] = arr[i] + 0
    if (q == 0) return "-"
    for (i = 1; i <= q; i++) for (j = i + 1; j <= q; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return (q % 2) ? v[(q + 1) / 2] : (v[q / 2] + v[q / 2 + 1]) / 2
  }
  function maxof(arr, m,   i, x) { x = "-"; for (i = 1; i <= m; i++) if (x == "-" || arr[i] + 0 > x) x = arr[i] + 0; return x }
  BEGIN { while ((getline line < killsf) > 0) { split(line, f, "\t"); kills[f[1] SUBSEP f[2] SUBSEP f[3]] = f[4] } }
  NR == 1 { next }
  {
    k = $1 SUBSEP $2 SUBSEP $3
    lost = $9 + $10 + $11
    if ($5 == "event") {
      c = ++ne[k]; ep99[k, c] = $15; emax[k, c] = $17; ems[k, c] = $18; etop[k, c] = $20
      if ($22 != "-" && $22 != "") { q = ++nsp[k]; spp[k, q] = $22; rpp[k, q] = $23 }
      req[k] += $6; elost[k] += lost; ereset[k] += $9; etime[k] += $10; eother[k] += $11
      eref[k] += $8; eret[k] += $12; if (lost > 0) ewith[k]++
      if ($19 ~ /outlived|load over|not all answered/) eunl[k]++
    } else {
      c = ++ns[k]; sp99[k, c] = $15; smax[k, c] = $17; stop_[k, c] = $20
      sreq[k] += $6; slost[k] += lost; sref[k] += $8; sret[k] += $12
    }
    if ($19 != "-") notes[k] = notes[k] (notes[k] == "" ? "" : "; ") "#" $4 " " $5 ": " $19
  }
  END {
    what["term"] = "TERM, restart"; what["hup"] = "HUP"; what["ttou"] = "TTOU, TTIN"
    what["ttou-reuseport"] = "TTOU, TTIN (reuseport)"; what["usr2"] = "USR2 upgrade"
    what["none"] = "none (control)"; what["none-fork"] = "none (control), forking polls"
    nginxwhat["term"] = "`nginx -s quit`, restart"; nginxwhat["hup"] = "`nginx -s reload`"
    nginxwhat["none"] = what["none"]; nginxwhat["none-fork"] = what["none-fork"]
    cname["new"] = "new conn"; cname["keepalive"] = "keep-alive"
    printf "%s events of each kind, %s workers, %s clients; event windows of %s s (term: %s s), a steady window %s before one event window in %s; %s cores, shared with the load and other jobs; started %s; load average %s at start, %s after the events, %s at the end; commit %s%s%s\n\n", events, n, clients, win, twin, (swin == "" ? "as long" : "of " swin " s"), sev, cores, date0, la0, la1, la2, rev, (dirty > 0 ? " with uncommitted changes in " dirty " files of the build" : ""), (agn == "" ? "" : "; autogroups of the script and the servers at nice " agn)
    if (NR < 2) exit
    printf "| server | event | clients | events (not all under load) | requests in event windows | lost (reset/timeout/other) | events with a loss | refused | retried | lost in steady windows | event ms (median, max) | p99 steady (µs) | p99 during events (µs) | x steady | worst window p99 (µs) | max (µs) | drains KILLed | busiest worker share (steady, events) | p99 in the event spans (µs) | x steady | p99 outside them (µs) | x steady |\n"
    printf "|---|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n"
    ns_ = split(servers, S, " "); nk = split(kinds, K, " "); nc = split(conns, C, " ")
    for (a = 1; a <= ns_; a++) for (b = 1; b <= nk; b++) for (d = 1; d <= nc; d++) {
      k = S[a] SUBSEP K[b] SUBSEP C[d]; if (!(k in ne)) continue; m = ne[k]
      for (i = 1; i <= m; i++) { x1[i] = ep99[k, i]; x2[i] = emax[k, i]; x3[i] = ems[k, i]; x4[i] = etop[k, i] }
      for (i = 1; i <= ns[k]; i++) { y1[i] = sp99[k, i]; y2[i] = stop_[k, i] }
      E = median(x1, m); St = median(y1, ns[k])
      for (i = 1; i <= nsp[k]; i++) { z1[i] = spp[k, i]; z2[i] = rpp[k, i] }
      Sp = median(z1, nsp[k]); Rp = median(z2, nsp[k])
      printf "| %s | %s | %s | %d (%d) | %d | %d (%d/%d/%d) | %d | %d | %d | %d | %s, %s | %s | %s | %s | %s | %s | %s | %s, %s | %s | %s | %s | %s |\n",
        S[a], (S[a] == "nginx" ? nginxwhat[K[b]] : what[K[b]]), cname[C[d]], m, eunl[k], req[k], elost[k], ereset[k], etime[k], eother[k],
        ewith[k], eref[k], eret[k], slost[k], median(x3, m), maxof(x3, m), St, E, (St > 0 ? sprintf("%.2f", E / St) : "-"),
        maxof(x1, m), maxof(x2, m), (S[a] == "nginx" ? "-" : kills[k]), median(y2, ns[k]), median(x4, m),
        Sp, (St > 0 && Sp != "-" ? sprintf("%.2f", Sp / St) : "-"), Rp, (St > 0 && Rp != "-" ? sprintf("%.2f", Rp / St) : "-")
    }
    first = 1
    for (a = 1; a <= ns_; a++) for (b = 1; b <= nk; b++) for (d = 1; d <= nc; d++) {
      k = S[a] SUBSEP K[b] SUBSEP C[d]; if (notes[k] == "") continue
      if (first) { printf "\nNotes\n\n"; first = 0 }
      printf "* %s, %s, %s: %s\n", S[a], K[b], C[d], notes[k]
    }
    for (a = 1; a <= ns_; a++) if (S[a] == "nginx") {
      printf "\nnginx: TTOU/TTIN and the reuseport variant do not apply (nginx changes its worker count only by a reload); its binary upgrade (USR2, then QUIT to the old master) is another procedure, not measured.\n"
    }
  }' "$results" >"$summary"

if [ -s "$cost_tsv" ] 2>/dev/null && [ "$cost" = yes ]; then
  awk -F'\t' -v rounds="$rounds" -v before="$before" -v rev="$rev" -v cw="$cost_workers" '
    function median(arr, m,   i, j, t, v) {
      for (i = 1; i <= m; i++) v[i] = arr[i] + 0
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
    }
    NR == 1 { next }
    { k = $1 SUBSEP $2; c = ++n[k]; rps[k, c] = $4; p50[k, c] = $5; p99[k, c] = $6; p999[k, c] = $7
      R[$1, $2, $3] = $4; P[$1, $2, $3] = $6; if ($3 > nr) nr = $3
      if (!($1 in seen)) { seen[$1] = 1; order[++ns] = $1 } }
    END {
      printf "\nSteady state: the demos of %s (before the drain) and of %s, %s worker(s), wrk -t1 -c16 -d5s, %s rounds alternating; medians; ratios after/before\n\n", before, rev, cw, rounds
      printf "| server | req/s before | req/s after | ratio | p50 before (µs) | p50 after | ratio | p99 before (µs) | p99 after | ratio | p99 of each round, before | after | median of the rounds'"'"' after/before: req/s, p99 |\n"
      printf "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n"
      for (s = 1; s <= ns; s++) {
        b = order[s] SUBSEP "before"; a = order[s] SUBSEP "after"
        for (i = 1; i <= n[b]; i++) { R0[i] = rps[b, i]; L0[i] = p50[b, i]; P0[i] = p99[b, i]; l0 = l0 (i > 1 ? ", " : "") p99[b, i] }
        for (i = 1; i <= n[a]; i++) { R1[i] = rps[a, i]; L1[i] = p50[a, i]; P1[i] = p99[a, i]; l1 = l1 (i > 1 ? ", " : "") p99[a, i] }
        r0 = median(R0, n[b]); r1 = median(R1, n[a]); q0 = median(L0, n[b]); q1 = median(L1, n[a])
        x0 = median(P0, n[b]); x1 = median(P1, n[a])
        q = 0
        for (r = 1; r <= nr; r++) if ((order[s], "before", r) in R && (order[s], "after", r) in R && R[order[s], "before", r] > 0 && P[order[s], "before", r] > 0) {
          q++; RR[q] = R[order[s], "after", r] / R[order[s], "before", r]; PR[q] = P[order[s], "after", r] / P[order[s], "before", r]
        }
        printf "| %s | %.0f | %.0f | %.2f | %s | %s | %.2f | %s | %s | %.2f | %s | %s | %s |\n", order[s], r0, r1, r1 / r0,
          q0, q1, q1 / q0, x0, x1, x1 / x0, l0, l1, (q ? sprintf("%.2f, %.2f", median(RR, q), median(PR, q)) : "-")
        l0 = ""; l1 = ""
      }
    }' "$cost_tsv" >>"$summary"
fi
if [ -s "$perf_summary" ]; then
  { echo; echo "Profile"; echo; echo '```text'; cat "$perf_summary"; echo '```'; } >>"$summary"
fi
echo
cat "$summary"
echo
echo "drain.sh: results in $out"
