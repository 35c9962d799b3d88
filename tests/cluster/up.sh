#!/usr/bin/env bash
# Starts a one-node Kubernetes cluster on this machine for the real-cluster
# tier: etcd, kube-apiserver (RBAC, admission webhooks, ServiceAccount token
# signing, Pod Security admission, an audit log), kube-controller-manager,
# kube-scheduler, containerd (Debian's) with runc and the bridge CNI plugin,
# the kubelet, kube-proxy (iptables mode) and CoreDNS. Pods are network
# namespaces on bridge mlcni0 (10.213.0.0/24); nothing forwarded from that
# bridge may leave it for any other interface.
#
# Usage: up.sh BIN_DIR MESHLITE_BIN_DIR
#   BIN_DIR from build.sh; MESHLITE_BIN_DIR holds meshlite's binaries (release
#   or debug: tests/tests/cluster.rs uses target/debug)
# Writes the admin kubeconfig to $STATE/admin.kubeconfig. down.sh undoes it all.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$1 rel=$2
. "$here/env.sh"

for tool in containerd containerd-shim-runc-v2 runc ctr openssl strip iptables ip conntrack /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || { echo "FATAL: $tool is missing (tests/cluster/README.md lists what this tier needs)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "FATAL: the real-cluster tier needs root" >&2; exit 1; }
if [ -e "$RUN/pids" ]; then "$here/down.sh" || true; fi

mkdir -p "$STATE"/{pki,logs,cni,cni-ipam,etcd,kubelet,containerd,images} "$RUN"
: > "$RUN/pids"
ls /run/netns 2>/dev/null > "$RUN/netns-before" || true
pki=$STATE/pki

# --- PKI ---------------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=meshlite-cluster-ca \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
cert() { # NAME SUBJECT [SANS]
  local name=$1 subj=$2 sans=${3:-} ext
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subj" \
    -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  ext=$(mktemp)
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"; [ -n "$sans" ] && echo "subjectAltName=$sans"; } > "$ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$ext" "$pki/$name.csr"
}
cert apiserver /CN=kube-apiserver "IP:$NODE_IP,IP:$API_SVC_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert admin "/O=system:masters/CN=meshlite-admin"
cert kcm /CN=system:kube-controller-manager
cert scheduler /CN=system:kube-scheduler
cert kubelet "/O=system:nodes/CN=system:node:$NODE" "IP:$NODE_IP,DNS:$NODE"
cert kube-proxy /CN=system:kube-proxy
cert coredns "/O=system:masters/CN=coredns"
openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key" 2>/dev/null
openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
kubeconfig() { # NAME
  cat > "$STATE/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: meshlite, cluster: {server: "https://$NODE_IP:6443", certificate-authority: $pki/ca.crt}}]
users: [{name: $1, user: {client-certificate: $pki/$1.crt, client-key: $pki/$1.key}}]
contexts: [{name: meshlite, context: {cluster: meshlite, user: $1}}]
current-context: meshlite
KC
}
for k in admin kcm scheduler kubelet kube-proxy coredns; do kubeconfig "$k"; done

start() { # NAME CMD...: in its own session, logged, PID recorded for down.sh
  local name=$1; shift
  setsid "$@" > "$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo "$! $name" >> "$RUN/pids"
}
wait_for() { # WHAT SECONDS CMD...
  local what=$1 secs=$2; shift 2
  local i
  for ((i = 0; i < secs * 2; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "FATAL: $what did not come up within ${secs}s; its log follows" >&2
  tail -n 40 "$STATE/logs/$what.log" >&2 || true
  exit 1
}

# --- network -----------------------------------------------------------------
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || modprobe br_netfilter 2>/dev/null || true
sysctl -qw net.bridge.bridge-nf-call-iptables=1 || { echo "FATAL: br_netfilter is unavailable (Service traffic between pods on the bridge needs it)" >&2; exit 1; }
ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
iptables -N MESHLITE-CLUSTER-FWD
iptables -A MESHLITE-CLUSTER-FWD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
iptables -I FORWARD 1 -j MESHLITE-CLUSTER-FWD
cat > "$STATE/cni/10-meshlite.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "meshlite-cluster", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "isDefaultGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$STATE/cni-ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI

# --- etcd and the control plane ------------------------------------------------
start etcd "$bin/etcd" --data-dir "$STATE/etcd" --listen-client-urls http://127.0.0.1:23790 \
  --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
  --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster default=http://127.0.0.1:23800 \
  --quota-backend-bytes 1073741824 --unsafe-no-fsync
cat > "$STATE/audit-policy.yaml" <<AP
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
AP
start kube-apiserver "$bin/kube-apiserver" --etcd-servers http://127.0.0.1:23790 \
  --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
  --service-cluster-ip-range "$SVC_CIDR" --allow-privileged=true \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction --kubelet-preferred-address-types InternalIP \
  --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --audit-policy-file "$STATE/audit-policy.yaml" --audit-log-path "$STATE/logs/audit.log" --audit-log-maxsize 200 \
  --profiling=false
wait_for kube-apiserver 90 "$bin/kubectl" --kubeconfig "$STATE/admin.kubeconfig" get --raw /readyz
start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$STATE/kcm.kubeconfig" \
  --authentication-kubeconfig "$STATE/kcm.kubeconfig" --authorization-kubeconfig "$STATE/kcm.kubeconfig" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --use-service-account-credentials --leader-elect=false --bind-address 127.0.0.1 --profiling=false
start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" \
  --authentication-kubeconfig "$STATE/scheduler.kubeconfig" --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1 --profiling=false

# --- the node ------------------------------------------------------------------
cat > "$STATE/containerd.toml" <<CT
version = 2
root = "$STATE/containerd"
state = "$RUN/containerd"
[grpc]
  address = "$RUN/containerd.sock"
[ttrpc]
  address = "$RUN/containerd-ttrpc.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "meshlite.io/pause:dev"
  # No CAP_SYS_RESOURCE here: lowering a container's oom_score_adj fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
CT
start containerd containerd --config "$STATE/containerd.toml"
wait_for containerd 30 ctr --address "$RUN/containerd.sock" version
"$here/images.sh" "$rel" "$STATE/images" "$RUN/containerd.sock"

: > "$STATE/resolv.conf"
cat > "$STATE/kubelet.yaml" <<KL
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
# containerd 1.6 does not report its cgroup driver; the host has cgroup v1 and no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$RUN/containerd.sock
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $STATE/resolv.conf
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
KL
start kubelet "$bin/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
  --root-dir "$STATE/kubelet" --hostname-override "$NODE" --node-ip "$NODE_IP"
cat > "$STATE/kube-proxy.yaml" <<KP
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE
clusterCIDR: $POD_CIDR
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
KP
# Written once, before the start: kube-proxy exits when its config file changes.
start kube-proxy "$bin/kube-proxy" --config "$STATE/kube-proxy.yaml"
cat > "$STATE/Corefile" <<CF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns.kubeconfig meshlite
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
CF
start coredns "$bin/coredns" -conf "$STATE/Corefile"
kc() { "$bin/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }
wait_for kubelet 90 kc wait --for=condition=Ready "node/$NODE" --timeout=1s
wait_for coredns 60 curl -sf http://127.0.0.1:18181/ready
wait_for kube-controller-manager 60 kc get serviceaccount default -n default
echo "cluster up: Kubernetes $(kc version -o json | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1), kubeconfig $STATE/admin.kubeconfig"
