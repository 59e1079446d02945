#!/usr/bin/env bash
# second-host.sh up|down|status — lab host B: a second libvirtd + virtlogd on this machine, in
# its own mount, UTS and network namespaces, reachable from the lab's libvirtd (host A) over a
# veth pair, so that `virsh migrate --live` between A and B is a real live migration.
#   up:     create the namespaces (held by a `sleep infinity`), bind B's own /etc/libvirt, /run,
#           /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, the veth pair
#           hc-mig-a 10.98.0.1/24 (A) <-> hc-mig-b 10.98.0.2/24 (B), a bridge hcbr0 in B, then
#           start virtlogd and libvirtd --listen (TCP on 10.98.0.2, auth none) in B and wait for
#           both of B's URIs to answer. Idempotent.
#   down:   destroy B's domains, stop B's daemons, drop the namespaces and the veth pair.
#   status: one line: up or down, and B's URIs.
# B's libvirt from this namespace: qemu+unix:///system?socket=$HB_DIR/run/libvirt/libvirt-sock
# (the socket sits in B's bind-mounted /run), or qemu+tcp://10.98.0.2/system.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HB_DIR=$LAB_DIR/host-b
HB_HOLDER_PID=$LAB_RUN/host-b.pid
HB_HOSTNAME=hc-lab-b
# Fixed, so that B's identity survives restarts; A's (no DMI here) is random per libvirtd start.
HB_HOST_UUID=b0b0b0b0-0000-4000-8000-00000000b00b
HB_ADDR=10.98.0.2
HA_ADDR=10.98.0.1
HA_VETH=hc-mig-a
HB_VETH=hc-mig-b
HB_SOCK=$HB_DIR/run/libvirt/libvirt-sock
HB_URI_LOCAL="qemu+unix:///system?socket=$HB_SOCK"
HB_URI_TCP="qemu+tcp://$HB_ADDR/system"
# B's daemons run under other command names (symlinks to the same binaries), so that the lab's
# own scripts, which find A's daemons by name (pgrep -x libvirtd), never take B's for A's.
HB_LIBVIRTD=$HB_DIR/bin/libvirtd-b
HB_VIRTLOGD=$HB_DIR/bin/virtlogd-b
# What B gets of its own: mount point in B -> directory on the shared filesystem.
HB_BINDS=(
  "/etc/libvirt:$HB_DIR/etc"
  "/run:$HB_DIR/run"
  "/var/lib/libvirt:$HB_DIR/lib"
  "/var/cache/libvirt:$HB_DIR/cache"
  "/var/log/libvirt:$HB_DIR/log"
)

usage() { echo "usage: $(basename "$0") up|down|status" >&2; exit 2; }
[ $# -eq 1 ] || usage
need_root

virsh_b() { virsh -q -c "$HB_URI_LOCAL" "$@"; }
b_answers() { timeout 10 virsh -q -c "$HB_URI_LOCAL" list >/dev/null 2>&1; }
b_tcp_answers() { timeout 10 virsh -q -c "$HB_URI_TCP" list >/dev/null 2>&1; }

# PID of the live namespace holder, or nothing. A recycled PID is not taken for it: the
# holder is a `sleep` whose UTS namespace is not ours.
holder_pid() {
  local pid
  [ -f "$HB_HOLDER_PID" ] || return 0
  pid=$(cat "$HB_HOLDER_PID")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sleep ] || return 0
  # a killed holder lingers as a zombie here (PID 1 reaps late), and a zombie has no namespaces
  case "$(ps -o stat= -p "$pid" 2>/dev/null || true)" in ''|Z*|X*) return 0 ;; esac
  local uts
  uts=$(readlink "/proc/$pid/ns/uts" 2>/dev/null || true)
  [ -n "$uts" ] && [ "$uts" != "$(readlink /proc/self/ns/uts)" ] || return 0
  echo "$pid"
}

in_b() { nsenter -t "$1" -m -u -n -- "${@:2}"; }

