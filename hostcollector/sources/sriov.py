"""The SR-IOV source: VF counters and config from the PF's netlink link info.

A VF handed to a guest has no tap device, so libvirt knows nothing of its traffic; only the
physical function's driver does. Ethernet and IPoIB (InfiniBand) PFs alike: both are found by
their SR-IOV capability and report VFs through the same netlink attributes; IPoIB VFs add their
node and port GUIDs and keep no drop counters (absent, never 0). For each PF found in sysfs (sriov_sysfs.py) this asks the kernel
for RTM_GETLINK with RTEXT_FILTER_VF, one PF at a time (a VF dump holds the kernel's global RTNL
lock ~1-2 ms per VF), on the source's own interval.

The only module that imports `pyroute2`, lazily, to ask the kernel. Live data and recorded
fixtures take the same path: the RTM_NEWLINK message's bytes -> `rtnetlink.parse_link`
(struct-based: pyroute2's generic decoder cost ~0.3 ms per VF) -> `build_pf_sample`.

The kernel cuts the VF list when the nested attribute would pass 64 KiB (~220 VFs on common
drivers: netlink attribute lengths are 16 bits). Such a PF is reported truncated; its missing VFs
take their counters from the driver's sysfs stats where it keeps them, and are otherwise left out,
never shown as zeros.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
from collections.abc import Callable, Mapping
from typing import Any

from hostcollector.config import SriovConfig
from hostcollector.errors import SourceError
from hostcollector.model import PfStats, SriovSample, VfStats
from hostcollector.sources.rtnetlink import LinkInfo, VfInfo, parse_link
from hostcollector.sources.sriov_sysfs import (
    PhysicalFunction,
    discover_pfs,
    read_vf_sysfs_stats,
)
from hostcollector.sources.worker import BlockingLane

log = logging.getLogger(__name__)

RTEXT_FILTER_VF = 1


def build_pf_sample(
    pf: PhysicalFunction,
    link: LinkInfo,
    sysfs_stats: Callable[[str, int], dict[str, int] | None],
) -> tuple[PfStats, list[VfStats]]:
    """Join netlink's view of a PF with sysfs's; fill a truncated VF list from sysfs."""
    vfs: list[VfStats] = []
    seen: set[int] = set()
    for info in link.vfs:
        index = info.index
        if index is None or index in seen:
            continue
        seen.add(index)
        vfs.append(_netlink_vf(pf, link.link_type, index, info))
    expected = max(pf.numvfs, link.num_vf or 0)
    truncated = len(seen) < expected
    if truncated:
        # Only the VFs sysfs lists (virtfnN): IFLA_NUM_VF is a u32 from a message, and a loop up
        # to it could run for 4 billion lookups.
        for index in sorted(pf.vf_pci.keys() - seen):
            if index >= expected:
                continue
            counters = sysfs_stats(pf.name, index)
            if counters:  # otherwise left out: a missing VF is never shown as zeros
                vfs.append(_sysfs_vf(pf, link.link_type, index, counters))
    stats = link.link_stats
    pf_stats = PfStats(
        name=pf.name,
        pci_address=pf.pci_address,
        numvfs=pf.numvfs,
        vfs_reported=len(seen),
        truncated=truncated,
        receive_bytes=stats.get("rx_bytes"),
        receive_packets=stats.get("rx_packets"),
        transmit_bytes=stats.get("tx_bytes"),
        transmit_packets=stats.get("tx_packets"),
    )
    return pf_stats, sorted(vfs, key=lambda vf: vf.index)


def _netlink_vf(pf: PhysicalFunction, link_type: str, index: int, info: VfInfo) -> VfStats:
    has_counters = info.receive_packets is not None or info.receive_bytes is not None
    return VfStats(
        pf=pf.name,
        index=index,
        pci_address=pf.vf_pci.get(index),
        stats_source="netlink" if has_counters else "",
        link_type=link_type,
        mac=info.mac,
        node_guid=info.node_guid,
        port_guid=info.port_guid,
        vlan=info.vlan,
        qos=info.qos,
        spoof_check=info.spoof_check,
        trust=info.trust,
        link_state=info.link_state,
        min_tx_rate_mbps=info.min_tx_rate_mbps,
        max_tx_rate_mbps=info.max_tx_rate_mbps,
        receive_packets=info.receive_packets,
        transmit_packets=info.transmit_packets,
        receive_bytes=info.receive_bytes,
        transmit_bytes=info.transmit_bytes,
        receive_broadcast=info.receive_broadcast,
        receive_multicast=info.receive_multicast,
        receive_drop=info.receive_drop,
        transmit_drop=info.transmit_drop,
    )


def _sysfs_vf(
    pf: PhysicalFunction, link_type: str, index: int, counters: Mapping[str, int]
) -> VfStats:
    # The driver's counters by VfStats field name (sriov_sysfs._SYSFS_COUNTERS); no config.
    return VfStats(
        pf=pf.name,
        index=index,
        pci_address=pf.vf_pci.get(index),
        stats_source="sysfs",
        link_type=link_type,
        receive_packets=counters.get("receive_packets"),
        transmit_packets=counters.get("transmit_packets"),
        receive_bytes=counters.get("receive_bytes"),
        transmit_bytes=counters.get("transmit_bytes"),
        receive_broadcast=counters.get("receive_broadcast"),
        receive_multicast=counters.get("receive_multicast"),
        receive_drop=counters.get("receive_drop"),
        transmit_drop=counters.get("transmit_drop"),
    )


class NetlinkLinks:
    """One rtnetlink socket, reopened after an error; returns raw RTM_NEWLINK bytes."""

    def __init__(self) -> None:
        self._ipr: Any = None

    def fetch(self, ifindex: int) -> bytes | None:
        """The link's message with VF info, or None if the link is gone."""
        try:
            from pyroute2 import IPRoute
            from pyroute2.netlink.exceptions import NetlinkError
        except ImportError as exc:
            raise SourceError("no_library", f"pyroute2 is not installed: {exc}") from exc
        if self._ipr is None:
            self._ipr = IPRoute()
        try:
            (msg,) = self._ipr.link("get", index=ifindex, ext_mask=RTEXT_FILTER_VF)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None  # the PF vanished between sysfs and netlink: driver reload
            raise SourceError("netlink", f"RTM_GETLINK {ifindex}: {exc}") from exc
        except OSError as exc:
            self.close()
            raise SourceError("netlink", f"RTM_GETLINK {ifindex}: {exc}") from exc
        return bytes(msg.data[msg.offset : msg.offset + msg["header"]["length"]])

    def close(self) -> None:
        if self._ipr is not None:
            try:
                self._ipr.close()
            finally:
                self._ipr = None


