#!/usr/bin/env bash
# Builds the real-cluster tier's binaries from their Go modules and caches them
# outside the repository, keyed by the pinned versions and by the hash of the
# modules' go.mod and go.sum, so that a warm run builds nothing.
#   kube/     kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#             kube-proxy, kubectl (k8s.io/kubernetes) and etcd (go.etcd.io/etcd/server/v3)
#   coredns/  CoreDNS with the plugins the cluster needs
# Prints the directory that holds the binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MESHLITE_CLUSTER_CACHE:-/var/cache/meshlite-cluster}
command -v go >/dev/null || { echo "FATAL: go is not installed (the real-cluster tier builds Kubernetes from its Go modules)" >&2; exit 1; }
kube_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' "$here/kube/go.mod")
key=$(cat "$0" "$here"/kube/go.mod "$here"/kube/go.sum "$here"/coredns/go.mod "$here"/coredns/go.sum "$here"/coredns/main.go | sha256sum | cut -c1-16)
out="$cache/bin/kubernetes-$kube_version-$key"
if [ ! -x "$out/coredns" ]; then
  echo "building Kubernetes $kube_version from its Go modules into $out" >&2
  tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  # The version stamp that Kubernetes' own build (hack/lib/version.sh) sets,
  # so that kubectl version, the node and discovery report the real release.
  minor=$(echo "$kube_version" | cut -d. -f2)
  stamp="-X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1"
  stamp="$stamp -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  stamp="$stamp -X k8s.io/client-go/pkg/version.gitVersion=$kube_version -X k8s.io/client-go/pkg/version.gitMajor=1"
  stamp="$stamp -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  flags=(-trimpath "-ldflags=-s -w $stamp")
  (cd "$here/kube" && go build "${flags[@]}" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl)
  (cd "$here/kube" && go build "${flags[@]}" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  (cd "$here/coredns" && go build "${flags[@]}" -o "$tmp/coredns" .)
  rm -rf "$out" && mv "$tmp" "$out"
fi
echo "$out"
