"""The NVML stub (tests/nvml_stub) through unmodified pynvml: values from the scenario, NVML's
error codes as pynvml's own exception classes, and the calling protocols pynvml relies on.

The stub is loaded in-process once per session (pynvml keeps its first library in a module
global); "NVML absent" and loading by LD_LIBRARY_PATH run in child processes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nvml_stub import stub
from tests.nvml_stub.stub import (
    IMPLEMENTED_SYMBOLS,
    SCENARIO_ENV,
    Scenario,
    ScenarioError,
    StubBuildError,
    build_stub,
    eight_gpus,
    lost_gpu_midrun,
    mig_vgpu,
    normalise_scenario,
    not_supported,
    nvml_absent,
    subprocess_env,
    vgpu_host,
    write_scenario,
)

pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")

REPO = Path(__file__).parent.parent
TENANT_A = ["7d0b6c0e-6a2b-4b7e-9f57-0a1c2d3e4f50", "7d0b6c0e-6a2b-4b7e-9f57-0a1c2d3e4f51"]
TENANT_B = ["c3a1f2e4-1b2c-4d5e-8f90-a1b2c3d4e5f0", "c3a1f2e4-1b2c-4d5e-8f90-a1b2c3d4e5f1"]
MIG_VMS = [f"0e1d2c3b-4a59-4687-a5b4-c3d2e1f0a9b{i}" for i in range(4)]

SUCCESS = 0
INSUFFICIENT_SIZE = 7


@pytest.fixture(scope="session")
def stub_lib(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = getattr(request.config, "cache", None)
    build_dir = Path(cache.mkdir("nvml_stub")) if cache else tmp_path_factory.mktemp("nvml_stub")
    try:
        lib = stub.ensure_loaded(build_dir)
    except StubBuildError as e:
        pytest.skip(f"cannot build the NVML stub: {e}")
    lib.hcstub_sizeof.restype = ctypes.c_size_t
    lib.hcstub_sizeof.argtypes = [ctypes.c_char_p]
    lib.hcstub_init_refcount.restype = ctypes.c_uint
    lib.hcstub_reload_count.restype = ctypes.c_uint
    return lib


class Nvml:
    """Writes scenarios for one test and initialises NVML through pynvml."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch, lib: Any) -> None:
        self.path = path
        self.lib = lib
        monkeypatch.setenv(SCENARIO_ENV, str(path))

    def write(self, scenario: Scenario) -> Scenario:
        write_scenario(self.path, scenario)
        return normalise_scenario(scenario)

    def start(self, scenario: Scenario) -> Scenario:
        normalised = self.write(scenario)
        pynvml.nvmlInit()
        return normalised

    def handle(self, index: int) -> Any:
        return pynvml.nvmlDeviceGetHandleByIndex(index)


@pytest.fixture
def nvml(stub_lib: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Nvml]:
    def shutdown_all() -> None:
        while stub_lib.hcstub_init_refcount() > 0:
            pynvml.nvmlShutdown()

    shutdown_all()  # whatever an earlier test left initialised
    yield Nvml(tmp_path / "nvml.scn", monkeypatch, stub_lib)
    shutdown_all()


# --------------------------------------------------------------------------------------------
# Build and load


def test_header_struct_sizes_match_pynvml(stub_lib: Any) -> None:
    mirrors = {
        "nvmlPciInfo_t": pynvml.nvmlPciInfo_t,
        "nvmlMemory_t": pynvml.c_nvmlMemory_t,
        "nvmlMemory_v2_t": pynvml.c_nvmlMemory_v2_t,
        "nvmlSample_t": pynvml.c_nvmlSample_t,
        "nvmlValue_t": pynvml.c_nvmlValue_t,
        "nvmlEventData_t": pynvml.c_nvmlEventData_t,
        "nvmlVgpuLicenseExpiry_t": pynvml.c_nvmlVgpuLicenseExpiry_t,
        "nvmlVgpuLicenseInfo_t": pynvml.c_nvmlVgpuLicenseInfo_t,
        "nvmlFBCStats_t": pynvml.c_nvmlFBCStats_t,
        "nvmlVgpuInstanceUtilizationSample_t": pynvml.c_nvmlVgpuInstanceUtilizationSample_t,
        "nvmlVgpuSchedulerGetState_t": pynvml.c_nvmlVgpuSchedulerGetState_t,
        "nvmlTemperature_v1_t": pynvml.c_nvmlTemperature_v1_t,
        "nvmlFieldValue_t": pynvml.c_nvmlFieldValue_t,
        "nvmlGpmSupport_t": pynvml.c_nvmlGpmSupport_t,
        "nvmlGpmMetric_t": pynvml.c_nvmlGpmMetric_t,
        "nvmlGpmMetricsGet_t": pynvml.c_nvmlGpmMetricsGet_t,
        "nvmlGpuFabricInfo_v3_t": pynvml.c_nvmlGpuFabricInfo_v3_t,
        "nvmlConfComputeSystemState_t": pynvml.c_nvmlConfComputeSystemState_t,
    }
    for name, ctype in mirrors.items():
        assert stub_lib.hcstub_sizeof(name.encode()) == ctypes.sizeof(ctype), name
    assert pynvml.nvmlMemory_v2 == (2 << 24) | ctypes.sizeof(pynvml.c_nvmlMemory_v2_t)
    # The versioned structs: NVML_STRUCT_VERSION(name, v) = sizeof | v << 24 (nvml.h).
    assert pynvml.nvmlGpuFabricInfo_v3 == (3 << 24) | ctypes.sizeof(pynvml.c_nvmlGpuFabricInfo_v3_t)


def test_exports_every_symbol_and_soname(stub_lib: Any) -> None:
    for symbol in IMPLEMENTED_SYMBOLS:
        assert hasattr(stub_lib, symbol), symbol
    by_soname = ctypes.CDLL(stub.SONAME)
    assert (
        ctypes.cast(by_soname.nvmlShutdown, ctypes.c_void_p).value
        == ctypes.cast(stub_lib.nvmlShutdown, ctypes.c_void_p).value
    )


