#!/usr/bin/env bash
# make demo: install what is missing, build, start the Kong-like gateway fixture, drive a mixed
# traffic load at it, run the agent and show its live statistics as a refreshing table.
# Stops everything on Ctrl-C or after --duration.
#
#   hack/demo.sh [--duration 60s] [--rate 200] [--plain]
#
# Needs root (eBPF). Everything runs on 127.0.0.1.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

duration=""
rate=200
plain=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --duration=*) duration=${1#*=}; shift ;;
    --rate) rate=$2; shift 2 ;;
    --rate=*) rate=${1#*=}; shift ;;
    --plain) plain=--plain; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
secs=0
if [[ -n $duration ]]; then
  case $duration in
    *m) secs=$(( ${duration%m} * 60 )) ;;
    *s) secs=${duration%s} ;;
    *) secs=$duration ;;
  esac
  [[ $secs =~ ^[0-9]+$ && $secs -gt 0 ]] || { echo "--duration wants e.g. 30s or 2m" >&2; exit 2; }
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "make demo needs root: the agent loads eBPF programs and attaches uprobes" >&2
  exit 1
fi

hack/install-deps.sh
make --no-print-directory build >/dev/null

dir=$(mktemp -d /tmp/kw-demo.XXXXXX)
agent_pid=""
load_pid=""
cleanup() {
  trap - EXIT INT TERM
  [[ -n $load_pid ]] && kill "$load_pid" 2>/dev/null || true
  [[ -n $agent_pid ]] && kill -INT "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  hack/gateway.sh stop "$dir" >/dev/null 2>&1 || true
  echo
  echo "demo stopped; agent log: $dir/agent.log"
}
trap cleanup EXIT INT TERM

echo "starting the Kong-like gateway fixture (nginx + Lua) in $dir ..."
hack/gateway.sh start "$dir" >/dev/null
# shellcheck disable=SC1091
source "$dir/fixture.env"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 19464)
echo "starting the agent on 127.0.0.1:$port (log: $dir/agent.log) ..."
METRICS_ADDR=127.0.0.1:$port STATS_INTERVAL=10s KONG_WATCHER_ONLY_PIDS=$KW_GATEWAY_MASTER_PID \
  bin/kong-watcher-agent >"$dir/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  if ! kill -0 "$agent_pid" 2>/dev/null; then echo "the agent exited:" >&2; cat "$dir/agent.log" >&2; exit 1; fi
  sleep 0.2
done

# Mixed traffic: every kind of request (HTTP/1.1, pipelining, TLS, HTTP/2, errors, uploads,
# slow upstream, Lua routes) in bursts, plus a steady paced load on the Kong-like route.
(
  end=$(( $(date +%s) + (secs > 0 ? secs : 86400) ))
  while [[ $(date +%s) -lt $end ]]; do
    hack/gateway.sh drive "$dir" 150 >/dev/null 2>&1 || true
    hack/gateway.sh load "$dir" "$rate" 5s /users/42 >/dev/null 2>&1 || true
  done
) &
load_pid=$!

if [[ $secs -gt 0 ]]; then
  bin/kong-watcher-agent top "http://127.0.0.1:$port/stats" -n "$secs" $plain
else
  bin/kong-watcher-agent top "http://127.0.0.1:$port/stats" $plain
fi
