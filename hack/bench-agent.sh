#!/usr/bin/env bash
# What the kong-watcher agent costs the gateway, side by side with the physical limit of its
# design (make bench prints; make bench-docs also rewrites the "## Agent" section of
# docs/benchmarks.md, only after a run whose counting was exact).
#
# Starts the Kong-like gateway fixture (test/fixture, 2 nginx workers, loopback only) and, on
# four routes (Kong-like Lua + proxy, `return 200`, HTTP/1.1 over TLS, HTTP/2 with h2load),
# alternates rounds of three sides: none (no probe), floor (an EMPTY BPF program on the same
# uprobe, ngx_http_free_request, attached with bpftrace: what any one-trap design pays here)
# and agent (bin/kong-watcher-agent). On the Kong-like route also paired runs: two gateways of
# one worker each under load at the same time, the agent on one and the floor on the other,
# then swapped, so that a burst of other work on the machine slows both alike (BENCH
# kong_like_paired_*). Then the agent's own CPU per request at paced 2,000 and 20,000 req/s,
# its BPF run time per request at saturation, its memory, and exact counting
# with no dropped event at a paced 5,000 req/s; then the same three sides on real Kong 3.8.1
# (hack/kong.sh's build, when it is built: `make kong`) on a key-auth + rate-limiting +
# request-transformer route after a 25 s warm-up, and on that route what Lua phase timing costs
# (the agent with KONG_WATCHER_LUA_PHASES=off and =on alternating at a paced 1,000 req/s).
# Ends with `BENCH <figure> <value>` lines.
# Exit status 1 when the agent's count differs from the access log or it dropped events (the
# throughput targets are printed, not enforced, unless BENCH_ARGS=-strict).
# Default run: about 18 minutes on this 2-vCPU VM (14 without real Kong; BENCH_ROUNDS=3: about 15);
# BENCH_QUICK=1: about 2.
#
# Environment:
#   KW_BENCH_WRITE_DOCS=1 rewrite the "## Agent" section of docs/benchmarks.md (make bench-docs)
#   BENCH_QUICK=1        smoke test: 1 round of 2 s, short CPU/drop runs and Kong warm-up, docs untouched
#   BENCH_ROUNDS=N       rounds per fixture route (default 6: every side twice in every position)
#   BENCH_DURATION=3s    measured time per side per round (default 3s)
#   KW_AGENT=path        the agent binary (default bin/kong-watcher-agent; "none" = A/A run)
#   KW_KONG=TOP          real Kong's build (default: hack/kong.sh's, when it is built; "none" = skip)
#   BENCH_NICE=-15       the harness runs in its own session whose scheduler autogroup gets this
#                        niceness (and so do its processes: nginx, the agent, bpftrace, wrk,
#                        h2load). The kernel schedules autogroups (one per session) fairly against
#                        each other, so on a VM shared with builds plain `nice` does nothing and the
#                        gateway would get a small, varying share of the CPU. 0 = leave priorities alone.
#   BENCH_ARGS="..."     more flags for test/benchagent (-h lists them: -pin, -scenarios,
#                        -cpu-rounds, -kong-rounds, -floor=false, -lua-phases, -data-path, -strict, ...)
# Needs root, nginx + libnginx-mod-http-lua, wrk, h2load (nghttp2-client), bpftrace, bpftool:
# hack/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
  echo "bench-agent: needs root (the agent attaches uprobes)" >&2
  exit 2
fi
for tool in nginx wrk h2load taskset bpftrace bpftool; do
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
[[ "${KW_BENCH_WRITE_DOCS:-}" == 1 ]] && args+=(-write-doc -command "make bench-docs")

# Real Kong: the build hack/kong.sh keeps in its cache (the same path it computes), used when it
# is complete; building it takes minutes, so the benchmark never starts that itself.
kong_top=${KW_KONG:-}
if [[ -z "$kong_top" ]]; then
  cache="${KONG_WATCHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kong-watcher}"
  if [[ -f "$cache/kong-3.8.1/.kong-watcher-built" ]]; then
    kong_top="$(hack/kong.sh | tail -1)"
  else
    echo "bench-agent: real Kong is not built ($cache/kong-3.8.1): its round set is skipped; \`make kong\` builds it" >&2
  fi
fi
[[ -n "$kong_top" ]] && args+=(-kong "$kong_top")

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
