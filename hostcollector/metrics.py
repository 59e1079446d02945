"""Every metric hostcollector exports, declared once: name, type, help, labels, and how to read
its value from a record. The renderer (exposition.py), the README's metric table
(`hostcollector metrics-table`) and the tests all read these tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hostcollector.attribution import attributed_gpu_instances, attributed_vgpus
from hostcollector.family import Family, MetricType, Number
from hostcollector.kinds import EntityKind
from hostcollector.label_text import escape_label_value, label_text
from hostcollector.model import (
    AttributedGpu,
    AttributedPciDevice,
    AttributedVF,
    AttributedVgpu,
    AttributedVM,
    Snapshot,
)
from hostcollector.pci_classes import class_name

PREFIX = "hostcollector_"


def _vm(name: str, kind: MetricType, help: str, value: Callable[[Any], Number | None]) -> Family:
    return Family(PREFIX + name, kind, help, ("vm_uuid", "tenant_id"), value)


def _dev(
    entity: str, name: str, kind: MetricType, help: str, value: Callable[[Any], Number | None]
) -> Family:
    return Family(PREFIX + name, kind, help, ("vm_uuid", "tenant_id", entity), value)


# Per VM; value() receives the AttributedVM.
VM_FAMILIES = (
    _vm(
        "vm_state",
        "gauge",
        "Domain state code (state.state): 0 nostate, 1 running, 2 blocked, 3 paused, 4 shutdown, 5 shutoff, 6 crashed, 7 pmsuspended.",
        lambda vm: vm.stats.state,
    ),
    _vm(
        "vm_state_reason",
        "gauge",
        "Reason code of the current state (state.reason), per virDomain<State>Reason.",
        lambda vm: vm.stats.state_reason,
    ),
    _vm(
        "vm_cpu_time_seconds_total",
        "counter",
        "CPU time of the whole domain (cpu.time, ns -> s).",
        lambda vm: vm.stats.cpu_time_seconds,
    ),
    _vm(
        "vm_cpu_user_seconds_total",
        "counter",
        "User CPU time of the domain (cpu.user, ns -> s).",
        lambda vm: vm.stats.cpu_user_seconds,
    ),
    _vm(
        "vm_cpu_system_seconds_total",
        "counter",
        "System CPU time of the domain (cpu.system, ns -> s).",
        lambda vm: vm.stats.cpu_system_seconds,
    ),
    _vm(
        "vm_cpu_haltpoll_success_seconds_total",
        "counter",
        "Host CPU time KVM spent halt-polling the domain's idle vCPUs until an interrupt came (cpu.haltpoll.success.time, ns -> s; KVM only, 0 under TCG).",
        lambda vm: vm.stats.cpu_haltpoll_success_seconds,
    ),
    _vm(
        "vm_cpu_haltpoll_fail_seconds_total",
        "counter",
        "Host CPU time KVM spent halt-polling the domain's idle vCPUs in vain, before it let them sleep (cpu.haltpoll.fail.time, ns -> s; KVM only, 0 under TCG).",
        lambda vm: vm.stats.cpu_haltpoll_fail_seconds,
    ),
    _vm(
        "vm_vcpus_current",
        "gauge",
        "vCPUs online (vcpu.current).",
        lambda vm: vm.stats.vcpu_current,
    ),
    _vm(
        "vm_vcpus_maximum",
        "gauge",
        "vCPUs the domain may have (vcpu.maximum).",
        lambda vm: vm.stats.vcpu_maximum,
    ),
    _vm(
        "vm_memory_current_bytes",
        "gauge",
        "Memory the balloon currently gives the guest (balloon.current, KiB -> bytes).",
        lambda vm: vm.stats.memory.current_bytes,
    ),
    _vm(
        "vm_memory_maximum_bytes",
        "gauge",
        "Maximum memory of the domain (balloon.maximum, KiB -> bytes).",
        lambda vm: vm.stats.memory.maximum_bytes,
    ),
    _vm(
        "vm_memory_rss_bytes",
        "gauge",
        "Resident set size of the QEMU process, host side (balloon.rss, KiB -> bytes).",
        lambda vm: vm.stats.memory.rss_bytes,
    ),
    _vm(
        "vm_memory_usable_bytes",
        "gauge",
        "Guest-reported memory usable without swapping (balloon.usable, KiB -> bytes); needs balloon stats in the guest.",
        lambda vm: vm.stats.memory.usable_bytes,
    ),
    _vm(
        "vm_memory_available_bytes",
        "gauge",
        "Guest-reported total memory (balloon.available, KiB -> bytes); needs balloon stats in the guest.",
        lambda vm: vm.stats.memory.available_bytes,
    ),
    _vm(
        "vm_memory_unused_bytes",
        "gauge",
        "Guest-reported free memory (balloon.unused, KiB -> bytes); needs balloon stats in the guest.",
        lambda vm: vm.stats.memory.unused_bytes,
    ),
    _vm(
        "vm_memory_disk_caches_bytes",
        "gauge",
        "Guest-reported page cache that can be reclaimed (balloon.disk_caches, KiB -> bytes).",
        lambda vm: vm.stats.memory.disk_caches_bytes,
    ),
    _vm(
        "vm_memory_swap_in_bytes_total",
        "counter",
        "Guest-reported memory swapped in (balloon.swap_in, KiB -> bytes).",
        lambda vm: vm.stats.memory.swap_in_bytes,
    ),
    _vm(
        "vm_memory_swap_out_bytes_total",
        "counter",
        "Guest-reported memory swapped out (balloon.swap_out, KiB -> bytes).",
        lambda vm: vm.stats.memory.swap_out_bytes,
    ),
    _vm(
        "vm_memory_major_faults_total",
        "counter",
        "Guest-reported major page faults (balloon.major_fault).",
        lambda vm: vm.stats.memory.major_faults,
    ),
    _vm(
        "vm_memory_minor_faults_total",
        "counter",
        "Guest-reported minor page faults (balloon.minor_fault).",
        lambda vm: vm.stats.memory.minor_faults,
    ),
    _vm(
        "vm_memory_guest_stats_timestamp_seconds",
        "gauge",
        "When the guest last reported its balloon stats (balloon.last-update, Unix time).",
        lambda vm: vm.stats.memory.guest_stats_timestamp_seconds,
    ),
)

# Per VM; value() receives AttributedVM: how current the VM's values are.
VM_STATUS_FAMILIES = (
    _vm(
        "vm_sample_timestamp_seconds",
        "gauge",
        "When this VM's values were read from libvirt (Unix time). Older than the poll while the VM is quarantined or libvirtd is unreachable.",
        lambda vm: vm.sampled_at,
    ),
    _vm(
        "vm_sample_age_seconds",
        "gauge",
        "Age of this VM's values when the snapshot was built; grows while the VM is quarantined or libvirtd is unreachable, and the series go away past max_sample_age_seconds.",
        lambda vm: vm.sample_age_seconds,
    ),
    _vm(
        "vm_quarantined",
        "gauge",
        "1 while the VM's QEMU monitor does not answer and it is left out of the main path (last good values served), else 0.",
        lambda vm: int(vm.quarantined),
    ),
    _vm(
        "vm_job_active",
        "gauge",
        "1 while a background job such as a migration runs on the VM (virDomainGetControlInfo says JOB, asked once a job event or a partial answer names the VM), else 0. Use it to silence alerts.",
        lambda vm: None if vm.job_active is None else int(vm.job_active),
    ),
    Family(
        PREFIX + "vm_stats_path",
        "gauge",
        "Which path served this VM's CPU, vCPU and NIC values this poll, as its path label: kernel (cgroup, /proc, netlink; sources.libvirt.kernel_path; fresh while libvirtd does not answer) or libvirt. Always 1.",
        ("vm_uuid", "tenant_id", "path"),
        samples=lambda vm: ((f',path="{vm.stats_path}"', 1),),
    ),
)

# Per vCPU; value() receives VcpuStats.
VCPU_FAMILIES = (
    _dev(
        "vcpu",
        "vm_vcpu_state",
        "gauge",
        "vCPU state (vcpu.N.state): 0 offline, 1 running, 2 blocked.",
        lambda v: v.state,
    ),
    _dev(
        "vcpu",
        "vm_vcpu_time_seconds_total",
        "counter",
        "Time the vCPU ran (vcpu.N.time, ns -> s).",
        lambda v: v.time_seconds,
    ),
    _dev(
        "vcpu",
        "vm_vcpu_wait_seconds_total",
        "counter",
        "Time the vCPU waited for a host CPU, host scheduler wait, not guest I/O wait (vcpu.N.wait, ns -> s); 0 without schedstats.",
        lambda v: v.wait_seconds,
    ),
    _dev(
        "vcpu",
        "vm_vcpu_delay_seconds_total",
        "counter",
        "Time the vCPU was runnable but queued on the host, i.e. steal (vcpu.N.delay, ns -> s; libvirt >= 7.2).",
        lambda v: v.delay_seconds,
    ),
)

# Per disk; value() receives BlockStats.
BLOCK_FAMILIES = (
    _dev(
        "device",
        "vm_block_read_requests_total",
        "counter",
        "Read requests (block.N.rd.reqs).",
        lambda b: b.read_requests,
    ),
    _dev(
        "device",
        "vm_block_read_bytes_total",
        "counter",
        "Bytes read (block.N.rd.bytes).",
        lambda b: b.read_bytes,
    ),
    _dev(
        "device",
        "vm_block_read_time_seconds_total",
        "counter",
        "Time spent reading (block.N.rd.times, ns -> s).",
        lambda b: b.read_time_seconds,
    ),
    _dev(
        "device",
        "vm_block_write_requests_total",
        "counter",
        "Write requests (block.N.wr.reqs).",
        lambda b: b.write_requests,
    ),
    _dev(
        "device",
        "vm_block_write_bytes_total",
        "counter",
        "Bytes written (block.N.wr.bytes).",
        lambda b: b.write_bytes,
    ),
    _dev(
        "device",
        "vm_block_write_time_seconds_total",
        "counter",
        "Time spent writing (block.N.wr.times, ns -> s).",
        lambda b: b.write_time_seconds,
    ),
    _dev(
        "device",
        "vm_block_flush_requests_total",
        "counter",
        "Flush requests (block.N.fl.reqs).",
        lambda b: b.flush_requests,
    ),
    _dev(
        "device",
        "vm_block_flush_time_seconds_total",
        "counter",
        "Time spent flushing (block.N.fl.times, ns -> s).",
        lambda b: b.flush_time_seconds,
    ),
    _dev(
        "device",
        "vm_block_capacity_bytes",
        "gauge",
        "Size the guest sees (block.N.capacity).",
        lambda b: b.capacity_bytes,
    ),
    _dev(
        "device",
        "vm_block_allocation_bytes",
        "gauge",
        "Highest written offset / allocation on the host (block.N.allocation).",
        lambda b: b.allocation_bytes,
    ),
    _dev(
        "device",
        "vm_block_physical_bytes",
        "gauge",
        "Physical size of the host storage (block.N.physical).",
        lambda b: b.physical_bytes,
    ),
)

# Per tap interface; value() receives InterfaceStats. Hostdev (SR-IOV) NICs have no tap and
# never appear here.
INTERFACE_FAMILIES = (
    _dev(
        "device",
        "vm_network_receive_bytes_total",
        "counter",
        "Bytes the guest received (net.N.rx.bytes).",
        lambda n: n.receive_bytes,
    ),
    _dev(
        "device",
        "vm_network_receive_packets_total",
        "counter",
        "Packets the guest received (net.N.rx.pkts).",
        lambda n: n.receive_packets,
    ),
    _dev(
        "device",
        "vm_network_receive_errors_total",
        "counter",
        "Receive errors (net.N.rx.errs).",
        lambda n: n.receive_errors,
    ),
    _dev(
        "device",
        "vm_network_receive_drop_total",
        "counter",
        "Received packets dropped (net.N.rx.drop).",
        lambda n: n.receive_drop,
    ),
    _dev(
        "device",
        "vm_network_transmit_bytes_total",
        "counter",
        "Bytes the guest sent (net.N.tx.bytes).",
        lambda n: n.transmit_bytes,
    ),
    _dev(
        "device",
        "vm_network_transmit_packets_total",
        "counter",
        "Packets the guest sent (net.N.tx.pkts).",
        lambda n: n.transmit_packets,
    ),
    _dev(
        "device",
        "vm_network_transmit_errors_total",
        "counter",
        "Transmit errors (net.N.tx.errs).",
        lambda n: n.transmit_errors,
    ),
    _dev(
        "device",
        "vm_network_transmit_drop_total",
        "counter",
        "Transmitted packets dropped (net.N.tx.drop).",
        lambda n: n.transmit_drop,
    ),
)


def _vf(name: str, kind: MetricType, help: str, value: Callable[[Any], Number | None]) -> Family:
    # The kind's record is the AttributedVF; `value` reads its VfStats (a call more per VF).
    return Family(PREFIX + name, kind, help, VF_LABELS, lambda a: value(a.vf))


def _pf(name: str, kind: MetricType, help: str, value: Callable[[Any], Number | None]) -> Family:
    return Family(PREFIX + name, kind, help, ("pf", "pci_address"), value)


VF_LABELS = ("pf", "vf", "pci_address", "vm_uuid", "tenant_id")
MBPS = 125_000  # bytes per second in one Mbit/s

# Per SR-IOV VF; value() receives VfStats. Counters from the PF's netlink IFLA_VF_STATS (or the
# driver's sysfs stats where netlink's VF list was truncated).
VF_FAMILIES = (
    _vf(
        "vf_receive_packets_total",
        "counter",
        "Packets the VF received (IFLA_VF_STATS_RX_PACKETS).",
        lambda v: v.receive_packets,
    ),
    _vf(
        "vf_transmit_packets_total",
        "counter",
        "Packets the VF sent (IFLA_VF_STATS_TX_PACKETS).",
        lambda v: v.transmit_packets,
    ),
    _vf(
        "vf_receive_bytes_total",
        "counter",
        "Bytes the VF received (IFLA_VF_STATS_RX_BYTES).",
        lambda v: v.receive_bytes,
    ),
    _vf(
        "vf_transmit_bytes_total",
        "counter",
        "Bytes the VF sent (IFLA_VF_STATS_TX_BYTES).",
        lambda v: v.transmit_bytes,
    ),
    _vf(
        "vf_receive_broadcast_packets_total",
        "counter",
        "Broadcast packets the VF received (IFLA_VF_STATS_BROADCAST).",
        lambda v: v.receive_broadcast,
    ),
    _vf(
        "vf_receive_multicast_packets_total",
        "counter",
        "Multicast packets the VF received (IFLA_VF_STATS_MULTICAST).",
        lambda v: v.receive_multicast,
    ),
    _vf(
        "vf_receive_drop_total",
        "counter",
        "Received packets the VF dropped (IFLA_VF_STATS_RX_DROPPED; kernels >= 4.20).",
        lambda v: v.receive_drop,
    ),
    _vf(
        "vf_transmit_drop_total",
        "counter",
        "Transmitted packets the VF dropped (IFLA_VF_STATS_TX_DROPPED; kernels >= 4.20).",
        lambda v: v.transmit_drop,
    ),
    _vf(
        "vf_min_transmit_rate_bytes_per_second",
        "gauge",
        "Guaranteed transmit rate of the VF (IFLA_VF_RATE min_tx_rate, Mbit/s -> bytes/s); 0: none.",
        lambda v: None if v.min_tx_rate_mbps is None else v.min_tx_rate_mbps * MBPS,
    ),
    _vf(
        "vf_max_transmit_rate_bytes_per_second",
        "gauge",
        "Transmit rate limit of the VF (IFLA_VF_RATE max_tx_rate, Mbit/s -> bytes/s); 0: unlimited.",
        lambda v: None if v.max_tx_rate_mbps is None else v.max_tx_rate_mbps * MBPS,
    ),
)


def _flag(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def _vf_info(a: AttributedVF) -> Iterable[tuple[str, Number]]:
    vf = a.vf
    config = (
        ("mac", vf.mac or ""),
        ("vlan", "" if vf.vlan is None else str(vf.vlan)),
        ("qos", "" if vf.qos is None else str(vf.qos)),
        ("spoof_check", _flag(vf.spoof_check)),
        ("trust", _flag(vf.trust)),
        ("link_state", vf.link_state or ""),
        ("stats_source", vf.stats_source),
        ("link_type", vf.link_type),
        ("node_guid", vf.node_guid or ""),
        ("port_guid", vf.port_guid or ""),
    )
    return (("," + label_text(config), 1),)


VF_INFO = Family(
    PREFIX + "vf_info",
    "info",
    "Configuration of a VF: MAC (20 bytes on IPoIB), VLAN, QoS, spoof check, trust, link "
    "state, where its counters came from (netlink, sysfs, or none), its PF's link type (ether, "
    "infiniband), and on IPoIB its node and port GUIDs (IFLA_VF_IB_NODE_GUID/PORT_GUID; empty "
    "on Ethernet or when none is set). Always 1.",
    (
        *VF_LABELS,
        "mac",
        "vlan",
        "qos",
        "spoof_check",
        "trust",
        "link_state",
        "stats_source",
        "link_type",
        "node_guid",
        "port_guid",
    ),
    samples=_vf_info,
)
# Per PF; value() receives PfStats.
PF_FAMILIES = (
    _pf("pf_vfs", "gauge", "VFs enabled on the PF (sriov_numvfs).", lambda p: p.numvfs),
    _pf(
        "pf_vfs_reported",
        "gauge",
        "VFs the kernel listed in the PF's netlink link info.",
        lambda p: p.vfs_reported,
    ),
    _pf(
        "pf_vf_list_truncated",
        "gauge",
        "1 when netlink listed fewer VFs than sriov_numvfs (the 16-bit attribute length cuts the list above ~220 VFs); the missing VFs come from sysfs or are absent, never zero.",
        lambda p: int(p.truncated),
    ),
    _pf(
        "pf_receive_bytes_total",
        "counter",
        "Bytes the PF received, VFs' traffic included where the driver counts it (IFLA_STATS64 rx_bytes).",
        lambda p: p.receive_bytes,
    ),
    _pf(
        "pf_receive_packets_total",
        "counter",
        "Packets the PF received (IFLA_STATS64 rx_packets).",
        lambda p: p.receive_packets,
    ),
    _pf(
        "pf_transmit_bytes_total",
        "counter",
        "Bytes the PF sent (IFLA_STATS64 tx_bytes).",
        lambda p: p.transmit_bytes,
    ),
    _pf(
        "pf_transmit_packets_total",
        "counter",
        "Packets the PF sent (IFLA_STATS64 tx_packets).",
        lambda p: p.transmit_packets,
    ),
)

GPU_LABELS = ("gpu_uuid", "pci_address", "vm_uuid", "tenant_id")
VGPU_LABELS = ("gpu_uuid", "vgpu_uuid", "vm_uuid", "tenant_id")


def _gpu(name: str, kind: MetricType, help: str, value: Callable[[Any], Number | None]) -> Family:
    # The kind's record is the AttributedGpu; `value` reads its GpuStats.
    return Family(PREFIX + name, kind, help, GPU_LABELS, lambda a: value(a.gpu))


def _vgpu(name: str, kind: MetricType, help: str, value: Callable[[Any], Number | None]) -> Family:
    # The kind's record is the AttributedVgpu; `value` reads its VgpuStats.
    return Family(PREFIX + name, kind, help, VGPU_LABELS, lambda a: value(a.vgpu))


def _pcie(field: str, scale: float = 1) -> Callable[[Any], Number | None]:
    """Reads one PcieHealth field of a GpuStats (absent without a sysfs view)."""

    def value(gpu: Any) -> Number | None:
        found = getattr(gpu.pcie, field) if gpu.pcie is not None else None
        return found if found is None or scale == 1 else found * scale

    return value


def _flag_value(value: bool | None) -> int | None:
    return None if value is None else int(value)


# nvmlDeviceGetGpuFabricInfoV's fields (model.FabricInfo): name, what it is.
FABRIC_FIELDS = (
    (
        "state",
        "The GPU's registration in the NVSwitch fabric (nvmlDeviceGetGpuFabricInfoV state): 1 not started, 2 in progress, 3 completed.",
    ),
    (
        "status",
        "The fabric registration's result once completed (an nvmlReturn_t): 0 success; anything else and NVLink peer-to-peer is down.",
    ),
    (
        "clique_id",
        "The fabric clique the GPU belongs to (GPUs of one clique reach each other over NVLink).",
    ),
    (
        "health_mask",
        "The fabric health mask (NVML_GPU_FABRIC_HEALTH_MASK_*: degraded bandwidth in bits 0-1, 1 = degraded; route recovery, route unhealthy, access timeout, configuration, partition, fabric manager above).",
    ),
    (
        "health_summary",
        "The fabric health summary (v3): 1 healthy, 2 unhealthy, 3 limited capacity.",
    ),
)

# GPM metrics (nvml_gpm.METRICS' names): name, unit suffix, what it is.
GPM_METRICS = (
    ("sm_active", "ratio", "Fraction of SMs busy (SM_UTIL)"),
    ("sm_occupancy", "ratio", "Warps resident vs the theoretical maximum (SM_OCCUPANCY)"),
    (
        "tensor_active",
        "ratio",
        "Fraction of time the SMs ran any tensor operation (ANY_TENSOR_UTIL)",
    ),
    ("dram_bandwidth_utilization", "ratio", "DRAM bandwidth used vs its maximum (DRAM_BW_UTIL)"),
    ("fp64_active", "ratio", "Fraction of time the SMs ran non-tensor FP64 math (FP64_UTIL)"),
    ("fp32_active", "ratio", "Fraction of time the SMs ran non-tensor FP32 math (FP32_UTIL)"),
    ("fp16_active", "ratio", "Fraction of time the SMs ran non-tensor FP16 math (FP16_UTIL)"),
    (
        "pcie_transmit",
        "bytes_per_second",
        "PCIe traffic from the GPU (PCIE_TX_PER_SEC, MiB/s -> B/s)",
    ),
    ("pcie_receive", "bytes_per_second", "PCIe traffic to the GPU (PCIE_RX_PER_SEC, MiB/s -> B/s)"),
    ("nvlink_transmit", "bytes_per_second", "NVLink writes, all links (NVLINK_TOTAL_TX_PER_SEC)"),
    ("nvlink_receive", "bytes_per_second", "NVLink reads, all links (NVLINK_TOTAL_RX_PER_SEC)"),
)
GPM_SOURCE = "from two GPM samples across the poll interval (nvmlGpmMetricsGet NVML_GPM_METRIC_*)"


def _fabric(field: str) -> Callable[[Any], Number | None]:
    """One field of a GpuStats' fabric state (nvmlDeviceGetGpuFabricInfoV)."""

    def read(gpu: Any) -> Number | None:
        value: Number | None = getattr(gpu.fabric, field) if gpu.fabric is not None else None
        return value

    return read


