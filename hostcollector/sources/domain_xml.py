"""What hostcollector reads from a domain's XML: the host devices given to it. Pure.

- `<hostdev mode='subsystem' type='pci'>` (a VF, or a whole GPU passed through) and
  `<interface type='hostdev'>` (a VF as a NIC, MAC and VLAN set by libvirt) name a host PCI
  device by `<source><address domain= bus= slot= function=/>`;
- `<hostdev mode='subsystem' type='mdev'>` (NVIDIA vGPU on kernels before 6.8) names a mediated
  device by `<source><address uuid=/>`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DomainDevices:
    pci: tuple[str, ...] = ()  # host PCI addresses, "0000:3b:02.1"
    mdev: tuple[str, ...] = ()  # mediated device UUIDs, lower case


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
    return DomainDevices(tuple(dict.fromkeys(pci)), tuple(dict.fromkeys(mdev)))
