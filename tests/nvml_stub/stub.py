"""Build, load and drive the NVML stub (nvml_stub.c), a stand-in for libnvidia-ml.so.1.

The stub is compiled with gcc against NVIDIA's own nvml.h (pip package nvidia-nvml-dev), named
and sonamed ``libnvidia-ml.so.1``, so unmodified pynvml (nvidia-ml-py) loads it. It answers
from a *scenario file* named by ``$HC_NVML_SCENARIO`` (read at every nvmlInit*) and re-reads
the file whenever it changes, so a test can rewrite it mid-run.

Typical in-process use (pynvml keeps the first library it loads for the life of the process,
so load the stub once per test session, before the first pynvml call)::

    lib = ensure_loaded(build_dir)              # build_stub + preload with RTLD_GLOBAL
    write_scenario(tmp_path / "nvml.scn", vgpu_host(["uuid-a1", "uuid-a2"], ["uuid-b1", "uuid-b2"]))
    monkeypatch.setenv(SCENARIO_ENV, str(tmp_path / "nvml.scn"))
    pynvml.nvmlInit()                           # finds the stub by soname

Scenario schema
===============

A scenario is a plain dict; every key is optional and unknown keys are errors (typos would
otherwise be silently ignored). ``normalise_scenario`` returns it with all defaults filled in.

Top level:

``driver_version`` (str, "550.54.15"), ``nvml_version`` (str, "12.550.54.15")
``init_error`` (None | error): nvmlInit* fails with it, e.g. "NVML_ERROR_DRIVER_NOT_LOADED",
    "LIB_RM_VERSION_MISMATCH". An *error* is a full name, a name without ``NVML_ERROR_``, or
    an int.
``vgpu_manager`` (bool | None): the host runs the vGPU manager. When False,
    nvmlDeviceGetActiveVgpus, nvmlDeviceGetVgpuUtilization and nvmlDeviceGetVgpuSchedulerState
    return NOT_SUPPORTED. None (default): True when any GPU has vGPUs.
``event_wait_max_ms`` (int | None): cap on how long nvmlEventSetWait_v2 sleeps when no event is
    pending (None: the caller's timeout, like the driver).
``errors`` ({symbol: error}): every call of that C symbol returns the error.
``gpus`` (list of GPU dicts), ``absent`` (bool, see ``nvml_absent``).

GPU dict (defaults in ``DEFAULT_GPU``):

``uuid`` (str; default "GPU-<uuid5 of the index>"), ``name`` (str),
``pci_bus_id`` ("00000000:17:00.0"; default bus 0x10 + index), ``pci_device_id`` (int,
    device << 16 | vendor, e.g. 0x233010DE), ``pci_subsystem_id`` (int),
``memory_total_bytes``, ``memory_used_bytes``, ``memory_reserved_bytes`` (ints; v1 memory info
    reports used = used + reserved, free = total - that),
``power_mw``, ``energy_mj``, ``temperature_c``, ``sm_clock_mhz`` (also the graphics clock),
``mem_clock_mhz``, ``clocks_event_reasons`` (bitmask, nvmlClocksEventReason*),
``ecc_corrected_volatile``, ``ecc_corrected_aggregate``, ``ecc_uncorrected_volatile``,
``ecc_uncorrected_aggregate`` (ints),
``remapped_correctable``, ``remapped_uncorrectable`` (ints), ``remapped_pending``,
``remapped_failure`` (bools),
``pcie_replay``, ``pcie_tx_kbps``, ``pcie_rx_kbps`` (ints; throughput in KB/s),
``nvlinks`` (list of link dicts ``{"active": bool, "replay", "recovery", "crc_flit",
    "crc_data", "ecc_data": int}``, missing keys default to active/0; [] means the GPU has no
    NVLink: both NVLink calls return NOT_SUPPORTED; a link index beyond the list:
    INVALID_ARGUMENT),
``persistence_mode`` (bool), ``compute_mode`` (int, NVML_COMPUTEMODE_*), ``mig_mode`` (0/1),
``mig_pending_mode`` (None: same as mig_mode). With mig_mode 1, nvmlDeviceGetSamples
    (utilization types) and nvmlDeviceGetRemappedRows return NOT_SUPPORTED, as nvml.h says.
``utilization_samples`` ({"gpu"|"memory"|"enc"|"dec": [(timestamp_us, value), ...]}, timestamps
    strictly increasing; a missing type has no samples),
``xid_events`` (list of int Xids or {"xid", "gpu_instance_id", "compute_instance_id"}; each is
    delivered once per event set that registered nvmlEventTypeXidCriticalError on the GPU;
    append to the list when rewriting, the stub remembers how many each set has delivered),
``vgpu_scheduler`` ({"policy", "arr_mode", "avg_factor", "timeslice"}: ints of
    nvmlVgpuSchedulerGetState_t),
``not_supported`` (list of symbols returning NVML_ERROR_NOT_SUPPORTED on this GPU),
``errors`` ({symbol: error}) for any other error,
``lost`` (bool): every per-device call, and every call on its vGPUs, returns GPU_IS_LOST;
``handle_lost`` (bool): nvmlDeviceGetHandleByIndex also returns GPU_IS_LOST (default: the
    handle is still obtainable, only the calls fail),
``vgpus`` (list of vGPU dicts).
Read only through nvmlDeviceGetFieldValues: ``retired_sbe``, ``retired_dbe`` (ints),
``retired_pending`` (bool), ``pcie_replay_rollover``, ``pcie_l0_to_recovery`` (ints),
``power_average_mw`` (None: NOT_SUPPORTED), links' ``tx_kib``/``rx_kib``, ``field_errors``
({NVML_FI_* id: error}: that field alone answers it). GPM: ``gpm_supported`` (bool), ``gpm``
({NVML_GPM_METRIC_* id: value}), ``gpm_instances`` ({gpu_instance_id: {id: value}}).
``fabric`` (None | {state, status, clique_id, health_mask, health_summary}).
Top level also: ``conf_compute`` (None | {environment, cc_feature, devtools_mode, gpus_ready}).

vGPU dict (defaults in ``DEFAULT_VGPU``):

``id`` (int, the nvmlVgpuInstance_t; required, non-zero, unique), ``vm_id`` (str, at most 79
characters: the libvirt domain UUID on KVM), ``vm_id_type`` ("uuid" | "domain"), ``uuid``,
``mdev_uuid`` (str), ``type_id`` (int), ``type_name`` (str; one name per type id),
``fb_usage_bytes`` (int), ``licensed`` (bool), ``license_state`` (None: LICENSED (5) when licensed
else UNLICENSED (4)), ``license_expiry`` (None | (year, month, day, hour, min, sec)),
``license_expiry_status`` (None: VALID (2) with an expiry, else NOT_AVAILABLE (0)),
``gpu_instance_id`` (int | None: None is INVALID_GPU_INSTANCE_ID 0xFFFFFFFF, i.e. not MIG-backed),
``gpu_pci_id`` (str | None: what nvmlVgpuInstanceGetGpuPciId returns -- nvml.h documents it as
    the vGPU's PCI address *as seen inside the VM*, "00000000:00:00.0" while the guest driver
    isn't loaded; None returns NOT_SUPPORTED),
``encoder_sessions``, ``encoder_fps``, ``encoder_latency_us``, ``fbc_sessions``, ``fbc_fps``,
``fbc_latency_us`` (ints),
``utilization_samples`` ([(timestamp_us, sm, mem, enc, dec), ...], strictly increasing),
``not_supported``, ``errors`` as for GPUs.

Example::

    {
        "driver_version": "550.54.15",
        "gpus": [
            {
                "name": "NVIDIA A40",
                "pci_bus_id": "00000000:17:00.0",
                "power_mw": 150000,
                "utilization_samples": {"gpu": [(1_000_000, 40), (1_166_666, 42)]},
                "xid_events": [79],
                "not_supported": ["nvmlDeviceGetPcieReplayCounter"],
                "vgpus": [
                    {"id": 1, "vm_id": "1f0e...", "type_id": 557, "type_name": "NVIDIA A40-8Q",
                     "utilization_samples": [(1_000_000, 30, 10, 0, 0)]},
                ],
            }
        ],
    }

The file format (written by ``render_scenario``) is ``key value`` per line; see README.md.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

Scenario = dict[str, Any]

SCENARIO_ENV: Final = "HC_NVML_SCENARIO"
SONAME: Final = "libnvidia-ml.so.1"
SOURCE: Final = Path(__file__).with_name("nvml_stub.c")

# C symbols the stub exports (besides hcstub_* introspection helpers).
IMPLEMENTED_SYMBOLS: Final = (
    "nvmlInitWithFlags",
    "nvmlInit_v2",
    "nvmlInit",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlSystemGetDriverVersion",
    "nvmlSystemGetNVMLVersion",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetRemappedRows",
    "nvmlDeviceGetPcieReplayCounter",
    "nvmlDeviceGetPcieThroughput",
    "nvmlDeviceGetNvLinkState",
    "nvmlDeviceGetNvLinkErrorCounter",
    "nvmlDeviceGetPersistenceMode",
    "nvmlDeviceGetComputeMode",
    "nvmlDeviceGetMigMode",
    "nvmlDeviceGetSamples",
    "nvmlEventSetCreate",
    "nvmlDeviceRegisterEvents",
    "nvmlEventSetWait_v2",
    "nvmlEventSetFree",
    "nvmlDeviceGetActiveVgpus",
    "nvmlVgpuInstanceGetVmID",
    "nvmlVgpuInstanceGetUUID",
    "nvmlVgpuInstanceGetMdevUUID",
    "nvmlVgpuInstanceGetType",
    "nvmlVgpuTypeGetName",
    "nvmlVgpuInstanceGetFbUsage",
    "nvmlVgpuInstanceGetLicenseInfo_v2",
    "nvmlVgpuInstanceGetEncoderStats",
    "nvmlVgpuInstanceGetFBCStats",
    "nvmlVgpuInstanceGetGpuInstanceId",
    "nvmlVgpuInstanceGetGpuPciId",
    "nvmlDeviceGetVgpuUtilization",
    "nvmlDeviceGetVgpuSchedulerState",
    "nvmlDeviceGetFieldValues",
    "nvmlGpmQueryDeviceSupport",
    "nvmlGpmSampleAlloc",
    "nvmlGpmSampleFree",
    "nvmlGpmSampleGet",
    "nvmlGpmMigSampleGet",
    "nvmlGpmMetricsGet",
    "nvmlDeviceGetGpuFabricInfoV",
    "nvmlSystemGetConfComputeState",
    "nvmlSystemGetConfComputeGpusReadyState",
)

# Names accepted in not_supported/errors that the stub knows under another symbol: pynvml's
# wrapper names, and symbols answering like another one (ThrottleReasons = EventReasons,
# TemperatureV = Temperature) and sharing its overrides.
SYMBOL_ALIASES: Final = {
    "nvmlDeviceGetCount": "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex": "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetPciInfo": "nvmlDeviceGetPciInfo_v3",
    "nvmlEventSetWait": "nvmlEventSetWait_v2",
    "nvmlVgpuInstanceGetLicenseInfo": "nvmlVgpuInstanceGetLicenseInfo_v2",
    "nvmlDeviceGetCurrentClocksThrottleReasons": "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetTemperatureV": "nvmlDeviceGetTemperature",
}

DEVICE_SYMBOLS: Final = frozenset(
    s
    for s in IMPLEMENTED_SYMBOLS
    if (
        s.startswith("nvmlDevice")
        or s in ("nvmlGpmQueryDeviceSupport", "nvmlGpmSampleGet", "nvmlGpmMigSampleGet")
    )
    and s
    not in (
        "nvmlDeviceGetCount_v2",
        "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetCurrentClocksThrottleReasons",
        "nvmlDeviceGetTemperatureV",
    )
)
VGPU_SYMBOLS: Final = frozenset(s for s in IMPLEMENTED_SYMBOLS if s.startswith("nvmlVgpuInstance"))
# Scenario-level errors apply to every call of the symbol; init/shutdown/nvmlErrorString excluded
# (use init_error).
SCENARIO_SYMBOLS: Final = frozenset(IMPLEMENTED_SYMBOLS) - {
    "nvmlInitWithFlags",
    "nvmlInit_v2",
    "nvmlInit",
    "nvmlShutdown",
    "nvmlErrorString",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetTemperatureV",
}

NVML_ERRORS: Final = {
    "NVML_SUCCESS": 0,
    "NVML_ERROR_UNINITIALIZED": 1,
    "NVML_ERROR_INVALID_ARGUMENT": 2,
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NO_PERMISSION": 4,
    "NVML_ERROR_ALREADY_INITIALIZED": 5,
    "NVML_ERROR_NOT_FOUND": 6,
    "NVML_ERROR_INSUFFICIENT_SIZE": 7,
    "NVML_ERROR_INSUFFICIENT_POWER": 8,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_TIMEOUT": 10,
    "NVML_ERROR_IRQ_ISSUE": 11,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
    "NVML_ERROR_CORRUPTED_INFOROM": 14,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16,
    "NVML_ERROR_OPERATING_SYSTEM": 17,
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": 18,
    "NVML_ERROR_IN_USE": 19,
    "NVML_ERROR_MEMORY": 20,
    "NVML_ERROR_NO_DATA": 21,
    "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED": 22,
    "NVML_ERROR_INSUFFICIENT_RESOURCES": 23,
    "NVML_ERROR_FREQ_NOT_SUPPORTED": 24,
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": 25,
    "NVML_ERROR_DEPRECATED": 26,
    "NVML_ERROR_NOT_READY": 27,
    "NVML_ERROR_GPU_NOT_FOUND": 28,
    "NVML_ERROR_INVALID_STATE": 29,
    "NVML_ERROR_RESET_TYPE_NOT_SUPPORTED": 30,
    "NVML_ERROR_UNKNOWN": 999,
}

INVALID_GPU_INSTANCE_ID: Final = 0xFFFFFFFF
SAMPLE_TYPES: Final = ("gpu", "memory", "enc", "dec")  # NVML_{GPU,MEMORY,ENC,DEC}_..._SAMPLES
NVLINK_COUNTERS: Final = ("replay", "recovery", "crc_flit", "crc_data", "ecc_data")
NVLINK_THROUGHPUT: Final = ("tx_kib", "rx_kib")  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX/RX
# nvmlGpuFabricInfo_v3_t's fields, in the stub's line order.
FABRIC_KEYS: Final = ("state", "status", "clique_id", "health_mask", "health_summary")
CONF_COMPUTE_KEYS: Final = ("environment", "cc_feature", "devtools_mode", "gpus_ready")

DEFAULT_SCENARIO: Final[Mapping[str, Any]] = {
    "driver_version": "550.54.15",
    "nvml_version": "12.550.54.15",
    "init_error": None,
    "vgpu_manager": None,
    "event_wait_max_ms": None,
    "errors": {},
    "gpus": [],
    "absent": False,
    # nvmlSystemGetConfComputeState + GpusReadyState ({environment, cc_feature, devtools_mode,
    # gpus_ready}); None: both NOT_SUPPORTED (a driver or system without confidential computing).
    "conf_compute": None,
}

DEFAULT_GPU: Final[Mapping[str, Any]] = {
    "uuid": None,  # GPU-<uuid5 of the index>
    "name": "NVIDIA H100 80GB HBM3",
    "pci_bus_id": None,  # 00000000:<0x10 + index>:00.0
    "pci_device_id": 0x233010DE,
    "pci_subsystem_id": 0x16C110DE,
    "memory_total_bytes": 85_520_809_984,
    "memory_used_bytes": 0,
    "memory_reserved_bytes": 0,
    "power_mw": 70_000,
    "energy_mj": 0,
    "temperature_c": 30,
    "sm_clock_mhz": 345,
    "mem_clock_mhz": 2619,
    "clocks_event_reasons": 0x1,  # nvmlClocksEventReasonGpuIdle
    "ecc_corrected_volatile": 0,
    "ecc_corrected_aggregate": 0,
    "ecc_uncorrected_volatile": 0,
    "ecc_uncorrected_aggregate": 0,
    "remapped_correctable": 0,
    "remapped_uncorrectable": 0,
    "remapped_pending": False,
    "remapped_failure": False,
    "pcie_replay": 0,
    "pcie_tx_kbps": 0,
    "pcie_rx_kbps": 0,
    "nvlinks": [],
    "persistence_mode": True,
    "compute_mode": 0,
    "mig_mode": 0,
    "mig_pending_mode": None,
    "utilization_samples": {},
    "xid_events": [],
    "vgpu_scheduler": {"policy": 1, "arr_mode": 0, "avg_factor": 0, "timeslice": 0},
    "not_supported": [],
    "errors": {},
    "lost": False,
    "handle_lost": False,
    "vgpus": [],
    # Read only through nvmlDeviceGetFieldValues:
    "retired_sbe": 0,
    "retired_dbe": 0,
    "retired_pending": False,
    "pcie_replay_rollover": 0,
    "pcie_l0_to_recovery": 0,
    "power_average_mw": None,  # None: NOT_SUPPORTED (nvml.h: Ampere except GA100, or newer)
    "field_errors": {},  # {NVML_FI_* id: error}: that field alone answers the error
    # GPM: supported, then the metrics nvmlGpmMetricsGet answers ({NVML_GPM_METRIC_* id: value})
    # for the whole GPU and per MIG GPU instance ({gpu_instance_id: {id: value}}); an id missing
    # answers NOT_SUPPORTED in its own metric.
    "gpm_supported": False,
    "gpm": {},
    "gpm_instances": {},
    "fabric": None,  # {state, status, clique_id, health_mask, health_summary}; None: NOT_SUPPORTED
}

DEFAULT_VGPU: Final[Mapping[str, Any]] = {
    "id": None,  # required
    "vm_id": "",
    "vm_id_type": "uuid",
    "uuid": "",
    "mdev_uuid": "",
    "type_id": 0,
    "type_name": "",
    "fb_usage_bytes": 0,
    "licensed": True,
    "license_state": None,
    "license_expiry": None,
    "license_expiry_status": None,
    "gpu_instance_id": None,
    "gpu_pci_id": None,
    "encoder_sessions": 0,
    "encoder_fps": 0,
    "encoder_latency_us": 0,
    "fbc_sessions": 0,
    "fbc_fps": 0,
    "fbc_latency_us": 0,
    "utilization_samples": [],
    "not_supported": [],
    "errors": {},
}

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_PCI_RE = re.compile(r"^([0-9A-Fa-f]{4}|[0-9A-Fa-f]{8}):[0-9A-Fa-f]{2}:[0-1][0-9A-Fa-f]\.[0-7]$")
_UUID_NS = uuid.UUID("6c0d7b8e-3a39-4a8e-9d3f-2b4c9e0d1a55")


class StubBuildError(RuntimeError):
    """The stub cannot be built here: no gcc, or no nvml.h (pip install nvidia-nvml-dev)."""


class ScenarioError(ValueError):
    """A scenario dict the stub cannot express."""


# --------------------------------------------------------------------------------------------
# Building and loading


def find_nvml_header_dir() -> Path:
    """The include directory holding nvml.h from the installed nvidia-nvml-dev wheel."""
    spec = importlib.util.find_spec("nvidia")
    locations = list(spec.submodule_search_locations or []) if spec else []
    headers = sorted(
        (h for loc in locations for h in Path(loc).glob("*/include/nvml.h")),
        key=lambda h: h.parent.parent.name,  # cu13 before cu12 (reverse below)
        reverse=True,
    )
    if not headers:
        raise StubBuildError(
            "nvml.h not found: no nvidia/*/include/nvml.h in the 'nvidia' namespace package "
            f"({locations or 'not installed'}); install it with "
            "`.venv/bin/pip install nvidia-nvml-dev`"
        )
    return headers[0].parent


def build_stub(out_dir: Path, *, include_dir: Path | None = None) -> Path:
    """Compile nvml_stub.c to ``out_dir/libnvidia-ml.so.1`` unless already built from this source.

    The cache key is the source's and nvml.h's mtime and path, kept in a stamp file next to the
    library. The library is written to a temporary name and renamed, so concurrent builds and
    processes that already mapped an older build are safe.
    """
    header_dir = include_dir or find_nvml_header_dir()
    header = header_dir / "nvml.h"
    if not header.is_file():
        raise StubBuildError(f"{header} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / SONAME
    stamp_file = out_dir / (SONAME + ".stamp")
    stamp = f"{SOURCE}:{SOURCE.stat().st_mtime_ns}\n{header}:{header.stat().st_mtime_ns}\n"
    with contextlib.suppress(OSError):
        if lib.is_file() and stamp_file.read_text() == stamp:
            return lib
    gcc = shutil.which("gcc")
    if gcc is None:
        raise StubBuildError("gcc not found on PATH; the NVML stub is compiled from C source")
    fd, tmp_name = tempfile.mkstemp(prefix=".libnvidia-ml.", suffix=".so", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [
        gcc,
        "-shared",
        "-fPIC",
        "-O1",
        "-Wall",
        "-Werror",
        f"-I{header_dir}",
        f"-Wl,-soname,{SONAME}",
        "-o",
        str(tmp),
        str(SOURCE),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise StubBuildError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
        tmp.replace(lib)
    finally:
        tmp.unlink(missing_ok=True)
    stamp_file.write_text(stamp)
    return lib


_loaded: dict[str, Any] = {}


def load_stub(lib: Path) -> ctypes.CDLL:
    """Preload the built stub with RTLD_GLOBAL so that pynvml's CDLL("libnvidia-ml.so.1") binds
    to it (the dynamic loader matches an already-loaded object by soname).

    Call it before the first pynvml call of the process; a second call with the same path
    returns the same handle, with another path it raises (pynvml keeps its first library).
    """
    path = str(Path(lib).resolve())
    if "path" in _loaded:
        if _loaded["path"] != path:
            raise RuntimeError(f"the NVML stub is already loaded from {_loaded['path']}")
        handle: ctypes.CDLL = _loaded["handle"]
        return handle
    pynvml = _pynvml_if_imported()
    if pynvml is not None and pynvml.nvmlLib is not None:
        raise RuntimeError(
            "pynvml already loaded an NVML library in this process; load the stub first"
        )
    handle = ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    by_soname = ctypes.CDLL(SONAME)
    ours = ctypes.cast(handle.nvmlInit_v2, ctypes.c_void_p).value
    theirs = ctypes.cast(by_soname.nvmlInit_v2, ctypes.c_void_p).value
    if ours != theirs:
        raise RuntimeError(f"dlopen({SONAME!r}) does not resolve to the stub at {path}")
    _loaded.update(path=path, handle=handle)
    return handle


def ensure_loaded(build_dir: Path) -> ctypes.CDLL:
    """build_stub + load_stub, once per process (later calls return the loaded stub)."""
    if "handle" in _loaded:
        handle: ctypes.CDLL = _loaded["handle"]
        return handle
    return load_stub(build_stub(build_dir))


def _pynvml_if_imported() -> Any:
    import sys

    return sys.modules.get("pynvml")


def subprocess_env(scenario_path: Path | None, lib_dir: Path | None) -> dict[str, str]:
    """Environment for a child process: the scenario, and LD_LIBRARY_PATH so that a plain
    dlopen("libnvidia-ml.so.1") finds the stub in ``lib_dir`` (None: no stub, NVML absent)."""
    env = {k: v for k, v in os.environ.items() if k not in (SCENARIO_ENV, "LD_LIBRARY_PATH")}
    if scenario_path is not None:
        env[SCENARIO_ENV] = str(scenario_path)
    if lib_dir is not None:
        env["LD_LIBRARY_PATH"] = str(lib_dir)
    return env


# --------------------------------------------------------------------------------------------
# Scenario validation and rendering


def _fail(where: str, msg: str) -> ScenarioError:
    return ScenarioError(f"{where}: {msg}")


def _check_keys(d: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise _fail(where, f"expected a dict, got {type(d).__name__}")
    unknown = set(d) - set(allowed)
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}")


def _uint(value: Any, where: str, limit: int = _U32) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise _fail(where, f"expected an int in 0..{limit:#x}, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected a bool, got {value!r}")
    return value


def _text(value: Any, where: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"expected a str, got {value!r}")
    if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _fail(where, f"no leading/trailing blanks or control characters: {value!r}")
    if len(value.encode()) > max_len:
        raise _fail(where, f"longer than {max_len} bytes: {value!r}")
    return value


def error_code(value: Any, where: str = "error") -> int:
    """An NVML return code from 'NVML_ERROR_X', 'X' or an int."""
    if isinstance(value, str):
        name = value if value.startswith("NVML_") else "NVML_ERROR_" + value
        if name not in NVML_ERRORS:
            raise _fail(where, f"unknown NVML return code {value!r}")
        return NVML_ERRORS[name]
    return _uint(value, where)


def _symbol(name: Any, allowed: frozenset[str], where: str) -> str:
    sym = SYMBOL_ALIASES.get(name, name) if isinstance(name, str) else name
    if sym not in allowed:
        raise _fail(where, f"{name!r} is not a stub symbol usable here: {sorted(allowed)}")
    return str(sym)


def _errors(entry: Mapping[str, Any], allowed: frozenset[str], where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    not_supported = entry.get("not_supported", [])
    if isinstance(not_supported, str) or not isinstance(not_supported, Sequence):
        raise _fail(f"{where}.not_supported", "expected a list of symbols")
    for name in not_supported:
        out[_symbol(name, allowed, f"{where}.not_supported")] = NVML_ERRORS[
            "NVML_ERROR_NOT_SUPPORTED"
        ]
    for name, code in dict(entry.get("errors", {})).items():
        out[_symbol(name, allowed, f"{where}.errors")] = error_code(code, f"{where}.errors")
    return out


def _samples(value: Any, width: int, where: str) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    last = -1
    for i, sample in enumerate(value):
        if len(sample) != width:
            raise _fail(f"{where}[{i}]", f"expected {width} ints, got {sample!r}")
        ts = _uint(sample[0], f"{where}[{i}] timestamp", _U64)
        if ts <= last:
            raise _fail(f"{where}[{i}]", "timestamps must be strictly increasing")
        last = ts
        out.append((ts, *(_uint(v, f"{where}[{i}]") for v in sample[1:])))
    return out


def _id(key: Any, where: str, limit: int = _U32) -> int:
    """A dict key that is an id: an int, or its digits (a scenario read back from JSON)."""
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    return _uint(key, where, limit)


def _gpm_values(value: Any, where: str) -> dict[int, float]:
    if not isinstance(value, Mapping):
        raise _fail(where, "expected {NVML_GPM_METRIC_* id: value}")
    out = {}
    for metric, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _fail(where, f"metric {metric}: expected a number, got {v!r}")
        out[_id(metric, where, 476)] = float(v)
    if len(out) > 32:
        raise _fail(where, "at most 32 metrics")
    return out


def _gpu_uuid(index: int) -> str:
    return f"GPU-{uuid.uuid5(_UUID_NS, f'gpu-{index}')}"


def normalise_scenario(scenario: Mapping[str, Any]) -> Scenario:
    """A validated deep copy of ``scenario`` with every default filled in.

    Error overrides are merged into ``errors`` ({C symbol: int code}) per level, names
    normalised to the C symbols (aliases such as nvmlDeviceGetPciInfo -> _v3).
    """
    _check_keys(scenario, DEFAULT_SCENARIO, "scenario")
    s: Scenario = copy.deepcopy(dict(DEFAULT_SCENARIO))
    s.update(copy.deepcopy(dict(scenario)))
    s["driver_version"] = _text(s["driver_version"], "driver_version", 79)
    s["nvml_version"] = _text(s["nvml_version"], "nvml_version", 79)
    if s["init_error"] is not None:
        s["init_error"] = error_code(s["init_error"], "init_error")
    if s["event_wait_max_ms"] is not None:
        s["event_wait_max_ms"] = _uint(s["event_wait_max_ms"], "event_wait_max_ms")
    s["absent"] = _bool(s["absent"], "absent")
    s["errors"] = _errors(s, SCENARIO_SYMBOLS, "scenario")
    if s["conf_compute"] is not None:
        _check_keys(s["conf_compute"], CONF_COMPUTE_KEYS, "conf_compute")
        s["conf_compute"] = {
            k: _uint(s["conf_compute"].get(k, 0), f"conf_compute.{k}") for k in CONF_COMPUTE_KEYS
        }
    if len(s["gpus"]) > 64:
        raise _fail("gpus", "at most 64 GPUs")
    gpus: list[dict[str, Any]] = []
    vgpu_ids: set[int] = set()
    type_names: dict[int, str] = {}
    for index, entry in enumerate(s["gpus"]):
        gpus.append(_normalise_gpu(index, entry, vgpu_ids, type_names))
    s["gpus"] = gpus
    if s["vgpu_manager"] is None:
        s["vgpu_manager"] = any(g["vgpus"] for g in gpus)
    s["vgpu_manager"] = _bool(s["vgpu_manager"], "vgpu_manager")
    return s


def _normalise_gpu(
    index: int, entry: Mapping[str, Any], vgpu_ids: set[int], type_names: dict[int, str]
) -> dict[str, Any]:
    where = f"gpus[{index}]"
    _check_keys(entry, DEFAULT_GPU, where)
    g: dict[str, Any] = copy.deepcopy(dict(DEFAULT_GPU))
    g.update(copy.deepcopy(dict(entry)))
    g["uuid"] = _text(g["uuid"] or _gpu_uuid(index), f"{where}.uuid", 95)
    g["name"] = _text(g["name"], f"{where}.name", 95)
    g["pci_bus_id"] = g["pci_bus_id"] or f"00000000:{0x10 + index:02X}:00.0"
    if not isinstance(g["pci_bus_id"], str) or not _PCI_RE.match(g["pci_bus_id"]):
        raise _fail(f"{where}.pci_bus_id", f"expected like 00000000:17:00.0: {g['pci_bus_id']!r}")
    for key in (
        "pci_device_id",
        "pci_subsystem_id",
        "power_mw",
        "temperature_c",
        "sm_clock_mhz",
        "mem_clock_mhz",
        "remapped_correctable",
        "remapped_uncorrectable",
        "pcie_replay",
        "pcie_tx_kbps",
        "pcie_rx_kbps",
        "compute_mode",
        "mig_mode",
    ):
        _uint(g[key], f"{where}.{key}")
    for key in (
        "memory_total_bytes",
        "memory_used_bytes",
        "memory_reserved_bytes",
        "energy_mj",
        "clocks_event_reasons",
        "ecc_corrected_volatile",
        "ecc_corrected_aggregate",
        "ecc_uncorrected_volatile",
        "ecc_uncorrected_aggregate",
    ):
        _uint(g[key], f"{where}.{key}", _U64)
    for key in (
        "remapped_pending",
        "remapped_failure",
        "persistence_mode",
        "lost",
        "handle_lost",
        "retired_pending",
        "gpm_supported",
    ):
        _bool(g[key], f"{where}.{key}")
    for key in ("pcie_replay_rollover", "pcie_l0_to_recovery"):
        _uint(g[key], f"{where}.{key}")
    for key in ("retired_sbe", "retired_dbe"):
        _uint(g[key], f"{where}.{key}", _U64)
    if g["power_average_mw"] is not None:
        _uint(g["power_average_mw"], f"{where}.power_average_mw")
    g["field_errors"] = {
        _id(field_id, f"{where}.field_errors"): error_code(code, f"{where}.field_errors")
        for field_id, code in dict(g["field_errors"]).items()
    }
    if len(g["field_errors"]) > 32:
        raise _fail(f"{where}.field_errors", "at most 32")
    g["gpm"] = _gpm_values(g["gpm"], f"{where}.gpm")
    g["gpm_instances"] = {
        _id(gi, f"{where}.gpm_instances"): _gpm_values(v, f"{where}.gpm_instances[{gi}]")
        for gi, v in dict(g["gpm_instances"]).items()
    }
    if len(g["gpm_instances"]) > 8:
        raise _fail(f"{where}.gpm_instances", "at most 8 GPU instances")
    if g["fabric"] is not None:
        _check_keys(g["fabric"], FABRIC_KEYS, f"{where}.fabric")
        g["fabric"] = {k: _uint(g["fabric"].get(k, 0), f"{where}.fabric.{k}") for k in FABRIC_KEYS}
    if g["mig_pending_mode"] is None:
        g["mig_pending_mode"] = g["mig_mode"]
    _uint(g["mig_pending_mode"], f"{where}.mig_pending_mode")
    if len(g["nvlinks"]) > 36:
        raise _fail(f"{where}.nvlinks", "at most 36 links (NVML_NVLINK_MAX_LINKS)")
    links = []
    for i, link in enumerate(g["nvlinks"]):
        _check_keys(link, ("active", *NVLINK_COUNTERS, *NVLINK_THROUGHPUT), f"{where}.nvlinks[{i}]")
        full = {
            "active": True,
            **dict.fromkeys(NVLINK_COUNTERS, 0),
            **dict.fromkeys(NVLINK_THROUGHPUT, 0),
            **link,
        }
        _bool(full["active"], f"{where}.nvlinks[{i}].active")
        for c in (*NVLINK_COUNTERS, *NVLINK_THROUGHPUT):
            _uint(full[c], f"{where}.nvlinks[{i}].{c}", _U64)
        links.append(full)
    g["nvlinks"] = links
    _check_keys(g["utilization_samples"], SAMPLE_TYPES, f"{where}.utilization_samples")
    g["utilization_samples"] = {
        t: _samples(g["utilization_samples"].get(t, []), 2, f"{where}.utilization_samples.{t}")
        for t in SAMPLE_TYPES
    }
    for t in SAMPLE_TYPES:
        if len(g["utilization_samples"][t]) > 256:
            raise _fail(f"{where}.utilization_samples.{t}", "at most 256 samples")
    xids = []
    for i, x in enumerate(g["xid_events"]):
        if isinstance(x, Mapping):
            _check_keys(x, ("xid", "gpu_instance_id", "compute_instance_id"), f"{where}.xid")
            xids.append(
                {
                    "xid": _uint(x["xid"], f"{where}.xid_events[{i}]", _U64),
                    "gpu_instance_id": _uint(
                        x.get("gpu_instance_id", INVALID_GPU_INSTANCE_ID), f"{where}.xid"
                    ),
                    "compute_instance_id": _uint(
                        x.get("compute_instance_id", INVALID_GPU_INSTANCE_ID), f"{where}.xid"
                    ),
                }
            )
        else:
            xids.append(
                {
                    "xid": _uint(x, f"{where}.xid_events[{i}]", _U64),
                    "gpu_instance_id": INVALID_GPU_INSTANCE_ID,
                    "compute_instance_id": INVALID_GPU_INSTANCE_ID,
                }
            )
    if len(xids) > 128:
        raise _fail(f"{where}.xid_events", "at most 128 events")
    g["xid_events"] = xids
    sched_keys = ("policy", "arr_mode", "avg_factor", "timeslice")
    _check_keys(g["vgpu_scheduler"], sched_keys, f"{where}.vgpu_scheduler")
    g["vgpu_scheduler"] = {
        k: _uint(g["vgpu_scheduler"].get(k, 0), f"{where}.vgpu_scheduler.{k}") for k in sched_keys
    }
    g["errors"] = _errors(g, DEVICE_SYMBOLS, where)
    g["not_supported"] = []
    g["vgpus"] = [
        _normalise_vgpu(f"{where}.vgpus[{i}]", v, vgpu_ids, type_names)
        for i, v in enumerate(g["vgpus"])
    ]
    return g


def _normalise_vgpu(
    where: str, entry: Mapping[str, Any], vgpu_ids: set[int], type_names: dict[int, str]
) -> dict[str, Any]:
    _check_keys(entry, DEFAULT_VGPU, where)
    v: dict[str, Any] = copy.deepcopy(dict(DEFAULT_VGPU))
    v.update(copy.deepcopy(dict(entry)))
    if v["id"] is None or _uint(v["id"], f"{where}.id") == 0:
        raise _fail(f"{where}.id", "required and non-zero (the nvmlVgpuInstance_t)")
    if v["id"] in vgpu_ids:
        raise _fail(f"{where}.id", f"{v['id']} is used by another vGPU")
    vgpu_ids.add(v["id"])
    # NVML documents the VM id as at most 80 bytes with the NUL (NVML_DEVICE_UUID_BUFFER_SIZE).
    v["vm_id"] = _text(v["vm_id"], f"{where}.vm_id", 79)
    if v["vm_id_type"] not in ("uuid", "domain"):
        raise _fail(f"{where}.vm_id_type", f"'uuid' or 'domain', got {v['vm_id_type']!r}")
    v["uuid"] = _text(v["uuid"], f"{where}.uuid", 79)
    v["mdev_uuid"] = _text(v["mdev_uuid"], f"{where}.mdev_uuid", 79)
    _uint(v["type_id"], f"{where}.type_id")
    v["type_name"] = _text(v["type_name"], f"{where}.type_name", 63)
    if type_names.setdefault(v["type_id"], v["type_name"]) != v["type_name"]:
        raise _fail(f"{where}.type_name", f"type {v['type_id']} has another name elsewhere")
    _uint(v["fb_usage_bytes"], f"{where}.fb_usage_bytes", _U64)
    _bool(v["licensed"], f"{where}.licensed")
    if v["license_state"] is None:
        v["license_state"] = 5 if v["licensed"] else 4
    _uint(v["license_state"], f"{where}.license_state")
    if v["license_expiry"] is not None:
        if len(v["license_expiry"]) != 6:
            raise _fail(f"{where}.license_expiry", "(year, month, day, hour, min, sec)")
        v["license_expiry"] = tuple(
            _uint(x, f"{where}.license_expiry", 0xFFFF if i else _U32)
            for i, x in enumerate(v["license_expiry"])
        )
    if v["license_expiry_status"] is None:
        v["license_expiry_status"] = 2 if v["license_expiry"] else 0
    _uint(v["license_expiry_status"], f"{where}.license_expiry_status", 0xFF)
    if v["gpu_instance_id"] is not None:
        _uint(v["gpu_instance_id"], f"{where}.gpu_instance_id")
    if v["gpu_pci_id"] is not None:
        v["gpu_pci_id"] = _text(v["gpu_pci_id"], f"{where}.gpu_pci_id", 31)
    for key in (
        "encoder_sessions",
        "encoder_fps",
        "encoder_latency_us",
        "fbc_sessions",
        "fbc_fps",
        "fbc_latency_us",
    ):
        _uint(v[key], f"{where}.{key}")
    v["utilization_samples"] = _samples(v["utilization_samples"], 5, f"{where}.utilization_samples")
    if len(v["utilization_samples"]) > 64:
        raise _fail(f"{where}.utilization_samples", "at most 64 samples")
    v["errors"] = _errors(v, VGPU_SYMBOLS, where)
    v["not_supported"] = []
    return v


def _code_name(code: int) -> str:
    for name, value in NVML_ERRORS.items():
        if value == code:
            return name
    return str(code)


def render_scenario(scenario: Mapping[str, Any]) -> str:
    """The scenario in the stub's line format (README.md)."""
    s = normalise_scenario(scenario)
    out = [
        "# NVML stub scenario (tests/nvml_stub/stub.py)",
        "format 1",
        f"driver_version {s['driver_version']}",
        f"nvml_version {s['nvml_version']}",
        f"vgpu_manager {int(s['vgpu_manager'])}",
    ]
    if s["absent"]:
        # In-process stand-in for a missing library: pynvml raises NVMLError_LibraryNotFound.
        out.append("init_error NVML_ERROR_LIBRARY_NOT_FOUND")
    elif s["init_error"] is not None:
        out.append(f"init_error {_code_name(s['init_error'])}")
    if s["event_wait_max_ms"] is not None:
        out.append(f"event_wait_max_ms {s['event_wait_max_ms']}")
    out += [f"error {sym} {_code_name(code)}" for sym, code in s["errors"].items()]
    if s["conf_compute"] is not None:
        out.append("conf_compute " + " ".join(str(s["conf_compute"][k]) for k in CONF_COMPUTE_KEYS))
    vgpus: list[tuple[int, dict[str, Any]]] = []
    out.append(f"gpu_count {len(s['gpus'])}")
    for i, g in enumerate(s["gpus"]):
        p = f"gpu.{i}."
        out += [
            f"{p}uuid {g['uuid']}",
            f"{p}name {g['name']}",
            f"{p}pci_bus_id {g['pci_bus_id']}",
            f"{p}pci_device_id {g['pci_device_id']:#x}",
            f"{p}pci_subsystem_id {g['pci_subsystem_id']:#x}",
            f"{p}memory_total {g['memory_total_bytes']}",
            f"{p}memory_used {g['memory_used_bytes']}",
            f"{p}memory_reserved {g['memory_reserved_bytes']}",
            f"{p}power_mw {g['power_mw']}",
            f"{p}energy_mj {g['energy_mj']}",
            f"{p}temperature_c {g['temperature_c']}",
            f"{p}sm_clock_mhz {g['sm_clock_mhz']}",
            f"{p}mem_clock_mhz {g['mem_clock_mhz']}",
            f"{p}clocks_event_reasons {g['clocks_event_reasons']:#x}",
            f"{p}ecc_corrected_volatile {g['ecc_corrected_volatile']}",
            f"{p}ecc_corrected_aggregate {g['ecc_corrected_aggregate']}",
            f"{p}ecc_uncorrected_volatile {g['ecc_uncorrected_volatile']}",
            f"{p}ecc_uncorrected_aggregate {g['ecc_uncorrected_aggregate']}",
            f"{p}remapped_correctable {g['remapped_correctable']}",
            f"{p}remapped_uncorrectable {g['remapped_uncorrectable']}",
            f"{p}remapped_pending {int(g['remapped_pending'])}",
            f"{p}remapped_failure {int(g['remapped_failure'])}",
            f"{p}pcie_replay {g['pcie_replay']}",
            f"{p}pcie_tx_kbps {g['pcie_tx_kbps']}",
            f"{p}pcie_rx_kbps {g['pcie_rx_kbps']}",
            f"{p}persistence_mode {int(g['persistence_mode'])}",
            f"{p}compute_mode {g['compute_mode']}",
            f"{p}mig_mode {g['mig_mode']}",
            f"{p}mig_pending_mode {g['mig_pending_mode']}",
            f"{p}lost {int(g['lost'])}",
            f"{p}handle_lost {int(g['handle_lost'])}",
            f"{p}nvlink_count {len(g['nvlinks'])}",
        ]
        for li, link in enumerate(g["nvlinks"]):
            counters = " ".join(str(link[c]) for c in NVLINK_COUNTERS)
            out.append(f"{p}nvlink.{li} {int(link['active'])} {counters}")
            out.append(f"{p}nvlink_throughput.{li} {link['tx_kib']} {link['rx_kib']}")
        out += [
            f"{p}retired_sbe {g['retired_sbe']}",
            f"{p}retired_dbe {g['retired_dbe']}",
            f"{p}retired_pending {int(g['retired_pending'])}",
            f"{p}pcie_replay_rollover {g['pcie_replay_rollover']}",
            f"{p}pcie_l0_to_recovery {g['pcie_l0_to_recovery']}",
            f"{p}gpm_supported {int(g['gpm_supported'])}",
        ]
        if g["power_average_mw"] is not None:
            out.append(f"{p}power_average_mw {g['power_average_mw']}")
        out += [
            f"{p}field_error {fid} {_code_name(code)}" for fid, code in g["field_errors"].items()
        ]
        out += [f"{p}gpm whole {m} {v!r}" for m, v in g["gpm"].items()]
        out += [
            f"{p}gpm {gi} {m} {v!r}"
            for gi, values in g["gpm_instances"].items()
            for m, v in values.items()
        ]
        if g["fabric"] is not None:
            out.append(f"{p}fabric " + " ".join(str(g["fabric"][k]) for k in FABRIC_KEYS))
        for t in SAMPLE_TYPES:
            out += [f"{p}sample.{t} {ts} {v}" for ts, v in g["utilization_samples"][t]]
        out += [
            f"{p}xid {x['xid']} {x['gpu_instance_id']} {x['compute_instance_id']}"
            for x in g["xid_events"]
        ]
        sch = g["vgpu_scheduler"]
        out.append(
            f"{p}vgpu_scheduler {sch['policy']} {sch['arr_mode']} {sch['avg_factor']} "
            f"{sch['timeslice']}"
        )
        out += [f"{p}error {sym} {_code_name(code)}" for sym, code in g["errors"].items()]
        vgpus += [(i, v) for v in g["vgpus"]]
    out.append(f"vgpu_count {len(vgpus)}")
    for j, (gpu_index, v) in enumerate(vgpus):
        p = f"vgpu.{j}."
        expiry = v["license_expiry"] or (0, 0, 0, 0, 0, 0)
        out += [
            f"{p}gpu {gpu_index}",
            f"{p}id {v['id']}",
            f"{p}vm_id {v['vm_id']}",
            f"{p}vm_id_type {1 if v['vm_id_type'] == 'uuid' else 0}",
            f"{p}uuid {v['uuid']}",
            f"{p}mdev_uuid {v['mdev_uuid']}",
            f"{p}type_id {v['type_id']}",
            f"{p}type_name {v['type_name']}",
            f"{p}fb_usage {v['fb_usage_bytes']}",
            f"{p}license {int(v['licensed'])} {v['license_state']} "
            + " ".join(str(x) for x in expiry)
            + f" {v['license_expiry_status']}",
            f"{p}encoder {v['encoder_sessions']} {v['encoder_fps']} {v['encoder_latency_us']}",
            f"{p}fbc {v['fbc_sessions']} {v['fbc_fps']} {v['fbc_latency_us']}",
        ]
        if v["gpu_instance_id"] is not None:
            out.append(f"{p}gpu_instance_id {v['gpu_instance_id']}")
        if v["gpu_pci_id"] is not None:
            out.append(f"{p}gpu_pci_id {v['gpu_pci_id']}")
        out += [f"{p}sample {' '.join(str(x) for x in smp)}" for smp in v["utilization_samples"]]
        out += [f"{p}error {sym} {_code_name(code)}" for sym, code in v["errors"].items()]
    return "\n".join(out) + "\n"


