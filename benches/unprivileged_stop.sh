#!/usr/bin/env bash
# Graceful stops under load, as root and as an unprivileged user: how many connections the
# kernel accepted (the client's connect succeeded) were then reset or never answered.
#
# For every stop: the hello example (--release, 4 workers, a copy in a temp dir that the
# unprivileged user may run) starts on 127.0.0.1:PORT, as root or with
#   setpriv --reuid 65534 --regid 65534 --clear-groups
# prefork-load (--conn new --clients 16: one connection per request) loads it for DURATION
# seconds, TERM reaches the master after 1 s, and the load's JSON line is kept. "lost" is the
# load's reset + timeout + other; refused connections are not lost (the client was told,
# and never sent its request).
#
# usage: benches/unprivileged_stop.sh [--stops N] [--users "root nobody"] [--modes "fork reuseport"]
#                                     [--duration SECS] [--port PORT] [--out DIR]
# Loopback only; each stop takes about DURATION + 1 seconds (default: 20 stops x 2 users x
# 2 modes, about 3 minutes). Results: DIR (default target/bench-unprivileged-stop):
# every load report and server log, summary.tsv.
set -euo pipefail
. "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/.."

stops=20
users="root nobody"
modes="fork reuseport"
duration=2
port=18733
out=target/bench-unprivileged-stop
while [ $# -gt 0 ]; do
  case "$1" in
    --stops) stops="$2"; shift 2 ;;
    --users) users="$2"; shift 2 ;;
    --modes) modes="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unprivileged_stop.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet --example hello --features control-client
cargo build --release --quiet -p prefork-demos --bin prefork-load
mkdir -p "$out"
bin=$(mktemp -d /tmp/prefork-stop.XXXXXX)
trap 'rm -rf "$bin"' EXIT
cp target/release/examples/hello "$bin/hello"
chmod 755 "$bin" "$bin/hello"
load=target/release/prefork-load

num() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" "$2"; }

printf 'user\tmode\tstops\tok\trefused\tlost\tstops_with_loss\twarnings\n' >"$out/summary.tsv"
for user in $users; do
  for mode in $modes; do
    run=(); [ "$user" = nobody ] && run=(setpriv --reuid 65534 --regid 65534 --clear-groups)
    flags=(); [ "$mode" = reuseport ] && flags=(--reuseport)
    ok=0 refused=0 lost=0 lossy=0 warnings=0
    for i in $(seq "$stops"); do
      log="$out/$user-$mode-$i"
      if http_ready "$port" 1 0; then echo "port $port is taken by another server" >&2; exit 1; fi
      setsid "${run[@]}" "$bin/hello" --workers 4 --addr "127.0.0.1:$port" "${flags[@]}" \
        2>"$log.server" >/dev/null &
      server=$!
      http_ready "$port" 100 0.05 || { echo "server did not start: $log.server" >&2; exit 1; }
      "$load" --addr "127.0.0.1:$port" --conn new --clients 16 --duration "$duration" \
        >"$log.json" 2>/dev/null &
      client=$!
      sleep 1
      kill -TERM "$server"
      wait "$server" || true
      wait "$client" || true
      n_ok=$(num ok "$log.json"); n_ref=$(num refused "$log.json")
      n_lost=$(( $(num reset "$log.json") + $(num timeout "$log.json") + $(num other "$log.json") ))
      ok=$((ok + n_ok)); refused=$((refused + n_ref)); lost=$((lost + n_lost))
      [ "$n_lost" -gt 0 ] && lossy=$((lossy + 1))
      warnings=$((warnings + $(grep -c 'cannot stop new connections' "$log.server" || true)))
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$user" "$mode" "$stops" "$ok" "$refused" \
      "$lost" "$lossy" "$warnings" | tee -a "$out/summary.tsv"
  done
done
