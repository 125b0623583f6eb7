#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for `make e2e`:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy (v1.37
# built from Go modules by hack/k8s-binaries.sh), CoreDNS as the cluster DNS (built from its Go
# module by hack/coredns.sh), containerd + runc + the bridge CNI plugin from Debian. No
# registry: the images are built by hack/e2e-images.sh and imported into containerd.
#
# Addresses: pods 10.244.0.0/24 on the bridge kwbr0, whose 10.244.0.1 is the node's IP, the API
# server's (6443) and the cluster DNS server's (CoreDNS, 10.244.0.1:53, zone cluster.local; the
# kubelet's clusterDNS, so pods with the default dnsPolicy resolve <svc>.<ns>.svc.cluster.local
# and nothing outside the cluster: there is no upstream). Services 10.96.0.0/16, ClusterIPs
# served by kube-proxy (iptables mode), the `kubernetes` Service at 10.96.0.1:443.
#
#   hack/e2e-cluster.sh up       # start (or reuse a running one: images rebuilt), print the env file
#   hack/e2e-cluster.sh down     # stop every process it started, remove all it added
#   hack/e2e-cluster.sh status   # exit 0 when the cluster is up and the node Ready
#   hack/e2e-cluster.sh logs     # the tail of every component's log (for failed runs)
#
# Everything lives under one directory, $KW_E2E_DIR (default /tmp/kong-watcher-e2e): certs,
# kubeconfigs, etcd data, containerd's root, the kubelet's root, logs, PID files, the timings
# of `up` (timings.tsv, which docs/e2e.md shows) and the env file (KUBECONFIG,
# CONTAINERD_ADDRESS, KW_E2E_NODE_NAME, KW_E2E_NODE_IP) that tests source.
#
# What it adds to the host, and `down` removes (recorded in $KW_E2E_DIR/host/ as it is added):
#   - the bridge kwbr0 (10.244.0.1/24): pod IPs, the API server's, kubelet's and CoreDNS's
#     address; IPv4 forwarding on kwbr0 only (net.ipv4.conf.kwbr0.forwarding, gone with the
#     bridge; the host's ip_forward stays off), so that a Service's DNAT from a pod to a pod
#     is routed back out of the bridge;
#   - the filter chain KW-E2E-FORWARD, jumped to from FORWARD for packets from kwbr0 to any
#     other interface: it rejects them, so no pod traffic leaves through the host;
#   - the cgroup kong-watcher-e2e (every process started here and the containerd shims live
#     in it, so `down` finds them all) and the kubelet's kubepods cgroups;
#   - the iptables chains the kubelet and kube-proxy create (KUBE-*: KUBE-SERVICES,
#     KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FORWARD, KUBE-SVC-*, KUBE-SEP-*, ...
#     in the nat, filter and mangle tables, IPv4 and IPv6) and the rules jumping to them from the
#     built-in chains, when they were not there before.
# Host sysctls stay unchanged: containerd, the kubelet and kube-proxy (which would set
# vm.overcommit_memory, kernel.panic, kernel.panic_on_oops, ..., through the bridge plugin
# ip_forward, and the conntrack table size and TCP timeouts) run in a private mount namespace
# with stand-in files bind-mounted over those sysctls, and with private tmpfs on /run,
# /var/lib/cni, /var/log/pods and /var/log/containers; kube-proxy is also configured to leave
# them alone (conntrack maxPerCore 0, timeouts 0, NodePorts on the bridge's address only, so
# no route_localnet).
#
# Service traffic from a pod to a pod: the pod sends to the ClusterIP through its gateway (the
# bridge's address); kube-proxy's DNAT in PREROUTING turns it into a packet for another pod,
# which the host routes from kwbr0 back to kwbr0 (hence forwarding on kwbr0). The pod behind
# the Service answers the client pod directly, on the bridge; the kernel's bridge netfilter
# (bridge-nf-call-iptables, built into this kernel and on) runs those bridged replies through
# conntrack, which undoes the DNAT, as on any node with a bridge CNI.
#
# Workarounds this machine needs: cgroups are v1 (kubelet failCgroupV1:
# false); the VM lacks CAP_SYS_RESOURCE (containerd restrict_oom_score_adj); no systemd (every
# daemon is started by hand and stopped by PID); no upstream DNS (CoreDNS forwards nothing).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${KW_E2E_DIR:-/tmp/kong-watcher-e2e}"
NODE_NAME="kw-e2e"
BRIDGE="kwbr0"
NODE_IP="10.244.0.1"
POD_CIDR="10.244.0.0/24"
SERVICE_CIDR="10.96.0.0/16"
KUBERNETES_SVC_IP="10.96.0.1"
# The cluster DNS server (CoreDNS, a host process) listens on the node's bridge address.
DNS_IP="$NODE_IP"
CLUSTER_DOMAIN="cluster.local"
# Loopback ports of kube-proxy (healthz, metrics) and of CoreDNS's ready plugin.
PROXY_HEALTHZ_PORT=10256
PROXY_METRICS_PORT=10249
COREDNS_READY_PORT=8181
ETCD_PORT=23790
APISERVER_PORT=6443
CGROUP_NAME="kong-watcher-e2e"
# The nat chain of earlier versions of this script (a hand-written DNAT of the `kubernetes`
# Service, before kube-proxy ran here): no longer made, still removed when found.
NAT_CHAIN="KW-E2E"
# The filter chain that keeps pod traffic on the bridge (see above).
FWD_CHAIN="KW-E2E-FORWARD"
STAND_IN_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes net/ipv4/ip_forward
  net/ipv4/conf/all/route_localnet net/netfilter/nf_conntrack_max
  net/netfilter/nf_conntrack_tcp_timeout_established net/netfilter/nf_conntrack_tcp_timeout_close_wait
  net/netfilter/nf_conntrack_tcp_be_liberal net/netfilter/nf_conntrack_udp_timeout
  net/netfilter/nf_conntrack_udp_timeout_stream)
