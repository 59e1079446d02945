"""SR-IOV fixtures in the kernel's own formats: RTM_NEWLINK messages built with pyroute2's
message classes, and a sysfs tree on disk.

The scenario (`SCENARIO`): two dual-port-style PFs with VFs, one VF given to a VM of each of two
tenants (see `HOSTDEV_VMS`), unassigned VFs, a PF whose kernel has no VF drop counters, and a
PF with 256 VFs whose netlink VF list was cut at 220, with per-VF sysfs stats (i40e layout) for
VFs 220-239 and none for 240-255.

`IPOIB_PF` is a ConnectX IPoIB PF (mlx5_ib + ipoib) with 3 VFs, as the kernel reports it
(`ipoib_message`): ARPHRD_INFINIBAND, a 20-byte link-layer address, every VF's `mac` the PF's
own address (ipoib_get_vf_config copies dev_addr), VF stats with the zeros mlx5_ib never fills
(broadcast, drops), and the GUIDs of ndo_get_vf_guid (kernels >= 5.4): VFs 0 and 1 set, VF 2
never set (0). In sysfs it has a P_Key child interface (ibp175s0.8001) on the same PCI device.

    python -m tests.sriov_fixtures     # rewrites tests/fixtures/sriov-synthetic.json
"""

from __future__ import annotations

import base64
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

FIXTURE = Path(__file__).parent / "fixtures" / "sriov-synthetic.json"
RTM_NEWLINK = 16
KERNEL_VF_LIST_LIMIT = 220
ARPHRD = {"ether": 1, "infiniband": 32}  # include/uapi/linux/if_arp.h


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
    link_type: str = "ether"  # or "infiniband": an IPoIB PF (ipoib_message)

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
IPOIB_PF = PfSpec("ibp175s0", 7, "0000:af:00.0", "0000:b0", 3, link_type="infiniband")
IPOIB_CHILD = ("ibp175s0.8001", 8)  # a P_Key child interface: same PCI device, iflink 7
# The PF's IPoIB address: flags + QPN (00:00:10:49), then the port GID (subnet prefix fe80::,
# port GUID 0c:42:a1:03:00:5e:2b:10); the broadcast address of the default P_Key 0xffff.
IPOIB_ADDRESS = bytes.fromhex("00001049fe800000000000000c42a103005e2b10")
IPOIB_BROADCAST = bytes.fromhex("00ffffffff12401bffff000000000000ffffffff")
# The IPoIB VF held by a VM (acme), as the attribution tests use it
IPOIB_VM = ("hc-scratch-ib-acme", "e0e0e0e0-0000-4000-8000-0000000f0003", 1)
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


def ib_guids(index: int) -> tuple[int, int]:
    """VF `index`'s (node GUID, port GUID) as `ip link set ... vf N node_guid/port_guid` set
    them; (0, 0) for VF 2, whose GUIDs were never set (mlx5_ib reports 0)."""
    if index == 2:
        return 0, 0
    return 0x0C42A1FFFE5E2C00 + index, 0x0C42A1FFFE5E2D00 + index


def link_message(pf: PfSpec) -> bytes:
    if pf.link_type == "infiniband":
        return ipoib_message(pf)
    return _pyroute2_message(pf)


def _pyroute2_message(pf: PfSpec) -> bytes:
    infiniband = pf.link_type == "infiniband"
    vfs = []
    for index in range(pf.numvfs if pf.listed is None else pf.listed):
        c = vf_counters(pf, index)
        if infiniband:  # what mlx5_ib_get_vf_stats leaves at rtnl_fill_vfinfo's zeros
            c |= {"broadcast": 0, "rx_dropped": 0, "tx_dropped": 0}
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
                                # IPoIB: a placeholder, its 20 bytes written by ipoib_message
                                "mac": "00:00:00:00:00:00"
                                if infiniband
                                else f"52:54:00:{pf.ifindex:02x}:{index >> 8:02x}:{index & 255:02x}",
                            },
                        ),
                        (
                            "IFLA_VF_VLAN",
                            {
                                "vf": index,
                                "vlan": 100 + index if index % 2 and not infiniband else 0,
                                "qos": 0,
                            },
                        ),
                        (
                            "IFLA_VF_RATE",
                            {
                                "vf": index,
                                "min_tx_rate": 0,
                                "max_tx_rate": 1000 if index == 0 and not infiniband else 0,
                            },
                        ),
                        # mlx5_ib_get_vf_config zeroes ifla_vf_info: spoof check, trust off
                        ("IFLA_VF_SPOOFCHK", {"vf": index, "spoofchk": 0 if infiniband else 1}),
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
    msg["ifi_type"] = ARPHRD[pf.link_type]
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


