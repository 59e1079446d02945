"""Rates and table rows, pure: `History` keeps per VM and VF the last two samples read at
different times (the daemon samples less often than top refreshes), rows per VM or summed per
tenant, and their sort order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from hostcollector.top.documents import Documents, Vm

SORTS = ("cpu", "mem", "disk", "net", "gpu", "vf", "name")
SORT_KEYS = {"c": "cpu", "m": "mem", "d": "disk", "n": "net", "g": "gpu", "v": "vf", "N": "name"}
NO_TENANT = "(none)"
# The daemon re-reads every VM each libvirt interval (15 s by default); a sample older than
# a few intervals means that VM is not being read any more.
STALE_SECONDS = 60.0


@dataclass(frozen=True)
class Sample:
    at: float
    counters: Mapping[str, float]


# The previous and the latest sample of one VM or VF, read at different times.
Pair = tuple[Sample | None, Sample]


def advance_pair(pair: Pair | None, sample: Sample) -> Pair:
    if pair is None:
        return (None, sample)
    if sample.at == pair[1].at:
        # The daemon has not re-read it since (its interval is longer than ours): keep the
        # last rates rather than show "-" until the next poll.
        return pair
    return (pair[1], sample)


def rates(pair: Pair | None) -> dict[str, float]:
    """Per counter: its increase per second. A counter seen once, or one that went backwards
    (the VM restarted, the driver was reloaded) has no rate: absent, never negative."""
    before, after = pair if pair is not None else (None, None)
    if before is None or after is None:
        return {}
    elapsed = after.at - before.at
    if elapsed <= 0:
        return {}
    return {
        name: (value - before.counters[name]) / elapsed
        for name, value in after.counters.items()
        if name in before.counters and value >= before.counters[name]
    }


def vm_sample(vm: Vm, documents: Documents) -> Sample:
    # sampled_at is when the daemon read this VM, which can be long before the snapshot (a
    # quarantined VM keeps its last values).
    return Sample(documents.taken_at if vm.sampled_at is None else vm.sampled_at, vm.counters)


@dataclass(frozen=True)
class History:
    """What the rates need: the latest documents, and per VM and VF its last two samples."""

    latest: Documents | None = None
    vms: Mapping[str, Pair] = field(default_factory=dict)
    vfs: Mapping[str, Pair] = field(default_factory=dict)

    def advance(self, documents: Documents) -> History:
        """The history after one more fetch. VMs and VFs gone from it are forgotten."""
        vf_at = documents.vf_sampled_at
        return History(
            latest=documents,
            vms={
                vm.uuid: advance_pair(self.vms.get(vm.uuid), vm_sample(vm, documents))
                for vm in documents.vms
            },
            vfs={
                vf.key: advance_pair(self.vfs.get(vf.key), Sample(vf_at, vf.counters))
                for vf in documents.vfs
            },
        )


@dataclass(frozen=True)
class Row:
    """One line of the table: a VM, or a tenant's VMs summed. Rates per second, None unknown."""

    name: str
    tenant: str
    state: str
    vms: int
    cpu: float | None  # cores
    vcpus: int | None
    memory: int | None
    rss: int | None
    disk_read: float | None
    disk_write: float | None
    net_rx: float | None
    net_tx: float | None
    gpus: tuple[float | None, ...]  # utilization of each GPU and vGPU in use
    vf_rx: float | None
    vf_tx: float | None
    quarantined: int = 0  # VMs
    stale: int = 0  # VMs
    age: float | None = None  # a VM's sample age, shown when quarantined or stale
    summed: bool = False  # a tenant's row


def total(values: Iterable[float | None]) -> float | None:
    """The sum of the known values; None if none is known."""
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def _prefixed(found: Mapping[str, float], prefix: str) -> float | None:
    return total(value for name, value in found.items() if name.startswith(prefix))


def _vf_rates(history: History) -> dict[str, tuple[float | None, float | None]]:
    """Per VM: its VFs' (rx, tx) bytes per second."""
    per_vm: dict[str, list[dict[str, float]]] = {}
    assert history.latest is not None
    for vf in history.latest.vfs:
        if vf.vm_uuid:
            per_vm.setdefault(vf.vm_uuid, []).append(rates(history.vfs.get(vf.key)))
    return {
        vm: (total(r.get("rx") for r in found), total(r.get("tx") for r in found))
        for vm, found in per_vm.items()
    }


