#!/usr/bin/env bash
# Builds the real Kubernetes test binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, etcd) from Go modules into a cache directory outside
# the clone, and skips every binary that is already there. Prints the directory on stdout
# (last line), which is what envtest's KUBEBUILDER_ASSETS expects.
#
#   hack/k8s-binaries.sh            # apiserver, controller-manager, etcd (what envtest needs)
#   hack/k8s-binaries.sh --cluster  # also kube-scheduler, kubelet and kube-proxy (the e2e cluster)
#
# Why a separate tools module: k8s.io/kubernetes is not meant to be imported; it only builds
# when every k8s.io/<staging> module is replaced by the matching v0.x release. Keeping that in
# its own module keeps the project's go.mod clean.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.0}"
CACHE="${KONG_WATCHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kong-watcher}"
BIN="$CACHE/k8s-$K8S_VERSION/bin"
TOOLS="$CACHE/k8s-$K8S_VERSION/tools"

want=(kube-apiserver kube-controller-manager etcd)
if [[ "${1:-}" == "--cluster" ]]; then
  want+=(kube-scheduler kubelet kube-proxy)
fi

missing=()
for b in "${want[@]}"; do
  [[ -x "$BIN/$b" ]] || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$BIN" "$TOOLS"
cd "$TOOLS"
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice
  externaljwt kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl
  kubelet metrics mount-utils pod-security-admission streaming)
minor="${K8S_VERSION#v1.}"            # 37.2
staging_version="v0.${minor}"        # v0.37.2
if [[ ! -f go.mod ]]; then
  {
    echo "module kong-watcher.io/k8s-tools"
    echo
    echo "go 1.26.8"
    echo
    echo "replace ("
    for m in "${staging[@]}"; do echo "	k8s.io/$m => k8s.io/$m $staging_version"; done
    echo ")"
  } > go.mod
fi
export GOFLAGS=-mod=mod
# Pin k8s.io/kubernetes: a bare `go get -tool` would upgrade it past the replaces.
go get "k8s.io/kubernetes@$K8S_VERSION" >&2
go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2

gitmajor=1
gitminor="${minor%%.*}"
ld="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$gitmajor -X k8s.io/component-base/version.gitMinor=$gitminor"
ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$gitmajor -X k8s.io/client-go/pkg/version.gitMinor=$gitminor"

for b in "${missing[@]}"; do
  case "$b" in
    etcd) pkg=go.etcd.io/etcd/server/v3 ;;
    *) pkg="k8s.io/kubernetes/cmd/$b" ;;
  esac
  echo "building $b ($pkg)" >&2
  # No -trimpath: the project's own test build then reuses the compiled k8s.io packages.
  CGO_ENABLED=0 go build -ldflags "$ld" -o "$BIN/$b.tmp" "$pkg" >&2
  mv "$BIN/$b.tmp" "$BIN/$b"
done
echo "$BIN"
