"""NVIDIA GPU functions as the PCI subsystem sees them, whoever drives them. Pure file reads.

A GPU passed through whole is bound to vfio-pci and invisible to the host's NVML; sysfs is the
host's only view of it: AER error counters, PCIe link speed and width against their maximum,
power state, and which driver holds it. Read below a configurable root ("/" on a host).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hostcollector.model import PcieHealth
from hostcollector.sources.sysfs import link_name, read_text

NVIDIA_VENDOR = "0x10de"
DISPLAY_CLASSES = ("0x0300", "0x0302")  # VGA-compatible and 3D controllers
_AER_TOTALS = {
    "aer_dev_correctable": "TOTAL_ERR_COR",
    "aer_dev_nonfatal": "TOTAL_ERR_NONFATAL",
    "aer_dev_fatal": "TOTAL_ERR_FATAL",
}
_SPEED = re.compile(r"^([0-9.]+) GT/s")


def _aer_total(path: Path, total: str) -> int | None:
    for line in (read_text(path) or "").splitlines():
        name, _, value = line.rpartition(" ")
        if name.strip() == total and value.isdigit():
            return int(value)
    return None


def _speed(text: str | None) -> float | None:
    match = _SPEED.match(text or "")
    return float(match.group(1)) if match else None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def read_pci_gpu(device: Path) -> PcieHealth:
    aer = {name: _aer_total(device / name, total) for name, total in _AER_TOTALS.items()}
    return PcieHealth(
        pci_address=device.name,
        driver=link_name(device / "driver"),
        physfn=link_name(device / "physfn"),
        aer_correctable=aer["aer_dev_correctable"],
        aer_nonfatal=aer["aer_dev_nonfatal"],
        aer_fatal=aer["aer_dev_fatal"],
        link_speed_current_gts=_speed(read_text(device / "current_link_speed")),
        link_speed_max_gts=_speed(read_text(device / "max_link_speed")),
        link_width_current=_int(read_text(device / "current_link_width")),
        link_width_max=_int(read_text(device / "max_link_width")),
        power_state=read_text(device / "power_state"),
    )


def scan_nvidia_gpus(root: str | Path = "/") -> dict[str, PcieHealth]:
    """Every NVIDIA display-class PCI function by address; what vanishes meanwhile is skipped."""
    devices = Path(root, "sys/bus/pci/devices")
    try:
        names = sorted(os.listdir(devices))
    except OSError:
        return {}
    found = {}
    for name in names:
        device = devices / name
        if read_text(device / "vendor") != NVIDIA_VENDOR:
            continue
        if not (read_text(device / "class") or "").startswith(DISPLAY_CLASSES):
            continue
        found[name] = read_pci_gpu(device)
    return found
