"""On the real lab, read-only: the kernel's view of every lab domain (sources/qemu_kernel.py)
lies between what `virsh domstats` says just before and just after it, as tests/test_lab.py
brackets the daemon's counters. Changes nothing: no domain operation, no libvirtd restart.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hostcollector.model import LibvirtSample
from hostcollector.sources.qemu_kernel import DomainRef, KernelDomainStats, QemuKernelReader
from hostcollector.sources.tap_counters import Tap
from tests.labkit import LAB_VMS, require_lab, virsh

pytestmark = [pytest.mark.lab]

GROUPS = ("--cpu-total", "--vcpu", "--interface", "--balloon")


def domstats(name: str) -> dict[str, int]:
    stats = {}
    for line in virsh("-r", "domstats", *GROUPS, name).splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and value.isdigit():
            stats[key] = int(value)
    return stats


def taps(name: str) -> tuple[Tap, ...]:
    root = ET.fromstring(virsh("-r", "dumpxml", name))
    return tuple(
        Tap(target.get("dev", ""), swapped=interface.get("type") != "direct")
        for interface in root.findall("./devices/interface")
        if (target := interface.find("target")) is not None
    )


def bracket(before: dict[str, int], value: float | None, after: dict[str, int], key: str) -> None:
    scale = 1e-9 if key.startswith(("cpu.", "vcpu.")) else 1
    low, high = before[key] * scale, after[key] * scale
    assert value is not None, key
    assert low - 1e-9 <= value <= high + 1e-9, f"{key}: {low} <= {value} <= {high}"


def check(
    before: dict[str, int], ours: KernelDomainStats, after: dict[str, int], nics: tuple[Tap, ...]
) -> None:
    assert ours.not_found is None and ours.problems == (), ours
    for key, value in (
        ("cpu.time", ours.cpu_time_seconds),
        ("cpu.user", ours.cpu_user_seconds),
        ("cpu.system", ours.cpu_system_seconds),
    ):
        bracket(before, value, after, key)
    assert len(ours.vcpus) == before["vcpu.current"]
    for vcpu in ours.vcpus:
        for name in ("time", "wait", "delay"):
            key = f"vcpu.{vcpu.index}.{name}"
            bracket(before, getattr(vcpu, f"{name}_seconds"), after, key)
    assert before.get("net.count", 0) == len(nics) == len(ours.interfaces)
    by_name = {interface.device: interface for interface in ours.interfaces}
    for index, tap in enumerate(nics):  # libvirt's net.N follow the XML's <interface> order
        nic = by_name[tap.ifname]
        for key, field in (
            ("rx.bytes", "receive_bytes"),
            ("rx.pkts", "receive_packets"),
            ("rx.errs", "receive_errors"),
            ("rx.drop", "receive_drop"),
            ("tx.bytes", "transmit_bytes"),
            ("tx.pkts", "transmit_packets"),
            ("tx.errs", "transmit_errors"),
            ("tx.drop", "transmit_drop"),
        ):
            bracket(before, getattr(nic, field), after, f"net.{index}.{key}")
    # RSS is a gauge: within 16 MiB of libvirt's balloon.rss (KiB) on either side
    assert ours.rss_bytes is not None
    for seen in (before, after):
        assert abs(ours.rss_bytes - seen["balloon.rss"] * 1024) <= 16 << 20


def test_kernel_view_is_bracketed_by_virsh_domstats() -> None:
    require_lab()
    kernel = QemuKernelReader()
    try:
        for vm in LAB_VMS:
            ref = DomainRef(vm["uuid"], vm["name"], taps(vm["name"]))
            before = domstats(vm["name"])
            ours = kernel.read_domain(ref)
            after = domstats(vm["name"])
            check(before, ours, after, ref.taps)
    finally:
        kernel.close()


def test_a_vm_whose_cgroup_is_not_found_takes_its_cpu_time_from_libvirt(tmp_path: Path) -> None:
    """The libvirt source on the real lab, its kernel reader's cgroup root empty: no domain's
    machine group is found, so each VM's CPU time is asked from libvirt (bracketed by virsh),
    its vCPUs and NICs still from the kernel, and each fallback is counted by reason."""
    require_lab()
    import asyncio

    from hostcollector.config import AttributionConfig, LibvirtConfig
    from hostcollector.sources.libvirt import LibvirtSource
    from hostcollector.tenancy import compile_rules

    source = LibvirtSource(
        LibvirtConfig(),
        compile_rules(AttributionConfig()),
        kernel=QemuKernelReader(cgroup_root=str(tmp_path)),
    )

    async def poll() -> LibvirtSample:
        try:
            return await source.poll()
        finally:
            await source.close()

    before = {vm["name"]: domstats(vm["name"]) for vm in LAB_VMS}
    sample = asyncio.run(poll())
    after = {vm["name"]: domstats(vm["name"]) for vm in LAB_VMS}

    by_uuid = {domain.uuid: domain for domain in sample.domains}
    for vm in LAB_VMS:
        stats, name = by_uuid[vm["uuid"]], vm["name"]
        bracket(before[name], stats.cpu_time_seconds, after[name], "cpu.time")
        assert sample.freshness[vm["uuid"]].kernel_read_at is None  # not the kernel's, whole
        assert len(stats.vcpus) == before[name]["vcpu.current"]
        for vcpu in stats.vcpus:
            key = f"vcpu.{vcpu.index}.time"
            bracket(before[name], vcpu.time_seconds, after[name], key)
    assert dict(source.health().kernel_fallbacks_by_reason) == {"cpu_total": len(LAB_VMS)}
