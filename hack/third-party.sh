# Sourced by hack/lib/cache.sh (for hack/kong.sh and hack/openresty.sh): finds the folder of
# Kong's and OpenResty's source tarballs and build scripts (third_party/kong/,
# third_party/openresty/), which the repository does not carry. KONG_WATCHER_THIRD_PARTY
# names it; unset, the first of these that exists is used:
#   1. ../shared/third_party beside this clone;
#   2. the same beside the repository this one was cloned from (`git clone /path/repo ci`,
#      whose origin is a local path) or whose worktree it is (`git worktree add`): a fresh
#      clone made for CI on the same machine finds the sources of the clone it was made from.
# kw_third_party prints the folder, or fails naming the variable.

kw_third_party() {
  local root cand origin common
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ -n "${KONG_WATCHER_THIRD_PARTY:-}" ]]; then
    if [[ -d "$KONG_WATCHER_THIRD_PARTY" ]]; then
      (cd "$KONG_WATCHER_THIRD_PARTY" && pwd)
      return 0
    fi
    echo "KONG_WATCHER_THIRD_PARTY=$KONG_WATCHER_THIRD_PARTY: no such folder" >&2
    return 1
  fi
  local cands=("$root/../shared/third_party")
  origin=$(git -C "$root" config --get remote.origin.url 2>/dev/null || true)
  origin=${origin#file://}
  if [[ "$origin" == /* ]]; then
    cands+=("$origin/../shared/third_party")
  fi
  common=$(git -C "$root" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
  if [[ -n "$common" && "$(dirname "$common")" != "$root" ]]; then
    cands+=("$(dirname "$common")/../shared/third_party")
  fi
  for cand in "${cands[@]}"; do
    if [[ -d "$cand" ]]; then
      (cd "$cand" && pwd)
      return 0
    fi
  done
  echo "Kong/OpenResty sources not found: set KONG_WATCHER_THIRD_PARTY to the folder holding" \
    "kong/ and openresty/ (their build.sh and tarballs); looked in: ${cands[*]}" >&2
  return 1
}
