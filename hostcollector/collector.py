"""Wires sources, pollers and attribution into the snapshot that every renderer reads.

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
import gzip
import platform
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
    RemoteWriteStatus,
    Snapshot,
    SourceStatus,
    SriovSample,
    TenantClaim,
    TenantMapStatus,
)
from hostcollector.poller import Poller
from hostcollector.reloading import ReloadingFiles
from hostcollector.remote_write.writer import RemoteWriter
from hostcollector.sources import Source, build_sources
from hostcollector.tenancy import compile_rules
from hostcollector.tenant_map import TenantMapFile

BUILD_LABELS = (("version", __version__), ("python_version", platform.python_version()))
RENDER_COALESCE_SECONDS = 0.25
# A render waits for polls still running (the libvirt one takes ~1 s at 200 domains while NVML's
# takes milliseconds), so sources ticking together cost one render, but never longer than this.
RENDER_MAX_WAIT_SECONDS = 5.0


class Exposition:
    """One snapshot's bytes, each format with its gzip, rendered up front: the text format
    always, OpenMetrics too once a scraper has asked for it (Prometheus prefers it by default).
    A format nobody asked for before, or one tenant's view, is rendered on its first request."""

    def __init__(self, snapshot: Snapshot, *, openmetrics: bool = False) -> None:
        self.snapshot = snapshot
        self._bodies: dict[tuple[bool, bool, str | None], bytes] = {}
        for flavour in (False, True) if openmetrics else (False,):
            plain = self._bodies[(flavour, False, None)] = render(snapshot, openmetrics=flavour)
            self._bodies[(flavour, True, None)] = gzip.compress(plain, compresslevel=1)

    @property
    def ready(self) -> frozenset[tuple[bool, bool]]:
        """(openmetrics, gzipped) bodies of the host's view already rendered."""
        return frozenset((om, gz) for om, gz, tenant in self._bodies if tenant is None)

    def body(self, *, openmetrics: bool, gzipped: bool, tenant: str | None = None) -> bytes:
        """The exposition; with `tenant`, only that tenant's series (exposition.render)."""
        key = (openmetrics, gzipped, tenant)
        if key not in self._bodies:
            plain = self._bodies.get((openmetrics, False, tenant))
            if plain is None:
                plain = self._bodies[(openmetrics, False, tenant)] = render(
                    self.snapshot, openmetrics=openmetrics, tenant=tenant
                )
            if gzipped:
                self._bodies[key] = gzip.compress(plain, compresslevel=1)
        return self._bodies[key]


@dataclass(frozen=True)
class _Inputs:
    now: float
    latest: dict[str, Any]
    statuses: tuple[SourceStatus, ...]
    tenant_claims: Mapping[str, TenantClaim]
    tenant_status: TenantMapStatus
    libvirt_health: LibvirtHealth | None
    http_denied: tuple[tuple[str, int], ...]
    http_connections: int | None
    http_connections_closed: tuple[tuple[str, int], ...]
    watched_files: tuple[tuple[str, int, int], ...]
    tls_not_after: float | None
    remote_write: tuple[RemoteWriteStatus, ...]


class ConnectionCounts(Protocol):
    """What the HTTP server's connection guard tells (server.ConnectionGuard)."""

    @property
    def open(self) -> int: ...

    @property
    def closed_total(self) -> Counter[str]: ...


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
        # Requests the HTTP side refused, by reason (missing, invalid, scope).
        self.http_denied: Counter[str] = Counter()
        # The HTTP server's connections, once it serves (set by the HTTP side).
        self.http_connections: ConnectionCounts | None = None
        # Files the HTTP side re-reads on change (tokens, TLS certificates), for self-metrics.
        self.watched_files: dict[str, ReloadingFiles[Any]] = {}
        # When the served TLS certificate expires (set by the HTTP side when TLS is on).
        self.tls_not_after: Callable[[], float | None] = lambda: None
        self.remote_writer = (
            RemoteWriter(
                config.remote_write,
                lambda: self.exposition.snapshot,
                # Recorded replays have no libvirt events: every VM is written, as before.
                handover=getattr(self.sources.get("libvirt"), "handover", None),
            )
            if config.remote_write.endpoints
            else None
        )
        self.exposition = Exposition(self.build_snapshot())
        self._tasks: list[asyncio.Task[None]] = []
        self._renderer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hc-render")
        self._render_pending: asyncio.TimerHandle | None = None
        self._render_wait_since = 0.0
        self._renders: set[asyncio.Future[None]] = set()
        # Set by the HTTP side once a scraper asked for OpenMetrics: from then on every render
        # makes it too, off the loop, instead of the first scrape of each snapshot on the loop.
        self.openmetrics_wanted = False

    def _on_result(self, name: str, result: Any) -> None:
        # A failed poll keeps the source's last result: its VMs are served with their growing
        # age until max_sample_age_seconds, and the source's up metric says it failed.
        if result is not None:
            self.latest[name] = result
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
        openmetrics = self.openmetrics_wanted
        future = loop.run_in_executor(
            self._renderer, lambda: Exposition(self._assemble(inputs), openmetrics=openmetrics)
        )
        render = asyncio.ensure_future(self._publish(future))
        self._renders.add(render)
        render.add_done_callback(self._renders.discard)

    async def _publish(self, future: asyncio.Future[Exposition]) -> None:
        exposition = await future
        if exposition.snapshot.taken_at >= self.exposition.snapshot.taken_at:
            self.exposition = exposition

    def refresh(self) -> None:
        """Render now, on the caller's thread (dump, tests): no coalescing."""
        if self._render_pending is not None:
            self._render_pending.cancel()
            self._render_pending = None
        self.exposition = Exposition(self.build_snapshot(), openmetrics=self.openmetrics_wanted)

    def build_snapshot(self) -> Snapshot:
        return self._assemble(self._inputs())

    def _inputs(self) -> _Inputs:
        source = self.sources.get("libvirt")
        return _Inputs(
            now=time.time(),
            latest=dict(self.latest),
            statuses=tuple(poller.status() for poller in self.pollers.values()),
            tenant_claims=self.tenant_map.current(),
            tenant_status=self.tenant_map.status(),
            libvirt_health=source.health() if isinstance(source, HasHealth) else None,
            http_denied=tuple(sorted(self.http_denied.items())),
            http_connections=self.http_connections.open if self.http_connections else None,
            http_connections_closed=tuple(sorted(self.http_connections.closed_total.items()))
            if self.http_connections
            else (),
            watched_files=tuple(
                (name, f.reloads_total, f.errors_total) for name, f in self.watched_files.items()
            ),
            tls_not_after=self.tls_not_after(),
            remote_write=self.remote_writer.status() if self.remote_writer else (),
        )

    def _assemble(self, inputs: _Inputs) -> Snapshot:
        """The snapshot from copies of the sources' results: safe on the render thread."""
        now = inputs.now
        libvirt: LibvirtSample | None = inputs.latest.get("libvirt")
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
        sriov: SriovSample | None = inputs.latest.get("sriov")
        nvml: NvmlSample | None = inputs.latest.get("nvml")
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
            nvml_available=nvml.nvml_available if nvml else None,
            nvml_driver_version=nvml.driver_version if nvml else None,
            http_denied=inputs.http_denied,
            http_connections=inputs.http_connections,
            http_connections_closed=inputs.http_connections_closed,
            watched_files=inputs.watched_files,
            tls_certificate_not_after=inputs.tls_not_after,
            remote_write=inputs.remote_write,
        )

    async def poll_all_once(self) -> None:
        await asyncio.gather(*(poller.poll_once() for poller in self.pollers.values()))
        self.refresh()

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
