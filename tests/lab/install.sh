#!/usr/bin/env bash
# Install what the hostcollector lab hypervisor needs (Debian 12, run as root).
# Idempotent: apt is skipped when every package is already installed.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

PACKAGES=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  qemu-system-x86 qemu-utils busybox-static cpio gzip
  iproute2 procps python3 passwd
)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  [ "${status:0:2}" = "ii" ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  if ! apt-get update >"$log" 2>&1; then
    tail -n 20 "$log" >&2; die "apt-get update failed"
  fi
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    tail -n 30 "$log" >&2; die "apt-get install failed for: ${missing[*]}"
  fi
fi

# libvirtd refuses to initialise the QEMU driver without these
# ("Failed to parse user 'libvirt-qemu'").
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -G kvm \
  -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

# Guests run as root (no libvirt-daemon-system here, so qemu.conf may not exist at all).
conf=/etc/libvirt/qemu.conf
mkdir -p /etc/libvirt
touch "$conf"
before=$(md5sum <"$conf")
for key in user group; do
  want="$key = \"root\""
  if grep -qE "^[[:space:]]*${key}[[:space:]]*=" "$conf"; then
    # rewrite every active assignment of the key (commented examples are left alone)
    sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*|$want|" "$conf"
  else
    printf '%s\n' "$want" >>"$conf"
  fi
done
changed=0
[ "$(md5sum <"$conf")" = "$before" ] || changed=1

if [ "$changed" -eq 1 ] && [ -n "$(live_pids libvirtd)" ]; then
  warn "$conf changed while libvirtd runs; restart libvirtd to apply"
fi

mkdir -p "$LAB_DIR"/{guest,disks,console}