# PID of a live (non-zombie) daemon of B from its pid file in B's /run, or nothing.
b_daemon_pid() {  # name
  local pid st file=$HB_DIR/run/$1.pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
  st=$(ps -o stat= -p "$pid" 2>/dev/null || true)
  case "$st" in ''|Z*|X*) return 0 ;; esac
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 0
  echo "$pid"
}

write_configs() {
  mkdir -p "$HB_DIR"/{etc,run,lib,cache,log,bin}
  ln -sfn "$(command -v libvirtd)" "$HB_LIBVIRTD"
  ln -sfn "$(command -v virtlogd)" "$HB_VIRTLOGD"
  cat >"$HB_DIR/etc/libvirtd.conf" <<EOF
# Lab host B (tests/lab/second-host.sh). TCP without auth, only on the veth address: the
# migration peer (host A) and test clients reach B there; nothing else can route to it.
listen_tls = 0
listen_tcp = 1
listen_addr = "$HB_ADDR"
auth_tcp = "none"
host_uuid = "$HB_HOST_UUID"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  cat >"$HB_DIR/etc/qemu.conf" <<EOF
# Lab host B (tests/lab/second-host.sh). Guests run as root, as on host A (install.sh).
user = "root"
group = "root"
# Host A's libvirtd manages the same cgroupfs and names a domain's cgroup after its id and
# name, so B must not touch cgroups: a migrated domain would clash with A's.
cgroup_controllers = [ ]
EOF
  cat >"$HB_DIR/etc/virtlogd.conf" <<EOF
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
EOF
}

make_namespaces() {
  local pid
  pid=$(holder_pid)
  if [ -z "$pid" ]; then
    rm -f "$HB_HOLDER_PID"
    mkdir -p "$LAB_RUN"
    setsid unshare --mount --uts --net --propagation private sleep infinity \
      </dev/null >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do
      [ "$(readlink "/proc/$pid/ns/uts" 2>/dev/null)" != "$(readlink /proc/self/ns/uts)" ] \
        && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sleep ] && break
      sleep 0.1
    done
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sleep ] \
      || die "unshare did not create host B's namespaces"
    echo "$pid" >"$HB_HOLDER_PID"
  fi
  in_b "$pid" hostname "$HB_HOSTNAME"
  local bind target source
  for bind in "${HB_BINDS[@]}"; do
    target=${bind%%:*} source=${bind#*:}
    mkdir -p "$target"
    # a bind mount that is already there shows as its own mount point in B only
    in_b "$pid" mountpoint -q "$target" || in_b "$pid" mount --bind "$source" "$target" \
      || die "cannot bind $source on $target in host B"
  done
  echo "$pid"
}

make_network() {  # holder pid
  local pid=$1
  in_b "$pid" ip link set lo up
  if ! ip link show "$HA_VETH" >/dev/null 2>&1; then
    ip link add "$HA_VETH" type veth peer name "$HB_VETH" netns "$pid" \
      || die "cannot create veth pair $HA_VETH/$HB_VETH"
  fi
  ip -4 addr show dev "$HA_VETH" | grep -q "inet $HA_ADDR/" \
    || ip addr add "$HA_ADDR/24" dev "$HA_VETH"
  ip link set "$HA_VETH" up
  in_b "$pid" ip -4 addr show dev "$HB_VETH" | grep -q "inet $HB_ADDR/" \
    || in_b "$pid" ip addr add "$HB_ADDR/24" dev "$HB_VETH"
  in_b "$pid" ip link set "$HB_VETH" up
  # Guests keep their NIC on hcbr0 and ping 10.99.0.1 in their load loop: B's own bridge has
  # the same name and address (its own netns, so no clash with A's).
  in_b "$pid" ip link show "$LAB_BRIDGE" >/dev/null 2>&1 \
    || in_b "$pid" ip link add "$LAB_BRIDGE" type bridge stp_state 0 forward_delay 0
  in_b "$pid" ip -4 addr show dev "$LAB_BRIDGE" | grep -q "inet $LAB_BRIDGE_ADDR " \
    || in_b "$pid" ip addr add "$LAB_BRIDGE_ADDR" dev "$LAB_BRIDGE"
  in_b "$pid" ip link set "$LAB_BRIDGE" up
}

