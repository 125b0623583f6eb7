#!/usr/bin/env bash
# Builds the helm CLI from its Go module into a cache directory outside the clone (kept across
# fresh clones on the same machine, like hack/k8s-binaries.sh), and skips the build when the
# binary is already there. Prints the binary's path on stdout (last line).
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.2}"
CACHE="${KONG_WATCHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kong-watcher}"
BIN="$CACHE/helm-$HELM_VERSION/bin"

if [[ ! -x "$BIN/helm" ]]; then
  mkdir -p "$BIN"
  echo "building helm $HELM_VERSION" >&2
  # Run outside the clone so the project's go.mod neither constrains nor records helm's deps.
  (cd "$BIN" && GOFLAGS=-mod=mod GOBIN="$BIN" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2)
fi
echo "$BIN/helm"
