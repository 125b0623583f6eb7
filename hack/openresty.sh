#!/usr/bin/env bash
# Builds plain OpenResty (nginx + OpenResty's patches + lua-nginx-module on LuaJIT, configured
# as Kong ships it) from the source folder KONG_WATCHER_THIRD_PARTY/openresty (see
# hack/third-party.sh) into a cache directory outside the clone, and skips the build when it is
# there. Prints the build's TOP on stdout (last line): TOP/nginx/sbin/nginx (with symbols),
# TOP/nginx/sbin/nginx-stripped (as a shipped binary may be; run as TOP/stripped/nginx),
# TOP/lualib (resty.core).
#
#   hack/openresty.sh 1.25.3.2          # Kong 3.6-3.9's line (nginx 1.25.3); 1-5 minutes on 2 cores
#   hack/openresty.sh 1.27.1.2          # Kong 3.10+'s line (nginx 1.27.1)
#   hack/openresty.sh --check VERSION   never builds: prints TOP when the build is complete,
#                                       else exits 1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/cache.sh"

check=false
if [[ "${1:-}" == --check ]]; then
  check=true
  shift
fi
VERSION="${1:?usage: hack/openresty.sh [--check] 1.25.3.2|1.27.1.2}"
kw_cache_init "openresty-$VERSION" "OpenResty $VERSION" nginx/sbin/nginx-stripped

if $check; then
  kw_cache_check
fi

kw_cache_lock
if ! kw_cache_built; then
  kw_cache_sources openresty
  # What the source folder's build.sh needs and, unlike Kong's, does not install itself.
  missing=()
  for p in build-essential patch perl libpcre2-dev libssl-dev zlib1g-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
  kw_cache_build "$VERSION"
  kw_cache_done
fi
kw_cache_print
