"""The source registry, the typed seam between sources and the collector, and the composition
root that builds the collector's parts (wiring.py)."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from hostcollector import sources as registry
from hostcollector.collector import Collector
from hostcollector.config import (
    AttributionConfig,
    Config,
    LibvirtConfig,
    NvmlConfig,
    RemoteWriteConfig,
    RemoteWriteEndpointConfig,
    SourcesConfig,
    SriovConfig,
)
from hostcollector.model import LibvirtSample, NvmlSample, SriovSample, VfStats
from hostcollector.remote_write.writer import RemoteWriter
from hostcollector.sources import SOURCES, BuildContext, Results, build_sources
from hostcollector.sources.libvirt import LibvirtSource
from hostcollector.sources.rtnetlink import LinkInfo, VfInfo
from hostcollector.sources.sriov import build_pf_sample
from hostcollector.sources.sriov_sysfs import PhysicalFunction
from hostcollector.tenant_map import TenantMapFile
from hostcollector.wiring import build_collector

COLLECTOR_PY = Path(__file__).parent.parent / "hostcollector" / "collector.py"
SAMPLES = {
    "libvirt": LibvirtSample((), {}, {}, 0.0),
    "sriov": SriovSample((), ()),
    "nvml": NvmlSample(True, "550.54", ()),
}
NOTHING_ENABLED = SourcesConfig(
    LibvirtConfig(enabled=False), SriovConfig(enabled=False), NvmlConfig(enabled=False)
)


def test_the_registry_declares_every_config_section_and_result_field_once() -> None:
    sections = SourcesConfig()
    assert [d.name for d in SOURCES] == ["libvirt", "sriov", "nvml"]  # the order of outputs
    assert [f.name for f in dataclasses.fields(SourcesConfig)] == [d.name for d in SOURCES]
    assert [f.name for f in dataclasses.fields(Results)] == [d.name for d in SOURCES]
    assert {d.name: d.result_type for d in SOURCES} == {
        "libvirt": LibvirtSample,
        "sriov": SriovSample,
        "nvml": NvmlSample,
    }
    for declaration in SOURCES:
        assert declaration.section(sections) is getattr(sections, declaration.name)
        sample = SAMPLES[declaration.name]
        assert isinstance(sample, declaration.result_type)
        kept = declaration.keep(Results(), sample)
        assert declaration.latest(kept) is sample
        # Its own field only: the others stay as they were.
        assert [getattr(kept, d.name) is None for d in SOURCES] == [
            d is not declaration for d in SOURCES
        ]


def test_a_source_is_built_only_when_its_section_enables_it() -> None:
    context = BuildContext(rules=())
    assert build_sources(NOTHING_ENABLED, context).by_name == {}
    libvirt_only = dataclasses.replace(NOTHING_ENABLED, libvirt=LibvirtConfig())
    built = build_sources(libvirt_only, context)
    assert list(built.by_name) == ["libvirt"]
    source = built.by_name["libvirt"]
    assert isinstance(source, LibvirtSource)
    assert built.libvirt_health is not None and built.libvirt_health() == source.health()
    asyncio.run(source.close())


class WrongType:
    """A source declared as sriov that answers with libvirt's result."""

    name = "sriov"
    interval_seconds = 3600.0

    async def poll(self) -> LibvirtSample:
        return SAMPLES["libvirt"]  # type: ignore[return-value]

    async def close(self) -> None:
        pass


def test_a_result_of_another_type_is_refused_loudly(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> Collector:
        collector = Collector(Config(), sources={"sriov": WrongType()})
        await collector.poll_all_once()
        await collector.stop()
        return collector

    with caplog.at_level(logging.ERROR, logger="hostcollector.poller"):
        collector = asyncio.run(go())
    assert collector.latest == Results()  # not kept, under sriov or anywhere
    (status,) = collector.exposition.snapshot.sources
    assert not status.up and status.errors_by_reason == (("internal", 1),)
    assert (
        status.last_error
        == "TypeError: the sriov source returned a LibvirtSample, not a SriovSample"
    )
    assert "Traceback" in caplog.text


def test_a_source_missing_from_the_registry_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"not declared in sources.SOURCES: \['ovs'\]"):
        Collector(Config(), sources={"ovs": WrongType()})


