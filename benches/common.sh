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