def test_build_is_cached_and_fails_clearly(
    stub_lib: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = Path(stub._loaded["path"])
    mtime = lib.stat().st_mtime_ns
    assert build_stub(lib.parent) == lib
    assert lib.stat().st_mtime_ns == mtime  # not rebuilt
    header_dir = stub.find_nvml_header_dir()
    assert (header_dir / "nvml.h").is_file()
    with pytest.raises(StubBuildError, match=r"nvml\.h"):
        build_stub(tmp_path / "a", include_dir=tmp_path / "no-such-include")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(StubBuildError, match="gcc not found"):
        build_stub(tmp_path / "b")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StubBuildError, match="nvidia-nvml-dev"):
        stub.find_nvml_header_dir()


def test_load_stub_refuses_a_second_library(stub_lib: Any, tmp_path: Path) -> None:
    assert stub.load_stub(Path(stub._loaded["path"])) is stub_lib
    with pytest.raises(RuntimeError, match="already loaded"):
        stub.load_stub(tmp_path / stub.SONAME)


# --------------------------------------------------------------------------------------------
# Init, shutdown, errors


def test_uninitialized_before_init_and_after_last_shutdown(nvml: Nvml) -> None:
    count = ctypes.c_uint()
    assert nvml.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == pynvml.NVML_ERROR_UNINITIALIZED
    assert nvml.lib.nvmlShutdown() == pynvml.NVML_ERROR_UNINITIALIZED
    nvml.start(eight_gpus())
    pynvml.nvmlInit()  # refcounted, like NVML
    assert nvml.lib.hcstub_init_refcount() == 2
    pynvml.nvmlShutdown()
    assert pynvml.nvmlDeviceGetCount() == 8
    handle = nvml.handle(0)
    pynvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetPowerUsage(handle)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlShutdown()


@pytest.mark.parametrize(
    ("init_error", "exc"),
    [
        ("NVML_ERROR_DRIVER_NOT_LOADED", "NVMLError_DriverNotLoaded"),
        ("LIB_RM_VERSION_MISMATCH", "NVMLError_LibRmVersionMismatch"),
        ("NVML_ERROR_NO_PERMISSION", "NVMLError_NoPermission"),
    ],
)
def test_init_error(nvml: Nvml, init_error: str, exc: str) -> None:
    with pytest.raises(getattr(pynvml, exc)) as info:
        nvml.start({**eight_gpus(), "init_error": init_error})
    assert str(info.value) == pynvml.nvmlErrorString(info.value.value)
    assert nvml.lib.hcstub_init_refcount() == 0
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    nvml.start(eight_gpus())  # the driver came back
    assert pynvml.nvmlDeviceGetCount() == 8


def test_error_strings_are_nvmls(stub_lib: Any) -> None:
    for code, text in pynvml.NVMLError._errcode_to_string.items():
        assert pynvml.nvmlErrorString(code) == text
    assert pynvml.nvmlErrorString(12345) == "Unknown Error"


def test_unset_or_broken_scenario_fails_init_loudly(
    nvml: Nvml, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(SCENARIO_ENV)
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert "HC_NVML_SCENARIO is not set" in capfd.readouterr().err
    monkeypatch.setenv(SCENARIO_ENV, str(nvml.path))
    nvml.path.write_text("format 1\ngpu_count two\n")
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlInit()
    assert (
        f"{nvml.path}:2: gpu_count: expected an unsigned 32-bit integer" in capfd.readouterr().err
    )
    # A scenario broken mid-run makes calls fail until it is fixed.
    nvml.start(eight_gpus())
    nvml.path.write_text("format 1\nbogus 1\n")
    with pytest.raises(pynvml.NVMLError_Unknown):
        pynvml.nvmlDeviceGetCount()
    assert "unknown key 'bogus'" in capfd.readouterr().err
    nvml.write(eight_gpus())
    assert pynvml.nvmlDeviceGetCount() == 8


def test_nvml_absent_in_a_child_process(stub_lib: Any, tmp_path: Path) -> None:
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("a real libnvidia-ml is installed on this machine")
    script = (
        "import pynvml\n"
        "try:\n"
        "    pynvml.nvmlInit()\n"
        "except pynvml.NVMLError_LibraryNotFound:\n"
        "    print('absent')\n"
        "else:\n"
        "    print(pynvml.nvmlDeviceGetCount())\n"
    )
    scn = tmp_path / "nvml.scn"
    write_scenario(scn, eight_gpus())
    lib_dir = Path(stub._loaded["path"]).parent

    def run(env: dict[str, str]) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        return proc.stdout.strip()

    assert run(subprocess_env(None, None)) == "absent"
    assert run(subprocess_env(scn, lib_dir)) == "8"  # found through LD_LIBRARY_PATH by soname


def test_nvml_absent_in_process(nvml: Nvml) -> None:
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        nvml.start(nvml_absent())
    assert stub.is_absent(nvml_absent())


# --------------------------------------------------------------------------------------------
# Device values


def test_system_and_identity(nvml: Nvml) -> None:
    s = nvml.start(eight_gpus())
    assert pynvml.nvmlSystemGetDriverVersion() == "550.54.15"
    assert pynvml.nvmlSystemGetNVMLVersion() == "12.550.54.15"
    assert pynvml.nvmlDeviceGetCount() == 8
    for i, g in enumerate(s["gpus"]):
        h = nvml.handle(i)
        assert pynvml.nvmlDeviceGetUUID(h) == g["uuid"]
        assert pynvml.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
        pci = pynvml.nvmlDeviceGetPciInfo(h)
        assert pci.busId == g["pci_bus_id"]  # pynvml decodes char arrays
        bus = int(g["pci_bus_id"][9:11], 16)
        assert pci.busIdLegacy == f"0000:{bus:02X}:00.0"
        assert (pci.domain, pci.bus, pci.device) == (0, bus, 0)
        assert pci.pciDeviceId == 0x233010DE
        assert pci.pciSubSystemId == 0x16C110DE
    assert pynvml.nvmlDeviceGetPciInfo(nvml.handle(7)).busId == "00000000:DB:00.0"
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(8)


def test_string_buffers_are_bounded(nvml: Nvml) -> None:
    s = nvml.start(eight_gpus())
    h = nvml.handle(0)
    uuid = s["gpus"][0]["uuid"].encode()
    buf = ctypes.create_string_buffer(b"\xaa" * 16, 16)
    assert nvml.lib.nvmlDeviceGetUUID(h, buf, 16) == INSUFFICIENT_SIZE
    assert buf.raw == b"\xaa" * 16
    buf = ctypes.create_string_buffer(len(uuid) + 1)
    assert nvml.lib.nvmlDeviceGetUUID(h, buf, len(uuid) + 1) == SUCCESS
    assert buf.value == uuid
    small = ctypes.create_string_buffer(4)
    assert nvml.lib.nvmlSystemGetDriverVersion(small, 4) == INSUFFICIENT_SIZE


def test_telemetry_values(nvml: Nvml) -> None:
    s = nvml.start(eight_gpus())
    for i, g in enumerate(s["gpus"]):
        h = nvml.handle(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        used = g["memory_used_bytes"] + g["memory_reserved_bytes"]
        assert (mem.total, mem.used, mem.free) == (
            g["memory_total_bytes"],
            used,
            g["memory_total_bytes"] - used,
        )
        mem2 = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
        assert (mem2.reserved, mem2.used) == (g["memory_reserved_bytes"], g["memory_used_bytes"])
        assert mem2.free == mem.free
        assert pynvml.nvmlDeviceGetPowerUsage(h) == g["power_mw"]
        assert pynvml.nvmlDeviceGetTotalEnergyConsumption(h) == g["energy_mj"]
        assert pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == (45 + i)
        assert pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU) == (45 + i)
        assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 1980
        assert pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM) == 2619
        reasons = pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)
        assert reasons == g["clocks_event_reasons"]
        assert pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h) == reasons
        for err, err_name in ((0, "corrected"), (1, "uncorrected")):
            for counter, counter_name in ((0, "volatile"), (1, "aggregate")):
                value = pynvml.nvmlDeviceGetTotalEccErrors(h, err, counter)
                assert value == g[f"ecc_{err_name}_{counter_name}"]
        assert pynvml.nvmlDeviceGetRemappedRows(h) == (
            g["remapped_correctable"],
            g["remapped_uncorrectable"],
            int(g["remapped_pending"]),
            int(g["remapped_failure"]),
        )
        assert pynvml.nvmlDeviceGetPcieReplayCounter(h) == g["pcie_replay"]
        tx = pynvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_TX_BYTES)
        rx = pynvml.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_RX_BYTES)
        assert (tx, rx) == (g["pcie_tx_kbps"], g["pcie_rx_kbps"])
        assert pynvml.nvmlDeviceGetPersistenceMode(h) == pynvml.NVML_FEATURE_ENABLED
        assert pynvml.nvmlDeviceGetComputeMode(h) == pynvml.NVML_COMPUTEMODE_DEFAULT
        assert pynvml.nvmlDeviceGetMigMode(h) == [0, 0]
    h5 = nvml.handle(5)
    assert pynvml.nvmlDeviceGetRemappedRows(h5) == (1, 1, 1, 0)
    assert pynvml.nvmlDeviceGetTotalEccErrors(h5, 1, 0) == 1
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetClockInfo(h5, pynvml.NVML_CLOCK_VIDEO)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetTemperature(h5, pynvml.NVML_TEMPERATURE_GPU_MAX)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetTemperatureV(h5, pynvml.NVML_TEMPERATURE_GPU_MAX)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetTotalEccErrors(h5, 2, 0)
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetMemoryInfo(h5, version=0x01000028)


