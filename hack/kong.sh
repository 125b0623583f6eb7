#!/usr/bin/env bash
# Builds open-source Kong Gateway 3.8.1 (DB-less: OpenResty 1.25.3.2 with Kong's patches and C
# modules, Kong and its rocks) from the source folder KONG_WATCHER_THIRD_PARTY/kong (see
# hack/third-party.sh) into a cache directory outside the clone, and skips the build when it is
# there. 2-4 minutes on 2 cores. Prints the build's TOP on stdout (last line):
# TOP/bin/kong (the CLI, run with TOP/openresty/bin on PATH), TOP/openresty/nginx/sbin/nginx
# (with symbols) and nginx-stripped beside it (run as TOP/stripped/nginx), TOP/run (Kong's
# working directory: kong/include).
#
# The build holds absolute paths of TOP (package paths, rpath): it is built where it runs.
# TOP is under root's home (mode 0700), which Kong's default worker user, nobody, cannot enter:
# whoever runs this Kong as root sets `nginx_user = root root`, as test/fixture/kong.go does.
#
#   hack/kong.sh --check   never builds: prints TOP when the build is complete, else exits 1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/cache.sh"

KONG_VERSION=3.8.1 # what the source folder's build.sh builds
kw_cache_init "kong-$KONG_VERSION" "Kong $KONG_VERSION" openresty/nginx/sbin/nginx-stripped

if [[ "${1:-}" == --check ]]; then
  kw_cache_check
fi

kw_cache_lock
if ! kw_cache_built; then
  kw_cache_sources kong
  kw_cache_build
  PATH="$TOP/openresty/bin:$PATH" "$TOP/bin/kong" version >&2 # bin/kong runs `resty`
  kw_cache_done
fi
kw_cache_print
