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
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from hostcollector.config import NvmlConfig
from hostcollector.errors import SourceError
from hostcollector.model import GpuStats, NvmlSample, PcieHealth, VgpuStats
from hostcollector.sources.gpu_sysfs import scan_nvidia_gpus
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
        gpus = self._merge(nvml_gpus, pci)
        raw = None
        if self._record_raw:
            raw = {"nvml_available": available, "gpus": [asdict(g) for g in gpus]}
        return NvmlSample(available, self._state.driver_version if available else None, gpus, raw)

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
        for index in range(count):
            try:
                gpus.append(self._read_gpu(index))
            except _Lost:
                uuid, pci = self._state.identity.get(index, ("", ""))
                log.debug("GPU %d (%s) is lost", index, uuid or "unknown")
                gpus.append(GpuStats(pci_address=pci, nvml_visible=True, uuid=uuid, lost=True))
        return gpus

    def _call(self, fn: Any, *args: Any) -> Any:
        """One NVML read: None where unsupported; _Lost / _Reinit where the GPU or NVML is gone."""
        nv = self._pynvml
        try:
            return fn(*args)
        except nv.NVMLError_GpuIsLost as exc:
            raise _Lost from exc
        except (
            nv.NVMLError_Uninitialized,
            nv.NVMLError_DriverNotLoaded,
            nv.NVMLError_LibRmVersionMismatch,
        ) as exc:
            raise _Reinit(str(exc)) from exc
        except nv.NVMLError as exc:
            # NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND, NOT_FOUND, ...: omit the field
            log.debug("%s: %s", getattr(fn, "__name__", fn), exc)
            return None

    def _read_gpu(self, index: int) -> GpuStats:
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
        energy = call(nv.nvmlDeviceGetTotalEnergyConsumption, handle)
        sm_clock = call(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM)
        mem_clock = call(nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_MEM)
        tx = call(nv.nvmlDeviceGetPcieThroughput, handle, nv.NVML_PCIE_UTIL_TX_BYTES)
        rx = call(nv.nvmlDeviceGetPcieThroughput, handle, nv.NVML_PCIE_UTIL_RX_BYTES)
        persistence = call(nv.nvmlDeviceGetPersistenceMode, handle)
        mig = call(nv.nvmlDeviceGetMigMode, handle)
        remapped = call(nv.nvmlDeviceGetRemappedRows, handle)
        vgpus = self._vgpus(handle, uuid)
        scheduler = call(nv.nvmlDeviceGetVgpuSchedulerState, handle) if vgpus else None
        return GpuStats(
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
            ecc_errors=self._ecc(handle),
            remapped_rows=tuple(
                zip(("correctable", "uncorrectable", "pending", "failure"), remapped, strict=True)
            )
            if remapped is not None
            else (),
            pcie_replays=call(nv.nvmlDeviceGetPcieReplayCounter, handle),
            pcie_transmit_bytes_per_second=tx * KIB if tx is not None else None,
            pcie_receive_bytes_per_second=rx * KIB if rx is not None else None,
            nvlink_errors=self._nvlink(handle),
            xid_errors=self._xids(handle, uuid),
            persistence_mode=bool(persistence) if persistence is not None else None,
            compute_mode=call(nv.nvmlDeviceGetComputeMode, handle),
            mig_mode=bool(mig[0]) if mig is not None else None,
            vgpus=vgpus,
            vgpu_scheduler_policy=scheduler.schedulerPolicy if scheduler is not None else None,
            vgpu_scheduler_arr_mode=scheduler.arrMode if scheduler is not None else None,
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

    def _ecc(self, handle: Any) -> tuple[tuple[str, str, int], ...]:
        nv = self._pynvml
        found = []
        for error, error_name in (
            (nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, "corrected"),
            (nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, "uncorrected"),
        ):
            for counter, counter_name in (
                (nv.NVML_VOLATILE_ECC, "volatile"),
                (nv.NVML_AGGREGATE_ECC, "aggregate"),
            ):
                value = self._call(nv.nvmlDeviceGetTotalEccErrors, handle, error, counter)
                if value is not None:
                    found.append((error_name, counter_name, int(value)))
        return tuple(found)

    def _nvlink(self, handle: Any) -> tuple[tuple[int, str, int], ...]:
        nv = self._pynvml
        counters = (
            (nv.NVML_NVLINK_ERROR_DL_REPLAY, "replay"),
            (nv.NVML_NVLINK_ERROR_DL_RECOVERY, "recovery"),
            (nv.NVML_NVLINK_ERROR_DL_CRC_FLIT, "crc_flit"),
            (nv.NVML_NVLINK_ERROR_DL_CRC_DATA, "crc_data"),
        )
        found = []
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            if self._call(nv.nvmlDeviceGetNvLinkState, handle, link) is None:
                break  # no NVLink, or past the last link
            for counter, name in counters:
                value = self._call(nv.nvmlDeviceGetNvLinkErrorCounter, handle, link, counter)
                if value is not None:
                    found.append((link, name, int(value)))
        return tuple(found)

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


def _optional(nv: Any, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except nv.NVMLError:
        return None