_last_mtime_ns: dict[str, int] = {}


def write_scenario(path: Path, scenario: Mapping[str, Any]) -> None:
    """Validate ``scenario`` and (re)write it to ``path`` atomically (write + rename).

    Each write gets an mtime later than the previous write to the same path, so the stub sees
    every rewrite even within the file system's timestamp granularity.
    """
    text = render_scenario(scenario)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        key = str(path.resolve())
        mtime = max(os.stat(tmp_name).st_mtime_ns, _last_mtime_ns.get(key, 0) + 1_000_000)
        os.utime(tmp_name, ns=(mtime, mtime))
        os.replace(tmp_name, path)
        _last_mtime_ns[key] = mtime
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


# --------------------------------------------------------------------------------------------
# Ready-made scenarios

_HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)


def eight_gpus() -> Scenario:
    """An HGX H100 board: 8 x H100 SXM 80GB, 18 NVLinks each, busy, no vGPU manager."""
    gpus = []
    for i, bus in enumerate(_HGX_BUSES):
        t0 = 1_700_000_000_000_000 + i
        gpus.append(
            {
                "uuid": _gpu_uuid(i),
                "name": "NVIDIA H100 80GB HBM3",
                "pci_bus_id": f"00000000:{bus:02X}:00.0",
                "memory_used_bytes": (40 + i) * 2**30,
                "memory_reserved_bytes": 512 * 2**20,
                "power_mw": 350_000 + 10_000 * i,
                "energy_mj": 9_000_000_000 + 1_000_000 * i,
                "temperature_c": 45 + i,
                "sm_clock_mhz": 1980,
                "mem_clock_mhz": 2619,
                "clocks_event_reasons": 0x4 if i == 3 else 0x0,  # SwPowerCap on GPU 3
                "ecc_corrected_volatile": i,
                "ecc_corrected_aggregate": 10 * i,
                "ecc_uncorrected_volatile": 1 if i == 5 else 0,
                "ecc_uncorrected_aggregate": 2 if i == 5 else 0,
                "remapped_correctable": 1 if i == 5 else 0,
                "remapped_uncorrectable": 1 if i == 5 else 0,
                "remapped_pending": i == 5,
                "pcie_replay": i,
                "pcie_tx_kbps": 1_000 * (i + 1),
                "pcie_rx_kbps": 2_000 * (i + 1),
                "nvlinks": [
                    {"active": True, "replay": i, "recovery": 0, "crc_flit": link, "crc_data": 0}
                    for link in range(18)
                ],
                "utilization_samples": {
                    "gpu": [(t0 + k * 166_667, 90 + k) for k in range(4)],
                    "memory": [(t0 + k * 166_667, 60 + k) for k in range(4)],
                    "enc": [(t0, 0)],
                    "dec": [(t0, 0)],
                },
            }
        )
    return {"gpus": gpus, "vgpu_manager": False}


