"""A PCI function's PCIe health as sysfs shows it: the one reader of the AER and link files,
for NVIDIA GPU functions (gpu_sysfs.py) and for every PCI device a VM holds (hostdevs). Pure file
reads below a configurable root ("/" on a host).

The kernel's facts relied on (Documentation/ABI/testing/sysfs-bus-pci-devices-aer, and
drivers/pci/pci-sysfs.c for the link files):
- `aer_dev_correctable`, `aer_dev_nonfatal`, `aer_dev_fatal` are lines `<name> <count>`, the last
  `TOTAL_ERR_COR` / `TOTAL_ERR_NONFATAL` / `TOTAL_ERR_FATAL`; only AER-capable functions (and
  kernels >= 4.19) have them;
- the errors are counted "as seen by the device": a faulty endpoint's errors may increment the
  counters of its link partner (the root port or switch downstream port above it) while its own
  read 0. Hence the upstream port is read too (`upstream`);
- `current_link_speed` / `max_link_speed` read "16.0 GT/s PCIe" ("Unknown" where the link
  fields mean nothing, as on a VF); `current_link_width` / `max_link_width` a lane count.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hostcollector.model import PciDevice, PcieHealth
from hostcollector.sources.sysfs import link_name, read_text

_AER_TOTALS = {
    "aer_dev_correctable": "TOTAL_ERR_COR",
    "aer_dev_nonfatal": "TOTAL_ERR_NONFATAL",
    "aer_dev_fatal": "TOTAL_ERR_FATAL",
}
_SPEED = re.compile(r"^([0-9.]+) GT/s")
# A PCI function's directory name in /sys/devices: "0000:3b:00.0". Its parent is either another
# function (the bridge port it sits below) or the host bridge's "pci0000:00" (a root-complex
# integrated endpoint, which has no link and so no upstream port).
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass(frozen=True, slots=True)
class _Aer:
    correctable: int | None
    nonfatal: int | None
    fatal: int | None


def _aer_total(path: Path, total: str) -> int | None:
    for line in (read_text(path) or "").splitlines():
        name, _, value = line.rpartition(" ")
        if name.strip() == total and value.isascii() and value.isdigit():
            return int(value)
    return None


def _aer(device: Path) -> _Aer:
    found = {name: _aer_total(device / name, total) for name, total in _AER_TOTALS.items()}
    return _Aer(found["aer_dev_correctable"], found["aer_dev_nonfatal"], found["aer_dev_fatal"])


def _speed(text: str | None) -> float | None:
    match = _SPEED.match(text or "")
    try:
        return float(match.group(1)) if match else None
    except ValueError:  # "1.2.3 GT/s": junk, not a speed
        return None


def _int(text: str | None) -> int | None:
    # isascii: str.isdigit() also accepts "²", which int() refuses
    return int(text) if text is not None and text.isascii() and text.isdigit() else None


def read_pcie_health(device: Path) -> PcieHealth:
    """One function's driver, AER totals, link and power state; an unreadable file is None."""
    aer = _aer(device)
    width_max = _int(read_text(device / "max_link_width"))
    width = _int(read_text(device / "current_link_width"))
    if width_max == 0:
        # No link of its own (a VF: its Link Capabilities are reserved and read 0), not a
        # link of no lanes. A current width of 0 below a real maximum is kept: the link is down.
        width_max = width = None
    return PcieHealth(
        pci_address=device.name,
        driver=link_name(device / "driver"),
        physfn=link_name(device / "physfn"),
        aer_correctable=aer.correctable,
        aer_nonfatal=aer.nonfatal,
        aer_fatal=aer.fatal,
        link_speed_current_gts=_speed(read_text(device / "current_link_speed")),
        link_speed_max_gts=_speed(read_text(device / "max_link_speed")),
        link_width_current=width,
        link_width_max=width_max,
        power_state=read_text(device / "power_state"),
    )


def upstream_port(device: Path) -> Path | None:
    """The bridge port above the function (its link partner), from where the device really is
    in /sys/devices (/sys/bus/pci/devices/<address> is a link there); None on the root
    complex, or if the link cannot be resolved."""
    try:
        real = Path(os.path.realpath(device, strict=True))
    except OSError:
        return None
    parent = real.parent
    return parent if _PCI_ADDRESS.match(parent.name) else None


def read_pci_device(root: str | Path, address: str) -> PciDevice:
    """What sysfs says of the function at `address` and of its upstream port. A function that
    is not there is `present=False`; one unreadable file leaves only its fields None."""
    device = Path(root, "sys/bus/pci/devices", address)
    if not device.is_dir():
        return PciDevice(pci_address=address, present=False)
    port = upstream_port(device)
    return PciDevice(
        pci_address=address,
        present=True,
        vendor=read_text(device / "vendor"),
        device=read_text(device / "device"),
        pci_class=read_text(device / "class"),
        health=read_pcie_health(device),
        upstream=read_pcie_health(port) if port is not None else None,
    )


def read_pci_devices(root: str | Path, addresses: list[str]) -> dict[str, PciDevice]:
    """Each address once, in the order given."""
    return {address: read_pci_device(root, address) for address in dict.fromkeys(addresses)}