start_b_daemon() {  # holder pid, name, binary, args...
  local pid=$1 name=$2 bin=$3 log=$HB_DIR/log/$2.log
  shift 3
  [ -z "$(b_daemon_pid "$name")" ] || return 0
  rm -f "$HB_DIR/run/$name.pid"
  local py=/usr/bin/python3
  [ -x "$py" ] || py=$(command -v python3) || die "python3 not found (run $LAB_HERE/install.sh)"
  # under the lab's prompt child reaper, like host A's daemons (see reaper.py)
  in_b "$pid" setsid "$py" "$LAB_HERE/reaper.py" "$bin" -d --pid-file "/run/$name.pid" "$@" \
    </dev/null >>"$log" 2>&1 &
  for _ in $(seq 1 50); do
    [ -n "$(b_daemon_pid "$name")" ] && return 0
    sleep 0.1
  done
  tail -n 20 "$log" "$HB_DIR/log/$name.log" >&2 2>/dev/null || true
  die "$name exited right after start in host B (log: $log)"
}

cmd_up() {
  for b in libvirtd virtlogd virsh ip unshare nsenter mountpoint; do
    command -v "$b" >/dev/null 2>&1 || die "'$b' not found; run $LAB_HERE/install.sh first"
  done
  write_configs
  local pid
  pid=$(make_namespaces)
  make_network "$pid"
  start_b_daemon "$pid" virtlogd-b "$HB_VIRTLOGD"
  start_b_daemon "$pid" libvirtd-b "$HB_LIBVIRTD" --listen
  local deadline=$((SECONDS + 30))
  until b_answers && b_tcp_answers; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "--- last lines of $HB_DIR/log/libvirtd.log ---" >&2
      tail -n 25 "$HB_DIR/log/libvirtd.log" >&2 2>/dev/null || true
      timeout 10 virsh -c "$HB_URI_TCP" list 2>&1 | tail -n 3 >&2 || true
      die "host B's libvirtd does not answer on $HB_URI_LOCAL and $HB_URI_TCP after 30 s"
    fi
    [ -n "$(b_daemon_pid libvirtd-b)" ] || die "host B's libvirtd died during start-up" \
      "(log: $HB_DIR/log/libvirtd.log)"
    sleep 0.5
  done
}

stop_b_daemon() {  # name
  local pid
  pid=$(b_daemon_pid "$1")
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    [ -n "$(b_daemon_pid "$1")" ] || return 0
    sleep 0.1
  done
  warn "$1 (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_down() {
  if [ -n "$(b_daemon_pid libvirtd-b)" ] && b_answers; then
    local name
    for name in $(virsh_b list --name); do
      virsh_b destroy "$name" >/dev/null 2>&1 || warn "cannot destroy $name on host B"
    done
    for name in $(virsh_b list --all --name); do
      virsh_b undefine "$name" >/dev/null 2>&1 || warn "cannot undefine $name on host B"
    done
  fi
  stop_b_daemon libvirtd-b
  stop_b_daemon virtlogd-b
  local pid
  pid=$(holder_pid)
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
  fi
  rm -f "$HB_HOLDER_PID"
  # the veth pair goes with B's netns; delete A's end in case something else still holds it
  if ip link show "$HA_VETH" >/dev/null 2>&1; then
    ip link del "$HA_VETH" 2>/dev/null || true
  fi
  # B's /run is a plain directory once unmounted: stale sockets and pid files go with it
  rm -rf "${HB_DIR:?}/run"
}

cmd_status() {
  if [ -n "$(holder_pid)" ] && [ -n "$(b_daemon_pid libvirtd-b)" ] && b_answers; then
    echo "host-b: up, $HB_HOSTNAME, host_uuid $HB_HOST_UUID, $HB_URI_LOCAL, $HB_URI_TCP"
  else
    echo "host-b: down"
  fi
}

case $1 in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