def _vgpu(
    vgpu_id: int, vm: str, type_id: int, type_name: str, fb_gib: int, **extra: Any
) -> dict[str, Any]:
    return {
        "id": vgpu_id,
        "vm_id": vm,
        "vm_id_type": "uuid",
        "uuid": str(uuid.uuid5(_UUID_NS, f"vgpu-{vgpu_id}")),
        "mdev_uuid": str(uuid.uuid5(_UUID_NS, f"mdev-{vgpu_id}")),
        "type_id": type_id,
        "type_name": type_name,
        "fb_usage_bytes": fb_gib * 2**30 // 2,
        "licensed": True,
        "license_expiry": (2026, 12, 31, 23, 59, 59),
        "utilization_samples": [
            (1_700_000_000_000_000 + k * 1_000_000, 20 + vgpu_id + k, 10 + k, k, 0)
            for k in range(3)
        ],
        **extra,
    }


def vgpu_host(tenant_a_vms: Sequence[str], tenant_b_vms: Sequence[str]) -> Scenario:
    """4 vGPU instances on 2 GPUs, each GPU shared by both tenants.

    ``tenant_a_vms`` and ``tenant_b_vms`` are two libvirt domain UUIDs each (the VM ids NVML
    reports on KVM). GPU 0 (A40, Ampere: SR-IOV vGPU, gpu_pci_id set) hosts A[0] (8Q) and
    B[0] (16Q, encoder/FBC sessions); GPU 1 (T4, Turing: mdev vGPU, gpu_pci_id NOT_SUPPORTED)
    hosts A[1] (4Q, unlicensed) and B[1] (8C). vGPU ids 1-4 in that order.
    """
    a, b = list(tenant_a_vms), list(tenant_b_vms)
    if len(a) != 2 or len(b) != 2:
        raise ValueError("vgpu_host needs two VM UUIDs per tenant")
    a40 = {
        "name": "NVIDIA A40",
        "pci_bus_id": "00000000:17:00.0",
        "pci_device_id": 0x223510DE,
        "pci_subsystem_id": 0x145A10DE,
        "memory_total_bytes": 48 * 2**30,
        "memory_used_bytes": 24 * 2**30,
        "power_mw": 180_000,
        "energy_mj": 5_000_000_000,
        "temperature_c": 55,
        "sm_clock_mhz": 1740,
        "mem_clock_mhz": 7251,
        "clocks_event_reasons": 0,
        "pcie_tx_kbps": 12_000,
        "pcie_rx_kbps": 34_000,
        "vgpu_scheduler": {"policy": 2, "arr_mode": 2, "avg_factor": 33, "timeslice": 2_000_000},
        "vgpus": [
            _vgpu(1, a[0], 557, "NVIDIA A40-8Q", 8, gpu_pci_id="00000000:06:00.0"),
            _vgpu(
                2,
                b[0],
                558,
                "NVIDIA A40-16Q",
                16,
                gpu_pci_id="00000000:07:00.0",
                encoder_sessions=2,
                encoder_fps=60,
                encoder_latency_us=900,
                fbc_sessions=1,
                fbc_fps=30,
                fbc_latency_us=1500,
            ),
        ],
    }
    t4 = {
        "name": "Tesla T4",
        "pci_bus_id": "00000000:3B:00.0",
        "pci_device_id": 0x1EB810DE,
        "pci_subsystem_id": 0x12A210DE,
        "memory_total_bytes": 16 * 2**30,
        "memory_used_bytes": 12 * 2**30,
        "power_mw": 35_000,
        "energy_mj": 900_000_000,
        "temperature_c": 48,
        "sm_clock_mhz": 1590,
        "mem_clock_mhz": 5000,
        "clocks_event_reasons": 0,
        "vgpu_scheduler": {"policy": 1, "arr_mode": 0, "avg_factor": 0, "timeslice": 0},
        "vgpus": [
            _vgpu(3, a[1], 230, "GRID T4-4Q", 4, licensed=False, license_expiry=None),
            _vgpu(4, b[1], 231, "GRID T4-8C", 8),
        ],
    }
    return {"gpus": [a40, t4], "vgpu_manager": True}


