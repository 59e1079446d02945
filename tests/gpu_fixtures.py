"""A sysfs tree on disk with NVIDIA GPU functions, as /sys/bus/pci/devices lays them out.

`PASSTHROUGH`: two GPUs bound to vfio-pci (one given to a VM in the tests, one free with a
degraded link and AER errors), one bound to the host's nvidia driver, and a NIC that is no GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GpuFunction:
    address: str
    driver: str | None
    vendor: str = "0x10de"
    pci_class: str = "0x030200"  # 3D controller
    aer: tuple[int, int, int] = (0, 0, 0)  # correctable, non-fatal, fatal
    link: tuple[str, str, str, str] = ("32.0 GT/s PCIe", "32.0 GT/s PCIe", "16", "16")
    power_state: str = "D0"
    physfn: str | None = None


PASSTHROUGH = [
    GpuFunction("0000:41:00.0", "vfio-pci", aer=(3, 0, 0)),
    GpuFunction(
        "0000:c1:00.0",
        "vfio-pci",
        aer=(17, 2, 1),
        link=("16.0 GT/s PCIe", "32.0 GT/s PCIe", "8", "16"),
        power_state="D3hot",
    ),
    GpuFunction("0000:17:00.0", "nvidia"),
    GpuFunction("0000:3b:00.0", "ice", vendor="0x8086", pci_class="0x020000"),
]
ASSIGNED = "0000:41:00.0"

# The kernel's aer_uncorrectable_error_string: the same lines in aer_dev_nonfatal and _fatal.
_AER_UNCORRECTABLE = (
    "Undefined",
    "DLP",
    "SDES",
    "TLP",
    "FCP",
    "CmpltTO",
    "CmpltAbrt",
    "UnxCmplt",
    "RxOF",
    "MalfTLP",
    "ECRC",
    "UnsupReq",
    "ACSViol",
)
_AER_LINES = {
    "aer_dev_correctable": (
        "RxErr",
        "BadTLP",
        "BadDLLP",
        "Rollover",
        "Timeout",
        "NonFatalErr",
        "CorrIntErr",
        "HeaderOF",
        "TOTAL_ERR_COR",
    ),
    "aer_dev_nonfatal": (*_AER_UNCORRECTABLE, "TOTAL_ERR_NONFATAL"),
    "aer_dev_fatal": (*_AER_UNCORRECTABLE, "TOTAL_ERR_FATAL"),
}


def write_aer(device: Path, totals: tuple[int, int, int]) -> None:
    """aer_dev_correctable, _nonfatal, _fatal as the kernel writes them: one line per error
    type, then the total; the first type carries the total."""
    for (name, fields), total in zip(_AER_LINES.items(), totals, strict=True):
        lines = [f"{field} 0" for field in fields[:-1]] + [f"{fields[-1]} {total}"]
        if total:
            lines[0] = f"{fields[0]} {total}"  # the detail adds up to the total
        (device / name).write_text("\n".join(lines) + "\n")


def make_gpu_sysfs(root: Path, functions: list[GpuFunction] = PASSTHROUGH) -> Path:
    devices = root / "sys/bus/pci/devices"
    drivers = root / "sys/bus/pci/drivers"
    real = root / "sys/devices/pci0000:00"
    devices.mkdir(parents=True, exist_ok=True)
    real.mkdir(parents=True, exist_ok=True)
    for fn in functions:
        device = real / fn.address
        device.mkdir()
        os.symlink(os.path.relpath(device, devices), devices / fn.address)
        (device / "vendor").write_text(fn.vendor + "\n")
        (device / "class").write_text(fn.pci_class + "\n")
        if fn.driver:
            (drivers / fn.driver).mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(drivers / fn.driver, device), device / "driver")
        write_aer(device, fn.aer)
        for name, value in zip(
            ("current_link_speed", "max_link_speed", "current_link_width", "max_link_width"),
            fn.link,
            strict=True,
        ):
            (device / name).write_text(value + "\n")
        (device / "power_state").write_text(fn.power_state + "\n")
        if fn.physfn:
            os.symlink(f"../{fn.physfn}", device / "physfn")
    return root
