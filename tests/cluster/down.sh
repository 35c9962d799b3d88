#!/usr/bin/env bash
# Undoes up.sh, whatever state it got to: the processes it started (by the PIDs
# it recorded), the containers' processes and shims, mounts, the pods' network
# namespaces, iptables chains (kube-proxy's, the kubelet's and ours), the bridge
# and the state directory. Safe to run twice.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"

# The pods' processes first (every task in a kubepods cgroup), then the shims
# that served our containerd, then what up.sh started, newest first.
pids=$(cat /sys/fs/cgroup/*/kubepods*/tasks /sys/fs/cgroup/*/kubepods*/*/tasks /sys/fs/cgroup/*/kubepods*/*/*/tasks /sys/fs/cgroup/*/kubepods*/*/*/*/tasks 2>/dev/null | sort -u)
for pid in /proc/[0-9]*; do
  if tr '\0' ' ' < "$pid/cmdline" 2>/dev/null | grep -q "containerd-shim.*$RUN/containerd.sock"; then pids="$pids ${pid#/proc/}"; fi
done
[ -n "${pids// }" ] && kill -KILL $pids 2>/dev/null
if [ -f "$RUN/pids" ]; then
  tac "$RUN/pids" | while read -r pid name; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 20); do
    alive=0
    while read -r pid name; do kill -0 "$pid" 2>/dev/null && alive=1; done < "$RUN/pids"
    [ $alive = 0 ] && break
    sleep 0.5
  done
  while read -r pid name; do kill -KILL "$pid" 2>/dev/null; done < "$RUN/pids"
fi

# Mounts under our state (kubelet volumes, containerd's rootfs and shm), deepest first.
for _ in 1 2 3; do
  awk -v s="$STATE" -v r="$RUN" 'index($2, s) == 1 || index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
done
# The pods' network namespaces: those that appeared after up.sh started.
for ns in $(ls /run/netns 2>/dev/null); do
  if ! grep -qx "$ns" "$RUN/netns-before" 2>/dev/null && [[ $ns == cni-* ]]; then
    umount -l "/run/netns/$ns" 2>/dev/null; rm -f "/run/netns/$ns"
  fi
done
# Empty kubepods cgroups.
for d in $(find /sys/fs/cgroup/*/kubepods* -depth -type d 2>/dev/null); do rmdir "$d" 2>/dev/null; done

iptables -D FORWARD -j MESHLITE-CLUSTER-FWD 2>/dev/null
iptables -F MESHLITE-CLUSTER-FWD 2>/dev/null
iptables -X MESHLITE-CLUSTER-FWD 2>/dev/null
# iptables: every chain and rule of kube-proxy, the kubelet, CNI plugins and ours.
for t in iptables ip6tables; do
  if "$t-save" 2>/dev/null | grep -qE 'KUBE-|CNI-|MESHLITE-CLUSTER'; then
    "$t-save" | grep -vE 'KUBE-|CNI-|MESHLITE-CLUSTER' | "$t-restore"
  fi
done
ip link del "$BRIDGE" 2>/dev/null
rm -rf "$RUN"
[ "${MESHLITE_CLUSTER_KEEP_STATE:-}" = 1 ] || rm -rf "$STATE"
exit 0
