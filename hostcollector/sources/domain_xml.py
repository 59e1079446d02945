"""What hostcollector reads from a domain's XML: the host PCI devices given to it. Pure.

Both `<hostdev mode='subsystem' type='pci'>` (a VF or a whole GPU passed through) and
`<interface type='hostdev'>` (a VF as a NIC, with its MAC and VLAN set by libvirt) name the host
device by `<source><address domain= bus= slot= function=/>`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET


def pci_address(domain: str, bus: str, slot: str, function: str) -> str:
    """libvirt's hex attributes ("0x0000", "0x3b", "0x02", "0x1") -> "0000:3b:02.1"."""
    return f"{int(domain, 16):04x}:{int(bus, 16):02x}:{int(slot, 16):02x}.{int(function, 16):x}"


def hostdev_pci_addresses(xml: str) -> tuple[str, ...]:
    """Host PCI addresses of the domain's passthrough devices, in document order."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return ()
    found: list[str] = []
    candidates = [
        *root.findall("./devices/hostdev[@type='pci']/source/address"),
        *root.findall("./devices/interface[@type='hostdev']/source/address"),
    ]
    for address in candidates:
        if address.get("type", "pci") != "pci":
            continue
        try:
            found.append(
                pci_address(
                    address.get("domain", "0x0000"),
                    address.get("bus", ""),
                    address.get("slot", ""),
                    address.get("function", ""),
                )
            )
        except ValueError:
            continue  # a malformed address names no device we can match
    return tuple(dict.fromkeys(found))