IFLA_ADDRESS, IFLA_BROADCAST, IFLA_IFNAME, IFLA_VFINFO_LIST = 1, 2, 3, 22
IFLA_VF_MAC, IFLA_VF_TRUST, IFLA_VF_IB_NODE_GUID, IFLA_VF_IB_PORT_GUID = 1, 9, 10, 11


def _nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute as nla_put writes it: u16 length, u16 type, payload, 4-aligned."""
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _nlas(data: bytes) -> list[tuple[int, bytes]]:
    """(type with its flags, payload) of each attribute in data."""
    out, offset = [], 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        out.append((kind, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    return out


def ifla_vf_guid(vf: int, guid: int) -> bytes:
    """struct ifla_vf_guid {__u32 vf; __u64 guid;} as x86-64 lays it out: 16 bytes, the
    naturally aligned u64 at offset 8 after 4 bytes of padding."""
    return struct.pack("=I4xQ", vf, guid)


def ipoib_message(pf: PfSpec) -> bytes:
    """An IPoIB PF's RTM_NEWLINK as the kernel sends it. pyroute2 0.9.7 builds all of it but
    what it cannot encode in the kernel's layout, written here with struct: 20-byte addresses
    (its IFLA_ADDRESS/IFLA_BROADCAST are 6-byte l2addr, its vf_mac encoder 6 bytes + 26 of
    padding) and the GUIDs (its vf_ib_node_guid/vf_ib_port_guid copy vf_mac's {u32; u8[32]},
    36 bytes, where the kernel sends struct ifla_vf_guid's 16). rtnl_fill_vfinfo puts the GUIDs
    right after IFLA_VF_TRUST, before IFLA_VF_VLAN_LIST and IFLA_VF_STATS."""
    data = _pyroute2_message(pf)
    header, attrs = bytearray(data[:32]), []
    for kind, payload in _nlas(data[32:]):
        if kind & 0x3FFF == IFLA_VFINFO_LIST:
            payload = b"".join(_nla(k, _ipoib_vf(p)) for k, p in _nlas(payload))
        attrs.append(_nla(kind, payload))
        if kind == IFLA_IFNAME:
            attrs += [_nla(IFLA_ADDRESS, IPOIB_ADDRESS), _nla(IFLA_BROADCAST, IPOIB_BROADCAST)]
    body = b"".join(attrs)
    struct.pack_into("=I", header, 0, 32 + len(body))
    return bytes(header) + body


def _ipoib_vf(payload: bytes) -> bytes:
    attrs = []
    index = struct.unpack_from("=I", payload, 4)[0]  # IFLA_VF_MAC comes first: its u32 vf
    node, port = ib_guids(index)
    for kind, data in _nlas(payload):
        if kind == IFLA_VF_MAC:  # struct ifla_vf_mac {__u32 vf; __u8 mac[32];}
            data = data[:4] + IPOIB_ADDRESS.ljust(32, b"\0")
        attrs.append(_nla(kind, data))
        if kind == IFLA_VF_TRUST:
            attrs.append(_nla(IFLA_VF_IB_NODE_GUID, ifla_vf_guid(index, node)))
            attrs.append(_nla(IFLA_VF_IB_PORT_GUID, ifla_vf_guid(index, port)))
    return b"".join(attrs)


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
        if pf.link_type == "infiniband":
            (netdev / "iflink").write_text(f"{pf.ifindex}\n")
            (pf_dir / "class").write_text("0x020700\n")  # InfiniBand controller
            child_name, child_index = IPOIB_CHILD
            child = net / child_name
            child.mkdir()
            (child / "ifindex").write_text(f"{child_index}\n")
            (child / "iflink").write_text(f"{pf.ifindex}\n")
            os.symlink(os.path.relpath(pf_dir, child), child / "device")
        else:
            (pf_dir / "class").write_text("0x020000\n")  # Ethernet controller
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


def recording(pfs: list[PfSpec] = SCENARIO) -> list[dict[str, Any]]:
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
        for pf in pfs
    ]


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps({"sriov": recording()}, indent=1) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
