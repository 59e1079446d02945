"""SR-IOV topology from sysfs: which netdevs are PFs, their VFs' PCI addresses, per-VF stats.

Everything is read below a configurable root ("/" on a host, a tree on disk in tests):

- a PF is a netdev whose `device/sriov_numvfs` is above 0 (`/sys/class/net/<pf>/device/...`),
  whatever its PCI class or link type: Ethernet (class 0x0200) and InfiniBand (0x0207, an IPoIB
  netdev) PFs alike, unlike exporters that hard-code the Ethernet class;
- except a netdev stacked on another one (`iflink` is not its own `ifindex`): an IPoIB P_Key
  child interface (ib0.8001) shares its parent's PCI device, so its `device/sriov_numvfs` and its
  netlink VF list are the parent's, and polling it would count every VF twice
  (drivers/infiniband/ulp/ipoib/ipoib_main.c, ipoib_get_iflink: a child's iflink is its
  parent's ifindex; Documentation/ABI/testing/sysfs-class-net: iflink);
- `device/virtfn<N>` links to VF N's PCI device; its name is the VF's PCI address;
- some drivers also keep per-VF counters in sysfs, used where netlink's VF list was truncated:
  `device/sriov/<N>/stats/<counter>` files (i40e/ice out-of-tree drivers), or one
  `device/sriov/<N>/stats` file of `name: value` lines (mlx5).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hostcollector.sources.sysfs import read_int, read_text

# sysfs counter names -> VfStats fields
_SYSFS_COUNTERS = {
    "rx_packets": "receive_packets",
    "tx_packets": "transmit_packets",
    "rx_bytes": "receive_bytes",
    "tx_bytes": "transmit_bytes",
    "rx_broadcast": "receive_broadcast",
    "rx_multicast": "receive_multicast",
    "rx_dropped": "receive_drop",
    "tx_dropped": "transmit_drop",
    # mlx5 spells some differently
    "rx_broadcast_packets": "receive_broadcast",
    "rx_multicast_packets": "receive_multicast",
    "rx_discards": "receive_drop",
    "tx_discards": "transmit_drop",
}
_VIRTFN = re.compile(r"^virtfn(\d+)$")


@dataclass(frozen=True, slots=True)
class PhysicalFunction:
    name: str
    ifindex: int
    pci_address: str
    numvfs: int  # sriov_numvfs: the VFs the kernel says exist
    vf_pci: dict[int, str]  # VF index -> PCI address


def _virtual(entry: Path) -> bool:
    """/sys/class/net/<name> links to /sys/devices/virtual/net/<name> for software devices:
    one readlink instead of failed reads of files they lack. Not a link (a tree on disk in
    tests, an old kernel): not known to be virtual."""
    try:
        return "/devices/virtual/" in os.readlink(entry)
    except OSError:
        return False


def discover_pfs(root: str | Path = "/") -> list[PhysicalFunction]:
    """Every netdev with VFs enabled. PFs and VFs may come and go (driver reloads, numvfs
    changes) between any two reads: whatever vanished midway is skipped, never an error."""
    net = Path(root, "sys/class/net")
    try:
        names = sorted(os.listdir(net))
    except OSError:
        return []
    pfs = []
    for name in names:
        if _virtual(net / name):
            continue  # a tap, bridge or bond: no PCI device, no VFs (most of a hypervisor's)
        device = net / name / "device"
        numvfs = read_int(device / "sriov_numvfs")
        ifindex = read_int(net / name / "ifindex")
        if not numvfs or ifindex is None:
            continue
        iflink = read_int(net / name / "iflink")
        if iflink is not None and iflink != ifindex:
            continue  # stacked on its parent, which is polled for these VFs
        try:
            pci_address = os.path.basename(os.readlink(device))
            entries = os.listdir(device)
        except OSError:
            continue
        vf_pci = {}
        for entry in entries:
            match = _VIRTFN.match(entry)
            if match is None:
                continue
            try:
                vf_pci[int(match.group(1))] = os.path.basename(os.readlink(device / entry))
            except OSError:
                continue
        pfs.append(
            PhysicalFunction(name, ifindex, pci_address, numvfs, dict(sorted(vf_pci.items())))
        )
    return pfs


def read_vf_sysfs_stats(root: str | Path, pf: str, vf: int) -> dict[str, int] | None:
    """The driver's own per-VF counters, or None where the driver keeps none."""
    base = Path(root, "sys/class/net", pf, "device/sriov", str(vf), "stats")
    counters: dict[str, int] = {}
    if base.is_dir():
        for name, counter in _SYSFS_COUNTERS.items():
            value = read_int(base / name)
            if value is not None:
                counters[counter] = value
    elif base.is_file():
        for line in (read_text(base) or "").splitlines():
            name, _, text = line.partition(":")
            known = _SYSFS_COUNTERS.get(name.strip())
            if known is not None and text.strip().isdigit():
                counters[known] = int(text.strip())
    return counters or None
