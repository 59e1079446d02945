"""GPU attribution through domains defined in the lab's libvirtd: a GPU passed through whole
(`<hostdev type='pci'>`, PCIe side from a sysfs tree on disk) and an mdev vGPU
(`<hostdev type='mdev'>`, NVML answering through the stand-in library)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hostcollector.config import Config, NvmlConfig, SourcesConfig, SriovConfig
from tests.gpu_fixtures import ASSIGNED, make_gpu_sysfs
from tests.labkit import ACME, GLOBEX, collect_once, defined_domain_xml, require_lab, virsh
from tests.nvml_stub import stub
from tests.nvml_stub.stub import SCENARIO_ENV, write_scenario
from tests.test_nvml import ACME_VM, GLOBEX_VMS, ORPHAN_VM

pytestmark = [pytest.mark.lab]

PASSTHROUGH_VM = ("hc-scratch-gpu-pt", "e0e0e0e0-0000-4000-8000-00000000a001", ACME)
MDEV_VM = ("hc-scratch-gpu-mdev", "e0e0e0e0-0000-4000-8000-00000000a002", GLOBEX)


@pytest.fixture
def gpu_vms(tmp_path: Path) -> Iterator[str]:
    """Defines both domains; yields the mdev UUID the vGPU domain holds."""
    require_lab()
    mdev = stub.vgpu_host([ACME_VM, ORPHAN_VM], GLOBEX_VMS)["gpus"][1]["vgpus"][0]["mdev_uuid"]
    domain, bus, rest = ASSIGNED.split(":")
    slot, function = rest.split(".")
    devices = {
        PASSTHROUGH_VM: f"<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source></hostdev>",
        MDEV_VM: f"<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='{mdev}'/></source></hostdev>",
    }
    for (name, uuid, tenant), device in devices.items():
        path = tmp_path / f"{name}.xml"
        path.write_text(defined_domain_xml(name, uuid, tenant, device, "gpu.large"))
        virsh("define", str(path))
    try:
        yield mdev
    finally:
        for name, _uuid, _tenant in devices:
            virsh("undefine", name, check=False)


def test_passthrough_gpu_reaches_its_vm_and_tenant(gpu_vms: str, tmp_path: Path) -> None:
    sysfs = make_gpu_sysfs(tmp_path / "root")
    config = Config(
        sources=SourcesConfig(
            sriov=SriovConfig(enabled=False),
            nvml=NvmlConfig(library_path=str(tmp_path / "no-nvml.so"), sysfs_root=str(sysfs)),
        )
    )
    snapshot = collect_once(config).build_snapshot()
    assert snapshot.nvml_available is False
    owners = {
        a.gpu.pci_address: (a.vm_uuid, a.tenant_id, a.gpu.pcie and a.gpu.pcie.aer_correctable)
        for a in snapshot.gpus
    }
    assert owners[ASSIGNED] == (PASSTHROUGH_VM[1], ACME, 3)
    assert owners["0000:c1:00.0"][:2] == ("", "")


def test_mdev_vgpu_reaches_the_domain_holding_its_mdev(
    gpu_vms: str,
    stub_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario_path = tmp_path / "nvml.scn"
    write_scenario(scenario_path, stub.vgpu_host([ACME_VM, ORPHAN_VM], GLOBEX_VMS))
    monkeypatch.setenv(SCENARIO_ENV, str(scenario_path))
    config = Config(
        sources=SourcesConfig(
            sriov=SriovConfig(enabled=False),
            nvml=NvmlConfig(library_path=str(stub_path), sysfs_root=str(tmp_path / "none")),
        )
    )
    snapshot = collect_once(config).build_snapshot()
    assert snapshot.nvml_available is True
    owners = {
        v.mdev_uuid: vm
        for a in snapshot.gpus
        for v, vm in zip(a.gpu.vgpus, a.vgpu_vms, strict=True)
    }
    # NVML names the orphan VM for this instance, but the mdev is in the defined domain
    assert owners[gpu_vms] == (MDEV_VM[1], GLOBEX)