def _gpm(name: str) -> Callable[[Any], Number | None]:
    """One GPM metric of a GpuStats (its `gpm`) or a GpmInstance (its `metrics`)."""

    def value(record: Any) -> Number | None:
        metrics = record.gpm if hasattr(record, "gpm") else record.metrics
        found: float | None = getattr(metrics, name) if metrics is not None else None
        return found

    return value


# Per GPU function; value() receives GpuStats. `vm_uuid`/`tenant_id` name the VM a GPU is passed
# through to whole; a host-owned GPU shares them through its vGPUs (hostcollector_vgpu_*).
GPU_FAMILIES = (
    _gpu(
        "gpu_nvml_visible",
        "gauge",
        "1 if the host's NVML reports this GPU; 0 if it cannot (bound to vfio-pci and passed through whole, or no driver): then only the PCIe series below exist, and no utilization series is ever shown as idle.",
        lambda g: int(g.nvml_visible),
    ),
    _gpu(
        "gpu_lost",
        "gauge",
        "1 when NVML says the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST).",
        lambda g: int(g.lost) if g.nvml_visible else None,
    ),
    _gpu(
        "gpu_utilization_ratio",
        "gauge",
        "Mean GPU (SM) utilization over the samples NVML took since the last poll (nvmlDeviceGetSamples GPU_UTILIZATION, % -> 0-1).",
        lambda g: g.gpu_utilization_ratio,
    ),
    _gpu(
        "gpu_memory_utilization_ratio",
        "gauge",
        "Mean memory controller utilization since the last poll (MEMORY_UTILIZATION samples, % -> 0-1).",
        lambda g: g.memory_utilization_ratio,
    ),
    _gpu(
        "gpu_encoder_utilization_ratio",
        "gauge",
        "Mean video encoder utilization since the last poll (ENC_UTILIZATION samples, % -> 0-1).",
        lambda g: g.encoder_utilization_ratio,
    ),
    _gpu(
        "gpu_decoder_utilization_ratio",
        "gauge",
        "Mean video decoder utilization since the last poll (DEC_UTILIZATION samples, % -> 0-1).",
        lambda g: g.decoder_utilization_ratio,
    ),
    _gpu(
        "gpu_memory_total_bytes",
        "gauge",
        "Framebuffer memory (nvmlDeviceGetMemoryInfo total).",
        lambda g: g.memory_total_bytes,
    ),
    _gpu(
        "gpu_memory_used_bytes",
        "gauge",
        "Framebuffer memory in use (nvmlDeviceGetMemoryInfo used).",
        lambda g: g.memory_used_bytes,
    ),
    _gpu(
        "gpu_power_watts",
        "gauge",
        "Power draw (nvmlDeviceGetPowerUsage, mW -> W).",
        lambda g: g.power_watts,
    ),
    _gpu(
        "gpu_energy_joules_total",
        "counter",
        "Energy since the driver loaded (nvmlDeviceGetTotalEnergyConsumption, mJ -> J).",
        lambda g: g.energy_joules,
    ),
    _gpu(
        "gpu_temperature_celsius",
        "gauge",
        "GPU core temperature (nvmlDeviceGetTemperature GPU).",
        lambda g: g.temperature_celsius,
    ),
    _gpu(
        "gpu_sm_clock_hertz",
        "gauge",
        "SM clock (nvmlDeviceGetClockInfo SM, MHz -> Hz).",
        lambda g: g.sm_clock_hz,
    ),
    _gpu(
        "gpu_memory_clock_hertz",
        "gauge",
        "Memory clock (nvmlDeviceGetClockInfo MEM, MHz -> Hz).",
        lambda g: g.memory_clock_hz,
    ),
    _gpu(
        "gpu_pcie_replays_total",
        "counter",
        "PCIe replays (nvmlDeviceGetPcieReplayCounter).",
        lambda g: g.pcie_replays,
    ),
    _gpu(
        "gpu_pcie_transmit_bytes_per_second",
        "gauge",
        "PCIe transmit throughput (nvmlDeviceGetPcieThroughput TX, KB/s -> bytes/s).",
        lambda g: g.pcie_transmit_bytes_per_second,
    ),
    _gpu(
        "gpu_pcie_receive_bytes_per_second",
        "gauge",
        "PCIe receive throughput (nvmlDeviceGetPcieThroughput RX, KB/s -> bytes/s).",
        lambda g: g.pcie_receive_bytes_per_second,
    ),
    _gpu(
        "gpu_persistence_mode",
        "gauge",
        "1 if persistence mode is on (without it each new NVML client pays seconds of init).",
        lambda g: _flag_value(g.persistence_mode),
    ),
    _gpu(
        "gpu_compute_mode",
        "gauge",
        "Compute mode (nvmlDeviceGetComputeMode): 0 default, 2 prohibited, 3 exclusive process.",
        lambda g: g.compute_mode,
    ),
    _gpu(
        "gpu_mig_mode",
        "gauge",
        "1 if MIG is enabled on the GPU.",
        lambda g: _flag_value(g.mig_mode),
    ),
    _gpu(
        "gpu_pcie_aer_correctable_errors_total",
        "counter",
        "PCIe AER correctable errors (sysfs aer_dev_correctable TOTAL_ERR_COR).",
        _pcie("aer_correctable"),
    ),
    _gpu(
        "gpu_pcie_aer_nonfatal_errors_total",
        "counter",
        "PCIe AER non-fatal errors (sysfs aer_dev_nonfatal TOTAL_ERR_NONFATAL).",
        _pcie("aer_nonfatal"),
    ),
    _gpu(
        "gpu_pcie_aer_fatal_errors_total",
        "counter",
        "PCIe AER fatal errors (sysfs aer_dev_fatal TOTAL_ERR_FATAL).",
        _pcie("aer_fatal"),
    ),
    _gpu(
        "gpu_pcie_link_speed_transfers_per_second",
        "gauge",
        "Current PCIe link speed (sysfs current_link_speed, GT/s -> T/s); below the maximum: a degraded link.",
        _pcie("link_speed_current_gts", 1e9),
    ),
    _gpu(
        "gpu_pcie_link_max_speed_transfers_per_second",
        "gauge",
        "Maximum PCIe link speed (sysfs max_link_speed, GT/s -> T/s).",
        _pcie("link_speed_max_gts", 1e9),
    ),
    _gpu(
        "gpu_pcie_link_width_lanes",
        "gauge",
        "Current PCIe link width (sysfs current_link_width).",
        _pcie("link_width_current"),
    ),
    _gpu(
        "gpu_pcie_link_max_width_lanes",
        "gauge",
        "Maximum PCIe link width (sysfs max_link_width).",
        _pcie("link_width_max"),
    ),
    _gpu(
        "gpu_vgpu_scheduler_policy",
        "gauge",
        "vGPU scheduler policy of a GPU hosting vGPUs (nvmlDeviceGetVgpuSchedulerState): 1 best effort, 2 equal share, 3 fixed share.",
        lambda g: g.vgpu_scheduler_policy,
    ),
    _gpu(
        "gpu_vgpu_scheduler_arr_mode",
        "gauge",
        "Adaptive round-robin mode of the vGPU scheduler: 1 disabled, 2 enabled.",
        lambda g: g.vgpu_scheduler_arr_mode,
    ),
    _gpu(
        "gpu_retired_pages_pending",
        "gauge",
        "1 if framebuffer pages wait to be retired at the next driver reload (NVML_FI_DEV_RETIRED_PENDING; pre-Ampere GPUs, Ampere and newer remap rows instead).",
        lambda g: _flag_value(g.retired_pages_pending),
    ),
    _gpu(
        "gpu_pcie_replay_rollovers_total",
        "counter",
        "Times the PCIe replay counter rolled over (NVML_FI_DEV_PCIE_REPLAY_ROLLOVER_COUNTER).",
        lambda g: g.pcie_replay_rollovers,
    ),
    _gpu(
        "gpu_pcie_l0_to_recovery_total",
        "counter",
        "Times the GPU's PCIe link left L0 for recovery (NVML_FI_DEV_PCIE_L0_TO_RECOVERY_COUNTER): a link retraining.",
        lambda g: g.pcie_l0_to_recovery,
    ),
    _gpu(
        "gpu_power_average_watts",
        "gauge",
        "Power draw averaged over 1 s (NVML_FI_DEV_POWER_AVERAGE, mW -> W; Ampere except GA100, or newer).",
        lambda g: g.power_average_watts,
    ),
    _gpu(
        "gpu_power_instant_watts",
        "gauge",
        "Instantaneous power draw (NVML_FI_DEV_POWER_INSTANT, mW -> W).",
        lambda g: g.power_instant_watts,
    ),
    _gpu(
        "gpu_nvml_duration_seconds",
        "gauge",
        "Time NVML took for this GPU in the last poll (every call but the GPM wait): the cost of watching it.",
        lambda g: g.nvml_duration_seconds,
    ),
    _gpu(
        "gpu_gpm_supported",
        "gauge",
        "1 if the GPU has GPM profiling metrics (nvmlGpmQueryDeviceSupport; Hopper and newer), 0 if not: then no hostcollector_gpu_gpm_* series exist for it.",
        lambda g: _flag_value(g.gpm_supported),
    ),
    *(
        _gpu(f"gpu_gpm_{name}_{unit}", "gauge", f"{what}, {GPM_SOURCE}.", _gpm(name))
        for name, unit, what in GPM_METRICS
    ),
    *(_gpu(f"gpu_fabric_{name}", "gauge", what, _fabric(name)) for name, what in FABRIC_FIELDS),
)


