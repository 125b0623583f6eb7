# Sourced by hack/kong.sh and hack/openresty.sh: a build kept in a cache directory outside
# the clone (so fresh clones on the same machine share it), built at most once at a time and
# skipped when it is there.
#
#   kw_cache_init NAME LABEL STRIPPED   TOP=$CACHE/NAME; LABEL names it in messages; STRIPPED
#                                       is its stripped nginx, relative to TOP
#   kw_cache_check                      --check: never builds; prints TOP when the build is
#                                       complete, else exits 1
#   kw_cache_lock                       waits for another build of the same TOP
#   kw_cache_built                      whether the build is complete
#   kw_cache_sources SUBDIR             KW_CACHE_SRC: the sources' SUBDIR, with its build.sh
#   kw_cache_build [ARGS...]            runs KW_CACHE_SRC/build.sh ARGS... TOP, its output in
#                                       $CACHE/NAME.log, after emptying TOP
#   kw_cache_done                       marks the build complete
#   kw_cache_print                      links TOP/stripped/nginx and prints TOP (last line)
source "$(dirname "${BASH_SOURCE[0]}")/../third-party.sh"

CACHE="${KONG_WATCHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kong-watcher}"

kw_cache_init() {
  KW_CACHE_NAME=$1
  KW_CACHE_LABEL=$2
  KW_CACHE_STRIPPED=$3
  TOP="$CACHE/$KW_CACHE_NAME"
  # Written last: a build interrupted half-way is started again from scratch.
  DONE="$TOP/.kong-watcher-built"
}

kw_cache_check() {
  # No lock: DONE is written last, so a build in progress is "not built".
  [[ -f "$DONE" && -x "$TOP/$KW_CACHE_STRIPPED" ]] || { echo "$KW_CACHE_LABEL is not built ($TOP)" >&2; exit 1; }
  kw_cache_print
  exit 0
}

kw_cache_lock() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/$KW_CACHE_NAME.lock"
  flock 9 # another build of the same TOP (a second `make test`) waits for this one
}

kw_cache_built() { [[ -f "$DONE" ]]; }

kw_cache_sources() {
  KW_CACHE_SRC=$(kw_third_party)/$1
  [[ -x "$KW_CACHE_SRC/build.sh" ]] || { echo "$KW_CACHE_SRC/build.sh missing (KONG_WATCHER_THIRD_PARTY)" >&2; exit 1; }
}

kw_cache_build() {
  local log="$CACHE/$KW_CACHE_NAME.log"
  rm -rf "$TOP"
  echo "building $KW_CACHE_LABEL into $TOP (from $KW_CACHE_SRC)" >&2
  KW_CACHE_START=$SECONDS
  "$KW_CACHE_SRC/build.sh" "$@" "$TOP" >"$log" 2>&1 || {
    tail -30 "$log" >&2
    echo "$KW_CACHE_LABEL build failed: $log" >&2
    exit 1
  }
}

kw_cache_done() {
  echo "$KW_CACHE_LABEL built in $((SECONDS - KW_CACHE_START)) s" >&2
  touch "$DONE"
}

kw_cache_print() {
  # The kernel names a process after the file it executes, and Kong's processes are named
  # nginx (what the agent looks for by default): the stripped binary, as a shipped one may
  # be, is run through this link.
  mkdir -p "$TOP/stripped"
  ln -sfn "$TOP/$KW_CACHE_STRIPPED" "$TOP/stripped/nginx"
  echo "$TOP"
}