# /var/lib/kubelet: the kubelet's device-plugin socket path is fixed, whatever its --root-dir.
PRIVATE_TMPFS=(/run /var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers)

log() { printf '[e2e-cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1fs", b-a}'; }

# --- cgroups ---------------------------------------------------------------------------------
# Every hierarchy the kubelet and we touch. v1 here; v2 (unified) is handled too.
cgroup_roots() {
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    echo /sys/fs/cgroup
  else
    for d in /sys/fs/cgroup/*/; do
      d="${d%/}"
      [[ -f "$d/cgroup.procs" ]] && echo "$d"
    done
  fi
}
# The hierarchy that tracks our processes.
track_cgroup() {
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    echo "/sys/fs/cgroup/$CGROUP_NAME"
  else
    echo "/sys/fs/cgroup/pids/$CGROUP_NAME"
  fi
}
# All PIDs in a cgroup tree (named by its path below each root), in every hierarchy.
cgroup_pids() {
  local name="$1" root
  for root in $(cgroup_roots); do
    [[ -d "$root/$name" ]] || continue
    find "$root/$name" -name cgroup.procs -exec cat {} + 2>/dev/null || true
  done | sort -un
}
# Removes a cgroup tree, deepest directories first, in every hierarchy.
cgroup_remove() {
  local name="$1" root
  for root in $(cgroup_roots); do
    [[ -d "$root/$name" ]] || continue
    find "$root/$name" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [[ -d "$root/$name" ]] && log "warning: could not remove cgroup $root/$name"
  done
  return 0
}

# --- processes -------------------------------------------------------------------------------
# spawn NAME CMD...: starts CMD in the background inside the tracking cgroup, in its own
# session, with its output in logs/NAME.log and its PID in pids/NAME.pid.
spawn() {
  local name="$1"; shift
  local cg; cg="$(track_cgroup)"
  (
    echo "$BASHPID" > "$cg/cgroup.procs"
    exec 9<&-
    exec setsid "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1
  ) &
  echo $! > "$STATE/pids/$name.pid"
}
pid_of() { cat "$STATE/pids/$1.pid" 2>/dev/null || true; }
alive() { local p; p="$(pid_of "$1")"; [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; }

# wait_for DESC TIMEOUT_S COMPONENT CMD...: polls CMD until it succeeds; fails early (with the
# component's log) when COMPONENT's process has died.
wait_for() {
  local desc="$1" timeout="$2" comp="$3"; shift 3
  local start; start="$(now)"
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]] && ! alive "$comp"; then
      tail -n 40 "$STATE/logs/$comp.log" >&2 || true
      die "$comp exited while waiting for: $desc"
    fi
    if ((SECONDS >= deadline)); then
      [[ -n "$comp" ]] && tail -n 40 "$STATE/logs/$comp.log" >&2
      die "timed out after ${timeout}s waiting for: $desc"
    fi
    sleep 0.2
  done
  log "$desc ($(since "$start"))"
  echo "$desc	$(since "$start")" >> "$STATE/timings.tsv"
}

# --- preflight -------------------------------------------------------------------------------
preflight() {
  local missing=() c
  for c in containerd containerd-shim-runc-v2 runc ctr iptables ip openssl unshare nsenter setsid \
      buildah curl kubectl; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
    missing+=("CNI plugins in /usr/lib/cni (containernetworking-plugins)")
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (hack/install-deps.sh --e2e installs them)"
  [[ "$(id -u)" == 0 ]] || die "must run as root (containerd, kubelet, bridge, iptables)"
  [[ -d /sys/fs/cgroup ]] || die "no /sys/fs/cgroup"
  unshare -m --propagation private true 2>/dev/null || die "cannot create a mount namespace (unshare -m)"
  if [[ -n "$(cgroup_pids kubepods)" ]]; then
    die "another kubelet's pods run here (the kubepods cgroup is not empty); one kubelet per machine"
  fi
  local p
  for p in $ETCD_PORT $APISERVER_PORT 10250 10248 10257 10259 $PROXY_HEALTHZ_PORT \
      $PROXY_METRICS_PORT $COREDNS_READY_PORT; do
    if ss -Hltn "sport = :$p" | grep -q .; then
      die "port $p is already in use: $(ss -Hltnp "sport = :$p" | head -1)"
    fi
  done
  # CoreDNS binds $DNS_IP:53 only; a wildcard listener on port 53 would take it.
  if ss -Hlun "sport = :53" | awk '{print $4}' | grep -Eq '^(0\.0\.0\.0|\*|\[::\]):53$'; then
    die "port 53 is taken on every address: $(ss -Hlunp "sport = :53" | head -1)"
  fi
}

# --- certificates, tokens, kubeconfigs -------------------------------------------------------
pki() {
  # Keys, tokens and kubeconfigs are never readable by others, not even for a moment.
  umask 077
  local d="$STATE/pki"
  mkdir -p -m 700 "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kong-watcher-e2e-ca" \
    -keyout "$d/ca.key" -out "$d/ca.crt" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  # leaf NAME SUBJECT EXT
  leaf() {
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$d/$1.ext"
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
      -extfile "$d/$1.ext" -out "$d/$1.crt" 2>/dev/null
  }
  leaf apiserver "/CN=kube-apiserver" "subjectAltName=IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature,keyEncipherment"
  leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature,keyEncipherment"
  leaf kubelet "/CN=$NODE_NAME" "subjectAltName=IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature,keyEncipherment"
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null

  # Static tokens: one identity per component. The kubelet is a proper node identity so the
  # Node authorizer and NodeRestriction apply to it as in a real cluster.
  # kube-proxy is system:kube-proxy, which the API server's bootstrap policy binds to the
  # ClusterRole system:node-proxier; CoreDNS is system:coredns, bound by coredns_rbac below.
  local t_admin t_cm t_sched t_kubelet t_proxy t_dns
  t_admin="$(openssl rand -hex 16)"; t_cm="$(openssl rand -hex 16)"
  t_sched="$(openssl rand -hex 16)"; t_kubelet="$(openssl rand -hex 16)"
  t_proxy="$(openssl rand -hex 16)"; t_dns="$(openssl rand -hex 16)"
  {
    echo "$t_admin,kong-watcher-e2e-admin,admin,system:masters"
    echo "$t_cm,system:kube-controller-manager,kcm,system:masters"
    echo "$t_sched,system:kube-scheduler,sched,system:masters"
    echo "$t_kubelet,system:node:$NODE_NAME,node,system:nodes"
    echo "$t_proxy,system:kube-proxy,kube-proxy"
    echo "$t_dns,system:coredns,coredns"
  } > "$d/tokens.csv"
  kubeconfig admin "$t_admin"
  kubeconfig controller-manager "$t_cm"
  kubeconfig scheduler "$t_sched"
  kubeconfig kubelet "$t_kubelet"
  kubeconfig kube-proxy "$t_proxy"
  kubeconfig coredns "$t_dns"
  umask 022
}
kubeconfig() {
  cat > "$STATE/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kw-e2e
  cluster:
    server: https://$NODE_IP:$APISERVER_PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: $1
  user:
    token: $2
contexts:
- name: kw-e2e
  context: {cluster: kw-e2e, user: $1}
current-context: kw-e2e
EOF
}

# --- host network ----------------------------------------------------------------------------
host_network() {
  mkdir -p "$STATE/host"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  # Routing from kwbr0 (the per-interface switch: the input interface's decides, and this one
  # goes with the bridge); nothing routed from it may leave through another interface.
  echo 1 > "/proc/sys/net/ipv4/conf/$BRIDGE/forwarding"
  iptables -N "$FWD_CHAIN" 2>/dev/null || true
  iptables -F "$FWD_CHAIN"
  iptables -A "$FWD_CHAIN" -j REJECT --reject-with icmp-net-prohibited
  iptables -C FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j "$FWD_CHAIN" 2>/dev/null ||
    iptables -I FORWARD 1 -i "$BRIDGE" ! -o "$BRIDGE" -j "$FWD_CHAIN"
  # Which KUBE-*/CNI-* chains existed before the kubelet ran: down removes only the new ones.
  local tool t
  for tool in iptables ip6tables; do
    for t in filter nat mangle; do
      chains "$tool" "$t" | { grep -Ev "$KUBELET_CHAINS" || true; } > "$STATE/host/chains-before.$tool.$t"
    done
  done
  # No rule of our own: kube-proxy serves every ClusterIP, the `kubernetes` Service's too
  # (its endpoint is the API server's advertise address, $NODE_IP:$APISERVER_PORT).
}

