#!/usr/bin/env bash
# Internal to up.sh: launch.sh NAME ROOT. Moves itself into the host's own cgroup in every
# hierarchy, then becomes systemd-nspawn. Without the move every host would share the
# launcher's cgroup (and the host's cgroup namespace would be rooted there).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
name=$1 root=$2

for cg in $(host_cgroups "$name"); do
  mkdir -p "$cg"
  case "$cg" in
    /sys/fs/cgroup/cpuset/*)  # a new cpuset has no cpus/mems: attaching to it fails
      for level in "${cg%/*}" "$cg"; do
        for f in cpuset.cpus cpuset.mems; do
          if [ -z "$(tr -d '\n' <"$level/$f")" ]; then cat "${level%/*}/$f" >"$level/$f"; fi
        done
      done ;;
  esac
  echo $$ >"$cg/cgroup.procs"
done

libvirt=()
# Only the read-only socket: the read-write one in the same directory accepts container root.
[ -S /var/run/libvirt/libvirt-sock-ro ] &&
  libvirt=(--bind-ro=/var/run/libvirt/libvirt-sock-ro:/run/libvirt/libvirt-sock-ro)

exec systemd-nspawn -D "$root" -M "$name" --register=no --keep-unit \
  --network-bridge="$FLEET_BRIDGE" --console=read-only --kill-signal=SIGRTMIN+3 \
  --system-call-filter=bpf "${libvirt[@]}" /usr/local/sbin/fleet-init