def _gpu_info(a: AttributedGpu) -> Iterable[tuple[str, Number]]:
    gpu = a.gpu
    extra = (
        ("name", gpu.name or ""),
        ("driver", (gpu.pcie.driver if gpu.pcie else None) or ""),
        ("power_state", (gpu.pcie.power_state if gpu.pcie else None) or ""),
        ("driver_version", a.driver_version),
    )
    return (("," + label_text(extra), 1),)


def _gpu_ecc(a: AttributedGpu) -> Iterable[tuple[str, Number]]:
    return ((f',error_type="{e}",counter_type="{c}"', n) for e, c, n in a.gpu.ecc_errors)


def _gpu_remapped(a: AttributedGpu) -> Iterable[tuple[str, Number]]:
    return ((f',kind="{k}"', n) for k, n in a.gpu.remapped_rows)


def _gpu_nvlink(a: AttributedGpu) -> Iterable[tuple[str, Number]]:
    return ((f',link="{k}",counter="{c}"', n) for k, c, n in a.gpu.nvlink_errors)


def _gpu_retired(a: AttributedGpu) -> Iterable[tuple[str, Number]]:
    return ((f',cause="{c}"', n) for c, n in a.gpu.retired_pages)


def _gpu_nvlink_data(a: AttributedGpu) -> Iterable[tuple[str, Number]]:
    return ((f',link="{k}",direction="{d}"', n) for k, d, n in a.gpu.nvlink_data_bytes)


