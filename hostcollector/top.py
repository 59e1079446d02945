"""`hostcollector top`: a live terminal view of one host's VMs and tenants, like top(1).

It reads the daemon's JSON API (/api/v1: vms, gpus, vfs, sources), locally or on a remote host,
and shows per VM (or per tenant, summed) CPU cores used, memory, disk and network throughput,
GPU utilization and SR-IOV VF throughput. The daemon serves counters; rates are computed here
from the two most recent distinct samples of each VM and VF.

Layers, each usable alone:
- fetching: `Client` and `fetch()`, urllib only, any failure a `FetchError`;
- parsing: `parse_documents()`, the API's JSON -> typed `Documents`, tolerant of absent fields;
- rates: `History.advance()`, pure, keeps per VM/VF the last two samples read at different times;
- layout: `frame()`, pure, history + view + width -> lines of text; `--once` prints it and the
  curses loop draws it.
"""

from __future__ import annotations

import contextlib
import curses
import http.client
import locale
import os
import queue
import shutil
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

API = "/api/v1"
SORTS = ("cpu", "mem", "disk", "net", "gpu", "vf", "name")
SORT_KEYS = {"c": "cpu", "m": "mem", "d": "disk", "n": "net", "g": "gpu", "v": "vf", "N": "name"}
NO_TENANT = "(none)"
SHORT_TENANT = 8
FULL_TENANT = 32
# The daemon re-reads every VM each libvirt interval (15 s by default); a sample older than
# a few intervals means that VM is not being read any more.
STALE_SECONDS = 60.0
INPUT_POLL_MS = 100
# --once into a pipe or a file: lines are not cut.
UNCUT_WIDTH = 1000
KEYS_HINT = "keys: q quit  c m d n g v N sort by cpu mem disk net gpu vf name  r reverse  t tenants"


# --- fetching -----------------------------------------------------------------------------


class FetchError(Exception):
    """The API could not be read: connection, HTTP status, or a document top cannot use."""


class SetupError(Exception):
    """A command-line option that cannot work (bad URL, unreadable token or certificate)."""


@dataclass(frozen=True)
class Client:
    url: str  # scheme://host:port, no trailing slash
    token: str | None = None
    context: ssl.SSLContext | None = None
    timeout: float = 5.0

    def __repr__(self) -> str:
        # Never show the token, even in a traceback or a debugger.
        return f"Client(url={self.url!r}, token={'***' if self.token else None})"


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise SetupError(f"cannot read the token file: {exc}") from exc
    if not token:
        raise SetupError(f"the token file {path} is empty")
    return token


