"""Each case of tests/cases/ replayed through the real collector and served by the real app,
against its goldens: /metrics unscoped and in tenant acme's scope, and the /api/v1 lists.

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_cases.py   # or `make golden`; review the diff

tests/cases/README.md describes a case's files. The clock the collector, the pollers, the
views and the file reloaders read is pinned, and so are the build labels, so a golden changes
only when what is served does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

import hostcollector.collector
import hostcollector.poller
import hostcollector.reloading
import hostcollector.sources.nvml
import hostcollector.views
from hostcollector import metrics
from hostcollector.app import build_app
from hostcollector.collector import Collector
from hostcollector.config import AuthConfig, Config, load_config
from hostcollector.family import Family
from hostcollector.tenant_map import TenantMapFile
from tests.replay import ReplayLibvirt, replay_sources

CASES = Path(__file__).parent / "cases"
CASE_NAMES = sorted(p.name for p in CASES.iterdir() if (p / "config.yml").exists())
ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
# Globex and its lab VMs: never in acme's answers, whatever a regenerated golden holds.
NOT_ACMES = (
    "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1",
    "b1b1b1b1-0000-4000-8000-000000000002",
    "c1c1c1c1-0000-4000-8000-000000000003",
)
SCOPES = {"all": "sre-case-token", "acme": "acme-case-token"}
# When the recordings were taken, as far as the collector can tell (tests/snapshots.py's).
NOW = 1795929820.0
BUILD = (("version", "0.1.0"), ("python_version", "3.11.7"))
API_PATHS = (
    "/api/v1",
    "/api/v1/vms",
    "/api/v1/tenants",
    f"/api/v1/tenants/{ACME}",
    "/api/v1/gpus",
    "/api/v1/vfs",
    "/api/v1/sources",
)

SOURCE_FAMILIES: dict[str, tuple[Family, ...]] = {
    "libvirt": (
        *metrics.VM_FAMILIES,
        *metrics.VM_STATUS_FAMILIES,
        metrics.VM_INFO,
        *metrics.VCPU_FAMILIES,
        *metrics.BLOCK_FAMILIES,
        metrics.BLOCK_INFO,
        *metrics.INTERFACE_FAMILIES,
    ),
    "sriov": (*metrics.VF_FAMILIES, metrics.VF_INFO, *metrics.PF_FAMILIES),
    "nvml": (
        *metrics.GPU_FAMILIES,
        metrics.GPU_INFO,
        metrics.GPU_ECC,
        metrics.GPU_REMAPPED,
        metrics.GPU_NVLINK,
        metrics.GPU_XID,
        metrics.GPU_CLOCKS_EVENT,
        metrics.GPU_RETIRED_PAGES,
        metrics.GPU_NVLINK_DATA,
        metrics.GPU_NVML_ERRORS,
        *metrics.VGPU_FAMILIES,
        metrics.VGPU_INFO,
        *metrics.GPU_INSTANCE_FAMILIES,
    ),
}
# Families of a source that none of the recordings can show, and why.
NOT_RECORDED: dict[str, str] = {}
# Every PCI hostdev's PCIe side (the libvirt source's hostdevs, read in sysfs): required of the
# cases whose recordings lay those out (pci-sysfs.json); lab-libvirt's domains hold none.
HOSTDEV_FAMILIES = metrics.PCI_DEVICE.families
# Families a case's hostdevs cannot show, and why.
NOT_RECORDED_IN: dict[str, dict[str, str]] = {
    "sriov": {
        f.name: "its hostdevs are all VFs, which have no PCIe link of their own"
        for f in metrics.PCI_DEVICE_FAMILIES
        if "_link_" in f.name
    },
}


class PinnedClock:
    """Stands for the `time` module in the modules that read the clock for what they serve."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        # Poll durations read 0; a reloader checks its file once, and never again.
        return 0.0

    def time_ns(self) -> int:
        # The reloader compares files' mtimes with it: the real one, for the real files.
        return time.time_ns()


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = PinnedClock(NOW)
    for module in (
        hostcollector.collector,
        hostcollector.poller,
        hostcollector.views,
        hostcollector.reloading,
        hostcollector.sources.nvml,  # NVML's time per GPU reads 0
    ):
        monkeypatch.setattr(module, "time", clock)
    monkeypatch.setattr(hostcollector.collector, "BUILD_LABELS", BUILD)


def case_config(case: Path, tokens: Path) -> Config:
    """The case's config, its relative paths taken from the case's directory (as the daemon
    started there would), with tokens for the two scopes served."""
    config = load_config(case / "config.yml")
    mapping = config.attribution.mapping_file
    if mapping is not None:
        attribution = dataclasses.replace(config.attribution, mapping_file=str(case / mapping))
        config = dataclasses.replace(config, attribution=attribution)
    return dataclasses.replace(config, auth=AuthConfig(str(tokens)))


