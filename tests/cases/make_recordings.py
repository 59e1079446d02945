"""Writes the cases' recordings (not their goldens: `make golden` does those).

    .venv/bin/python -m tests.cases.make_recordings

The libvirt part is the lab recording with domain XML (hostdevs) added; RTM_NEWLINK messages
are built with pyroute2's message classes (tests/sriov_fixtures.py); NVML scenarios are the
stand-in's ready-made ones (tests/nvml_stub/stub.py). README.md says what each case holds.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

from hostcollector.sources.domain_xml import domain_devices
from tests.conftest import LAB_FIXTURE
from tests.nvml_stub import stub
from tests.sriov_fixtures import IPOIB_PF, PfSpec, link_message

CASES = Path(__file__).parent
A1, B1, C1, D0 = (
    "a1a1a1a1-0000-4000-8000-000000000001",  # acme
    "b1b1b1b1-0000-4000-8000-000000000002",  # globex
    "c1c1c1c1-0000-4000-8000-000000000003",  # globex
    "d0d0d0d0-0000-4000-8000-000000000004",  # no tenant in its metadata
)
NOT_HERE = "e9e9e9e9-0000-4000-8000-0000000000ff"  # a VM the host driver names, libvirt not
SAMPLED_AT = 1795929818.25  # tests/snapshots.py's

LAB_STATE: dict[str, Any] = {
    # a1 and c1 read by the kernel path; b1's CPU time could not be read: libvirt served it
    "freshness": {
        A1: {"path": "kernel"},
        B1: {"age_seconds": 30, "quarantined": True},
        C1: {"path": "kernel"},
    },
    "health": {
        "connects_total": 1,
        "timeouts_by_reason": {"stats": 1},
        "quarantined_vms": 1,
        "quarantines_total": 1,
        "busy_domains_total": 2,
        "kernel_fallbacks_by_reason": {"cpu_total": 1},
    },
}
SRIOV_PFS = [
    PfSpec("enp59s0f0", 4, "0000:3b:00.0", "0000:3b", 4),
    PfSpec("enp59s0f1", 5, "0000:3b:00.1", "0000:3c", 2, drops=False),
    PfSpec("enp94s0f0", 6, "0000:5e:00.0", "0000:5f", 3, listed=2),
    IPOIB_PF,  # built by ipoib_message: 20-byte addresses, VF GUIDs
]
GPU_SYSFS = [
    {"address": "0000:41:00.0", "driver": "vfio-pci", "aer": [3, 0, 0]},
    {
        "address": "0000:c1:00.0",
        "driver": "vfio-pci",
        "aer": [17, 2, 1],
        "link": ["16.0 GT/s PCIe", "32.0 GT/s PCIe", "8", "16"],
        "power_state": "D3hot",
    },
    {"address": "0000:17:00.0", "driver": "nvidia"},
    {"address": "0000:3d:00.0", "driver": "nvidia"},
    {"address": "0000:ca:00.0", "driver": "nvidia"},
    {"address": "0000:18:00.0", "driver": "nvidia"},
]
# The hostdevs' PCIe side (tests/pci_fixtures.py's PciFunction fields), per case the functions
# its domains hold: VFs of the PFs above below one root port that counted their link's
# errors, the GPU passed through whole (errors at the endpoint), and in `everything` an NVMe
# drive on a downtrained link.
VF_PORT = {"upstream_port": "0000:3a:00.0", "upstream_aer": [5, 0, 0]}
NO_LINK = {"link": ["Unknown", "Unknown", "0", "0"]}
PCI_SYSFS = [
    {"address": "0000:3b:02.1", "vendor": "0x8086", "device": "0x1889", "pci_class": "0x020000",
     "physfn": "0000:3b:00.0"} | VF_PORT | NO_LINK,
    {"address": "0000:3b:02.3", "vendor": "0x8086", "device": "0x1889", "pci_class": "0x020000",
     "physfn": "0000:3b:00.0"} | VF_PORT | NO_LINK,
    {"address": "0000:3c:02.0", "vendor": "0x8086", "device": "0x1889", "pci_class": "0x020000",
     "physfn": "0000:3b:00.1"} | VF_PORT | NO_LINK,
    {"address": "0000:41:00.0", "vendor": "0x10de", "device": "0x2235", "pci_class": "0x030200",
     "upstream_port": "0000:40:01.1", "aer": [3, 0, 0],
     "link": ["32.0 GT/s PCIe", "32.0 GT/s PCIe", "16", "16"]},
    # The IPoIB PF's VF (ConnectX-6 VF, class InfiniBand controller): below its own root port.
    {"address": "0000:b0:02.1", "vendor": "0x15b3", "device": "0x101c", "pci_class": "0x020700",
     "physfn": "0000:af:00.0", "upstream_port": "0000:ae:00.0", "upstream_aer": [0, 0, 0]} | NO_LINK,
    {"address": "0000:5e:00.0", "vendor": "0x144d", "device": "0xa824", "pci_class": "0x010802",
     "upstream_port": "0000:5d:02.0", "aer": [7, 0, 1],
     "link": ["8.0 GT/s PCIe", "16.0 GT/s PCIe", "2", "4"]},
]  # fmt: skip
TENANT_MAP = {
    D0: {"tenant_id": "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c", "labels": {"project_name": "acme-batch"}},
    NOT_HERE: "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1",
}


def hostdev(bus: str, slot: str, function: str) -> str:
    return (
        "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000'"
        f" bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source></hostdev>"
    )


def vf_nic(bus: str, slot: str, function: str, mac: str) -> str:
    return (
        f"<interface type='hostdev' managed='yes'><mac address='{mac}'/><source><address "
        f"type='pci' domain='0x0000' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>"
        "</source></interface>"
    )


def mdev(uuid: str) -> str:
    return (
        "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address "
        f"uuid='{uuid}'/></source></hostdev>"
    )


def domain_xml(name: str, uuid: str, devices: list[str]) -> str:
    return (
        f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid><devices>"
        "<interface type='bridge'><source bridge='hcbr0'/></interface>"
        + "".join(devices)
        + "</devices></domain>"
    )


def nvml_scenario() -> dict[str, Any]:
    host = stub.vgpu_host([A1, D0], [B1, C1])
    host["gpus"][1]["pci_bus_id"] = "00000000:3D:00.0"  # 3b:00.0 is a NIC's PF in `everything`
    # Hopper in MIG mode: GPM per GPU instance, each attributed to its vGPU's VM
    mig = stub.mig_vgpu_gpm([A1, C1, NOT_HERE, D0])
    # GPM, field values (one failing alone), a fabric registration
    h100 = stub.h100_gpm()["gpus"][0]
    del h100["uuid"]  # the stand-in's default, by index: eight_gpus' GPU 0 has the A40's
    scenario = {
        "vgpu_manager": True,
        "driver_version": "550.54.15",
        "gpus": [*host["gpus"], mig["gpus"][0], h100],
        "conf_compute": {"environment": 2, "cc_feature": 0, "devtools_mode": 0, "gpus_ready": 1},
    }
    loaded: dict[str, Any] = json.loads(json.dumps(scenario))  # tuples -> lists, as in the file
    return loaded


SRIOV_DEVICES = {
    A1: [hostdev("3b", "02", "1"), hostdev("b0", "02", "1")],  # an Ethernet and an IPoIB VF
    B1: [vf_nic("3c", "02", "0", "52:54:00:05:00:00")],
    C1: [hostdev("3b", "02", "3")],
}
NVME_DEVICES = {A1: [hostdev("5e", "00", "0")]}
GPU_DEVICES = {
    A1: [hostdev("41", "00", "0")],
    # vGPU 3 (T4, an mdev vGPU) joined by its mdev UUID
    D0: [mdev(nvml_scenario()["gpus"][1]["vgpus"][0]["mdev_uuid"])],
}


def libvirt_recording(
    devices_by_uuid: dict[str, list[str]], state: dict[str, Any] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(json.loads(LAB_FIXTURE.read_text()))
    for entry in data["libvirt"]:
        devices = devices_by_uuid.get(entry["uuid"])
        if devices is not None:
            entry["xml"] = domain_xml(entry["name"], entry["uuid"], devices)
    data["sampled_at"] = SAMPLED_AT
    return data | (state or {})


def sriov_recording() -> dict[str, Any]:
    return {
        "sriov": [
            {
                "pf": pf.name,
                "ifindex": pf.ifindex,
                "pci_address": pf.pci,
                "numvfs": pf.numvfs,
                "vf_pci": {str(i): pf.vf_pci(i) for i in range(pf.numvfs)},
                "rtm_newlink_base64": base64.b64encode(link_message(pf)).decode(),
            }
            for pf in SRIOV_PFS
        ]
    }


def pci_sysfs(devices_by_uuid: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The functions of PCI_SYSFS the domains hold."""
    held = {
        address
        for devices in devices_by_uuid.values()
        for xml in devices
        for address in domain_devices(domain_xml("d", "u", [xml])).pci
    }
    return [fn for fn in PCI_SYSFS if fn["address"] in held]


