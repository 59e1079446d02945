#!/usr/bin/env bash
# Bring the whole lab up: install.sh, start.sh, build-guest.sh, vms.sh up, then wait until
# every lab guest generates load (block wr.bytes > 0 and net tx.pkts > 0). Idempotent.
# UP_TIMEOUT (seconds, default 90) bounds the wait.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

"$LAB_HERE/install.sh"
"$LAB_HERE/start.sh"
"$LAB_HERE/build-guest.sh"
"$LAB_HERE/vms.sh" up

# stat VALUE of a domstats line key (0 when absent)
stat_of() { awk -F= -v k="$2" '$1 ~ "^ *"k"$" {print $2; f=1} END {if (!f) print 0}' <<<"$1"; }

timeout_s=${UP_TIMEOUT:-90}
deadline=$((SECONDS + timeout_s))
pending=$(python3_ "$LAB_HERE/domxml.py" --list)
while :; do
  still=""
  for name in $pending; do
    s=$(virsh -r -q -c "$LIBVIRT_URI" domstats --block --interface "$name" 2>/dev/null || true)
    wr=$(stat_of "$s" 'block\.0\.wr\.bytes')
    tx=$(stat_of "$s" 'net\.0\.tx\.pkts')
    if [ "${wr:-0}" -gt 0 ] && [ "${tx:-0}" -gt 0 ]; then continue; fi
    still="$still $name"
  done
  pending=$still
  [ -z "$pending" ] && break
  if [ "$SECONDS" -ge "$deadline" ]; then
    for name in $pending; do
      echo "--- $name: state '$(virsh -q -c "$LIBVIRT_URI" domstate "$name" 2>/dev/null | sed -n 1p)', console $LAB_DIR/console/$name.log:" >&2
      tail -n 15 "$LAB_DIR/console/$name.log" >&2 2>/dev/null || true
    done
    die "no guest load after ${timeout_s} s from:$pending (want block.0.wr.bytes > 0 and net.0.tx.pkts > 0 in virsh domstats)"
  fi
  sleep 2
done
