#!/usr/bin/env bash
# Packs the real-cluster tier's images without a registry or Docker, as OCI
# archives, and imports them into containerd's k8s.io namespace:
#   meshlite:dev              the layout of deploy/Dockerfile: meshlite-proxy as the
#                             ENTRYPOINT, certd and the injector on PATH in
#                             /usr/local/bin, USER 65532:65532, and Debian's iptables
#                             (nft and legacy variants) with its libraries
#   meshlite.io/pause:dev     the pod sandbox (meshlite-testapp pause)
#   meshlite.io/testapp:dev   the test app (meshlite-testapp serve/call/hold)
# Usage: images.sh BIN_DIR OUT_DIR CONTAINERD_SOCKET
#   BIN_DIR holds meshlite's binaries, release or debug (cargo test uses
#   target/debug); their debug info is stripped in the image.
# tests/tests/cluster.rs checks that meshlite:dev and deploy/Dockerfile agree.
set -euo pipefail
rel=$(cd "$1" && pwd) out=$2 sock=$3
mkdir -p "$out"

# copy_with_libs ROOT FILE...: FILE and every shared library it loads, at the
# same paths, so the image runs what was tested on this machine.
copy_with_libs() {
  local root=$1; shift
  local f lib
  for f in "$@"; do
    case $f in "$rel"/*) ;; *) (cd / && cp -a --parents "${f#/}" "$root/")
      if [ -L "$f" ]; then (cd / && cp -a --parents "$(readlink -f "$f" | cut -c2-)" "$root/"); fi ;;
    esac
    [ -f "$f" ] || continue
    for lib in $(ldd "$(readlink -f "$f")" 2>/dev/null | grep -oE '/[^ ]+' || true); do
      if [ -f "$lib" ] && [ ! -e "$root$lib" ]; then (cd / && cp -L --parents "${lib#/}" "$root/"); fi
    done
  done
}

# pack NAME ROOT CONFIG_JSON: an OCI image archive of one layer, imported.
pack() {
  local name=$1 root=$2 config=$3 work
  work=$(mktemp -d)
  mkdir -p "$work/blobs/sha256"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
  local diff_id layer_digest layer_size
  diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  gzip -n -1 -c "$work/layer.tar" > "$work/layer.tgz"
  layer_digest=$(sha256sum "$work/layer.tgz" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$work/layer.tgz")
  mv "$work/layer.tgz" "$work/blobs/sha256/$layer_digest"
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$config" "$diff_id" > "$work/config.json"
  local cfg_digest cfg_size
  cfg_digest=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  cfg_size=$(stat -c %s "$work/config.json")
  mv "$work/config.json" "$work/blobs/sha256/$cfg_digest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$cfg_digest" "$cfg_size" "$layer_digest" "$layer_size" > "$work/manifest.json"
  local m_digest m_size
  m_digest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
  m_size=$(stat -c %s "$work/manifest.json")
  mv "$work/manifest.json" "$work/blobs/sha256/$m_digest"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$m_digest" "$m_size" "$name" > "$work/index.json"
  rm "$work/layer.tar"
  local archive="$out/$(echo "$name" | tr '/:' '__').oci.tar"
  tar -C "$work" -cf "$archive" oci-layout index.json blobs
  rm -rf "$work"
  # The CRI looks images up by their normalized reference: meshlite:dev is
  # docker.io/library/meshlite:dev to the kubelet.
  local ref=$name
  case ${name%%/*} in
    *.*|*:[0-9]*|localhost) ;;
    *) case $name in */*) ref=docker.io/$name ;; *) ref=docker.io/library/$name ;; esac ;;
  esac
  ctr --address "$sock" -n k8s.io images import --index-name "$ref" "$archive" >/dev/null
  echo "packed and imported $ref ($archive)"
}

base_root() {
  local root=$1
  mkdir -p "$root"/{etc,tmp,run,proc,sys,dev,var/run}
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nmeshlite-proxy:x:2102:2102::/:/sbin/nologin\nnonroot:x:65532:65532::/:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nmeshlite-proxy:x:2102:\nnonroot:x:65532:\n' > "$root/etc/group"
  printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
}

# meshlite:dev, as deploy/Dockerfile builds it.
root=$(mktemp -d)
base_root "$root"
mkdir -p "$root/usr/local/bin"
for b in meshlite-proxy meshlite-certd meshlite-injector; do
  install -m 0755 "$rel/$b" "$root/usr/local/bin/$b"
  strip --strip-debug "$root/usr/local/bin/$b"
  copy_with_libs "$root" "$rel/$b" >/dev/null
done
# Debian's iptables package: every file it ships (both variants, the
# extensions it loads at run time), plus their libraries.
mapfile -t files < <(dpkg -L iptables libxtables12 libip4tc2 libip6tc2 libnftnl11 libnfnetlink0 libnetfilter-conntrack3 libmnl0 2>/dev/null | while read -r p; do [ -f "$p" ] || [ -L "$p" ] && echo "$p"; done | grep -v '^/usr/share/')
copy_with_libs "$root" "${files[@]}"
# The alternatives Debian's postinst would set: iptables is the nft variant.
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf "/usr/sbin/${t/iptables/iptables-nft}" "$root/usr/sbin/$t" 2>/dev/null || true
done
for t in iptables ip6tables; do
  for s in "" -save -restore; do
    ln -sf /usr/sbin/xtables-nft-multi "$root/usr/sbin/$t-nft$s"
    ln -sf /usr/sbin/xtables-legacy-multi "$root/usr/sbin/$t-legacy$s"
    ln -sf "/usr/sbin/$t-nft$s" "$root/usr/sbin/$t$s"
  done
done
pack meshlite:dev "$root" '{"User":"65532:65532","Entrypoint":["/usr/local/bin/meshlite-proxy"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}'
rm -rf "$root"

# The pause and test-app images: one small binary each way.
root=$(mktemp -d)
base_root "$root"
mkdir -p "$root/usr/local/bin"
install -m 0755 "$rel/meshlite-testapp" "$root/usr/local/bin/meshlite-testapp"
strip --strip-debug "$root/usr/local/bin/meshlite-testapp"
copy_with_libs "$root" "$rel/meshlite-testapp" >/dev/null
pack meshlite.io/pause:dev "$root" '{"User":"65535:65535","Entrypoint":["/usr/local/bin/meshlite-testapp","pause"]}'
pack meshlite.io/testapp:dev "$root" '{"User":"1000:1000","Entrypoint":["/usr/local/bin/meshlite-testapp"],"Cmd":["serve","8080"]}'
rm -rf "$root"
