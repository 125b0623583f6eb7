#!/usr/bin/env bash
# Builds plain OpenResty (nginx + OpenResty's patches + lua-nginx-module on LuaJIT, configured
# as Kong ships it) from the source folder KONG_WATCHER_THIRD_PARTY/openresty (see
# hack/third-party.sh) into a cache directory outside the clone, and skips the build when it is
# there. Prints the build's TOP on stdout (last line): TOP/nginx/sbin/nginx (with symbols),
# TOP/nginx/sbin/nginx-stripped (as a shipped binary may be; run as TOP/stripped/nginx),
# TOP/lualib (resty.core).
#
#   hack/openresty.sh 1.25.3.2    # Kong 3.6-3.9's line (nginx 1.25.3); 1-5 minutes on 2 cores
#   hack/openresty.sh 1.27.1.2    # Kong 3.10+'s line (nginx 1.27.1)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/third-party.sh"

VERSION="${1:?usage: hack/openresty.sh 1.25.3.2|1.27.1.2}"
CACHE="${KONG_WATCHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kong-watcher}"
TOP="$CACHE/openresty-$VERSION"
# Written last: a build interrupted half-way is started again from scratch.
DONE="$TOP/.kong-watcher-built"

mkdir -p "$CACHE"
exec 9>"$CACHE/openresty-$VERSION.lock"
flock 9 # another build of the same TOP (a second `make test`) waits for this one
if [[ ! -f "$DONE" ]]; then
  src=$(kw_third_party)/openresty
  [[ -x "$src/build.sh" ]] || { echo "$src/build.sh missing (KONG_WATCHER_THIRD_PARTY)" >&2; exit 1; }
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
  rm -rf "$TOP"
  echo "building OpenResty $VERSION into $TOP (from $src)" >&2
  start=$SECONDS
  "$src/build.sh" "$VERSION" "$TOP" >"$CACHE/openresty-$VERSION.log" 2>&1 || {
    tail -30 "$CACHE/openresty-$VERSION.log" >&2
    echo "OpenResty $VERSION build failed: $CACHE/openresty-$VERSION.log" >&2
    exit 1
  }
  echo "OpenResty $VERSION built in $((SECONDS - start)) s" >&2
  touch "$DONE"
fi
# The kernel names a process after the file it executes, and Kong's processes are named nginx
# (what the agent looks for by default): the stripped binary, as a shipped one may be, is run
# through this link.
mkdir -p "$TOP/stripped"
ln -sfn "$TOP/nginx/sbin/nginx-stripped" "$TOP/stripped/nginx"
echo "$TOP"
