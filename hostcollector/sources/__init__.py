"""Sources registered by name: each reads one backend and knows nothing of HTTP or rendering."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from hostcollector.config import Config
from hostcollector.tenancy import MetadataRule


class Source(Protocol):
    name: str

    @property
    def interval_seconds(self) -> float: ...

    async def poll(self) -> Any:
        """One collection; raises SourceError when this poll failed."""

    async def close(self) -> None: ...


def _libvirt(config: Config, rules: Sequence[MetadataRule], record_raw: bool) -> Source | None:
    if not config.sources.libvirt.enabled:
        return None
    from hostcollector.sources.libvirt import LibvirtSource

    return LibvirtSource(config.sources.libvirt, rules, record_raw=record_raw)


def _sriov(config: Config, _rules: Sequence[MetadataRule], record_raw: bool) -> Source | None:
    if not config.sources.sriov.enabled:
        return None
    from hostcollector.sources.sriov import SriovSource

    return SriovSource(config.sources.sriov, record_raw=record_raw)


def _nvml(config: Config, _rules: Sequence[MetadataRule], record_raw: bool) -> Source | None:
    if not config.sources.nvml.enabled:
        return None
    from hostcollector.sources.nvml import NvmlSource

    return NvmlSource(config.sources.nvml, record_raw=record_raw)


SOURCES: dict[str, Callable[[Config, Sequence[MetadataRule], bool], Source | None]] = {
    "libvirt": _libvirt,
    "sriov": _sriov,
    "nvml": _nvml,
}


def build_sources(
    config: Config, rules: Sequence[MetadataRule], *, record_raw: bool = False
) -> dict[str, Source]:
    built = {name: factory(config, rules, record_raw) for name, factory in SOURCES.items()}
    return {name: source for name, source in built.items() if source is not None}
