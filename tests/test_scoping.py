"""Property: a tenant-scoped token never sees another tenant's data, on any endpoint, with any
filter, whatever the host holds. The host is generated from the entity kinds' declarations
(hostcollector/metrics.py KINDS): every Snapshot field a kind reads is filled with records built
from their dataclass types, each string a unique identifier recorded with its owner, so a new kind
is generated and checked here without editing this file. The owner is read from the records
themselves (`tenant_id`; a record with a `vm_uuid` is assigned to a VM and is that VM's tenant's),
never from the kinds' own owner rules: a kind that declares its owner wrongly leaks here. Checked
per kind on the declarations' items, and over real HTTP against the real app."""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from hostcollector.app import build_app
from hostcollector.collector import Collector, Exposition
from hostcollector.config import AuthConfig, Config
from hostcollector.kinds import items_of
from hostcollector.metrics import KINDS
from hostcollector.model import (
    AttributedGpu,
    AttributedVM,
    GpuStats,
    Snapshot,
    SourceStatus,
    TenantMapStatus,
    VgpuStats,
)
from tests.served import get, serve

TENANTS = ("t-alpha", "t-bravo", "t-charlie")
SRE = "token-for-the-sre"


def token_of(tenant: str) -> str:
    return f"token-for-{tenant}"


@dataclass
class Host:
    snapshot: Snapshot
    # identifier -> owner tenant ("" for nobody's); every identifier is unique random hex
    owned: dict[str, str] = field(default_factory=dict)
    # a shared GPU's identifiers -> the tenants with a vGPU on it
    shared: dict[str, set[str]] = field(default_factory=dict)


owners = st.sampled_from((*TENANTS, ""))
hexes = st.uuids().map(lambda u: u.hex)


