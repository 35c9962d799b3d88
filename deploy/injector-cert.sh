#!/usr/bin/env bash
# Issues the injector's serving certificate from meshlite's CA and stores it in
# Secret meshlite-injector-tls (type kubernetes.io/tls), which the injector
# Deployment mounts.
#
# Why: the API server verifies the webhook against the caBundle that certd
# keeps set to meshlite's CA, so the serving certificate must chain to that CA
# and name the Service: meshlite-injector.meshlite-system.svc. certd creates
# the CA (Secret meshlite-ca) on its first start; run this once after that, and
# again before the certificate expires (the injector reloads the mounted files
# by itself, no restart needed).
#
#   deploy/injector-cert.sh                      # CA from the cluster, Secret applied
#   deploy/injector-cert.sh --days 90
#   deploy/injector-cert.sh --ca-cert ca.crt --ca-key ca.key --out-dir DIR
#                                                # local files only, no cluster
#
# Needs openssl (the CA key must be ECDSA or RSA; certd generates P-256), and kubectl with access to meshlite-system unless --out-dir
# and --ca-cert/--ca-key are given. The CA key passes through a private temp
# directory that is removed on exit.
set -euo pipefail

namespace=meshlite-system
service=meshlite-injector
secret=meshlite-injector-tls
ca_secret=meshlite-ca
days=365
ca_cert=""
ca_key=""
out_dir=""
wait_seconds=120

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while (($#)); do
  case "$1" in
    --days) days="$2"; shift 2 ;;
    --ca-cert) ca_cert="$2"; shift 2 ;;
    --ca-key) ca_key="$2"; shift 2 ;;
    --out-dir) out_dir="$2"; shift 2 ;;
    --wait) wait_seconds="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "injector-cert.sh: unknown argument $1" >&2; usage ;;
  esac
done
if { [[ -n $ca_cert ]] && [[ -z $ca_key ]]; } || { [[ -z $ca_cert ]] && [[ -n $ca_key ]]; }; then
  echo "injector-cert.sh: --ca-cert and --ca-key go together" >&2
  exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"

if [[ -z $ca_cert ]]; then
  # certd creates the CA Secret on its first start; wait for it.
  deadline=$((SECONDS + wait_seconds))
  until kubectl -n "$namespace" get secret "$ca_secret" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "injector-cert.sh: Secret $namespace/$ca_secret did not appear in ${wait_seconds}s; is certd running? (kubectl -n $namespace logs deploy/meshlite-certd)" >&2
      exit 1
    fi
    sleep 2
  done
  kubectl -n "$namespace" get secret "$ca_secret" -o 'jsonpath={.data.tls\.crt}' | base64 -d >"$work/ca.crt"
  kubectl -n "$namespace" get secret "$ca_secret" -o 'jsonpath={.data.tls\.key}' | base64 -d >"$work/ca.key"
  ca_cert="$work/ca.crt"
  ca_key="$work/ca.key"
fi

dns1="$service.$namespace.svc"
dns2="$service.$namespace.svc.cluster.local"
cat >"$work/ext.cnf" <<CNF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:$dns1, DNS:$dns2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

openssl ecparam -name prime256v1 -genkey -noout -out "$work/ec.key" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$work/ec.key" -out "$work/tls.key"
openssl req -new -key "$work/tls.key" -subj "/CN=$dns1" -out "$work/tls.csr"
# The first certificate of the CA's tls.crt is the signing certificate; any
# that follow are its issuers and complete the chain the webhook serves.
openssl x509 -req -in "$work/tls.csr" -CA "$ca_cert" -CAkey "$ca_key" \
  -CAcreateserial -CAserial "$work/ca.srl" -days "$days" -sha256 \
  -extfile "$work/ext.cnf" -out "$work/leaf.crt" 2>/dev/null
cat "$work/leaf.crt" "$ca_cert" >"$work/tls.crt"
openssl verify -partial_chain -CAfile "$ca_cert" -purpose sslserver "$work/leaf.crt" >/dev/null

if [[ -n $out_dir ]]; then
  mkdir -p "$out_dir"
  install -m 0644 "$work/tls.crt" "$out_dir/tls.crt"
  install -m 0600 "$work/tls.key" "$out_dir/tls.key"
  echo "wrote $out_dir/tls.crt and $out_dir/tls.key for $dns1 (valid $days days)"
else
  kubectl -n "$namespace" create secret tls "$secret" \
    --cert="$work/tls.crt" --key="$work/tls.key" --dry-run=client -o yaml |
    kubectl label --local -f - -o yaml app.kubernetes.io/part-of=meshlite |
    kubectl apply -f -
  echo "Secret $namespace/$secret holds a certificate for $dns1, valid $days days"
fi