class SriovSource:
    name = "sriov"

    def __init__(self, config: SriovConfig, *, record_raw: bool = False) -> None:
        self.config = config
        self._record_raw = record_raw
        self._lane = BlockingLane("sriov")
        self._links = NetlinkLinks()

    @property
    def interval_seconds(self) -> float:
        return self.config.interval_seconds

    async def poll(self) -> SriovSample:
        return await self._lane.call(self._collect, self.config.timeout_seconds)

    async def close(self) -> None:
        # pyroute2's socket belongs to the thread that opened it: close it there.
        with contextlib.suppress(SourceError):
            await self._lane.call(self._links.close, self.config.timeout_seconds)
        self._lane.shutdown()

    def _collect(self) -> SriovSample:
        root = self.config.sysfs_root
        pfs: list[PfStats] = []
        vfs: list[VfStats] = []
        raw: list[dict[str, object]] = []
        for pf in discover_pfs(root):  # one PF at a time: each dump holds the RTNL lock
            data = self._links.fetch(pf.ifindex)
            if data is None:
                continue
            pf_stats, pf_vfs = build_pf_sample(
                pf, parse_link(data), lambda name, vf: read_vf_sysfs_stats(root, name, vf)
            )
            if pf_stats.truncated:
                log.debug(
                    "%s: netlink listed %d of %d VFs", pf.name, pf_stats.vfs_reported, pf.numvfs
                )
            pfs.append(pf_stats)
            vfs.extend(pf_vfs)
            if self._record_raw:
                raw.append(
                    {
                        "pf": pf.name,
                        "ifindex": pf.ifindex,
                        "pci_address": pf.pci_address,
                        "numvfs": pf.numvfs,
                        "vf_pci": {str(k): v for k, v in pf.vf_pci.items()},
                        "rtm_newlink_base64": base64.b64encode(data).decode(),
                    }
                )
        return SriovSample(tuple(pfs), tuple(vfs), tuple(raw) if self._record_raw else None)
