"""Snapshot -> Prometheus text format 0.0.4 or OpenMetrics 1.0.0 bytes.

The metric families are declared once, in metrics.py. Every per-VM series carries
`vm_uuid` and `tenant_id`; descriptive, tenant-controlled strings (VM name, flavor, ...) only
appear on `hostcollector_vm_info`. Label values are escaped, so no VM name can break a line or
forge a series.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from hostcollector.metrics import (
    ALL_FAMILIES,
    BLOCK_FAMILIES,
    BLOCK_INFO,
    GPU_CLOCKS_EVENT,
    GPU_ECC,
    GPU_FAMILIES,
    GPU_INFO,
    GPU_NVLINK,
    GPU_REMAPPED,
    GPU_XID,
    INTERFACE_FAMILIES,
    PF_FAMILIES,
    PREFIX,
    SELF_FAMILIES,
    VCPU_FAMILIES,
    VF_FAMILIES,
    VF_INFO,
    VGPU_FAMILIES,
    VGPU_INFO,
    VM_FAMILIES,
    VM_INFO,
    VM_STATUS_FAMILIES,
    Family,
    Number,
)
from hostcollector.model import Snapshot
from hostcollector.sources.nvml_reasons import CLOCKS_EVENT_REASONS

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


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


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)


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

    def family(self, family: Family, samples: Iterator[tuple[str, Number | None]]) -> None:
        # The hot loop (~1 us per series): one f-string per sample, ints formatted inline.
        self.header(family)
        name = family.name
        lines = [
            f"{name}{{{labels}}} {value if value.__class__ is int else format_value(value)}"
            for labels, value in samples
            if value is not None
        ]
        self.lines += lines
        self.series += len(lines)


class _SeriesWriter(_Writer):
    """Collects (family name, label text, value) instead of text: remote write's input."""

    def __init__(self) -> None:
        super().__init__(openmetrics=False)
        self.items: list[tuple[str, str, Number]] = []

    def header(self, family: Family) -> None:
        pass

    def sample(self, name: str, labels: str, value: Number) -> None:
        self.items.append((name, labels, value))

    def family(self, family: Family, samples: Iterator[tuple[str, Number | None]]) -> None:
        name = family.name
        self.items += [(name, labels, value) for labels, value in samples if value is not None]


def render(snapshot: Snapshot, *, openmetrics: bool = False, tenant: str | None = None) -> bytes:
    """The exposition; with `tenant`, only that tenant's series (its VMs, their VFs, GPUs
    passed through to them and their vGPUs) and nothing about the host or other tenants."""
    w = _Writer(openmetrics)
    _emit(w, snapshot, tenant)
    if openmetrics:
        w.lines.append("# EOF")
    w.lines.append("")
    return "\n".join(w.lines).encode("utf-8", "replace")


def series(snapshot: Snapshot) -> list[tuple[str, str, Number]]:
    """Every series of the exposition as (name, label text, value), in exposition order."""
    w = _SeriesWriter()
    _emit(w, snapshot, None)
    return w.items