def write_tokens(path: Path) -> Path:
    lines = ["tokens:"]
    for scope, token in SCOPES.items():
        digest = hashlib.sha256(token.encode()).hexdigest()
        tenant = "scope: all" if scope == "all" else f"scope: tenant, tenant: '{ACME}'"
        lines.append(f"  - {{name: {scope}, sha256: {digest}, {tenant}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclasses.dataclass
class Served:
    expositions: dict[str, bytes]  # by scope
    api: dict[str, dict[str, Any]]  # path -> scope -> {"status", "body"}
    sources: tuple[str, ...]


async def _serve(config: Config, sources: dict[str, Any]) -> Served:
    libvirt = sources.get("libvirt")
    collector = Collector(
        config,
        sources=sources,
        tenant_map=TenantMapFile(config.attribution.mapping_file),
        libvirt_health=libvirt.health if isinstance(libvirt, ReplayLibvirt) else None,
        self_metrics=(libvirt,) if isinstance(libvirt, ReplayLibvirt) else (),
    )
    async with TestClient(TestServer(build_app(config, collector))) as client:
        for _ in range(500):
            shown = collector.exposition.snapshot.sources
            if len(shown) == len(sources) and all(s.polls_total for s in shown):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the first poll of every source was never rendered")
        expositions: dict[str, bytes] = {}
        api: dict[str, dict[str, Any]] = {}
        for scope, token in SCOPES.items():
            headers = {"Authorization": f"Bearer {token}"}
            response = await client.get("/metrics", headers=headers)
            assert response.status == 200, scope
            expositions[scope] = await response.read()
        for path in API_PATHS:
            api[path] = {}
            for scope, token in SCOPES.items():
                response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
                api[path][scope] = {"status": response.status, "body": await response.json()}
    return Served(expositions, api, tuple(sources))


def serve_case(
    name: str, tmp_path: Path, stub_library: Callable[[], Path], monkeypatch: pytest.MonkeyPatch
) -> Served:
    case = CASES / name
    config = case_config(case, write_tokens(tmp_path / "tokens.yml"))
    sources = replay_sources(config, case, NOW, stub_library, tmp_path, monkeypatch.setenv)
    return asyncio.run(_serve(config, sources))


def goldens(served: Served) -> dict[str, str]:
    return {
        "exposition.txt": served.expositions["all"].decode(),
        "exposition.acme.txt": served.expositions["acme"].decode(),
        "api.json": json.dumps(served.api, indent=1, sort_keys=True) + "\n",
    }


def check_golden(path: Path, text: str) -> None:
    if os.environ.get("UPDATE_GOLDEN"):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"{path} is missing: UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_cases.py")
    expected = path.read_text()
    if text != expected:
        diff = difflib.unified_diff(
            expected.splitlines(), text.splitlines(), str(path), "served", lineterm="", n=2
        )
        shown = "\n".join(line for _, line in zip(range(60), diff, strict=False))
        pytest.fail(f"{path.name} differs from what is served (first lines):\n{shown}")


@pytest.fixture(scope="module")
def served_cases() -> dict[str, Served]:
    return {}


@pytest.fixture
def served(
    request: pytest.FixtureRequest,
    served_cases: dict[str, Served],
    pinned: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    name: str = request.param
    if name not in served_cases:

        def stub_library() -> Path:
            path: Path = request.getfixturevalue("stub_path")
            return path

        served_cases[name] = serve_case(name, tmp_path, stub_library, monkeypatch)
    yield served_cases[name]


@pytest.mark.parametrize("served", CASE_NAMES, indirect=True)
@pytest.mark.parametrize("golden", ["exposition.txt", "exposition.acme.txt", "api.json"])
def test_served_as_recorded(served: Served, golden: str, request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.params["served"]
    check_golden(CASES / name / golden, goldens(served)[golden])


@pytest.mark.parametrize("served", CASE_NAMES, indirect=True)
def test_every_family_of_the_case_sources_has_a_series(
    served: Served, request: pytest.FixtureRequest
) -> None:
    name = request.node.callspec.params["served"]
    text = served.expositions["all"].decode()
    shown = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    declared = {f.name for source in served.sources for f in SOURCE_FAMILIES[source]}
    if (CASES / name / "pci-sysfs.json").exists():
        declared |= {f.name for f in HOSTDEV_FAMILIES}
    missing = sorted(declared - shown - NOT_RECORDED.keys() - NOT_RECORDED_IN.get(name, {}).keys())
    assert not missing, f"no series of {missing}: record them, or say why in NOT_RECORDED"


@pytest.mark.parametrize("served", CASE_NAMES, indirect=True)
def test_acmes_scope_shows_nothing_of_globex(served: Served) -> None:
    scoped = served.expositions["acme"].decode()
    scoped += json.dumps({path: answers["acme"] for path, answers in served.api.items()})
    assert ACME in scoped
    assert [ident for ident in NOT_ACMES if ident in scoped] == []


def test_every_source_is_covered_by_some_case() -> None:
    enabled = set()
    for name in CASE_NAMES:
        config = load_config(CASES / name / "config.yml")
        enabled |= {s for s in SOURCE_FAMILIES if getattr(config.sources, s).enabled}
    assert enabled == set(SOURCE_FAMILIES)


def test_the_allow_list_names_only_declared_families() -> None:
    declared = {f.name for families in SOURCE_FAMILIES.values() for f in families}
    assert NOT_RECORDED.keys() <= declared
    hostdev = {f.name for f in HOSTDEV_FAMILIES}
    assert all(names.keys() <= hostdev for names in NOT_RECORDED_IN.values())


def test_every_hostdev_family_is_shown_by_some_case() -> None:
    cases = [n for n in CASE_NAMES if (CASES / n / "pci-sysfs.json").exists()]
    assert {f.name for f in HOSTDEV_FAMILIES} - set.intersection(
        *(set(NOT_RECORDED_IN.get(n, {})) for n in cases)
    ), "no case shows every hostdev family"
    assert any(n not in NOT_RECORDED_IN for n in cases)
