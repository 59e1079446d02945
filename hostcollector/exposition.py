"""Snapshot -> Prometheus text format 0.0.4 or OpenMetrics 1.0.0 bytes.

The metric families are declared once, in metrics.py. Every per-VM series carries
`vm_uuid` and `tenant_id`; descriptive, tenant-controlled strings (VM name, flavor, ...) only
appear on `hostcollector_vm_info`. Label values are escaped, so no VM name can break a line or
forge a series.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

from hostcollector.kinds import Item, in_scope
from hostcollector.label_text import escape_label_value, label_text
from hostcollector.metrics import ALL_FAMILIES, KINDS, PREFIX, SELF_FAMILIES, Family, Number
from hostcollector.model import Snapshot

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
        # The hot loop (~1 us per series): one f-string per sample, ints formatted inline.
        self.header(family)
        name = family.name
        if family.value is not None:
            value_of = family.value
            lines = [
                f"{name}{{{labels}}} {value if value.__class__ is int else format_value(value)}"
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
            for labels, value in samples
            if value is not None
        ]
        self.lines += lines
        self.series += len(lines)


class Series(NamedTuple):
    name: str
    labels: str
    value: Number
    tenant: str  # its owner (the kind's declaration): where a tenant endpoint sends it; "" never


class _SeriesWriter(_Writer):
    """Collects series instead of text: remote write's input."""

    def __init__(self) -> None:
        super().__init__(openmetrics=False)
        self.items: list[Series] = []

    def header(self, family: Family) -> None:
        pass

    def sample(self, name: str, labels: str, value: Number) -> None:
        self.items.append(Series(name, labels, value, ""))

    def family(self, family: Family, items: list[Item]) -> None:
        name = family.name
        if family.value is not None:
            value_of = family.value
            self.items += [
                Series(name, labels, value, tenant)
                for labels, tenant, record in items
                if (value := value_of(record)) is not None
            ]
        elif family.samples is not None:
            samples_of = family.samples
            self.items += [
                Series(name, labels + extra, value, tenant)
                for labels, tenant, record in items
                for extra, value in samples_of(record)
            ]

    def pairs(self, family: Family, samples: Iterator[tuple[str, Number | None]]) -> None:
        name = family.name
        self.items += [Series(name, lab, value, "") for lab, value in samples if value is not None]


def render(snapshot: Snapshot, *, openmetrics: bool = False, tenant: str | None = None) -> bytes:
    """The exposition; with `tenant`, only that tenant's series (its VMs, their VFs, GPUs
    passed through to them and their vGPUs) and nothing about the host or other tenants."""
    w = _Writer(openmetrics)
    _emit(w, snapshot, tenant)
    if openmetrics:
        w.lines.append("# EOF")
    w.lines.append("")
    return "\n".join(w.lines).encode("utf-8", "replace")


def series(snapshot: Snapshot) -> list[Series]:
    """Every series of the exposition, in exposition order, with its owner."""
    w = _SeriesWriter()
    _emit(w, snapshot, None)
    return w.items


def _emit(w: _Writer, snapshot: Snapshot, tenant: str | None) -> None:
    for kind, items in in_scope(KINDS, snapshot, tenant):
        for family in kind.families:
            w.family(family, items)
    if tenant is None:
        _render_self(w, snapshot)


