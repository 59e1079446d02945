"""Turns the sources' results into the snapshot that every renderer reads.

The parts (sources, tenant map, remote writer) are built by the composition root (wiring.py)
and handed in; the collector polls, keeps the latest results and attributes them.

Data flows one way: a poller finishes -> its result replaces that source's last one -> a new
snapshot is attributed and rendered, text and gzip, once. Scrapes only read the rendered bytes.

Rendering is coalesced (sources finishing within RENDER_COALESCE_SECONDS of each other cost one
render) and runs in its own thread: at 1,000 VMs a render takes ~100 ms, which on the event loop
would hold every scrape that arrives meanwhile; in a thread the loop keeps answering (zlib
releases the GIL, and Python switches threads every 5 ms).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gzip
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from hostcollector import __version__
from hostcollector.attribution import (
    attribute_gpus,
    attribute_pci_devices,
    attribute_vfs,
    attribute_vms,
)
from hostcollector.config import Config
from hostcollector.exposition import render
from hostcollector.kinds import in_scope
from hostcollector.metrics import KINDS
from hostcollector.model import (
    DomainStats,
    LibvirtHealth,
    LibvirtSample,
    MemoryStats,
    RemoteWriteStatus,
    Snapshot,
    SourceStatus,
    TenantClaim,
    TenantMapStatus,
)
from hostcollector.poller import Poller
from hostcollector.selfmetrics import Sample, SelfMetrics, SelfMetricsRegistry
from hostcollector.sources import DECLARED, Results, Source, SourceDeclaration, SourceResult

if TYPE_CHECKING:
    from hostcollector.remote_write.writer import RemoteWriter
    from hostcollector.tenant_map import TenantMapFile

BUILD_LABELS = (("version", __version__), ("python_version", platform.python_version()))
RENDER_COALESCE_SECONDS = 0.25
# A render waits for polls still running (the libvirt one takes ~1 s at 200 domains while NVML's
# takes milliseconds), so sources ticking together cost one render, but never longer than this.
RENDER_MAX_WAIT_SECONDS = 5.0
NO_TENANT_MAP = TenantMapStatus(configured=False)

ResultT = TypeVar("ResultT", bound=SourceResult)


class Exposition:
    """One snapshot's bytes, each format with its gzip, rendered up front: the text format
    always, OpenMetrics too once a scraper has asked for it (Prometheus prefers it by default).
    A format nobody asked for before, or one tenant's view, is rendered on its first request."""

    def __init__(self, snapshot: Snapshot, *, openmetrics: bool = False) -> None:
        self.snapshot = snapshot
        # Whether a scraper has asked for OpenMetrics (of this exposition or one before): the
        # collector reads it for the next render, so that makes OpenMetrics too, off the loop,
        # instead of the first scrape of each snapshot on the loop.
        self.openmetrics_wanted = openmetrics
        self._bodies: dict[tuple[bool, bool, str | None], bytes] = {}
        # The host's view, its label text made once for every format rendered of it.
        self._view = list(in_scope(KINDS, snapshot, None))
        for flavour in (False, True) if openmetrics else (False,):
            plain = self._bodies[(flavour, False, None)] = render(
                snapshot, openmetrics=flavour, view=self._view
            )
            self._bodies[(flavour, True, None)] = gzip.compress(plain, compresslevel=1)

    def body(self, *, openmetrics: bool, gzipped: bool, tenant: str | None = None) -> bytes:
        """The exposition; with `tenant`, only that tenant's series (exposition.render)."""
        self.openmetrics_wanted |= openmetrics
        key = (openmetrics, gzipped, tenant)
        if key not in self._bodies:
            plain = self._bodies.get((openmetrics, False, tenant))
            if plain is None:
                plain = self._bodies[(openmetrics, False, tenant)] = render(
                    self.snapshot,
                    openmetrics=openmetrics,
                    tenant=tenant,
                    view=self._view if tenant is None else None,
                )
            if gzipped:
                self._bodies[key] = gzip.compress(plain, compresslevel=1)
        return self._bodies[key]