# The KUBE-*/CNI-* chains of one table.
chains() {
  "$1" -t "$2" -S 2>/dev/null | awk '$1=="-N"{print $2}' | grep -E '^(KUBE-|CNI-)' || true
}
# The chains only a kubelet or kube-proxy makes. With no other kubelet or kube-proxy on the
# machine (preflight: their ports are free), any of them found before `up` is a leftover of a
# run whose state was lost: down removes them too.
KUBELET_CHAINS='^KUBE-(KUBELET-CANARY|FIREWALL|IPTABLES-HINT|PROXY-CANARY|SERVICES|EXTERNAL-SERVICES|NODEPORTS|POSTROUTING|MARK-MASQ|FORWARD|PROXY-FIREWALL|(SVC|SVL|EXT|FW|SEP)-[A-Z0-9]+)$'
# remove_new_chains TOOL: deletes the KUBE-*/CNI-* chains that were not there before `up`
# (the kubelet's canary and firewall chains, every chain of kube-proxy), and every rule that
# jumps to them. Without the record (state lost), only the chains that only a kubelet or
# kube-proxy makes.
remove_new_chains() {
  local tool="$1" t c rule
  for t in filter nat mangle; do
    local before="$STATE/host/chains-before.$tool.$t"
    local new=()
    for c in $(chains "$tool" "$t"); do
      if [[ -f "$before" ]]; then
        grep -qxF "$c" "$before" || new+=("$c")
      elif [[ "$c" =~ $KUBELET_CHAINS ]]; then
        new+=("$c") # no record (state lost): the kubelet's and kube-proxy's own chains only
      fi
    done
    ((${#new[@]})) || continue
    for c in "${new[@]}"; do
      while read -r rule; do
        [[ -n "$rule" ]] || continue
        # eval: the rule as -S prints it quotes its comment.
        eval "$tool -t $t ${rule/#-A /-D }" 2>/dev/null || true
      done < <("$tool" -t "$t" -S 2>/dev/null | grep -E -- "-j $c( |\$)" | grep -v "^-A $c " || true)
    done
    for c in "${new[@]}"; do "$tool" -t "$t" -F "$c" 2>/dev/null || true; done
    for c in "${new[@]}"; do "$tool" -t "$t" -X "$c" 2>/dev/null || true; done
  done
}

# --- the private mount namespace for containerd and the kubelet ------------------------------
mount_namespace() {
  mkdir -p "$STATE/sysctl"
  local s f
  for s in "${STAND_IN_SYSCTLS[@]}"; do
    f="$STATE/sysctl/${s//\//.}"
    [[ -e "/proc/sys/$s" ]] && cat "/proc/sys/$s" > "$f"
  done
  spawn mountns unshare -m --propagation private sleep infinity
  local pid; pid="$(pid_of mountns)"
  wait_for "private mount namespace" 10 mountns own_mount_ns "$pid"
  local script="set -e"
  for s in "${STAND_IN_SYSCTLS[@]}"; do
    f="$STATE/sysctl/${s//\//.}"
    [[ -f "$f" ]] && script+="; mount --bind '$f' '/proc/sys/$s'"
  done
  for s in "${PRIVATE_TMPFS[@]}"; do
    # A missing mountpoint is made on the host's file system (the namespace shares it):
    # recorded, and removed by down.
    if [[ ! -d "$s" ]]; then
      mkdir -p "$s"
      echo "$s" >> "$STATE/host/created-dirs"
    fi
    script+="; mount -t tmpfs -o mode=755 tmpfs '$s'"
  done
  # cAdvisor (inside the kubelet) looks for containerd at its default socket only.
  script+="; mkdir -p /run/containerd; ln -s '$STATE/containerd/containerd.sock' /run/containerd/containerd.sock"
  nsenter -t "$pid" -m -- sh -c "$script" || die "setting up the private mount namespace failed"
}
# own_mount_ns PID: PID has left this shell's mount namespace (unshare has run).
own_mount_ns() { [[ "$(readlink "/proc/$1/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]]; }

# --- containerd ------------------------------------------------------------------------------
containerd_up() {
  local d="$STATE/containerd"
  mkdir -p "$d/root" "$d/state" "$STATE/cni/net.d" "$STATE/cni/ipam"
  cat > "$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/kong-watcher/pause:e2e"
  # The VM lacks CAP_SYS_RESOURCE: lowering oom_score_adj below the parent's is refused.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  cat > "$STATE/cni/net.d/10-kw-e2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kw-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  spawn containerd nsenter -t "$(pid_of mountns)" -m -- containerd --config "$d/config.toml"
  wait_for "containerd serving" 30 containerd ctr --address "$d/containerd.sock" version
}

images_up() {
  local start; start="$(now)"
  "$ROOT/hack/e2e-images.sh" "$STATE/images" >&2
  local t
  for t in "$STATE"/images/*.tar; do
    ctr --address "$STATE/containerd/containerd.sock" -n k8s.io images import "$t" >/dev/null
  done
  echo "images built and imported	$(since "$start")" >> "$STATE/timings.tsv"
  log "images built and imported ($(since "$start")):"
  ctr --address "$STATE/containerd/containerd.sock" -n k8s.io images ls -q | grep kong-watcher >&2
}

# --- control plane ---------------------------------------------------------------------------
control_plane_up() {
  local bin="$1"
  spawn etcd "$bin/etcd" --name kw-e2e --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "kw-e2e=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648
  wait_for "etcd healthy" 30 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  local p="$STATE/pki"
  spawn kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$APISERVER_PORT" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" --token-auth-file "$p/tokens.csv" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$p/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --enable-aggregator-routing=true \
    --cert-dir "$STATE/apiserver" --profiling=false --v=1
  wait_for "kube-apiserver ready" 90 kube-apiserver \
    kubectl --kubeconfig "$STATE/admin.kubeconfig" get --raw /readyz

  spawn kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --service-account-private-key-file "$p/sa.key" --root-ca-file "$p/ca.crt" \
    --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --use-service-account-credentials=true \
    --flex-volume-plugin-dir "$STATE/controller-manager-plugins" \
    --leader-elect=false --bind-address 127.0.0.1 --profiling=false --v=1
  spawn kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --profiling=false --v=1
  wait_for "kube-controller-manager healthy" 60 kube-controller-manager \
    curl -fsSk https://127.0.0.1:10257/healthz
  wait_for "kube-scheduler healthy" 60 kube-scheduler curl -fsSk https://127.0.0.1:10259/healthz
}

kubelet_up() {
  local bin="$1"
  mkdir -p "$STATE/kubelet"
  cat > "$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroups are v1 on these machines.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$STATE/containerd/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $STATE/pki/kubelet.crt
tlsPrivateKeyFile: $STATE/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: AlwaysAllow}
podCIDR: $POD_CIDR
maxPods: 40
failSwapOn: false
# The host's resolv.conf only lends its search domains: pods with the default dnsPolicy
# (ClusterFirst) get CoreDNS as their only nameserver.
resolvConf: /etc/resolv.conf
clusterDNS: [$DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
serializeImagePulls: false
# Images are imported, never pulled: keep them, whatever the disk says.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
nodeStatusUpdateFrequency: 4s
# Not /usr/libexec/kubernetes/kubelet-plugins/volume/exec on the host.
volumePluginDir: $STATE/kubelet-plugins
syncFrequency: 10s
EOF
  spawn kubelet nsenter -t "$(pid_of mountns)" -m -- "$bin/kubelet" \
    --config "$STATE/kubelet-config.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --root-dir "$STATE/kubelet" --v=1
  wait_for "kubelet healthy" 60 kubelet curl -fsS http://127.0.0.1:10248/healthz
  wait_for "node $NODE_NAME Ready" 90 kubelet \
    kubectl --kubeconfig "$STATE/admin.kubeconfig" wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
}

# --- kube-proxy and the cluster DNS ------------------------------------------------------------
# The ClusterRole CoreDNS's kubernetes plugin needs (as in CoreDNS's own deployment manifest),
# bound to the user of its token.
coredns_rbac() {
  kubectl --kubeconfig "$STATE/admin.kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:coredns
EOF
}

# kube-proxy (iptables mode) as a host process in the private mount namespace, like the
# kubelet; started once the Node exists (it reads its IPs from it).
kube_proxy_up() {
  local bin="$1"
  cat > "$STATE/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $STATE/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
# Traffic from outside the pod range to a Service is masqueraded (as in any cluster).
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
# NodePorts on the bridge's address only: never on the host's other interfaces, and not on
# loopback (which would set net.ipv4.conf.all.route_localnet).
nodePortAddresses: [$NODE_IP/32]
iptables:
  localhostNodePorts: false
# 0 = leave the host's conntrack table size and timeouts as they are.
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  spawn kube-proxy nsenter -t "$(pid_of mountns)" -m -- "$bin/kube-proxy" \
    --config "$STATE/kube-proxy-config.yaml" --v=1
  wait_for "kube-proxy healthy" 60 kube-proxy curl -fsS "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
  # Pods reach the API server through the `kubernetes` Service from their first second.
  wait_for "kube-proxy serving the kubernetes Service" 60 kube-proxy \
    sh -c "iptables -t nat -S KUBE-SERVICES | grep -q -- '-d $KUBERNETES_SVC_IP/32 .*--dport 443'"
}

# CoreDNS as a host process on $DNS_IP:53 (UDP and TCP), serving the cluster's zone from the
# API server; every other name is refused (no forward: there is no upstream).
coredns_up() {
  local coredns="$1"
  coredns_rbac
  cat > "$STATE/Corefile" <<EOF
$CLUSTER_DOMAIN:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $DNS_IP
    errors
    log . {
        class denial error
    }
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns.kubeconfig kw-e2e
        pods insecure
        ttl 5
    }
    cache 5
    loadbalance
}
EOF
  spawn coredns "$coredns" -conf "$STATE/Corefile"
  # ready: the kubernetes plugin has synced its Services and EndpointSlices.
  wait_for "CoreDNS ready on $DNS_IP:53" 60 coredns curl -fsS "http://127.0.0.1:$COREDNS_READY_PORT/ready"
}

write_env() {
  cat > "$STATE/env" <<EOF
KUBECONFIG=$STATE/admin.kubeconfig
CONTAINERD_ADDRESS=$STATE/containerd/containerd.sock
KW_E2E_DIR=$STATE
KW_E2E_NODE_NAME=$NODE_NAME
KW_E2E_NODE_IP=$NODE_IP
KW_E2E_DNS_IP=$DNS_IP
KW_E2E_SERVICE_CIDR=$SERVICE_CIDR
EOF
}

status() {
  [[ -f "$STATE/env" ]] || return 1
  local c
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler mountns containerd kubelet \
      kube-proxy coredns; do
    alive "$c" || { log "$c is not running"; return 1; }
  done
  kubectl --kubeconfig "$STATE/admin.kubeconfig" wait --for=condition=Ready "node/$NODE_NAME" \
    --timeout=5s >/dev/null 2>&1 || { log "node $NODE_NAME is not Ready"; return 1; }
}

up() {
  local start; start="$(now)"
  if status 2>/dev/null; then
    log "already up; rebuilding and re-importing the images"
    images_up
    echo "$STATE/env"
    return 0
  fi
  # A half-started or crashed cluster (or one whose state directory is gone): clear it first
  # so this run starts clean.
  if [[ -d "$STATE" ]] || ip link show "$BRIDGE" >/dev/null 2>&1 ||
    iptables -t nat -S "$NAT_CHAIN" >/dev/null 2>&1 || iptables -S "$FWD_CHAIN" >/dev/null 2>&1 ||
    [[ -n "$(cgroup_pids "$CGROUP_NAME")" ]]; then
    log "leftovers of an earlier run: cleaning up first"
    down
  fi
  preflight
  local bin coredns
  bin="$("$ROOT/hack/k8s-binaries.sh" --cluster | tail -1)"
  coredns="$("$ROOT/hack/coredns.sh" | tail -1)"
  mkdir -p "$STATE"/{logs,pids,host}
  mkdir -p "$(track_cgroup)"
  [[ -d "$(track_cgroup)" ]] || die "cannot create cgroup $(track_cgroup)"
  # An empty kubepods cgroup is a leftover of a kubelet that is gone (preflight refused a
  # non-empty one): the kubelet makes it afresh.
  cgroup_remove kubepods
  pki
  host_network
  control_plane_up "$bin"
  mount_namespace
  containerd_up
  kubelet_up "$bin"
  kube_proxy_up "$bin"
  coredns_up "$coredns"
  images_up
  write_env
  echo "cluster up (all of the above)	$(since "$start")" >> "$STATE/timings.tsv"
  log "cluster up in $(since "$start"); KUBECONFIG=$STATE/admin.kubeconfig"
  echo "$STATE/env"
}

# Stops a component by its PID file: TERM, then KILL after a grace period.
stop() {
  local name="$1" grace="${2:-10}" p
  p="$(pid_of "$name")"
  [[ -n "$p" ]] || return 0
  # A PID file may outlive its process (a crash); the PID may since belong to another. Only
  # a process in the tracking cgroup is ours.
  if kill -0 "$p" 2>/dev/null && grep -q "/$CGROUP_NAME\(/\|\$\)" "/proc/$p/cgroup" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    local i
    for ((i = 0; i < grace * 10; i++)); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
  fi
  rm -f "$STATE/pids/$name.pid"
}

# Kills every process in a cgroup tree until it is empty.
kill_cgroup() {
  local name="$1" i pids
  for ((i = 0; i < 50; i++)); do
    pids="$(cgroup_pids "$name")"
    [[ -z "$pids" ]] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  log "warning: processes left in cgroup $name: $(cgroup_pids "$name" | tr '\n' ' ')"
}

down() {
  local start; start="$(now)"
  # Without $STATE (deleted by hand, say) the PID files and records are gone, but everything
  # with a fixed name is still found: the tracking cgroup, the bridge, our iptables chains.
  [[ -d "$STATE" ]] || log "$STATE does not exist: removing what has a fixed name"
  # The kubelet first, so it does not restart containers while they are being killed; then
  # the containers (in kubepods), then containerd and its shims, then the control plane.
  stop kubelet 10
  kill_cgroup kubepods  # up refused to start beside another kubelet's pods: these are ours
  # kube-proxy before its chains are removed below (it would write them again).
  stop kube-proxy 10
  stop coredns 5
  stop containerd 10
  stop mountns 2
  kill_cgroup "$CGROUP_NAME"     # shims and anything else started from here
  stop kube-scheduler 5
  stop kube-controller-manager 5
  stop kube-apiserver 10
  stop etcd 10
  # Anything still in the tracking cgroup (a PID file lost in a crash) is ours too.
  kill_cgroup "$CGROUP_NAME"
  cgroup_remove kubepods
  cgroup_remove "$CGROUP_NAME"

  # Host network: our forward guard and its jump, the NAT chain of earlier versions and its
  # jump, the new chains of the kubelet and kube-proxy (with every rule jumping to them), the
  # bridge (its forwarding switch goes with it).
  while iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j "$FWD_CHAIN" 2>/dev/null; do :; done
  if iptables -S "$FWD_CHAIN" >/dev/null 2>&1; then
    iptables -F "$FWD_CHAIN" || true
    iptables -X "$FWD_CHAIN" || true
  fi
  while iptables -t nat -D PREROUTING -i "$BRIDGE" -j "$NAT_CHAIN" 2>/dev/null; do :; done
  if iptables -t nat -S "$NAT_CHAIN" >/dev/null 2>&1; then
    iptables -t nat -F "$NAT_CHAIN" || true
    iptables -t nat -X "$NAT_CHAIN" || true
  fi
  remove_new_chains iptables
  remove_new_chains ip6tables
  # veths whose peer was in a pod's network namespace go with the namespace; any still
  # enslaved to our bridge (a namespace pinned somewhere) go now, then the bridge.
  local v
  for v in $(ip -o link show master "$BRIDGE" type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$v" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE" 2>/dev/null || true
  fi
  # Nothing mounted on the host lives under $STATE (the kubelet's and containerd's mounts
  # were in the private namespace, gone with its processes); check before deleting anyway.
  if grep -q " $STATE" /proc/self/mounts; then
    awk -v s="$STATE" '$2 ~ "^"s {print $2}' /proc/self/mounts | sort -r | xargs -r -n1 umount -l
  fi
  # Mountpoints up had to create on the host (only while empty: never anything else's). With
  # the record lost, the ones no package owns that are empty.
  if [[ -f "$STATE/host/created-dirs" ]]; then
    sort -r "$STATE/host/created-dirs" | while read -r d; do rmdir "$d" 2>/dev/null || true; done
  elif [[ ! -d "$STATE" ]]; then
    for d in /var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers; do
      dpkg -S "$d" >/dev/null 2>&1 || rmdir "$d" 2>/dev/null || true
    done
  fi
  rm -rf "$STATE"
  log "cluster down in $(since "$start")"
}

logs() {
  local f
  for f in "$STATE"/logs/*.log; do
    [[ -f "$f" ]] || continue
    echo "===== $(basename "$f") (last 30 lines)"
    tail -n 30 "$f"
  done
}

# up and down change the host: one at a time (the lock is on this script's own file; spawn
# closes it in the daemons). Exit code 75 says "busy", so hack/e2e.sh knows not to tear down
# a cluster another run is using.
lock() {
  exec 9<"$0"
  flock -n 9 || { log "another hack/e2e-cluster.sh up or down is running"; exit 75; }
}

case "${1:-}" in
  up) lock; up ;;
  down) lock; down ;;
  status) status && log "up: KUBECONFIG=$STATE/admin.kubeconfig" ;;
  logs) logs ;;
  *) echo "usage: $0 up|down|status|logs" >&2; exit 2 ;;
esac
