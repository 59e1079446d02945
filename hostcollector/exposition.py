"""Snapshot -> Prometheus text format 0.0.4 or OpenMetrics 1.0.0 bytes.

The metric families are declared once, in metrics.py. Every per-VM series carries
`vm_uuid` and `tenant_id`; descriptive, tenant-controlled strings (VM name, flavor, ...) only
appear on `hostcollector_vm_info`. Label values are escaped, so no VM name can break a line or
forge a series.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from hostcollector import metrics as m
from hostcollector.family import Family, Number
from hostcollector.kinds import Item, View, in_scope
from hostcollector.label_text import label_text
from hostcollector.metrics import (
    ALL_FAMILIES,
    EXPOSITION_SERIES,
    KINDS,
    SELF_FAMILIES,
    SELF_FAMILIES_WITH_OWNER,
)
from hostcollector.model import Snapshot
from hostcollector.selfmetrics import Sample

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: Number) -> str:
    if value.__class__ is int:
        return str(value)
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


class _Writer:
    def __init__(self, openmetrics: bool) -> None:
        self.openmetrics = openmetrics
        self.lines: list[str] = []
        self.series = 0

    def header(self, family: Family) -> None:
        name = family.name
        kind = family.kind
        if self.openmetrics:
            # OpenMetrics names the family without the sample suffix.
            if kind == "counter":
                name = name.removesuffix("_total")
            elif kind == "info":
                name = name.removesuffix("_info")
        elif kind == "info":
            kind = "gauge"
        self.lines.append(f"# HELP {name} {_escape_help(family.help)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: str, value: Number) -> None:
        self.lines.append(
            f"{name}{{{labels}}} {format_value(value)}"
            if labels
            else f"{name} {format_value(value)}"
        )
        self.series += 1

    def family(self, family: Family, items: list[Item]) -> None:
        # The hot loop (~1 us per series): one f-string per sample, ints and finite floats
        # formatted inline (format_value's call alone was ~8% of a render at 5,000 VMs).
        self.header(family)
        name = family.name
        if family.value is not None:
            value_of = family.value
            isfinite = math.isfinite
            lines = [
                f"{name}{{{labels}}} {value if value.__class__ is int else repr(value) if isfinite(value) else format_value(value)}"
                for labels, _, record in items
                if (value := value_of(record)) is not None
            ]
        elif family.samples is not None:
            samples_of = family.samples
            lines = [
                f"{name}{{{labels}{extra}}} {format_value(value)}"
                for labels, _, record in items
                for extra, value in samples_of(record)
            ]
        else:
            raise TypeError(f"{name}: a kind's family needs value or samples")
        self.lines += lines
        self.series += len(lines)

    def pairs(self, family: Family, samples: Iterator[tuple[str, Number | None]]) -> None:
        """A self-metric family from (label text, value) pairs."""
        self.header(family)
        name = family.name
        lines = [
            f"{name}{{{labels}}} {format_value(value)}"
            if labels
            else f"{name} {format_value(value)}"
            for labels, value in samples
            if value is not None
        ]
        self.lines += lines
        self.series += len(lines)


# (name, label text, value, owner): the owner is the kind's declaration of whose the series is,
# where a tenant endpoint sends it ("" never). A plain tuple: a NamedTuple's constructor made
# series() three times slower at 5,000 VMs (64 -> 192 ms).
Series = tuple[str, str, Number, str]


class _SeriesWriter(_Writer):
    """Collects series instead of text: remote write's input."""

    def __init__(self) -> None:
        super().__init__(openmetrics=False)
        self.items: list[Series] = []

    def header(self, family: Family) -> None:
        pass

    def sample(self, name: str, labels: str, value: Number) -> None:
        self.items.append((name, labels, value, ""))

    def family(self, family: Family, items: list[Item]) -> None:
        name = family.name
        if family.value is not None:
            value_of = family.value
            self.items += [
                (name, labels, value, tenant)
                for labels, tenant, record in items
                if (value := value_of(record)) is not None
            ]
        elif family.samples is not None:
            samples_of = family.samples
            self.items += [
                (name, labels + extra, value, tenant)
                for labels, tenant, record in items
                for extra, value in samples_of(record)
            ]

    def pairs(self, family: Family, samples: Iterator[tuple[str, Number | None]]) -> None:
        name = family.name
        self.items += [(name, lab, value, "") for lab, value in samples if value is not None]