def _gpu_nvml_errors(a: AttributedGpu) -> Iterable[tuple[str, Number]]:
    return ((f',call="{c}",error="{e}"', n) for c, e, n in a.gpu.nvml_errors)


def _gpu_xid(a: AttributedGpu) -> Iterable[tuple[str, Number]]:
    return ((f',xid="{x}"', n) for x, n in a.gpu.xid_errors)


# nvmlClocksEventReason* bits -> the values of hostcollector_gpu_clocks_event_active's reason.
CLOCKS_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def _gpu_clocks_event(a: AttributedGpu) -> Iterable[tuple[str, Number]]:
    reasons = a.gpu.clocks_event_reasons
    if reasons is None:
        return ()
    return ((f',reason="{r}"', int(bool(reasons & bit))) for bit, r in CLOCKS_EVENT_REASONS.items())


GPU_INFO = Family(
    PREFIX + "gpu_info",
    "info",
    "A GPU function: product name, driver binding (nvidia, vfio-pci, ...), PCI power state, and the host driver's version. Always 1.",
    (*GPU_LABELS, "name", "driver", "power_state", "driver_version"),
    samples=_gpu_info,
)
GPU_ECC = Family(
    PREFIX + "gpu_ecc_errors_total",
    "counter",
    "ECC memory errors (nvmlDeviceGetTotalEccErrors); volatile counts reset when the driver reloads, aggregate ones persist.",
    (*GPU_LABELS, "error_type", "counter_type"),
    samples=_gpu_ecc,
)
GPU_REMAPPED = Family(
    PREFIX + "gpu_remapped_rows",
    "gauge",
    "Memory rows remapped (nvmlDeviceGetRemappedRows): correctable and uncorrectable counts; pending and failure are 0/1 flags.",
    (*GPU_LABELS, "kind"),
    samples=_gpu_remapped,
)
GPU_NVLINK = Family(
    PREFIX + "gpu_nvlink_errors_total",
    "counter",
    "NVLink data-link errors per link (nvmlDeviceGetNvLinkErrorCounter: replay, recovery, crc_flit, crc_data).",
    (*GPU_LABELS, "link", "counter"),
    samples=_gpu_nvlink,
)
GPU_RETIRED_PAGES = Family(
    PREFIX + "gpu_retired_pages",
    "gauge",
    "Framebuffer pages retired, by cause (NVML_FI_DEV_RETIRED_SBE / _DBE: single_bit, double_bit ECC errors).",
    (*GPU_LABELS, "cause"),
    samples=_gpu_retired,
)
GPU_NVLINK_DATA = Family(
    PREFIX + "gpu_nvlink_data_bytes_total",
    "counter",
    "NVLink data per link and direction, protocol overhead excluded (NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX/RX, KiB -> bytes).",
    (*GPU_LABELS, "link", "direction"),
    samples=_gpu_nvlink_data,
)
GPU_NVML_ERRORS = Family(
    PREFIX + "gpu_nvml_errors_total",
    "counter",
    "NVML answers other than NOT_SUPPORTED since the collector started, by field (nvmlDeviceGetFieldValues' per-field nvmlReturn, or field_values for the whole call) and error: that series alone is missing, the others stand.",
    (*GPU_LABELS, "call", "error"),
    samples=_gpu_nvml_errors,
)
GPU_XID = Family(
    PREFIX + "gpu_xid_errors_total",
    "counter",
    "Xid critical error events seen since the collector started, by Xid (nvmlEventTypeXidCriticalError).",
    (*GPU_LABELS, "xid"),
    samples=_gpu_xid,
)
GPU_CLOCKS_EVENT = Family(
    PREFIX + "gpu_clocks_event_active",
    "gauge",
    "1 for each reason the clocks are held down now (nvmlDeviceGetCurrentClocksEventReasons: sw_power_cap, hw_slowdown, sw/hw_thermal_slowdown, ...).",
    (*GPU_LABELS, "reason"),
    samples=_gpu_clocks_event,
)