def test_nvlink(nvml: Nvml) -> None:
    scenario = eight_gpus()
    scenario["gpus"][1]["nvlinks"][17] = {"active": False, "replay": 7, "ecc_data": 9}
    s = nvml.start(scenario)
    h = nvml.handle(1)
    links = s["gpus"][1]["nvlinks"]
    assert len(links) == 18
    for link in range(17):
        assert pynvml.nvmlDeviceGetNvLinkState(h, link) == pynvml.NVML_FEATURE_ENABLED
        for counter, name in enumerate(stub.NVLINK_COUNTERS):
            value = pynvml.nvmlDeviceGetNvLinkErrorCounter(h, link, counter)
            assert value == links[link][name]
    assert pynvml.nvmlDeviceGetNvLinkErrorCounter(h, 1, pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT) == 1
    assert pynvml.nvmlDeviceGetNvLinkState(h, 17) == pynvml.NVML_FEATURE_DISABLED
    assert pynvml.nvmlDeviceGetNvLinkErrorCounter(h, 17, 0) == 7
    assert pynvml.nvmlDeviceGetNvLinkErrorCounter(h, 17, 4) == 9
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetNvLinkState(h, 18)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetNvLinkErrorCounter(h, 18, 0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetNvLinkErrorCounter(h, 0, pynvml.NVML_NVLINK_ERROR_COUNT)


def test_utilization_samples(nvml: Nvml) -> None:
    s = nvml.start(eight_gpus())
    h = nvml.handle(2)
    expected = s["gpus"][2]["utilization_samples"]
    for sample_type, name in enumerate(stub.SAMPLE_TYPES, start=1):
        value_type, samples = pynvml.nvmlDeviceGetSamples(h, sample_type, 0)
        assert value_type == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
        got = [(x.timeStamp, x.sampleValue.uiVal) for x in samples]
        assert got == expected[name]
    gpu = expected["gpu"]
    _, newer = pynvml.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, gpu[1][0])
    assert [(x.timeStamp, x.sampleValue.uiVal) for x in newer] == gpu[2:]
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, gpu[-1][0])
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetSamples(h, pynvml.NVML_TOTAL_POWER_SAMPLES, 0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetSamples(h, 99, 0)

    # The C protocol: the sizing call counts the buffer, the filling call may return fewer.
    value_type = ctypes.c_int()
    count = ctypes.c_uint(0)
    fn = nvml.lib.nvmlDeviceGetSamples
    last = ctypes.c_ulonglong(gpu[2][0])
    assert fn(h, 1, last, ctypes.byref(value_type), ctypes.byref(count), None) == SUCCESS
    assert count.value == len(gpu)
    buf = (pynvml.c_nvmlSample_t * count.value)()
    assert fn(h, 1, last, ctypes.byref(value_type), ctypes.byref(count), buf) == SUCCESS
    assert count.value == 1
    assert buf[0].timeStamp == gpu[3][0]
    one = (pynvml.c_nvmlSample_t * 1)()
    count = ctypes.c_uint(1)
    assert fn(h, 1, ctypes.c_ulonglong(0), ctypes.byref(value_type), ctypes.byref(count), one) == 0
    assert (count.value, one[0].timeStamp) == (1, gpu[0][0])  # oldest first


def test_error_overrides_and_not_supported(nvml: Nvml) -> None:
    scenario = eight_gpus()
    scenario["errors"] = {"nvmlSystemGetNVMLVersion": "NO_PERMISSION"}
    scenario["gpus"][0]["not_supported"] = [
        "nvmlDeviceGetCurrentClocksThrottleReasons",
        "nvmlDeviceGetTemperatureV",
    ]
    scenario["gpus"][0]["errors"] = {"nvmlDeviceGetPciInfo": "NVML_ERROR_CORRUPTED_INFOROM"}
    scenario["gpus"][1]["errors"] = {"nvmlDeviceGetHandleByIndex": "NO_PERMISSION"}
    nvml.start(scenario)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        pynvml.nvmlSystemGetNVMLVersion()
    h = nvml.handle(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetCurrentClocksEventReasons(h)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)
    for temperature in (pynvml.nvmlDeviceGetTemperature, pynvml.nvmlDeviceGetTemperatureV):
        with pytest.raises(pynvml.NVMLError_NotSupported):
            temperature(h, pynvml.NVML_TEMPERATURE_GPU)
    with pytest.raises(pynvml.NVMLError_CorruptedInforom):
        pynvml.nvmlDeviceGetPciInfo(h)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        nvml.handle(1)
    assert pynvml.nvmlDeviceGetCurrentClocksEventReasons(nvml.handle(2)) == 0


def test_not_supported_consumer_gpu(nvml: Nvml) -> None:
    nvml.start(not_supported())
    h = nvml.handle(0)
    assert pynvml.nvmlDeviceGetName(h) == "NVIDIA GeForce RTX 4090"
    assert pynvml.nvmlDeviceGetPowerUsage(h) == 30_000
    assert pynvml.nvmlDeviceGetPersistenceMode(h) == pynvml.NVML_FEATURE_DISABLED
    calls: list[Callable[[], Any]] = [
        lambda: pynvml.nvmlDeviceGetTotalEccErrors(h, 0, 0),
        lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
        lambda: pynvml.nvmlDeviceGetRemappedRows(h),
        lambda: pynvml.nvmlDeviceGetPcieReplayCounter(h),
        lambda: pynvml.nvmlDeviceGetMigMode(h),
        lambda: pynvml.nvmlDeviceGetNvLinkState(h, 0),
        lambda: pynvml.nvmlDeviceGetNvLinkErrorCounter(h, 0, 0),
        lambda: pynvml.nvmlDeviceGetActiveVgpus(h),
        lambda: pynvml.nvmlDeviceGetVgpuUtilization(h, 0),
        lambda: pynvml.nvmlDeviceGetVgpuSchedulerState(h),
    ]
    for call in calls:
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call()


# Every per-device call, through pynvml's wrapper, keyed by the C symbol it reaches.
DEVICE_CALLS: dict[str, Callable[[Any], Any]] = {
    "nvmlDeviceGetUUID": pynvml.nvmlDeviceGetUUID,
    "nvmlDeviceGetName": pynvml.nvmlDeviceGetName,
    "nvmlDeviceGetPciInfo_v3": pynvml.nvmlDeviceGetPciInfo,
    "nvmlDeviceGetMemoryInfo": pynvml.nvmlDeviceGetMemoryInfo,
    "nvmlDeviceGetMemoryInfo_v2": lambda h: pynvml.nvmlDeviceGetMemoryInfo(h, pynvml.nvmlMemory_v2),
    "nvmlDeviceGetPowerUsage": pynvml.nvmlDeviceGetPowerUsage,
    "nvmlDeviceGetTotalEnergyConsumption": pynvml.nvmlDeviceGetTotalEnergyConsumption,
    "nvmlDeviceGetTemperature": lambda h: pynvml.nvmlDeviceGetTemperature(h, 0),
    "nvmlDeviceGetClockInfo": lambda h: pynvml.nvmlDeviceGetClockInfo(h, 1),
    "nvmlDeviceGetCurrentClocksEventReasons": pynvml.nvmlDeviceGetCurrentClocksEventReasons,
    "nvmlDeviceGetTotalEccErrors": lambda h: pynvml.nvmlDeviceGetTotalEccErrors(h, 0, 1),
    "nvmlDeviceGetRemappedRows": pynvml.nvmlDeviceGetRemappedRows,
    "nvmlDeviceGetPcieReplayCounter": pynvml.nvmlDeviceGetPcieReplayCounter,
    "nvmlDeviceGetPcieThroughput": lambda h: pynvml.nvmlDeviceGetPcieThroughput(h, 0),
    "nvmlDeviceGetNvLinkState": lambda h: pynvml.nvmlDeviceGetNvLinkState(h, 0),
    "nvmlDeviceGetNvLinkErrorCounter": lambda h: pynvml.nvmlDeviceGetNvLinkErrorCounter(h, 0, 0),
    "nvmlDeviceGetPersistenceMode": pynvml.nvmlDeviceGetPersistenceMode,
    "nvmlDeviceGetComputeMode": pynvml.nvmlDeviceGetComputeMode,
    "nvmlDeviceGetMigMode": pynvml.nvmlDeviceGetMigMode,
    "nvmlDeviceGetSamples": lambda h: pynvml.nvmlDeviceGetSamples(h, 1, 0),
    "nvmlDeviceRegisterEvents": lambda h: pynvml.nvmlDeviceRegisterEvents(
        h, pynvml.nvmlEventTypeXidCriticalError, pynvml.nvmlEventSetCreate()
    ),
    "nvmlDeviceGetActiveVgpus": pynvml.nvmlDeviceGetActiveVgpus,
    "nvmlDeviceGetVgpuUtilization": lambda h: pynvml.nvmlDeviceGetVgpuUtilization(h, 0),
    "nvmlDeviceGetVgpuSchedulerState": pynvml.nvmlDeviceGetVgpuSchedulerState,
    "nvmlDeviceGetFieldValues": lambda h: pynvml.nvmlDeviceGetFieldValues(h, [3]),
    "nvmlGpmQueryDeviceSupport": pynvml.nvmlGpmQueryDeviceSupport,
    "nvmlGpmSampleGet": lambda h: pynvml.nvmlGpmSampleGet(h, _gpm_sample()),
    "nvmlGpmMigSampleGet": lambda h: pynvml.nvmlGpmMigSampleGet(h, 1, _gpm_sample()),
    "nvmlDeviceGetGpuFabricInfoV": lambda h: pynvml.nvmlDeviceGetGpuFabricInfoV(
        h, ctypes.byref(_fabric_info())
    ),
}
# Served only by a GPU in MIG mode (the others answer NOT_SUPPORTED): tested on one.
MIG_CALLS = ("nvmlGpmMigSampleGet",)
_GPM_SAMPLES: list[Any] = []


def _gpm_sample() -> Any:
    sample = pynvml.nvmlGpmSampleAlloc()
    _GPM_SAMPLES.append(sample)  # kept: the leak checks compare live counts before and after
    return sample


def _fabric_info() -> Any:
    info = pynvml.c_nvmlGpuFabricInfo_v3_t()
    info.version = pynvml.nvmlGpuFabricInfo_v3
    return info


def _all_answering(gpu: dict[str, Any]) -> dict[str, Any]:
    """A GPU of which every device call succeeds (GPM, a fabric), MIG ones aside."""
    return {
        **gpu,
        "gpm_supported": True,
        "fabric": {"state": 3, "status": 0, "clique_id": 1, "health_mask": 0},
    }


def test_device_calls_cover_every_device_symbol() -> None:
    assert set(DEVICE_CALLS) == stub.DEVICE_SYMBOLS - {"nvmlDeviceGetHandleByIndex_v2"}


def test_every_device_symbol_can_be_not_supported(nvml: Nvml) -> None:
    base = vgpu_host(TENANT_A, TENANT_B)
    base["gpus"][0] = _all_answering(base["gpus"][0])
    base["gpus"][0]["nvlinks"] = [{}]
    base["gpus"][0]["utilization_samples"] = {"gpu": [(1, 1)]}
    nvml.start(base)
    h = nvml.handle(0)
    for symbol, call in DEVICE_CALLS.items():
        if symbol not in MIG_CALLS:
            call(h)  # all succeed
    for symbol, call in DEVICE_CALLS.items():
        if symbol in MIG_CALLS:
            continue
        gpu = {**base["gpus"][0], "not_supported": [symbol]}
        nvml.write({**base, "gpus": [gpu, base["gpus"][1]]})
        with pytest.raises(pynvml.NVMLError_NotSupported):
            call(h)


def test_lost_gpu_midrun(nvml: Nvml) -> None:
    scenario = vgpu_host(TENANT_A, TENANT_B)
    scenario["gpus"][1] = _all_answering(scenario["gpus"][1])
    scenario["gpus"][1]["nvlinks"] = [{}]
    scenario["gpus"][1]["utilization_samples"] = {"gpu": [(1, 1)]}
    nvml.start(scenario)
    h0, h1 = nvml.handle(0), nvml.handle(1)
    vgpus = pynvml.nvmlDeviceGetActiveVgpus(h0)
    assert pynvml.nvmlDeviceGetPowerUsage(h0) == 180_000
    before = nvml.lib.hcstub_reload_count()
    lost_gpu_midrun(nvml.path, scenario, 0)
    for symbol, call in DEVICE_CALLS.items():
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call(h0)
        if symbol not in MIG_CALLS:
            call(h1)  # the other GPU still answers
    assert nvml.lib.hcstub_reload_count() == before + 1
    for vgpu in vgpus:
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            pynvml.nvmlVgpuInstanceGetVmID(vgpu)
    assert nvml.handle(0) is not None  # default: the handle is still obtainable
    assert pynvml.nvmlDeviceGetCount() == 2
    lost_gpu_midrun(nvml.path, scenario, 0, handle_lost=True)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.handle(0)
    assert pynvml.nvmlDeviceGetPowerUsage(nvml.handle(1)) == 35_000


# --------------------------------------------------------------------------------------------
# Events


def test_xid_events_delivered_once(nvml: Nvml) -> None:
    scenario = eight_gpus()
    scenario["gpus"][2]["xid_events"] = [79, 48]
    scenario["gpus"][3]["xid_events"] = [13]  # not registered: never delivered
    scenario["gpus"][5]["xid_events"] = [
        {"xid": 94, "gpu_instance_id": 1, "compute_instance_id": 0}
    ]
    nvml.start(scenario)
    handles = [nvml.handle(i) for i in range(8)]
    es = pynvml.nvmlEventSetCreate()
    for i in (0, 2, 5):
        pynvml.nvmlDeviceRegisterEvents(handles[i], pynvml.nvmlEventTypeXidCriticalError, es)

    def event() -> tuple[int, int, int, int, int]:
        data = pynvml.nvmlEventSetWait_v2(es, 0)
        index = next(
            i
            for i, h in enumerate(handles)
            if ctypes.addressof(h.contents) == ctypes.addressof(data.device.contents)
        )
        return index, data.eventType, data.eventData, data.gpuInstanceId, data.computeInstanceId

    xid = pynvml.nvmlEventTypeXidCriticalError
    none = stub.INVALID_GPU_INSTANCE_ID
    assert event() == (2, xid, 79, none, none)
    assert event() == (2, xid, 48, none, none)
    assert event() == (5, xid, 94, 1, 0)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, 0)
    scenario["gpus"][2]["xid_events"].append(31)  # the log grows: only the new one comes
    nvml.write(scenario)
    assert event() == (2, xid, 31, none, none)
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, 0)
    pynvml.nvmlEventSetFree(es)


