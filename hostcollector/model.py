"""Records that flow from sources to renderers, in base units (seconds, bytes).

Imports nothing from the package but family.py (the family a self-metric sample names): sources
build these, attribution joins them, renderers read them.
A field is None when the source did not report it (not supported, or not collected), which the
renderers turn into an absent series, never a zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hostcollector.family import Sample


@dataclass(frozen=True, slots=True)
class VcpuStats:
    index: int
    state: int | None = None
    time_seconds: float | None = None
    wait_seconds: float | None = None
    delay_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class MemoryStats:
    current_bytes: int | None = None
    maximum_bytes: int | None = None
    rss_bytes: int | None = None
    # Guest-side fields: only with <memballoon><stats period/> and a balloon driver in the guest.
    usable_bytes: int | None = None
    available_bytes: int | None = None
    unused_bytes: int | None = None
    disk_caches_bytes: int | None = None
    swap_in_bytes: int | None = None
    swap_out_bytes: int | None = None
    major_faults: int | None = None
    minor_faults: int | None = None
    guest_stats_timestamp_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class BlockStats:
    device: str
    path: str | None = None
    read_requests: int | None = None
    read_bytes: int | None = None
    read_time_seconds: float | None = None
    write_requests: int | None = None
    write_bytes: int | None = None
    write_time_seconds: float | None = None
    flush_requests: int | None = None
    flush_time_seconds: float | None = None
    capacity_bytes: int | None = None
    allocation_bytes: int | None = None
    physical_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class InterfaceStats:
    device: str
    receive_bytes: int | None = None
    receive_packets: int | None = None
    receive_errors: int | None = None
    receive_drop: int | None = None
    transmit_bytes: int | None = None
    transmit_packets: int | None = None
    transmit_errors: int | None = None
    transmit_drop: int | None = None


@dataclass(frozen=True, slots=True)
class DomainStats:
    uuid: str
    name: str
    state: int | None = None
    state_reason: int | None = None
    cpu_time_seconds: float | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    cpu_haltpoll_success_seconds: float | None = None
    cpu_haltpoll_fail_seconds: float | None = None
    vcpu_current: int | None = None
    vcpu_maximum: int | None = None
    vcpus: tuple[VcpuStats, ...] = ()
    memory: MemoryStats = field(default_factory=MemoryStats)
    blocks: tuple[BlockStats, ...] = ()
    interfaces: tuple[InterfaceStats, ...] = ()


@dataclass(frozen=True, slots=True)
class TenantClaim:
    """What one origin of tenancy says about one VM. ("Origin", not "source": a source is a
    data source, libvirt, sriov or nvml. The label it becomes keeps its name, tenant_source.)"""

    tenant_id: str
    origin: str  # "metadata:<rule name>" or "mapping_file"
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class VmFreshness:
    """How current one VM's stats are, as the libvirt source knows it."""

    sampled_at: float | None  # Unix time the stats were read; None: never read successfully
    quarantined: bool = False  # its QEMU monitor stopped answering; retried alone on expiry
    job_active: bool | None = None  # a background job (migration, ...) runs; None: unknown
    # When the kernel last gave this VM's CPU, vCPU and NIC values (sources.libvirt.kernel_path);
    # None where libvirt served them this poll. sampled_at stays libvirt's answer.
    kernel_read_at: float | None = None


@dataclass(frozen=True, slots=True)
class AttributedVM:
    stats: DomainStats
    tenant_id: str  # "" when no source of tenancy knows the VM
    tenant_source: str  # "" when unattributed
    info_labels: tuple[tuple[str, str], ...] = ()
    sampled_at: float | None = None
    sample_age_seconds: float | None = None
    quarantined: bool = False
    job_active: bool | None = None
    stats_path: str = "libvirt"  # which path served CPU, vCPU and NIC values: kernel or libvirt


@dataclass(frozen=True, slots=True)
class LibvirtSample:
    """One poll of the libvirt source: per-domain stats and what its metadata says of tenancy."""

    domains: tuple[DomainStats, ...]
    metadata_claims: dict[str, TenantClaim | None]
    freshness: dict[str, VmFreshness]
    listed_at: float  # Unix time of the domain listing this sample is built on
    # PCI addresses of each domain's hostdevs (<hostdev type='pci'>, <interface type='hostdev'>)
    pci_devices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # mdev UUIDs of each domain's <hostdev type='mdev'> (NVIDIA vGPU on kernels < 6.8)
    mdev_devices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # What the host's sysfs says of each of those PCI addresses (pci_sysfs.py), by address
    pci_health: dict[str, PciDevice] = field(default_factory=dict)
    # What libvirt returned, when recording (`dump --raw`): per domain uuid, name, stats, metadata.
    raw: tuple[dict[str, object], ...] | None = None