def mig_vgpu(vm_uuids: Sequence[str]) -> Scenario:
    """MIG-backed vGPUs: GPU 0 is an A100 80GB in MIG mode with three vGPUs on GPU instances
    2 (3g), 3 (2g) and 9 (1g) for vm_uuids[0..2]; GPU 1 is an A100 80GB without MIG whose
    time-sliced vGPU (vm_uuids[3]) has no GPU instance (INVALID_GPU_INSTANCE_ID). vGPU ids 11-14.
    """
    vms = list(vm_uuids)
    if len(vms) != 4:
        raise ValueError("mig_vgpu needs four VM UUIDs")
    base = {
        "name": "NVIDIA A100 80GB PCIe",
        "pci_device_id": 0x20B510DE,
        "pci_subsystem_id": 0x153310DE,
        "memory_total_bytes": 80 * 2**30,
        "power_mw": 120_000,
        "energy_mj": 3_000_000_000,
        "temperature_c": 40,
        "sm_clock_mhz": 1410,
        "mem_clock_mhz": 1512,
        "clocks_event_reasons": 0,
        "vgpu_scheduler": {"policy": 1, "arr_mode": 0, "avg_factor": 0, "timeslice": 0},
    }
    mig = {
        **base,
        "pci_bus_id": "00000000:CA:00.0",
        "mig_mode": 1,
        "utilization_samples": {"gpu": [(1_700_000_000_000_000, 50)]},  # not served with MIG
        "vgpus": [
            _vgpu(11, vms[0], 700, "NVIDIA A100D-3-40C", 40, gpu_instance_id=2),
            _vgpu(12, vms[1], 701, "NVIDIA A100D-2-20C", 20, gpu_instance_id=3),
            _vgpu(13, vms[2], 702, "NVIDIA A100D-1-10C", 10, gpu_instance_id=9),
        ],
        "xid_events": [{"xid": 94, "gpu_instance_id": 3, "compute_instance_id": 0}],
    }
    timesliced = {
        **base,
        "pci_bus_id": "00000000:E3:00.0",
        "vgpus": [_vgpu(14, vms[3], 710, "NVIDIA A100D-20C", 20)],
    }
    return {"gpus": [mig, timesliced], "vgpu_manager": True}