def test_event_wait_timeout_and_wakeup(nvml: Nvml) -> None:
    scenario = eight_gpus()
    nvml.start(scenario)
    h = nvml.handle(4)
    es = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, es)
    t0 = time.monotonic()
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, 120)
    assert time.monotonic() - t0 >= 0.1  # honours the timeout, like the driver

    # An Xid written while a thread waits wakes it up (ctypes releases the GIL).
    scenario["gpus"][4]["xid_events"] = [63]
    timer = threading.Timer(0.1, nvml.write, args=(scenario,))
    timer.start()
    t0 = time.monotonic()
    try:
        data = pynvml.nvmlEventSetWait(es, 10_000)
    finally:
        timer.join()
    assert data.eventData == 63
    assert time.monotonic() - t0 < 5

    nvml.write({**scenario, "event_wait_max_ms": 0})
    t0 = time.monotonic()
    with pytest.raises(pynvml.NVMLError_Timeout):
        pynvml.nvmlEventSetWait(es, 10_000)
    assert time.monotonic() - t0 < 1

    lost_gpu_midrun(nvml.path, scenario, 4)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        pynvml.nvmlEventSetWait(es, 0)
    pynvml.nvmlEventSetFree(es)


# --------------------------------------------------------------------------------------------
# vGPU


