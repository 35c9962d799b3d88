#!/usr/bin/env bash
# Builds the real-cluster tier's binaries, and helm for the chart's tests, from
# their Go modules and caches them outside the repository, each set keyed by
# its pinned version and by the hash of its modules and of the function below
# that builds it, so that a warm run builds nothing (and a change to one set
# rebuilds only that set):
#   kube/     kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#             kube-proxy, kubectl (k8s.io/kubernetes) and etcd (go.etcd.io/etcd/server/v3)
#   coredns/  CoreDNS with the plugins the cluster needs
#   helm/     helm (helm.sh/helm/v4), linked into the Kubernetes directory
# Prints the directory that holds them all (kubectl, helm, ...).
#
#   build.sh            build what is missing, print the directory
#   build.sh --locate   build nothing: print the directory if everything is
#                       built, else say what is missing and exit 1 (the
#                       tests that only need kubectl and helm use this)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MESHLITE_CLUSTER_CACHE:-/var/cache/meshlite-cluster}
locate=0
case "${1:-}" in
  --locate) locate=1 ;;
  "") ;;
  *) echo "usage: $0 [--locate]" >&2; exit 2 ;;
esac

build_kubernetes() { # OUT_DIR VERSION
  local tmp=$1 kube_version=$2
  # The version stamp that Kubernetes' own build (hack/lib/version.sh) sets,
  # so that kubectl version, the node and discovery report the real release.
  local minor stamp
  minor=$(echo "$kube_version" | cut -d. -f2)
  stamp="-X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1"
  stamp="$stamp -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  stamp="$stamp -X k8s.io/client-go/pkg/version.gitVersion=$kube_version -X k8s.io/client-go/pkg/version.gitMajor=1"
  stamp="$stamp -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  local flags=(-trimpath "-ldflags=-s -w $stamp")
  (cd "$here/kube" && go build "${flags[@]}" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl)
  (cd "$here/kube" && go build "${flags[@]}" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  (cd "$here/coredns" && go build "${flags[@]}" -o "$tmp/coredns" .)
}

build_helm() { # OUT_DIR VERSION
  local tmp=$1 helm_version=$2
  # The stamp helm's Makefile sets, so that `helm version` reports the release.
  local stamp="-X helm.sh/helm/v4/internal/version.version=$helm_version"
  stamp="$stamp -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  (cd "$here/helm" && go build -trimpath "-ldflags=-s -w $stamp" -o "$tmp/helm" helm.sh/helm/v4/cmd/helm)
}

# ensure NAME VERSION DIR CHECK BUILD_FUNCTION: DIR/CHECK exists afterwards.
ensure() {
  local name=$1 version=$2 out=$3 check=$4 build=$5
  [ -x "$out/$check" ] && return 0
  if ((locate)); then
    echo "FATAL: $name $version is not built ($out/$check is missing): run tests/cluster/build.sh" >&2
    exit 1
  fi
  command -v go >/dev/null || { echo "FATAL: go is not installed (build.sh builds $name from its Go module)" >&2; exit 1; }
  echo "building $name $version from its Go modules into $out" >&2
  local tmp="$out.tmp.$$" started=$SECONDS
  rm -rf "$tmp" && mkdir -p "$tmp"
  "$build" "$tmp" "$version"
  rm -rf "$out" && mv "$tmp" "$out"
  echo "built $name $version in $((SECONDS - started)) s" >&2
}

kube_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' "$here/kube/go.mod")
kube_key=$({ declare -f build_kubernetes; cat "$here"/kube/go.mod "$here"/kube/go.sum \
  "$here"/coredns/go.mod "$here"/coredns/go.sum "$here"/coredns/main.go; } | sha256sum | cut -c1-16)
out="$cache/bin/kubernetes-$kube_version-$kube_key"
ensure Kubernetes "$kube_version" "$out" coredns build_kubernetes

helm_version=$(awk '$1 == "require" && $2 == "helm.sh/helm/v4" {print $3}' "$here/helm/go.mod")
helm_key=$({ declare -f build_helm; cat "$here"/helm/go.mod "$here"/helm/go.sum; } | sha256sum | cut -c1-16)
helm_out="$cache/bin/helm-$helm_version-$helm_key"
ensure helm "$helm_version" "$helm_out" helm build_helm
# One directory for the callers: helm beside kubectl.
if [ "$(readlink "$out/helm" 2>/dev/null)" != "$helm_out/helm" ]; then
  if ((locate)); then
    echo "FATAL: $out/helm does not point at helm $helm_version: run tests/cluster/build.sh" >&2
    exit 1
  fi
  ln -sfn "$helm_out/helm" "$out/helm"
fi
echo "$out"
