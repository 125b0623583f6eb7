#!/usr/bin/env bash
# Gateway throughput and CPU with vs without the kong-watcher agent (make bench).
#
# Starts the Kong-like gateway fixture (test/fixture, 2 nginx workers, loopback only), then
# alternates rounds without and with bin/kong-watcher-agent for four scenarios (Kong-like
# Lua + proxy route, `return 200`, HTTP/1.1 over TLS, HTTP/2 with h2load), measures the extra
# CPU per request at a paced 2,000 req/s, the agent's RSS, and its accuracy and dropped
# events at a paced 5,000 req/s. Prints a table, rewrites the "## Agent" section of
# docs/benchmarks.md, and ends with `BENCH <figure> <value>` lines. Default run: ~4 minutes.
#
# Environment:
#   BENCH_QUICK=1        smoke test: 1 round of 2 s, short CPU/drop runs, docs untouched (< 1 min)
#   BENCH_ROUNDS=N       rounds per scenario (default 3)
#   BENCH_DURATION=5s    measured time per side per round (default 5s)
#   KW_AGENT=path        the agent binary (default bin/kong-watcher-agent; "none" = A/A run)
#   BENCH_NICE=-15       the harness runs in its own session whose scheduler autogroup gets this
#                        niceness (and so do its processes: nginx, the agent, wrk, h2load). The
#                        kernel schedules autogroups (one per session) fairly against each other,
#                        so on a VM shared with builds plain `nice` does nothing and the gateway
#                        would get a small, varying share of the CPU. 0 = leave priorities alone.
#   BENCH_ARGS="..."     more flags for test/benchagent (-h lists them: -pin, -scenarios,
#                        -cpu-rounds, -lua-phases, -data-path, -strict, ...)
# Needs root, nginx + libnginx-mod-http-lua, wrk, h2load (nghttp2-client): hack/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
  echo "bench-agent: needs root (the agent attaches uprobes)" >&2
  exit 2
fi
for tool in nginx wrk h2load taskset; do
  if ! command -v "$tool" >/dev/null && ! [[ -x /usr/sbin/$tool ]]; then
    echo "bench-agent: $tool missing; running hack/install-deps.sh" >&2
    hack/install-deps.sh
    break
  fi
done

args=()
[[ "${BENCH_QUICK:-}" == 1 || "${BENCH_QUICK:-}" == true ]] && args+=(-quick)
[[ -n "${BENCH_ROUNDS:-}" ]] && args+=(-rounds "$BENCH_ROUNDS")
[[ -n "${BENCH_DURATION:-}" ]] && args+=(-duration "$BENCH_DURATION")
args+=(-agent "${KW_AGENT:-bin/kong-watcher-agent}")

mkdir -p bin
CGO_ENABLED=0 go build -o bin/kong-watcher-benchagent ./test/benchagent
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
run=(bin/kong-watcher-benchagent "${args[@]}" ${BENCH_ARGS:-})
nice_val=${BENCH_NICE:--15}
if [[ "$nice_val" == 0 ]]; then
  exec "${run[@]}"
fi
# A background job of this (non-interactive) script is not a process-group leader, so setsid
# makes it a session leader without forking: $! is the harness itself.
setsid bash -c 'n=$1; shift
  echo "$n" >/proc/self/autogroup 2>/dev/null ||
    echo "bench-agent: could not set the autogroup niceness to $n (numbers will be noisier)" >&2
  exec nice -n "$n" "$@"' bench-agent "$nice_val" "${run[@]}" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' INT TERM HUP
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  kill -0 "$child" 2>/dev/null || break
done
exit "$rc"
