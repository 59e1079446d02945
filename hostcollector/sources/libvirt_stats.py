"""Typed parameters of virConnectGetAllDomainStats -> DomainStats, in base units. Pure.

Field quirks (libvirt 9.0, as recorded in tests/fixtures): cpu.* and vcpu.N.* and block.N.*.times are
nanoseconds; balloon.* sizes are KiB; vcpu.N.wait is host scheduler wait (not guest I/O wait),
vcpu.N.delay is run-queue delay, i.e. steal. Every field is optional: a domain whose job lock was
busy (NOWAIT) or that is shut off comes back with fields missing, and missing stays None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from hostcollector.model import BlockStats, DomainStats, InterfaceStats, MemoryStats, VcpuStats

DeviceT = TypeVar("DeviceT", BlockStats, InterfaceStats)

NS_PER_SECOND = 1e9
KIB = 1024


# `type(value) is int`, not isinstance: a bool is no counter, and the check runs ~30 times per
# domain per poll (libvirt-python gives plain ints)
def _int(raw: Mapping[str, Any], key: str, scale: int = 1) -> int | None:
    value = raw.get(key)
    return value * scale if type(value) is int else None


def _seconds(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    return value / NS_PER_SECOND if type(value) is int else None


def _str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) else None


def parse_domain_stats(uuid: str, name: str, raw: Mapping[str, Any]) -> DomainStats:
    return DomainStats(
        uuid=uuid,
        name=name,
        state=_int(raw, "state.state"),
        state_reason=_int(raw, "state.reason"),
        cpu_time_seconds=_seconds(raw, "cpu.time"),
        cpu_user_seconds=_seconds(raw, "cpu.user"),
        cpu_system_seconds=_seconds(raw, "cpu.system"),
        cpu_haltpoll_success_seconds=_seconds(raw, "cpu.haltpoll.success.time"),
        cpu_haltpoll_fail_seconds=_seconds(raw, "cpu.haltpoll.fail.time"),
        vcpu_current=_int(raw, "vcpu.current"),
        vcpu_maximum=_int(raw, "vcpu.maximum"),
        vcpus=_vcpus(raw),
        memory=_memory(raw),
        blocks=_blocks(raw),
        interfaces=_interfaces(raw),
    )


def _vcpus(raw: Mapping[str, Any]) -> tuple[VcpuStats, ...]:
    # vcpu.N.* exists for N below vcpu.maximum; offline vCPUs have only a state.
    count = _int(raw, "vcpu.maximum") or 0
    vcpus = []
    for index in range(count):
        prefix = f"vcpu.{index}."
        if prefix + "state" not in raw and prefix + "time" not in raw:
            continue
        vcpus.append(
            VcpuStats(
                index=index,
                state=_int(raw, prefix + "state"),
                time_seconds=_seconds(raw, prefix + "time"),
                wait_seconds=_seconds(raw, prefix + "wait"),
                delay_seconds=_seconds(raw, prefix + "delay"),
            )
        )
    return tuple(vcpus)


def _memory(raw: Mapping[str, Any]) -> MemoryStats:
    return MemoryStats(
        current_bytes=_int(raw, "balloon.current", KIB),
        maximum_bytes=_int(raw, "balloon.maximum", KIB),
        rss_bytes=_int(raw, "balloon.rss", KIB),
        usable_bytes=_int(raw, "balloon.usable", KIB),
        available_bytes=_int(raw, "balloon.available", KIB),
        unused_bytes=_int(raw, "balloon.unused", KIB),
        disk_caches_bytes=_int(raw, "balloon.disk_caches", KIB),
        swap_in_bytes=_int(raw, "balloon.swap_in", KIB),
        swap_out_bytes=_int(raw, "balloon.swap_out", KIB),
        major_faults=_int(raw, "balloon.major_fault"),
        minor_faults=_int(raw, "balloon.minor_fault"),
        guest_stats_timestamp_seconds=_int(raw, "balloon.last-update"),
    )


def _per_device(
    raw: Mapping[str, Any], group: str, build: Callable[[str, str], DeviceT]
) -> tuple[DeviceT, ...]:
    """One record per named device of a stats group (`block.N.*`, `net.N.*`), built from the
    device name and its key prefix. With backing chains (not requested) a block device repeats:
    one series per device only."""
    found: dict[str, DeviceT] = {}
    for index in range(_int(raw, f"{group}.count") or 0):
        prefix = f"{group}.{index}."
        device = _str(raw, prefix + "name")
        if device is not None and device not in found:
            found[device] = build(device, prefix)
    return tuple(found.values())


def _blocks(raw: Mapping[str, Any]) -> tuple[BlockStats, ...]:
    return _per_device(
        raw,
        "block",
        lambda device, prefix: BlockStats(
            device=device,
            path=_str(raw, prefix + "path"),
            read_requests=_int(raw, prefix + "rd.reqs"),
            read_bytes=_int(raw, prefix + "rd.bytes"),
            read_time_seconds=_seconds(raw, prefix + "rd.times"),
            write_requests=_int(raw, prefix + "wr.reqs"),
            write_bytes=_int(raw, prefix + "wr.bytes"),
            write_time_seconds=_seconds(raw, prefix + "wr.times"),
            flush_requests=_int(raw, prefix + "fl.reqs"),
            flush_time_seconds=_seconds(raw, prefix + "fl.times"),
            capacity_bytes=_int(raw, prefix + "capacity"),
            allocation_bytes=_int(raw, prefix + "allocation"),
            physical_bytes=_int(raw, prefix + "physical"),
        ),
    )


def _interfaces(raw: Mapping[str, Any]) -> tuple[InterfaceStats, ...]:
    return _per_device(
        raw,
        "net",
        lambda device, prefix: InterfaceStats(
            device=device,
            receive_bytes=_int(raw, prefix + "rx.bytes"),
            receive_packets=_int(raw, prefix + "rx.pkts"),
            receive_errors=_int(raw, prefix + "rx.errs"),
            receive_drop=_int(raw, prefix + "rx.drop"),
            transmit_bytes=_int(raw, prefix + "tx.bytes"),
            transmit_packets=_int(raw, prefix + "tx.pkts"),
            transmit_errors=_int(raw, prefix + "tx.errs"),
            transmit_drop=_int(raw, prefix + "tx.drop"),
        ),
    )


# state.state values of an active domain: running, blocked, paused, pmsuspended
_ACTIVE_STATES = frozenset({1, 2, 3, 7})


def is_partial(raw: Mapping[str, Any], groups: tuple[str, ...]) -> bool:
    """True when NOWAIT skipped the QEMU monitor for this domain because its job was busy.

    Such a domain comes back with what needs no monitor call (state, cpu, vcpu, balloon
    current/maximum, interfaces) but without balloon.rss and the block counters (measured on the
    lab with a kill -STOPped QEMU: 32 of 57 fields).
    """
    if raw.get("state.state") not in _ACTIVE_STATES:
        return False
    if "balloon" in groups and "balloon.rss" not in raw:
        return True
    if "block" in groups:
        for index in range(_int(raw, "block.count") or 0):
            prefix = f"block.{index}."
            if prefix + "path" in raw and prefix + "rd.reqs" not in raw:
                return True
    return False


# Which DomainStats fields each stats group fills
GROUP_FIELDS = {
    "cpu_total": (
        "cpu_time_seconds",
        "cpu_user_seconds",
        "cpu_system_seconds",
        "cpu_haltpoll_success_seconds",
        "cpu_haltpoll_fail_seconds",
    ),
    "vcpu": ("vcpu_current", "vcpu_maximum", "vcpus"),
    "balloon": ("memory",),
    "block": ("blocks",),
    "interface": ("interfaces",),
}


def carry_over(new: DomainStats, old: DomainStats | None, skipped: tuple[str, ...]) -> DomainStats:
    """`new` with the fields of the groups not asked this poll taken from `old`."""
    if old is None or not skipped:
        return new
    kept = {name: getattr(old, name) for group in skipped for name in GROUP_FIELDS.get(group, ())}
    return replace(new, **kept)
