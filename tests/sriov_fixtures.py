"""SR-IOV fixtures in the kernel's own formats: RTM_NEWLINK messages built with pyroute2's
message classes, and a sysfs tree on disk.

The scenario (`SCENARIO`): two dual-port-style PFs with VFs, one VF given to a VM of each of two
tenants (see `HOSTDEV_VMS`), unassigned VFs, a PF whose kernel has no VF drop counters, and a
PF with 256 VFs whose netlink VF list was cut at 220, with per-VF sysfs stats (i40e layout) for
VFs 220-239 and none for 240-255.

    python -m tests.sriov_fixtures     # rewrites tests/fixtures/sriov-synthetic.json
"""

from __future__ import annotations

import base64
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

FIXTURE = Path(__file__).parent / "fixtures" / "sriov-synthetic.json"
RTM_NEWLINK = 16
KERNEL_VF_LIST_LIMIT = 220


@dataclass
class PfSpec:
    name: str
    ifindex: int
    pci: str  # PF PCI address
    vf_bus: str  # VFs are at <vf_bus>:<slot>.<fn>
    numvfs: int
    drops: bool = True  # kernel >= 4.20 reports VF drop counters
    listed: int | None = None  # VFs netlink lists (fewer than numvfs: truncated)
    sysfs_stats: range = field(default_factory=lambda: range(0))  # VFs with driver sysfs stats

    def vf_pci(self, index: int) -> str:
        slot, fn = divmod(index, 8)
        return f"{self.vf_bus}:{2 + slot:02x}.{fn}"


SCENARIO = [
    PfSpec("enp59s0f0", 4, "0000:3b:00.0", "0000:3b", 4),
    PfSpec("enp59s0f1", 5, "0000:3b:00.1", "0000:3c", 2, drops=False),
    PfSpec(
        "enp94s0f0",
        6,
        "0000:5e:00.0",
        "0000:5f",
        256,
        listed=KERNEL_VF_LIST_LIMIT,
        sysfs_stats=range(220, 240),
    ),
]
# VMs holding VFs, for the attribution tests: name, uuid, tenant (nova 1.1 project), VF, how
HOSTDEV_VMS = [
    (
        "hc-scratch-vf-acme",
        "e0e0e0e0-0000-4000-8000-0000000f0001",
        "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c",
        ("enp59s0f0", 1),
        "interface",
    ),
    (
        "hc-scratch-vf-globex",
        "e0e0e0e0-0000-4000-8000-0000000f0002",
        "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1",
        ("enp59s0f1", 0),
        "hostdev",
    ),
]


def vf_counters(pf: PfSpec, index: int) -> dict[str, int]:
    base = (pf.ifindex * 1000 + index) * 10
    return {
        "rx_packets": base + 1,
        "tx_packets": base + 2,
        "rx_bytes": (base + 1) * 1500,
        "tx_bytes": (base + 2) * 900,
        "broadcast": index,
        "multicast": index * 2,
        "rx_dropped": index * 3,
        "tx_dropped": index * 4,
    }