# Per vGPU instance; value() receives VgpuStats.
VGPU_FAMILIES = (
    _vgpu(
        "vgpu_framebuffer_used_bytes",
        "gauge",
        "Framebuffer the vGPU uses (nvmlVgpuInstanceGetFbUsage).",
        lambda v: v.fb_usage_bytes,
    ),
    _vgpu(
        "vgpu_licensed",
        "gauge",
        "1 if the guest's vGPU driver holds a license (nvmlVgpuInstanceGetLicenseInfo_v2).",
        lambda v: _flag_value(v.licensed),
    ),
    _vgpu(
        "vgpu_sm_utilization_ratio",
        "gauge",
        "Mean SM utilization of the vGPU since the last poll (nvmlDeviceGetVgpuUtilization, % -> 0-1).",
        lambda v: v.sm_utilization_ratio,
    ),
    _vgpu(
        "vgpu_memory_utilization_ratio",
        "gauge",
        "Mean framebuffer (memory controller) utilization of the vGPU since the last poll (% -> 0-1).",
        lambda v: v.memory_utilization_ratio,
    ),
    _vgpu(
        "vgpu_encoder_utilization_ratio",
        "gauge",
        "Mean encoder utilization of the vGPU since the last poll (% -> 0-1).",
        lambda v: v.encoder_utilization_ratio,
    ),
    _vgpu(
        "vgpu_decoder_utilization_ratio",
        "gauge",
        "Mean decoder utilization of the vGPU since the last poll (% -> 0-1).",
        lambda v: v.decoder_utilization_ratio,
    ),
    _vgpu(
        "vgpu_encoder_sessions",
        "gauge",
        "Active encoder sessions (nvmlVgpuInstanceGetEncoderStats).",
        lambda v: v.encoder_sessions,
    ),
    _vgpu(
        "vgpu_encoder_fps",
        "gauge",
        "Average encoder frames per second (nvmlVgpuInstanceGetEncoderStats).",
        lambda v: v.encoder_fps,
    ),
    _vgpu(
        "vgpu_encoder_latency_seconds",
        "gauge",
        "Average encoder latency (nvmlVgpuInstanceGetEncoderStats, us -> s).",
        lambda v: v.encoder_latency_seconds,
    ),
    _vgpu(
        "vgpu_fbc_sessions",
        "gauge",
        "Active frame buffer capture sessions (nvmlVgpuInstanceGetFBCStats).",
        lambda v: v.fbc_sessions,
    ),
    _vgpu(
        "vgpu_fbc_fps",
        "gauge",
        "Average FBC frames per second (nvmlVgpuInstanceGetFBCStats).",
        lambda v: v.fbc_fps,
    ),
    _vgpu(
        "vgpu_fbc_latency_seconds",
        "gauge",
        "Average FBC latency (nvmlVgpuInstanceGetFBCStats, us -> s).",
        lambda v: v.fbc_latency_seconds,
    ),
)


GPU_INSTANCE_LABELS = ("gpu_uuid", "gpu_instance_id", "vm_uuid", "tenant_id")

# Per MIG GPU instance with GPM; value() receives the AttributedGpuInstance's GpmInstance.
GPU_INSTANCE_FAMILIES = tuple(
    Family(
        PREFIX + f"gpu_instance_gpm_{name}_{unit}",
        "gauge",
        f"{what}, of one MIG GPU instance (nvmlGpmMigSampleGet), {GPM_SOURCE}; vm_uuid/tenant_id: its MIG-backed vGPU's.",
        GPU_INSTANCE_LABELS,
        (lambda get: lambda a: get(a.instance))(_gpm(name)),
    )
    for name, unit, what in GPM_METRICS
)


def _vgpu_info(a: AttributedVgpu) -> Iterable[tuple[str, Number]]:
    v = a.vgpu
    extra = (
        ("vgpu_instance", str(v.instance_id)),
        ("type", v.type_name or ""),
        ("mdev_uuid", v.mdev_uuid or ""),
        ("guest_pci_address", v.guest_pci_address or ""),
        ("gpu_instance_id", "" if v.gpu_instance_id is None else str(v.gpu_instance_id)),
        ("vm_id", v.vm_id),
    )
    return (("," + label_text(extra), 1),)


PCI_DEVICE_LABELS = ("pci_address", "vm_uuid", "tenant_id")


def _pci(name: str, kind: MetricType, help: str, value: Callable[[Any], Number | None]) -> Family:
    # The kind's record is the AttributedPciDevice; `value` reads its PciDevice.
    return Family(PREFIX + name, kind, help, PCI_DEVICE_LABELS, lambda a: value(a.device))


def _pci_link(field: str, scale: float = 1) -> Callable[[Any], Number | None]:
    """One link field of the device's own PcieHealth (absent if sysfs did not say)."""

    def value(device: Any) -> Number | None:
        found = getattr(device.health, field) if device.health is not None else None
        return found if found is None or scale == 1 else found * scale

    return value


def _pci_aer(field: str) -> Callable[[Any], Iterable[tuple[str, Number]]]:
    """An AER total as counted at the endpoint and at its upstream port, each where readable.
    One family with `counted_at` rather than two: it is the same link's errors, which either
    side may have seen (sysfs-bus-pci-devices-aer), so `sum without (counted_at)` is the link's
    total and an alert on the family covers both ends."""

    def samples(a: AttributedPciDevice) -> Iterable[tuple[str, Number]]:
        for counted_at, health in (
            ("endpoint", a.device.health),
            ("upstream_port", a.device.upstream),
        ):
            found = getattr(health, field) if health is not None else None
            if found is not None:
                yield f',counted_at="{counted_at}"', found

    return samples


def _pci_info(a: AttributedPciDevice) -> Iterable[tuple[str, Number]]:
    d = a.device
    health = d.health
    extra = (
        ("vendor", d.vendor or ""),
        ("device", d.device or ""),
        ("class", d.pci_class or ""),
        ("class_name", class_name(d.pci_class)),
        ("driver", (health.driver if health else None) or ""),
        ("physfn", (health.physfn if health else None) or ""),
        ("upstream_port", d.upstream.pci_address if d.upstream else ""),
        ("power_state", (health.power_state if health else None) or ""),
    )
    return (("," + label_text(extra), 1),)


