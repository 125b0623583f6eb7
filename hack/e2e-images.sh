#!/usr/bin/env bash
# Builds the OCI images of the end-to-end test on a real single-node cluster, with no
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
#     OUTDIR/kong.tar     localhost/kong-watcher/kong:e2e     test/e2e/kong: real Kong Gateway
#                         3.8.1, hack/kong.sh's build (only when `hack/kong.sh --check` finds
#                         it; never built here), DB-less, its prefix prepared here with the
#                         settings of test/e2e/manifests-kong/kong.env
#
# Environment: SKIP_BUILD=1 uses bin/ as it is instead of running `make build`;
# KEEP_BUILDAH_STORAGE=1 keeps OUTDIR/buildah-root and OUTDIR/ctx (else only the archives remain).
# Idempotent: every run rebuilds every archive from scratch. Needs no network. The host
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
command -v curl >/dev/null || missing+=("curl (apt-get install curl)")
command -v ip >/dev/null || missing+=("ip (apt-get install iproute2)")
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
rm -f "$OUT"/{agent,webhook,gateway,upstream,pause,netcheck,kong}.tar "$OUT/gateway-cert.pem"
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

# --- kong: real Kong Gateway 3.8.1 (hack/kong.sh's build), DB-less, prepared here ---------
# Only when the build is there (hack/kong.sh --check never builds; .ci/run builds it before
# `make e2e`): without it no kong.tar is written, and test/e2e's step 10-real-kong fails
# saying so (KW_E2E_KONG=off skips that step instead).
kong_image() {
  local top=$1 t kctx kroot prefix=/usr/local/kong lib
  t=$(now)
  kctx=$OUT/ctx/kong
  kroot=$kctx/rootfs
  mkdir -p "$kroot$top/rocks/share" "$kroot$top/rocks/lib" "$kroot$top/stripped"
  # The runtime part of the build, at the same absolute path: nginx (stripped; the binary
  # with symbols stays out), LuaJIT, OpenResty's and Kong's Lua and C modules, run/. Not
  # src/ (sources, 200 MB), the CLI, luarocks' tree.
  cp -a "$top/openresty" "$kroot$top/"
  rm -f "$kroot$top/openresty/nginx/sbin/nginx"
  cp -a "$top/rocks/share/lua" "$kroot$top/rocks/share/"
  cp -a "$top/rocks/lib/lua" "$kroot$top/rocks/lib/"
  cp -a "$top/run" "$kroot$top/"
  ln -s "$top/openresty/nginx/sbin/nginx-stripped" "$kroot$top/stripped/nginx"
  mkdir -p "$kroot/usr/local/openresty/nginx/sbin"
  ln -s "$top/openresty/nginx/sbin/nginx-stripped" "$kroot/usr/local/openresty/nginx/sbin/nginx"
  # Libraries: what ldd lists for nginx and every shared object of the build (libssl,
  # libcrypto, libpcre2, libyaml, libexpat, libc, ...), those of the build excepted (they are
  # in the tree), plus libz.so.1, which Kong opens through LuaJIT's FFI (ffi.load("z")).
  # And the few programs Kong runs through io.popen and os.execute (a shell, hostname, getconf,
  # uname: at init, the loggly plugin fails to load without them), as Kong's own image has them.
  local objs tools=(/bin/sh /bin/hostname /usr/bin/getconf /usr/bin/uname) tool
  for tool in "${tools[@]}"; do [[ -x $tool ]] || die "$tool missing on this host (Kong's image needs it)"; done
  objs=$(find "$kroot$top" -name '*.so*' -type f | sed "s|^$kroot||")
  libs=$( (ldd "$top/openresty/nginx/sbin/nginx-stripped" "${tools[@]}"; for o in $objs; do ldd "$o" 2>/dev/null || true; done) |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' | grep -v "^$top/" | sort -u)
  lib=$(ldconfig -p | awk '$1 == "libz.so.1" && $NF ~ /^\// && !found { print $NF; found = 1 }')  # no early exit: a SIGPIPE to ldconfig fails the pipeline
  [[ -n $lib ]] || die "libz.so.1 not found (ldconfig -p): apt-get install zlib1g"
  libs=$(printf '%s\n%s\n' "$libs" "$lib" | sort -u)
  local saved_root=$ROOT
  ROOT=$kroot
  for lib in $libs; do
    [[ -f $lib ]] || die "ldd lists $lib, which does not exist"
    put "$lib"
  done
  for tool in "${tools[@]}"; do put "$tool"; done
  for d in lib lib64 lib32 libx32 bin sbin; do
    if [[ -L /$d && -d $kroot/$(readlink /$d) && ! -e $kroot/$d ]]; then ln -s "$(readlink /$d)" "$kroot/$d"; fi
  done
  [[ -e $kroot/lib64/ld-linux-x86-64.so.2 ]] || die "the dynamic loader is not in the Kong image (ldd output changed?)"
  # lua_ssl_trusted_certificate = system: Kong resolves it to the Debian CA bundle.
  put /etc/ssl/certs/ca-certificates.crt
  [[ -f /usr/lib/ssl/openssl.cnf ]] && put /usr/lib/ssl/openssl.cnf
  ROOT=$saved_root
  mkdir -p "$kroot"/{etc,tmp,run,dev,proc,sys}
  chmod 1777 "$kroot/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' > "$kroot/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$kroot/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$kroot/etc/nsswitch.conf"
  # The kubelet mounts its own over these; Kong's DNS client refuses to start without them.
  printf '127.0.0.1 localhost\n::1 localhost\n' > "$kroot/etc/hosts"
  : > "$kroot/etc/resolv.conf"

  # The prefix, rendered now on the host by Kong's CLI (run by resty, a Perl script: the
  # image has no Perl) with the pod's settings, kong.env, in a private mount namespace
  # where an empty /usr/local holds only the image's /usr/local/kong: nothing of it touches
  # the host's /usr/local. The declarative configuration checked here is the one the pod
  # mounts (the ConfigMap of the same file).
  local mdir=$REPO/test/e2e/manifests-kong envs=() line
  while IFS= read -r line || [[ -n $line ]]; do
    [[ -z $line || $line == \#* ]] && continue
    envs+=("$line")
  done < "$mdir/kong.env"
  mkdir -p "$kroot$prefix/declarative" "$kctx/dbless"
  cp "$mdir/kong.yml" "$kctx/dbless/kong.yml"
  local out
  if ! out=$(env "${envs[@]}" KONG_OPENRESTY_PATH="$top/openresty" PATH="$top/openresty/bin:$PATH" \
    unshare -m --propagation private -- sh -c '
      set -e
      mount -t tmpfs -o size=16m kw-e2e-kong /usr/local
      mkdir -p /usr/local/kong
      mount --bind "$1" /usr/local/kong
      mount --bind "$2" /usr/local/kong/declarative
      cd "$3/run"
      "$3/bin/kong" prepare
      "$3/bin/kong" config parse "$KONG_DECLARATIVE_CONFIG"
    ' sh "$kroot$prefix" "$kctx/dbless" "$top" 2>&1); then
    die "kong prepare for the Kong image failed: $out"
  fi
  ln -s "$top/run/kong/include" "$kroot$prefix/include"
  # Check the image's file system before building it: Kong chrooted into it, in private
  # mount and network namespaces (/dev, /proc and the declarative configuration mounted, the
  # settings of kong.env only), must come up, say ready on the Status API and answer a route
  # of the declarative configuration: a missing library, Lua module or setting fails here
  # rather than in the cluster. (`nginx -t` does not run Kong's init.)
  if ! out=$(env -i "${envs[@]}" unshare -mn --propagation private -- sh -c '
      set -e
      ip link set lo up
      mount --rbind /dev "$0/dev"; mount -t proc proc "$0/proc"
      mount --bind "$1" "$0/usr/local/kong/declarative"
      chroot "$0" /usr/local/openresty/nginx/sbin/nginx -p /usr/local/kong/ -c nginx.conf >"$2" 2>&1 &
      ok=0
      for i in $(seq 1 100); do
        if curl -fsS -m 2 -o /dev/null http://127.0.0.1:8100/status/ready 2>/dev/null; then ok=1; break; fi
        sleep 0.2
      done
      code=$(curl -s -m 5 -o /dev/null -w "%{http_code}" http://127.0.0.1:8000/fast || true)
      kill -QUIT $! 2>/dev/null || true
      wait $! || true
      [ "$ok" = 1 ] || { echo "/status/ready never answered 200"; cat "$2"; exit 1; }
      [ "$code" = 200 ] || { echo "GET /fast: $code, want 200"; cat "$2"; exit 1; }
    ' "$kroot" "$kctx/dbless" "$kctx/check.log" 2>&1); then
    die "Kong in the image's file system did not serve: $out"
  fi
  rm -rf "$kroot"/tmp/* "$kroot$prefix"/sockets/* "$kctx/check.log"
  # What the master makes at start (the LMDB of the declarative configuration, pid, sockets)
  # is not part of the image.
  rm -rf "$kroot$prefix"/{dbless.lmdb,pids/nginx.pid,logs/*}
  log "kong context: $(du -sh "$kroot" | cut -f1) rootfs, $(echo "$libs" | wc -l) libraries, prefix $prefix prepared ($(since "$t"))"
  build kong "$REPO/test/e2e/kong/Dockerfile" "$kctx"
}
if KONG_TOP=$("$REPO/hack/kong.sh" --check 2>/dev/null | tail -1) && [[ -n $KONG_TOP ]]; then
  kong_image "$KONG_TOP"
else
  log "WARNING: Kong 3.8.1 is not built (hack/kong.sh --check): no kong.tar (test/e2e's step 10-real-kong fails without it; build it with hack/kong.sh, as .ci/run does)"
fi

log "done in $(since "$T0"): $(cd "$OUT" && ls agent.tar webhook.tar gateway.tar upstream.tar pause.tar netcheck.tar kong.tar 2>/dev/null | tr '\n' ' ')"
log "load with: for i in agent webhook gateway upstream pause netcheck kong; do ctr -n k8s.io images import $OUT/\$i.tar; done"
