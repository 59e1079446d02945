"""Every PCI hostdev's PCIe side, read from sysfs trees on disk laid out as the kernel does."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hostcollector.attribution import attribute_pci_devices
from hostcollector.exposition import render
from hostcollector.pci_classes import class_name
from hostcollector.sources.gpu_sysfs import scan_nvidia_gpus
from hostcollector.sources.pci_sysfs import read_pci_device, read_pci_devices, upstream_port
from tests.gpu_fixtures import make_gpu_sysfs
from tests.pci_fixtures import NIC_PF, NIC_VF, NO_AER, NVME, PciFunction, make_pci_sysfs
from tests.snapshots import one_series, snapshot_from_raw


def test_errors_counted_at_the_root_port_are_read_there(tmp_path: Path) -> None:
    found = read_pci_device(make_pci_sysfs(tmp_path), NIC_PF.address)
    assert found.present and (found.vendor, found.device, found.pci_class) == (
        "0x15b3",
        "0x101b",
        "0x020000",
    )
    assert found.health is not None and found.upstream is not None
    assert (found.health.aer_correctable, found.health.aer_nonfatal) == (0, 0)
    assert found.upstream.pci_address == "0000:3a:00.0"
    assert (found.upstream.aer_correctable, found.upstream.aer_nonfatal) == (41, 1)
    assert found.upstream.driver == "pcieport" and found.health.driver == "vfio-pci"


def test_errors_counted_at_the_endpoint_and_a_downtrained_link(tmp_path: Path) -> None:
    found = read_pci_device(make_pci_sysfs(tmp_path), NVME.address)
    assert found.health is not None and found.upstream is not None
    health = found.health
    assert (health.aer_correctable, health.aer_nonfatal, health.aer_fatal) == (7, 0, 1)
    assert (found.upstream.aer_correctable, found.upstream.aer_fatal) == (0, 0)
    assert (health.link_speed_current_gts, health.link_speed_max_gts) == (8.0, 16.0)
    assert (health.link_width_current, health.link_width_max) == (2, 4)
    assert class_name(found.pci_class) == "nvme"


def test_missing_aer_files_are_absent_not_zero(tmp_path: Path) -> None:
    found = read_pci_device(make_pci_sysfs(tmp_path), NO_AER.address)
    assert found.health is not None and found.upstream is not None
    assert found.health.driver is None  # bound to no driver
    for side in (found.health, found.upstream):
        assert (side.aer_correctable, side.aer_nonfatal, side.aer_fatal) == (None, None, None)
    assert found.health.link_width_current == 16  # the rest is still read


def test_a_vf_has_its_pf_and_no_link_of_its_own(tmp_path: Path) -> None:
    found = read_pci_device(make_pci_sysfs(tmp_path), NIC_VF.address)
    assert found.health is not None and found.upstream is not None
    assert found.health.physfn == NIC_PF.address
    assert found.upstream.pci_address == "0000:3a:00.0"  # the PF's port: the link they share
    health = found.health
    assert (health.link_speed_current_gts, health.link_speed_max_gts) == (None, None)
    assert (health.link_width_current, health.link_width_max) == (None, None)


def test_an_unreadable_file_degrades_that_device_only(tmp_path: Path) -> None:
    root = make_pci_sysfs(tmp_path)
    nvme = Path(os.path.realpath(root / "sys/bus/pci/devices" / NVME.address))
    # A file that cannot be read (a directory in its place: unreadable even for root) and one
    # holding bytes that are not text.
    (nvme / "aer_dev_correctable").unlink()
    (nvme / "aer_dev_correctable").mkdir()
    (nvme / "current_link_speed").write_bytes(b"\xff\xfe GT/s\n")
    (nvme / "max_link_width").write_text("\u00b2\n")  # a digit to str.isdigit, not to int()
    nic = Path(os.path.realpath(root / "sys/bus/pci/devices" / NIC_PF.address))
    (nic / "max_link_speed").write_text("1.2.3 GT/s PCIe\n")
    found = read_pci_devices(root, [NVME.address, NIC_PF.address, NVME.address])
    assert list(found) == [NVME.address, NIC_PF.address]  # each address once
    health = found[NVME.address].health
    assert health is not None
    assert (health.aer_correctable, health.aer_fatal) == (None, 1)
    assert (health.link_speed_current_gts, health.link_speed_max_gts) == (None, 16.0)
    assert (health.link_width_current, health.link_width_max) == (2, None)
    other = found[NIC_PF.address]
    assert other.upstream is not None and other.upstream.aer_correctable == 41
    assert other.health is not None and other.health.link_speed_max_gts is None
    assert other.health.link_speed_current_gts == 16.0


def test_an_address_the_host_lacks_is_absent(tmp_path: Path) -> None:
    found = read_pci_device(make_pci_sysfs(tmp_path), "0000:99:00.0")
    assert not found.present and found.health is None and found.upstream is None
    assert not read_pci_device(tmp_path / "nowhere", NVME.address).present


def test_a_root_complex_integrated_device_has_no_upstream_port(tmp_path: Path) -> None:
    integrated = PciFunction("0000:00:14.0", "0x8086", "0xa0ed", "0x0c0330")
    root = make_pci_sysfs(tmp_path, [integrated])
    device = root / "sys/bus/pci/devices" / integrated.address
    assert upstream_port(device) is None
    found = read_pci_device(root, integrated.address)
    assert found.present and found.upstream is None and class_name(found.pci_class) == "usb"


def test_gpu_functions_read_through_the_same_reader(tmp_path: Path) -> None:
    # gpu_sysfs.py keeps its own scan but reads each function with pci_sysfs.read_pcie_health.
    root = make_gpu_sysfs(tmp_path)
    gpu = scan_nvidia_gpus(root)["0000:c1:00.0"]
    assert read_pci_device(root, "0000:c1:00.0").health == gpu


def test_class_names() -> None:
    assert [class_name(c) for c in ("0x020700", "0x030200", "0x123456", None)] == [
        "infiniband",
        "3d_controller",
        "other",
        "",
    ]


def _series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_hostdevs_attributed_rendered_and_scoped(tmp_path: Path) -> None:
    base = snapshot_from_raw()
    by_name = {vm.stats.name: vm for vm in base.vms}
    acme, globex = by_name["hc-lab-a1"], by_name["hc-lab-c1"]
    assert acme.tenant_id and globex.tenant_id and acme.tenant_id != globex.tenant_id
    held = {acme.stats.uuid: (NIC_PF.address, NVME.address), globex.stats.uuid: (NIC_VF.address,)}
    health = read_pci_devices(make_pci_sysfs(tmp_path), [a for v in held.values() for a in v])
    held[globex.stats.uuid] += ("0000:99:00.0",)  # an address the host does not have
    snapshot = dataclasses.replace(base, pci_devices=attribute_pci_devices(held, health, base.vms))
    text = render(snapshot).decode()
    series = _series(text)
    one = functools.partial(one_series, text)

    aer = "hostcollector_pci_device_aer_correctable_errors_total"
    labels, value = one(aer, pci_address=NIC_PF.address, counted_at="upstream_port")
    assert value == 41 and labels["vm_uuid"] == acme.stats.uuid
    assert labels["tenant_id"] == acme.tenant_id
    assert one(aer, pci_address=NIC_PF.address, counted_at="endpoint")[1] == 0
    fatal = "hostcollector_pci_device_aer_fatal_errors_total"
    assert one(fatal, pci_address=NVME.address, counted_at="endpoint")[1] == 1
    speed = "hostcollector_pci_device_link_speed_transfers_per_second"
    assert one(speed, pci_address=NVME.address)[1] == 8e9
    assert one("hostcollector_pci_device_link_max_speed_transfers_per_second",
               pci_address=NVME.address)[1] == 16e9  # fmt: skip
    assert one("hostcollector_pci_device_link_width_lanes", pci_address=NVME.address)[1] == 2
    info, _ = one("hostcollector_pci_device_info", pci_address=NVME.address)
    assert (info["class"], info["class_name"], info["driver"], info["upstream_port"]) == (
        "0x010802",
        "nvme",
        "vfio-pci",
        "0000:5d:02.0",
    )
    vf, _ = one("hostcollector_pci_device_info", pci_address=NIC_VF.address)
    assert (vf["physfn"], vf["tenant_id"]) == (NIC_PF.address, globex.tenant_id)
    assert not [k for (n, k) in series if n == speed and dict(k)["pci_address"] == NIC_VF.address]
    assert one("hostcollector_pci_device_present", pci_address="0000:99:00.0")[1] == 0
    assert one("hostcollector_pci_device_present", pci_address=NVME.address)[1] == 1

    # A tenant's scope holds its own devices and none of the other tenant's.
    scoped = _series(render(snapshot, tenant=acme.tenant_id).decode())
    addresses = {
        dict(k).get("pci_address") for (n, k) in scoped if n.startswith("hostcollector_pci")
    }
    assert addresses == {NIC_PF.address, NVME.address}
    assert all(
        dict(k)["tenant_id"] == acme.tenant_id
        for (n, k) in scoped
        if n.startswith("hostcollector_pci")
    )