def link_message(pf: PfSpec) -> bytes:
    vfs = []
    for index in range(pf.numvfs if pf.listed is None else pf.listed):
        c = vf_counters(pf, index)
        stats = [
            ("IFLA_VF_STATS_RX_PACKETS", c["rx_packets"]),
            ("IFLA_VF_STATS_TX_PACKETS", c["tx_packets"]),
            ("IFLA_VF_STATS_RX_BYTES", c["rx_bytes"]),
            ("IFLA_VF_STATS_TX_BYTES", c["tx_bytes"]),
            ("IFLA_VF_STATS_BROADCAST", c["broadcast"]),
            ("IFLA_VF_STATS_MULTICAST", c["multicast"]),
        ]
        if pf.drops:
            stats += [
                ("IFLA_VF_STATS_RX_DROPPED", c["rx_dropped"]),
                ("IFLA_VF_STATS_TX_DROPPED", c["tx_dropped"]),
            ]
        vfs.append(
            (
                "IFLA_VF_INFO",
                {
                    "attrs": [
                        (
                            "IFLA_VF_MAC",
                            {
                                "vf": index,
                                "mac": f"52:54:00:{pf.ifindex:02x}:{index >> 8:02x}:{index & 255:02x}",
                            },
                        ),
                        (
                            "IFLA_VF_VLAN",
                            {"vf": index, "vlan": 100 + index if index % 2 else 0, "qos": 0},
                        ),
                        (
                            "IFLA_VF_RATE",
                            {
                                "vf": index,
                                "min_tx_rate": 0,
                                "max_tx_rate": 1000 if index == 0 else 0,
                            },
                        ),
                        ("IFLA_VF_SPOOFCHK", {"vf": index, "spoofchk": 1}),
                        ("IFLA_VF_LINK_STATE", {"vf": index, "link_state": 0}),
                        ("IFLA_VF_TRUST", {"vf": index, "trust": 0}),
                        ("IFLA_VF_STATS", {"attrs": stats}),
                    ]
                },
            )
        )
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["family"] = 0
    msg["index"] = pf.ifindex
    msg["flags"] = 0x1043  # UP, BROADCAST, RUNNING, MULTICAST
    msg["change"] = 0
    msg["attrs"] = [
        ("IFLA_IFNAME", pf.name),
        (
            "IFLA_STATS64",
            {
                "rx_packets": 1000 * pf.ifindex,
                "tx_packets": 900 * pf.ifindex,
                "rx_bytes": 1_500_000 * pf.ifindex,
                "tx_bytes": 900_000 * pf.ifindex,
            },
        ),
        ("IFLA_NUM_VF", pf.numvfs),
        ("IFLA_VFINFO_LIST", {"attrs": vfs}),
    ]
    msg.encode()
    length: int = msg["header"]["length"]
    return bytes(msg.data[:length])


def make_sysfs(root: Path, pfs: list[PfSpec] = SCENARIO) -> Path:
    """The sysfs layout of the scenario under `root`: class/net links into devices/."""
    net = root / "sys/class/net"
    net.mkdir(parents=True, exist_ok=True)
    devices = root / "sys/devices/pci0000:00"
    devices.mkdir(parents=True, exist_ok=True)
    for pf in pfs:
        pf_dir = devices / pf.pci
        pf_dir.mkdir(exist_ok=True)
        (pf_dir / "sriov_numvfs").write_text(f"{pf.numvfs}\n")
        (pf_dir / "sriov_totalvfs").write_text(f"{max(pf.numvfs, 64)}\n")
        netdev = net / pf.name
        netdev.mkdir(exist_ok=True)
        (netdev / "ifindex").write_text(f"{pf.ifindex}\n")
        os.symlink(os.path.relpath(pf_dir, netdev), netdev / "device")
        for index in range(pf.numvfs):
            vf_dir = devices / pf.vf_pci(index)
            vf_dir.mkdir(exist_ok=True)
            os.symlink(f"../{pf.vf_pci(index)}", pf_dir / f"virtfn{index}")
            os.symlink(f"../{pf.pci}", vf_dir / "physfn")
        for index in pf.sysfs_stats:
            stats = pf_dir / "sriov" / str(index) / "stats"
            stats.mkdir(parents=True)
            c = vf_counters(pf, index)
            for name in (
                "rx_packets",
                "tx_packets",
                "rx_bytes",
                "tx_bytes",
                "rx_dropped",
                "tx_dropped",
            ):
                (stats / name).write_text(f"{c[name]}\n")
    # a plain NIC without SR-IOV, and a PF with VFs disabled: neither is a PF to poll
    (net / "eno1").mkdir(exist_ok=True)
    (net / "eno1" / "ifindex").write_text("2\n")
    return root


def recording() -> list[dict[str, Any]]:
    """The scenario as `hostcollector dump --raw` writes the sriov source."""
    return [
        {
            "pf": pf.name,
            "ifindex": pf.ifindex,
            "pci_address": pf.pci,
            "numvfs": pf.numvfs,
            "vf_pci": {str(i): pf.vf_pci(i) for i in range(pf.numvfs)},
            "rtm_newlink_base64": base64.b64encode(link_message(pf)).decode(),
        }
        for pf in SCENARIO
    ]


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps({"sriov": recording()}, indent=1) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
