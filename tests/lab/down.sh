#!/usr/bin/env bash
# Tear the lab down: host B if it is up (second-host.sh down), vms.sh down (every hc-lab-* /
# hc-scratch-* domain and its disk),
# remove the bridge hcbr0, and stop libvirtd/virtlogd if start.sh started them.
# Idempotent. Packages, the guest image and the kernel cache stay.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

"$LAB_HERE/second-host.sh" down

if command -v virsh >/dev/null 2>&1 && libvirt_answers; then
  "$LAB_HERE/vms.sh" down
elif [ -n "$(live_pids libvirtd)" ]; then
  die "libvirtd runs but does not answer on $LIBVIRT_URI; cannot remove the lab domains"
fi

if ip link show "$LAB_BRIDGE" >/dev/null 2>&1; then
  ip link del "$LAB_BRIDGE" || die "cannot delete bridge $LAB_BRIDGE"
fi

stop_started() {  # daemon name: stop it only if start.sh started it (marker with its pid)
  local name=$1 marker=$LAB_RUN/started-$1 pid
  [ -f "$marker" ] || return 0
  pid=$(cat "$marker")
  if [ -n "$pid" ] && live_pids "$name" | grep -x "$pid" >/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      live_pids "$name" | grep -x "$pid" >/dev/null || break
      sleep 0.1
    done
    if live_pids "$name" | grep -x "$pid" >/dev/null; then
      warn "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "/run/$name.pid"
  fi
  rm -f "$marker"
}
stop_started libvirtd
stop_started virtlogd
