#!/usr/bin/env bash
# End to end on a real cluster (test tier 4, outside CI): install meshlite,
# run the demo, and check what a user would check. Uses the current kubectl
# context; expects a throwaway cluster (kind or k3d).
#
#   deploy/e2e.sh                     # image meshlite:dev already in the cluster
#   deploy/e2e.sh --build kind        # docker build, then kind load (cluster "kind")
#   deploy/e2e.sh --build k3d         # docker build, then k3d image import
#   deploy/e2e.sh --keep              # leave everything installed afterwards
#
# Checks: certd creates the CA and sets the webhook's caBundle; the injector
# becomes ready; demo pods get meshlite-init and meshlite-proxy (the opt-out
# pod does not); the meshed client reaches the strict server; the unmeshed
# client is refused; the Job completes (native sidecar); the server's proxy
# reports mTLS connections in /metrics.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build="" keep=0
while (($#)); do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--build kind|k3d] [--keep]" >&2; exit 2 ;;
  esac
done

sys=meshlite-system demo=meshlite-demo
step() { printf '\n=== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# eventually SECONDS DESCRIPTION COMMAND...: retry every 2 s until it succeeds.
eventually() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1)); shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what (not within ${limit}s)"
    sleep 2
  done
  echo "ok: $what"
}
pod_of() { kubectl -n "$demo" get pod -l "app=$1" -o jsonpath='{.items[0].metadata.name}'; }
init_names() { kubectl -n "$demo" get pod "$(pod_of "$1")" -o jsonpath='{.spec.initContainers[*].name}'; }
logs_have() { kubectl -n "$demo" logs "deploy/$1" -c "$2" --tail=20 | grep -q "$3"; }
ca_bundle_set() {
  [[ -n "$(kubectl get mutatingwebhookconfiguration meshlite-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]]
}

if [[ -n $build ]]; then
  step "build and load meshlite:dev"
  docker build -f deploy/Dockerfile -t meshlite:dev .
  case "$build" in
    kind) kind load docker-image meshlite:dev ;;
    k3d) k3d image import meshlite:dev ;;
    *) fail "--build takes kind or k3d" ;;
  esac
fi

step "control plane"
kubectl apply -k deploy/
kubectl -n "$sys" rollout status deploy/meshlite-certd --timeout=180s
eventually 60 "certd created Secret meshlite-ca" kubectl -n "$sys" get secret meshlite-ca
eventually 60 "certd created Secret meshlite-injector-tls" kubectl -n "$sys" get secret meshlite-injector-tls
kubectl -n "$sys" rollout status deploy/meshlite-injector --timeout=180s
eventually 90 "certd set the webhook's caBundle" ca_bundle_set

step "demo"
kubectl apply -f deploy/examples/demo.yaml
eventually 90 "trust bundle in $demo" kubectl -n "$demo" get configmap meshlite-trust-bundle
for d in demo-server demo-client demo-unmeshed; do
  kubectl -n "$demo" rollout status "deploy/$d" --timeout=180s
done
[[ "$(init_names demo-server)" == "meshlite-init meshlite-proxy" ]] || fail "demo-server not injected: $(init_names demo-server)"
[[ "$(init_names demo-client)" == "meshlite-init meshlite-proxy" ]] || fail "demo-client not injected"
[[ -z "$(init_names demo-unmeshed)" ]] || fail "the opt-out pod was injected"
echo "ok: injected exactly the opted-in pods"
eventually 60 "meshed client reaches the strict server" logs_have demo-client client '^ok$'
eventually 60 "unmeshed client is refused by the strict server" logs_have demo-unmeshed client refused
kubectl -n "$demo" wait --for=condition=complete job/demo-job --timeout=180s
server="$(pod_of demo-server)"
metrics="$(kubectl get --raw "/api/v1/namespaces/$demo/pods/$server:15020/proxy/metrics")"
grep -q '^meshlite_mtls_connections_total{.*direction="inbound"' <<<"$metrics" ||
  fail "the server's proxy reports no inbound mTLS connections"
echo "ok: the server's proxy counts inbound mTLS connections"

if ((keep == 0)); then
  step "clean up"
  kubectl delete -f deploy/examples/demo.yaml --wait=true
  kubectl delete -k deploy/ --wait=true
fi
echo
echo "e2e: all checks passed"
