"""Sources that replay a case's recordings (tests/cases/<name>/) through the real parsers.

Each implements the Source interface of hostcollector/sources/__init__.py and its poll() returns
what the real source's poll() returns, built by the code the real source uses:

- libvirt: `dump --raw`'s entries -> parse_domain_stats, parse_tenant (metadata) and
  domain_devices (the domain XML's hostdevs, kept in the entry's "xml": `dump --raw` does not
  record it). What the real source's tracker knows (freshness, quarantine, the path that
  served a VM, its health) comes from the recording's optional "freshness" and "health" keys.
- sriov: `dump --raw`'s per-PF entries -> the RTM_NEWLINK bytes through rtnetlink.parse_link and
  sriov.build_pf_sample, as SriovSource does after reading sysfs and the socket.
- nvml: the real NvmlSource and the real pynvml, against the NVML stand-in (tests/nvml_stub)
  answering from the case's scenario (nvml.json), with its sysfs GPU functions (gpu-sysfs.json)
  laid out on disk (tests/gpu_fixtures.py).

Replays poll on a long interval: a case is one poll of each source, however long a test runs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from hostcollector.config import Config, LibvirtConfig, SriovConfig
from hostcollector.errors import SourceError
from hostcollector.model import LibvirtHealth, LibvirtSample, SriovSample, VfStats, VmFreshness
from hostcollector.selfmetrics import Sample, libvirt_samples
from hostcollector.sources import Source
from hostcollector.sources.domain_xml import domain_devices
from hostcollector.sources.libvirt_stats import parse_domain_stats
from hostcollector.sources.nvml import NvmlSource
from hostcollector.sources.pci_sysfs import read_pci_devices
from hostcollector.sources.rtnetlink import parse_link
from hostcollector.sources.sriov import build_pf_sample
from hostcollector.sources.sriov_sysfs import PhysicalFunction
from hostcollector.tenancy import compile_rules, parse_tenant
from tests.conftest import load_raw
from tests.gpu_fixtures import GpuFunction, make_gpu_sysfs
from tests.nvml_stub.stub import SCENARIO_ENV, write_scenario
from tests.pci_fixtures import PciFunction, make_pci_sysfs
from tests.snapshots import LAB_ATTRIBUTION
from tests.sriov_fixtures import recording

REPLAY_INTERVAL_SECONDS = 3600.0
SetEnv = Callable[[str, str], None]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class ReplayLibvirt:
    name = "libvirt"
    interval_seconds = REPLAY_INTERVAL_SECONDS

    def __init__(
        self,
        config: LibvirtConfig,
        recording: Mapping[str, Any],
        config_all: Config,
        now: float,
        pci_sysfs_root: Path | None = None,
    ) -> None:
        """`pci_sysfs_root`: a sysfs tree holding the hostdevs (pci-sysfs.json laid out)."""
        self.config = config
        self._pci_sysfs_root = pci_sysfs_root
        self._entries: list[dict[str, Any]] = recording["libvirt"]
        self._freshness: dict[str, dict[str, Any]] = recording.get("freshness", {})
        self._health: dict[str, Any] | None = recording.get("health")
        self._rules = compile_rules(config_all.attribution)
        # When the stats were read: the recording's, else the moment the replay stands for.
        self._sampled_at: float = recording.get("sampled_at", now)

    def health(self) -> LibvirtHealth:
        # What LibvirtSource.health() reports; a recording without it: one connect, no trouble.
        h = self._health or {}
        return LibvirtHealth(
            connects_total=h.get("connects_total", 1),
            timeouts_by_reason=tuple(sorted(h.get("timeouts_by_reason", {}).items())),
            quarantined_vms=h.get("quarantined_vms", 0),
            quarantines_total=h.get("quarantines_total", 0),
            busy_domains_total=h.get("busy_domains_total", 0),
            kernel_fallbacks_by_reason=tuple(
                sorted(h.get("kernel_fallbacks_by_reason", {}).items())
            ),
        )

    def collect(self) -> Iterator[Sample]:
        # What LibvirtSource.collect() reports: its health as self-metrics.
        return libvirt_samples(self.health())

    def _fresh(self, uuid: str) -> VmFreshness:
        known = self._freshness.get(uuid, {})
        return VmFreshness(
            self._sampled_at - known.get("age_seconds", 0.0),
            known.get("quarantined", False),
            known.get("job_active", False),
            # "path": "kernel": the kernel path read its CPU, vCPU and NIC values at the poll
            self._sampled_at if known.get("path") == "kernel" else None,
        )

    async def poll(self) -> LibvirtSample:
        pci_devices: dict[str, tuple[str, ...]] = {}
        mdev_devices: dict[str, tuple[str, ...]] = {}
        for entry in self._entries:
            if "xml" not in entry:
                continue
            devices = domain_devices(entry["xml"])
            if devices.pci:
                pci_devices[entry["uuid"]] = devices.pci
            if devices.mdev:
                mdev_devices[entry["uuid"]] = devices.mdev
        held = [address for addresses in pci_devices.values() for address in addresses]
        root = self._pci_sysfs_root
        return LibvirtSample(
            domains=tuple(
                parse_domain_stats(e["uuid"], e["name"], e["stats"]) for e in self._entries
            ),
            metadata_claims={
                e["uuid"]: parse_tenant(e["metadata"], self._rules) for e in self._entries
            },
            freshness={e["uuid"]: self._fresh(e["uuid"]) for e in self._entries},
            listed_at=self._sampled_at,
            pci_devices=pci_devices,
            mdev_devices=mdev_devices,
            pci_health=read_pci_devices(root, held) if root is not None else {},
        )

    async def close(self) -> None:
        pass


def _recorded_sysfs_stats(entry: Mapping[str, Any]) -> Callable[[str, int], dict[str, int] | None]:
    # Per-VF driver counters, which SriovSource reads from sysfs only for a truncated VF list.
    stats: dict[str, dict[str, int]] = entry.get("vf_sysfs_stats", {})
    return lambda _pf, index: stats.get(str(index))


class ReplaySriov:
    name = "sriov"
    interval_seconds = REPLAY_INTERVAL_SECONDS

    def __init__(self, config: SriovConfig, recording: Mapping[str, Any]) -> None:
        self.config = config
        self._entries: list[dict[str, Any]] = recording["sriov"]

    async def poll(self) -> SriovSample:
        pfs = []
        vfs: list[VfStats] = []
        for entry in self._entries:
            pf = PhysicalFunction(
                name=entry["pf"],
                ifindex=entry["ifindex"],
                pci_address=entry["pci_address"],
                numvfs=entry["numvfs"],
                vf_pci={int(index): pci for index, pci in entry["vf_pci"].items()},
            )
            link = parse_link(base64.b64decode(entry["rtm_newlink_base64"]))
            pf_stats, pf_vfs = build_pf_sample(pf, link, _recorded_sysfs_stats(entry))
            pfs.append(pf_stats)
            vfs.extend(pf_vfs)
        return SriovSample(tuple(pfs), tuple(vfs))

    async def close(self) -> None:
        pass


def gpu_functions(document: list[dict[str, Any]]) -> list[GpuFunction]:
    """gpu-sysfs.json: GpuFunction's fields by name, its tuples as JSON lists."""
    functions = []
    for entry in document:
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()
        }
        functions.append(GpuFunction(**fields))
    return functions


