"""GPU Performance Monitoring (GPM, Hopper and newer): profiling metrics without DCGM.

Facts from nvml.h (nvidia-nvml-dev 13, "GPM" section) and NVIDIA's NVML API reference:

- nvmlGpmQueryDeviceSupport says whether a GPU has GPM; nvmlGpmSampleGet (whole GPU) and
  nvmlGpmMigSampleGet (one MIG GPU instance) fill a sample buffer from nvmlGpmSampleAlloc;
  nvmlGpmMetricsGet turns two samples into metrics over the time between them, each metric with
  its own nvmlReturn. The two samples should be more than 100 ms apart ("due to the internal
  sample refresh rate").
- Buffers are the caller's: every nvmlGpmSampleAlloc needs its nvmlGpmSampleFree.

So one sample is kept per GPU (and per GPU instance) from one poll to the next: the metrics are
over the poll interval. Where there is no previous sample (the first poll, a new GPU instance)
or it is under 100 ms old, a second one is taken after one wait per poll, not per GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hostcollector.model import GpmMetrics

log = logging.getLogger(__name__)

MIN_INTERVAL_SECONDS = 0.1
MIB = 1024 * 1024

# NVML_GPM_METRIC_* id -> (name, scale to the exported unit). Percentages become 0-1 ratios;
# MiB/s become bytes/s. SM_UTIL ("percentage of SMs that were busy") is DCGM's SM active.
METRICS: dict[int, tuple[str, float]] = {
    2: ("sm_active", 0.01),  # NVML_GPM_METRIC_SM_UTIL
    3: ("sm_occupancy", 0.01),  # NVML_GPM_METRIC_SM_OCCUPANCY
    5: ("tensor_active", 0.01),  # NVML_GPM_METRIC_ANY_TENSOR_UTIL
    10: ("dram_bandwidth_utilization", 0.01),  # NVML_GPM_METRIC_DRAM_BW_UTIL
    11: ("fp64_active", 0.01),  # NVML_GPM_METRIC_FP64_UTIL
    12: ("fp32_active", 0.01),  # NVML_GPM_METRIC_FP32_UTIL
    13: ("fp16_active", 0.01),  # NVML_GPM_METRIC_FP16_UTIL
    20: ("pcie_transmit", MIB),  # NVML_GPM_METRIC_PCIE_TX_PER_SEC, MiB/s
    21: ("pcie_receive", MIB),  # NVML_GPM_METRIC_PCIE_RX_PER_SEC
    61: ("nvlink_transmit", MIB),  # NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC
    60: ("nvlink_receive", MIB),  # NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC
}

Key = tuple[str, int | None]  # (GPU UUID, GPU instance id or None for the whole GPU)


@dataclass(frozen=True, slots=True)
class Target:
    key: Key
    handle: Any


@dataclass
class _Sample:
    buffer: Any
    taken: float  # time.monotonic()


class GpmSampler:
    """The samples kept between polls, and the pairing of each with the next. Lane thread only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._previous: dict[Key, _Sample] = {}
        self._clock = clock

    def collect(self, nv: Any, targets: Sequence[Target]) -> dict[Key, GpmMetrics]:
        """Metrics of every target over the interval since its previous sample. A target whose
        sample fails is left out of the result (and its GPU reports gpm_supported anyway)."""
        wanted = {t.key for t in targets}
        for key in [k for k in self._previous if k not in wanted]:
            self._free(nv, self._previous.pop(key))  # GPU or GPU instance gone
        current: dict[Key, _Sample] = {}
        waiting: list[Target] = []
        for target in targets:
            sample = self._take(nv, target)
            if sample is None:
                continue
            previous = self._previous.get(target.key)
            if previous is None:
                self._previous[target.key] = sample
                waiting.append(target)
            elif sample.taken - previous.taken < MIN_INTERVAL_SECONDS:
                self._free(nv, sample)
                waiting.append(target)
            else:
                current[target.key] = sample
        if waiting:
            oldest = max(self._previous[t.key].taken for t in waiting)
            time.sleep(max(0.0, oldest + MIN_INTERVAL_SECONDS - self._clock()))
            for target in waiting:
                sample = self._take(nv, target)
                if sample is not None:
                    current[target.key] = sample
        found = {}
        for key, sample in current.items():
            previous = self._previous[key]
            metrics = self._metrics(nv, previous, sample)
            self._free(nv, previous)
            self._previous[key] = sample
            if metrics is not None:
                found[key] = metrics
        return found

    def drop_gpu(self, nv: Any, uuid: str) -> None:
        """Free the samples of a GPU that is lost."""
        for key in [k for k in self._previous if k[0] == uuid]:
            self._free(nv, self._previous.pop(key))

    def close(self, nv: Any) -> None:
        for sample in self._previous.values():
            self._free(nv, sample)
        self._previous.clear()

    @property
    def kept(self) -> int:
        return len(self._previous)

    def _take(self, nv: Any, target: Target) -> _Sample | None:
        try:
            buffer = nv.nvmlGpmSampleAlloc()
        except nv.NVMLError as exc:
            log.debug("nvmlGpmSampleAlloc: %s", exc)
            return None
        uuid, instance = target.key
        try:
            if instance is None:
                nv.nvmlGpmSampleGet(target.handle, buffer)
            else:
                nv.nvmlGpmMigSampleGet(target.handle, instance, buffer)
        except nv.NVMLError as exc:
            log.debug("GPM sample of %s/%s: %s", uuid, instance, exc)
            self._free(nv, _Sample(buffer, 0.0))
            return None
        return _Sample(buffer, self._clock())

    def _metrics(self, nv: Any, first: _Sample, second: _Sample) -> GpmMetrics | None:
        request = nv.c_nvmlGpmMetricsGet_t()
        request.version = nv.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(METRICS)
        request.sample1 = first.buffer
        request.sample2 = second.buffer
        for i, metric_id in enumerate(METRICS):
            request.metrics[i].metricId = metric_id
        try:
            nv.nvmlGpmMetricsGet(request)
        except nv.NVMLError as exc:
            log.debug("nvmlGpmMetricsGet: %s", exc)
            return None
        found = {}
        for i in range(len(METRICS)):
            metric = request.metrics[i]
            if metric.nvmlReturn != 0:
                continue  # this metric alone: not on this GPU or in this mode
            name, scale = METRICS[int(metric.metricId)]
            found[name] = float(metric.value) * scale
        return GpmMetrics(**found)

    @staticmethod
    def _free(nv: Any, sample: _Sample) -> None:
        try:
            nv.nvmlGpmSampleFree(sample.buffer)
        except nv.NVMLError as exc:
            log.debug("nvmlGpmSampleFree: %s", exc)
