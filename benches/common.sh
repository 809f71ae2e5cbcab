# Shell functions shared by the benchmark scripts (sourced, not run).

# install_missing WHO PACKAGE...: installs the Debian packages given with apt-get (nothing
# when none is given), saying so as WHO.
install_missing() {
  local who=$1
  shift
  [ $# -gt 0 ] || return 0
  echo "$who: installing $*"
  apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
}

# http_ready PORT TRIES INTERVAL: succeeds once a GET / on 127.0.0.1:PORT is answered with
# 200, polling at most TRIES times, INTERVAL seconds apart.
http_ready() {
  local port=$1 tries=$2 interval=$3
  for _ in $(seq "$tries"); do
    if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
      printf 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
      if head -c 12 <&3 | grep -q '200'; then exec 3<&- 3>&-; return 0; fi
      exec 3<&- 3>&-
    fi
    sleep "$interval"
  done
  return 1
}

# nginx_conf DIR WORKERS ADDR: writes DIR/nginx.conf (creating DIR): nginx in the
# foreground with WORKERS worker processes, its pid, logs and temporary files in DIR, no
# access log, unlimited keep-alive requests, answering every request on ADDR with 200 and a
# body as long as the hello examples' answers.
nginx_conf() {
  local dir=$1 workers=$2 addr=$3
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
    keepalive_timeout 75s;
    client_body_temp_path $dir;
    proxy_temp_path $dir;
    server {
        listen $addr;
        location / {
            default_type text/plain;
            return 200 "Hello from worker 0 (pid 1234567)\n";
        }
    }
}
EOF
}

# write_wrk_report FILE: the wrk script that prints latency percentiles in µs from wrk's own
# histogram (LATENCY_US p50 p99 p99.9 max), its socket errors (ERRORS connect read write
# status timeout) and the requests it made in how many µs (REQUESTS n duration).
write_wrk_report() {
  cat >"$1" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("LATENCY_US %d %d %d %d\n", latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9), latency.max))
  local e = summary.errors
  io.write(string.format("ERRORS %d %d %d %d %d\n", e.connect, e.read, e.write, e.status,
    e.timeout))
  io.write(string.format("REQUESTS %d %d\n", summary.requests, summary.duration))
end
LUA
}

# Whether any process of group $1 is still running (zombies do not count).
group_alive() {
  [ -n "$1" ] && ps -o stat= -g "$1" 2>/dev/null | grep -qv '^Z'
}

# stop_group NAME PID PGID: TERM to the master PID, up to 10 s for its process group PGID to
# end, then KILL to the group (said on stderr, as NAME), and the group reaped.
stop_group() {
  local name=$1 pid=$2 pgid=$3
  [ -n "$pgid" ] || return 0
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  for _ in $(seq 1000); do
    group_alive "$pgid" || break
    sleep 0.01
  done
  if group_alive "$pgid"; then
    echo "$name: server group $pgid still running 10 s after TERM; killing it" >&2
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  wait "$pgid" 2>/dev/null || true
}