_AER_SOURCE = "counted at the endpoint or at its upstream port (counted_at), sysfs"
# Per PCI hostdev of a domain (any class); value() receives PciDevice.
PCI_DEVICE_FAMILIES = (
    _pci(
        "pci_device_present",
        "gauge",
        "1 if the host's sysfs has the PCI function a domain holds as a hostdev; 0 if not (removed, or fell off the bus): then no other PCIe series of it exist.",
        lambda d: int(d.present),
    ),
    _pci(
        "pci_device_link_speed_transfers_per_second",
        "gauge",
        "Current PCIe link speed of the device (sysfs current_link_speed, GT/s -> T/s); below the maximum: a downtrained link. Absent for a VF (no link of its own).",
        _pci_link("link_speed_current_gts", 1e9),
    ),
    _pci(
        "pci_device_link_max_speed_transfers_per_second",
        "gauge",
        "Maximum PCIe link speed of the device (sysfs max_link_speed, GT/s -> T/s).",
        _pci_link("link_speed_max_gts", 1e9),
    ),
    _pci(
        "pci_device_link_width_lanes",
        "gauge",
        "Current PCIe link width of the device (sysfs current_link_width).",
        _pci_link("link_width_current"),
    ),
    _pci(
        "pci_device_link_max_width_lanes",
        "gauge",
        "Maximum PCIe link width of the device (sysfs max_link_width).",
        _pci_link("link_width_max"),
    ),
)
PCI_DEVICE_AER = (
    Family(
        PREFIX + "pci_device_aer_correctable_errors_total",
        "counter",
        f"PCIe AER correctable errors on the device's link, {_AER_SOURCE} aer_dev_correctable TOTAL_ERR_COR.",
        (*PCI_DEVICE_LABELS, "counted_at"),
        samples=_pci_aer("aer_correctable"),
    ),
    Family(
        PREFIX + "pci_device_aer_nonfatal_errors_total",
        "counter",
        f"PCIe AER non-fatal uncorrectable errors on the device's link, {_AER_SOURCE} aer_dev_nonfatal TOTAL_ERR_NONFATAL.",
        (*PCI_DEVICE_LABELS, "counted_at"),
        samples=_pci_aer("aer_nonfatal"),
    ),
    Family(
        PREFIX + "pci_device_aer_fatal_errors_total",
        "counter",
        f"PCIe AER fatal errors on the device's link, {_AER_SOURCE} aer_dev_fatal TOTAL_ERR_FATAL.",
        (*PCI_DEVICE_LABELS, "counted_at"),
        samples=_pci_aer("aer_fatal"),
    ),
)
PCI_DEVICE_INFO = Family(
    PREFIX + "pci_device_info",
    "info",
    "A PCI function a domain holds as a hostdev: vendor, device and class IDs as sysfs gives them (hex), a name for the common classes, the driver bound (vfio-pci while the VM runs; the host's, or none, otherwise), its PF if it is a VF, the port above it, its power state. Always 1.",
    (
        *PCI_DEVICE_LABELS,
        "vendor",
        "device",
        "class",
        "class_name",
        "driver",
        "physfn",
        "upstream_port",
        "power_state",
    ),
    samples=_pci_info,
)


def _vm_info(vm: AttributedVM) -> Iterable[tuple[str, Number]]:
    extra = (("name", vm.stats.name), ("tenant_source", vm.tenant_source), *vm.info_labels)
    return (("," + label_text(extra), 1),)


def _block_info(b: Any) -> Iterable[tuple[str, Number]]:
    return () if b.path is None else ((f',path="{escape_label_value(b.path)}"', 1),)


VGPU_INFO = Family(
    PREFIX + "vgpu_info",
    "info",
    "A vGPU instance: its type, its mdev UUID, its PCI address inside the guest, its MIG GPU instance, and the VM id the host driver gives. Always 1.",
    (
        *VGPU_LABELS,
        "vgpu_instance",
        "type",
        "mdev_uuid",
        "guest_pci_address",
        "gpu_instance_id",
        "vm_id",
    ),
    samples=_vgpu_info,
)

VM_INFO = Family(
    PREFIX + "vm_info",
    "info",
    "Descriptive labels of a VM: domain name, where its tenant came from, and the allow-listed "
    "metadata labels (attribution.info_labels). Always 1.",
    ("vm_uuid", "tenant_id", "name", "tenant_source", "..."),
    samples=_vm_info,
)
BLOCK_INFO = Family(
    PREFIX + "vm_block_info",
    "info",
    "Host path behind each VM disk (block.N.path). Always 1.",
    ("vm_uuid", "tenant_id", "device", "path"),
    samples=_block_info,
)


# Every self family as declared, for the test that each is in SELF_FAMILIES (the renderer walks
# that tuple: a family left out of it is never rendered, whoever reports it)
DECLARED_SELF_FAMILIES: list[Family] = []


def _self_family(name: str, kind: MetricType, help: str, labels: tuple[str, ...] = ()) -> Family:
    family = Family(PREFIX + name, kind, help, labels)
    DECLARED_SELF_FAMILIES.append(family)
    return family


