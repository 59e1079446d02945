"""The GPU source through the real pynvml ctypes path, against the NVML stand-in library
(tests/nvml_stub) answering from scenario files: 8 GPUs, a vGPU host, MIG-backed vGPUs, a GPU
lost mid-run, unsupported fields, and a driver/library mismatch that heals."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostcollector.attribution import attribute_gpus
from hostcollector.config import NvmlConfig
from hostcollector.exposition import render
from hostcollector.model import NvmlSample
from hostcollector.sources.nvml import NvmlSource
from tests.nvml_stub import stub
from tests.nvml_stub.stub import SCENARIO_ENV, write_scenario
from tests.snapshots import snapshot_from_raw

pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")

ACME_VM, ORPHAN_VM = "a1a1a1a1-0000-4000-8000-000000000001", "d0d0d0d0-0000-4000-8000-000000000004"
GLOBEX_VMS = ["b1b1b1b1-0000-4000-8000-000000000002", "c1c1c1c1-0000-4000-8000-000000000003"]


class Gpus:
    """One NvmlSource, polled on demand, with the scenario file it reads."""

    def __init__(self, library: Path, scenario_path: Path, sysfs_root: Path) -> None:
        self.scenario_path = scenario_path
        self.source = NvmlSource(
            NvmlConfig(
                # A short interval keeps the re-init backoff short; polls run on demand. The
                # deadline is generous (check-config would want it <= interval): 50 ms failed
                # a CI run on a loaded 2-core machine.
                interval_seconds=0.05,
                timeout_seconds=5.0,
                library_path=str(library),
                sysfs_root=str(sysfs_root),
            )
        )
        self.loop = asyncio.new_event_loop()

    def write(self, scenario: dict[str, Any]) -> None:
        write_scenario(self.scenario_path, scenario)

    def poll(self) -> NvmlSample:
        return self.loop.run_until_complete(self.source.poll())

    def close(self) -> None:
        self.loop.run_until_complete(self.source.close())
        self.loop.close()


@pytest.fixture
def gpus(stub_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gpus]:
    path = tmp_path / "nvml.scn"
    monkeypatch.setenv(SCENARIO_ENV, str(path))
    source = Gpus(stub_path, path, tmp_path / "no-sysfs")
    yield source
    source.close()


def by_uuid(sample: NvmlSample) -> dict[str, Any]:
    return {g.uuid: g for g in sample.gpus}


def test_eight_gpus_with_every_field(gpus: Gpus) -> None:
    scenario = stub.eight_gpus()
    gpus.write(scenario)
    sample = gpus.poll()
    assert sample.nvml_available and sample.driver_version
    assert len(sample.gpus) == 8 and all(g.nvml_visible and not g.lost for g in sample.gpus)
    spec = scenario["gpus"][3]
    gpu = by_uuid(sample)[spec["uuid"]]
    assert gpu.pci_address == spec["pci_bus_id"].lower()[4:]
    assert gpu.power_watts == spec["power_mw"] / 1000
    assert gpu.energy_joules == spec["energy_mj"] / 1000
    assert gpu.memory_used_bytes == spec["memory_used_bytes"]
    assert (gpu.sm_clock_hz, gpu.memory_clock_hz) == (1980 * 10**6, 2619 * 10**6)
    assert gpu.clocks_event_reasons == 0x4
    assert gpu.gpu_utilization_ratio == pytest.approx((90 + 91 + 92 + 93) / 4 / 100)
    assert gpu.pcie_transmit_bytes_per_second == 4000 * 1024
    assert ("corrected", "aggregate", 30) in gpu.ecc_errors
    assert len({link for link, _, _ in gpu.nvlink_errors}) == 18
    assert (17, "crc_flit", 17) in gpu.nvlink_errors
    assert dict(by_uuid(sample)[scenario["gpus"][5]["uuid"]].remapped_rows)["pending"] == 1
    assert gpu.persistence_mode is not None and gpu.mig_mode is False


def test_utilization_carries_the_last_seen_timestamp(gpus: Gpus) -> None:
    scenario = stub.eight_gpus()
    gpus.write(scenario)
    uuid = scenario["gpus"][0]["uuid"]
    first = by_uuid(gpus.poll())[uuid].gpu_utilization_ratio
    # no new sample: the last mean stands (NVML answers NOT_FOUND)
    assert by_uuid(gpus.poll())[uuid].gpu_utilization_ratio == first
    newer = copy.deepcopy(scenario)
    last = max(ts for ts, _ in newer["gpus"][0]["utilization_samples"]["gpu"])
    newer["gpus"][0]["utilization_samples"]["gpu"].append((last + 1_000_000, 10))
    gpus.write(newer)
    # only the sample newer than the last seen counts, not the old ones again
    assert by_uuid(gpus.poll())[uuid].gpu_utilization_ratio == pytest.approx(0.10)


def test_xid_events_are_counted_per_gpu(gpus: Gpus) -> None:
    scenario = stub.eight_gpus()
    scenario["gpus"][2]["xid_events"] = [79, 79, 48]
    gpus.write(scenario)
    sample = gpus.poll()
    assert by_uuid(sample)[scenario["gpus"][2]["uuid"]].xid_errors == ((48, 1), (79, 2))
    assert by_uuid(sample)[scenario["gpus"][0]["uuid"]].xid_errors == ()
    # delivered once: a second poll counts nothing new
    assert by_uuid(gpus.poll())[scenario["gpus"][2]["uuid"]].xid_errors == ((48, 1), (79, 2))


def test_vgpu_host_attributes_each_instance_to_its_vm_and_tenant(gpus: Gpus) -> None:
    scenario = stub.vgpu_host([ACME_VM, ORPHAN_VM], GLOBEX_VMS)
    gpus.write(scenario)
    sample = gpus.poll()
    vgpus = {v.instance_id: v for g in sample.gpus for v in g.vgpus}
    assert sorted(vgpus) == [1, 2, 3, 4]
    assert vgpus[1].vm_id == ACME_VM and vgpus[1].vm_id_type == "uuid"
    assert vgpus[1].type_name == "NVIDIA A40-8Q" and vgpus[1].licensed is True
    assert vgpus[1].fb_usage_bytes == 4 * 2**30  # pynvml's own wrapper would read 0 here
    assert vgpus[3].licensed is False
    assert (vgpus[2].encoder_sessions, vgpus[2].encoder_fps, vgpus[2].fbc_sessions) == (2, 60, 1)
    assert vgpus[2].encoder_latency_seconds == pytest.approx(0.0009)
    assert vgpus[1].guest_pci_address == "0000:06:00.0" and vgpus[3].guest_pci_address is None
    assert vgpus[1].sm_utilization_ratio is not None and vgpus[1].gpu_instance_id is None

    base = snapshot_from_raw()
    attributed = attribute_gpus(sample.gpus, {}, {}, base.vms)
    owners = {
        v.instance_id: vm for a in attributed for v, vm in zip(a.gpu.vgpus, a.vgpu_vms, strict=True)
    }
    tenants = {vm.stats.uuid: vm.tenant_id for vm in base.vms}
    assert owners[1] == (ACME_VM, tenants[ACME_VM]) and tenants[ACME_VM]
    assert owners[2] == (GLOBEX_VMS[0], tenants[GLOBEX_VMS[0]])
    assert owners[3] == (ORPHAN_VM, "")
    text = render(dataclasses.replace(base, gpus=attributed, nvml_available=True)).decode()
    series = [
        (s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
    ]
    fb = [
        (labels, value)
        for name, labels, value in series
        if name == "hostcollector_vgpu_framebuffer_used_bytes"
    ]
    assert len(fb) == 4
    acme = next(labels for labels, _ in fb if labels["vm_uuid"] == ACME_VM)
    assert acme["tenant_id"] == tenants[ACME_VM] and acme["gpu_uuid"]
    # the shared physical GPUs belong to no single VM: no tenant on them
    assert {
        labels["tenant_id"] for name, labels, _ in series if name == "hostcollector_gpu_power_watts"
    } == {""}
    assert [v for name, _, v in series if name == "hostcollector_vgpus_unattributed"] == [0.0]
    assert [v for name, _, v in series if name == "hostcollector_gpus_unassigned"] == [0.0]


def test_mig_backed_vgpus_carry_their_gpu_instance(gpus: Gpus) -> None:
    vms = [ACME_VM, ORPHAN_VM, *GLOBEX_VMS]
    gpus.write(stub.mig_vgpu(vms))
    sample = gpus.poll()
    instances = {v.vm_id: v.gpu_instance_id for g in sample.gpus for v in g.vgpus}
    assert instances == {ACME_VM: 2, ORPHAN_VM: 3, GLOBEX_VMS[0]: 9, GLOBEX_VMS[1]: None}
    mig = next(g for g in sample.gpus if g.vgpus and g.vgpus[0].gpu_instance_id is not None)
    assert mig.mig_mode is True


def test_a_gpu_lost_mid_run_is_marked_and_the_others_carry_on(gpus: Gpus) -> None:
    scenario = stub.eight_gpus()
    gpus.write(scenario)
    before = gpus.poll()
    stub.lost_gpu_midrun(gpus.scenario_path, scenario, gpu_index=4)
    after = gpus.poll()
    assert after.nvml_available
    lost = by_uuid(after)[scenario["gpus"][4]["uuid"]]
    assert lost.lost and lost.pci_address == by_uuid(before)[lost.uuid].pci_address
    assert lost.power_watts is None  # its last values are not shown as current
    assert sum(1 for g in after.gpus if not g.lost and g.power_watts) == 7


def test_unsupported_fields_are_omitted_not_zero(gpus: Gpus) -> None:
    gpus.write(stub.not_supported())
    (gpu,) = gpus.poll().gpus
    assert gpu.ecc_errors == () and gpu.remapped_rows == () and gpu.nvlink_errors == ()
    assert gpu.energy_joules is None and gpu.pcie_replays is None and gpu.mig_mode is None
    assert gpu.power_watts is not None  # what the GPU does support is still read
    text = render(
        dataclasses.replace(
            snapshot_from_raw(), gpus=attribute_gpus((gpu,), {}, {}, ()), nvml_available=True
        )
    ).decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert "hostcollector_gpu_power_watts" in names
    assert not names & {
        "hostcollector_gpu_energy_joules_total",
        "hostcollector_gpu_ecc_errors_total",
    }


def test_version_mismatch_reinitialises_with_backoff(gpus: Gpus) -> None:
    broken = stub.eight_gpus() | {"init_error": "NVML_ERROR_LIB_RM_VERSION_MISMATCH"}
    gpus.write(broken)
    sample = gpus.poll()
    assert not sample.nvml_available and sample.gpus == ()
    healed = stub.eight_gpus()
    gpus.write(healed)
    # the next attempt waits for the backoff (one interval here), then NVML is back
    for _ in range(50):
        sample = gpus.poll()
        if sample.nvml_available:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert sample.nvml_available and len(sample.gpus) == 8


def test_vgpu_scheduler_state_of_gpus_hosting_vgpus(gpus: Gpus) -> None:
    scenario = stub.vgpu_host([ACME_VM, ORPHAN_VM], GLOBEX_VMS)
    gpus.write(scenario)
    policies = {
        g.name: (g.vgpu_scheduler_policy, g.vgpu_scheduler_arr_mode) for g in gpus.poll().gpus
    }
    assert policies == {"NVIDIA A40": (2, 2), "Tesla T4": (1, 0)}
    gpus.write(stub.eight_gpus())  # no vGPU: no scheduler series
    assert all(g.vgpu_scheduler_policy is None for g in gpus.poll().gpus)
