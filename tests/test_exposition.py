"""The rendered exposition, read back by Prometheus' own parsers and promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from hostcollector.exposition import ALL_FAMILIES, metrics_table, render
from hostcollector.metrics import MEMORY_LIMIT_BYTES, SELF_FAMILIES_WITH_OWNER
from hostcollector.model import DomainStats, InterfaceStats
from tests.snapshots import snapshot_from_raw

GOLDEN = Path(__file__).parent / "fixtures" / "golden" / "lab.prom"
REPO = Path(__file__).parent.parent


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value) for family in parse_text(text) for s in family.samples if s.name == name
    ]


def test_golden_exposition() -> None:
    """Regenerate with UPDATE_GOLDEN=1 after a deliberate change, and review the diff."""
    body = render(snapshot_from_raw())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(body)
    assert body.decode() == GOLDEN.read_text()


def test_every_vm_series_carries_uuid_and_tenant() -> None:
    text = render(snapshot_from_raw()).decode()
    vm_series = [
        s
        for family in parse_text(text)
        for s in family.samples
        if s.name.startswith("hostcollector_vm_")
    ]
    assert len(vm_series) > 100
    assert all("vm_uuid" in s.labels and "tenant_id" in s.labels for s in vm_series)
    tenants = {s.labels["vm_uuid"]: s.labels["tenant_id"] for s in vm_series}
    assert tenants == {
        "a1a1a1a1-0000-4000-8000-000000000001": "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c",
        "b1b1b1b1-0000-4000-8000-000000000002": "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1",
        "c1c1c1c1-0000-4000-8000-000000000003": "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1",
        "d0d0d0d0-0000-4000-8000-000000000004": "",
    }


def test_info_and_self_metrics() -> None:
    text = render(snapshot_from_raw()).decode()
    info = {labels["name"]: labels for labels, _ in samples(text, "hostcollector_vm_info")}
    assert info["hc-lab-a1"]["flavor"] == "g1.small"
    assert info["hc-lab-a1"]["tenant_source"] == "metadata:nova-1.1"
    assert info["hc-lab-c1"]["tier"] == "gold"
    assert samples(text, "hostcollector_vms") == [({}, 4.0)]
    assert samples(text, "hostcollector_vms_unattributed") == [({}, 1.0)]
    assert samples(text, "hostcollector_tenants") == [({}, 2.0)]
    assert samples(text, "hostcollector_source_up") == [({"source": "libvirt"}, 1.0)]
    assert samples(text, "hostcollector_source_poll_errors_total") == [
        ({"source": "libvirt", "reason": "timeout"}, 1.0)
    ]
    total = sum(len(f.samples) for f in parse_text(text))
    assert samples(text, "hostcollector_exposition_series") == [({}, float(total))]


def test_absent_fields_are_absent_series_not_zeros() -> None:
    bare = DomainStats("e0e0e0e0-0000-4000-8000-000000000009", "shut-off", state=5, state_reason=1)
    text = render(snapshot_from_raw(extra_domains=(bare,))).decode()
    uuids = {
        labels["vm_uuid"] for labels, _ in samples(text, "hostcollector_vm_cpu_time_seconds_total")
    }
    assert bare.uuid not in uuids
    assert (
        {"vm_uuid": bare.uuid, "tenant_id": ""},
        5.0,
    ) in samples(text, "hostcollector_vm_state")


HOSTILE = [
    'evil"} 1\nhostcollector_vm_state{vm_uuid="forged",tenant_id="victim"} 1\n#',
    "back\\slash\\",
    "new\nline",
    "ünïcødé ✓ 🚀",
    "\\n not a newline",
    "",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_vm_names_cannot_break_or_forge(name: str) -> None:
    vm = DomainStats(
        "f0f0f0f0-0000-4000-8000-000000000010",
        name,
        state=1,
        interfaces=(InterfaceStats(device=name or "x", receive_bytes=1),),
    )
    snapshot = snapshot_from_raw(extra_domains=(vm,))
    for openmetrics, parser in ((False, parse_text), (True, parse_om)):
        text = render(snapshot, openmetrics=openmetrics).decode()
        families = list(parser(text))
        names = [
            s.labels.get("name")
            for f in families
            for s in f.samples
            if s.name == "hostcollector_vm_info"
        ]
        assert name in names
        forged = [s for f in families for s in f.samples if s.labels.get("vm_uuid") == "forged"]
        assert forged == []
        devices = [
            s.labels["device"]
            for f in families
            for s in f.samples
            if s.name == "hostcollector_vm_network_receive_bytes_total"
        ]
        assert (name or "x") in devices


def test_openmetrics_is_valid_and_carries_the_same_samples() -> None:
    snapshot = snapshot_from_raw()
    om = render(snapshot, openmetrics=True).decode()
    assert om.endswith("# EOF\n")
    om_samples = {
        (s.name, tuple(sorted(s.labels.items())), s.value) for f in parse_om(om) for s in f.samples
    }
    text_samples = {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in parse_text(render(snapshot).decode())
        for s in f.samples
    }
    assert om_samples == text_samples
    kinds = {f.name: f.type for f in parse_om(om)}
    assert kinds["hostcollector_vm_cpu_time_seconds"] == "counter"
    assert kinds["hostcollector_vm"] == "info"


def test_names_follow_prometheus_conventions() -> None:
    # The process's own families keep the names every client library gives them.
    process = {f.name for f in SELF_FAMILIES_WITH_OWNER[-1]} - {MEMORY_LIMIT_BYTES.name}
    assert all(name.startswith("process_") for name in process)
    for family in ALL_FAMILIES:
        assert family.name.startswith("hostcollector_") or family.name in process
        assert (family.kind == "counter") == family.name.endswith("_total"), family.name
        assert (family.kind == "info") == family.name.endswith("_info"), family.name
        assert not {"instance", "job", "host"} & set(family.labels)


@pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"), reason="promtool not installed"
)
def test_promtool_finds_nothing_to_complain_about() -> None:
    body = render(snapshot_from_raw())
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout == b"" and result.stderr == b""


def test_readme_metric_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    assert metrics_table() in readme, (
        "run `hostcollector metrics-table` and paste it into README.md"
    )
