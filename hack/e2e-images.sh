#!/usr/bin/env bash
# Builds the six OCI images of the end-to-end test on a real single-node cluster, with no
# registry and no container engine: buildah (vfs storage kept inside OUTDIR, FROM scratch,
# COPY only, no RUN) writes each as an oci-archive that `ctr -n k8s.io images import` loads
# under exactly the name below.
#
#   hack/e2e-images.sh OUTDIR
#     OUTDIR/agent.tar    localhost/kong-watcher/agent:e2e    Dockerfile.agent, BASE=scratch
#     OUTDIR/webhook.tar  localhost/kong-watcher/webhook:e2e  Dockerfile.webhook, BASE=scratch
#     OUTDIR/gateway.tar  localhost/kong-watcher/gateway:e2e  test/e2e/gateway: Debian's nginx +
#                         lua module as a Kong-like gateway (8000 HTTP, 8443 TLS+HTTP/2,
#                         GET /healthz -> 200, logged), proxying to 127.0.0.1:8081
#     OUTDIR/upstream.tar localhost/kong-watcher/upstream:e2e test/e2e/upstream: the service
#                         behind the gateway, a static Go server on 127.0.0.1:8081 run as
#                         the gateway pod's second container (its requests are not nginx's)
#     OUTDIR/pause.tar    localhost/kong-watcher/pause:e2e    test/e2e/pause: the pod sandbox
#     OUTDIR/netcheck.tar localhost/kong-watcher/netcheck:e2e test/e2e/netcheck: a static Go
#                         client that checks a pod's cluster DNS and Service routing
#     OUTDIR/gateway-cert.pem  the gateway's self-signed certificate (CN kong-gateway.e2e)
#
# Environment: SKIP_BUILD=1 uses bin/ as it is instead of running `make build`;
# KEEP_BUILDAH_STORAGE=1 keeps OUTDIR/buildah-root and OUTDIR/ctx (else only the archives remain).
# Idempotent: every run rebuilds all six archives from scratch. Needs no network. The host
# must have what the gateway image is made of: Debian's nginx, libnginx-mod-http-lua (and
# its dependencies lua-resty-core, libluajit2) and openssl, plus buildah, ctr and Go.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR   (env: SKIP_BUILD=1, KEEP_BUILDAH_STORAGE=1)" >&2; exit 2; }
[[ $# -eq 1 && -n $1 && $1 != -* ]] || usage

log() { printf '[e2e-images] %s\n' "$*" >&2; }
die() { printf '[e2e-images] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
[[ $OUT != "$REPO" ]] || die "OUTDIR must not be the repository itself"

NGINX=/usr/sbin/nginx
MODDIR=/usr/lib/nginx/modules
MODULES=("$MODDIR/ndk_http_module.so" "$MODDIR/ngx_http_lua_module.so")
LUADIR=/usr/share/lua/5.1

# --- what the host must have ------------------------------------------------------------
missing=()
command -v buildah >/dev/null || missing+=("buildah (apt-get install buildah)")
command -v ctr >/dev/null || missing+=("ctr (apt-get install containerd)")
command -v openssl >/dev/null || missing+=("openssl (apt-get install openssl)")
command -v ldd >/dev/null || missing+=("ldd (apt-get install libc-bin)")
command -v unshare >/dev/null || missing+=("unshare (apt-get install util-linux)")
[[ -x $NGINX && -f /etc/nginx/mime.types ]] || missing+=("nginx (apt-get install nginx)")
for m in "${MODULES[@]}"; do
  [[ -f $m ]] || { missing+=("$m (apt-get install libnginx-mod-http-lua)"); }
done
[[ -f $LUADIR/resty/core.lua ]] || missing+=("$LUADIR/resty/core.lua (apt-get install libnginx-mod-http-lua lua-resty-core)")
if [[ ${SKIP_BUILD:-0} != 1 ]] || [[ ! -x $REPO/bin/kong-watcher-agent ]]; then
  command -v make >/dev/null || missing+=("make (apt-get install make)")
fi
GO=${GO:-go}
command -v "$GO" >/dev/null || missing+=("go (Go toolchain on PATH, or GO=/path/to/go)")
if [[ ${#missing[@]} -gt 0 ]]; then
  printf '[e2e-images] ERROR: missing on this host:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  printf '  Debian packages: buildah containerd nginx libnginx-mod-http-lua openssl\n' >&2
  exit 1
fi

T0=$(now)
log "output: $OUT"

# buildah with its own storage inside OUTDIR (nothing in /var/lib/containers), its own
# signature policy (only local images are involved).
BROOT=$OUT/buildah-root
BRUN=$OUT/buildah-run
POLICY=$OUT/policy.json
# No archive of an earlier run survives a failed one.
rm -f "$OUT"/{agent,webhook,gateway,upstream,pause,netcheck}.tar "$OUT/gateway-cert.pem"
rm -rf "$BROOT" "$BRUN" "$OUT/ctx"
mkdir -p "$BROOT" "$BRUN" "$OUT/ctx"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' > "$POLICY"
export BUILDAH_ISOLATION=chroot
# containers/image keeps a blob-info cache in /var/lib/containers/cache whatever --root says:
# each buildah runs in a private mount namespace where that path (or /var/lib, when
# /var/lib/containers does not exist) is an empty read-only tmpfs, so it falls back to a
# memory-only cache and writes nothing outside OUTDIR.
HIDE=/var/lib/containers
[[ -d $HIDE ]] || HIDE=/var/lib
bh() {
  unshare -m --propagation private -- sh -c 'mount -t tmpfs -o ro,size=64k kw-e2e-images "$0" && exec "$@"' \
    "$HIDE" buildah --storage-driver vfs --root "$BROOT" --runroot "$BRUN" "$@"
}
cleanup() {
  if [[ ${KEEP_BUILDAH_STORAGE:-0} != 1 ]]; then
    rm -rf "$BROOT" "$BRUN" "$OUT/ctx" "$POLICY"
  fi
}
trap cleanup EXIT

# build NAME DOCKERFILE CONTEXT [buildah bud args...]: image localhost/kong-watcher/NAME:e2e
# in OUTDIR/NAME.tar.
build() {
  local name=$1 file=$2 ctx=$3; shift 3
  local img=localhost/kong-watcher/$name:e2e t
  t=$(now)
  rm -f "$OUT/$name.tar"
  bh bud --quiet --signature-policy "$POLICY" --format oci --pull=false --layers=false \
    --timestamp 0 -f "$file" -t "$img" "$@" "$ctx" >/dev/null
  bh push --quiet --signature-policy "$POLICY" \
    "$img" "oci-archive:$OUT/$name.tar:$img"
  log "$img -> $OUT/$name.tar ($(du -h "$OUT/$name.tar" | cut -f1), $(since "$t"))"
}

# --- agent and webhook: the repo's Dockerfiles on scratch -------------------------------
t=$(now)
if [[ ${SKIP_BUILD:-0} == 1 ]]; then
  log "SKIP_BUILD=1: using bin/ as it is"
else
  make -C "$REPO" --no-print-directory build GO="$GO" >&2
  log "make build ($(since "$t"))"
fi
for b in kong-watcher-agent kong-watcher-webhook; do
  [[ -x $REPO/bin/$b ]] || die "$REPO/bin/$b missing (run make build, or drop SKIP_BUILD=1)"
done
build agent "$REPO/Dockerfile.agent" "$REPO" --build-arg BASE=scratch
build webhook "$REPO/Dockerfile.webhook" "$REPO" --build-arg BASE=scratch

# go_image NAME: a static Go program of test/e2e/NAME, built into its own context and
# packed with test/e2e/NAME/Dockerfile.
go_image() {
  local name=$1 t ctx
  t=$(now)
  ctx=$OUT/ctx/$name
  mkdir -p "$ctx"
  (cd "$REPO" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags '-s -w' -o "$ctx/$name" "./test/e2e/$name")
  log "$name binary ($(since "$t"))"
  build "$name" "$REPO/test/e2e/$name/Dockerfile" "$ctx"
}
# pause: a static Go PID 1 that reaps zombies; upstream: the gateway's service; netcheck: the
# network step's client pod.
go_image pause
go_image upstream
go_image netcheck

# --- gateway: Debian's nginx + lua module, assembled from the host's files ----------------
t=$(now)
GCTX=$OUT/ctx/gateway
ROOT=$GCTX/rootfs
mkdir -p "$ROOT"
# put SRC: copy a host file into the image at the same path, dereferenced, with the
# directory part resolved through the host's symlinks (/lib -> usr/lib on merged-/usr).
put() {
  local src=$1 dir
  dir=$(readlink -f "$(dirname "$src")")
  mkdir -p "$ROOT$dir"
  cp -L --preserve=mode "$src" "$ROOT$dir/$(basename "$src")"
}
put "$NGINX"
for m in "${MODULES[@]}"; do put "$m"; done
# Every library ldd lists for nginx and the modules (the modules' own: libluajit, libpcre,
# libm, libgcc_s), and the dynamic loader, at the paths the loader looks them up.
libs=$(ldd "$NGINX" "${MODULES[@]}" |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' | sort -u)
[[ -n $libs ]] || die "ldd listed no libraries for $NGINX"
for l in $libs; do
  [[ -f $l ]] || die "ldd lists $l, which does not exist"
  put "$l"
done
# Keep the host's merged-/usr symlinks (/lib -> usr/lib, /lib64 -> usr/lib64) so the paths
# ldd printed (and the loader path in nginx's ELF header) resolve in the image too.
for top in lib lib64 lib32 libx32 bin sbin; do
  if [[ -L /$top && -d $ROOT/$(readlink /$top) ]]; then ln -s "$(readlink /$top)" "$ROOT/$top"; fi
done
interp=/lib64/ld-linux-x86-64.so.2
[[ -e $ROOT$interp ]] || die "the dynamic loader $interp is not in the image (ldd output changed?)"
# lua-resty-core and lua-resty-lrucache: lua-nginx-module >= 0.10.16 requires resty.core.
if command -v dpkg-query >/dev/null && dpkg-query -W lua-resty-core >/dev/null 2>&1; then
  luafiles=$(dpkg -L lua-resty-core lua-resty-lrucache 2>/dev/null | grep "^$LUADIR/.*\.lua$" || true)
else
  luafiles=$(find "$LUADIR" -name '*.lua')
fi
for f in $luafiles; do put "$f"; done
put /etc/nginx/mime.types
# Writable directories: temp paths (/var/lib/nginx/*, created by the master and chowned to
# the workers' user), the pid file's /run, /tmp; mount points the runtime fills.
mkdir -p "$ROOT"/{run,tmp,var/lib/nginx,var/log/nginx,dev,proc,sys,etc/nginx}
chmod 1777 "$ROOT/tmp"
chmod 755 "$ROOT"/{run,var/lib/nginx,var/log/nginx}
# The configuration and /etc files from test/e2e/gateway.
cp -r "$REPO/test/e2e/gateway/etc" "$GCTX/etc"
cp "$REPO/test/e2e/gateway/nginx.conf" "$REPO/test/e2e/gateway/kong-plugins.conf" "$GCTX/"
# A self-signed certificate for 8443, made now (never committed).
mkdir -p "$GCTX/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -subj "/CN=kong-gateway.e2e" \
  -addext "subjectAltName=DNS:localhost,DNS:kong-gateway.e2e,DNS:*.kong.test,IP:127.0.0.1" \
  -keyout "$GCTX/tls/key.pem" -out "$GCTX/tls/cert.pem" 2>/dev/null
chmod 600 "$GCTX/tls/key.pem"
chmod 644 "$GCTX/tls/cert.pem"
cp "$GCTX/tls/cert.pem" "$OUT/gateway-cert.pem"
# Check the image's file system before building it: `nginx -t` chrooted into a copy of it
# (in a private mount namespace with /dev and /proc) fails on a missing library, module,
# Lua file or a configuration error, here rather than in the cluster.
CHK=$OUT/ctx/gateway-check
cp -a "$ROOT" "$CHK"
cp -a "$GCTX/etc/." "$CHK/etc/"
cp -a "$GCTX/nginx.conf" "$GCTX/kong-plugins.conf" "$GCTX/tls" "$CHK/etc/nginx/"
if ! out=$(unshare -m --propagation private -- sh -c \
  'mount --rbind /dev "$0/dev" && mount -t proc proc "$0/proc" && exec chroot "$0" /usr/sbin/nginx -t -q' \
  "$CHK" 2>&1); then
  die "the gateway image's nginx -t failed: $out"
fi
rm -rf "$CHK"
log "gateway context: $(du -sh "$ROOT" | cut -f1) rootfs, $(echo "$libs" | wc -l) libraries ($(since "$t"))"
build gateway "$REPO/test/e2e/gateway/Dockerfile" "$GCTX"

log "done in $(since "$T0"): $(cd "$OUT" && ls agent.tar webhook.tar gateway.tar upstream.tar pause.tar netcheck.tar | tr '\n' ' ')"
log "load with: for i in agent webhook gateway upstream pause netcheck; do ctr -n k8s.io images import $OUT/\$i.tar; done"
