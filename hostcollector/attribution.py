"""Pure joins: domain records + tenant claims -> attributed VMs. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from hostcollector.model import (
    AttributedGpu,
    AttributedGpuInstance,
    AttributedPciDevice,
    AttributedVF,
    AttributedVgpu,
    AttributedVM,
    DomainStats,
    GpuStats,
    PciDevice,
    TenantClaim,
    VfStats,
    VmFreshness,
)


def attribute_vms(
    domains: Iterable[DomainStats],
    claims_by_origin: Mapping[str, Mapping[str, TenantClaim | None]],
    order: Sequence[str],
    info_labels: Sequence[str],
    freshness: Mapping[str, VmFreshness] | None = None,
    now: float | None = None,
) -> tuple[AttributedVM, ...]:
    """Give every domain the tenant of the first origin in `order` that claims it.

    `claims_by_origin` maps an origin of tenancy ("metadata", "mapping_file") to its claims by VM
    UUID. Only labels named in `info_labels` survive, and every VM gets all of them (empty when
    unknown) so hostcollector_vm_info has one label set. `freshness` (by UUID) adds each VM's
    sample time, its age at `now`, and its quarantine and job flags.
    """
    allowed = tuple(info_labels)
    attributed = []
    for domain in domains:
        claim = None
        for origin in order:
            claim = claims_by_origin.get(origin, {}).get(domain.uuid)
            if claim is not None:
                break
        found = dict(claim.labels) if claim else {}
        labels = tuple((label, found.get(label, "")) for label in allowed)
        fresh = freshness.get(domain.uuid) if freshness else None
        sampled_at = fresh.sampled_at if fresh else None
        attributed.append(
            AttributedVM(
                stats=domain,
                tenant_id=claim.tenant_id if claim else "",
                tenant_source=claim.origin if claim else "",
                info_labels=labels,
                sampled_at=sampled_at,
                sample_age_seconds=(
                    max(0.0, now - sampled_at) if now is not None and sampled_at else None
                ),
                quarantined=fresh.quarantined if fresh else False,
                job_active=fresh.job_active if fresh else None,
                stats_path="kernel" if fresh and fresh.kernel_read_at is not None else "libvirt",
            )
        )
    return tuple(attributed)


def attribute_vfs(
    vfs: Iterable[VfStats],
    pci_devices: Mapping[str, Sequence[str]],
    vms: Iterable[AttributedVM],
) -> tuple[AttributedVF, ...]:
    """A VF belongs to the VM whose domain has its PCI address as a hostdev, and so to that
    VM's tenant. A VF no domain holds is exported with both empty."""
    vm_by_pci = {pci: uuid for uuid, addresses in pci_devices.items() for pci in addresses}
    tenant_by_vm = {vm.stats.uuid: vm.tenant_id for vm in vms}
    attributed = []
    for vf in vfs:
        uuid = vm_by_pci.get(vf.pci_address or "", "")
        attributed.append(AttributedVF(vf, uuid, tenant_by_vm.get(uuid, "")))
    return tuple(attributed)


def attribute_pci_devices(
    pci_devices: Mapping[str, Sequence[str]],
    health: Mapping[str, PciDevice],
    vms: Iterable[AttributedVM],
) -> tuple[AttributedPciDevice, ...]:
    """Every PCI hostdev of every domain, with that domain's tenant. A device two domains
    define (only one can run with it) is listed under each. An address sysfs was not read for
    is reported absent rather than dropped."""
    tenant_by_vm = {vm.stats.uuid: vm.tenant_id for vm in vms}
    attributed = []
    for uuid, addresses in pci_devices.items():
        if uuid not in tenant_by_vm:
            continue  # a domain served no longer (its values went past max_sample_age_seconds)
        for address in addresses:
            device = health.get(address) or PciDevice(pci_address=address, present=False)
            attributed.append(AttributedPciDevice(device, uuid, tenant_by_vm[uuid]))
    return tuple(attributed)


def attribute_gpus(
    gpus: Iterable[GpuStats],
    pci_devices: Mapping[str, Sequence[str]],
    mdev_devices: Mapping[str, Sequence[str]],
    vms: Iterable[AttributedVM],
    driver_version: str | None = None,
) -> tuple[AttributedGpu, ...]:
    """A GPU passed through whole belongs to the domain holding its PCI address. A vGPU belongs
    to the domain holding its mdev, else to the VM the host driver names, by domain UUID or by
    domain name (an SR-IOV vGPU's VF is the domain's hostdev, but NVML does not name the VF)."""
    vm_by_pci = {pci: uuid for uuid, addresses in pci_devices.items() for pci in addresses}
    vm_by_mdev = {mdev: uuid for uuid, mdevs in mdev_devices.items() for mdev in mdevs}
    tenant_by_vm = {vm.stats.uuid: vm.tenant_id for vm in vms}
    vm_by_name = {vm.stats.name: vm.stats.uuid for vm in vms}
    attributed = []
    for gpu in gpus:
        owner = vm_by_pci.get(gpu.pci_address, "")
        vgpu_vms = []
        for vgpu in gpu.vgpus:
            uuid = (
                vm_by_mdev.get(vgpu.mdev_uuid or "")
                or (vgpu.vm_id.lower() if vgpu.vm_id_type == "uuid" else vm_by_name.get(vgpu.vm_id))
                or ""
            )
            if uuid not in tenant_by_vm:
                uuid = ""  # the driver names a VM this host's libvirt does not know
            vgpu_vms.append((uuid, tenant_by_vm.get(uuid, "")))
        attributed.append(
            AttributedGpu(
                gpu,
                owner,
                tenant_by_vm.get(owner, ""),
                tuple(vgpu_vms),
                (driver_version or "") if gpu.nvml_visible else "",
            )
        )
    return tuple(attributed)


def attributed_gpu_instances(a: AttributedGpu) -> list[AttributedGpuInstance]:
    """The GPU's MIG GPU instances with GPM metrics, each with the VM and tenant of the
    MIG-backed vGPU on it (a vGPU's gpu_instance_id), or none ("") where no vGPU is on it."""
    owners = {
        v.gpu_instance_id: owner
        for v, owner in zip(a.gpu.vgpus, a.vgpu_vms, strict=True)
        if v.gpu_instance_id is not None
    }
    return [
        AttributedGpuInstance(i, a.gpu.uuid, *owners.get(i.gpu_instance_id, ("", "")))
        for i in a.gpu.gpm_instances
    ]


def attributed_vgpus(a: AttributedGpu) -> list[AttributedVgpu]:
    """The GPU's vGPUs, each with the VM and tenant it belongs to."""
    return [
        AttributedVgpu(v, a.gpu.uuid, vm, tenant)
        for v, (vm, tenant) in zip(a.gpu.vgpus, a.vgpu_vms, strict=True)
    ]