@dataclass(frozen=True, slots=True)
class LibvirtHealth:
    """The libvirt source's own counters, read when a snapshot is built."""

    connects_total: int
    timeouts_by_reason: tuple[tuple[str, int], ...]
    quarantined_vms: int
    quarantines_total: int
    busy_domains_total: int
    # VMs the kernel path could not serve, asked from libvirt instead, by reason
    kernel_fallbacks_by_reason: tuple[tuple[str, int], ...] = ()
    # virDomainGetControlInfo calls: new, suspect and overrun domains only
    control_info_calls_total: int = 0


@dataclass(frozen=True, slots=True)
class VfStats:
    """One SR-IOV virtual function: its config and counters as the PF's driver reports them."""

    pf: str
    index: int
    pci_address: str | None  # from the PF's virtfnN link; None if sysfs did not say
    # Where the counters came from: "netlink", "sysfs" (netlink's list was truncated), "" (none).
    # An origin, not a data source; the name is the label's and the JSON API's.
    stats_source: str
    # The PF's link type (rtnetlink.LINK_TYPES: "ether", "infiniband"); a VF shares its PF's.
    link_type: str = ""
    mac: str | None = None  # 6 bytes on Ethernet, 20 on IPoIB (as iproute2 prints them)
    node_guid: str | None = None  # IPoIB VFs: IFLA_VF_IB_NODE_GUID, xx:xx:xx:xx:xx:xx:xx:xx
    port_guid: str | None = None  # IFLA_VF_IB_PORT_GUID
    vlan: int | None = None
    qos: int | None = None
    spoof_check: bool | None = None
    trust: bool | None = None
    link_state: str | None = None  # auto, enable, disable
    min_tx_rate_mbps: int | None = None
    max_tx_rate_mbps: int | None = None
    receive_packets: int | None = None
    transmit_packets: int | None = None
    receive_bytes: int | None = None
    transmit_bytes: int | None = None
    receive_broadcast: int | None = None
    receive_multicast: int | None = None
    receive_drop: int | None = None  # kernels before 4.20 have no VF drop counters
    transmit_drop: int | None = None


@dataclass(frozen=True, slots=True)
class PfStats:
    name: str
    pci_address: str
    numvfs: int  # sriov_numvfs
    vfs_reported: int  # VFs in netlink's IFLA_VFINFO_LIST
    truncated: bool  # the kernel cut the VF list (netlink attributes are 16-bit long)
    receive_bytes: int | None = None
    receive_packets: int | None = None
    transmit_bytes: int | None = None
    transmit_packets: int | None = None


@dataclass(frozen=True, slots=True)
class SriovSample:
    pfs: tuple[PfStats, ...]
    vfs: tuple[VfStats, ...]
    # What the kernel returned, when recording (`dump --raw`): per PF its sysfs facts and the
    # RTM_NEWLINK message bytes, base64.
    raw: tuple[dict[str, object], ...] | None = None


@dataclass(frozen=True, slots=True)
class AttributedVF:
    vf: VfStats
    vm_uuid: str  # "" when no domain has the VF's PCI address as a hostdev
    tenant_id: str


@dataclass(frozen=True, slots=True)
class VgpuStats:
    """One NVIDIA vGPU instance on a host-owned GPU (mdev, SR-IOV VF, or MIG-backed)."""

    instance_id: int
    vm_id: str  # what the host driver says the VM is: a domain UUID or a domain name
    vm_id_type: str  # "uuid" or "domain"
    uuid: str | None = None
    mdev_uuid: str | None = None
    # nvmlVgpuInstanceGetGpuPciId: the vGPU's address as the guest sees it, once its driver runs
    guest_pci_address: str | None = None
    type_name: str | None = None
    gpu_instance_id: int | None = None  # MIG-backed vGPU: its GPU instance
    fb_usage_bytes: int | None = None
    licensed: bool | None = None
    sm_utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    encoder_utilization_ratio: float | None = None
    decoder_utilization_ratio: float | None = None
    encoder_sessions: int | None = None
    encoder_fps: int | None = None
    encoder_latency_seconds: float | None = None
    fbc_sessions: int | None = None
    fbc_fps: int | None = None
    fbc_latency_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class PcieHealth:
    """A PCI function as sysfs sees it, whoever drives it."""

    pci_address: str
    driver: str | None  # nvidia, vfio-pci, ...
    physfn: str | None  # set for an SR-IOV VF: its PF's address
    aer_correctable: int | None = None
    aer_nonfatal: int | None = None
    aer_fatal: int | None = None
    link_speed_current_gts: float | None = None
    link_speed_max_gts: float | None = None
    link_width_current: int | None = None
    link_width_max: int | None = None
    power_state: str | None = None  # D0, D3hot, ...


