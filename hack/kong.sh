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
source "$(dirname "${BASH_SOURCE[0]}")/third-party.sh"

KONG_VERSION=3.8.1 # what the source folder's build.sh builds
CACHE="${KONG_WATCHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kong-watcher}"
TOP="$CACHE/kong-$KONG_VERSION"
# Written last: a build interrupted half-way is started again from scratch.
DONE="$TOP/.kong-watcher-built"

if [[ "${1:-}" == --check ]]; then
  # No lock: DONE is written last, so a build in progress is "not built".
  [[ -f "$DONE" && -x "$TOP/openresty/nginx/sbin/nginx-stripped" ]] || { echo "Kong $KONG_VERSION is not built ($TOP)" >&2; exit 1; }
  mkdir -p "$TOP/stripped"
  ln -sfn "$TOP/openresty/nginx/sbin/nginx-stripped" "$TOP/stripped/nginx"
  echo "$TOP"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/kong-$KONG_VERSION.lock"
flock 9 # another build of the same TOP (a second `make test`) waits for this one
if [[ ! -f "$DONE" ]]; then
  src=$(kw_third_party)/kong
  [[ -x "$src/build.sh" ]] || { echo "$src/build.sh missing (KONG_WATCHER_THIRD_PARTY)" >&2; exit 1; }
  rm -rf "$TOP"
  echo "building Kong $KONG_VERSION into $TOP (from $src)" >&2
  start=$SECONDS
  "$src/build.sh" "$TOP" >"$CACHE/kong-$KONG_VERSION.log" 2>&1 || {
    tail -30 "$CACHE/kong-$KONG_VERSION.log" >&2
    echo "Kong $KONG_VERSION build failed: $CACHE/kong-$KONG_VERSION.log" >&2
    exit 1
  }
  PATH="$TOP/openresty/bin:$PATH" "$TOP/bin/kong" version >&2 # bin/kong runs `resty`
  echo "Kong $KONG_VERSION built in $((SECONDS - start)) s" >&2
  touch "$DONE"
fi
# The kernel names a process after the file it executes, and Kong's processes are named nginx
# (what the agent looks for by default): the stripped binary, as a shipped one may be, is run
# through this link.
mkdir -p "$TOP/stripped"
ln -sfn "$TOP/openresty/nginx/sbin/nginx-stripped" "$TOP/stripped/nginx"
echo "$TOP"