# NVML_GPM_METRIC_* ids -> a busy training job's values (percent; MiB/s for PCIe and NVLink).
BUSY_GPM: Final = {
    2: 87.5,
    3: 41.0,
    5: 63.0,
    10: 72.0,
    11: 0.5,
    12: 12.0,
    13: 3.0,
    20: 900.0,
    21: 1800.0,
    60: 20_000.0,
    61: 19_000.0,
}
NVML_FI_DEV_RETIRED_PENDING: Final = 31


def h100_gpm() -> Scenario:
    """One H100 SXM with GPM (Hopper), field values (average power, NVLink throughput on its 18
    links, retired pages, PCIe recoveries), a completed, healthy fabric registration, and one
    field that fails alone: NVML_FI_DEV_RETIRED_PENDING answers UNKNOWN."""
    gpu = copy.deepcopy(eight_gpus()["gpus"][0])
    for k, link in enumerate(gpu["nvlinks"]):
        link["tx_kib"] = 1_000_000 + k
        link["rx_kib"] = 2_000_000 + k
    gpu.update(
        {
            "power_average_mw": 348_000,
            "retired_sbe": 2,
            "retired_dbe": 1,
            "pcie_replay_rollover": 1,
            "pcie_l0_to_recovery": 4,
            "gpm_supported": True,
            "gpm": dict(BUSY_GPM),
            "fabric": {
                "state": 3,
                "status": 0,
                "clique_id": 7,
                "health_mask": 0x2,
                "health_summary": 1,
            },
            "field_errors": {NVML_FI_DEV_RETIRED_PENDING: "UNKNOWN"},
        }
    )
    return {"gpus": [gpu], "vgpu_manager": False}


