"""On the real lab, read-only: the kernel's view of every lab domain (sources/qemu_kernel.py)
lies between what `virsh domstats` says just before and just after it, as tests/test_lab.py
brackets the daemon's counters. Changes nothing: no domain operation, no libvirtd restart.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import pytest

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


def test_cost_of_reading_the_lab_domains() -> None:
    """Prints what one domain's read costs here and what libvirt's bulk read of the same
    groups costs (the client's wall time; libvirtd's CPU where its /proc is readable)."""
    require_lab()
    import libvirt

    refs = [DomainRef(vm["uuid"], vm["name"], taps(vm["name"])) for vm in LAB_VMS]
    kernel = QemuKernelReader()
    rounds = 200
    try:
        kernel.read_domains(refs)  # warm: pids found, socket open
        start_cpu, start = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            kernel.read_domains(refs)
        wall = (time.perf_counter() - start) / rounds / len(refs)
        cpu = (time.process_time() - start_cpu) / rounds / len(refs)
    finally:
        kernel.close()

    conn = libvirt.openReadOnly("qemu:///system")
    groups = (
        libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
        | libvirt.VIR_DOMAIN_STATS_VCPU
        | libvirt.VIR_DOMAIN_STATS_INTERFACE
        | libvirt.VIR_DOMAIN_STATS_BALLOON
    )
    domains = [conn.lookupByUUIDString(vm["uuid"]) for vm in LAB_VMS]
    daemon_cpu = _libvirtd_cpu()
    libvirt_rounds = 50
    start = time.perf_counter()
    for _ in range(libvirt_rounds):
        conn.domainListGetStats(domains, groups, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
    libvirt_wall = (time.perf_counter() - start) / libvirt_rounds / len(domains)
    daemon = _libvirtd_cpu()
    conn.close()
    libvirtd_cpu = (
        (daemon - daemon_cpu) / libvirt_rounds / len(domains)
        if daemon is not None and daemon_cpu is not None
        else None
    )
    print(
        f"\nkernel read per domain: wall {wall * 1e6:.0f} us, CPU {cpu * 1e6:.0f} us"
        f"\nlibvirt domainListGetStats(cpu_total, vcpu, interface, balloon) per domain: "
        f"client wall {libvirt_wall * 1e6:.0f} us, libvirtd CPU "
        + (f"{libvirtd_cpu * 1e6:.0f} us" if libvirtd_cpu is not None else "unknown")
    )
    assert wall < 0.01  # 10 ms per domain would be a regression by orders of magnitude


def _libvirtd_cpu() -> float | None:
    """libvirtd's utime + stime in seconds (pgrep -x libvirtd; host A's, never host B's)."""
    import os
    import subprocess

    found = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True)
    pids = found.stdout.split()
    if len(pids) != 1:
        return None
    try:
        with open(f"/proc/{pids[0]}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
