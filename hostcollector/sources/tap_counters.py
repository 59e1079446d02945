"""A domain's tap NIC counters from one RTM_GETLINK dump of all links, as `virsh domifstat`.

libvirt reads a tap's counters from /proc/net/dev (virNetDevTapInterfaceStats,
src/util/virnetdevtap.c) and, for a tap, SWAPS receive and transmit: what the host's tap
transmits the guest receives. Types that share the host's view (`<interface type='direct'>`,
macvtap: virDomainNetTypeSharesHostView) are not swapped; the caller says which (`swapped`).
/proc/net/dev's columns are rtnl_link_stats64's counters (dev_seq_printf_stats,
net/core/net-procfs.c): bytes, packets, errs = rx_errors / tx_errors, and drop = rx_dropped +
rx_missed_errors on receive, tx_dropped on transmit. Netlink's IFLA_STATS64 carries the same
struct, so one dump gives every tap's values without reading /proc/net/dev's text per domain.

The dump is a plain AF_NETLINK socket: pyroute2's dump decodes every attribute of every link
with its generic message classes (~170 us per link measured on the lab, 13 links 2.2 ms), where
the few attributes needed here are decoded by rtnetlink.link_counters with struct.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from hostcollector.model import InterfaceStats
from hostcollector.sources.rtnetlink import LinkInfo, link_counters, link_name

# include/uapi/linux/netlink.h, rtnetlink.h, if_link.h
NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_GETLINK = 18
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFLA_EXT_MASK = 29
_RECEIVE_BUFFER = 1 << 16


@dataclass(frozen=True, slots=True)
class Tap:
    """One NIC of a domain as its XML names it: <interface><target dev='vnet0'/>."""

    ifname: str
    swapped: bool = True  # False for macvtap (type='direct'), whose counters are the guest's view


class LinkDumpError(Exception):
    """The dump failed as a whole (socket error, a netlink error answer)."""


def dump_request(sequence: int) -> bytes:
    """RTM_GETLINK with NLM_F_DUMP, ifinfomsg of family AF_UNSPEC, IFLA_EXT_MASK 0: no VF info
    (RTEXT_FILTER_VF would make a PF's message hold every VF and the kernel hold RTNL longer)."""
    ext_mask = struct.pack("=HHI", 8, IFLA_EXT_MASK, 0)
    body = struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 0, 0, 0, 0) + ext_mask
    header = struct.pack(
        "=IHHII", 16 + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0
    )
    return header + body


def split_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, whole message) of each netlink message in one datagram; a truncated one ends it."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16 or offset + length > len(data):
            return
        yield kind, data[offset : offset + length]
        offset += (length + 3) & ~3


def links_by_name(
    messages: Iterator[bytes] | list[bytes], names: Collection[str] | None = None
) -> dict[str, LinkInfo]:
    """Each named link of the dump, decoded; of `names` only, if given (a host has many more
    links than taps: bridges, bonds, VFs; only the name is read of the others)."""
    links = {}
    for message in messages:
        if names is not None and link_name(message) not in names:
            continue
        link = link_counters(message)
        if link.name is not None:
            links[link.name] = link
    return links


class LinkDump:
    """One rtnetlink socket, opened on first use and again after an error."""

    def __init__(self) -> None:
        self._socket: socket.socket | None = None
        self._sequence = 0

    def messages(self) -> list[bytes]:
        """Every link's RTM_NEWLINK message, raw."""
        try:
            return self._dump()
        except OSError as exc:
            self.close()
            raise LinkDumpError(f"RTM_GETLINK dump: {exc}") from exc

    def links(self, names: Collection[str] | None = None) -> dict[str, LinkInfo]:
        """Every link by name, or only those of `names`."""
        return links_by_name(self.messages(), names)

    def _dump(self) -> list[bytes]:
        if self._socket is None:
            self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            self._socket.bind((0, 0))
        self._sequence += 1
        self._socket.send(dump_request(self._sequence))
        found: list[bytes] = []
        while True:
            data = self._socket.recv(_RECEIVE_BUFFER)
            for kind, message in split_messages(data):
                (sequence,) = struct.unpack_from("=I", message, 8)
                if sequence != self._sequence:
                    continue  # the late rest of a dump an earlier error abandoned
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", message, 16)
                    raise LinkDumpError(f"RTM_GETLINK dump: {os.strerror(-code)}")
                if kind == RTM_NEWLINK:
                    found.append(message)
            if not data:
                raise LinkDumpError(f"RTM_GETLINK dump: {os.strerror(errno.ECONNRESET)}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def tap_stats(links: dict[str, LinkInfo], tap: Tap) -> InterfaceStats | None:
    """The tap's counters from the guest's side, as libvirt's interface stats; None where the
    dump has no such link (the tap went away) or no IFLA_STATS64."""
    link = links.get(tap.ifname)
    if link is None or not link.link_stats:
        return None
    s = link.link_stats
    host_receive = (
        s["rx_bytes"],
        s["rx_packets"],
        s["rx_errors"],
        s["rx_dropped"] + s.get("rx_missed_errors", 0),
    )
    host_transmit = (s["tx_bytes"], s["tx_packets"], s["tx_errors"], s["tx_dropped"])
    receive, transmit = (
        (host_transmit, host_receive) if tap.swapped else (host_receive, host_transmit)
    )
    return InterfaceStats(
        device=tap.ifname,
        receive_bytes=receive[0],
        receive_packets=receive[1],
        receive_errors=receive[2],
        receive_drop=receive[3],
        transmit_bytes=transmit[0],
        transmit_packets=transmit[1],
        transmit_errors=transmit[2],
        transmit_drop=transmit[3],
    )