def a100_no_gpm() -> Scenario:
    """One A100 80GB PCIe (Ampere): no GPM (nvmlGpmQueryDeviceSupport says 0), no fabric, no
    average-power field (GA100)."""
    base = mig_vgpu(["a", "b", "c", "d"])["gpus"][1]
    gpu = {k: v for k, v in base.items() if k != "vgpus"}
    return {"gpus": [gpu], "vgpu_manager": False}


def mig_vgpu_gpm(vm_uuids: Sequence[str]) -> Scenario:
    """``mig_vgpu`` on Hopper: GPU 0 is an H100 in MIG mode with GPM, its vGPUs on GPU
    instances 2, 3 and 9 (vm_uuids[0..2]), each instance with its own GPM metrics (SM active
    40%, 20%, 10%), and the whole GPU's; GPU 1 (time-sliced, not MIG) has GPM for the whole
    GPU only."""
    scenario = mig_vgpu(vm_uuids)
    mig, timesliced = scenario["gpus"]
    for gpu in (mig, timesliced):
        gpu.update(
            {
                "name": "NVIDIA H100 PCIe",
                "pci_device_id": 0x233110DE,
                "gpm_supported": True,
                "gpm": dict(BUSY_GPM),
            }
        )
    mig["gpm_instances"] = {gi: {**BUSY_GPM, 2: sm} for gi, sm in ((2, 40.0), (3, 20.0), (9, 10.0))}
    return scenario