@dataclass(frozen=True, slots=True)
class PciDevice:
    """A PCI function a domain holds as a hostdev, whatever its class, as the host's sysfs sees
    it: its own PCIe health and that of the port above it (its link partner, where AER errors
    the endpoint caused may be counted instead)."""

    pci_address: str
    present: bool  # False: the domain names an address the host's sysfs does not have
    vendor: str | None = None  # "0x15b3", as sysfs writes it
    device: str | None = None
    pci_class: str | None = None  # "0x010802": class, subclass, programming interface
    health: PcieHealth | None = None
    upstream: PcieHealth | None = None  # None: on the root complex, or not resolvable


@dataclass(frozen=True, slots=True)
class AttributedPciDevice:
    device: PciDevice
    vm_uuid: str  # the domain holding it as a hostdev
    tenant_id: str


@dataclass(frozen=True, slots=True)
class GpmMetrics:
    """GPM metrics over the poll interval (nvml_gpm.METRICS); None: NVML did not answer it."""

    sm_active: float | None = None  # ratios 0-1
    sm_occupancy: float | None = None
    tensor_active: float | None = None
    dram_bandwidth_utilization: float | None = None
    fp64_active: float | None = None
    fp32_active: float | None = None
    fp16_active: float | None = None
    pcie_transmit: float | None = None  # bytes per second
    pcie_receive: float | None = None
    nvlink_transmit: float | None = None
    nvlink_receive: float | None = None


@dataclass(frozen=True, slots=True)
class GpmInstance:
    """GPM metrics of one MIG GPU instance over the poll interval (nvmlGpmMigSampleGet)."""

    gpu_instance_id: int
    metrics: GpmMetrics


@dataclass(frozen=True, slots=True)
class FabricInfo:
    """nvmlDeviceGetGpuFabricInfoV (nvmlGpuFabricInfo_v3_t): the GPU in the NVSwitch fabric."""

    state: int  # NVML_GPU_FABRIC_STATE_*: 1 not started, 2 in progress, 3 completed
    status: int  # an nvmlReturn_t, meaningful once completed: 0 success
    clique_id: int
    health_mask: int  # NVML_GPU_FABRIC_HEALTH_MASK_* fields
    health_summary: int | None  # 1 healthy, 2 unhealthy, 3 limited capacity; None before v3


@dataclass(frozen=True, slots=True)
class ConfCompute:
    """nvmlSystemGetConfComputeState and nvmlSystemGetConfComputeGpusReadyState."""

    environment: int  # NVML_CC_SYSTEM_ENVIRONMENT_*: 0 unavailable, 1 simulation, 2 production
    feature: int  # NVML_CC_SYSTEM_FEATURE_*: 0 disabled, 1 enabled, 2 bare-metal secure AI
    devtools_mode: int  # 0 off, 1 on
    gpus_ready: bool | None  # the GPUs accept work; None where NVML does not say


@dataclass(frozen=True, slots=True)
class GpuStats:
    """One GPU function. `nvml_visible` False: bound to vfio-pci (passed through whole) or
    otherwise not the host driver's; only its PCIe side (sysfs) is known, never utilization."""

    pci_address: str
    nvml_visible: bool
    uuid: str = ""
    name: str | None = None
    lost: bool = False  # NVML_ERROR_GPU_IS_LOST: fell off the bus
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    power_watts: float | None = None
    energy_joules: float | None = None
    temperature_celsius: int | None = None
    sm_clock_hz: int | None = None
    memory_clock_hz: int | None = None
    clocks_event_reasons: int | None = None  # bitmask of nvmlClocksEventReason*
    gpu_utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    encoder_utilization_ratio: float | None = None
    decoder_utilization_ratio: float | None = None
    ecc_errors: tuple[
        tuple[str, str, int], ...
    ] = ()  # (corrected|uncorrected, volatile|aggregate, n)
    remapped_rows: tuple[
        tuple[str, int], ...
    ] = ()  # (correctable|uncorrectable|pending|failure, n)
    pcie_replays: int | None = None
    pcie_transmit_bytes_per_second: int | None = None
    pcie_receive_bytes_per_second: int | None = None
    nvlink_errors: tuple[tuple[int, str, int], ...] = ()  # (link, counter, n)
    xid_errors: tuple[tuple[int, int], ...] = ()  # (xid, events since the collector started)
    persistence_mode: bool | None = None
    compute_mode: int | None = None
    mig_mode: bool | None = None
    vgpus: tuple[VgpuStats, ...] = ()
    vgpu_scheduler_policy: int | None = None  # 1 best effort, 2 equal share, 3 fixed share
    vgpu_scheduler_arr_mode: int | None = None  # adaptive round robin: 1 off, 2 on
    pcie: PcieHealth | None = None  # from sysfs: the only view of a GPU passed through whole
    # From the one nvmlDeviceGetFieldValues call of the poll (nvml_fields.py):
    retired_pages: tuple[tuple[str, int], ...] = ()  # (single_bit|double_bit, pages)
    retired_pages_pending: bool | None = None
    pcie_replay_rollovers: int | None = None
    pcie_l0_to_recovery: int | None = None
    power_average_watts: float | None = None
    power_instant_watts: float | None = None
    nvlink_data_bytes: tuple[tuple[int, str, int], ...] = ()  # (link, transmit|receive, bytes)
    # NVML's answers other than NOT_SUPPORTED, counted since the collector started.
    nvml_errors: tuple[tuple[str, str, int], ...] = ()  # (field or call, error, count)
    nvml_duration_seconds: float | None = None  # NVML's time for this GPU in this poll
    gpm_supported: bool | None = None  # None: NVML could not say (or not NVML's GPU)
    gpm: GpmMetrics | None = None  # the whole GPU over the poll interval
    gpm_instances: tuple[GpmInstance, ...] = ()
    fabric: FabricInfo | None = None


