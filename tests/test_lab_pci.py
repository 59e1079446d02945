"""A passed-through PCI device of no GPU class, through a domain defined in the lab's libvirtd:
an NVMe drive and a NIC VF as `<hostdev type='pci'>` of two tenants' domains, their PCIe side
from a sysfs tree on disk (tests/pci_fixtures.py) at the libvirt source's sysfs_root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostcollector.config import Config, LibvirtConfig, NvmlConfig, SourcesConfig, SriovConfig
from hostcollector.exposition import render
from tests.labkit import ACME, GLOBEX, collect_once, defined_domain_xml, require_lab, virsh
from tests.pci_fixtures import NIC_VF, NVME, make_pci_sysfs

pytestmark = [pytest.mark.lab]

NVME_VM = ("hc-scratch-pci-nvme", "e0e0e0e0-0000-4000-8000-00000000b001", ACME, NVME.address)
VF_VM = ("hc-scratch-pci-vf", "e0e0e0e0-0000-4000-8000-00000000b002", GLOBEX, NIC_VF.address)


def hostdev(address: str) -> str:
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return (
        "<hostdev mode='subsystem' type='pci' managed='yes'><source><address "
        f"domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>"
        "</source></hostdev>"
    )


@pytest.fixture
def pci_vms(tmp_path: Path) -> Iterator[None]:
    require_lab()
    vms = (NVME_VM, VF_VM)
    for name, uuid, tenant, address in vms:
        path = tmp_path / f"{name}.xml"
        path.write_text(defined_domain_xml(name, uuid, tenant, hostdev(address), "io.large"))
        virsh("define", str(path))
    try:
        yield
    finally:
        for name, _uuid, _tenant, _address in vms:
            virsh("undefine", name, check=False)


def test_a_passed_through_nvme_reaches_its_vm_and_tenant(pci_vms: None, tmp_path: Path) -> None:
    sysfs = make_pci_sysfs(tmp_path / "root")
    config = Config(
        sources=SourcesConfig(
            libvirt=LibvirtConfig(sysfs_root=str(sysfs)),
            sriov=SriovConfig(enabled=False),
            nvml=NvmlConfig(enabled=False),
        )
    )
    snapshot = collect_once(config).build_snapshot()
    owners = {
        (a.device.pci_address, a.vm_uuid): (a.tenant_id, a.device) for a in snapshot.pci_devices
    }
    tenant, nvme = owners[(NVME.address, NVME_VM[1])]
    assert tenant == ACME and nvme.present and nvme.pci_class == "0x010802"
    assert nvme.health is not None and nvme.health.aer_fatal == 1
    assert nvme.health.link_speed_current_gts == 8.0  # downtrained: its maximum is 16
    assert owners[(NIC_VF.address, VF_VM[1])][0] == GLOBEX

    # Acme's scope: its NVMe's PCIe series with its tenant, nothing of globex's VF.
    scoped = [
        s
        for family in text_string_to_metric_families(render(snapshot, tenant=ACME).decode())
        for s in family.samples
        if s.name.startswith("hostcollector_pci_device_")
    ]
    mine = [s for s in scoped if s.labels["vm_uuid"] == NVME_VM[1]]
    assert {s.labels["tenant_id"] for s in scoped} == {ACME}
    assert not [s for s in scoped if s.labels["pci_address"] == NIC_VF.address]
    fatal = [
        s.value
        for s in mine
        if s.name == "hostcollector_pci_device_aer_fatal_errors_total"
        and s.labels["counted_at"] == "endpoint"
    ]
    assert fatal == [1]
    (info,) = [s for s in mine if s.name == "hostcollector_pci_device_info"]
    assert (info.labels["class_name"], info.labels["driver"]) == ("nvme", "vfio-pci")
