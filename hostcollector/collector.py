"""Wires sources, pollers and attribution into the snapshot that every renderer reads.

Data flows one way: a poller finishes -> its result replaces that source's last one -> a new
snapshot is attributed and rendered once. Scrapes only read the rendered bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import platform
import time
from typing import Any, Protocol, runtime_checkable

from hostcollector import __version__
from hostcollector.attribution import attribute_gpus, attribute_vfs, attribute_vms
from hostcollector.config import Config
from hostcollector.exposition import render
from hostcollector.model import (
    DomainStats,
    LibvirtHealth,
    LibvirtSample,
    NvmlSample,
    Snapshot,
    SriovSample,
)
from hostcollector.poller import Poller
from hostcollector.sources import Source, build_sources
from hostcollector.tenancy import compile_rules
from hostcollector.tenant_map import TenantMapFile

BUILD_LABELS = (("version", __version__), ("python_version", platform.python_version()))


class Exposition:
    """One snapshot's bytes: text rendered now, OpenMetrics and gzip bodies on first request."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._bodies: dict[tuple[bool, bool], bytes] = {(False, False): render(snapshot)}

    def body(self, *, openmetrics: bool, gzipped: bool) -> bytes:
        key = (openmetrics, gzipped)
        if key not in self._bodies:
            plain = self._bodies.get((openmetrics, False))
            if plain is None:
                plain = self._bodies[(openmetrics, False)] = render(
                    self.snapshot, openmetrics=openmetrics
                )
            if gzipped:
                self._bodies[key] = gzip.compress(plain, compresslevel=1)
        return self._bodies[key]


@runtime_checkable
class HasHealth(Protocol):
    def health(self) -> LibvirtHealth: ...


def _within_max_age(
    sample: LibvirtSample | None, now: float, max_age: float
) -> tuple[DomainStats, ...]:
    """The VMs whose values are recent enough to serve; older ones go away rather than lie."""
    if sample is None:
        return ()
    oldest = now - max_age
    kept = []
    for domain in sample.domains:
        fresh = sample.freshness.get(domain.uuid)
        sampled_at = fresh.sampled_at if fresh and fresh.sampled_at else sample.listed_at
        if sampled_at >= oldest:
            kept.append(domain)
    return tuple(kept)


class Collector:
    def __init__(
        self,
        config: Config,
        *,
        record_raw: bool = False,
        sources: dict[str, Source] | None = None,
    ) -> None:
        """`sources` replaces the configured ones (tests replay recordings through it)."""
        self.config = config
        self.tenant_map = TenantMapFile(config.attribution.mapping_file)
        if sources is None:
            rules = compile_rules(config.attribution)
            sources = build_sources(config, rules, record_raw=record_raw)
        self.sources = sources
        self.pollers = {
            name: Poller(name, source.poll, source.interval_seconds, self._on_result)
            for name, source in self.sources.items()
        }
        self.latest: dict[str, Any] = {}
        self.exposition = Exposition(self.build_snapshot())
        self._tasks: list[asyncio.Task[None]] = []

    def _on_result(self, name: str, result: Any) -> None:
        # A failed poll keeps the source's last result: its VMs are served with their growing
        # age until max_sample_age_seconds, and the source's up metric says it failed.
        if result is not None:
            self.latest[name] = result
        self.exposition = Exposition(self.build_snapshot())

    def build_snapshot(self) -> Snapshot:
        now = time.time()
        libvirt: LibvirtSample | None = self.latest.get("libvirt")
        domains = _within_max_age(libvirt, now, self.config.sources.libvirt.max_sample_age_seconds)
        claims = {
            "metadata": libvirt.metadata_claims if libvirt else {},
            "mapping_file": self.tenant_map.current(),
        }
        attribution = self.config.attribution
        source = self.sources.get("libvirt")
        vms = attribute_vms(
            domains,
            claims,
            attribution.order,
            attribution.info_labels,
            libvirt.freshness if libvirt else None,
            now,
        )
        sriov: SriovSample | None = self.latest.get("sriov")
        nvml: NvmlSample | None = self.latest.get("nvml")
        pci_devices = libvirt.pci_devices if libvirt else {}
        return Snapshot(
            taken_at=now,
            vms=vms,
            sources=tuple(poller.status() for poller in self.pollers.values()),
            tenant_map=self.tenant_map.status(),
            build=BUILD_LABELS,
            libvirt=source.health() if isinstance(source, HasHealth) else None,
            pfs=sriov.pfs if sriov else (),
            vfs=attribute_vfs(sriov.vfs if sriov else (), pci_devices, vms),
            gpus=attribute_gpus(
                nvml.gpus if nvml else (),
                pci_devices,
                libvirt.mdev_devices if libvirt else {},
                vms,
            ),
            nvml_available=nvml.nvml_available if nvml else None,
            nvml_driver_version=nvml.driver_version if nvml else None,
        )

    async def poll_all_once(self) -> None:
        await asyncio.gather(*(poller.poll_once() for poller in self.pollers.values()))

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(poller.run(), name=f"poll-{name}")
            for name, poller in self.pollers.items()
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for source in self.sources.values():
            await source.close()