# Self-metrics: each is reported by its owner (selfmetrics.py) and named by these constants,
# never by string.
BUILD_INFO = _self_family(
    "build_info",
    "info",
    "Version of hostcollector and of Python. Always 1.",
    ("version", "python_version"),
)
SOURCE_UP = _self_family(
    "source_up", "gauge", "1 if the source's last poll succeeded, 0 if it failed.", ("source",)
)
SOURCE_POLLS_TOTAL = _self_family(
    "source_polls_total", "counter", "Polls of the source.", ("source",)
)
SOURCE_POLL_ERRORS_TOTAL = _self_family(
    "source_poll_errors_total",
    "counter",
    "Failed polls of the source, by reason (connect, timeout, busy, stats_call, ...).",
    ("source", "reason"),
)
SOURCE_LAST_POLL_DURATION_SECONDS = _self_family(
    "source_last_poll_duration_seconds",
    "gauge",
    "Wall time of the source's last poll.",
    ("source",),
)
SOURCE_LAST_SUCCESS_TIMESTAMP_SECONDS = _self_family(
    "source_last_success_timestamp_seconds",
    "gauge",
    "When the source last polled successfully (Unix time).",
    ("source",),
)
LIBVIRT_CONNECTS_TOTAL = _self_family(
    "libvirt_connects_total",
    "counter",
    "Connections opened to libvirtd; more than one means reconnects.",
)
LIBVIRT_TIMEOUTS_TOTAL = _self_family(
    "libvirt_timeouts_total",
    "counter",
    "libvirt calls abandoned past their deadline, by reason (list, stats, stats_retry, probe, no_free_lane).",
    ("reason",),
)
LIBVIRT_QUARANTINED_VMS = _self_family(
    "libvirt_quarantined_vms",
    "gauge",
    "VMs in quarantine now: their QEMU monitor does not answer.",
)
LIBVIRT_QUARANTINES_TOTAL = _self_family(
    "libvirt_quarantines_total", "counter", "Times a VM was put into quarantine."
)
LIBVIRT_BUSY_DOMAINS_TOTAL = _self_family(
    "libvirt_busy_domains_total",
    "counter",
    "Domains whose stats NOWAIT returned partial because their job was busy; their last good values were kept.",
)
LIBVIRT_KERNEL_FALLBACKS_TOTAL = _self_family(
    "libvirt_kernel_fallbacks_total",
    "counter",
    "Times a running VM's CPU, vCPU or NIC values could not be read from the kernel (sources.libvirt.kernel_path) and were asked from libvirt, by reason: not_found (no QEMU process names its uuid), cpu_total, vcpu, interface (that group could not be read), timeout or busy (the kernel read itself did not end in time; counted per VM).",
    ("reason",),
)
LIBVIRT_CONTROL_INFO_CALLS_TOTAL = _self_family(
    "libvirt_control_info_calls_total",
    "counter",
    "virDomainGetControlInfo calls: asked of a running VM when first seen, then only while it looks suspect (a job or lifecycle event, a partial NOWAIT answer, quarantine, a state not OK, a chunk that overran); none for the others.",
)
VMS = _self_family("vms", "gauge", "VMs exported, in any state.")
VFS = _self_family("vfs", "gauge", "SR-IOV VFs exported.")
NVML_AVAILABLE = _self_family(
    "nvml_available",
    "gauge",
    "1 if NVML initialised (library and driver present); 0 if not, when only sysfs GPUs are reported.",
)
NVML_CONF_COMPUTE_FEATURE = _self_family(
    "nvml_conf_compute_feature",
    "gauge",
    "Confidential computing on this host's GPUs (nvmlSystemGetConfComputeState ccFeature): 0 disabled, 1 enabled, 2 bare-metal secure AI; absent where NVML does not support it.",
)
NVML_CONF_COMPUTE_ENVIRONMENT = _self_family(
    "nvml_conf_compute_environment",
    "gauge",
    "Confidential computing environment (nvmlSystemGetConfComputeState environment): 0 unavailable, 1 simulation, 2 production.",
)
NVML_CONF_COMPUTE_DEVTOOLS_MODE = _self_family(
    "nvml_conf_compute_devtools_mode",
    "gauge",
    "1 if confidential computing's devtools mode is on (no protection: for debugging only).",
)
NVML_CONF_COMPUTE_GPUS_READY = _self_family(
    "nvml_conf_compute_gpus_ready",
    "gauge",
    "1 if the GPUs accept work in confidential computing mode (nvmlSystemGetConfComputeGpusReadyState), 0 if not yet.",
)
GPUS = _self_family("gpus", "gauge", "GPU functions exported, NVML's and sysfs-only ones.")
GPUS_UNASSIGNED = _self_family(
    "gpus_unassigned",
    "gauge",
    "GPUs in use by no VM: not passed through to a domain, and hosting no vGPU.",
)
VGPUS = _self_family("vgpus", "gauge", "vGPU instances exported.")
VGPUS_UNATTRIBUTED = _self_family(
    "vgpus_unattributed", "gauge", "vGPU instances whose VM this host's libvirt does not know."
)
VFS_UNATTRIBUTED = _self_family(
    "vfs_unattributed",
    "gauge",
    "VFs no domain holds as a hostdev (free, or given to something that is not a libvirt domain).",
)
VMS_UNATTRIBUTED = _self_family(
    "vms_unattributed",
    "gauge",
    "VMs exported without a tenant (no metadata rule and no mapping entry matched).",
)
TENANTS = _self_family("tenants", "gauge", "Distinct tenants among the exported VMs.")
TENANT_MAP_ENTRIES = _self_family(
    "tenant_map_entries",
    "gauge",
    "Entries in the control plane's tenant map in force (the last good file).",
)
TENANT_MAP_RELOADS_TOTAL = _self_family(
    "tenant_map_reloads_total", "counter", "Successful loads of the tenant map file."
)
TENANT_MAP_ERRORS_TOTAL = _self_family(
    "tenant_map_errors_total",
    "counter",
    "Versions of the tenant map file that were rejected (missing, unreadable, malformed).",
)
TENANT_MAP_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS = _self_family(
    "tenant_map_last_reload_success_timestamp_seconds",
    "gauge",
    "When the tenant map was last loaded (Unix time).",
)
HTTP_REQUESTS_DENIED_TOTAL = _self_family(
    "http_requests_denied_total",
    "counter",
    "HTTP requests refused: missing or invalid bearer token (401), or outside the token's scope (403).",
    ("reason",),
)
HTTP_CONNECTIONS = _self_family(
    "http_connections",
    "gauge",
    "Connections the HTTP server holds open now (bounded below the descriptor limit).",
)
HTTP_CONNECTIONS_CLOSED_TOTAL = _self_family(
    "http_connections_closed_total",
    "counter",
    "Connections the HTTP server closed to protect itself: evicted (the longest waiting without a request, to admit a new one at the bound), refused (at the bound with every connection busy), accept_failed (accept() found no descriptor or memory).",
    ("reason",),
)
FILE_RELOADS_TOTAL = _self_family(
    "file_reloads_total",
    "counter",
    "Versions of a file re-read on change that were loaded: tokens (auth.tokens_file), tls (listen.tls files).",
    ("file",),
)
FILE_RELOAD_ERRORS_TOTAL = _self_family(
    "file_reload_errors_total",
    "counter",
    "Versions of such a file that were rejected (unreadable, malformed, a key not matching its certificate); the last good version stays in force.",
    ("file",),
)
TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS = _self_family(
    "tls_certificate_expiry_timestamp_seconds",
    "gauge",
    "When the TLS certificate the server presents expires (Unix time); absent without TLS.",
)
REMOTE_WRITE_QUEUE_BATCHES = _self_family(
    "remote_write_queue_batches",
    "gauge",
    "Batches (one request each) waiting in the endpoint's on-disk queue.",
    ("endpoint",),
)
REMOTE_WRITE_QUEUE_SAMPLES = _self_family(
    "remote_write_queue_samples",
    "gauge",
    "Samples waiting in the endpoint's on-disk queue.",
    ("endpoint",),
)
REMOTE_WRITE_QUEUE_BYTES = _self_family(
    "remote_write_queue_bytes",
    "gauge",
    "Bytes of the endpoint's on-disk queue (bounded by max_queue_bytes).",
    ("endpoint",),
)
REMOTE_WRITE_QUEUE_OLDEST_SAMPLE_TIMESTAMP_SECONDS = _self_family(
    "remote_write_queue_oldest_sample_timestamp_seconds",
    "gauge",
    "Timestamp of the oldest queued sample (Unix time); absent when the queue is empty. Its age is how far behind the endpoint is.",
    ("endpoint",),
)
REMOTE_WRITE_SAMPLES_SENT_TOTAL = _self_family(
    "remote_write_samples_sent_total",
    "counter",
    "Samples the endpoint accepted (2xx).",
    ("endpoint",),
)
REMOTE_WRITE_SAMPLES_FAILED_TOTAL = _self_family(
    "remote_write_samples_failed_total",
    "counter",
    "Samples in requests that failed (connection error, 5xx, 429) and stay queued for a retry.",
    ("endpoint",),
)
REMOTE_WRITE_SAMPLES_DROPPED_TOTAL = _self_family(
    "remote_write_samples_dropped_total",
    "counter",
    "Samples never delivered, by reason: queue_full (oldest dropped past max_queue_bytes), rejected (a 4xx other than 429), invalid_tenant (an id a store refuses, or one that would leave its tenant space: . and ..), corrupt (a queue file that became unreadable or damaged before it was sent), unqueueable (the queue directory refused the write: full or read-only disk).",
    ("endpoint", "reason"),
)
REMOTE_WRITE_QUEUE_FILES_DROPPED_TOTAL = _self_family(
    "remote_write_queue_files_dropped_total",
    "counter",
    "Entries of the queue directory found at start and not queued, by reason: corrupt and old_format (a header that fails its checksum or its checks, or was written before headers had one: deleted), not_a_file and foreign_name (a directory, link or other file with a batch's name: left in place). Files, not samples: a damaged header's sample count means nothing.",
    ("endpoint", "reason"),
)
REMOTE_WRITE_LAST_SUCCESS_TIMESTAMP_SECONDS = _self_family(
    "remote_write_last_success_timestamp_seconds",
    "gauge",
    "When the endpoint last accepted a request (Unix time).",
    ("endpoint",),
)
SNAPSHOT_TIMESTAMP_SECONDS = _self_family(
    "snapshot_timestamp_seconds", "gauge", "When the snapshot served was built (Unix time)."
)
EXPOSITION_SERIES = _self_family(
    "exposition_series", "gauge", "Series in this exposition, this one included."
)
# The process's own, named and described as Prometheus' client libraries name them
# (client_python's ProcessCollector; process_threads is the Rust `prometheus` crate's, since
# client_python and client_golang have none), so that dashboards and alerts made for any
# exporter work here too: hence no hostcollector_ prefix.
PROCESS_CPU_SECONDS_TOTAL = Family(
    "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", ()
)
PROCESS_RESIDENT_MEMORY_BYTES = Family(
    "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", ()
)
PROCESS_VIRTUAL_MEMORY_BYTES = Family(
    "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", ()
)
PROCESS_OPEN_FDS = Family("process_open_fds", "gauge", "Number of open file descriptors.", ())
PROCESS_MAX_FDS = Family("process_max_fds", "gauge", "Maximum number of open file descriptors.", ())
PROCESS_START_TIME_SECONDS = Family(
    "process_start_time_seconds",
    "gauge",
    "Start time of the process since unix epoch in seconds.",
    (),
)
PROCESS_THREADS = Family("process_threads", "gauge", "Number of OS threads in the process.", ())
MEMORY_LIMIT_BYTES = _self_family(
    "memory_limit_bytes",
    "gauge",
    "Memory limit of the cgroup hostcollector runs in (the unit's MemoryMax=; cgroup v1's memory.limit_in_bytes); absent when unlimited. Compare process_resident_memory_bytes with it.",
)