def _render_self(w: _Writer, snapshot: Snapshot) -> None:
    families = {f.name.removeprefix(PREFIX): f for f in SELF_FAMILIES}

    def one(name: str, value: Number | None, labels: str = "") -> None:
        w.header(families[name])
        if value is not None:
            w.sample(families[name].name, labels, value)

    one("build_info", 1, label_text(snapshot.build))
    for name, pick in (
        ("source_up", lambda s: int(s.up)),
        ("source_polls_total", lambda s: s.polls_total),
        ("source_last_poll_duration_seconds", lambda s: s.last_duration_seconds),
        ("source_last_success_timestamp_seconds", lambda s: s.last_success_timestamp_seconds),
    ):
        w.pairs(families[name], ((f'source="{s.name}"', pick(s)) for s in snapshot.sources))
    w.pairs(
        families["source_poll_errors_total"],
        (
            (f'source="{s.name}",reason="{escape_label_value(r)}"', n)
            for s in snapshot.sources
            for r, n in s.errors_by_reason
        ),
    )
    health = snapshot.libvirt
    if health is not None:
        one("libvirt_connects_total", health.connects_total)
        w.pairs(
            families["libvirt_timeouts_total"],
            ((f'reason="{r}"', n) for r, n in health.timeouts_by_reason),
        )
        one("libvirt_quarantined_vms", health.quarantined_vms)
        one("libvirt_quarantines_total", health.quarantines_total)
        one("libvirt_busy_domains_total", health.busy_domains_total)
    one("vms", len(snapshot.vms))
    one("vfs", len(snapshot.vfs))
    if snapshot.nvml_available is not None:
        one("nvml_available", int(snapshot.nvml_available))
    one("gpus", len(snapshot.gpus))
    one("gpus_unassigned", sum(1 for g in snapshot.gpus if not g.vm_uuid and not g.gpu.vgpus))
    one("vgpus", sum(len(g.vgpu_vms) for g in snapshot.gpus))
    one("vgpus_unattributed", sum(1 for g in snapshot.gpus for vm, _ in g.vgpu_vms if not vm))
    one("vfs_unattributed", sum(1 for vf in snapshot.vfs if not vf.vm_uuid))
    one("vms_unattributed", sum(1 for vm in snapshot.vms if not vm.tenant_id))
    one("tenants", len({vm.tenant_id for vm in snapshot.vms if vm.tenant_id}))
    tm = snapshot.tenant_map
    if tm.configured:
        one("tenant_map_entries", tm.entries)
        one("tenant_map_reloads_total", tm.reloads_total)
        one("tenant_map_errors_total", tm.errors_total)
        one(
            "tenant_map_last_reload_success_timestamp_seconds",
            tm.last_reload_success_timestamp_seconds,
        )
    w.pairs(
        families["http_requests_denied_total"],
        ((f'reason="{r}"', n) for r, n in snapshot.http_denied),
    )
    one("http_connections", snapshot.http_connections)
    w.pairs(
        families["http_connections_closed_total"],
        ((f'reason="{r}"', n) for r, n in snapshot.http_connections_closed),
    )
    w.pairs(
        families["file_reloads_total"],
        ((f'file="{name}"', loads) for name, loads, _ in snapshot.watched_files),
    )
    w.pairs(
        families["file_reload_errors_total"],
        ((f'file="{name}"', errors) for name, _, errors in snapshot.watched_files),
    )
    one("tls_certificate_expiry_timestamp_seconds", snapshot.tls_certificate_not_after)
    _render_remote_write(w, snapshot, families)
    one("snapshot_timestamp_seconds", snapshot.taken_at)
    one("exposition_series", w.series + 1)


def _render_remote_write(w: _Writer, snapshot: Snapshot, families: dict[str, Family]) -> None:
    per_endpoint = [(f'endpoint="{e.endpoint}"', e) for e in snapshot.remote_write]
    for name, attribute in (
        ("queue_batches", "queue_batches"),
        ("queue_samples", "queue_samples"),
        ("queue_bytes", "queue_bytes"),
        ("queue_oldest_sample_timestamp_seconds", "oldest_sample_timestamp_seconds"),
        ("samples_sent_total", "samples_sent_total"),
        ("samples_failed_total", "samples_failed_total"),
        ("last_success_timestamp_seconds", "last_success_timestamp_seconds"),
    ):
        w.pairs(
            families[f"remote_write_{name}"],
            ((lab, getattr(e, attribute)) for lab, e in per_endpoint),
        )
    w.pairs(
        families["remote_write_samples_dropped_total"],
        (
            (f'{lab},reason="{reason}"', n)
            for lab, e in per_endpoint
            for reason, n in e.samples_dropped_by_reason
        ),
    )
    w.pairs(
        families["remote_write_queue_files_dropped_total"],
        (
            (f'{lab},reason="{reason}"', n)
            for lab, e in per_endpoint
            for reason, n in e.queue_files_dropped_by_reason
        ),
    )


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