def test_a_collector_without_parts_has_no_sources_tenant_map_or_remote_write() -> None:
    config = Config(
        sources=SourcesConfig(),  # every source enabled, yet none is built here
        attribution=AttributionConfig(mapping_file="/nowhere/tenant-map.json"),
        remote_write=RemoteWriteConfig(
            endpoints=(RemoteWriteEndpointConfig("all", "http://127.0.0.1:9/"),)
        ),
    )
    collector = Collector(config)
    assert (collector.sources, collector.pollers) == ({}, {})
    assert collector.tenant_map is None and collector.remote_writer is None
    assert not collector.exposition.snapshot.tenant_map.configured


def test_the_composition_root_builds_and_hands_in_every_part(tmp_path: Path) -> None:
    config = Config(
        sources=dataclasses.replace(NOTHING_ENABLED, libvirt=LibvirtConfig()),
        attribution=AttributionConfig(mapping_file=str(tmp_path / "tenant-map.json")),
        remote_write=RemoteWriteConfig(
            queue_dir=str(tmp_path / "queue"),
            endpoints=(RemoteWriteEndpointConfig("all", "http://127.0.0.1:9/"),),
        ),
    )
    collector = build_collector(config)
    libvirt = collector.sources["libvirt"]
    assert isinstance(libvirt, LibvirtSource)
    assert isinstance(collector.tenant_map, TenantMapFile)
    assert collector.tenant_map.path == config.attribution.mapping_file
    writer = collector.remote_writer
    assert isinstance(writer, RemoteWriter)
    # The writer reads the migration handover the libvirt source records into, and the
    # collector's published snapshot.
    assert writer._handover is libvirt.handover
    assert writer._snapshot() is collector.exposition.snapshot
    asyncio.run(collector.stop())


def test_without_libvirt_remote_write_gets_no_handover(tmp_path: Path) -> None:
    config = Config(
        sources=NOTHING_ENABLED,
        remote_write=RemoteWriteConfig(
            queue_dir=str(tmp_path / "queue"),
            endpoints=(RemoteWriteEndpointConfig("all", "http://127.0.0.1:9/"),),
        ),
    )
    collector = build_collector(config)
    assert collector.remote_writer is not None and collector.remote_writer._handover is None
    asyncio.run(collector.stop())


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Modules imported when collector.py runs: not those under `if TYPE_CHECKING:`."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_the_collector_builds_none_of_its_parts() -> None:
    tree = ast.parse(COLLECTOR_PY.read_text())
    imported = _runtime_imports(tree)
    for builder in (
        "hostcollector.sources.build_sources",
        "hostcollector.remote_write.writer",
        "hostcollector.tenant_map",
        "hostcollector.tenancy",
    ):
        assert not any(name.startswith(builder) for name in imported), builder
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"build_sources", "RemoteWriter", "TenantMapFile", "compile_rules"}
    assert not hasattr(registry, "HasHealth") and "HasHealth" not in COLLECTOR_PY.read_text()


def test_every_vf_field_netlink_reports_reaches_the_vf() -> None:
    values: dict[str, object] = {}
    for number, name in enumerate(f.name for f in dataclasses.fields(VfInfo)):
        if name in ("mac", "link_state"):
            values[name] = f"{name}-{number}"
        elif name in ("spoof_check", "trust"):
            values[name] = number % 2 == 0
        else:
            values[name] = 1000 + number
    info = VfInfo(**values)  # type: ignore[arg-type]
    pf = PhysicalFunction("p0", 7, "0000:3b:00.0", 1, {info.index: "0000:3b:02.0"})  # type: ignore[dict-item]
    _, (vf,) = build_pf_sample(pf, LinkInfo("p0", "ether", 1, {}, (info,)), lambda *_: None)
    assert isinstance(vf, VfStats)
    assert {name: getattr(vf, name) for name in values} == values
    assert (vf.pf, vf.pci_address, vf.stats_source) == ("p0", "0000:3b:02.0", "netlink")
