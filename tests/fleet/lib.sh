# Shared settings and helpers for the fleet scripts (sourced, not run).
# shellcheck shell=bash disable=SC2034
FLEET_CACHE=${FLEET_CACHE:-/var/cache/hostcollector-fleet}  # base rootfs + deploy key (kept)
FLEET_DIR=${FLEET_DIR:-/var/lib/hostcollector-fleet}        # per-host state (down.sh removes it)
FLEET_INVENTORY=${FLEET_INVENTORY:-$FLEET_DIR/inventory.yml}
FLEET_PREFIX=hc-fleet-
FLEET_BRIDGE=hcfleet0
FLEET_NET=10.77.0                   # bridge .1, host i at .(10+i)
FLEET_CGROUP=hostcollector-fleet    # per-host cgroups: /sys/fs/cgroup/<hierarchy>/$FLEET_CGROUP/<name>
FLEET_KEY=$FLEET_CACHE/deploy_ed25519
FLEET_SUITE=bookworm
FLEET_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LC_ALL=C

die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }
warn() { echo "$(basename "$0"): warning: $*" >&2; }
need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

host_name() { echo "$FLEET_PREFIX$1"; }
host_addr() { echo "$FLEET_NET.$((10 + $1))"; }

# Mount points of the machine's cgroup v1 hierarchies (cpu, memory, ..., name=systemd).
cgroup_v1_mounts() { awk '$3 == "cgroup" && $2 ~ "^/sys/fs/cgroup/" {print $2}' /proc/self/mounts; }

# PID from FILE when it is a live, non-zombie process whose command name is $2.
live_pid_in() {
  local pid st
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
  st=$(ps -o stat= -p "$pid" 2>/dev/null || true)
  case "$st" in ''|Z*|X*) return 1 ;; esac
  echo "$pid"
}

fleet_ssh() {  # fleet_ssh ADDRESS CMD...: as deploy, batch mode, the fleet's known_hosts
  ssh -q -i "$FLEET_KEY" -o BatchMode=yes -o IdentitiesOnly=yes -o ConnectTimeout=3 \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile="$FLEET_DIR/known_hosts" \
    -o LogLevel=ERROR "deploy@$1" "${@:2}"
}

# This host's cgroup in every hierarchy: each v1 one and the (controller-less) cgroup2 one.
host_cgroups() {
  local mp
  for mp in $(cgroup_v1_mounts) $(awk '$3 == "cgroup2" && $2 ~ "^/sys/fs/cgroup" {print $2}' /proc/self/mounts); do
    echo "$mp/$FLEET_CGROUP/$1"
  done
}

# The container's PID 1 (for nsenter): the process of the host's cgroup that is PID 1 in its
# own PID namespace.
find_leader() {
  local procs pid
  procs=$(find "$(cgroup_v1_mounts | grep -m1 '/systemd$')/$FLEET_CGROUP/$1" -name cgroup.procs 2>/dev/null) || true
  [ -n "$procs" ] || return 1
  # shellcheck disable=SC2086,SC2013
  for pid in $(cat $procs 2>/dev/null); do
    if grep -Eq '^NSpid:[[:space:]]+[0-9]+[[:space:]]+1$' "/proc/$pid/status" 2>/dev/null; then
      echo "$pid"; return 0
    fi
  done
  return 1
}

wait_gone() {  # wait_gone PID SECONDS: 0 once PID is gone (or a zombie)
  local deadline=$((SECONDS + $2)) st
  while :; do
    st=$(ps -o stat= -p "$1" 2>/dev/null || true)
    case "$st" in ''|Z*|X*) return 0 ;; esac
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

# Stop one host whatever state it is in: poweroff (nspawn turns SIGTERM into SIGRTMIN+3 for
# the host's systemd), SIGKILL of its PID 1 after FLEET_STOP_TIMEOUT (that ends its whole PID
# namespace), then kill what is left in its cgroups, drop them, unmount, remove its dir.
stop_host() {
  local name=$1 dir=$FLEET_DIR/$1 pid leader cg p
  if pid=$(live_pid_in "$dir/nspawn.pid" systemd-nspawn); then
    leader=$(find_leader "$name" || true)
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "${FLEET_STOP_TIMEOUT:-20}"; then
      warn "$name did not power off in ${FLEET_STOP_TIMEOUT:-20} s: SIGKILL"
      if [ -n "$leader" ]; then kill -KILL "$leader" 2>/dev/null || true; fi
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 10 || warn "$name: nspawn $pid still there after SIGKILL"
    fi
  fi
  for cg in $(host_cgroups "$name"); do
    [ -d "$cg" ] || continue
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null |
      while read -r p; do kill -KILL "$p" 2>/dev/null || true; done
  done
  for cg in $(host_cgroups "$name"); do
    [ -d "$cg" ] || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$cg" ] || break
      sleep 0.3
    done
    [ -d "$cg" ] && warn "cannot remove cgroup $cg"
  done
  if mountpoint -q "$dir/merged" 2>/dev/null; then
    umount "$dir/merged" 2>/dev/null || umount -l "$dir/merged"
  fi
  rm -rf "$dir"
}