def render(
    snapshot: Snapshot,
    *,
    openmetrics: bool = False,
    tenant: str | None = None,
    view: View | None = None,
) -> bytes:
    """The exposition; with `tenant`, only that tenant's series (its VMs, their VFs, GPUs
    passed through to them and their vGPUs) and nothing about the host or other tenants.
    `view`: the kinds' items in that scope, if already built (kinds.View)."""
    w = _Writer(openmetrics)
    _emit(w, snapshot, tenant, view)
    if openmetrics:
        w.lines.append("# EOF")
    w.lines.append("")
    return "\n".join(w.lines).encode("utf-8", "replace")


def series(snapshot: Snapshot) -> list[Series]:
    """Every series of the exposition, in exposition order, with its owner."""
    w = _SeriesWriter()
    _emit(w, snapshot, None, None)
    return w.items


def _emit(w: _Writer, snapshot: Snapshot, tenant: str | None, view: View | None) -> None:
    for kind, items in view if view is not None else in_scope(KINDS, snapshot, tenant):
        for family in kind.families:
            w.family(family, items)
    if tenant is None:
        _render_self(w, snapshot)


def _render_self(w: _Writer, snapshot: Snapshot) -> None:
    """The self-metrics in SELF_FAMILIES' order, each sample under its family: the owners'
    (collected with the snapshot) and what the snapshot counts of itself. A family without
    samples is still headed, but for SELF_FAMILIES_WITH_OWNER's groups when no owner reports."""
    by_family: dict[int, list[Sample]] = {}
    for sample in (*_snapshot_samples(snapshot), *snapshot.self_series):
        by_family.setdefault(id(sample.family), []).append(sample)
    absent = {
        id(family)
        for group in SELF_FAMILIES_WITH_OWNER
        if not any(id(family) in by_family for family in group)
        for family in group
    }
    for family in SELF_FAMILIES:
        if family is EXPOSITION_SERIES:
            w.header(family)
            w.sample(family.name, "", w.series + 1)
        elif id(family) not in absent:
            w.pairs(family, ((s.labels, s.value) for s in by_family.get(id(family), ())))


def _snapshot_samples(snapshot: Snapshot) -> Iterator[Sample]:
    """What the snapshot counts of itself."""
    yield Sample(m.BUILD_INFO, label_text(snapshot.build), 1)
    yield Sample(m.VMS, "", len(snapshot.vms))
    yield Sample(m.VFS, "", len(snapshot.vfs))
    if snapshot.nvml_available is not None:
        yield Sample(m.NVML_AVAILABLE, "", int(snapshot.nvml_available))
    cc = snapshot.nvml_conf_compute
    if cc is not None:
        yield Sample(m.NVML_CONF_COMPUTE_FEATURE, "", cc.feature)
        yield Sample(m.NVML_CONF_COMPUTE_ENVIRONMENT, "", cc.environment)
        yield Sample(m.NVML_CONF_COMPUTE_DEVTOOLS_MODE, "", cc.devtools_mode)
        if cc.gpus_ready is not None:
            yield Sample(m.NVML_CONF_COMPUTE_GPUS_READY, "", int(cc.gpus_ready))
    yield Sample(m.GPUS, "", len(snapshot.gpus))
    yield Sample(
        m.GPUS_UNASSIGNED, "", sum(1 for g in snapshot.gpus if not g.vm_uuid and not g.gpu.vgpus)
    )
    yield Sample(m.VGPUS, "", sum(len(g.vgpu_vms) for g in snapshot.gpus))
    yield Sample(
        m.VGPUS_UNATTRIBUTED, "", sum(1 for g in snapshot.gpus for vm, _ in g.vgpu_vms if not vm)
    )
    yield Sample(m.VFS_UNATTRIBUTED, "", sum(1 for vf in snapshot.vfs if not vf.vm_uuid))
    yield Sample(m.VMS_UNATTRIBUTED, "", sum(1 for vm in snapshot.vms if not vm.tenant_id))
    yield Sample(m.TENANTS, "", len({vm.tenant_id for vm in snapshot.vms if vm.tenant_id}))
    yield Sample(m.SNAPSHOT_TIMESTAMP_SECONDS, "", snapshot.taken_at)


def metrics_table() -> str:
    """The README's metric table, generated from the families above."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for family in ALL_FAMILIES:
        labels = ", ".join(
            f"`{label}`" if label != "..." else "allow-listed labels" for label in family.labels
        )
        rows.append(
            f"| `{family.name}` | {family.kind} | {labels} | {family.help.replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"