# In exposition order (the README's table follows it too).
SELF_FAMILIES = (
    BUILD_INFO,
    SOURCE_UP,
    SOURCE_POLLS_TOTAL,
    SOURCE_LAST_POLL_DURATION_SECONDS,
    SOURCE_LAST_SUCCESS_TIMESTAMP_SECONDS,
    SOURCE_POLL_ERRORS_TOTAL,
    LIBVIRT_CONNECTS_TOTAL,
    LIBVIRT_TIMEOUTS_TOTAL,
    LIBVIRT_QUARANTINED_VMS,
    LIBVIRT_QUARANTINES_TOTAL,
    LIBVIRT_BUSY_DOMAINS_TOTAL,
    LIBVIRT_KERNEL_FALLBACKS_TOTAL,
    LIBVIRT_CONTROL_INFO_CALLS_TOTAL,
    VMS,
    VFS,
    NVML_AVAILABLE,
    NVML_CONF_COMPUTE_FEATURE,
    NVML_CONF_COMPUTE_ENVIRONMENT,
    NVML_CONF_COMPUTE_DEVTOOLS_MODE,
    NVML_CONF_COMPUTE_GPUS_READY,
    GPUS,
    GPUS_UNASSIGNED,
    VGPUS,
    VGPUS_UNATTRIBUTED,
    VFS_UNATTRIBUTED,
    VMS_UNATTRIBUTED,
    TENANTS,
    TENANT_MAP_ENTRIES,
    TENANT_MAP_RELOADS_TOTAL,
    TENANT_MAP_ERRORS_TOTAL,
    TENANT_MAP_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
    HTTP_REQUESTS_DENIED_TOTAL,
    HTTP_CONNECTIONS,
    HTTP_CONNECTIONS_CLOSED_TOTAL,
    FILE_RELOADS_TOTAL,
    FILE_RELOAD_ERRORS_TOTAL,
    TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
    REMOTE_WRITE_QUEUE_BATCHES,
    REMOTE_WRITE_QUEUE_SAMPLES,
    REMOTE_WRITE_QUEUE_BYTES,
    REMOTE_WRITE_QUEUE_OLDEST_SAMPLE_TIMESTAMP_SECONDS,
    REMOTE_WRITE_SAMPLES_SENT_TOTAL,
    REMOTE_WRITE_SAMPLES_FAILED_TOTAL,
    REMOTE_WRITE_LAST_SUCCESS_TIMESTAMP_SECONDS,
    REMOTE_WRITE_SAMPLES_DROPPED_TOTAL,
    REMOTE_WRITE_QUEUE_FILES_DROPPED_TOTAL,
    PROCESS_CPU_SECONDS_TOTAL,
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_VIRTUAL_MEMORY_BYTES,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_START_TIME_SECONDS,
    PROCESS_THREADS,
    MEMORY_LIMIT_BYTES,
    SNAPSHOT_TIMESTAMP_SECONDS,
    EXPOSITION_SERIES,
)

# Families shown only while their owner reports (a libvirt source, NVML, a tenant map file):
# each group's headers come with a sample of any of its families; every other self-metric
# family is always headed, with or without samples.
SELF_FAMILIES_WITH_OWNER = (
    (
        LIBVIRT_CONNECTS_TOTAL,
        LIBVIRT_TIMEOUTS_TOTAL,
        LIBVIRT_QUARANTINED_VMS,
        LIBVIRT_QUARANTINES_TOTAL,
        LIBVIRT_BUSY_DOMAINS_TOTAL,
        LIBVIRT_KERNEL_FALLBACKS_TOTAL,
        LIBVIRT_CONTROL_INFO_CALLS_TOTAL,
    ),
    (NVML_AVAILABLE,),
    (
        NVML_CONF_COMPUTE_FEATURE,
        NVML_CONF_COMPUTE_ENVIRONMENT,
        NVML_CONF_COMPUTE_DEVTOOLS_MODE,
        NVML_CONF_COMPUTE_GPUS_READY,
    ),
    (
        TENANT_MAP_ENTRIES,
        TENANT_MAP_RELOADS_TOTAL,
        TENANT_MAP_ERRORS_TOTAL,
        TENANT_MAP_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
    ),
    # The daemon's process, reported by the owner `hostcollector run` registers (wiring.py):
    # not by a collector built in a test, whose expositions stay the same from run to run.
    (
        PROCESS_CPU_SECONDS_TOTAL,
        PROCESS_RESIDENT_MEMORY_BYTES,
        PROCESS_VIRTUAL_MEMORY_BYTES,
        PROCESS_OPEN_FDS,
        PROCESS_MAX_FDS,
        PROCESS_START_TIME_SECONDS,
        PROCESS_THREADS,
        MEMORY_LIMIT_BYTES,
    ),
)


# -- The kinds of entity, each with its labels, owner and families ------------------------------

VM = EntityKind(
    "vm",
    "vm",
    (("vm_uuid", lambda vm: vm.stats.uuid), ("tenant_id", lambda vm: vm.tenant_id)),
    (*VM_FAMILIES, *VM_STATUS_FAMILIES, VM_INFO),
    snapshot_field="vms",
    tenant_of=lambda vm: vm.tenant_id,
    counted_as="vms",
)
VCPU = EntityKind(
    "vcpu",
    "vm",
    (("vcpu", lambda v: str(v.index)),),
    VCPU_FAMILIES,
    parent=VM,
    children=lambda vm: vm.stats.vcpus,
)
DISK = EntityKind(
    "disk",
    "vm",
    (("device", lambda b: b.device),),
    (*BLOCK_FAMILIES, BLOCK_INFO),
    parent=VM,
    children=lambda vm: vm.stats.blocks,
)
NIC = EntityKind(
    "nic",
    "vm",
    (("device", lambda n: n.device),),
    INTERFACE_FAMILIES,
    parent=VM,
    children=lambda vm: vm.stats.interfaces,
)
VF = EntityKind(
    "vf",
    "assignee",
    tuple(
        zip(
            VF_LABELS,
            (
                lambda a: a.vf.pf,
                lambda a: str(a.vf.index),
                lambda a: a.vf.pci_address or "",
                lambda a: a.vm_uuid,
                lambda a: a.tenant_id,
            ),
            strict=True,
        )
    ),
    (*VF_FAMILIES, VF_INFO),
    snapshot_field="vfs",
    tenant_of=lambda a: a.tenant_id,
    counted_as="vfs",
)
PF = EntityKind(
    "pf",
    "host",
    (("pf", lambda p: p.name), ("pci_address", lambda p: p.pci_address)),
    PF_FAMILIES,
    snapshot_field="pfs",
    tenant_of=lambda _: "",
)
GPU = EntityKind(
    "gpu",
    "assignee",
    tuple(
        zip(
            GPU_LABELS,
            (
                lambda a: a.gpu.uuid,
                lambda a: a.gpu.pci_address,
                lambda a: a.vm_uuid,
                lambda a: a.tenant_id,
            ),
            strict=True,
        )
    ),
    (
        *GPU_FAMILIES,
        GPU_INFO,
        GPU_ECC,
        GPU_REMAPPED,
        GPU_NVLINK,
        GPU_XID,
        GPU_CLOCKS_EVENT,
        GPU_RETIRED_PAGES,
        GPU_NVLINK_DATA,
        GPU_NVML_ERRORS,
    ),
    snapshot_field="gpus",
    # A GPU shared by vGPUs is the host's: its own series would show the other tenants' use.
    tenant_of=lambda a: a.tenant_id,
    counted_as="gpus",
)


def _vgpus(snapshot: Snapshot) -> Iterable[AttributedVgpu]:
    return (vgpu for a in snapshot.gpus for vgpu in attributed_vgpus(a))


VGPU = EntityKind(
    "vgpu",
    "assignee",
    tuple(
        zip(
            VGPU_LABELS,
            (
                lambda a: a.gpu_uuid,
                lambda a: a.vgpu.uuid or str(a.vgpu.instance_id),
                lambda a: a.vm_uuid,
                lambda a: a.tenant_id,
            ),
            strict=True,
        )
    ),
    (*VGPU_FAMILIES, VGPU_INFO),
    records=_vgpus,
    tenant_of=lambda a: a.tenant_id,
    counted_as="vgpus",
)

PCI_DEVICE = EntityKind(
    "pci_device",
    "assignee",
    tuple(
        zip(
            PCI_DEVICE_LABELS,
            (lambda a: a.device.pci_address, lambda a: a.vm_uuid, lambda a: a.tenant_id),
            strict=True,
        )
    ),
    (*PCI_DEVICE_FAMILIES, *PCI_DEVICE_AER, PCI_DEVICE_INFO),
    snapshot_field="pci_devices",
    tenant_of=lambda a: a.tenant_id,
)

GPU_INSTANCE = EntityKind(
    "gpu_instance",
    "assignee",
    tuple(
        zip(
            GPU_INSTANCE_LABELS,
            (
                lambda a: a.gpu_uuid,
                lambda a: str(a.instance.gpu_instance_id),
                lambda a: a.vm_uuid,
                lambda a: a.tenant_id,
            ),
            strict=True,
        )
    ),
    GPU_INSTANCE_FAMILIES,
    records=lambda snapshot: (i for a in snapshot.gpus for i in attributed_gpu_instances(a)),
    tenant_of=lambda a: a.tenant_id,
)

# In exposition order. A new kind goes here and is rendered, scoped, counted per tenant, listed
# in the README's table and drawn by the scoping property test.
KINDS = (VM, VCPU, DISK, NIC, VF, PF, GPU, VGPU, GPU_INSTANCE, PCI_DEVICE)

ALL_FAMILIES = (*(family for kind in KINDS for family in kind.families), *SELF_FAMILIES)