class Builder:
    """Fills dataclasses from their type hints: each string a fresh identifier recorded as its
    record's owner's, numbers small, nested records and tuples of records built alike."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.owned: dict[str, str] = {}
        self.shared: dict[str, set[str]] = {}
        self.vms: list[AttributedVM] = []

    def ident(self, owner: str) -> str:
        value = "i" + self.draw(hexes)
        self.owned[value] = owner
        return value

    def record(self, cls: type, owner: str, **given: Any) -> Any:
        special = SPECIAL.get(cls)
        if special is not None and not given:
            return special(self, owner)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = dict(given)
        for f in dataclasses.fields(cls):
            if f.name in values:
                continue
            if f.name == "tenant_id":
                values[f.name] = owner
            elif f.name == "uuid" and cls is not AttributedVM and hints[f.name] is str:
                values[f.name] = self.ident(owner)
            else:
                values[f.name] = self.value(hints[f.name], owner, f)
        return cls(**values)

    def value(self, hint: Any, owner: str, f: dataclasses.Field[Any]) -> Any:
        args = typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(a for a in args if a is not type(None))  # always a value: more to leak
            args = typing.get_args(hint)
        if hint is str:
            return self.ident(owner)
        if hint is bool:
            return self.draw(st.booleans())
        if hint in (int, float):
            return hint(self.draw(st.integers(0, 3)))
        if dataclasses.is_dataclass(hint):
            return self.record(typing.cast(type, hint), owner)
        if (
            typing.get_origin(hint) is tuple
            and args[1:] == (Ellipsis,)
            and dataclasses.is_dataclass(args[0])
        ):
            count = self.draw(st.integers(0, 2))
            return tuple(self.record(typing.cast(type, args[0]), owner) for _ in range(count))
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        raise TypeError(f"cannot build {f.name}: {hint}")

    def assigned(self, cls: type) -> Any:
        """A record with a vm_uuid: assigned to a VM (its tenant's) or to none (the host's)."""
        if not self.vms or self.draw(st.booleans()):
            return self.record(cls, "", vm_uuid="", tenant_id="")
        vm = self.draw(st.sampled_from(self.vms))
        return self.record(cls, vm.tenant_id, vm_uuid=vm.stats.uuid, tenant_id=vm.tenant_id)


def vm_record(b: Builder, owner: str) -> AttributedVM:
    stats = b.record(typing.cast(type, typing.get_type_hints(AttributedVM)["stats"]), owner)
    return AttributedVM(stats, owner, "metadata" if owner else "")


def gpu_record(b: Builder, _owner: str) -> AttributedGpu:
    """Passed through whole (or free), or host-owned and shared by vGPUs of several tenants:
    the one record whose parts have owners of their own."""
    if b.draw(st.booleans()):
        gpu = b.record(GpuStats, "", vgpus=())
        vm = b.draw(st.sampled_from(b.vms)) if b.vms and b.draw(st.booleans()) else None
        owner = vm.tenant_id if vm else ""
        for ident, was in list(b.owned.items()):
            if was == "" and ident in (gpu.uuid, gpu.pci_address):
                b.owned[ident] = owner
        gpu = b.record(GpuStats, owner, vgpus=())
        return AttributedGpu(gpu, vm.stats.uuid if vm else "", owner)
    vgpus, vgpu_vms = [], []
    for _ in range(b.draw(st.integers(1, 3))):
        vm = b.draw(st.sampled_from(b.vms)) if b.vms and b.draw(st.booleans()) else None
        tenant = vm.tenant_id if vm else ""
        vgpus.append(b.record(VgpuStats, tenant, vm_id=vm.stats.uuid if vm else "none"))
        vgpu_vms.append((vm.stats.uuid if vm else "", tenant))
    gpu = b.record(GpuStats, "", vgpus=tuple(vgpus), nvml_visible=True)
    for ident in (gpu.uuid, gpu.pci_address):  # what a vGPU's owner sees of the GPU
        del b.owned[ident]
        b.shared[ident] = {t for _, t in vgpu_vms}
    return AttributedGpu(gpu, "", "", tuple(vgpu_vms))


SPECIAL: dict[type, Any] = {AttributedVM: vm_record, AttributedGpu: gpu_record}


@st.composite
def hosts(draw: st.DrawFn) -> Host:
    b = Builder(draw)
    hints = typing.get_type_hints(Snapshot)
    fields_read = [k.snapshot_field for k in KINDS if k.snapshot_field is not None]
    records: dict[str, tuple[Any, ...]] = {}
    # VMs first: records with a vm_uuid are assigned to them.
    for name in sorted(fields_read, key=lambda n: n != "vms"):
        (element,) = {a for a in typing.get_args(hints[name]) if a is not Ellipsis}
        made = []
        for _ in range(draw(st.integers(0, 4))):
            if element is AttributedVM:
                made.append(vm_record(b, draw(owners)))
                b.vms.append(made[-1])
            elif (
                "vm_uuid" in {f.name for f in dataclasses.fields(element)}
                and element not in SPECIAL
            ):
                made.append(b.assigned(element))
            elif element in SPECIAL:
                made.append(SPECIAL[element](b, ""))
            else:  # the host's own (a PF)
                made.append(b.record(element, ""))
        records[name] = tuple(made)
    snapshot = Snapshot(
        taken_at=1.0,
        sources=(SourceStatus("libvirt", True, 1, 0.1, 1.0, None),),
        tenant_map=TenantMapStatus(configured=False),
        **records,
    )
    return Host(snapshot, b.owned, b.shared)


def forbidden_for(host: Host, tenant: str) -> set[str]:
    hidden = {ident for ident, owner in host.owned.items() if owner != tenant}
    hidden |= {ident for ident, users in host.shared.items() if tenant not in users}
    return hidden | {other for other in TENANTS if other != tenant}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Collector]]:
    tokens = tmp_path_factory.mktemp("auth") / "tokens.yml"
    entries = [(SRE, "all", None)] + [(token_of(t), "tenant", t) for t in TENANTS]
    tokens.write_text(
        "tokens:\n"
        + "".join(
            f"  - {{name: n{i}, sha256: {hashlib.sha256(tok.encode()).hexdigest()}, "
            f"scope: {scope}" + (f", tenant: {tenant}}}\n" if tenant else "}\n")
            for i, (tok, scope, tenant) in enumerate(entries)
        )
    )
    config = Config(auth=AuthConfig(str(Path(tokens))))
    collector = Collector(config, sources={})
    with serve(build_app(config, collector)) as url:
        yield url, collector


def paths_for(host: Host, tenant: str) -> list[str]:
    paths = ["/metrics", "/", "/api/v1", "/api/v1/vms", "/api/v1/gpus", "/api/v1/vfs"]
    paths += ["/api/v1/tenants", "/api/v1/sources", "/api/v1/vms?state=running"]
    for other in (*TENANTS, ""):
        for kind in ("vms", "gpus", "vfs"):
            paths.append(f"/api/v1/{kind}?tenant={other}")
        if other:
            paths.append(f"/api/v1/tenants/{other}")
    paths += [f"/api/v1/vms/{vm.stats.uuid}" for vm in host.snapshot.vms]
    return paths


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(host=hosts(), tenant=st.sampled_from(TENANTS))
def test_a_tenant_token_never_sees_another_tenants_data(
    server: tuple[str, Collector], host: Host, tenant: str
) -> None:
    url, collector = server
    collector.exposition = Exposition(host.snapshot)
    hidden = forbidden_for(host, tenant)
    for kind in KINDS:
        for item in items_of(kind, host.snapshot, tenant):
            leaked = sorted(ident for ident in hidden if ident in item.labels)
            assert not leaked, (kind.name, item.labels, leaked)
    for path in paths_for(host, tenant):
        reply = get(url + path, token=token_of(tenant))
        assert reply.status in (200, 403, 404), (path, reply.status)
        body = reply.body.decode()
        # What the caller put in the path may be echoed in an error ("no VM <uuid>").
        leaked = sorted(ident for ident in hidden if ident in body and ident not in path)
        assert not leaked, (path, leaked)
        if "tenant=" in path and f"tenant={tenant}" not in path:
            assert reply.status == 403, path
    # The SRE's token sees every item of every kind.
    everything = get(url + "/metrics", token=SRE).body.decode()
    for kind in KINDS:
        assert all(item.labels in everything for item in items_of(kind, host.snapshot)), kind.name


def test_the_generator_makes_every_kind_the_declarations_name() -> None:
    """Else a kind would go unchecked: each must have items in some generated host."""
    seen = find(
        hosts(),
        lambda host: all(items_of(kind, host.snapshot) for kind in KINDS),
        settings=settings(max_examples=2000, database=None),
    )
    assert all(items_of(kind, seen.snapshot) for kind in KINDS)