def hgx_fabric_degraded() -> Scenario:
    """``eight_gpus`` registered in the NVSwitch fabric (clique 1) with confidential computing
    on: GPU 2's NVLink bandwidth is degraded (health mask DEGRADED_BW_TRUE, summary LIMITED
    CAPACITY); GPU 6's registration completed with NVML_ERROR_NOT_READY (27)."""
    scenario = eight_gpus()
    for i, gpu in enumerate(scenario["gpus"]):
        gpu["fabric"] = {
            "state": 3,
            "status": 27 if i == 6 else 0,
            "clique_id": 1,
            "health_mask": 0x1 if i == 2 else 0x2,
            "health_summary": 3 if i == 2 else (2 if i == 6 else 1),
        }
    scenario["conf_compute"] = {
        "environment": 2,
        "cc_feature": 1,
        "devtools_mode": 0,
        "gpus_ready": 1,
    }
    return scenario


def lost_gpu_midrun(
    path: Path, scenario: Mapping[str, Any], gpu_index: int = 0, *, handle_lost: bool = False
) -> Scenario:
    """Rewrite the scenario file at ``path`` with GPU ``gpu_index`` fallen off the bus (every
    per-device call, and every call on its vGPUs, then returns GPU_IS_LOST; with
    ``handle_lost`` nvmlDeviceGetHandleByIndex too). Returns the new scenario."""
    new: Scenario = copy.deepcopy(dict(scenario))
    gpu = dict(new["gpus"][gpu_index])
    gpu["lost"] = True
    gpu["handle_lost"] = handle_lost
    new["gpus"][gpu_index] = gpu
    write_scenario(path, new)
    return new


