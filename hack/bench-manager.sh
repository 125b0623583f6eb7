#!/usr/bin/env bash
# Benchmarks the kong-watcher manager (the cmd/webhook binary) under agent reports: 1,000
# simulated agents each POST a Report every 30 s to 2 manager processes, on a real
# kube-apiserver + etcd (envtest) with config/default's RBAC and ValidatingAdmissionPolicies,
# 20 Deployments x 50 pods and one pod-bound token per pod. Prints the managers' CPU and RSS,
# the API server's writes and TokenReviews per second, the report latency and status codes,
# and ends with `BENCH <name> <value>` lines. Exit status 1 when a steady round saw anything
# but 200. Default run: about 3 minutes (setup, one cold round, three steady rounds).
#
#   make bench-manager                      # prints only
#   make bench-manager-docs                 # also rewrites "## Manager: agent reports" in docs/benchmarks.md (when it passed)
#   BENCH_ARGS="-agents 2000 -duration 3m" hack/bench-manager.sh
#
# Environment:
#   KW_BENCH_WRITE_DOCS=1  rewrite the section of docs/benchmarks.md (only after a passing run)
#   BENCH_DURATION=2m      reporting time: the cold round and the steady rounds (-duration)
#   BENCH_NICE=-15         the harness (and the API server, etcd and managers it starts) runs in its
#                          own session whose scheduler autogroup gets this niceness, as in
#                          hack/bench-agent.sh: on a VM shared with builds plain nice does little.
#                          0 = leave priorities alone. Needs root to go below 0.
#   BENCH_ARGS="..."       more flags for hack/benchmanager (-h lists them)
# Only loopback traffic: the API server, etcd and the managers listen on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${KUBEBUILDER_ASSETS:-}" ]]; then
  KUBEBUILDER_ASSETS="$(hack/k8s-binaries.sh | tail -1)"
  export KUBEBUILDER_ASSETS
fi
tmp="$(mktemp -d "${TMPDIR:-/tmp}/kw-bench-manager-bin.XXXXXX")"
child=
cleanup() {
  [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

version="$(git describe --tags --always --dirty 2>/dev/null || echo dev)"
go build -o "$tmp/benchmanager" ./hack/benchmanager
# The manager exactly as `make build` builds it.
CGO_ENABLED=0 go build -ldflags "-s -w -X github.com/kong-watcher/kong-watcher/internal/version.Version=$version" \
  -o "$tmp/kong-watcher-webhook" ./cmd/webhook

args=(-manager "$tmp/kong-watcher-webhook" -manager-version "$version")
[[ "${KW_BENCH_WRITE_DOCS:-}" == 1 ]] && args+=(-doc docs/benchmarks.md)
[[ -n "${BENCH_DURATION:-}" ]] && args+=(-duration "$BENCH_DURATION")
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
run=("$tmp/benchmanager" "${args[@]}" ${BENCH_ARGS:-})

nice_val=${BENCH_NICE:--15}
if [[ "$nice_val" == 0 || ( $EUID -ne 0 && "$nice_val" -lt 0 ) ]]; then
  "${run[@]}"
  exit
fi
# A background job of this (non-interactive) script is not a process-group leader, so setsid
# makes it a session leader without forking: $! is the harness itself.
setsid bash -c 'n=$1; shift
  echo "$n" >/proc/self/autogroup 2>/dev/null ||
    echo "bench-manager: could not set the autogroup niceness to $n (numbers will be noisier)" >&2
  exec nice -n "$n" "$@"' bench-manager "$nice_val" "${run[@]}" &
child=$!
rc=0
while :; do
  wait "$child" && rc=0 || rc=$?
  kill -0 "$child" 2>/dev/null || break
done
child=
exit "$rc"
