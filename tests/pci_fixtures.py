"""A sysfs tree on disk with PCI functions of any class below their bridge ports, as the kernel
lays them out: the function's directory in /sys/devices/pci<domain>:<bus>/<port>/<function>,
/sys/bus/pci/devices/<function> a link to it, the port's directory its parent.

`HOSTDEVS`: what a VM may hold: a ConnectX-6 PF whose AER errors were counted at its root port
(the endpoint's own counters read 0), an NVMe drive on a downtrained link with its errors
counted at the endpoint, a ConnectX VF (no link of its own), and a NIC on a kernel without AER
statistics (no aer_dev_* files at the function or at its port).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.gpu_fixtures import write_aer

GEN4_X16 = ("16.0 GT/s PCIe", "16.0 GT/s PCIe", "16", "16")


@dataclass(frozen=True)
class PciFunction:
    address: str
    vendor: str
    device: str
    pci_class: str
    driver: str | None = "vfio-pci"
    upstream_port: str | None = None  # None: on the root complex (no port above it)
    aer: tuple[int, int, int] | None = (0, 0, 0)  # None: no aer_dev_* files
    upstream_aer: tuple[int, int, int] | None = (0, 0, 0)
    link: tuple[str, str, str, str] = GEN4_X16  # current/max speed, current/max width
    power_state: str = "D0"
    physfn: str | None = None


NIC_PF = PciFunction(
    "0000:3b:00.0", "0x15b3", "0x101b", "0x020000", upstream_port="0000:3a:00.0",
    upstream_aer=(41, 1, 0),
)  # fmt: skip
NVME = PciFunction(
    "0000:5e:00.0", "0x144d", "0xa824", "0x010802", upstream_port="0000:5d:02.0", aer=(7, 0, 1),
    link=("8.0 GT/s PCIe", "16.0 GT/s PCIe", "2", "4"),
)  # fmt: skip
NIC_VF = PciFunction(
    "0000:3b:00.2", "0x15b3", "0x101c", "0x020000", upstream_port="0000:3a:00.0",
    upstream_aer=(41, 1, 0), link=("Unknown", "Unknown", "0", "0"), physfn="0000:3b:00.0",
)  # fmt: skip
NO_AER = PciFunction(
    "0000:af:00.0", "0x8086", "0x1593", "0x020000", driver=None, upstream_port="0000:ae:00.0",
    aer=None, upstream_aer=None,
)  # fmt: skip
HOSTDEVS = [NIC_PF, NVME, NIC_VF, NO_AER]


def _bus(address: str) -> str:
    domain, bus, _ = address.split(":")
    return f"pci{domain}:{bus}"


def _write_function(device: Path, fn: PciFunction, drivers: Path) -> None:
    (device / "vendor").write_text(fn.vendor + "\n")
    (device / "device").write_text(fn.device + "\n")
    (device / "class").write_text(fn.pci_class + "\n")
    if fn.driver:
        (drivers / fn.driver).mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(drivers / fn.driver, device), device / "driver")
    if fn.aer is not None:
        write_aer(device, fn.aer)
    names = ("current_link_speed", "max_link_speed", "current_link_width", "max_link_width")
    for name, value in zip(names, fn.link, strict=True):
        (device / name).write_text(value + "\n")
    (device / "power_state").write_text(fn.power_state + "\n")
    if fn.physfn:
        os.symlink(f"../{fn.physfn}", device / "physfn")


def _port(address: str, aer: tuple[int, int, int] | None) -> PciFunction:
    # A root port (class 0x060400, PCI bridge) bound to the kernel's pcieport driver.
    return PciFunction(address, "0x8086", "0x347a", "0x060400", "pcieport", aer=aer)


def make_pci_sysfs(root: Path, functions: list[PciFunction] = HOSTDEVS) -> Path:
    devices = root / "sys/bus/pci/devices"
    drivers = root / "sys/bus/pci/drivers"
    devices.mkdir(parents=True, exist_ok=True)
    for fn in functions:
        parent = root / "sys/devices" / _bus(fn.upstream_port or fn.address)
        parent.mkdir(parents=True, exist_ok=True)
        if fn.upstream_port:
            port = parent / fn.upstream_port
            if not port.exists():
                port.mkdir()
                _write_function(port, _port(fn.upstream_port, fn.upstream_aer), drivers)
                os.symlink(os.path.relpath(port, devices), devices / fn.upstream_port)
            parent = port
        device = parent / fn.address
        device.mkdir()
        _write_function(device, fn, drivers)
        os.symlink(os.path.relpath(device, devices), devices / fn.address)
    return root