CONSUMER_NOT_SUPPORTED: Final = (
    "nvmlDeviceGetTotalEccErrors",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetRemappedRows",
    "nvmlDeviceGetPcieReplayCounter",
    "nvmlDeviceGetMigMode",
)


def not_supported() -> Scenario:
    """A consumer GPU (GeForce RTX 4090): no ECC, energy counter, remapped rows, PCIe replay
    counter or MIG (NOT_SUPPORTED), no NVLink, no vGPU manager."""
    return {
        "vgpu_manager": False,
        "gpus": [
            {
                "name": "NVIDIA GeForce RTX 4090",
                "pci_bus_id": "00000000:01:00.0",
                "pci_device_id": 0x268410DE,
                "pci_subsystem_id": 0x16F310DE,
                "memory_total_bytes": 24 * 2**30,
                "memory_used_bytes": 2 * 2**30,
                "power_mw": 30_000,
                "temperature_c": 38,
                "sm_clock_mhz": 210,
                "mem_clock_mhz": 405,
                "persistence_mode": False,
                "nvlinks": [],
                "not_supported": list(CONSUMER_NOT_SUPPORTED),
                "utilization_samples": {"gpu": [(1_700_000_000_000_000, 3)]},
            }
        ],
    }


def nvml_absent() -> Scenario:
    """No NVML on the host.

    In a child process, don't preload the stub and keep it off LD_LIBRARY_PATH
    (``subprocess_env(None, None)``): pynvml.nvmlInit raises NVMLError_LibraryNotFound, and a
    collector's ``ctypes.CDLL(path)`` preload raises OSError. In-process, where the stub is
    already loaded, ``write_scenario`` writes this as an nvmlInit that fails with
    NVML_ERROR_LIBRARY_NOT_FOUND, which pynvml raises as the same NVMLError_LibraryNotFound.
    """
    return {"absent": True}


def is_absent(scenario: Mapping[str, Any]) -> bool:
    return bool(scenario.get("absent", False))
