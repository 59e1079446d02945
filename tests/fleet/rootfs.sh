#!/usr/bin/env bash
# Build the fleet's Debian 12 base rootfs once (debootstrap --variant=minbase) and print its path.
# Cached as $FLEET_CACHE/base-<key>, where key hashes the package list, fleet-init and
# RECIPE_REVISION: a change to any of them builds a new base (the old one is removed).
# The build goes to a temp dir that is renamed when complete, so an interrupted build never
# leaves a base that looks done. FLEET_MIRROR overrides the mirror taken from apt's sources.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

# What the hosts need with no network to a mirror: systemd as PID 1, sshd + sudo + python3 for
# Ansible (python3-apt for its apt module), networkd for host0, and what the role's apt task asks
# for (python3-venv, python3-libvirt) plus virsh to look at the lab's libvirt.
PACKAGES=(
  systemd systemd-sysv dbus iproute2 procps
  openssh-server sudo ca-certificates curl
  python3 python3-apt python3-venv python3-libvirt libvirt-clients
)
RECIPE_REVISION=1   # bump when the image setup below changes

key=$( { printf '%s\n' "${PACKAGES[@]}" "$RECIPE_REVISION"; cat "$FLEET_HERE/fleet-init"; } |
  sha256sum | cut -c1-16)
base=$FLEET_CACHE/base-$key

# The machine's apt mirror for $FLEET_SUITE (deb822 .sources or one-line lists), not -security.
apt_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk -v s="$FLEET_SUITE" '
      /^[[:space:]]*$/ { if (u != "" && ok) { print u; exit } u = ""; ok = 0; next }
      $1 == "URIs:" { u = $2 }
      $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
      END { if (u != "" && ok) print u }' "$f" | grep -v security | head -n1 || true)
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v s="$FLEET_SUITE" '$1 == "deb" && $0 !~ /security/ {
      for (i = 3; i <= NF; i++) if ($i == s) { print $(i - 1); exit } }' || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

install_machine_tools() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
  command -v ssh >/dev/null || missing+=(openssh-client)
  command -v nsenter >/dev/null || missing+=(util-linux)
  [ ${#missing[@]} -eq 0 ] && return
  # systemd-container also upgrades systemd's libraries and adds libnss-mymachines to nsswitch.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

deploy_key() {
  [ -f "$FLEET_KEY" ] && [ -f "$FLEET_KEY.pub" ] && return
  rm -f "$FLEET_KEY" "$FLEET_KEY.pub"
  ssh-keygen -q -t ed25519 -N '' -C hostcollector-fleet-deploy -f "$FLEET_KEY.tmp"
  mv "$FLEET_KEY.tmp.pub" "$FLEET_KEY.pub"
  mv "$FLEET_KEY.tmp" "$FLEET_KEY"
}

# The hosts' common setup, in the chroot; per-host identity goes in each host's overlay.
customize() {
  local root=$1
  chroot "$root" useradd -m -s /bin/bash deploy
  install -d -m 700 -o 0 -g 0 "$root/home/deploy/.ssh"
  install -m 600 "$FLEET_KEY.pub" "$root/home/deploy/.ssh/authorized_keys"
  chroot "$root" chown -R deploy:deploy /home/deploy/.ssh
  echo 'deploy ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/deploy"
  chmod 440 "$root/etc/sudoers.d/deploy"
  chroot "$root" systemctl enable -q systemd-networkd.service ssh.service
  # Each host gets its own host keys and machine-id in its overlay (up.sh).
  rm -f "$root"/etc/ssh/ssh_host_*
  : >"$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"
  install -m 755 "$FLEET_HERE/fleet-init" "$root/usr/local/sbin/fleet-init"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
}

mkdir -p "$FLEET_CACHE"
exec 9>"$FLEET_CACHE/.lock"
flock 9   # one build at a time; a second caller waits and then finds the base done
if [ ! -d "$base" ]; then
  install_machine_tools
  deploy_key
  # Leftovers of an interrupted build (we hold the lock); debootstrap may have left /proc and
  # /sys mounted inside.
  awk -v d="$FLEET_CACHE/base-" 'index($2, d) == 1 && $2 ~ /[.]tmp\// {print $2}' /proc/self/mounts |
    sort -r | while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp"; done
  rm -rf --one-file-system "$FLEET_CACHE"/base-*.tmp
  tmp=$base.tmp
  mirror=${FLEET_MIRROR:-$(apt_mirror)}
  keyring=()
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] &&
    keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
  include=$(IFS=,; echo "${PACKAGES[*]}")
  if ! debootstrap --variant=minbase "${keyring[@]}" --include="$include" \
      "$FLEET_SUITE" "$tmp" "$mirror" >"$FLEET_CACHE/debootstrap.log" 2>&1; then
    tail -n 20 "$FLEET_CACHE/debootstrap.log" >&2
    die "debootstrap $FLEET_SUITE from $mirror failed (log: $FLEET_CACHE/debootstrap.log)"
  fi
  customize "$tmp"
  mv -T "$tmp" "$base"
  for old in "$FLEET_CACHE"/base-*; do
    [ "$old" = "$base" ] || rm -rf "$old"
  done
fi
deploy_key
echo "$base"
