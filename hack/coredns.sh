#!/usr/bin/env bash
# Builds CoreDNS (the cluster DNS of `make e2e`'s cluster, hack/e2e-cluster.sh) from its Go
# module into a cache directory outside the clone (kept across fresh clones on the same
# machine, like hack/helm.sh and hack/k8s-binaries.sh), and skips the build when the binary is
# already there. Prints the binary's path on stdout (last line).
#
# The binary is CoreDNS's own main package (github.com/coredns/coredns, every in-tree plugin),
# built in a separate tools module (~/.cache/kong-watcher/coredns-VERSION/tools) so that the
# project's go.mod neither constrains nor records its dependencies. Not `go install pkg@version`:
# a tools module keeps its go.mod/go.sum beside the binary for the next person to read.
# On 2 cores: about 3 min with an empty Go build cache (plus the module downloads), once.
set -euo pipefail

COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
CACHE="${KONG_WATCHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kong-watcher}"
DIR="$CACHE/coredns-$COREDNS_VERSION"
BIN="$DIR/bin"

if [[ ! -x "$BIN/coredns" ]]; then
  mkdir -p "$BIN" "$DIR/tools"
  echo "building coredns $COREDNS_VERSION" >&2
  start=$(date +%s)
  (
    cd "$DIR/tools"
    if [[ ! -f go.mod ]]; then
      printf 'module kong-watcher.io/coredns-tools\n\ngo 1.26\n' > go.mod
    fi
    export GOFLAGS=-mod=mod
    go get "github.com/coredns/coredns@$COREDNS_VERSION" >&2
    # Static, like the other cluster binaries; the version is CoreDNS's own (coremain.CoreVersion).
    CGO_ENABLED=0 go build -o "$BIN/coredns.tmp" github.com/coredns/coredns >&2
    mv "$BIN/coredns.tmp" "$BIN/coredns"
  )
  echo "built coredns $COREDNS_VERSION in $(($(date +%s) - start))s" >&2
fi
echo "$BIN/coredns"
