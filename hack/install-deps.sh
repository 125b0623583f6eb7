#!/usr/bin/env bash
# Installs the Debian packages the build, the tests, the benchmarks and the demo need, when
# they are missing. Safe to run repeatedly; does nothing when everything is there.
set -euo pipefail
pkgs=(clang llvm libbpf-dev bpftool nginx libnginx-mod-http-lua wrk curl openssl iproute2
  util-linux libcap2-bin procps nghttp2-client bpftrace)
# --e2e: also what the local cluster of `make e2e` needs (hack/e2e-cluster.sh).
if [[ "${1:-}" == "--e2e" ]]; then
  pkgs+=(containerd runc containernetworking-plugins iptables buildah)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# Debian's nginx package starts a system nginx where an init system runs; the fixture uses
# its own prefix and ports, so a system nginx is harmless, but keep the machine quiet.
if command -v service >/dev/null && pgrep -x nginx >/dev/null && [[ -f /run/nginx.pid ]]; then
  service nginx stop >/dev/null 2>&1 || true
fi
