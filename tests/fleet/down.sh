#!/usr/bin/env bash
# Stop every fleet host (in parallel, poweroff then SIGKILL after FLEET_STOP_TIMEOUT), unmount
# the overlays, drop their cgroups, the per-host dirs, the inventory and the bridge. Works after
# a failed or partial up.sh. The cached base rootfs and deploy key stay.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

names=()
for d in "$FLEET_DIR/$FLEET_PREFIX"*; do [ -d "$d" ] && names+=("${d##*/}"); done
for cg in $(cgroup_v1_mounts); do   # a host whose dir is gone may still have a cgroup
  for d in "$cg/$FLEET_CGROUP/$FLEET_PREFIX"*; do [ -d "$d" ] && names+=("${d##*/}"); done
done
mapfile -t names < <(printf '%s\n' "${names[@]}" | sort -u | grep . || true)
pids=()
for name in "${names[@]}"; do stop_host "$name" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || true; done

for cg in $(host_cgroups ""); do rmdir "$cg" 2>/dev/null || true; done
# Overlays left mounted where no host dir says so (e.g. a dir removed by hand).
awk -v d="$FLEET_DIR/" '$3 == "overlay" && index($2, d) == 1 {print $2}' /proc/self/mounts |
  while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp"; done
if ip link show "$FLEET_BRIDGE" >/dev/null 2>&1; then ip link del "$FLEET_BRIDGE"; fi
rm -rf "$FLEET_DIR"
