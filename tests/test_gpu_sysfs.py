"""GPUs NVML cannot see: their PCIe side from a sysfs tree on disk, with NVML absent."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hostcollector.attribution import attribute_gpus
from hostcollector.config import NvmlConfig
from hostcollector.exposition import render
from hostcollector.model import NvmlSample
from hostcollector.sources.gpu_sysfs import scan_nvidia_gpus
from hostcollector.sources.nvml import NvmlSource, normalize_pci
from tests.gpu_fixtures import ASSIGNED, make_gpu_sysfs
from tests.replay import poll_once
from tests.snapshots import one_series, snapshot_from_raw


def poll(config: NvmlConfig) -> NvmlSample:
    sample: NvmlSample = poll_once(NvmlSource(config))
    return sample


def test_scan_finds_nvidia_display_functions_only(tmp_path: Path) -> None:
    found = scan_nvidia_gpus(make_gpu_sysfs(tmp_path))
    assert sorted(found) == ["0000:17:00.0", "0000:41:00.0", "0000:c1:00.0"]
    degraded = found["0000:c1:00.0"]
    assert (
        degraded.driver,
        degraded.aer_correctable,
        degraded.aer_nonfatal,
        degraded.aer_fatal,
    ) == (
        "vfio-pci",
        17,
        2,
        1,
    )
    assert (degraded.link_speed_current_gts, degraded.link_speed_max_gts) == (16.0, 32.0)
    assert (degraded.link_width_current, degraded.link_width_max, degraded.power_state) == (
        8,
        16,
        "D3hot",
    )
    assert scan_nvidia_gpus(tmp_path / "nowhere") == {}


def test_without_nvml_every_gpu_is_reported_from_sysfs_never_as_idle(tmp_path: Path) -> None:
    config = NvmlConfig(
        library_path=str(tmp_path / "absent/libnvidia-ml.so.1"),
        sysfs_root=str(make_gpu_sysfs(tmp_path)),
    )
    sample = poll(config)
    assert not sample.nvml_available and sample.driver_version is None
    assert {g.pci_address: g.nvml_visible for g in sample.gpus} == {
        "0000:17:00.0": False,
        "0000:41:00.0": False,
        "0000:c1:00.0": False,
    }
    assert all(g.gpu_utilization_ratio is None and g.power_watts is None for g in sample.gpus)


def test_passthrough_gpu_attributed_and_rendered(tmp_path: Path) -> None:
    config = NvmlConfig(
        library_path=str(tmp_path / "absent.so"), sysfs_root=str(make_gpu_sysfs(tmp_path))
    )
    sample = poll(config)
    base = snapshot_from_raw()
    acme = next(vm for vm in base.vms if vm.stats.name == "hc-lab-a1")
    gpus = attribute_gpus(sample.gpus, {acme.stats.uuid: (ASSIGNED,)}, {}, base.vms)
    snapshot = dataclasses.replace(base, gpus=gpus, nvml_available=False)
    text = render(snapshot).decode()
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    one = functools.partial(one_series, text)

    labels, visible = one("hostcollector_gpu_nvml_visible", pci_address=ASSIGNED)
    assert (
        visible == 0
        and labels["vm_uuid"] == acme.stats.uuid
        and labels["tenant_id"] == acme.tenant_id
    )
    assert one("hostcollector_gpu_pcie_aer_correctable_errors_total", pci_address=ASSIGNED)[1] == 3
    assert one("hostcollector_gpu_pcie_link_width_lanes", pci_address="0000:c1:00.0")[1] == 8
    assert (
        one("hostcollector_gpu_pcie_link_speed_transfers_per_second", pci_address="0000:c1:00.0")[1]
        == 16e9
    )
    info, _ = one("hostcollector_gpu_info", pci_address="0000:c1:00.0")
    assert (info["driver"], info["power_state"], info["vm_uuid"]) == ("vfio-pci", "D3hot", "")
    assert one("hostcollector_nvml_available")[1] == 0
    assert one("hostcollector_gpus_unassigned")[1] == 2
    # an invisible GPU never shows as idle: no utilization, power or memory series at all
    for name in (
        "hostcollector_gpu_utilization_ratio",
        "hostcollector_gpu_power_watts",
        "hostcollector_gpu_lost",
    ):
        assert name not in names


def test_nvml_bus_ids_match_sysfs_addresses() -> None:
    assert normalize_pci("00000000:17:00.0") == "0000:17:00.0"
    assert normalize_pci("00000001:C1:00.0") == "0001:c1:00.0"
