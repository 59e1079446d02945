"""Property: a tenant-scoped token never sees another tenant's data, on any endpoint, with any
filter, whatever the host holds (generated VMs, VFs, passthrough GPUs and shared vGPU GPUs of
several tenants and of none). Checked over real HTTP against the real app."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostcollector.app import build_app
from hostcollector.collector import Collector, Exposition
from hostcollector.config import AuthConfig, Config
from hostcollector.model import (
    AttributedGpu,
    AttributedVF,
    AttributedVM,
    DomainStats,
    GpuStats,
    Snapshot,
    SourceStatus,
    TenantMapStatus,
    VfStats,
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


@st.composite
def hosts(draw: st.DrawFn) -> Host:
    vm_owners = draw(st.lists(owners, max_size=7))
    vms = []
    owned: dict[str, str] = {}
    for tenant in vm_owners:
        uuid, name = str(draw(st.uuids())), "vm-" + draw(hexes)
        vms.append(
            AttributedVM(
                DomainStats(
                    uuid, name, state=draw(st.sampled_from((1, 3, 5))), cpu_time_seconds=1.5
                ),
                tenant,
                "metadata" if tenant else "",
            )
        )
        owned[uuid] = owned[name] = tenant

    def assignee() -> tuple[str, str]:
        if not vms or draw(st.booleans()):
            return "", ""
        vm = draw(st.sampled_from(vms))
        return vm.stats.uuid, vm.tenant_id

    vfs = []
    for index in range(draw(st.integers(0, 5))):
        vm_uuid, tenant = assignee()
        mac, pci = draw(hexes), f"0000:{draw(hexes)}"
        vf = VfStats("pf0", index, pci, "netlink", mac=mac, receive_bytes=10)
        vfs.append(AttributedVF(vf, vm_uuid, tenant))
        owned[mac] = owned[pci] = tenant

    gpus = []
    shared: dict[str, set[str]] = {}
    for _ in range(draw(st.integers(0, 3))):
        gpu_uuid, pci = "GPU-" + draw(hexes), f"0000:{draw(hexes)}"
        if draw(st.booleans()):  # passed through whole, or free
            vm_uuid, tenant = assignee()
            gpu = GpuStats(pci, nvml_visible=False, uuid=gpu_uuid)
            gpus.append(AttributedGpu(gpu, vm_uuid, tenant))
            owned[gpu_uuid] = owned[pci] = tenant
        else:  # host-owned, shared by vGPUs
            vgpus, vgpu_vms = [], []
            for instance in range(draw(st.integers(1, 3))):
                vm_uuid, tenant = assignee()
                vgpu_uuid = "vgpu-" + draw(hexes)
                vgpus.append(VgpuStats(instance, vm_uuid or "none", "uuid", uuid=vgpu_uuid))
                vgpu_vms.append((vm_uuid, tenant))
                owned[vgpu_uuid] = tenant
            gpu = GpuStats(
                pci, nvml_visible=True, uuid=gpu_uuid, gpu_utilization_ratio=0.5, vgpus=tuple(vgpus)
            )
            gpus.append(AttributedGpu(gpu, "", "", tuple(vgpu_vms)))
            shared[gpu_uuid] = shared[pci] = {t for _, t in vgpu_vms}

    snapshot = Snapshot(
        taken_at=1.0,
        vms=tuple(vms),
        sources=(SourceStatus("libvirt", True, 1, 0, 0.1, 1.0, None),),
        tenant_map=TenantMapStatus(configured=False),
        vfs=tuple(vfs),
        gpus=tuple(gpus),
    )
    return Host(snapshot, owned, shared)


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
    for path in paths_for(host, tenant):
        reply = get(url + path, token=token_of(tenant))
        assert reply.status in (200, 403, 404), (path, reply.status)
        body = reply.body.decode()
        # What the caller put in the path may be echoed in an error ("no VM <uuid>").
        leaked = sorted(ident for ident in hidden if ident in body and ident not in path)
        assert not leaked, (path, leaked)
        if "tenant=" in path and f"tenant={tenant}" not in path:
            assert reply.status == 403, path
    # The SRE's token sees every VM, VF and GPU.
    everything = "".join(
        get(url + path, token=SRE).body.decode()
        for path in ("/api/v1/vms", "/api/v1/vfs", "/api/v1/gpus")
    )
    assert all(ident in everything for ident in host.owned)