def write(case: str, name: str, document: Any) -> None:
    path = CASES / case / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def main() -> None:
    both = {
        uuid: SRIOV_DEVICES.get(uuid, []) + GPU_DEVICES.get(uuid, []) + NVME_DEVICES.get(uuid, [])
        for uuid in (A1, B1, C1, D0)
    }
    write("lab-libvirt", "libvirt.json", libvirt_recording({}, LAB_STATE))
    write("sriov", "libvirt.json", libvirt_recording(SRIOV_DEVICES))
    write("sriov", "sriov.json", sriov_recording())
    write("sriov", "pci-sysfs.json", pci_sysfs(SRIOV_DEVICES))
    write("gpus", "libvirt.json", libvirt_recording(GPU_DEVICES))
    write("gpus", "nvml.json", nvml_scenario())
    write("gpus", "gpu-sysfs.json", GPU_SYSFS)
    write("gpus", "pci-sysfs.json", pci_sysfs(GPU_DEVICES))
    write("everything", "libvirt.json", libvirt_recording(both, LAB_STATE))
    write("everything", "sriov.json", sriov_recording())
    write("everything", "nvml.json", nvml_scenario())
    write("everything", "gpu-sysfs.json", GPU_SYSFS)
    write("everything", "pci-sysfs.json", pci_sysfs(both))
    write("everything", "tenant-map.json", TENANT_MAP)


if __name__ == "__main__":
    main()
