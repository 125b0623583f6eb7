#!/usr/bin/env bash
# Start, stop and inspect the Kong-like gateway fixture from the shell (for `make demo` and
# the benchmarks). The fixture is test/fixture run by hack/gateway (kong-fixture):
# Debian nginx + lua-nginx-module on 127.0.0.1, HTTP and HTTPS/HTTP2, upstreams in the
# kong-fixture process itself. With KW_GATEWAY_KONG=TOP (hack/kong.sh's build) it is real Kong
# instead, through test/fixture's Kong harness: DB-less, its routes and plugins, the proxy,
# Admin API and Status API on 127.0.0.1 (KW_GATEWAY_ADMIN, KW_GATEWAY_STATUS in the env).
#
#   hack/gateway.sh start  [DIR]            start; print KW_GATEWAY_* lines (also in DIR/fixture.env)
#   hack/gateway.sh stop   [DIR]            graceful stop (SIGTERM), SIGKILL after 15 s
#   hack/gateway.sh status [DIR]            exit 0 and print the env when running, else exit 1
#   hack/gateway.sh drive  [DIR] [N]        send N (default 200) requests of the mixed workload
#                                           (on Kong: the Kong harness's mix of routes and plugins)
#   hack/gateway.sh probe  [DIR] [DURATION] Kong only: kubelet probes on the Status API and an
#                                           operator's Admin API reads (default: until killed)
#   hack/gateway.sh load   [DIR] [RATE] [DURATION] [ROUTE]   paced load (default 200/s 10s /fast)
#   hack/gateway.sh reload [DIR]            nginx reload (new workers)
#
# DIR defaults to $KW_GATEWAY_DIR or /tmp/kw-gateway. Start honours KW_GATEWAY_WORKERS (2),
# KW_GATEWAY_HTTP_PORT and KW_GATEWAY_HTTPS_PORT (0: free ports; the fixture only), and
# KW_GATEWAY_KONG (above).
set -euo pipefail

cmd=${1:-}
dir=${2:-${KW_GATEWAY_DIR:-/tmp/kw-gateway}}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$dir/.bin/kong-fixture"
pidfile="$dir/.fixture.pid"

running() {
  [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

build() {
  mkdir -p "$dir/.bin"
  (cd "$root" && go build -o "$bin" ./hack/gateway)
}

case $cmd in
start)
  if running; then
    echo "gateway already running in $dir (pid $(cat "$pidfile"))" >&2
    cat "$dir/fixture.env"
    exit 0
  fi
  mkdir -p "$dir"
  build
  rm -f "$dir/fixture.env"
  kong=()
  wait_s=30
  if [[ -n ${KW_GATEWAY_KONG:-} ]]; then
    kong=(-kong "$KW_GATEWAY_KONG")
    wait_s=120 # kong prepare, then every worker's router and plugins
  fi
  # setsid: the fixture outlives this shell and is stopped only through `stop`.
  setsid "$bin" serve -dir "$dir" -workers "${KW_GATEWAY_WORKERS:-2}" \
    -http-port "${KW_GATEWAY_HTTP_PORT:-0}" -https-port "${KW_GATEWAY_HTTPS_PORT:-0}" "${kong[@]}" \
    >"$dir/fixture.out" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 $((wait_s * 10))); do
    if [[ -f $dir/fixture.env ]]; then
      cat "$dir/fixture.env"
      exit 0
    fi
    if ! running; then
      echo "gateway failed to start:" >&2
      cat "$dir/fixture.out" >&2
      rm -f "$pidfile"
      exit 1
    fi
    sleep 0.1
  done
  echo "gateway not ready after $wait_s s; stopping it" >&2
  "$0" stop "$dir" || true
  exit 1
  ;;
stop)
  if ! running; then
    echo "gateway not running in $dir" >&2
    rm -f "$pidfile"
    exit 0
  fi
  pid=$(cat "$pidfile")
  # Remember nginx's PIDs: if the fixture must be killed, its nginx must not survive it.
  # shellcheck disable=SC1091
  master=$(sed -n 's/^KW_GATEWAY_MASTER_PID=//p' "$dir/fixture.env" 2>/dev/null || true)
  kill -TERM "$pid"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "gateway did not stop in 15 s; killing it" >&2
    kill -KILL "$pid" || true
    if [[ -n $master ]]; then
      # nginx runs in its own process group, led by the master.
      kill -KILL -- "-$master" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
  echo "gateway stopped"
  ;;
status)
  if running; then
    cat "$dir/fixture.env"
    exit 0
  fi
  echo "gateway not running in $dir" >&2
  exit 1
  ;;
drive)
  running || { echo "gateway not running in $dir" >&2; exit 1; }
  [[ -x $bin ]] || build
  "$bin" drive -dir "$dir" -n "${3:-200}"
  ;;
load)
  running || { echo "gateway not running in $dir" >&2; exit 1; }
  [[ -x $bin ]] || build
  "$bin" load -dir "$dir" -rate "${3:-200}" -duration "${4:-10s}" -route "${5:-/fast}"
  ;;
probe)
  running || { echo "gateway not running in $dir" >&2; exit 1; }
  [[ -x $bin ]] || build
  exec "$bin" probe -dir "$dir" -duration "${3:-0}" # exec: its PID is this one's
  ;;
reload)
  running || { echo "gateway not running in $dir" >&2; exit 1; }
  kill -HUP "$(cat "$pidfile")"
  ;;
*)
  sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
  ;;
esac
