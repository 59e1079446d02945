"""NVIDIA GPU functions as the PCI subsystem sees them, whoever drives them. Pure file reads.

A GPU passed through whole is bound to vfio-pci and invisible to the host's NVML; sysfs is the
host's only view of it: AER error counters, PCIe link speed and width against their maximum,
power state, and which driver holds it (read by pci_sysfs.py, as for every hostdev). Read below
a configurable root ("/" on a host).
"""

from __future__ import annotations

import os
from pathlib import Path

from hostcollector.model import PcieHealth
from hostcollector.sources.pci_sysfs import read_pcie_health
from hostcollector.sources.sysfs import read_text

NVIDIA_VENDOR = "0x10de"
DISPLAY_CLASSES = ("0x0300", "0x0302")  # VGA-compatible and 3D controllers


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
        found[name] = read_pcie_health(device)
    return found
