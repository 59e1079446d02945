"""The kernel path wired into the libvirt source (sources.libvirt.kernel_path): the fake libvirtd
(tests/fake_libvirt.py) for libvirt, a /proc and cgroup tree on disk in the kernel's formats and
a replayed RTM_NEWLINK dump (tests/test_qemu_kernel.py's) for the kernel.

hc-lab-a1 has a QEMU process the kernel serves whole; hc-lab-c1's process sits in no machine
cgroup (its CPU time cannot be read); hc-lab-b1 and hc-lab-orphan have no process at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostcollector.config import AttributionConfig, LibvirtConfig
from hostcollector.errors import SourceDegraded, SourceError
from hostcollector.model import DomainStats, LibvirtSample
from hostcollector.sources import libvirt as libvirt_source
from hostcollector.sources.libvirt import LibvirtSource
from hostcollector.tenancy import compile_rules
from tests import fake_libvirt
from tests.fake_libvirt import FakeLibvirtd
from tests.replay import poll_once
from tests.test_qemu_kernel import (
    SCOPE,
    TAP_COUNTERS,
    V2_NESTED,
    Qemu,
    RecordedDump,
    Thread,
    cpu_stat,
    datagram,
    link_message,
    make_proc,
    reader,
    write,
)

TIMEOUT = 1.0
A1 = "a1a1a1a1-0000-4000-8000-000000000001"
B1 = "b1b1b1b1-0000-4000-8000-000000000002"
C1 = "c1c1c1c1-0000-4000-8000-000000000003"
ORPHAN = "d0d0d0d0-0000-4000-8000-000000000004"
DEAR = (
    fake_libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | fake_libvirt.VIR_DOMAIN_STATS_VCPU
    | fake_libvirt.VIR_DOMAIN_STATS_INTERFACE
)


def definition(name: str, uuid: str) -> str:
    return (
        f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>"
        "<vcpu placement='static' current='2'>4</vcpu><devices>"
        "<interface type='network'><source network='default'/><target dev='vnet7'/></interface>"
        "</devices></domain>"
    )


@dataclass
class Host:
    """The kernel's side of the host: a1's cgroup, vCPU threads and tap, moved by `tick`."""

    root: Path
    dump: RecordedDump
    ticks: int = 0

    def tick(self) -> None:
        self.ticks += 1
        step = self.ticks
        group = self.root / "cgroup" / SCOPE / "libvirt"
        write(group / "cpu.stat", cpu_stat(5_000_000 * step, 4_000_000 * step, 1_000_000 * step))
        vcpus = [
            Thread(4101, "CPU 0/KVM", 100 * step, 10 * step, 0, 7_000_000 * step),
            Thread(4102, "CPU 1/KVM", 200 * step, 20 * step, 0, 9_000_000 * step),
        ]
        make_proc(
            self.root,
            Qemu(4100, A1, "hc-lab-a1", V2_NESTED, vcpus),
            Qemu(4200, C1, "hc-lab-c1", "0::/user.slice/user-1000.slice\n", vcpus),
        )
        counters = {key: value * step for key, value in TAP_COUNTERS.items()}
        self.dump.datagram = datagram(link_message("vnet7", 7, counters))


@pytest.fixture
def libvirtd(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLibvirtd]:
    daemon = FakeLibvirtd.lab(4)
    for uuid, vm in daemon.vms.items():
        vm.definition = definition(vm.name, uuid)
    monkeypatch.setattr(libvirt_source, "_lib", daemon.module)
    yield daemon
    daemon.release_all()


@pytest.fixture
def host(tmp_path: Path) -> Host:
    (tmp_path / "proc").mkdir()
    write(tmp_path / "cgroup" / "cgroup.controllers", "cpu io memory pids\n")  # v2 only
    found = Host(tmp_path, RecordedDump(datagram()))
    found.tick()
    return found


def make_source(host: Host, **config: object) -> LibvirtSource:
    settings: dict[str, object] = {
        "interval_seconds": 2 * TIMEOUT,
        "timeout_seconds": TIMEOUT,
        "parallel_calls": 3,
    }
    return LibvirtSource(
        LibvirtConfig(**(settings | config)),  # type: ignore[arg-type]
        compile_rules(AttributionConfig()),
        kernel=reader(host.root, host.root / "proc", host.dump),
    )


def by_uuid(sample: LibvirtSample) -> dict[str, DomainStats]:
    return {domain.uuid: domain for domain in sample.domains}


def masks_for(libvirtd: FakeLibvirtd, uuid: str, since: int = 0) -> list[int]:
    calls = zip(libvirtd.stats_calls[since:], libvirtd.stats_masks[since:], strict=True)
    return [mask for uuids, mask in calls if uuid in uuids]


def test_kernel_serves_a1_and_the_others_fall_back_counted(
    libvirtd: FakeLibvirtd, host: Host
) -> None:
    source = make_source(host)

    sample: LibvirtSample = poll_once(source)
    stats = by_uuid(sample)

    # a1: libvirt asked only for what the kernel has not; its CPU, vCPU and NIC are the kernel's
    assert [mask & DEAR for mask in masks_for(libvirtd, A1)] == [0]
    assert [call for call in libvirtd.stats_calls if A1 in call] == [(A1,)]
    a1 = stats[A1]
    assert a1.cpu_time_seconds == pytest.approx(5.0)
    assert (a1.cpu_user_seconds, a1.cpu_system_seconds) == pytest.approx((4.0, 1.0))
    assert (a1.vcpu_current, a1.vcpu_maximum) == (2, 4)
    assert [v.delay_seconds for v in a1.vcpus] == pytest.approx([0.007, 0.009])
    assert [nic.device for nic in a1.interfaces] == ["vnet7"]
    assert a1.interfaces[0].receive_bytes == TAP_COUNTERS["tx_bytes"]  # the guest's view
    assert a1.blocks and a1.blocks[0].read_requests is not None  # libvirt's, as before
    assert a1.state == 1
    assert sample.freshness[A1].kernel_read_at is not None

    # the others: asked from libvirt for the dear groups too, in a call of their own
    for uuid in (B1, C1, ORPHAN):
        assert [mask & DEAR for mask in masks_for(libvirtd, uuid)] == [DEAR], uuid
        assert sample.freshness[uuid].kernel_read_at is None, uuid
    recorded = {vm.uuid: vm.stats for vm in libvirtd.vms.values()}
    assert stats[B1].cpu_time_seconds == pytest.approx(recorded[B1]["cpu.time"] / 1e9 + 1)
    # c1: its process found, its vCPUs and NIC read, its CPU time not: libvirt's cpu_total
    assert stats[C1].cpu_time_seconds == pytest.approx(recorded[C1]["cpu.time"] / 1e9 + 1)
    assert dict(source.health().kernel_fallbacks_by_reason) == {"cpu_total": 1, "not_found": 2}


def test_without_kernel_path_every_group_is_asked_of_libvirt(
    libvirtd: FakeLibvirtd, host: Host
) -> None:
    source = make_source(host, kernel_path=False)

    sample: LibvirtSample = poll_once(source)
    assert [mask & DEAR for mask in masks_for(libvirtd, A1)] == [DEAR]
    assert sample.freshness[A1].kernel_read_at is None
    assert source.health().kernel_fallbacks_by_reason == ()


def test_a_stopped_libvirtd_leaves_the_kernel_series_advancing(
    libvirtd: FakeLibvirtd, host: Host
) -> None:
    source = make_source(host)
    degraded: list[LibvirtSample] = []

    async def degraded_poll() -> None:
        host.tick()
        started = time.monotonic()
        with pytest.raises(SourceDegraded) as raised:
            await source.poll()
        assert time.monotonic() - started < TIMEOUT + 0.3
        assert isinstance(raised.value.result, LibvirtSample)
        degraded.append(raised.value.result)

    async def scenario() -> LibvirtSample:
        try:
            healthy = await source.poll()
            libvirtd.freeze()  # kill -STOP: every call hangs, no connection closes
            for _ in range(3):
                await degraded_poll()
            libvirtd.thaw()
            deadline = time.monotonic() + 5
            while True:  # the abandoned listing returns; then the source answers again
                try:
                    back = await source.poll()
                    break
                except SourceError:
                    assert time.monotonic() < deadline, "libvirt did not come back"
                    await asyncio.sleep(0.05)
            assert back.freshness[A1].sampled_at is not None
            assert back.freshness[A1].sampled_at > healthy.freshness[A1].sampled_at  # type: ignore[operator]
            return healthy
        finally:
            await source.close()

    healthy = asyncio.run(scenario())
    before = by_uuid(healthy)[A1]
    seen = [by_uuid(sample)[A1] for sample in degraded]
    cpu = [before.cpu_time_seconds, *(s.cpu_time_seconds for s in seen)]
    assert cpu == sorted(cpu) and len(set(cpu)) == 4, cpu  # advancing every poll
    vcpu = [before.vcpus[1].time_seconds, *(s.vcpus[1].time_seconds for s in seen)]
    assert len(set(vcpu)) == 4, vcpu
    nic = [before.interfaces[0].transmit_bytes, *(s.interfaces[0].transmit_bytes for s in seen)]
    assert len(set(nic)) == 4, nic
    for sample, stats in zip(degraded, seen, strict=True):
        assert stats.blocks == before.blocks  # libvirt-only: its last values, kept
        assert stats.memory.current_bytes == before.memory.current_bytes
        fresh = sample.freshness[A1]
        assert fresh.sampled_at == healthy.freshness[A1].sampled_at  # their age shows
        assert fresh.kernel_read_at is not None
        assert fresh.kernel_read_at > fresh.sampled_at  # type: ignore[operator]
        # the domains the kernel cannot serve are kept with their age, unchanged
        assert by_uuid(sample)[B1] == by_uuid(healthy)[B1]
        assert sample.freshness[B1].kernel_read_at is None