def test_vgpu_host(nvml: Nvml) -> None:
    s = nvml.start(vgpu_host(TENANT_A, TENANT_B))
    h0, h1 = nvml.handle(0), nvml.handle(1)
    assert pynvml.nvmlDeviceGetActiveVgpus(h0) == [1, 2]
    assert pynvml.nvmlDeviceGetActiveVgpus(h1) == [3, 4]
    vms = {}
    for gpu in s["gpus"]:
        for v in gpu["vgpus"]:
            vid = v["id"]
            vm_id, vm_id_type = pynvml.nvmlVgpuInstanceGetVmID(vid)
            vms[vid] = vm_id.decode()  # pynvml returns bytes here (a tuple escapes its decoding)
            assert vm_id_type == pynvml.NVML_VGPU_VM_ID_UUID
            assert pynvml.nvmlVgpuInstanceGetUUID(vid) == v["uuid"]
            assert pynvml.nvmlVgpuInstanceGetMdevUUID(vid) == v["mdev_uuid"]
            type_id = pynvml.nvmlVgpuInstanceGetType(vid)
            assert type_id == v["type_id"]
            assert pynvml.nvmlVgpuTypeGetName(type_id) == v["type_name"]
            lic = pynvml.nvmlVgpuInstanceGetLicenseInfo(vid)
            assert lic.isLicensed == int(v["licensed"])
            assert lic.currentState == v["license_state"]
            expiry = lic.licenseExpiry
            got_expiry = (
                expiry.year,
                expiry.month,
                expiry.day,
                expiry.hour,
                expiry.min,
                expiry.sec,
            )
            assert got_expiry == (v["license_expiry"] or (0,) * 6)
            assert expiry.status == v["license_expiry_status"]
            assert pynvml.nvmlVgpuInstanceGetEncoderStats(vid) == (
                v["encoder_sessions"],
                v["encoder_fps"],
                v["encoder_latency_us"],
            )
            fbc = pynvml.nvmlVgpuInstanceGetFBCStats(vid)
            assert (fbc.sessionsCount, fbc.averageFPS, fbc.averageLatency) == (
                v["fbc_sessions"],
                v["fbc_fps"],
                v["fbc_latency_us"],
            )
            gi = pynvml.nvmlVgpuInstanceGetGpuInstanceId(vid)
            assert gi == stub.INVALID_GPU_INSTANCE_ID
    assert vms == {1: TENANT_A[0], 2: TENANT_B[0], 3: TENANT_A[1], 4: TENANT_B[1]}
    assert pynvml.nvmlVgpuInstanceGetGpuPciId(1) == "00000000:06:00.0"  # A40: SR-IOV
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlVgpuInstanceGetGpuPciId(3)  # T4: mdev
    lic = pynvml.nvmlVgpuInstanceGetLicenseInfo(3)
    assert (lic.isLicensed, lic.currentState) == (0, pynvml.NVML_GRID_LICENSE_STATE_UNLICENSED)
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlVgpuInstanceGetVmID(99)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlVgpuInstanceGetUUID(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlVgpuTypeGetName(12345)

    sched = pynvml.nvmlDeviceGetVgpuSchedulerState(h0)
    assert (sched.schedulerPolicy, sched.arrMode) == (2, pynvml.NVML_VGPU_SCHEDULER_ARR_ENABLE)
    arr = sched.schedulerParams.vgpuSchedDataWithARR
    assert (arr.avgFactor, arr.timeslice) == (33, 2_000_000)
    sched = pynvml.nvmlDeviceGetVgpuSchedulerState(h1)
    assert (sched.schedulerPolicy, sched.arrMode) == (1, 0)


def test_vgpu_utilization(nvml: Nvml) -> None:
    scenario = vgpu_host(TENANT_A, TENANT_B)
    scenario["gpus"].append({"name": "NVIDIA A40", "pci_bus_id": "00000000:5E:00.0"})
    s = nvml.start(scenario)
    h0 = nvml.handle(0)
    samples = pynvml.nvmlDeviceGetVgpuUtilization(h0, 0)
    got = {
        x.vgpuInstance: (x.timeStamp, x.smUtil.uiVal, x.memUtil.uiVal, x.encUtil.uiVal)
        for x in samples
    }
    for v in s["gpus"][0]["vgpus"]:
        ts, sm, mem, enc, _dec = v["utilization_samples"][-1]  # the latest per instance
        assert got[v["id"]] == (ts, sm, mem, enc)
    latest = s["gpus"][0]["vgpus"][0]["utilization_samples"][-1][0]
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetVgpuUtilization(h0, latest)
    assert pynvml.nvmlDeviceGetVgpuUtilization(nvml.handle(2), 0) == []  # no vGPU: SUCCESS, 0
    assert pynvml.nvmlDeviceGetActiveVgpus(nvml.handle(2)) == []

    # The C protocol: count 0 -> INSUFFICIENT_SIZE with the instance count.
    fn = nvml.lib.nvmlDeviceGetVgpuUtilization
    value_type, count = ctypes.c_int(), ctypes.c_uint(0)
    assert fn(h0, ctypes.c_ulonglong(0), ctypes.byref(value_type), ctypes.byref(count), None) == 7
    assert count.value == 2
    assert value_type.value == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT


def test_vgpu_vm_id_buffer_and_fb_usage_width(nvml: Nvml) -> None:
    scenario = vgpu_host(TENANT_A, TENANT_B)
    long_vm_id = "v" * 79  # the longest NVML documents (80 bytes with the NUL)
    scenario["gpus"][0]["vgpus"][0]["vm_id"] = long_vm_id
    scenario["gpus"][0]["vgpus"][0]["fb_usage_bytes"] = 8 * 2**30 + 5
    nvml.start(scenario)
    # pynvml hands an 80-byte buffer but claims 128: the stub writes only what the string needs.
    assert pynvml.nvmlVgpuInstanceGetVmID(1)[0] == long_vm_id.encode()
    fn = nvml.lib.nvmlVgpuInstanceGetVmID
    id_type = ctypes.c_uint()
    buf = ctypes.create_string_buffer(b"\xaa" * 40, 40)
    assert fn(1, buf, 40, ctypes.byref(id_type)) == INSUFFICIENT_SIZE
    assert buf.raw == b"\xaa" * 40
    buf = ctypes.create_string_buffer(pynvml.NVML_DEVICE_UUID_BUFFER_SIZE)
    assert fn(1, buf, len(buf), ctypes.byref(id_type)) == SUCCESS
    assert (buf.value, id_type.value) == (long_vm_id.encode(), pynvml.NVML_VGPU_VM_ID_UUID)

    # nvml.h: unsigned long long *fbUsage; pynvml passes a c_uint and reads 32 bits of it.
    fb = ctypes.c_ulonglong()
    assert nvml.lib.nvmlVgpuInstanceGetFbUsage(1, ctypes.byref(fb)) == SUCCESS
    assert fb.value == 8 * 2**30 + 5
    assert pynvml.nvmlVgpuInstanceGetFbUsage(1) == 5, "pynvml fixed its c_uint: update README"


def test_mig_backed_vgpus(nvml: Nvml) -> None:
    s = nvml.start(mig_vgpu(MIG_VMS))
    h0, h1 = nvml.handle(0), nvml.handle(1)
    assert pynvml.nvmlDeviceGetMigMode(h0) == [1, 1]
    assert pynvml.nvmlDeviceGetActiveVgpus(h0) == [11, 12, 13]
    assert [pynvml.nvmlVgpuInstanceGetGpuInstanceId(v) for v in (11, 12, 13)] == [2, 3, 9]
    assert pynvml.nvmlVgpuInstanceGetGpuInstanceId(14) == stub.INVALID_GPU_INSTANCE_ID
    assert pynvml.nvmlVgpuTypeGetName(700) == "NVIDIA A100D-3-40C"
    assert [pynvml.nvmlVgpuInstanceGetVmID(v)[0].decode() for v in (11, 12, 13, 14)] == MIG_VMS
    # nvml.h: no utilization samples and no remapped rows with MIG enabled.
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetSamples(h0, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetRemappedRows(h0)
    assert pynvml.nvmlDeviceGetRemappedRows(h1) == (0, 0, 0, 0)
    es = pynvml.nvmlEventSetCreate()
    pynvml.nvmlDeviceRegisterEvents(h0, pynvml.nvmlEventTypeXidCriticalError, es)
    data = pynvml.nvmlEventSetWait(es, 0)
    assert (data.eventData, data.gpuInstanceId, data.computeInstanceId) == (94, 3, 0)
    pynvml.nvmlEventSetFree(es)
    assert s["gpus"][1]["mig_mode"] == 0


# --------------------------------------------------------------------------------------------
# Scenario files


def test_every_rewrite_is_seen(nvml: Nvml) -> None:
    scenario = eight_gpus()
    nvml.start(scenario)
    h = nvml.handle(0)
    for power in (100_000, 200_000, 300_000, 400_000):  # same size, back to back
        scenario["gpus"][0]["power_mw"] = power
        nvml.write(scenario)
        assert pynvml.nvmlDeviceGetPowerUsage(h) == power


def test_gpu_count_shrinks_midrun(nvml: Nvml) -> None:
    scenario = eight_gpus()
    nvml.start(scenario)
    h7 = nvml.handle(7)
    nvml.write({**scenario, "gpus": scenario["gpus"][:4]})
    assert pynvml.nvmlDeviceGetCount() == 4
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetPowerUsage(h7)


@pytest.mark.parametrize(
    ("scenario", "match"),
    [
        ({"gpu": []}, "unknown keys"),
        ({"gpus": [{"powr_mw": 1}]}, "unknown keys"),
        ({"gpus": [{"pci_bus_id": "17:00.0"}]}, "pci_bus_id"),
        ({"gpus": [{"vgpus": [{"id": 1, "vm_id": "x" * 80}]}]}, "longer than 79"),
        ({"gpus": [{"vgpus": [{"id": 1}, {"id": 1}]}]}, "used by another vGPU"),
        ({"gpus": [{"vgpus": [{"vm_id": "x"}]}]}, "required"),
        ({"gpus": [{"not_supported": ["nvmlDeviceGetFanSpeed"]}]}, "not a stub symbol"),
        ({"gpus": [{"errors": {"nvmlDeviceGetPowerUsage": "NOPE"}}]}, "unknown NVML return"),
        ({"gpus": [{"utilization_samples": {"gpu": [(2, 1), (2, 1)]}}]}, "strictly increasing"),
        ({"gpus": [{"name": "two\nlines"}]}, "control characters"),
        ({"init_error": "SOMETHING"}, "unknown NVML return"),
    ],
)
def test_scenario_validation(tmp_path: Path, scenario: Scenario, match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        write_scenario(tmp_path / "nvml.scn", scenario)
    assert not (tmp_path / "nvml.scn").exists()


def test_rendered_format(tmp_path: Path) -> None:
    text = stub.render_scenario(mig_vgpu(MIG_VMS))
    assert "gpu_count 2\n" in text
    assert "gpu.0.mig_mode 1\n" in text
    assert "gpu.0.xid 94 3 0\n" in text
    assert "vgpu.0.gpu_instance_id 2\n" in text
    assert "vgpu.3.gpu_instance_id" not in text
    assert f"vgpu.3.vm_id {MIG_VMS[3]}\n" in text


# --------------------------------------------------------------------------------------------
# Field values, GPM, fabric, confidential computing


def _fields(h: Any, wanted: list[Any]) -> dict[tuple[int, int], tuple[int, Any]]:
    values = pynvml.nvmlDeviceGetFieldValues(h, wanted)
    member = {1: "uiVal", 3: "ullVal"}
    return {
        (v.fieldId, v.scopeId): (
            v.nvmlReturn,
            getattr(v.value, member[v.valueType]) if v.nvmlReturn == 0 else None,
        )
        for v in values
    }


def test_field_values_each_with_its_own_return_code(nvml: Nvml) -> None:
    scenario = stub.h100_gpm()
    nvml.start(scenario)
    h = nvml.handle(0)
    got = _fields(
        h,
        [
            pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL,
            pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL,
            pynvml.NVML_FI_DEV_RETIRED_PENDING,  # fails alone in this scenario
            pynvml.NVML_FI_DEV_REMAPPED_COR,
            pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER,
            pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
            pynvml.NVML_FI_DEV_POWER_AVERAGE,
            pynvml.NVML_FI_DEV_POWER_INSTANT,
            (pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL, 3),
            (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, 17),
            (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, 18),  # past the last link
            9999,  # no such field
        ],
    )
    gpu = scenario["gpus"][0]
    assert got[(pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, 0)] == (0, gpu["ecc_corrected_volatile"])
    assert got[(pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL, 0)] == (0, gpu["ecc_uncorrected_aggregate"])
    assert got[(pynvml.NVML_FI_DEV_RETIRED_PENDING, 0)] == (pynvml.NVML_ERROR_UNKNOWN, None)
    assert got[(pynvml.NVML_FI_DEV_REMAPPED_COR, 0)] == (0, gpu["remapped_correctable"])
    assert got[(pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER, 0)] == (0, gpu["pcie_replay"])
    assert got[(pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, 0)] == (0, gpu["energy_mj"])
    assert got[(pynvml.NVML_FI_DEV_POWER_AVERAGE, 0)] == (0, gpu["power_average_mw"])
    assert got[(pynvml.NVML_FI_DEV_POWER_INSTANT, 0)] == (0, gpu["power_mw"])
    link3 = gpu["nvlinks"][3]["crc_flit"]
    assert got[(pynvml.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL, 3)] == (0, link3)
    assert got[(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, 17)] == (
        0,
        gpu["nvlinks"][17]["rx_kib"],
    )
    assert got[(pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, 18)][0] == (
        pynvml.NVML_ERROR_INVALID_ARGUMENT
    )
    assert got[(9999, 0)][0] == pynvml.NVML_ERROR_NOT_SUPPORTED


def test_field_values_follow_the_per_call_functions_overrides(nvml: Nvml) -> None:
    nvml.start(stub.not_supported())  # no ECC, energy, remapped rows, replay counter, NVLink
    got = _fields(
        nvml.handle(0),
        [
            pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL,
            pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
            pynvml.NVML_FI_DEV_REMAPPED_PENDING,
            pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER,
            pynvml.NVML_FI_DEV_POWER_AVERAGE,
            (pynvml.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL, 0),
        ],
    )
    assert {code for code, _ in got.values()} == {pynvml.NVML_ERROR_NOT_SUPPORTED}


def test_gpm_samples_and_metrics(nvml: Nvml) -> None:
    nvml.start(stub.h100_gpm())
    h = nvml.handle(0)
    assert pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 1
    live = nvml.lib.hcstub_gpm_samples_live()
    first, second = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    assert nvml.lib.hcstub_gpm_samples_live() == live + 2
    pynvml.nvmlGpmSampleGet(h, first)
    time.sleep(0.01)
    pynvml.nvmlGpmSampleGet(h, second)
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = 2
    request.sample1, request.sample2 = first, second
    request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    request.metrics[1].metricId = pynvml.NVML_GPM_METRIC_NVDEC_0_UTIL  # not in the scenario
    pynvml.nvmlGpmMetricsGet(request)
    assert (request.metrics[0].nvmlReturn, request.metrics[0].value) == (0, 87.5)
    assert request.metrics[1].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    request.sample1, request.sample2 = second, first  # out of order
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlGpmMetricsGet(request)
    request.version = 2
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlGpmMetricsGet(request)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # not in MIG mode
        pynvml.nvmlGpmMigSampleGet(h, 1, first)
    pynvml.nvmlGpmSampleFree(first)
    pynvml.nvmlGpmSampleFree(second)
    assert nvml.lib.hcstub_gpm_samples_live() == live


def test_gpm_unsupported_and_per_mig_instance(nvml: Nvml) -> None:
    nvml.start(stub.a100_no_gpm())
    h = nvml.handle(0)
    assert pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlGpmSampleGet(h, _gpm_sample())
    nvml.write(stub.mig_vgpu_gpm(TENANT_A + TENANT_B))
    h = nvml.handle(0)
    a, b = _gpm_sample(), _gpm_sample()
    pynvml.nvmlGpmMigSampleGet(h, 2, a)
    with pytest.raises(pynvml.NVMLError_NotFound):  # no such GPU instance
        pynvml.nvmlGpmMigSampleGet(h, 5, b)
    time.sleep(0.01)
    pynvml.nvmlGpmMigSampleGet(h, 2, b)
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = 1
    request.sample1, request.sample2 = a, b
    request.metrics[0].metricId = pynvml.NVML_GPM_METRIC_SM_UTIL
    pynvml.nvmlGpmMetricsGet(request)
    assert request.metrics[0].value == 40.0
    for symbol in MIG_CALLS:  # overridable, and lost with its GPU
        scenario = stub.mig_vgpu_gpm(TENANT_A + TENANT_B)
        scenario["gpus"][0]["not_supported"] = [symbol]
        nvml.write(scenario)
        with pytest.raises(pynvml.NVMLError_NotSupported):
            DEVICE_CALLS[symbol](h)
        lost_gpu_midrun(nvml.path, stub.mig_vgpu_gpm(TENANT_A + TENANT_B), 0)
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            DEVICE_CALLS[symbol](h)


def test_fabric_and_conf_compute(nvml: Nvml) -> None:
    nvml.start(stub.hgx_fabric_degraded())
    infos = []
    for i in range(8):
        info = _fabric_info()
        pynvml.nvmlDeviceGetGpuFabricInfoV(nvml.handle(i), ctypes.byref(info))
        infos.append(info)
    assert {i.state for i in infos} == {pynvml.NVML_GPU_FABRIC_STATE_COMPLETED}
    assert [i.healthSummary for i in infos].count(3) == 1  # GPU 2: limited capacity
    assert infos[2].healthMask & 0x3 == pynvml.NVML_GPU_FABRIC_HEALTH_MASK_DEGRADED_BW_TRUE
    assert infos[6].status == pynvml.NVML_ERROR_NOT_READY
    old = pynvml.c_nvmlGpuFabricInfo_v3_t()
    old.version = 1 << 24 | ctypes.sizeof(old)
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        pynvml.nvmlDeviceGetGpuFabricInfoV(nvml.handle(0), ctypes.byref(old))
    state = pynvml.nvmlSystemGetConfComputeState()
    assert (state.environment, state.ccFeature, state.devToolsMode) == (2, 1, 0)
    assert pynvml.nvmlSystemGetConfComputeGpusReadyState() == 1
    nvml.write(stub.eight_gpus())
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlDeviceGetGpuFabricInfoV(nvml.handle(0), ctypes.byref(_fabric_info()))
    with pytest.raises(pynvml.NVMLError_NotSupported):
        pynvml.nvmlSystemGetConfComputeState()
