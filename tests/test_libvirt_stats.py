"""Parsing and unit conversion of bulk stats recorded from the lab (`hostcollector dump --raw`)."""

from __future__ import annotations

from typing import Any

import pytest

from hostcollector.sources.libvirt_stats import parse_domain_stats
from tests.conftest import by_name


def parse(entry: dict[str, Any]):  # type: ignore[no-untyped-def]
    return parse_domain_stats(entry["uuid"], entry["name"], entry["stats"])


def test_every_recorded_domain_parses_with_its_identity(lab_raw: list[dict[str, Any]]) -> None:
    parsed = [parse(entry) for entry in lab_raw]
    assert {d.name for d in parsed} == {"hc-lab-a1", "hc-lab-b1", "hc-lab-c1", "hc-lab-orphan"}
    for domain in parsed:
        assert domain.state == 1  # running
        assert domain.vcpu_maximum == 2 and len(domain.vcpus) == 2
        assert [b.device for b in domain.blocks] == ["vda"]
        assert len(domain.interfaces) == 1 and domain.interfaces[0].device.startswith("vnet")


def test_nanoseconds_become_seconds(lab_raw: list[dict[str, Any]]) -> None:
    entry = by_name(lab_raw, "hc-lab-a1")
    stats = entry["stats"]
    domain = parse(entry)
    assert domain.cpu_time_seconds == pytest.approx(stats["cpu.time"] / 1e9)
    assert domain.cpu_user_seconds == pytest.approx(stats["cpu.user"] / 1e9)
    assert domain.vcpus[1].time_seconds == pytest.approx(stats["vcpu.1.time"] / 1e9)
    assert domain.vcpus[0].delay_seconds == pytest.approx(stats["vcpu.0.delay"] / 1e9)
    assert domain.blocks[0].write_time_seconds == pytest.approx(stats["block.0.wr.times"] / 1e9)
    # exact decimal rendering: 7929750000 ns is 7.92975 s, not 7.929750000000001
    assert parse_domain_stats("u", "n", {"cpu.time": 7929750000}).cpu_time_seconds == 7.92975


def test_balloon_kib_become_bytes_and_guest_fields_are_read(lab_raw: list[dict[str, Any]]) -> None:
    entry = by_name(lab_raw, "hc-lab-b1")
    stats = entry["stats"]
    memory = parse(entry).memory
    assert memory.current_bytes == stats["balloon.current"] * 1024 == 256 * 1024 * 1024
    assert memory.rss_bytes == stats["balloon.rss"] * 1024
    # the lab guests load virtio_balloon and the domains set <stats period='5'/>
    assert memory.usable_bytes == stats["balloon.usable"] * 1024
    assert memory.unused_bytes == stats["balloon.unused"] * 1024
    assert memory.swap_in_bytes == stats["balloon.swap_in"] * 1024
    assert memory.minor_faults == stats["balloon.minor_fault"]
    assert memory.guest_stats_timestamp_seconds == stats["balloon.last-update"]


def test_block_and_interface_counters(lab_raw: list[dict[str, Any]]) -> None:
    entry = by_name(lab_raw, "hc-lab-c1")
    stats = entry["stats"]
    domain = parse(entry)
    block = domain.blocks[0]
    assert block.path == stats["block.0.path"]
    assert block.write_bytes == stats["block.0.wr.bytes"] > 0
    assert block.capacity_bytes == stats["block.0.capacity"] == 64 * 1024 * 1024
    nic = domain.interfaces[0]
    assert nic.receive_bytes == stats["net.0.rx.bytes"]
    assert nic.transmit_packets == stats["net.0.tx.pkts"] > 0
    assert nic.transmit_drop == stats["net.0.tx.drop"]


def test_missing_fields_stay_none_never_zero(lab_raw: list[dict[str, Any]]) -> None:
    # A domain skipped by NOWAIT, or shut off, comes back with state only.
    entry = by_name(lab_raw, "hc-lab-a1")
    state_only = {k: v for k, v in entry["stats"].items() if k.startswith("state.")}
    domain = parse_domain_stats(entry["uuid"], entry["name"], state_only)
    assert domain.state == 1
    assert domain.cpu_time_seconds is None
    assert domain.memory.rss_bytes is None
    assert domain.vcpus == () and domain.blocks == () and domain.interfaces == ()


def test_guest_fields_absent_without_balloon_driver(lab_raw: list[dict[str, Any]]) -> None:
    entry = by_name(lab_raw, "hc-lab-a1")
    host_side = {
        k: v
        for k, v in entry["stats"].items()
        if k in {"balloon.current", "balloon.maximum", "balloon.rss"}
    }
    memory = parse_domain_stats("u", "n", host_side).memory
    assert memory.rss_bytes is not None
    assert (
        memory.usable_bytes is None and memory.unused_bytes is None and memory.major_faults is None
    )


def test_wrong_typed_values_are_ignored() -> None:
    domain = parse_domain_stats("u", "n", {"cpu.time": "12", "state.state": True, "net.count": 1})
    assert domain.cpu_time_seconds is None and domain.state is None and domain.interfaces == ()


def test_slow_groups_are_read_every_nth_poll_and_carried_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    import libvirt

    from hostcollector.config import LibvirtConfig
    from hostcollector.sources.libvirt import LibvirtSource
    from tests.bench.fakes import FakeConnection

    conn = FakeConnection(2)
    asked: list[int] = []
    real = conn.domainListGetStats

    def recording(handles, mask, flags):  # type: ignore[no-untyped-def]
        asked.append(mask)
        return real(handles, mask, flags)

    conn.domainListGetStats = recording  # type: ignore[method-assign]
    monkeypatch.setattr(libvirt, "openReadOnly", lambda _uri: conn)
    source = LibvirtSource(
        LibvirtConfig(
            slow_stats_groups=("vcpu", "balloon"),
            slow_stats_every=2,
            parallel_calls=1,
            kernel_path=False,  # libvirt's slow groups; the host's /proc is none of its business
        ),
        (),
    )

    uuid = conn.domains[0].UUIDString()

    async def polls() -> list[object]:
        found = []
        try:
            for step in range(3):
                conn.stats[uuid]["vcpu.0.time"] = 10**9 * (step + 1)  # moves every poll
                conn.tick()
                found.append(await source.poll())
        finally:
            await source.close()
        return found

    results = asyncio.run(polls())
    slow = libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_BALLOON
    assert [bool(mask & slow) for mask in asked] == [True, False, True]
    first, second, third = (r.domains[0] for r in results)  # type: ignore[attr-defined]
    # the fast poll kept the vCPU and memory values of the full one, and read the rest anew
    assert [d.vcpus[0].time_seconds for d in (first, second, third)] == [1.0, 1.0, 3.0]
    assert second.memory == first.memory
    assert second.cpu_time_seconds != first.cpu_time_seconds and second.blocks
