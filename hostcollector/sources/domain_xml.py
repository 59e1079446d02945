"""What hostcollector reads from a domain's XML: the host devices given to it. Pure.

- `<hostdev mode='subsystem' type='pci'>` (a VF, or a whole GPU passed through) and
  `<interface type='hostdev'>` (a VF as a NIC, MAC and VLAN set by libvirt) name a host PCI
  device by `<source><address domain= bus= slot= function=/>`;
- `<hostdev mode='subsystem' type='mdev'>` (NVIDIA vGPU on kernels before 6.8) names a mediated
  device by `<source><address uuid=/>`.

For the kernel path (qemu_kernel.py), what libvirt's cpu/vcpu/interface groups take from the
definition rather than from QEMU:

- `<vcpu current='n'>max</vcpu>`: vcpu.maximum is the element's text (virDomainDefGetVcpusMax);
- `<interface>` with `<target dev=/>`: the host-side device libvirt reads the counters of
  (qemuDomainGetStatsInterface -> virNetDevTapInterfaceStats). Types network, bridge and
  ethernet are taps (counters swapped to the guest's view), direct is a macvtap (not swapped);
  hostdev NICs have no net.N entry. Any other type (vhostuser: OVS's counters, user: none) is
  counted in `other_nics`: the kernel cannot stand in for libvirt there.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from hostcollector.sources.tap_counters import Tap

_TAP_TYPES = frozenset({"network", "bridge", "ethernet"})
_MACVTAP = "direct"


@dataclass(frozen=True, slots=True)
class DomainDevices:
    pci: tuple[str, ...] = ()  # host PCI addresses, "0000:3b:02.1"
    mdev: tuple[str, ...] = ()  # mediated device UUIDs, lower case
    taps: tuple[Tap, ...] = ()  # host-side NIC devices, in the XML's <interface> order
    other_nics: int = 0  # NICs whose counters the kernel has not (vhostuser, user, no target)
    vcpu_maximum: int | None = None


def pci_address(domain: str, bus: str, slot: str, function: str) -> str:
    """libvirt's hex attributes ("0x0000", "0x3b", "0x02", "0x1") -> "0000:3b:02.1"."""
    return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(slot, 16):02x}.{int(function, 16):x}"


def domain_devices(xml: str) -> DomainDevices:
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError):  # ValueError: a lone surrogate, not even encodable
        return DomainDevices()
    pci: list[str] = []
    candidates = [
        *root.findall("./devices/hostdev[@type='pci']/source/address"),
        *root.findall("./devices/interface[@type='hostdev']/source/address"),
    ]
    for address in candidates:
        if address.get("type", "pci") != "pci":
            continue
        try:
            pci.append(
                pci_address(
                    address.get("domain", "0x0000"),
                    address.get("bus", ""),
                    address.get("slot", ""),
                    address.get("function", ""),
                )
            )
        except ValueError:
            continue  # a malformed address names no device we can match
    mdev = [
        uuid.lower()
        for address in root.findall("./devices/hostdev[@type='mdev']/source/address")
        if (uuid := address.get("uuid"))
    ]
    taps, other_nics = _nics(root)
    return DomainDevices(
        tuple(dict.fromkeys(pci)),
        tuple(dict.fromkeys(mdev)),
        taps,
        other_nics,
        _vcpu_maximum(root),
    )


def _nics(root: ET.Element) -> tuple[tuple[Tap, ...], int]:
    taps = []
    other = 0
    for interface in root.findall("./devices/interface"):
        kind = interface.get("type", "")
        if kind == "hostdev":
            continue
        target = interface.find("target")
        device = target.get("dev", "") if target is not None else ""
        if device and kind in _TAP_TYPES:
            taps.append(Tap(device, swapped=True))
        elif device and kind == _MACVTAP:
            taps.append(Tap(device, swapped=False))
        else:
            other += 1
    return tuple(taps), other


def _vcpu_maximum(root: ET.Element) -> int | None:
    text = root.findtext("./vcpu")
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None
