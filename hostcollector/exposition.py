"""Snapshot -> Prometheus text format 0.0.4 or OpenMetrics 1.0.0 bytes.

The metric families are declared once, in the tables below; the renderer, the README's metric
table (`hostcollector metrics-table`) and the tests all read them. Every per-VM series carries
`vm_uuid` and `tenant_id`; descriptive, tenant-controlled strings (VM name, flavor, ...) only
appear on `hostcollector_vm_info`. Label values are escaped, so no VM name can break a line or
forge a series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from hostcollector.model import Snapshot

PREFIX = "hostcollector_"
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Kind = Literal["counter", "gauge", "info"]
Number = int | float


@dataclass(frozen=True)
class Family:
    name: str  # as the samples are named: counters end in _total, info in _info
    kind: Kind
    help: str
    labels: tuple[str, ...]
    value: Callable[[Any], Number | None]


def _vm(name: str, kind: Kind, help: str, value: Callable[[Any], Number | None]) -> Family:
    return Family(PREFIX + name, kind, help, ("vm_uuid", "tenant_id"), value)


def _dev(
    entity: str, name: str, kind: Kind, help: str, value: Callable[[Any], Number | None]
) -> Family:
    return Family(PREFIX + name, kind, help, ("vm_uuid", "tenant_id", entity), value)


# Per VM; value() receives DomainStats.
VM_FAMILIES = (
    _vm(
        "vm_state",
        "gauge",
        "Domain state code (state.state): 0 nostate, 1 running, 2 blocked, 3 paused, 4 shutdown, 5 shutoff, 6 crashed, 7 pmsuspended.",
        lambda d: d.state,
    ),
    _vm(
        "vm_state_reason",
        "gauge",
        "Reason code of the current state (state.reason), per virDomain<State>Reason.",
        lambda d: d.state_reason,
    ),
    _vm(
        "vm_cpu_time_seconds_total",
        "counter",
        "CPU time of the whole domain (cpu.time, ns -> s).",
        lambda d: d.cpu_time_seconds,
    ),
    _vm(
        "vm_cpu_user_seconds_total",
        "counter",
        "User CPU time of the domain (cpu.user, ns -> s).",
        lambda d: d.cpu_user_seconds,
    ),
    _vm(
        "vm_cpu_system_seconds_total",
        "counter",
        "System CPU time of the domain (cpu.system, ns -> s).",
        lambda d: d.cpu_system_seconds,
    ),
    _vm("vm_vcpus_current", "gauge", "vCPUs online (vcpu.current).", lambda d: d.vcpu_current),
    _vm(
        "vm_vcpus_maximum",
        "gauge",
        "vCPUs the domain may have (vcpu.maximum).",
        lambda d: d.vcpu_maximum,
    ),
    _vm(
        "vm_memory_current_bytes",
        "gauge",
        "Memory the balloon currently gives the guest (balloon.current, KiB -> bytes).",
        lambda d: d.memory.current_bytes,
    ),
    _vm(
        "vm_memory_maximum_bytes",
        "gauge",
        "Maximum memory of the domain (balloon.maximum, KiB -> bytes).",
        lambda d: d.memory.maximum_bytes,
    ),
    _vm(
        "vm_memory_rss_bytes",
        "gauge",
        "Resident set size of the QEMU process, host side (balloon.rss, KiB -> bytes).",
        lambda d: d.memory.rss_bytes,
    ),
    _vm(
        "vm_memory_usable_bytes",
        "gauge",
        "Guest-reported memory usable without swapping (balloon.usable, KiB -> bytes); needs balloon stats in the guest.",
        lambda d: d.memory.usable_bytes,
    ),
    _vm(
        "vm_memory_available_bytes",
        "gauge",
        "Guest-reported total memory (balloon.available, KiB -> bytes); needs balloon stats in the guest.",
        lambda d: d.memory.available_bytes,
    ),
    _vm(
        "vm_memory_unused_bytes",
        "gauge",
        "Guest-reported free memory (balloon.unused, KiB -> bytes); needs balloon stats in the guest.",
        lambda d: d.memory.unused_bytes,
    ),
    _vm(
        "vm_memory_disk_caches_bytes",
        "gauge",
        "Guest-reported page cache that can be reclaimed (balloon.disk_caches, KiB -> bytes).",
        lambda d: d.memory.disk_caches_bytes,
    ),
    _vm(
        "vm_memory_swap_in_bytes_total",
        "counter",
        "Guest-reported memory swapped in (balloon.swap_in, KiB -> bytes).",
        lambda d: d.memory.swap_in_bytes,
    ),
    _vm(
        "vm_memory_swap_out_bytes_total",
        "counter",
        "Guest-reported memory swapped out (balloon.swap_out, KiB -> bytes).",
        lambda d: d.memory.swap_out_bytes,
    ),
    _vm(
        "vm_memory_major_faults_total",
        "counter",
        "Guest-reported major page faults (balloon.major_fault).",
        lambda d: d.memory.major_faults,
    ),
    _vm(
        "vm_memory_minor_faults_total",
        "counter",
        "Guest-reported minor page faults (balloon.minor_fault).",
        lambda d: d.memory.minor_faults,
    ),
    _vm(
        "vm_memory_guest_stats_timestamp_seconds",
        "gauge",
        "When the guest last reported its balloon stats (balloon.last-update, Unix time).",
        lambda d: d.memory.guest_stats_timestamp_seconds,
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
        "1 while a background job such as a migration runs on the VM (virDomainGetControlInfo says JOB), else 0. Use it to silence alerts.",
        lambda vm: None if vm.job_active is None else int(vm.job_active),
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


def _vf(name: str, kind: Kind, help: str, value: Callable[[Any], Number | None]) -> Family:
    return Family(PREFIX + name, kind, help, VF_LABELS, value)


def _pf(name: str, kind: Kind, help: str, value: Callable[[Any], Number | None]) -> Family:
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
VF_INFO = Family(
    PREFIX + "vf_info",
    "info",
    "Configuration of a VF: MAC, VLAN, QoS, spoof check, trust, link state, and where its "
    "counters came from (netlink, sysfs, or none). Always 1.",
    (*VF_LABELS, "mac", "vlan", "qos", "spoof_check", "trust", "link_state", "stats_source"),
    lambda _: None,
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

VM_INFO = Family(
    PREFIX + "vm_info",
    "info",
    "Descriptive labels of a VM: domain name, where its tenant came from, and the allow-listed "
    "metadata labels (attribution.info_labels). Always 1.",
    ("vm_uuid", "tenant_id", "name", "tenant_source", "..."),
    lambda _: None,
)
BLOCK_INFO = Family(
    PREFIX + "vm_block_info",
    "info",
    "Host path behind each VM disk (block.N.path). Always 1.",
    ("vm_uuid", "tenant_id", "device", "path"),
    lambda _: None,
)


def _self_family(name: str, kind: Kind, help: str, labels: tuple[str, ...] = ()) -> Family:
    return Family(PREFIX + name, kind, help, labels, lambda _: None)


# Self-metrics are rendered by hand below; declared here for the docs and tests.
SELF_FAMILIES = (
    _self_family(
        "build_info",
        "info",
        "Version of hostcollector and of Python. Always 1.",
        ("version", "python_version"),
    ),
    _self_family(
        "source_up", "gauge", "1 if the source's last poll succeeded, 0 if it failed.", ("source",)
    ),
    _self_family("source_polls_total", "counter", "Polls of the source.", ("source",)),
    _self_family(
        "source_poll_errors_total",
        "counter",
        "Failed polls of the source, by reason (connect, timeout, busy, stats_call, ...).",
        ("source", "reason"),
    ),
    _self_family(
        "source_last_poll_duration_seconds",
        "gauge",
        "Wall time of the source's last poll.",
        ("source",),
    ),
    _self_family(
        "source_last_success_timestamp_seconds",
        "gauge",
        "When the source last polled successfully (Unix time).",
        ("source",),
    ),
    _self_family(
        "libvirt_connects_total",
        "counter",
        "Connections opened to libvirtd; more than one means reconnects.",
    ),
    _self_family(
        "libvirt_timeouts_total",
        "counter",
        "libvirt calls abandoned past their deadline, by reason (list, stats, stats_retry, probe, no_free_lane).",
        ("reason",),
    ),
    _self_family(
        "libvirt_quarantined_vms",
        "gauge",
        "VMs in quarantine now: their QEMU monitor does not answer.",
    ),
    _self_family("libvirt_quarantines_total", "counter", "Times a VM was put into quarantine."),
    _self_family(
        "libvirt_busy_domains_total",
        "counter",
        "Domains whose stats NOWAIT returned partial because their job was busy; their last good values were kept.",
    ),
    _self_family("vms", "gauge", "VMs exported, in any state."),
    _self_family("vfs", "gauge", "SR-IOV VFs exported."),
    _self_family(
        "vfs_unattributed",
        "gauge",
        "VFs no domain holds as a hostdev (free, or given to something that is not a libvirt domain).",
    ),
    _self_family(
        "vms_unattributed",
        "gauge",
        "VMs exported without a tenant (no metadata rule and no mapping entry matched).",
    ),
    _self_family("tenants", "gauge", "Distinct tenants among the exported VMs."),
    _self_family(
        "tenant_map_entries",
        "gauge",
        "Entries in the control plane's tenant map in force (the last good file).",
    ),
    _self_family("tenant_map_reloads_total", "counter", "Successful loads of the tenant map file."),
    _self_family(
        "tenant_map_errors_total",
        "counter",
        "Versions of the tenant map file that were rejected (missing, unreadable, malformed).",
    ),
    _self_family(
        "tenant_map_last_reload_success_timestamp_seconds",
        "gauge",
        "When the tenant map was last loaded (Unix time).",
    ),
    _self_family(
        "snapshot_timestamp_seconds", "gauge", "When the snapshot served was built (Unix time)."
    ),
    _self_family("exposition_series", "gauge", "Series in this exposition, this one included."),
)

ALL_FAMILIES = (
    *VM_FAMILIES,
    *VM_STATUS_FAMILIES,
    VM_INFO,
    *VCPU_FAMILIES,
    *BLOCK_FAMILIES,
    BLOCK_INFO,
    *INTERFACE_FAMILIES,
    *VF_FAMILIES,
    VF_INFO,
    *PF_FAMILIES,
    *SELF_FAMILIES,
)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: Number) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


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
        self.header(family)
        for labels, value in samples:
            if value is not None:
                self.sample(family.name, labels, value)


def render(snapshot: Snapshot, *, openmetrics: bool = False) -> bytes:
    w = _Writer(openmetrics)
    vms = [
        (vm, _labels((("vm_uuid", vm.stats.uuid), ("tenant_id", vm.tenant_id))))
        for vm in snapshot.vms
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

    _render_sriov(w, snapshot)
    _render_self(w, snapshot)
    if openmetrics:
        w.lines.append("# EOF")
    w.lines.append("")
    return "\n".join(w.lines).encode("utf-8", "replace")


def _flag(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def _render_sriov(w: _Writer, snapshot: Snapshot) -> None:
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
    per_pf = [(_labels((("pf", p.name), ("pci_address", p.pci_address))), p) for p in snapshot.pfs]
    for family in PF_FAMILIES:
        w.family(family, ((labels, family.value(pf)) for labels, pf in per_pf))


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
    one("snapshot_timestamp_seconds", snapshot.taken_at)
    one("exposition_series", w.series + 1)


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