def ssl_context(ca_file: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SetupError(f"cannot load the TLS files: {exc}") from exc
    return context


def make_client(
    url: str,
    *,
    token_file: str | None = None,
    ca_file: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    timeout: float = 5.0,
) -> Client:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SetupError(f"--url must be http://HOST:PORT or https://HOST:PORT, not {url!r}")
    if (cert is None) != (key is None):
        raise SetupError("--cert and --key go together")
    https = parts.scheme == "https"
    if not https and (ca_file or cert):
        # Most likely a typo in the URL; a token would then cross the network in clear.
        raise SetupError("--ca-file, --cert and --key need an https:// URL")
    return Client(
        url=url.rstrip("/"),
        token=read_token(token_file) if token_file else None,
        context=ssl_context(ca_file, cert, key) if https else None,
        timeout=timeout,
    )


def _request(client: Client, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(client.url + path, headers={"Accept": "application/json"})
    if client.token:
        # Unredirected: if the server ever redirected elsewhere, the token would not follow.
        request.add_unredirected_header("Authorization", f"Bearer {client.token}")
    try:
        with urllib.request.urlopen(request, timeout=client.timeout, context=client.context) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _read_quietly(exc)
    except urllib.error.URLError as exc:
        raise FetchError(f"{path}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"{path}: {exc or type(exc).__name__}") from exc


def _read_quietly(response: urllib.error.HTTPError) -> bytes:
    try:
        return bytes(response.read())
    except (OSError, http.client.HTTPException):
        return b""


def _error_message(body: bytes) -> str:
    """The API's {"error": {"message": ...}}, or the start of whatever else came back."""
    try:
        message = orjson.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body[:80].decode(errors="replace").strip()
    return str(message)


def get_json(client: Client, path: str) -> tuple[int, Any]:
    """(status, document) for 2xx and 403; any other answer is a FetchError."""
    status, body = _request(client, path)
    if status == 403:
        return status, None
    if not 200 <= status < 300:
        raise FetchError(f"{path}: HTTP {status}: {_error_message(body)}")
    try:
        return status, orjson.loads(body)
    except ValueError as exc:
        raise FetchError(f"{path}: not JSON: {exc}") from exc


def _get_required(client: Client, name: str) -> Any:
    path = f"{API}/{name}"
    status, document = get_json(client, path)
    if status == 403:
        raise FetchError(f"{path}: HTTP 403: this token may not read it")
    return document


def fetch(client: Client) -> Documents:
    """One refresh: the four documents, parsed. /sources answers 403 to a tenant's token."""
    vms = _get_required(client, "vms")
    gpus = _get_required(client, "gpus")
    vfs = _get_required(client, "vfs")
    _, sources = get_json(client, f"{API}/sources")
    return parse_documents(vms, gpus, vfs, sources, fetched_at=time.time())


def fetch_or_error(client: Client) -> Documents | str:
    try:
        return fetch(client)
    except FetchError as exc:
        return str(exc)


# --- parsing ------------------------------------------------------------------------------


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
    return value if isinstance(value, str) else ""


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


def parse_vm(item: dict[str, Any]) -> Vm:
    memory = _dict(item.get("memory"))
    blocks = [b for b in item.get("blocks") or () if isinstance(b, dict)]
    nics = [n for n in item.get("interfaces") or () if isinstance(n, dict)]
    counters = _counters(
        [("cpu", item, "cpu_time_seconds")]
        + [(f"rd:{b.get('device')}", b, "read_bytes") for b in blocks]
        + [(f"wr:{b.get('device')}", b, "write_bytes") for b in blocks]
        + [(f"rx:{n.get('device')}", n, "receive_bytes") for n in nics]
        + [(f"tx:{n.get('device')}", n, "transmit_bytes") for n in nics]
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
        key=f"{vf.get('pf')}/{vf.get('index')}",
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
            last_error=item.get("last_error") if isinstance(item.get("last_error"), str) else None,
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
    return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}


# --- rates --------------------------------------------------------------------------------


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


# --- rows ---------------------------------------------------------------------------------


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


# --- sorting ------------------------------------------------------------------------------


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


# --- layout -------------------------------------------------------------------------------

BYTE_UNITS = ("K", "M", "G", "T", "P")


def human_bytes(value: float | None) -> str:
    """1024-based, at most 4 characters plus the unit: 512, 1.5K, 256M, 12G."""
    if value is None:
        return "-"
    if value < 1024:
        return f"{value:.0f}"
    for unit in BYTE_UNITS:
        value /= 1024
        if value < 1024 or unit == BYTE_UNITS[-1]:
            break
    return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"


def cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def count(value: int | None) -> str:
    return "-" if value is None else str(value)


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def note(row: Row) -> str:
    if not row.summed:
        flags = ["quarantined"] if row.quarantined else []
        if row.age is not None:
            flags.append(f"{age(row.age)} old")
        return " ".join(flags)
    flags = [f"{row.quarantined} quarantined"] if row.quarantined else []
    if row.stale:
        flags.append(f"{row.stale} stale")
    return ", ".join(flags)


@dataclass(frozen=True)
class Column:
    title: str
    width: int
    cell: Callable[[Row], str]
    right: bool = True


# The columns after the name (and, per VM, the tenant and state), in both views.
FIGURES = (
    Column("CPU", 5, lambda r: cores(r.cpu)),
    Column("VCPU", 4, lambda r: count(r.vcpus)),
    Column("MEM", 5, lambda r: human_bytes(r.memory)),
    Column("RSS", 5, lambda r: human_bytes(r.rss)),
    Column("RD/s", 5, lambda r: human_bytes(r.disk_read)),
    Column("WR/s", 5, lambda r: human_bytes(r.disk_write)),
    Column("RX/s", 5, lambda r: human_bytes(r.net_rx)),
    Column("TX/s", 5, lambda r: human_bytes(r.net_tx)),
    Column("GPU", 3, lambda r: str(len(r.gpus)) if r.gpus else "-"),
    Column("GPU%", 4, lambda r: percent(gpu_mean(r))),
    Column("VFRX/s", 6, lambda r: human_bytes(r.vf_rx)),
    Column("VFTX/s", 6, lambda r: human_bytes(r.vf_tx)),
)
NOTE = Column("NOTE", 0, note, right=False)  # width 0: the rest of the line


def _tenant_label(tenant: str, width: int) -> str:
    return (tenant or NO_TENANT)[:width]


def columns(view: View, rows: Sequence[Row], width: int) -> list[Column]:
    """The table's columns; tenant IDs in full if the row still fits `width`, else shortened."""
    fixed = sum(c.width + 1 for c in FIGURES)
    if view.tenants:
        name_width = max([len(r.name) for r in rows] + [len("TENANT")])
        if fixed + name_width > width:
            name_width = max(SHORT_TENANT, len("TENANT"))
        name = Column("TENANT", name_width, lambda r: r.name[:name_width], right=False)
        return [name, Column("VMS", 4, lambda r: str(r.vms)), *FIGURES, NOTE]
    name_width = min(max([len(r.name) for r in rows] + [len("NAME")]), FULL_TENANT)
    state = Column("STATE", 8, lambda r: r.state, right=False)
    tenant_width = FULL_TENANT
    if name_width + tenant_width + state.width + 3 + fixed > width:
        tenant_width = SHORT_TENANT
    tenant = Column("TENANT", tenant_width, lambda r: _tenant_label(r.tenant, tenant_width), False)
    name = Column("NAME", name_width, lambda r: r.name[:name_width], right=False)
    return [name, tenant, state, *FIGURES, NOTE]


def table_line(cells: Sequence[tuple[Column, str]]) -> str:
    parts = []
    for column, text in cells:
        if column.width:
            text = text[: column.width]
        parts.append(text.rjust(column.width) if column.right else text.ljust(column.width))
    return " ".join(parts).rstrip()


def table(view: View, rows: Sequence[Row], width: int) -> list[str]:
    shown = columns(view, rows, width)
    lines = [table_line([(c, c.title) for c in shown])]
    lines += [table_line([(c, c.cell(row)) for c in shown]) for row in rows]
    return lines


def source_status(source: Source) -> str:
    if source.up:
        return f"{source.name} up {age(source.last_success_age)} ago"
    since = (
        "never up" if source.last_success_age is None else f"ok {age(source.last_success_age)} ago"
    )
    error = f": {source.last_error}" if source.last_error else ""
    return f"{source.name} DOWN ({since}{error})"


def sources_line(documents: Documents | None) -> str:
    if documents is None:
        return "sources: -"
    if documents.sources is None:
        return "sources: not visible to this token"
    return "sources: " + (", ".join(map(source_status, documents.sources)) or "none")


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def title_line(url: str, now: float, view: View, documents: Documents | None) -> str:
    order = "ascending" if (view.sort == "name") != view.reverse else "descending"
    parts = [f"hostcollector top  {url}  {clock(now)}"]
    if documents is not None:
        tenants = {vm.tenant for vm in documents.vms if vm.tenant}
        parts.append(
            f"{len(documents.vms)} VMs  {len(tenants)} tenants  "
            f"{documents.gpus} GPUs  {len(documents.vfs)} VFs"
        )
    parts.append(f"sort: {view.sort} {order}  view: {'tenants' if view.tenants else 'VMs'}")
    return "  ".join(parts)


def frame(
    history: History,
    view: View,
    width: int,
    *,
    url: str,
    now: float,
    error: str | None = None,
    hint: bool = False,
) -> list[str]:
    """The whole screen as lines of at most `width` characters: title, sources, the last
    fetch's error if it failed, the keys (with `hint`), a blank line, then the table (its first
    line names the columns)."""
    documents = history.latest
    lines = [title_line(url, now, view, documents), sources_line(documents)]
    if error is not None:
        shown = f" (showing data from {clock(documents.fetched_at)})" if documents else ""
        lines.append(f"error: {error}{shown}")
    if hint:
        lines.append(KEYS_HINT)
    lines.append("")
    if documents is None:
        lines.append(f"waiting for {url}")
    else:
        rows = vm_rows(history)
        if view.tenants:
            rows = tenant_rows(rows)
        lines += table(view, sort_rows(rows, view), width)
    return [line[: max(width, 0)].rstrip() for line in lines]


def frame_from(
    documents: Sequence[Documents], view: View, width: int, *, url: str, now: float
) -> list[str]:
    """The frame after fetching `documents` in turn (two: rates between them)."""
    history = History()
    for found in documents:
        history = history.advance(found)
    return frame(history, view, width, url=url, now=now)


# --- the terminal -------------------------------------------------------------------------


def _fetch_loop(
    client: Client, interval: float, results: queue.Queue[Documents | str], stop: threading.Event
) -> None:
    """In its own thread, so that keys are answered while a slow host is being read."""
    while not stop.is_set():
        started = time.monotonic()
        results.put(fetch_or_error(client))
        stop.wait(max(0.0, interval - (time.monotonic() - started)))


def _draw(screen: curses.window, lines: Sequence[str]) -> None:
    screen.erase()
    height, width = screen.getmaxyx()
    header = lines.index("") + 1 if "" in lines else -1
    for y, line in enumerate(lines[:height]):
        attribute = curses.A_REVERSE if y == header else curses.A_NORMAL
        # Writing the bottom-right cell moves the cursor past the screen: curses writes the
        # character, then reports an error.
        with contextlib.suppress(curses.error):
            screen.addnstr(y, 0, line.ljust(width) if y == header else line, width, attribute)
    screen.refresh()


@dataclass
class Live:
    """The curses loop's state: what the latest fetches brought and how it is viewed."""

    client: Client
    view: View
    history: History = field(default_factory=History)
    error: str | None = None

    def take(self, result: Documents | str) -> None:
        if isinstance(result, str):
            self.error = result  # the last good data stays on screen
        else:
            self.history = self.history.advance(result)
            self.error = None

    def lines(self, width: int) -> list[str]:
        return frame(
            self.history,
            self.view,
            width,
            url=self.client.url,
            now=time.time(),
            error=self.error,
            hint=True,
        )


def _key_name(key: int) -> str:
    return chr(key) if 0 <= key < 0x110000 else ""


def _loop(screen: curses.window, live: Live, interval: float) -> None:
    with contextlib.suppress(curses.error):  # a terminal that cannot hide the cursor
        curses.curs_set(0)
    screen.timeout(INPUT_POLL_MS)
    results: queue.Queue[Documents | str] = queue.Queue()
    stop = threading.Event()
    threading.Thread(
        target=_fetch_loop, args=(live.client, interval, results, stop), daemon=True
    ).start()
    try:
        dirty = True
        while True:
            while not results.empty():
                live.take(results.get_nowait())
                dirty = True
            if dirty:
                _draw(screen, live.lines(screen.getmaxyx()[1]))
                dirty = False
            key = screen.getch()
            if key == curses.KEY_RESIZE:
                curses.update_lines_cols()
                dirty = True
            elif key != -1:
                view = apply_key(live.view, _key_name(key))
                if view is None:
                    return
                dirty, live.view = view != live.view, view
    finally:
        stop.set()


def once(client: Client, interval: float, view: View, width: int) -> int:
    """Two fetches `interval` apart, one frame printed; 1 if the last fetch failed."""
    live = Live(client, view)
    live.take(fetch_or_error(client))
    time.sleep(interval)
    live.take(fetch_or_error(client))
    lines = frame(live.history, view, width, url=client.url, now=time.time(), error=live.error)
    print("\n".join(lines))
    return 0 if live.error is None else 1


def run(
    *,
    url: str,
    interval: float = 2.0,
    token_file: str | None = None,
    ca_file: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    sort: str = "cpu",
    tenants: bool = False,
    once_only: bool = False,
) -> int:
    """`hostcollector top`. Exit 0; 1: --once could not read the API; 2: bad options."""
    try:
        if not interval > 0:
            raise SetupError("--interval must be > 0")
        if sort not in SORTS:
            raise SetupError(f"--sort must be one of {', '.join(SORTS)}")
        client = make_client(
            url,
            token_file=token_file,
            ca_file=ca_file,
            cert=cert,
            key=key,
            timeout=max(1.0, min(5.0, interval)),
        )
    except SetupError as exc:
        print(f"hostcollector top: {exc}", file=sys.stderr)
        return 2
    view = View(sort=sort, tenants=tenants)
    if once_only:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else UNCUT_WIDTH
        return once(client, interval, view, width)
    locale.setlocale(locale.LC_ALL, "")  # curses draws non-ASCII names only under the locale
    # curses would take LINES/COLUMNS from the environment over the terminal's own size; they
    # go stale on a resize (and GNU readline exports them into every child of its process).
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C quits like q
        curses.wrapper(_loop, Live(client, view), interval)
    return 0
