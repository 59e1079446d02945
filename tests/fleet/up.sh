#!/usr/bin/env bash
# up.sh [N]: boot hosts hc-fleet-1..N (default 3) in parallel, wait until each answers SSH as
# deploy and its systemd is running, write the Ansible inventory and print its path.
# Idempotent: hosts already up stay up; hosts numbered above N are stopped.
# FLEET_INVENTORY sets the inventory path, UP_TIMEOUT (default 60 s) bounds the wait.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
n=${1:-3}
# Addresses .11 up to .(10+N) on the /24.
if ! [[ "$n" =~ ^[1-9][0-9]{0,2}$ ]] || [ "$n" -gt 200 ]; then die "N must be 1..200, not '$n'"; fi

base=$("$FLEET_HERE/rootfs.sh")
[ -S /var/run/libvirt/libvirt-sock-ro ] ||
  warn "no /var/run/libvirt/libvirt-sock-ro: the hosts get no libvirt (run tests/lab/up.sh first)"
mkdir -p "$FLEET_DIR"

# The fleet's own bridge: hosts reach the machine and each other, nothing else. Per-interface
# forwarding off keeps their packets off other networks even where ip_forward is on.
if ! ip link show "$FLEET_BRIDGE" >/dev/null 2>&1; then
  ip link add "$FLEET_BRIDGE" type bridge
fi
ip addr replace "$FLEET_NET.1/24" dev "$FLEET_BRIDGE"
sysctl -qw "net.ipv4.conf.$FLEET_BRIDGE.forwarding=0"
ip link set "$FLEET_BRIDGE" up

# A host's identity in its overlay's upper layer; the base stays shared and untouched.
write_identity() {
  local i=$1 name=$2 upper=$3
  install -d "$upper/etc/ssh/sshd_config.d" "$upper/etc/systemd/network"
  echo "$name" >"$upper/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$name" >"$upper/etc/hosts"
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$upper/etc/machine-id"
  echo >>"$upper/etc/machine-id"
  ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$upper/etc/ssh/ssh_host_ed25519_key"
  echo 'HostKey /etc/ssh/ssh_host_ed25519_key' >"$upper/etc/ssh/sshd_config.d/fleet.conf"
  cat >"$upper/etc/systemd/network/10-host0.network" <<NET
[Match]
Name=host0

[Network]
Address=$(host_addr "$i")/24
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
}

start_host() {
  local i=$1 name dir
  name=$(host_name "$i") dir=$FLEET_DIR/$(host_name "$i")
  live_pid_in "$dir/nspawn.pid" systemd-nspawn >/dev/null && return 0
  stop_host "$name"   # leftovers of a host that died or of a partial up.sh
  mkdir -p "$dir/upper" "$dir/work" "$dir/merged"
  write_identity "$i" "$name" "$dir/upper"
  host_addr "$i" >"$dir/address"
  mount -t overlay overlay -o "lowerdir=$base,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged"
  setsid "$FLEET_HERE/launch.sh" "$name" "$dir/merged" </dev/null >"$dir/console.log" 2>&1 &
  echo $! >"$dir/nspawn.pid"
}

# Fails with the console log when the host dies or is not up in time.
wait_host() {
  local i=$1 name dir addr state deadline alive
  name=$(host_name "$i") dir=$FLEET_DIR/$(host_name "$i") addr=$(host_addr "$i")
  deadline=$((SECONDS + ${UP_TIMEOUT:-60}))
  while :; do
    state=$(fleet_ssh "$addr" systemctl is-system-running 2>/dev/null || true)
    alive=0
    live_pid_in "$dir/nspawn.pid" systemd-nspawn >/dev/null && alive=1
    # Only with its nspawn alive: a host whose nspawn died can still answer, orphaned.
    case "$alive$state" in 1running|1degraded) break ;; esac
    if [ "$alive" -eq 0 ] || [ "$SECONDS" -ge "$deadline" ]; then
      [ "$alive" -eq 0 ] && state="systemd-nspawn exited, ssh said '${state:-nothing}'"
      { echo "--- $name ($addr): state '${state:-no ssh}', console $dir/console.log:"
        tail -n 30 "$dir/console.log" 2>/dev/null; } >&2
      echo "$name: not up (state '${state:-no ssh}')" >&2
      return 1
    fi
    sleep 0.3
  done
  if [ "$state" = degraded ]; then
    warn "$name is degraded; failed units: $(fleet_ssh "$addr" systemctl --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')"
  fi
  find_leader "$name" >"$dir/leader.pid" || { echo "$name: no leader PID found" >&2; return 1; }
}

for d in "$FLEET_DIR/$FLEET_PREFIX"*; do
  [ -d "$d" ] || continue
  idx=${d##*"$FLEET_PREFIX"}
  if ! [[ "$idx" =~ ^[0-9]+$ ]] || [ "$idx" -gt "$n" ]; then stop_host "${d##*/}"; fi
done
for i in $(seq 1 "$n"); do start_host "$i"; done

# known_hosts holds the keys we generated, so even a strict check would pass.
for i in $(seq 1 "$n"); do
  printf '%s %s\n' "$(host_addr "$i")" "$(cut -d' ' -f1,2 "$FLEET_DIR/$(host_name "$i")/upper/etc/ssh/ssh_host_ed25519_key.pub")"
done >"$FLEET_DIR/known_hosts"

pids=()
for i in $(seq 1 "$n"); do wait_host "$i" & pids+=($!); done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
[ "$failed" -eq 0 ] || die "some hosts did not come up (tests/fleet/down.sh cleans up)"

mkdir -p "$(dirname "$FLEET_INVENTORY")"
{
  echo "# Written by tests/fleet/up.sh: the fleet's hosts (systemd-nspawn on $FLEET_BRIDGE)."
  echo "all:"
  echo "  children:"
  echo "    hypervisors:"
  echo "      hosts:"
  for i in $(seq 1 "$n"); do
    echo "        $(host_name "$i"):"
    echo "          ansible_host: $(host_addr "$i")"
  done
  echo "      vars:"
  echo "        ansible_user: deploy"
  echo "        ansible_ssh_private_key_file: $FLEET_KEY"
  echo "        ansible_ssh_common_args: >-"
  echo "          -o StrictHostKeyChecking=no -o UserKnownHostsFile=$FLEET_DIR/known_hosts -o IdentitiesOnly=yes"
  echo "        ansible_python_interpreter: /usr/bin/python3"
} >"$FLEET_INVENTORY.tmp"
mv "$FLEET_INVENTORY.tmp" "$FLEET_INVENTORY"
echo "$FLEET_INVENTORY"
