#!/usr/bin/env bash
# make demo: install what is missing, build, start a gateway, drive a mixed traffic load at it,
# run the agent and show its live statistics as a refreshing table. Stops everything on Ctrl-C
# or after --duration.
#
#   hack/demo.sh [--duration 60s] [--rate 200] [--plain] [--fixture]
#
# The gateway is real Kong 3.8.1 when hack/kong.sh has built it (`make kong`; the demo never
# builds it): DB-less, 2 workers, test/fixture's routes and plugins, its proxy, Admin API and
# Status API on 127.0.0.1; besides the proxy's traffic, kubelet-like probes on the Status API
# and an operator's reads on the Admin API. Otherwise, or with --fixture (or KW_KONG=none), it
# is the Kong-like fixture (nginx + Lua). KW_KONG=TOP names another Kong build.
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
    --fixture) KW_KONG=none; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# Real Kong when it is built: `hack/kong.sh --check` answers without building.
kong_top=${KW_KONG:-}
if [[ -z $kong_top ]]; then
  kong_top=$(hack/kong.sh --check 2>/dev/null) || kong_top=""
elif [[ $kong_top == none ]]; then
  kong_top=""
elif [[ ! -x $kong_top/stripped/nginx || ! -x $kong_top/bin/kong ]]; then
  echo "KW_KONG=$kong_top: not a build of hack/kong.sh (stripped/nginx, bin/kong missing)" >&2
  exit 1
fi

dir=$(mktemp -d /tmp/kw-demo.XXXXXX)
agent_pid=""
load_pid=""
probe_pid=""
cleanup() {
  trap - EXIT INT TERM
  [[ -n $load_pid ]] && kill "$load_pid" 2>/dev/null || true
  [[ -n $probe_pid ]] && kill "$probe_pid" 2>/dev/null || true
  [[ -n $agent_pid ]] && kill -INT "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  hack/gateway.sh stop "$dir" >/dev/null 2>&1 || true
  echo
  echo "demo stopped; agent log: $dir/agent.log"
}
trap cleanup EXIT INT TERM

if [[ -n $kong_top ]]; then
  echo "starting real Kong (DB-less, 2 workers; build $kong_top) in $dir/kong ..."
  KW_GATEWAY_KONG=$kong_top hack/gateway.sh start "$dir" >/dev/null
else
  why="Kong is not built: \`make kong\` builds it"
  [[ ${KW_KONG:-} == none ]] && why="--fixture or KW_KONG=none"
  echo "starting the Kong-like gateway fixture (nginx + Lua; $why) in $dir ..."
  hack/gateway.sh start "$dir" >/dev/null
fi
# shellcheck disable=SC1091
source "$dir/fixture.env"
if [[ $KW_GATEWAY_KIND == kong ]]; then
  title="real Kong $KW_GATEWAY_KONG_VERSION"
  echo "$title: master $KW_GATEWAY_MASTER_PID, proxy $KW_GATEWAY_HTTP and $KW_GATEWAY_HTTPS (TLS, HTTP/2)," \
    "Admin API $KW_GATEWAY_ADMIN, Status API $KW_GATEWAY_STATUS"
else
  title="the Kong-like fixture"
  echo "$title: master $KW_GATEWAY_MASTER_PID, proxy $KW_GATEWAY_HTTP and $KW_GATEWAY_HTTPS (TLS, HTTP/2)"
fi

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
# slow upstream, Lua routes; on Kong: every route and plugin of the harness) in bursts, plus a
# steady paced load on /users/42 (on Kong: the users route, proxied to the backend).
(
  end=$(( $(date +%s) + (secs > 0 ? secs : 86400) ))
  while [[ $(date +%s) -lt $end ]]; do
    hack/gateway.sh drive "$dir" 150 >/dev/null 2>&1 || true
    hack/gateway.sh load "$dir" "$rate" 5s /users/42 >/dev/null 2>&1 || true
  done
) &
load_pid=$!
if [[ $KW_GATEWAY_KIND == kong ]]; then
  # What a pod's other listeners see: the kubelet's probes on the Status API (and a Prometheus
  # scrape), an operator's reads on the Admin API.
  hack/gateway.sh probe "$dir" "${secs}s" >"$dir/probe.out" 2>&1 &
  probe_pid=$!
fi

if [[ $secs -gt 0 ]]; then
  bin/kong-watcher-agent top "http://127.0.0.1:$port/stats" -n "$secs" -title "$title" $plain
else
  bin/kong-watcher-agent top "http://127.0.0.1:$port/stats" -title "$title" $plain
fi