@dataclass(frozen=True, slots=True)
class NvmlSample:
    nvml_available: bool  # False: no library, no driver, or init failed (see the source status)
    driver_version: str | None
    gpus: tuple[GpuStats, ...]
    raw: dict[str, object] | None = None
    conf_compute: ConfCompute | None = None


@dataclass(frozen=True, slots=True)
class AttributedGpu:
    gpu: GpuStats
    vm_uuid: str  # a GPU passed through whole to a domain; "" for host-owned or free GPUs
    tenant_id: str
    vgpu_vms: tuple[tuple[str, str], ...] = ()  # per vGPU (same order): (vm_uuid, tenant_id)
    driver_version: str = ""  # the host driver's, for a GPU its NVML sees


@dataclass(frozen=True, slots=True)
class AttributedVgpu:
    """One vGPU with the VM and tenant it belongs to (from AttributedGpu.vgpu_vms)."""

    vgpu: VgpuStats
    gpu_uuid: str
    vm_uuid: str
    tenant_id: str


@dataclass(frozen=True, slots=True)
class AttributedGpuInstance:
    """One MIG GPU instance's GPM metrics with the VM and tenant of the vGPU on it ("" if none)."""

    instance: GpmInstance
    gpu_uuid: str
    vm_uuid: str
    tenant_id: str


@dataclass(frozen=True, slots=True)
class SourceStatus:
    name: str
    up: bool
    polls_total: int
    last_duration_seconds: float | None
    last_success_timestamp_seconds: float | None
    last_error: str | None
    errors_by_reason: tuple[tuple[str, int], ...] = ()

    @property
    def errors_total(self) -> int:
        return sum(count for _, count in self.errors_by_reason)


@dataclass(frozen=True, slots=True)
class TenantMapStatus:
    configured: bool
    entries: int = 0
    loaded: bool = False
    reloads_total: int = 0
    errors_total: int = 0
    last_reload_success_timestamp_seconds: float | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteWriteStatus:
    """One remote-write endpoint's queue and delivery counters."""

    endpoint: str
    queue_batches: int
    queue_samples: int
    queue_bytes: int
    oldest_sample_timestamp_seconds: float | None  # None: the queue is empty
    samples_sent_total: int
    samples_failed_total: int  # in requests that failed and will be retried
    samples_dropped_by_reason: tuple[tuple[str, int], ...]  # never delivered
    last_success_timestamp_seconds: float | None
    last_error: str | None
    # Entries of the queue directory found at start and not queued (corrupt, old_format,
    # not_a_file, foreign_name): files, not samples (a damaged header's count means nothing).
    queue_files_dropped_by_reason: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one exposition shows; built after each poll, read by every renderer."""

    taken_at: float
    vms: tuple[AttributedVM, ...]
    sources: tuple[SourceStatus, ...]
    tenant_map: TenantMapStatus
    build: tuple[tuple[str, str], ...] = ()
    libvirt: LibvirtHealth | None = None
    pfs: tuple[PfStats, ...] = ()
    vfs: tuple[AttributedVF, ...] = ()
    gpus: tuple[AttributedGpu, ...] = ()
    pci_devices: tuple[AttributedPciDevice, ...] = ()  # every PCI hostdev of every domain
    nvml_available: bool | None = None  # None: the nvml source is off or has not polled yet
    nvml_driver_version: str | None = None
    nvml_conf_compute: ConfCompute | None = None
    remote_write: tuple[RemoteWriteStatus, ...] = ()
    # Every registered owner's self-metrics (selfmetrics.py), collected with this snapshot.
    self_series: tuple[Sample, ...] = ()
