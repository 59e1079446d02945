#!/usr/bin/env bash
# Build the tiny lab guest: a Debian cloud kernel + a busybox initramfs whose /init
# loops over moderate disk, network and CPU load. Output: /var/lib/hostcollector-lab/guest/
# {vmlinuz,initrd.gz,KERNEL_VERSION}. Skipped when both files exist and are newer than
# this script (FORCE=1 rebuilds).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

OUT=$LAB_DIR/guest
CACHE=$LAB_DIR/cache
SELF="$LAB_HERE/$(basename "${BASH_SOURCE[0]}")"
# load order matters: virtio_ring before virtio, pci helpers, virtio_pci, then drivers
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
         virtio_blk failover net_failover virtio_net virtio_balloon)

if [ "${FORCE:-0}" != 1 ] && [ "$OUT/vmlinuz" -nt "$SELF" ] && [ "$OUT/initrd.gz" -nt "$SELF" ]; then
  exit 0
fi

for b in apt-get apt-cache dpkg-deb cpio gzip; do
  command -v "$b" >/dev/null 2>&1 || die "'$b' not found; run $LAB_HERE/install.sh first"
done
BUSYBOX=/bin/busybox
if [ ! -x "$BUSYBOX" ] || ! "$BUSYBOX" --list | grep -x insmod >/dev/null; then
  die "$BUSYBOX (busybox-static) not found; run $LAB_HERE/install.sh first"
fi
ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is dynamically linked; install busybox-static"

WORK=$(mktemp -d /tmp/hc-guest-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
LOG=$WORK/log

newest_kernel_pkg() {
  apt-cache pkgnames linux-image-6.1.0- 2>/dev/null \
    | grep -E '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' | sort -V | tail -n 1
}
pkg=$(newest_kernel_pkg)
if [ -z "$pkg" ]; then
  apt-get update >"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; die "apt-get update failed"; }
  pkg=$(newest_kernel_pkg)
fi
[ -n "$pkg" ] || die "no linux-image-6.1.0-*-cloud-amd64 package known to apt-cache (Debian 12 sources?)"

# Download (or reuse the cached .deb of the same package).
mkdir -p "$CACHE" "$OUT"
deb=$(find "$CACHE" -maxdepth 1 -name "${pkg}_*_amd64.deb" | sort -V | tail -n 1)
if [ -z "$deb" ]; then
  dl=$WORK/dl; mkdir -p "$dl"
  # let apt's sandbox user write there (avoids the "unsandboxed as root" warning)
  id _apt >/dev/null 2>&1 && chown _apt "$dl"
  (cd "$dl" && apt-get download "$pkg") >"$LOG" 2>&1 \
    || { tail -n 20 "$LOG" >&2; die "apt-get download $pkg failed"; }
  rm -f "$CACHE"/linux-image-*.deb
  mv "$dl"/*.deb "$CACHE/"
  deb=$(find "$CACHE" -maxdepth 1 -name "${pkg}_*_amd64.deb" | sort -V | tail -n 1)
fi
dpkg-deb -x "$deb" "$WORK/k" || die "dpkg-deb -x $deb failed"
kver=${pkg#linux-image-}
vmlinuz=$WORK/k/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || die "$deb has no boot/vmlinuz-$kver"
moddir=$WORK/k/lib/modules/$kver/kernel
[ -d "$moddir" ] || die "$deb has no lib/modules/$kver/kernel"

# The initramfs tree.
R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
mknod -m 600 "$R/dev/console" c 5 1
mknod -m 666 "$R/dev/null" c 1 3
for m in "${MODULES[@]}"; do
  src=$(find "$moddir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.gz" -o -name "$m.ko.zst" \) -print -quit)
  [ -n "$src" ] || die "module $m not found in $pkg"
  dst=$R/lib/modules/$m.ko
  case "$src" in   # busybox insmod loads plain .ko only: decompress here
    *.ko)     cp "$src" "$dst" ;;
    *.ko.xz)  "$BUSYBOX" unxz -c "$src" >"$dst" ;;
    *.ko.gz)  gzip -dc "$src" >"$dst" ;;
    *.ko.zst) command -v zstd >/dev/null || die "$src is zstd-compressed; apt-get install zstd"
              zstd -qdc "$src" >"$dst" ;;
  esac
done
printf '%s\n' "${MODULES[@]}" >"$R/etc/modules"

cat >"$R/init" <<'INIT'
#!/bin/sh
# hostcollector lab guest: no agent, just load. Console = ttyS0 (the domain's log file).
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
log() { read -r up _ </proc/uptime; echo "hc-guest[$up]: $*"; }
cs() { read -r t _ </proc/uptime; echo "${t%.*}${t#*.}"; }   # uptime in centiseconds

log "init started"
for m in $(cat /etc/modules); do
  insmod "/lib/modules/$m.ko" || log "insmod $m failed"
done

ip=
for a in $(cat /proc/cmdline); do
  case "$a" in hc.ip=*) ip=${a#hc.ip=} ;; esac
done
i=0
while { [ ! -e /sys/class/net/eth0 ] || [ ! -b /dev/vda ]; } && [ $i -lt 100 ]; do
  i=$((i + 1)); sleep 0.1
done
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  [ -n "$ip" ] && ip addr add "$ip" dev eth0
else
  log "no eth0"
fi
[ -b /dev/vda ] || log "no /dev/vda"
log "ready ip=$ip"

# Moderate load: 1 MiB written + 1 MiB read (O_DIRECT, so the device sees it), two pings
# to the host bridge, ~0.3 s of busy CPU, then ~2 s of sleep. Heartbeat every 20 loops.
n=0
while :; do
  n=$((n + 1))
  dd if=/dev/zero of=/dev/vda bs=64k count=16 seek=$(( (n % 32) * 16 )) oflag=direct conv=fsync status=none
  dd if=/dev/vda of=/dev/null bs=64k count=16 skip=$(( ((n + 16) % 32) * 16 )) iflag=direct status=none
  ping -c 2 -W 1 -q 10.99.0.1 >/dev/null
  t0=$(cs)
  while [ $(( $(cs) - t0 )) -lt 30 ]; do :; done
  [ $((n % 20)) -eq 1 ] && log "alive loop=$n"
  sleep 2
done
INIT
chmod 755 "$R/init"

(cd "$R" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -9 >"$WORK/initrd.gz" \
  || die "packing the initramfs failed"
cp "$vmlinuz" "$OUT/vmlinuz.new"
mv "$WORK/initrd.gz" "$OUT/initrd.gz.new"
echo "$kver" >"$OUT/KERNEL_VERSION"
mv -f "$OUT/vmlinuz.new" "$OUT/vmlinuz"
mv -f "$OUT/initrd.gz.new" "$OUT/initrd.gz"
