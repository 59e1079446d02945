#!/usr/bin/env bash
# vms.sh up|down|status — the four fixed lab VMs (see domxml.py LAB_VMS).
#   up:     64 MiB qcow2 disks under /var/lib/hostcollector-lab/disks, virsh define, start
#           the ones not running, resume paused ones (idempotent).
#   down:   destroy + undefine every domain named hc-lab-* or hc-scratch-* and remove
#           their disks.
#   status: list those domains with their state.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

DOMXML=$LAB_HERE/domxml.py
DISK_DIR=$LAB_DIR/disks

usage() { echo "usage: $(basename "$0") up|down|status" >&2; exit 2; }
[ $# -eq 1 ] || usage

require_libvirt() {
  command -v virsh >/dev/null 2>&1 || die "virsh not found; run $LAB_HERE/install.sh first"
  libvirt_answers || die "libvirtd does not answer on $LIBVIRT_URI; run $LAB_HERE/start.sh first"
}

# Names of all (active and inactive) lab/scratch domains.
lab_domains() {
  virsh_ list --all --name | awk -v a="$LAB_PREFIX" -v b="$SCRATCH_PREFIX" 'index($0, a) == 1 || index($0, b) == 1'
}

dom_state() { virsh_ domstate "$1" 2>/dev/null | sed -n 1p; }

cmd_up() {
  require_libvirt
  for f in vmlinuz initrd.gz; do
    [ -f "$LAB_DIR/guest/$f" ] || die "$LAB_DIR/guest/$f missing; run $LAB_HERE/build-guest.sh first"
  done
  ip link show "$LAB_BRIDGE" >/dev/null 2>&1 || die "bridge $LAB_BRIDGE missing; run $LAB_HERE/start.sh first"
  command -v qemu-img >/dev/null 2>&1 || die "qemu-img not found; run $LAB_HERE/install.sh first"
  mkdir -p "$DISK_DIR" "$LAB_DIR/console"
  local names name disk xml out
  names=$(python3_ "$DOMXML" --list) || die "domxml.py --list failed"
  for name in $names; do
    disk=$(python3_ "$DOMXML" --field "$name" disk_path) || die "domxml.py --field $name failed"
    if [ ! -f "$disk" ]; then
      out=$(qemu-img create -q -f qcow2 "$disk" 64M 2>&1) || die "qemu-img create $disk: $out"
    fi
    xml=$(mktemp /tmp/hc-lab-dom.XXXXXX)
    python3_ "$DOMXML" "$name" >"$xml" || { rm -f "$xml"; die "domxml.py $name failed"; }
    out=$(virsh_ define "$xml" 2>&1) || { rm -f "$xml"; die "virsh define $name: $out"; }
    rm -f "$xml"
    case "$(dom_state "$name")" in
      running|"in shutdown") ;;
      paused) out=$(virsh_ resume "$name" 2>&1) || die "virsh resume $name: $out" ;;
      *) out=$(virsh_ start "$name" 2>&1) || die "virsh start $name: $out" ;;
    esac
  done
}

cmd_down() {
  require_libvirt
  local names name d out disks="" active="" errs
  names=$(lab_domains)
  [ -n "$names" ] || { rm -f "$DISK_DIR"/hc-lab-*.qcow2 "$DISK_DIR"/hc-scratch-*.qcow2; return 0; }
  for name in $names; do
    disks="$disks $(virsh_ domblklist "$name" --details 2>/dev/null | awk '$2=="disk"{print $4}')"
    [ "$(dom_state "$name")" = "shut off" ] || active="$active $name"
  done
  if [ -n "$active" ]; then
    # a TCG guest takes ~2 s to destroy: do them in parallel
    # shellcheck disable=SC2086 # word splitting wanted
    errs=$(printf '%s\n' $active | xargs -r -P 16 -I{} \
             virsh -q -c "$LIBVIRT_URI" destroy {} 2>&1 >/dev/null || true)
    for name in $active; do
      case "$(dom_state "$name")" in
        ""|"shut off") ;;
        *) die "virsh destroy $name failed: $errs" ;;
      esac
    done
  fi
  for name in $names; do
    # transient domains (virsh create) are gone after destroy
    if virsh_ dominfo "$name" >/dev/null 2>&1; then
      out=$(virsh_ undefine "$name" 2>&1) || die "virsh undefine $name: $out"
    fi
  done
  for d in $disks; do
    case "$d" in "$LAB_DIR"/*) rm -f "$d" ;; esac
  done
  rm -f "$DISK_DIR"/hc-lab-*.qcow2 "$DISK_DIR"/hc-scratch-*.qcow2
}

cmd_status() {
  require_libvirt
  local name addr n=0
  printf '%-24s %-12s %s\n' NAME STATE ADDRESS
  for name in $(lab_domains); do
    n=$((n + 1))
    addr=-
    case "$name" in "$LAB_PREFIX"*) addr=$(python3_ "$DOMXML" --field "$name" ip 2>/dev/null || echo -) ;; esac
    printf '%-24s %-12s %s\n' "$name" "$(dom_state "$name")" "${addr:--}"
  done
  [ "$n" -gt 0 ] || echo "(no hc-lab-* or hc-scratch-* domains)"
}

case "$1" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