def _emit(w: _Writer, snapshot: Snapshot, tenant: str | None) -> None:
    vms = [
        (vm, _labels((("vm_uuid", vm.stats.uuid), ("tenant_id", vm.tenant_id))))
        for vm in snapshot.vms
        if tenant is None or vm.tenant_id == tenant
    ]

    for family in VM_FAMILIES:
        w.family(family, ((base, family.value(vm.stats)) for vm, base in vms))

    for family in VM_STATUS_FAMILIES:
        w.family(family, ((base, family.value(vm)) for vm, base in vms))

    w.header(VM_INFO)
    for vm, base in vms:
        extra = (("name", vm.stats.name), ("tenant_source", vm.tenant_source), *vm.info_labels)
        w.sample(VM_INFO.name, f"{base},{_labels(extra)}", 1)

    per_vcpu = [(f'{base},vcpu="{v.index}"', v) for vm, base in vms for v in vm.stats.vcpus]
    for family in VCPU_FAMILIES:
        w.family(family, ((labels, family.value(v)) for labels, v in per_vcpu))

    per_block = [
        (f'{base},device="{escape_label_value(b.device)}"', b)
        for vm, base in vms
        for b in vm.stats.blocks
    ]
    for family in BLOCK_FAMILIES:
        w.family(family, ((labels, family.value(b)) for labels, b in per_block))
    w.header(BLOCK_INFO)
    for labels, b in per_block:
        if b.path is not None:
            w.sample(BLOCK_INFO.name, f'{labels},path="{escape_label_value(b.path)}"', 1)

    per_nic = [
        (f'{base},device="{escape_label_value(n.device)}"', n)
        for vm, base in vms
        for n in vm.stats.interfaces
    ]
    for family in INTERFACE_FAMILIES:
        w.family(family, ((labels, family.value(n)) for labels, n in per_nic))

    _render_sriov(w, snapshot, tenant)
    _render_gpus(w, snapshot, tenant)
    if tenant is None:
        _render_self(w, snapshot)