def pci_functions(document: list[dict[str, Any]]) -> list[PciFunction]:
    """pci-sysfs.json: PciFunction's fields by name, its tuples as JSON lists."""
    return [
        PciFunction(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})
        for entry in document
    ]


def replay_nvml(
    config: Config, case: Path, stub_library: Path, scratch: Path, setenv: SetEnv
) -> NvmlSource:
    """The real NVML source against the stand-in library, which reads the scenario file that
    $HC_NVML_SCENARIO names at nvmlInit (`setenv`: pytest's monkeypatch.setenv, undone after)."""
    scenario = scratch / "nvml.scn"
    write_scenario(scenario, _read_json(case / "nvml.json"))
    setenv(SCENARIO_ENV, str(scenario))
    sysfs = scratch / "sysfs"
    if (case / "gpu-sysfs.json").exists():
        make_gpu_sysfs(sysfs, gpu_functions(_read_json(case / "gpu-sysfs.json")))
    nvml = replace(
        config.sources.nvml,
        interval_seconds=REPLAY_INTERVAL_SECONDS,
        library_path=str(stub_library),
        sysfs_root=str(sysfs),
    )
    return NvmlSource(nvml)


def replay_sources(
    config: Config,
    case: Path,
    now: float,
    stub_library: Callable[[], Path],
    scratch: Path,
    setenv: SetEnv,
) -> dict[str, Source]:
    """A replay of every source the case's config enables, from that case's recordings."""
    sources: dict[str, Source] = {}
    if config.sources.libvirt.enabled:
        recording = _read_json(case / "libvirt.json")
        pci_root = None
        if (case / "pci-sysfs.json").exists():
            pci_root = make_pci_sysfs(
                scratch / "pci-sysfs", pci_functions(_read_json(case / "pci-sysfs.json"))
            )
        sources["libvirt"] = ReplayLibvirt(config.sources.libvirt, recording, config, now, pci_root)
    if config.sources.sriov.enabled:
        sources["sriov"] = ReplaySriov(config.sources.sriov, _read_json(case / "sriov.json"))
    if config.sources.nvml.enabled:
        sources["nvml"] = replay_nvml(config, case, stub_library(), scratch, setenv)
    return sources


