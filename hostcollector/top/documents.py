"""The JSON API's answers as typed records (`parse_documents`), tolerant of absent fields;
an answer not in the API's shape is a `FetchError`. Every text in the records is `visible`:
safe to print, whatever a tenant wrote in it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hostcollector.top.text import visible

API = "/api/v1"


class FetchError(Exception):
    """The API could not be read: connection, HTTP status, or a document top cannot use."""


@dataclass(frozen=True)
class Vm:
    uuid: str
    name: str
    tenant: str  # "" when unattributed
    state: str
    sampled_at: float | None
    sample_age: float | None
    quarantined: bool
    vcpus: int | None
    memory_bytes: int | None  # the balloon's current size
    rss_bytes: int | None
    # Counters by name: "cpu" (seconds), "rd:<disk>", "wr:<disk>", "rx:<nic>", "tx:<nic>" (bytes).
    counters: Mapping[str, float]


@dataclass(frozen=True)
class Vf:
    key: str  # "<pf>/<index>"
    vm_uuid: str  # "" when no VM holds it
    counters: Mapping[str, float]  # "rx", "tx" (bytes)


@dataclass(frozen=True)
class GpuUse:
    """A whole GPU or one vGPU in use by a VM; utilization 0..1, None where not known."""

    vm_uuid: str
    utilization: float | None


@dataclass(frozen=True)
class Source:
    name: str
    up: bool
    last_success_age: float | None
    last_error: str | None
    last_success_at: float | None


@dataclass(frozen=True)
class Documents:
    taken_at: float  # the snapshot's time (the envelope's snapshot_timestamp)
    fetched_at: float  # this machine's clock when the answers arrived
    vms: tuple[Vm, ...]
    vfs: tuple[Vf, ...]
    gpu_uses: tuple[GpuUse, ...]
    gpus: int  # GPUs listed, whoever uses them
    sources: tuple[Source, ...] | None  # None: not visible to this token
    # Each source's last read, from every answer's envelope (any token may see these).
    source_sampled_at: dict[str, float] = field(default_factory=dict)

    @property
    def vf_sampled_at(self) -> float:
        """When the VF counters were read: the sriov source's last success. VFs carry no time
        of their own, and the snapshot's time moves whenever any other source polls."""
        if "sriov" in self.source_sampled_at:
            return self.source_sampled_at["sriov"]
        for source in self.sources or ():
            if source.name == "sriov" and source.last_success_at is not None:
                return source.last_success_at
        return self.taken_at


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FetchError(f"{what}: expected a JSON object")
    return value


def _items(document: Any, key: str) -> list[dict[str, Any]]:
    items = _object(document, f"{API}/{key}").get(key)
    if not isinstance(items, list):
        raise FetchError(f"{API}/{key}: no {key!r} list in the answer")
    return [item for item in items if isinstance(item, dict)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _text(value: Any) -> str:
    # The one way text leaves the API's answers: names, tenant IDs and errors are tenants'.
    return visible(value) if isinstance(value, str) else ""


def _optional_text(value: Any) -> str | None:
    return _text(value) if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _counters(prefixes: Iterable[tuple[str, Any, str]]) -> dict[str, float]:
    """(name, record, field) -> {name: value} for the fields that are numbers."""
    found = {}
    for name, record, key in prefixes:
        value = _number(_dict(record).get(key))
        if value is not None:
            found[name] = value
    return found


def _device(record: dict[str, Any]) -> str:
    return visible(str(record.get("device")))


def parse_vm(item: dict[str, Any]) -> Vm:
    memory = _dict(item.get("memory"))
    blocks = [b for b in item.get("blocks") or () if isinstance(b, dict)]
    nics = [n for n in item.get("interfaces") or () if isinstance(n, dict)]
    counters = _counters(
        [("cpu", item, "cpu_time_seconds")]
        + [(f"rd:{_device(b)}", b, "read_bytes") for b in blocks]
        + [(f"wr:{_device(b)}", b, "write_bytes") for b in blocks]
        + [(f"rx:{_device(n)}", n, "receive_bytes") for n in nics]
        + [(f"tx:{_device(n)}", n, "transmit_bytes") for n in nics]
    )
    return Vm(
        uuid=_text(item.get("uuid")),
        name=_text(item.get("name")) or _text(item.get("uuid")),
        tenant=_text(item.get("tenant_id")),
        state=_text(item.get("state")) or "-",
        sampled_at=_number(item.get("sampled_at")),
        sample_age=_number(item.get("sample_age_seconds")),
        quarantined=item.get("quarantined") is True,
        vcpus=_integer(item.get("vcpu_current")),
        memory_bytes=_integer(memory.get("current_bytes")),
        rss_bytes=_integer(memory.get("rss_bytes")),
        counters=counters,
    )


def parse_vf(item: dict[str, Any]) -> Vf:
    vf = _dict(item.get("vf"))
    return Vf(
        key=visible(f"{vf.get('pf')}/{vf.get('index')}"),
        vm_uuid=_text(item.get("vm_uuid")),
        counters=_counters([("rx", vf, "receive_bytes"), ("tx", vf, "transmit_bytes")]),
    )


def parse_gpu_uses(item: dict[str, Any]) -> list[GpuUse]:
    """A GPU passed through whole counts for its VM with the GPU's utilization; each vGPU for
    its VM with the vGPU's SM utilization."""
    uses = []
    vm_uuid = _text(item.get("vm_uuid"))
    if vm_uuid:
        gpu = item.get("gpu")
        ratio = _number(gpu.get("gpu_utilization_ratio")) if isinstance(gpu, dict) else None
        uses.append(GpuUse(vm_uuid, ratio))
    for entry in item.get("vgpus") or ():
        if isinstance(entry, dict) and _text(entry.get("vm_uuid")):
            vgpu = entry.get("vgpu")
            ratio = _number(vgpu.get("sm_utilization_ratio")) if isinstance(vgpu, dict) else None
            uses.append(GpuUse(_text(entry["vm_uuid"]), ratio))
    return uses


def parse_sources(document: Any) -> tuple[Source, ...] | None:
    if document is None:
        return None
    return tuple(
        Source(
            name=_text(item.get("name")),
            up=item.get("up") is True,
            last_success_age=_number(item.get("last_success_age_seconds")),
            last_error=_optional_text(item.get("last_error")),
            last_success_at=_number(item.get("last_success_timestamp_seconds")),
        )
        for item in _items(document, "sources")
    )


def parse_documents(vms: Any, gpus: Any, vfs: Any, sources: Any, *, fetched_at: float) -> Documents:
    """The API's answers (JSON values) -> Documents; FetchError if one is not the API's shape.
    `sources` None: /sources answered 403 (a tenant's token)."""
    taken_at = _number(_object(vms, f"{API}/vms").get("snapshot_timestamp"))
    gpu_items = _items(gpus, "gpus")
    return Documents(
        taken_at=fetched_at if taken_at is None else taken_at,
        fetched_at=fetched_at,
        vms=tuple(parse_vm(item) for item in _items(vms, "vms")),
        vfs=tuple(parse_vf(item) for item in _items(vfs, "vfs")),
        gpu_uses=tuple(use for item in gpu_items for use in parse_gpu_uses(item)),
        gpus=len(gpu_items),
        sources=parse_sources(sources),
        source_sampled_at=_source_times(_object(vfs, f"{API}/vfs").get("source_sampled_at")),
    )


def _source_times(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {visible(str(k)): float(v) for k, v in value.items() if isinstance(v, int | float)}
