#!/usr/bin/env bash
# `make e2e`: the whole user story on a real single-node cluster (issue 5).
#
#   hack/e2e.sh           # up, play the story (test/e2e), down
#   KEEP=1 hack/e2e.sh    # leave the cluster and the install running; prints the kubeconfig
#
# Fails loudly when the machine cannot run the cluster: the cluster script names what is
# missing, and a failed run prints every component's log before tearing down.
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP="${KEEP:-0}"
hack/install-deps.sh --e2e

start=$(date +%s)
ok=0
busy=0
finish() {
  if [[ "$ok" != 1 && "$busy" != 1 ]]; then
    echo "e2e FAILED; component logs:" >&2
    hack/e2e-cluster.sh logs >&2 || true
  fi
  if [[ "$busy" == 1 ]]; then
    echo "another hack/e2e-cluster.sh is bringing a cluster up or down: not touching it" >&2
  elif [[ "$KEEP" == 1 ]]; then
    echo
    echo "The cluster and the install are still running (KEEP=1). Explore them with:"
    echo "  export KUBECONFIG=${KW_E2E_DIR:-/tmp/kong-watcher-e2e}/admin.kubeconfig"
    echo "  kubectl get pods -A; kubectl describe pod -n kong -l app.kubernetes.io/name=kong-gateway"
    echo "Remove everything with: make e2e-down"
  else
    hack/e2e-cluster.sh down || true
  fi
  echo "e2e: $([[ "$ok" == 1 ]] && echo PASS || echo FAIL) in $(($(date +%s) - start))s" >&2
}
trap finish EXIT

# A cluster kept by an earlier `make e2e KEEP=1` is reused (its images rebuilt), then removed
# at the end unless KEEP=1 again.
rc=0
envfile="$(hack/e2e-cluster.sh up | tail -1)" || rc=$?
if [[ "$rc" == 75 ]]; then
  busy=1
fi
[[ "$rc" == 0 ]] || exit "$rc"
set -a
# shellcheck disable=SC1090
. "$envfile"
set +a
KW_E2E_KEEP="$KEEP" go test -tags e2e -count=1 -v -timeout 30m ./test/e2e
ok=1
