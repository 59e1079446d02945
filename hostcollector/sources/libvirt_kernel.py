"""Which of libvirt's stats groups the kernel's view of a domain stands in for, and the domain's
stats with those groups taken from it. Pure.

The kernel path (sources.libvirt.kernel_path) serves cpu_total, vcpu and interface: libvirt
reads them from the same kernel files without QEMU's monitor (qemu_kernel.py says which), but at
the cost of a libvirtd round trip per domain. What only QEMU or the definition knows stays
libvirt's: state, balloon (but its rss, /proc/<pid>/statm, is the kernel's too), block.

A group is served only whole: a domain missing any value of it is asked from libvirt for that
group (its reason counted), so a series never mixes the two paths within one poll.

Differences from libvirt's groups, by design:
- vcpu.current is the number of vCPU threads QEMU runs (one per online vCPU: hot-unplug ends
  the thread), vcpu.maximum the definition's `<vcpu>`; offline vCPUs, which libvirt lists with
  a state only, are not listed;
- cpu.haltpoll.* (KVM's debugfs, root only) are not read: None, as under TCG.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from hostcollector.model import DomainStats
from hostcollector.sources.domain_xml import DomainDevices
from hostcollector.sources.qemu_kernel import KernelDomainStats

KERNEL_GROUPS = ("cpu_total", "vcpu", "interface")
NOT_FOUND = "not_found"


def served_groups(
    kernel: KernelDomainStats, devices: DomainDevices, wanted: Iterable[str]
) -> tuple[str, ...]:
    """The groups of `wanted` the kernel's view serves whole for this domain."""
    served = []
    for group in wanted:
        if group == "vcpu" and devices.vcpu_maximum is None:
            continue
        if group == "interface" and devices.other_nics:
            continue
        if kernel.serves(group):
            served.append(group)
    return tuple(served)


def fallback_reasons(
    kernel: KernelDomainStats, served: tuple[str, ...], wanted: Iterable[str]
) -> tuple[str, ...]:
    """Why the kernel did not serve this domain: not_found (no process), else each group."""
    if kernel.not_found is not None:
        return (NOT_FOUND,)
    return tuple(group for group in wanted if group not in served)


def overlay(
    stats: DomainStats,
    kernel: KernelDomainStats,
    served: tuple[str, ...],
    devices: DomainDevices,
    *,
    with_rss: bool,
) -> DomainStats:
    """`stats` with the served groups' fields from the kernel, and balloon.rss where read and
    `with_rss` (the balloon group is configured: without it libvirt gives no rss either).
    One replace for all of them: it runs for every domain every poll."""
    changes: dict[str, Any] = {}
    if "cpu_total" in served:
        changes.update(
            cpu_time_seconds=kernel.cpu_time_seconds,
            cpu_user_seconds=kernel.cpu_user_seconds,
            cpu_system_seconds=kernel.cpu_system_seconds,
            cpu_haltpoll_success_seconds=None,
            cpu_haltpoll_fail_seconds=None,
        )
    if "vcpu" in served:
        changes.update(
            vcpu_current=len(kernel.vcpus), vcpu_maximum=devices.vcpu_maximum, vcpus=kernel.vcpus
        )
    if "interface" in served:
        # libvirt's net.N order: the XML's <interface> order, as devices.taps holds it
        by_device = {nic.device: nic for nic in kernel.interfaces}
        changes["interfaces"] = tuple(
            by_device[tap.ifname] for tap in devices.taps if tap.ifname in by_device
        )
    if with_rss and kernel.serves("rss"):
        changes["memory"] = replace(stats.memory, rss_bytes=kernel.rss_bytes)
    return replace(stats, **changes) if changes else stats
