"""Snapshot -> the JSON API's documents, limited to what one scope may see.

Pure functions over a Snapshot: the HTTP side (api.py) checks the request and picks the view;
orjson serialises the model's dataclasses directly, so field names are the model's (base units
in the name: `cpu_time_seconds`, `receive_bytes`).

A tenant-scoped view shows that tenant's VMs, the VFs and whole GPUs assigned to them and their
vGPUs, and never a host-wide figure: a GPU shared by several tenants' vGPUs is listed with the
caller's vGPUs only, without the physical GPU's own utilization.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hostcollector.attribution import attributed_vgpus
from hostcollector.kinds import items_of, visible
from hostcollector.metrics import KINDS, VF, VM
from hostcollector.model import AttributedGpu, AttributedVF, AttributedVM, Snapshot

# virDomainState
VM_STATES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}

Document = dict[str, Any]


def vm_state(vm: AttributedVM) -> str | None:
    state = vm.stats.state
    return None if state is None else VM_STATES.get(state, str(state))


def vm_view(vm: AttributedVM) -> Document:
    s = vm.stats
    return {
        "uuid": s.uuid,
        "name": s.name,
        "tenant_id": vm.tenant_id or None,
        "tenant_source": vm.tenant_source or None,
        "labels": dict(vm.info_labels),
        "state": vm_state(vm),
        "sampled_at": vm.sampled_at,
        "sample_age_seconds": vm.sample_age_seconds,
        "quarantined": vm.quarantined,
        "job_active": vm.job_active,
        "stats_path": vm.stats_path,
        "cpu_time_seconds": s.cpu_time_seconds,
        "cpu_user_seconds": s.cpu_user_seconds,
        "cpu_system_seconds": s.cpu_system_seconds,
        "vcpu_current": s.vcpu_current,
        "vcpu_maximum": s.vcpu_maximum,
        "memory": s.memory,
        "vcpus": s.vcpus,
        "blocks": s.blocks,
        "interfaces": s.interfaces,
    }


def vf_view(a: AttributedVF) -> Document:
    return {"vm_uuid": a.vm_uuid or None, "tenant_id": a.tenant_id or None, "vf": a.vf}


def gpu_view(a: AttributedGpu, tenant: str | None) -> Document | None:
    """The GPU as `tenant` may see it (None: everything); None if it shows nothing of theirs."""
    vgpus = [
        {"vm_uuid": v.vm_uuid or None, "tenant_id": v.tenant_id or None, "vgpu": v.vgpu}
        for v in attributed_vgpus(a)
        if visible(v.tenant_id, tenant)
    ]
    whole = visible(a.tenant_id, tenant)
    if not whole and not vgpus:
        return None
    return {
        "uuid": a.gpu.uuid or None,
        "pci_address": a.gpu.pci_address,
        "vm_uuid": a.vm_uuid or None,
        "tenant_id": a.tenant_id or None,
        # The physical GPU's own figures: only for the host's view or the GPU's sole tenant.
        "gpu": dataclasses.replace(a.gpu, vgpus=()) if whole else None,
        "vgpus": vgpus,
    }


def vms(snapshot: Snapshot, tenant: str | None, state: str | None = None) -> list[Document]:
    return [
        vm_view(item.record)
        for item in items_of(VM, snapshot, tenant)
        if state is None or vm_state(item.record) == state
    ]


def vfs(snapshot: Snapshot, tenant: str | None) -> list[Document]:
    return [vf_view(item.record) for item in items_of(VF, snapshot, tenant)]


def gpus(snapshot: Snapshot, tenant: str | None) -> list[Document]:
    return [view for a in snapshot.gpus if (view := gpu_view(a, tenant)) is not None]


def vm_detail(snapshot: Snapshot, uuid: str, tenant: str | None) -> Document | None:
    """One VM with its VFs and GPUs; None if it does not exist or is not the caller's."""
    for item in items_of(VM, snapshot, tenant):
        vm = item.record
        if vm.stats.uuid == uuid:
            owner = vm.tenant_id if tenant is None else tenant
            return vm_view(vm) | {
                "vfs": [vf_view(a) for a in snapshot.vfs if a.vm_uuid == uuid],
                "gpus": [
                    view
                    for a in snapshot.gpus
                    if a.vm_uuid == uuid or uuid in (vm for vm, _ in a.vgpu_vms)
                    if (view := gpu_view(a, owner)) is not None
                ],
            }
    return None


def _owners(snapshot: Snapshot) -> dict[str, Counter[str]]:
    """Per counted kind (vms, vfs, gpus, vgpus), how many each owner has."""
    return {
        kind.counted_as: Counter(item.tenant for item in items_of(kind, snapshot))
        for kind in KINDS
        if kind.counted_as is not None
    }


def tenant_ids(snapshot: Snapshot) -> set[str]:
    found = {owner for counts in _owners(snapshot).values() for owner in counts}
    found.discard("")
    return found


def tenants(snapshot: Snapshot, tenant: str | None) -> list[Document]:
    """Each tenant on the host with its counts."""
    counts = _owners(snapshot)
    owners = {owner for found in counts.values() for owner in found if owner}
    return [
        {"tenant_id": tenant_id} | {kind: found[tenant_id] for kind, found in counts.items()}
        for tenant_id in sorted(owners)
        if visible(tenant_id, tenant)
    ]


def tenant_detail(snapshot: Snapshot, tenant_id: str) -> Document | None:
    if tenant_id not in tenant_ids(snapshot):
        return None
    return {
        "tenant_id": tenant_id,
        "vms": vms(snapshot, tenant_id),
        "gpus": gpus(snapshot, tenant_id),
        "vfs": vfs(snapshot, tenant_id),
    }


def sources(
    snapshot: Snapshot,
    now: float | None = None,
    *,
    files: Sequence[tuple[str, int, int]] = (),
    tls_certificate_not_after: float | None = None,
) -> Document:
    """Health and freshness of every source: the host's view only; with the HTTP side's files
    re-read on change, (name, loads, rejected versions), and its certificate's expiry."""
    now = time.time() if now is None else now
    return {
        "sources": [
            {
                "name": s.name,
                "up": s.up,
                "polls_total": s.polls_total,
                "errors_total": s.errors_total,
                "errors_by_reason": dict(s.errors_by_reason),
                "last_error": s.last_error,
                "last_duration_seconds": s.last_duration_seconds,
                "last_success_timestamp_seconds": s.last_success_timestamp_seconds,
                "last_success_age_seconds": None
                if s.last_success_timestamp_seconds is None
                else max(0.0, now - s.last_success_timestamp_seconds),
            }
            for s in snapshot.sources
        ],
        "libvirt": snapshot.libvirt,
        "tenant_map": snapshot.tenant_map,
        "nvml_available": snapshot.nvml_available,
        "remote_write": snapshot.remote_write,
        "files": [
            {"file": name, "reloads_total": loads, "errors_total": errors}
            for name, loads, errors in files
        ],
        "tls_certificate_not_after": tls_certificate_not_after,
    }
