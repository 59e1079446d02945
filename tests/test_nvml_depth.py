"""The GPU source in depth, through the real pynvml against the NVML stand-in: field values in
one call (a field failing alone), GPM per GPU and per MIG GPU instance (attributed to the
MIG-backed vGPU's VM and tenant), a GPU without GPM saying so, NVSwitch fabric degraded, and
confidential computing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostcollector.attribution import attribute_gpus
from hostcollector.exposition import render
from hostcollector.model import NvmlSample
from hostcollector.sources.nvml_gpm import MIN_INTERVAL_SECONDS
from tests.nvml_stub import stub
from tests.nvml_stub.stub import SCENARIO_ENV
from tests.snapshots import snapshot_from_raw
from tests.test_nvml import ACME_VM, GLOBEX_VMS, ORPHAN_VM, Gpus

pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")


class ClosableGpus(Gpus):
    """Gpus whose source a test may close itself (the fixture's close then does nothing)."""

    closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            super().close()


@pytest.fixture
def gpus(
    stub_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ClosableGpus]:
    path = tmp_path / "nvml.scn"
    monkeypatch.setenv(SCENARIO_ENV, str(path))
    source = ClosableGpus(stub_path, path, tmp_path / "no-sysfs")
    yield source
    source.close()


def _live_samples() -> int:
    import ctypes

    lib = ctypes.CDLL(stub.SONAME)
    lib.hcstub_gpm_samples_live.restype = ctypes.c_uint
    return int(lib.hcstub_gpm_samples_live())


def _series(sample: NvmlSample) -> list[tuple[str, dict[str, str], float]]:
    base = snapshot_from_raw()
    attributed = attribute_gpus(sample.gpus, {}, {}, base.vms)
    snapshot = dataclasses.replace(
        base, gpus=attributed, nvml_available=True, nvml_conf_compute=sample.conf_compute
    )
    text = render(snapshot).decode()
    return [
        (s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
    ]


def _values(series: list[tuple[str, dict[str, str], float]], name: str) -> list[Any]:
    return [(labels, value) for n, labels, value in series if n == name]


def test_field_values_one_call_and_a_field_failing_alone(gpus: Gpus) -> None:
    scenario = stub.h100_gpm()
    gpus.write(scenario)
    spec = scenario["gpus"][0]
    (gpu,) = gpus.poll().gpus
    assert ("corrected", "volatile", spec["ecc_corrected_volatile"]) in gpu.ecc_errors
    assert gpu.energy_joules == spec["energy_mj"] / 1000
    assert gpu.retired_pages == (("single_bit", 2), ("double_bit", 1))
    assert gpu.retired_pages_pending is None  # NVML_FI_DEV_RETIRED_PENDING answered UNKNOWN
    assert gpu.nvml_errors == (("retired_pending", "unknown", 1),)
    assert (gpu.pcie_replay_rollovers, gpu.pcie_l0_to_recovery) == (1, 4)
    assert gpu.power_average_watts == 348.0 and gpu.power_instant_watts == spec["power_mw"] / 1000
    assert (17, "receive", (2_000_000 + 17) * 1024) in gpu.nvlink_data_bytes
    assert len(gpu.nvlink_errors) == 18 * 4
    assert gpu.nvml_duration_seconds is not None and 0 < gpu.nvml_duration_seconds < 1
    # counted per poll: a second poll counts the failing field again, the others still stand
    (again,) = gpus.poll().gpus
    assert again.nvml_errors == (("retired_pending", "unknown", 2),)
    series = _series(gpus.poll())
    errors = _values(series, "hostcollector_gpu_nvml_errors_total")
    assert [(labels["call"], labels["error"], v) for labels, v in errors] == [
        ("retired_pending", "unknown", 3.0)
    ]
    assert not _values(series, "hostcollector_gpu_retired_pages_pending")
    assert len(_values(series, "hostcollector_gpu_retired_pages")) == 2


def test_the_field_call_failing_whole_keeps_the_per_call_reads(gpus: Gpus) -> None:
    scenario = stub.h100_gpm()
    scenario["gpus"][0]["errors"] = {"nvmlDeviceGetFieldValues": "UNKNOWN"}
    gpus.write(scenario)
    (gpu,) = gpus.poll().gpus
    assert gpu.ecc_errors == () and gpu.energy_joules is None  # omitted, not zero
    assert gpu.power_watts is not None and gpu.temperature_celsius is not None
    assert gpu.nvml_errors == (("field_values", "unknown", 1),)


def test_gpm_per_gpu_over_the_interval_without_a_leak(gpus: Gpus) -> None:
    scenario = stub.h100_gpm()
    gpus.write(scenario)
    before = _live_samples()
    (gpu,) = gpus.poll().gpus  # the first poll waits once for a second sample
    assert gpu.gpm_supported is True
    gpm = gpu.gpm
    assert gpm is not None
    assert gpm.sm_active == pytest.approx(0.875)
    assert gpm.tensor_active == pytest.approx(0.63)
    assert gpm.pcie_receive == 1800 * 2**20 and gpm.nvlink_transmit == 19_000 * 2**20
    assert None not in dataclasses.astuple(gpm)  # all 11 answered
    for _ in range(3):
        (gpu,) = gpus.poll().gpus
        assert gpu.gpm is not None and gpu.gpm.sm_active == pytest.approx(0.875)
    assert _live_samples() == before + 1  # one kept for the next interval, no more
    series = _series(gpus.poll())
    assert _values(series, "hostcollector_gpu_gpm_supported")[0][1] == 1.0
    assert _values(series, "hostcollector_gpu_gpm_sm_occupancy_ratio")[0][1] == pytest.approx(0.41)
    gpus.close()
    assert _live_samples() == before  # freed at shutdown


def test_polls_closer_than_100_ms_still_span_100_ms(gpus: Gpus) -> None:
    gpus.write(stub.h100_gpm())
    gpus.poll()
    import time

    started = time.monotonic()
    (gpu,) = gpus.poll().gpus  # right after: waits for the 100 ms GPM needs
    assert time.monotonic() - started >= MIN_INTERVAL_SECONDS * 0.9
    assert gpu.gpm is not None and gpu.gpm.sm_active == pytest.approx(0.875)


def test_a_gpu_without_gpm_says_so(gpus: Gpus) -> None:
    gpus.write(stub.a100_no_gpm())
    (gpu,) = gpus.poll().gpus
    assert gpu.gpm_supported is False and gpu.gpm is None and gpu.gpm_instances == ()
    series = _series(gpus.poll())
    assert _values(series, "hostcollector_gpu_gpm_supported")[0][1] == 0.0
    assert not [n for n, _, _ in series if n.startswith("hostcollector_gpu_gpm_sm")]
    assert gpu.fabric is None and gpu.power_average_watts is None


def test_gpm_per_mig_instance_attributed_to_the_vgpus_vm_and_tenant(gpus: Gpus) -> None:
    vms = [ACME_VM, ORPHAN_VM, *GLOBEX_VMS]
    gpus.write(stub.mig_vgpu_gpm(vms))
    sample = gpus.poll()
    mig = next(g for g in sample.gpus if g.mig_mode)
    active = {i.gpu_instance_id: i.metrics.sm_active for i in mig.gpm_instances}
    assert active == pytest.approx({2: 0.40, 3: 0.20, 9: 0.10})
    timesliced = next(g for g in sample.gpus if not g.mig_mode)
    assert timesliced.gpm_instances == () and timesliced.gpm is not None
    assert timesliced.gpm.sm_active == 0.875
    tenants = {vm.stats.uuid: vm.tenant_id for vm in snapshot_from_raw().vms}
    series = _series(sample)
    per_instance = {
        labels["gpu_instance_id"]: (labels["vm_uuid"], labels["tenant_id"], value)
        for labels, value in _values(series, "hostcollector_gpu_instance_gpm_sm_active_ratio")
    }
    assert per_instance == {
        "2": (ACME_VM, tenants[ACME_VM], pytest.approx(0.40)),
        "3": (ORPHAN_VM, "", pytest.approx(0.20)),
        "9": (GLOBEX_VMS[0], tenants[GLOBEX_VMS[0]], pytest.approx(0.10)),
    }
    assert tenants[ACME_VM] and tenants[GLOBEX_VMS[0]]
    # a GPU instance whose vGPU went away: its kept sample is freed
    before = _live_samples()
    fewer = stub.mig_vgpu_gpm(vms)
    fewer["gpus"][0]["vgpus"] = fewer["gpus"][0]["vgpus"][:1]
    gpus.write(fewer)
    mig = next(g for g in gpus.poll().gpus if g.mig_mode)
    assert [i.gpu_instance_id for i in mig.gpm_instances] == [2]
    assert _live_samples() == before - 2


def test_a_lost_gpu_frees_its_gpm_samples(gpus: Gpus) -> None:
    scenario = stub.h100_gpm()
    gpus.write(scenario)
    before = _live_samples()
    gpus.poll()
    assert _live_samples() == before + 1
    stub.lost_gpu_midrun(gpus.scenario_path, scenario, 0)
    (gpu,) = gpus.poll().gpus
    assert gpu.lost and gpu.gpm is None
    assert _live_samples() == before


def test_fabric_degraded_and_conf_compute_visible(gpus: Gpus) -> None:
    scenario = stub.hgx_fabric_degraded()
    gpus.write(scenario)
    sample = gpus.poll()
    fabric = {g.uuid: g.fabric for g in sample.gpus}
    degraded = fabric[scenario["gpus"][2]["uuid"]]
    assert degraded is not None and degraded.health_summary == 3
    assert degraded.health_mask & 0x3 == 1  # NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_TRUE
    failed = fabric[scenario["gpus"][6]["uuid"]]
    assert failed is not None and (failed.state, failed.status) == (3, 27)
    assert sample.conf_compute is not None and sample.conf_compute.gpus_ready is True
    series = _series(sample)
    summaries = sorted(v for _, v in _values(series, "hostcollector_gpu_fabric_health_summary"))
    assert summaries == [1.0] * 6 + [2.0, 3.0]
    assert _values(series, "hostcollector_nvml_conf_compute_feature")[0][1] == 1.0
    assert _values(series, "hostcollector_nvml_conf_compute_gpus_ready")[0][1] == 1.0
    gpus.write(stub.eight_gpus())  # no fabric, no confidential computing: no series, no zero
    sample = gpus.poll()
    assert all(g.fabric is None for g in sample.gpus) and sample.conf_compute is None
    names = {n for n, _, _ in _series(sample)}
    assert not {n for n in names if "fabric" in n or "conf_compute" in n}