@dataclass(frozen=True)
class _Inputs:
    now: float
    latest: Results
    statuses: tuple[SourceStatus, ...]
    tenant_claims: Mapping[str, TenantClaim]
    tenant_status: TenantMapStatus
    libvirt_health: LibvirtHealth | None
    remote_write: tuple[RemoteWriteStatus, ...]
    self_series: tuple[Sample, ...]


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
        elif fresh and fresh.kernel_read_at is not None and fresh.kernel_read_at >= oldest:
            # libvirtd silent for longer than max age, the kernel still reading the VM: its
            # kernel-read values stay, what only libvirt gives (block, balloon) goes away.
            kept.append(
                dataclasses.replace(
                    domain, blocks=(), memory=MemoryStats(rss_bytes=domain.memory.rss_bytes)
                )
            )
    return tuple(kept)


class Collector:
    def __init__(
        self,
        config: Config,
        *,
        sources: Mapping[str, Source[SourceResult]] | None = None,
        tenant_map: TenantMapFile | None = None,
        remote_writer: RemoteWriter | None = None,
        libvirt_health: Callable[[], LibvirtHealth] | None = None,
        self_metrics: Sequence[SelfMetrics] = (),
    ) -> None:
        """The parts, as wiring.build_collector makes them from `config`; without them, no
        sources, no mapping file, no remote write. Each source is named as its declaration in
        sources.SOURCES, whose result type it returns."""
        self.config = config
        self.tenant_map = tenant_map
        self.sources = dict(sources or {})
        undeclared = self.sources.keys() - DECLARED.keys()
        if undeclared:
            raise ValueError(f"sources not declared in sources.SOURCES: {sorted(undeclared)}")
        self.pollers = {
            name: self._poller(DECLARED[name], source) for name, source in self.sources.items()
        }
        self.latest = Results()
        self._libvirt_health = libvirt_health
        self.remote_writer = remote_writer
        # Self-metrics, each reported by its owner; the HTTP side registers its own (app.py).
        self._self_metrics = SelfMetricsRegistry()
        for poller in self.pollers.values():
            self.register(poller)
        for owner in (*self_metrics, self.tenant_map, self.remote_writer):
            if owner is not None:
                self.register(owner)
        self.exposition = Exposition(self.build_snapshot())
        self._tasks: list[asyncio.Task[None]] = []
        self._renderer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hc-render")
        self._render_pending: asyncio.TimerHandle | None = None
        self._render_wait_since = 0.0
        self._renders: set[asyncio.Future[None]] = set()

    def register(self, owner: SelfMetrics) -> None:
        """Adds an owner's self-metrics to every snapshot from the next one on."""
        self._self_metrics.register(owner)

    def _poller(
        self, declaration: SourceDeclaration[Any, ResultT], source: Source[SourceResult]
    ) -> Poller[ResultT]:
        def on_result(_name: str, result: ResultT | None) -> None:
            # A failed poll keeps the source's last result: its VMs are served with their
            # growing age until max_sample_age_seconds, and the source's up metric says it
            # failed.
            if result is not None:
                self.latest = declaration.keep(self.latest, result)
            self._result_arrived()

        return Poller(
            declaration.name,
            lambda: declaration.poll(source),
            source.interval_seconds,
            on_result,
        )

    def _result_arrived(self) -> None:
        if self._render_pending is None:
            loop = asyncio.get_running_loop()
            self._render_wait_since = loop.time()
            self._render_pending = loop.call_later(RENDER_COALESCE_SECONDS, self._start_render)

    def _start_render(self) -> None:
        loop = asyncio.get_running_loop()
        waited = loop.time() - self._render_wait_since
        if waited < RENDER_MAX_WAIT_SECONDS and any(p.in_flight for p in self.pollers.values()):
            self._render_pending = loop.call_later(RENDER_COALESCE_SECONDS, self._start_render)
            return
        self._render_pending = None
        inputs = self._inputs()  # read on the loop, where sources and pollers change them
        openmetrics = self.exposition.openmetrics_wanted
        future = loop.run_in_executor(
            self._renderer, lambda: Exposition(self._assemble(inputs), openmetrics=openmetrics)
        )
        render = asyncio.ensure_future(self._publish(future))
        self._renders.add(render)
        render.add_done_callback(self._renders.discard)

    async def _publish(self, future: asyncio.Future[Exposition]) -> None:
        exposition = await future
        if exposition.snapshot.taken_at >= self.exposition.snapshot.taken_at:
            # A scraper may have asked the one served for OpenMetrics while this one rendered.
            exposition.openmetrics_wanted |= self.exposition.openmetrics_wanted
            self.exposition = exposition

    def refresh(self) -> None:
        """Render now, on the caller's thread (dump, tests): no coalescing."""
        if self._render_pending is not None:
            self._render_pending.cancel()
            self._render_pending = None
        self.exposition = Exposition(
            self.build_snapshot(), openmetrics=self.exposition.openmetrics_wanted
        )

    def build_snapshot(self) -> Snapshot:
        return self._assemble(self._inputs())

    def _inputs(self) -> _Inputs:
        return _Inputs(
            now=time.time(),
            latest=self.latest,
            statuses=tuple(poller.status() for poller in self.pollers.values()),
            tenant_claims=self.tenant_map.current() if self.tenant_map else {},
            tenant_status=self.tenant_map.status() if self.tenant_map else NO_TENANT_MAP,
            libvirt_health=self._libvirt_health() if self._libvirt_health else None,
            remote_write=self.remote_writer.status() if self.remote_writer else (),
            self_series=self._self_metrics.collect(),
        )

    def _assemble(self, inputs: _Inputs) -> Snapshot:
        """The snapshot from copies of the sources' results: safe on the render thread."""
        now = inputs.now
        libvirt = inputs.latest.libvirt
        domains = _within_max_age(libvirt, now, self.config.sources.libvirt.max_sample_age_seconds)
        claims = {
            "metadata": libvirt.metadata_claims if libvirt else {},
            "mapping_file": inputs.tenant_claims,
        }
        attribution = self.config.attribution
        vms = attribute_vms(
            domains,
            claims,
            attribution.order,
            attribution.info_labels,
            libvirt.freshness if libvirt else None,
            now,
        )
        sriov, nvml = inputs.latest.sriov, inputs.latest.nvml
        pci_devices = libvirt.pci_devices if libvirt else {}
        return Snapshot(
            taken_at=now,
            vms=vms,
            sources=inputs.statuses,
            tenant_map=inputs.tenant_status,
            build=BUILD_LABELS,
            libvirt=inputs.libvirt_health,
            pfs=sriov.pfs if sriov else (),
            vfs=attribute_vfs(sriov.vfs if sriov else (), pci_devices, vms),
            gpus=attribute_gpus(
                nvml.gpus if nvml else (),
                pci_devices,
                libvirt.mdev_devices if libvirt else {},
                vms,
                nvml.driver_version if nvml else None,
            ),
            pci_devices=attribute_pci_devices(
                pci_devices, libvirt.pci_health if libvirt else {}, vms
            ),
            nvml_available=nvml.nvml_available if nvml else None,
            nvml_driver_version=nvml.driver_version if nvml else None,
            nvml_conf_compute=nvml.conf_compute if nvml else None,
            remote_write=inputs.remote_write,
            self_series=inputs.self_series,
        )

    async def poll_all_once(self) -> None:
        await asyncio.gather(*(poller.poll_once() for poller in self.pollers.values()))
        self.refresh()

    def unanswered_sources(self) -> tuple[str, ...]:
        """The enabled sources the snapshot served now holds no answer of: no poll of theirs
        has ended yet. A failed poll is an answer (its source is served down), so a broken
        backend degrades its source and never keeps the daemon unready. Read from the
        published snapshot, not the pollers, so that once this is empty a scrape shows every
        source's first answer."""
        return tuple(s.name for s in self.exposition.snapshot.sources if s.polls_total == 0)

    def scheduling_alive(self) -> bool:
        """Whether every poll task started is still running. A poller's loop survives any
        failure of its source; a task that ended anyway is a bug, and the daemon would serve
        ever older values while answering scrapes."""
        return not any(task.done() for task in self._tasks)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(poller.run(), name=f"poll-{name}")
            for name, poller in self.pollers.items()
        ]
        if self.remote_writer is not None:
            self.remote_writer.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._render_pending is not None:
            self._render_pending.cancel()
            self._render_pending = None
        await asyncio.gather(*self._tasks, *self._renders, return_exceptions=True)
        if self.remote_writer is not None:
            await self.remote_writer.close()
        self._renderer.shutdown(wait=False)
        for source in self.sources.values():
            await source.close()