def vm_row(
    vm: Vm, found: Mapping[str, float], gpus: Sequence[float | None], vf: tuple[float | None, ...]
) -> Row:
    stale = vm.sample_age is not None and vm.sample_age > STALE_SECONDS
    return Row(
        name=vm.name,
        tenant=vm.tenant,
        state=vm.state,
        vms=1,
        cpu=found.get("cpu"),
        vcpus=vm.vcpus,
        memory=vm.memory_bytes,
        rss=vm.rss_bytes,
        disk_read=_prefixed(found, "rd:"),
        disk_write=_prefixed(found, "wr:"),
        net_rx=_prefixed(found, "rx:"),
        net_tx=_prefixed(found, "tx:"),
        gpus=tuple(gpus),
        vf_rx=vf[0],
        vf_tx=vf[1],
        quarantined=int(vm.quarantined),
        stale=int(stale),
        age=vm.sample_age if vm.quarantined or stale else None,
    )


def vm_rows(history: History) -> list[Row]:
    if history.latest is None:
        return []
    gpus: dict[str, list[float | None]] = {}
    for use in history.latest.gpu_uses:
        gpus.setdefault(use.vm_uuid, []).append(use.utilization)
    vfs = _vf_rates(history)
    return [
        vm_row(
            vm,
            rates(history.vms.get(vm.uuid)),
            gpus.get(vm.uuid, ()),
            vfs.get(vm.uuid, (None, None)),
        )
        for vm in history.latest.vms
    ]


def _int_total(values: Iterable[int | None]) -> int | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def tenant_row(tenant: str, rows: Sequence[Row]) -> Row:
    return Row(
        name=tenant or NO_TENANT,
        tenant=tenant,
        state="",
        vms=len(rows),
        cpu=total(r.cpu for r in rows),
        vcpus=_int_total(r.vcpus for r in rows),
        memory=_int_total(r.memory for r in rows),
        rss=_int_total(r.rss for r in rows),
        disk_read=total(r.disk_read for r in rows),
        disk_write=total(r.disk_write for r in rows),
        net_rx=total(r.net_rx for r in rows),
        net_tx=total(r.net_tx for r in rows),
        gpus=tuple(use for r in rows for use in r.gpus),
        vf_rx=total(r.vf_rx for r in rows),
        vf_tx=total(r.vf_tx for r in rows),
        quarantined=sum(r.quarantined for r in rows),
        stale=sum(r.stale for r in rows),
        summed=True,
    )


def tenant_rows(rows: Iterable[Row]) -> list[Row]:
    """VM rows summed per tenant; unattributed VMs together as "(none)"."""
    by_tenant: dict[str, list[Row]] = {}
    for row in rows:
        by_tenant.setdefault(row.tenant, []).append(row)
    return [tenant_row(tenant, members) for tenant, members in by_tenant.items()]


def gpu_mean(row: Row) -> float | None:
    known = [use for use in row.gpus if use is not None]
    return sum(known) / len(known) if known else None


def _known(value: float | None) -> float:
    # Unknown sorts below every known value: last in the default (descending) order.
    return float("-inf") if value is None else value


SORT_VALUES: dict[str, Callable[[Row], tuple[float, ...]]] = {
    "cpu": lambda r: (_known(r.cpu),),
    "mem": lambda r: (_known(r.rss), _known(r.memory)),
    "disk": lambda r: (_known(total((r.disk_read, r.disk_write))),),
    "net": lambda r: (_known(total((r.net_rx, r.net_tx))),),
    "gpu": lambda r: (_known(gpu_mean(r)), len(r.gpus)),
    "vf": lambda r: (_known(total((r.vf_rx, r.vf_tx))),),
}


@dataclass(frozen=True)
class View:
    sort: str = "cpu"
    reverse: bool = False  # against the sort's default: descending, or ascending for name
    tenants: bool = False


def sort_rows(rows: Iterable[Row], view: View) -> list[Row]:
    """Descending by the sort key (name: ascending), ties by name; `reverse` flips it all."""
    by_name = sorted(rows, key=lambda r: r.name, reverse=view.reverse and view.sort == "name")
    if view.sort == "name":
        return by_name
    # Python's sort is stable in both directions: equal keys keep the name order.
    return sorted(by_name, key=SORT_VALUES[view.sort], reverse=not view.reverse)


def apply_key(view: View, key: str) -> View | None:
    """The view after a key press; None to quit."""
    if key == "q":
        return None
    if key == "r":
        return replace(view, reverse=not view.reverse)
    if key == "t":
        return replace(view, tenants=not view.tenants)
    if key in SORT_KEYS:
        return replace(view, sort=SORT_KEYS[key], reverse=False)
    return view
