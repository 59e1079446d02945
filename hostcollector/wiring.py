"""The composition root's builder: every part the collector needs, made from the config in one
place and handed in, so that following `config` from `build_app` ends here."""

from __future__ import annotations

from hostcollector.collector import Collector
from hostcollector.config import Config
from hostcollector.handover import Handover
from hostcollector.process_metrics import ProcessMetrics
from hostcollector.remote_write.writer import RemoteWriter
from hostcollector.sources import BuildContext, build_sources
from hostcollector.tenancy import compile_rules
from hostcollector.tenant_map import TenantMapFile


def build_collector(config: Config, *, record_raw: bool = False) -> Collector:
    """The configured sources, tenant map and remote writer in a collector (not started)."""
    # Without libvirt there are no lifecycle events: remote write writes every VM.
    handover = Handover() if config.sources.libvirt.enabled else None
    built = build_sources(
        config.sources,
        BuildContext(compile_rules(config.attribution), handover, record_raw=record_raw),
    )
    # The writer and the collector need each other: the writer reads the published snapshot
    # (only once started, when `collector` is bound), the collector starts, stops and reports it.
    collector: Collector
    remote_writer = (
        RemoteWriter(config.remote_write, lambda: collector.exposition.snapshot, handover=handover)
        if config.remote_write.endpoints
        else None
    )
    collector = Collector(
        config,
        sources=built.by_name,
        tenant_map=TenantMapFile(config.attribution.mapping_file),
        remote_writer=remote_writer,
        libvirt_health=built.libvirt_health,
        # The process's own metrics, for the daemon only: a Collector built in a test has none,
        # so that its expositions stay the same from run to run.
        self_metrics=(*built.self_metrics, ProcessMetrics()),
    )
    return collector
