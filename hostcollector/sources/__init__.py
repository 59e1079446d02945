"""Every source, declared once in SOURCES: its config section, how it is built, its result type
and where its latest result is kept. Each source reads one backend and knows nothing of HTTP or
rendering; adding one is a module here and one entry in SOURCES."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from hostcollector.config import LibvirtConfig, NvmlConfig, SourcesConfig, SriovConfig
from hostcollector.handover import Handover
from hostcollector.model import LibvirtHealth, LibvirtSample, NvmlSample, SriovSample
from hostcollector.selfmetrics import SelfMetrics
from hostcollector.tenancy import MetadataRule


class SourceResult(Protocol):
    @property
    def raw(self) -> object:
        """What the backend returned, when recording (`dump --raw`); None otherwise."""


ResultT = TypeVar("ResultT", bound=SourceResult)
ResultT_co = TypeVar("ResultT_co", bound=SourceResult, covariant=True)


class Source(Protocol[ResultT_co]):
    name: str

    @property
    def interval_seconds(self) -> float: ...

    async def poll(self) -> ResultT_co:
        """One collection; raises SourceError when this poll failed."""
        ...

    async def close(self) -> None: ...


class SourceSection(Protocol):
    """What every `sources.<name>` config section has."""

    @property
    def enabled(self) -> bool: ...


SectionT = TypeVar("SectionT", bound=SourceSection)


@dataclass(frozen=True, slots=True)
class Results:
    """The latest result of each source; None until its first good poll. Replaced, never
    mutated, so a snapshot built off the event loop reads a consistent set."""

    libvirt: LibvirtSample | None = None
    sriov: SriovSample | None = None
    nvml: NvmlSample | None = None


@dataclass(frozen=True)
class BuildContext:
    """What a source may need beyond its own config section."""

    rules: Sequence[MetadataRule]
    # Lifecycle events the libvirt source records and remote write reads (handover.py).
    handover: Handover | None = None
    record_raw: bool = False


@dataclass(frozen=True)
class Built(Generic[ResultT]):
    source: Source[ResultT]
    # Counters the source keeps across polls, read at each snapshot: a poll that timed out has
    # no result to carry them. Only libvirt keeps any.
    libvirt_health: Callable[[], LibvirtHealth] | None = None
    # Its own self-metrics (libvirt's connects, timeouts, quarantines), if it reports any.
    self_metrics: SelfMetrics | None = None


@dataclass(frozen=True)
class SourceDeclaration(Generic[SectionT, ResultT]):
    name: str
    section: Callable[[SourcesConfig], SectionT]  # its part of the config: `sources.<name>`
    build: Callable[[SectionT, BuildContext], Built[ResultT]]
    result_type: type[ResultT]
    latest: Callable[[Results], ResultT | None]  # its field of Results ...
    keep: Callable[[Results, ResultT], Results]  # ... and the Results with a new one there

    def enabled(self, sources: SourcesConfig) -> bool:
        return self.section(sources).enabled

    async def poll(self, source: Source[SourceResult]) -> ResultT:
        """The source's poll, its result checked: a source answering with another source's
        type is a bug, reported by its poller (source down, traceback logged) rather than
        shown as another source's data."""
        result = await source.poll()
        if not isinstance(result, self.result_type):
            raise TypeError(
                f"the {self.name} source returned a {type(result).__name__}, "
                f"not a {self.result_type.__name__}"
            )
        return result


def _libvirt(section: LibvirtConfig, context: BuildContext) -> Built[LibvirtSample]:
    from hostcollector.sources.libvirt import LibvirtSource

    source = LibvirtSource(
        section, context.rules, handover=context.handover, record_raw=context.record_raw
    )
    return Built(source, libvirt_health=source.health, self_metrics=source)


def _sriov(section: SriovConfig, context: BuildContext) -> Built[SriovSample]:
    from hostcollector.sources.sriov import SriovSource

    return Built(SriovSource(section, record_raw=context.record_raw))


def _nvml(section: NvmlConfig, context: BuildContext) -> Built[NvmlSample]:
    from hostcollector.sources.nvml import NvmlSource

    return Built(NvmlSource(section, record_raw=context.record_raw))


LIBVIRT: SourceDeclaration[LibvirtConfig, LibvirtSample] = SourceDeclaration(
    name="libvirt",
    section=lambda sources: sources.libvirt,
    build=_libvirt,
    result_type=LibvirtSample,
    latest=lambda results: results.libvirt,
    keep=lambda results, sample: replace(results, libvirt=sample),
)
SRIOV: SourceDeclaration[SriovConfig, SriovSample] = SourceDeclaration(
    name="sriov",
    section=lambda sources: sources.sriov,
    build=_sriov,
    result_type=SriovSample,
    latest=lambda results: results.sriov,
    keep=lambda results, sample: replace(results, sriov=sample),
)
NVML: SourceDeclaration[NvmlConfig, NvmlSample] = SourceDeclaration(
    name="nvml",
    section=lambda sources: sources.nvml,
    build=_nvml,
    result_type=NvmlSample,
    latest=lambda results: results.nvml,
    keep=lambda results, sample: replace(results, nvml=sample),
)
# The registry: the order of polling and of the sources in every output. A backend's module is
# imported only when its source is enabled, so check-config and unit tests run without libvirt,
# pyroute2 or pynvml.
SOURCES: tuple[SourceDeclaration[Any, Any], ...] = (LIBVIRT, SRIOV, NVML)
DECLARED = {declaration.name: declaration for declaration in SOURCES}


@dataclass(frozen=True)
class BuiltSources:
    by_name: dict[str, Source[SourceResult]]
    libvirt_health: Callable[[], LibvirtHealth] | None
    self_metrics: tuple[SelfMetrics, ...]


def build_sources(sources: SourcesConfig, context: BuildContext) -> BuiltSources:
    """The enabled sources, in SOURCES' order."""
    built = {
        declaration.name: declaration.build(declaration.section(sources), context)
        for declaration in SOURCES
        if declaration.enabled(sources)
    }
    return BuiltSources(
        {name: b.source for name, b in built.items()},
        next((b.libvirt_health for b in built.values() if b.libvirt_health), None),
        tuple(b.self_metrics for b in built.values() if b.self_metrics is not None),
    )
