# Shared settings and helpers for the lab scripts (sourced, not run).
# shellcheck shell=bash disable=SC2034
LAB_DIR=/var/lib/hostcollector-lab
LAB_RUN=/run/hostcollector-lab          # markers: which daemons start.sh started
LAB_PREFIX=hc-lab-
SCRATCH_PREFIX=hc-scratch-
LAB_BRIDGE=hcbr0
LAB_BRIDGE_ADDR=10.99.0.1/24
LIBVIRT_URI=qemu:///system
LIBVIRTD_LOG=/var/log/libvirt/libvirtd.log
VIRTLOGD_LOG=/var/log/libvirt/virtlogd.log
LAB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LC_ALL=C

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }
warn() { echo "$(basename "$0"): warning: $*" >&2; }
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

virsh_() { virsh -q -c "$LIBVIRT_URI" "$@"; }

# PIDs of live (non-zombie) processes whose command name is exactly $1.
# A kill -9'ed daemon whose parent does not reap it stays a zombie with the same name.
live_pids() {
  local pid st
  for pid in $(pgrep -x "$1" 2>/dev/null || true); do
    st=$(ps -o stat= -p "$pid" 2>/dev/null || true)
    case "$st" in ''|Z*|X*) continue ;; esac
    echo "$pid"
  done
}

systemd_is_pid1() { [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; }

libvirt_answers() { timeout 10 virsh -q -c "$LIBVIRT_URI" list >/dev/null 2>&1; }

# Debian's python3 (installed by install.sh) when present: stdlib only, and no pyenv shim.
python3_() {
  if [ -x /usr/bin/python3 ]; then /usr/bin/python3 "$@"
  elif command -v python3 >/dev/null 2>&1; then python3 "$@"
  else die "python3 not found (run $LAB_HERE/install.sh)"; fi
}
