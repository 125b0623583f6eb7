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
finish() {
  if [[ "$ok" != 1 ]]; then
    echo "e2e FAILED; component logs:" >&2
    hack/e2e-cluster.sh logs >&2 || true
  fi
  if [[ "$KEEP" == 1 ]]; then
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

envfile="$(hack/e2e-cluster.sh up | tail -1)"
set -a
# shellcheck disable=SC1090
. "$envfile"
set +a
KW_E2E_KEEP="$KEEP" go test -tags e2e -count=1 -v -timeout 30m ./test/e2e
ok=1
