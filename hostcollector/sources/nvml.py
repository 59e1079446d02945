"""The GPU source: NVML for GPUs the host driver owns, sysfs for those it cannot see.

The only module that imports `pynvml` (NVIDIA's nvidia-ml-py), lazily. Every NVML call runs in
this source's own thread lane with a deadline. Facts it relies on (NVML's nvml.h and NVIDIA's
NVML API reference):

- GPUs are keyed by UUID and PCI address, never by index (indexes shift when one drops out).
- NVML_ERROR_GPU_IS_LOST marks that GPU lost; the others carry on. NOT_SUPPORTED (and the
  like) omit that one field: a missing value is never a zero.
- The utilization sampling APIs are only right with the last seen timestamp passed back, so it
  is kept per GPU and per kind between polls.
- A driver reload or upgrade gives "driver/library version mismatch" or "uninitialized" until
  NVML is initialised again: re-initialise, with backoff. No library or no driver: the source
  still reports the GPUs sysfs sees (a passthrough-only host has no nvidia.ko at all).
- Two pynvml 13.x wrappers are wrong, so the C functions are called here directly, through
  pynvml's own function pointers: nvmlVgpuInstanceGetVmID passes an 80-byte buffer but tells
  NVML it holds 128; nvmlVgpuInstanceGetFbUsage reads an unsigned long long into a 32-bit int
  (a vGPU using 4 GiB reads as 0).
- nvmlVgpuInstanceGetGpuPciId is the vGPU's address inside the guest, not the host VF: a vGPU is
  joined to its VM by mdev UUID or by the VM id the driver gives (the domain UUID on KVM).
- The counters (ECC, retired pages, remapped rows, PCIe replays and recoveries, NVLink errors and
  throughput per link, energy, power) come from one nvmlDeviceGetFieldValues call per GPU per
  poll, each field with its own return code (nvml_fields.py); GPM profiling metrics from two
  samples across the poll interval (nvml_gpm.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from hostcollector.config import NvmlConfig
from hostcollector.errors import SourceError
from hostcollector.model import (
    ConfCompute,
    FabricInfo,
    GpmInstance,
    GpuStats,
    NvmlSample,
    PcieHealth,
    VgpuStats,
)
from hostcollector.sources import nvml_fields as fi
from hostcollector.sources.gpu_sysfs import scan_nvidia_gpus
from hostcollector.sources.nvml_gpm import GpmSampler, Target
from hostcollector.sources.worker import BlockingLane

log = logging.getLogger(__name__)

REINIT_BACKOFF_MAX_SECONDS = 300.0
MHZ = 1_000_000
KIB = 1024


def normalize_pci(bus_id: str) -> str:
    """NVML's "00000000:17:00.0" -> sysfs's "0000:17:00.0"."""
    domain, _, rest = bus_id.strip().lower().partition(":")
    return f"{int(domain, 16):04x}:{rest}" if rest else bus_id.lower()


class _Lost(Exception):
    """NVML_ERROR_GPU_IS_LOST for this GPU."""


class _Reinit(Exception):
    """NVML must be initialised again (driver reloaded, library/driver mismatch)."""


@dataclass
class _State:
    """What outlives one poll, touched only from the lane thread."""

    initialized: bool = False
    driver_version: str | None = None
    next_init: float = 0.0
    backoff: float = 0.0
    last_error: str | None = None
    last_seen: dict[tuple[str, int], int] = field(default_factory=dict)
    last_ratio: dict[tuple[str, int], float] = field(default_factory=dict)
    vgpu_last_seen: dict[str, int] = field(default_factory=dict)
    vgpu_last: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)
    event_set: Any = None
    registered: set[str] = field(default_factory=set)
    xids: dict[str, Counter[int]] = field(default_factory=dict)
    identity: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (uuid, pci)
    nvlinks: dict[str, int] = field(default_factory=dict)  # uuid -> links, found once per init
    # uuid -> (field or call, NVML error) -> answers other than NOT_SUPPORTED since the start
    errors: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)
    gpm: GpmSampler = field(default_factory=GpmSampler)


class NvmlSource:
    name = "nvml"

    def __init__(self, config: NvmlConfig, *, record_raw: bool = False) -> None:
        self.config = config
        self._record_raw = record_raw
        self._lane = BlockingLane("nvml")
        self._state = _State()
        self._pynvml: Any = None

    @property
    def interval_seconds(self) -> float:
        return self.config.interval_seconds

    async def poll(self) -> NvmlSample:
        return await self._lane.call(self._collect, self.config.timeout_seconds)

    async def close(self) -> None:
        if not self._lane.busy:
            with contextlib.suppress(SourceError):
                await self._lane.call(self._shutdown, self.config.timeout_seconds)
        self._lane.shutdown()

    # -- lane thread -----------------------------------------------------------------------------

    def _collect(self) -> NvmlSample:
        pci = scan_nvidia_gpus(self.config.sysfs_root)
        nvml_gpus: list[GpuStats] = []
        available = self._ensure_initialized()
        if available:
            try:
                nvml_gpus = self._read_gpus()
            except _Reinit as exc:
                self._shutdown()
                self._schedule_reinit(f"NVML needs re-initialising: {exc}")
                available = False
        conf_compute = self._conf_compute() if available else None
        gpus = self._merge(nvml_gpus, pci)
        raw = None
        if self._record_raw:
            raw = {"nvml_available": available, "gpus": [asdict(g) for g in gpus]}
        return NvmlSample(
            available,
            self._state.driver_version if available else None,
            gpus,
            raw,
            conf_compute,
        )

    def _nvml(self) -> Any:
        if self._pynvml is None:
            if self.config.library_path:
                # pynvml opens "libnvidia-ml.so.1" by name; a library with that soname already
                # loaded from this path is the one it gets.
                try:
                    ctypes.CDLL(self.config.library_path, mode=os.RTLD_GLOBAL)
                except OSError as exc:
                    raise SourceError(
                        "no_library", f"cannot load {self.config.library_path}: {exc}"
                    ) from exc
            try:
                import pynvml
            except ImportError as exc:
                raise SourceError("no_library", f"nvidia-ml-py is not installed: {exc}") from exc
            self._pynvml = pynvml
        return self._pynvml

    def _ensure_initialized(self) -> bool:
        state = self._state
        if state.initialized:
            return True
        if time.monotonic() < state.next_init:
            return False
        try:
            nv = self._nvml()
        except SourceError as exc:
            self._schedule_reinit(str(exc))
            return False
        try:
            nv.nvmlInit()
            state.driver_version = _text(nv.nvmlSystemGetDriverVersion())
            state.event_set = _optional(nv, nv.nvmlEventSetCreate)
        except nv.NVMLError as exc:
            self._schedule_reinit(f"nvmlInit failed: {exc}")
            return False
        state.initialized = True
        state.backoff = 0.0
        state.registered.clear()
        state.nvlinks.clear()
        if state.last_error is not None:
            log.info(
                "NVML initialised again (driver %s)", state.driver_version, extra={"source": "nvml"}
            )
        state.last_error = None
        return True

    def _schedule_reinit(self, why: str) -> None:
        state = self._state
        state.backoff = min(
            max(self.config.interval_seconds, state.backoff * 2), REINIT_BACKOFF_MAX_SECONDS
        )
        state.next_init = time.monotonic() + state.backoff
        if why != state.last_error:
            # NVML absent is normal on a passthrough-only host: one line, not one per poll.
            log.info(
                "nvml: %s; sysfs GPUs only, next attempt in %.0f s",
                why,
                state.backoff,
                extra={"source": "nvml"},
            )
        state.last_error = why

    def _shutdown(self) -> None:
        state = self._state
        if not state.initialized:
            return
        nv = self._pynvml
        state.gpm.close(nv)  # before nvmlShutdown: the buffers are the library's
        try:
            if state.event_set is not None:
                nv.nvmlEventSetFree(state.event_set)
            nv.nvmlShutdown()
        except nv.NVMLError as exc:
            log.debug("nvmlShutdown: %s", exc)
        state.initialized = False
        state.event_set = None

    def _read_gpus(self) -> list[GpuStats]:
        nv = self._pynvml
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as exc:
            raise _Reinit(str(exc)) from exc
        gpus = []
        targets: list[Target] = []
        for index in range(count):
            started = time.monotonic()
            try:
                gpu, handle = self._read_gpu(index)
            except _Lost:
                uuid, pci = self._state.identity.get(index, ("", ""))
                log.debug("GPU %d (%s) is lost", index, uuid or "unknown")
                self._state.gpm.drop_gpu(nv, uuid)
                gpus.append(GpuStats(pci_address=pci, nvml_visible=True, uuid=uuid, lost=True))
                continue
            gpus.append(replace(gpu, nvml_duration_seconds=time.monotonic() - started))
            if gpu.gpm_supported:
                targets.append(Target((gpu.uuid, None), handle))
                # GPU instances of MIG-backed vGPUs: the ones a tenant's VM holds.
                instances = {v.gpu_instance_id for v in gpu.vgpus if v.gpu_instance_id is not None}
                targets += [Target((gpu.uuid, gi), handle) for gi in sorted(instances)]
        return self._with_gpm(gpus, targets)

    def _with_gpm(self, gpus: list[GpuStats], targets: list[Target]) -> list[GpuStats]:
        """Each GPM-capable GPU with its metrics, the whole GPU's and its GPU instances'."""
        metrics = self._state.gpm.collect(self._pynvml, targets)
        if not metrics:
            return gpus
        out = []
        for gpu in gpus:
            instances = tuple(
                GpmInstance(gi, metrics[(uuid, gi)])
                for uuid, gi in sorted(k for k in metrics if k[0] == gpu.uuid and k[1] is not None)
                if gi is not None
            )
            whole = metrics.get((gpu.uuid, None))
            out.append(replace(gpu, gpm=whole, gpm_instances=instances))
        return out

    @contextlib.contextmanager
    def _gone_raises(self) -> Iterator[None]:
        """NVML errors that end more than one read: _Lost (this GPU) and _Reinit (NVML)."""
        nv = self._pynvml
        try:
            yield
        except nv.NVMLError_GpuIsLost as exc:
            raise _Lost from exc
        except (
            nv.NVMLError_Uninitialized,
            nv.NVMLError_DriverNotLoaded,
            nv.NVMLError_LibRmVersionMismatch,
        ) as exc:
            raise _Reinit(str(exc)) from exc

    def _call(self, fn: Any, *args: Any) -> Any:
        """One NVML read: None where unsupported; _Lost / _Reinit where the GPU or NVML is gone."""
        nv = self._pynvml
        try:
            with self._gone_raises():
                return fn(*args)
        except nv.NVMLError as exc:
            # NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND, NOT_FOUND, ...: omit the field
            log.debug("%s: %s", getattr(fn, "__name__", fn), exc)
            return None

    def _read_gpu(self, index: int) -> tuple[GpuStats, Any]:
        nv = self._pynvml
        call = self._call
        handle = call(nv.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            raise _Lost
        uuid = _text(call(nv.nvmlDeviceGetUUID, handle)) or ""
        pci_info = call(nv.nvmlDeviceGetPciInfo, handle)
        pci = normalize_pci(_text(pci_info.busId) or "") if pci_info is not None else ""
        self._state.identity[index] = (uuid, pci)
        # v2 separates memory the driver reserves from what is used; v1 counts it as used
        memory = call(nv.nvmlDeviceGetMemoryInfo, handle, nv.nvmlMemory_v2) or call(
            nv.nvmlDeviceGetMemoryInfo, handle
        )
        power = call(nv.nvmlDeviceGetPowerUsage, handle)
        fields = self._fields(handle, uuid)
        energy = fields.get(fi.TOTAL_ENERGY_CONSUMPTION)
        average = fields.get(fi.POWER_AVERAGE)
        instant = fields.get(fi.POWER_INSTANT)
        links = self._state.nvlinks.get(uuid, 0)
        sm_clock = call(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM)
        mem_clock = call(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_MEM)
        tx = call(nv.nvmlDeviceGetPcieThroughput, handle, nv.NVML_PCIE_UTIL_TX_BYTES)
        rx = call(nv.nvmlDeviceGetPcieThroughput, handle, nv.NVML_PCIE_UTIL_RX_BYTES)
        persistence = call(nv.nvmlDeviceGetPersistenceMode, handle)
        mig = call(nv.nvmlDeviceGetMigMode, handle)
        vgpus = self._vgpus(handle, uuid)
        scheduler = call(nv.nvmlDeviceGetVgpuSchedulerState, handle) if vgpus else None
        gpm = call(nv.nvmlGpmQueryDeviceSupport, handle)
        gpu = GpuStats(
            pci_address=pci,
            nvml_visible=True,
            uuid=uuid,
            name=_text(call(nv.nvmlDeviceGetName, handle)),
            memory_total_bytes=memory.total if memory is not None else None,
            memory_used_bytes=memory.used if memory is not None else None,
            power_watts=power / 1000 if power is not None else None,
            energy_joules=energy / 1000 if energy is not None else None,
            temperature_celsius=call(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU),
            sm_clock_hz=sm_clock * MHZ if sm_clock is not None else None,
            memory_clock_hz=mem_clock * MHZ if mem_clock is not None else None,
            clocks_event_reasons=call(nv.nvmlDeviceGetCurrentClocksEventReasons, handle),
            gpu_utilization_ratio=self._utilization(handle, uuid, nv.NVML_GPU_UTILIZATION_SAMPLES),
            memory_utilization_ratio=self._utilization(
                handle, uuid, nv.NVML_MEMORY_UTILIZATION_SAMPLES
            ),
            encoder_utilization_ratio=self._utilization(
                handle, uuid, nv.NVML_ENC_UTILIZATION_SAMPLES
            ),
            decoder_utilization_ratio=self._utilization(
                handle, uuid, nv.NVML_DEC_UTILIZATION_SAMPLES
            ),
            ecc_errors=tuple(
                (error, counter, int(value))
                for field_id, error, counter in (
                    (fi.ECC_SBE_VOL_TOTAL, "corrected", "volatile"),
                    (fi.ECC_SBE_AGG_TOTAL, "corrected", "aggregate"),
                    (fi.ECC_DBE_VOL_TOTAL, "uncorrected", "volatile"),
                    (fi.ECC_DBE_AGG_TOTAL, "uncorrected", "aggregate"),
                )
                if (value := fields.get(field_id)) is not None
            ),
            remapped_rows=tuple(
                (kind, int(value))
                for field_id, kind in (
                    (fi.REMAPPED_COR, "correctable"),
                    (fi.REMAPPED_UNC, "uncorrectable"),
                    (fi.REMAPPED_PENDING, "pending"),
                    (fi.REMAPPED_FAILURE, "failure"),
                )
                if (value := fields.get(field_id)) is not None
            ),
            pcie_replays=_int(fields.get(fi.PCIE_REPLAY_COUNTER)),
            pcie_transmit_bytes_per_second=tx * KIB if tx is not None else None,
            pcie_receive_bytes_per_second=rx * KIB if rx is not None else None,
            nvlink_errors=tuple(fi.link_values(fields, fi.LINK_ERROR_FIELDS, links)),
            xid_errors=self._xids(handle, uuid),
            persistence_mode=bool(persistence) if persistence is not None else None,
            compute_mode=call(nv.nvmlDeviceGetComputeMode, handle),
            mig_mode=bool(mig[0]) if mig is not None else None,
            vgpus=vgpus,
            vgpu_scheduler_policy=scheduler.schedulerPolicy if scheduler is not None else None,
            vgpu_scheduler_arr_mode=scheduler.arrMode if scheduler is not None else None,
            retired_pages=tuple(
                (cause, int(value))
                for field_id, cause in (
                    (fi.RETIRED_SBE, "single_bit"),
                    (fi.RETIRED_DBE, "double_bit"),
                )
                if (value := fields.get(field_id)) is not None
            ),
            retired_pages_pending=fields.flag(fi.RETIRED_PENDING),
            pcie_replay_rollovers=_int(fields.get(fi.PCIE_REPLAY_ROLLOVER_COUNTER)),
            pcie_l0_to_recovery=_int(fields.get(fi.PCIE_L0_TO_RECOVERY_COUNTER)),
            power_average_watts=average / 1000 if average is not None else None,
            power_instant_watts=instant / 1000 if instant is not None else None,
            nvlink_data_bytes=tuple(
                (link, direction, kib * KIB)
                for link, direction, kib in fi.link_values(fields, fi.LINK_THROUGHPUT_FIELDS, links)
            ),
            nvml_errors=tuple(
                (name, error, n)
                for (name, error), n in sorted(self._state.errors.get(uuid, Counter()).items())
            ),
            gpm_supported=bool(gpm.isSupportedDevice) if gpm is not None else None,
            fabric=self._fabric(handle),
        )
        return gpu, handle

    def _fields(self, handle: Any, uuid: str) -> fi.FieldReadings:
        """The poll's one nvmlDeviceGetFieldValues call; each failing field counted alone."""
        nv = self._pynvml
        state = self._state
        if uuid not in state.nvlinks:
            state.nvlinks[uuid] = self._nvlink_count(handle)
        counts = state.errors.setdefault(uuid, Counter())
        try:
            with self._gone_raises():
                values = nv.nvmlDeviceGetFieldValues(handle, fi.request(state.nvlinks[uuid]))
        except nv.NVMLError as exc:
            if exc.value != nv.NVML_ERROR_NOT_SUPPORTED:
                counts[("field_values", _error_name(nv, exc.value))] += 1
            return fi.FieldReadings({}, ())
        readings = fi.parse(values, lambda code: _error_name(nv, code))
        counts.update(readings.errors)
        return readings

    def _nvlink_count(self, handle: Any) -> int:
        """Links until the first that NVML does not know (none: no NVLink); the count of a
        GPU's links does not change while the driver runs."""
        nv = self._pynvml
        links = 0
        while links < nv.NVML_NVLINK_MAX_LINKS:
            if self._call(nv.nvmlDeviceGetNvLinkState, handle, links) is None:
                break
            links += 1
        return links

    def _fabric(self, handle: Any) -> FabricInfo | None:
        nv = self._pynvml
        info = nv.c_nvmlGpuFabricInfo_v3_t()
        info.version = nv.nvmlGpuFabricInfo_v3
        if self._call(nv.nvmlDeviceGetGpuFabricInfoV, handle, ctypes.byref(info)) is None:
            return None  # NOT_SUPPORTED: no NVSwitch fabric (or a driver before v3)
        return FabricInfo(
            state=int(info.state),
            status=int(info.status),
            clique_id=int(info.cliqueId),
            health_mask=int(info.healthMask),
            health_summary=int(info.healthSummary),
        )

    def _conf_compute(self) -> ConfCompute | None:
        nv = self._pynvml
        try:
            state = self._call(nv.nvmlSystemGetConfComputeState)
            ready = self._call(nv.nvmlSystemGetConfComputeGpusReadyState) if state else None
        except (_Lost, _Reinit):
            return None
        if state is None:
            return None  # NOT_SUPPORTED: no confidential computing here
        return ConfCompute(
            environment=int(state.environment),
            feature=int(state.ccFeature),
            devtools_mode=int(state.devToolsMode),
            gpus_ready=bool(ready) if ready is not None else None,
        )

    def _utilization(self, handle: Any, uuid: str, kind: int) -> float | None:
        """Mean of the samples NVML took since the last poll, as a 0-1 ratio."""
        nv = self._pynvml
        key = (uuid, kind)
        try:
            _value_type, samples = nv.nvmlDeviceGetSamples(
                handle, kind, self._state.last_seen.get(key, 0)
            )
        except nv.NVMLError_NotFound:
            return self._state.last_ratio.get(key)  # no new sample since the last poll
        except nv.NVMLError_GpuIsLost as exc:
            raise _Lost from exc
        except nv.NVMLError:
            return None
        if not samples:
            return self._state.last_ratio.get(key)
        self._state.last_seen[key] = max(s.timeStamp for s in samples)
        ratio: float = sum(s.sampleValue.uiVal for s in samples) / len(samples) / 100
        self._state.last_ratio[key] = ratio
        return ratio

    def _xids(self, handle: Any, uuid: str) -> tuple[tuple[int, int], ...]:
        """Xid events since the collector started, counted per Xid (drained every poll)."""
        nv = self._pynvml
        state = self._state
        counts = state.xids.setdefault(uuid, Counter())
        if state.event_set is None:
            return tuple(sorted(counts.items()))
        if uuid not in state.registered:
            # Unsupported on some GPUs: tried once per initialisation, not every poll.
            _optional(
                nv,
                nv.nvmlDeviceRegisterEvents,
                handle,
                nv.nvmlEventTypeXidCriticalError,
                state.event_set,
            )
            state.registered.add(uuid)
        # One event set serves every GPU: drain it once per poll, on the first GPU's turn, and
        # file each event under the GPU it names.
        while True:
            try:
                event = nv.nvmlEventSetWait_v2(state.event_set, 0)
            except nv.NVMLError:
                break  # NVML_ERROR_TIMEOUT: nothing pending
            try:
                event_uuid = _text(nv.nvmlDeviceGetUUID(event.device))
            except nv.NVMLError:
                event_uuid = uuid
            state.xids.setdefault(event_uuid or uuid, Counter())[int(event.eventData)] += 1
        return tuple(sorted(counts.items()))

    def _vgpus(self, handle: Any, uuid: str) -> tuple[VgpuStats, ...]:
        nv = self._pynvml
        call = self._call
        instances = call(nv.nvmlDeviceGetActiveVgpus, handle)
        if not instances:
            return ()
        utilization = self._vgpu_utilization(handle, uuid)
        found = []
        for instance in instances:
            vm = self._vm_id(instance)
            if vm is None:
                continue  # destroyed between the listing and now
            vm_id, vm_id_type = vm
            type_id = call(nv.nvmlVgpuInstanceGetType, instance)
            license_info = call(nv.nvmlVgpuInstanceGetLicenseInfo_v2, instance)
            encoder = call(nv.nvmlVgpuInstanceGetEncoderStats, instance)
            fbc = call(nv.nvmlVgpuInstanceGetFBCStats, instance)
            gpu_instance = call(nv.nvmlVgpuInstanceGetGpuInstanceId, instance)
            guest_pci = _text(call(nv.nvmlVgpuInstanceGetGpuPciId, instance))
            # no new sample since the last poll: the last mean stands
            means = utilization.get(instance) or self._state.vgpu_last.get(instance)
            sm, mem, enc, dec = means if means is not None else (None, None, None, None)
            found.append(
                VgpuStats(
                    instance_id=int(instance),
                    vm_id=vm_id,
                    vm_id_type=vm_id_type,
                    uuid=_text(call(nv.nvmlVgpuInstanceGetUUID, instance)),
                    mdev_uuid=(_text(call(nv.nvmlVgpuInstanceGetMdevUUID, instance)) or "").lower()
                    or None,
                    guest_pci_address=normalize_pci(guest_pci)
                    if guest_pci and guest_pci.strip("0:.")
                    else None,
                    type_name=_text(call(nv.nvmlVgpuTypeGetName, type_id))
                    if type_id is not None
                    else None,
                    # NVML answers INVALID_GPU_INSTANCE_ID (0xFFFFFFFF) for a vGPU not on MIG
                    gpu_instance_id=gpu_instance
                    if gpu_instance is not None and gpu_instance != 0xFFFFFFFF
                    else None,
                    fb_usage_bytes=self._fb_usage(instance),
                    licensed=bool(license_info.isLicensed) if license_info is not None else None,
                    sm_utilization_ratio=sm,
                    memory_utilization_ratio=mem,
                    encoder_utilization_ratio=enc,
                    decoder_utilization_ratio=dec,
                    encoder_sessions=encoder[0] if encoder is not None else None,
                    encoder_fps=encoder[1] if encoder is not None else None,
                    encoder_latency_seconds=encoder[2] / 1e6 if encoder is not None else None,
                    fbc_sessions=fbc.sessionsCount if fbc is not None else None,
                    fbc_fps=fbc.averageFPS if fbc is not None else None,
                    fbc_latency_seconds=fbc.averageLatency / 1e6 if fbc is not None else None,
                )
            )
        return tuple(found)

    def _fb_usage(self, instance: int) -> int | None:
        nv = self._pynvml
        used = ctypes.c_ulonglong(0)
        fn = nv._nvmlGetFunctionPointer("nvmlVgpuInstanceGetFbUsage")
        try:
            nv._nvmlCheckReturn(fn(ctypes.c_uint(instance), ctypes.byref(used)))
        except nv.NVMLError_GpuIsLost as exc:
            raise _Lost from exc
        except nv.NVMLError:
            return None
        return used.value

    def _vm_id(self, instance: int) -> tuple[str, str] | None:
        nv = self._pynvml
        size = nv.NVML_GRID_LICENSE_BUFFER_SIZE
        buffer = ctypes.create_string_buffer(size)
        id_type = ctypes.c_uint(0)
        fn = nv._nvmlGetFunctionPointer("nvmlVgpuInstanceGetVmID")
        try:
            nv._nvmlCheckReturn(
                fn(ctypes.c_uint(instance), buffer, ctypes.c_uint(size), ctypes.byref(id_type))
            )
        except nv.NVMLError_GpuIsLost as exc:
            raise _Lost from exc
        except nv.NVMLError:
            return None
        kind = "uuid" if id_type.value == nv.NVML_VGPU_VM_ID_UUID else "domain"
        return buffer.value.decode(errors="replace"), kind

    def _vgpu_utilization(
        self, handle: Any, uuid: str
    ) -> dict[int, tuple[float, float, float, float]]:
        nv = self._pynvml
        try:
            samples = nv.nvmlDeviceGetVgpuUtilization(
                handle, self._state.vgpu_last_seen.get(uuid, 0)
            )
        except nv.NVMLError_GpuIsLost as exc:
            raise _Lost from exc
        except nv.NVMLError:
            return {}
        sums: dict[int, list[float]] = {}
        for sample in samples:
            self._state.vgpu_last_seen[uuid] = max(
                self._state.vgpu_last_seen.get(uuid, 0), sample.timeStamp
            )
            acc = sums.setdefault(int(sample.vgpuInstance), [0.0, 0.0, 0.0, 0.0, 0])
            for i, value in enumerate(
                (sample.smUtil, sample.memUtil, sample.encUtil, sample.decUtil)
            ):
                acc[i] += value.uiVal
            acc[4] += 1
        means = {
            instance: (
                acc[0] / acc[4] / 100,
                acc[1] / acc[4] / 100,
                acc[2] / acc[4] / 100,
                acc[3] / acc[4] / 100,
            )
            for instance, acc in sums.items()
        }
        self._state.vgpu_last.update(means)
        return means

    def _merge(self, nvml_gpus: list[GpuStats], pci: dict[str, PcieHealth]) -> tuple[GpuStats, ...]:
        """NVML's GPUs with their PCIe side added, then every GPU function NVML cannot see."""
        merged = []
        nvml_addresses = {g.pci_address for g in nvml_gpus if g.pci_address}
        for gpu in nvml_gpus:
            side = pci.get(gpu.pci_address)
            merged.append(replace(gpu, pcie=side) if side else gpu)
        for address, side in pci.items():
            if address in nvml_addresses:
                continue
            if side.physfn in nvml_addresses:
                continue  # a vGPU VF of a host-owned GPU: reported as its vGPU instance
            merged.append(GpuStats(pci_address=address, nvml_visible=False, pcie=side))
        return tuple(merged)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _int(value: float | int | None) -> int | None:
    return None if value is None else int(value)


def _error_name(nv: Any, code: int) -> str:
    """NVML_ERROR_UNKNOWN -> "unknown": the label value of an error."""
    for name in dir(nv):
        if name.startswith("NVML_ERROR_") and getattr(nv, name) == code:
            return name.removeprefix("NVML_ERROR_").lower()
    return str(code)


def _optional(nv: Any, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except nv.NVMLError:
        return None
