#!/usr/bin/env bash
# Start virtlogd + libvirtd without systemd (unless systemd already runs libvirtd),
# wait for qemu:///system to answer, and create the lab bridge hcbr0 (10.99.0.1/24).
# Idempotent; also recovers from a kill -9'ed libvirtd (stale pid file / zombie).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

for b in libvirtd virtlogd virsh ip; do
  command -v "$b" >/dev/null 2>&1 || die "'$b' not found; run $LAB_HERE/install.sh first"
done
mkdir -p /var/log/libvirt /var/run/libvirt "$LAB_RUN"

start_daemon() {  # name logfile [ARG...]
  local name=$1 log=$2 pidfile=/run/$1.pid
  shift 2
  # stale pid file from a killed daemon: remove it so the new one starts clean
  rm -f "$pidfile"
  # Under a prompt child reaper (reaper.py): PID 1 here reaps late, and a destroyed QEMU that
  # lingers as a zombie holds its domain's lock in libvirtd for ~1.8 s.
  local py=/usr/bin/python3
  [ -x "$py" ] || py=$(command -v python3) || die "python3 not found (run $LAB_HERE/install.sh)"
  LIBVIRT_LOG_OUTPUTS="3:file:$log" setsid "$py" "$LAB_HERE/reaper.py" "$name" -d "$@" \
    </dev/null >>"$log" 2>&1 &
  local pid=""
  for _ in $(seq 1 50); do
    pids=$(live_pids "$name")  # not "| head": a SIGPIPE fails the pipeline under pipefail
    pid=${pids%%$'\n'*}
    [ -n "$pid" ] && break
    sleep 0.1
  done
  if [ -z "$pid" ]; then
    tail -n 20 "$log" >&2
    die "$name exited right after start (log: $log)"
  fi
  echo "$pid" >"$LAB_RUN/started-$name"
}

if systemd_is_pid1 && systemctl is-active --quiet libvirtd 2>/dev/null; then
  :  # a system-managed libvirtd: leave it alone
else
  [ -n "$(live_pids virtlogd)" ] || start_daemon virtlogd "$VIRTLOGD_LOG"
  if [ -z "$(live_pids libvirtd)" ]; then
    # a killed libvirtd leaves its socket behind; the new one re-creates it
    # libvirtd.conf: the read-only socket without polkit (no system bus here), as the role's
    # README tells a hypervisor without polkit to do; the daemon's service user and the fleet
    # hosts (tests/fleet/) connect to it as non-root.
    start_daemon libvirtd "$LIBVIRTD_LOG" -f "$LAB_HERE/libvirtd.conf"
  fi
fi

deadline=$((SECONDS + 30))
until libvirt_answers; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "--- last lines of $LIBVIRTD_LOG ---" >&2
    tail -n 25 "$LIBVIRTD_LOG" >&2 2>/dev/null || true
    echo "--- virsh says ---" >&2
    timeout 10 virsh -c "$LIBVIRT_URI" list 2>&1 | tail -n 5 >&2 || true
    die "libvirtd does not answer on $LIBVIRT_URI after 30 s"
  fi
  [ -n "$(live_pids libvirtd)" ] || systemd_is_pid1 || {
    echo "--- last lines of $LIBVIRTD_LOG ---" >&2
    tail -n 25 "$LIBVIRTD_LOG" >&2 2>/dev/null || true
    die "libvirtd is not running (it died during start-up)"
  }
  sleep 0.5
done

# The lab bridge.
if ip link show "$LAB_BRIDGE" >/dev/null 2>&1; then
  ip -d link show "$LAB_BRIDGE" | grep -w bridge >/dev/null \
    || die "link $LAB_BRIDGE exists but is not a bridge"
else
  ip link add "$LAB_BRIDGE" type bridge stp_state 0 forward_delay 0
fi
ip -4 addr show dev "$LAB_BRIDGE" | grep "inet $LAB_BRIDGE_ADDR " >/dev/null \
  || ip addr add "$LAB_BRIDGE_ADDR" dev "$LAB_BRIDGE"
ip link set "$LAB_BRIDGE" up