def _flag(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def _render_sriov(w: _Writer, snapshot: Snapshot, tenant: str | None) -> None:
    per_vf = [
        (
            _labels(
                (
                    ("pf", a.vf.pf),
                    ("vf", str(a.vf.index)),
                    ("pci_address", a.vf.pci_address or ""),
                    ("vm_uuid", a.vm_uuid),
                    ("tenant_id", a.tenant_id),
                )
            ),
            a.vf,
        )
        for a in snapshot.vfs
        if tenant is None or a.tenant_id == tenant
    ]
    for family in VF_FAMILIES:
        w.family(family, ((labels, family.value(vf)) for labels, vf in per_vf))
    w.header(VF_INFO)
    for labels, vf in per_vf:
        config = (
            ("mac", vf.mac or ""),
            ("vlan", "" if vf.vlan is None else str(vf.vlan)),
            ("qos", "" if vf.qos is None else str(vf.qos)),
            ("spoof_check", _flag(vf.spoof_check)),
            ("trust", _flag(vf.trust)),
            ("link_state", vf.link_state or ""),
            ("stats_source", vf.stats_source),
        )
        w.sample(VF_INFO.name, f"{labels},{_labels(config)}", 1)
    if tenant is not None:
        return  # PFs are the host's
    per_pf = [(_labels((("pf", p.name), ("pci_address", p.pci_address))), p) for p in snapshot.pfs]
    for family in PF_FAMILIES:
        w.family(family, ((labels, family.value(pf)) for labels, pf in per_pf))


def _render_gpus(w: _Writer, snapshot: Snapshot, tenant: str | None) -> None:
    per_gpu = [
        (
            _labels(
                (
                    ("gpu_uuid", a.gpu.uuid),
                    ("pci_address", a.gpu.pci_address),
                    ("vm_uuid", a.vm_uuid),
                    ("tenant_id", a.tenant_id),
                )
            ),
            a.gpu,
        )
        for a in snapshot.gpus
        # A GPU shared by vGPUs belongs to no tenant: its own series would show the others' use.
        if tenant is None or a.tenant_id == tenant
    ]
    for family in GPU_FAMILIES:
        w.family(family, ((labels, family.value(gpu)) for labels, gpu in per_gpu))
    w.header(GPU_INFO)
    for labels, gpu in per_gpu:
        driver_version = snapshot.nvml_driver_version if gpu.nvml_visible else ""
        extra = (
            ("name", gpu.name or ""),
            ("driver", (gpu.pcie.driver if gpu.pcie else None) or ""),
            ("power_state", (gpu.pcie.power_state if gpu.pcie else None) or ""),
            ("driver_version", driver_version or ""),
        )
        w.sample(GPU_INFO.name, f"{labels},{_labels(extra)}", 1)
    w.family(
        GPU_ECC,
        (
            (f'{lab},error_type="{e}",counter_type="{c}"', n)
            for lab, g in per_gpu
            for e, c, n in g.ecc_errors
        ),
    )
    w.family(
        GPU_REMAPPED, ((f'{lab},kind="{k}"', n) for lab, g in per_gpu for k, n in g.remapped_rows)
    )
    w.family(
        GPU_NVLINK,
        (
            (f'{lab},link="{k}",counter="{c}"', n)
            for lab, g in per_gpu
            for k, c, n in g.nvlink_errors
        ),
    )
    w.family(GPU_XID, ((f'{lab},xid="{x}"', n) for lab, g in per_gpu for x, n in g.xid_errors))
    w.family(
        GPU_CLOCKS_EVENT,
        (
            (f'{lab},reason="{reason}"', int(bool(g.clocks_event_reasons & bit)))
            for lab, g in per_gpu
            if g.clocks_event_reasons is not None
            for bit, reason in CLOCKS_EVENT_REASONS.items()
        ),
    )
    per_vgpu = [
        (
            _labels(
                (
                    ("gpu_uuid", a.gpu.uuid),
                    ("vgpu_uuid", v.uuid or str(v.instance_id)),
                    ("vm_uuid", vm),
                    ("tenant_id", vgpu_tenant),
                )
            ),
            v,
        )
        for a in snapshot.gpus
        for v, (vm, vgpu_tenant) in zip(a.gpu.vgpus, a.vgpu_vms, strict=True)
        if tenant is None or vgpu_tenant == tenant
    ]
    for family in VGPU_FAMILIES:
        w.family(family, ((labels, family.value(v)) for labels, v in per_vgpu))
    w.header(VGPU_INFO)
    for labels, v in per_vgpu:
        vgpu_extra = (
            ("vgpu_instance", str(v.instance_id)),
            ("type", v.type_name or ""),
            ("mdev_uuid", v.mdev_uuid or ""),
            ("guest_pci_address", v.guest_pci_address or ""),
            ("gpu_instance_id", "" if v.gpu_instance_id is None else str(v.gpu_instance_id)),
            ("vm_id", v.vm_id),
        )
        w.sample(VGPU_INFO.name, f"{labels},{_labels(vgpu_extra)}", 1)


def _render_self(w: _Writer, snapshot: Snapshot) -> None:
    families = {f.name.removeprefix(PREFIX): f for f in SELF_FAMILIES}

    def one(name: str, value: Number | None, labels: str = "") -> None:
        w.header(families[name])
        if value is not None:
            w.sample(families[name].name, labels, value)

    one("build_info", 1, _labels(snapshot.build))
    for name, pick in (
        ("source_up", lambda s: int(s.up)),
        ("source_polls_total", lambda s: s.polls_total),
        ("source_last_poll_duration_seconds", lambda s: s.last_duration_seconds),
        ("source_last_success_timestamp_seconds", lambda s: s.last_success_timestamp_seconds),
    ):
        w.family(families[name], ((f'source="{s.name}"', pick(s)) for s in snapshot.sources))
    w.family(
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
        w.family(
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
    w.family(
        families["http_requests_denied_total"],
        ((f'reason="{r}"', n) for r, n in snapshot.http_denied),
    )
    one("http_connections", snapshot.http_connections)
    w.family(
        families["http_connections_closed_total"],
        ((f'reason="{r}"', n) for r, n in snapshot.http_connections_closed),
    )
    w.family(
        families["file_reloads_total"],
        ((f'file="{name}"', loads) for name, loads, _ in snapshot.watched_files),
    )
    w.family(
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
        w.family(
            families[f"remote_write_{name}"],
            ((lab, getattr(e, attribute)) for lab, e in per_endpoint),
        )
    w.family(
        families["remote_write_samples_dropped_total"],
        (
            (f'{lab},reason="{reason}"', n)
            for lab, e in per_endpoint
            for reason, n in e.samples_dropped_by_reason
        ),
    )
    w.family(
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