# -- Fakes shared by several test modules ------------------------------------------------------


class RecordedLibvirt:
    """A Source that replays a lab recording through the real parsing code, counting polls."""

    name = "libvirt"
    interval_seconds = 3600.0

    def __init__(self, fail: bool = False) -> None:
        self.polls = 0
        self.fail = fail
        raw = load_raw()
        rules = compile_rules(LAB_ATTRIBUTION)
        self.sample = LibvirtSample(
            tuple(parse_domain_stats(e["uuid"], e["name"], e["stats"]) for e in raw),
            {e["uuid"]: parse_tenant(e["metadata"], rules) for e in raw},
            {e["uuid"]: VmFreshness(time.time()) for e in raw},
            time.time(),
        )

    async def poll(self) -> LibvirtSample:
        self.polls += 1
        if self.fail:
            raise SourceError("connect", "cannot connect to qemu:///system")
        return self.sample

    async def close(self) -> None:
        pass


class RecordedLinks:
    """NetlinkLinks replaced at the socket: answers with recorded RTM_NEWLINK bytes."""

    def __init__(self, pfs: list[dict] | None = None) -> None:  # type: ignore[type-arg]
        self.by_index = {
            pf["ifindex"]: base64.b64decode(pf["rtm_newlink_base64"]) for pf in pfs or recording()
        }
        self.asked: list[int] = []

    def fetch(self, ifindex: int) -> bytes | None:
        self.asked.append(ifindex)
        return self.by_index.get(ifindex)

    def close(self) -> None:
        pass


def poll_once(source: Any) -> Any:
    """One poll of a real source, closed after: its result (a SourceResult)."""

    async def go() -> Any:
        try:
            return await source.poll()
        finally:
            await source.close()

    return asyncio.run(go())


def poll_sriov(
    sysfs: Path, links: RecordedLinks | None = None, record_raw: bool = False
) -> SriovSample:
    """One poll of the real SriovSource over a sysfs tree, netlink answered by `links`."""
    from hostcollector.sources.sriov import SriovSource

    source = SriovSource(SriovConfig(sysfs_root=str(sysfs)), record_raw=record_raw)
    source._links = links or RecordedLinks()  # type: ignore[assignment]

    return poll_once(source)
