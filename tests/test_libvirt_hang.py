"""Hang isolation of the libvirt source, on a fake libvirtd whose stats call hangs on one domain.

The lab tests (test_lab_faults.py, test_lab_vanishing.py) stop a real QEMU; these run the same
code paths in a few seconds on any machine: a fake `libvirt` module (tests/fake_libvirt.py) is
put where LibvirtSource keeps the imported one, and its stats call blocks, like a stopped QEMU's
monitor, on the domains a test hangs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hostcollector.config import AttributionConfig, LibvirtConfig
from hostcollector.errors import SourceError
from hostcollector.model import DomainStats, LibvirtSample
from hostcollector.sources import libvirt as libvirt_source
from hostcollector.sources.libvirt import LibvirtSource
from hostcollector.sources.qemu_kernel import QemuKernelReader
from hostcollector.tenancy import compile_rules
from tests import fake_libvirt
from tests.conftest import FIXTURES, by_name, load_raw
from tests.fake_libvirt import FakeLibvirtd

TIMEOUT = 1.0  # the poll deadline; a chunk is given up on at half of it
SLACK = 0.15  # asyncio and thread hand-over on a loaded machine
VMS = 6
HUNG_AT = 1  # listing position of the hung domain: chunk 1 of 3, with the domain at 4


@pytest.fixture
def libvirtd(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLibvirtd]:
    daemon = FakeLibvirtd.lab(VMS)
    monkeypatch.setattr(libvirt_source, "_lib", daemon.module)
    yield daemon
    # Abandoned lane threads still wait in the fake: the interpreter would wait for them at exit.
    daemon.release_all()


def no_qemu_here() -> QemuKernelReader:
    """A kernel path that finds no QEMU process (an empty /proc): every domain falls back to
    libvirt, as before the kernel path; the host's own /proc may run the lab's domains."""
    empty = tempfile.mkdtemp(prefix="hc-no-proc-")
    return QemuKernelReader(proc_root=empty, cgroup_root=empty, pidfile_dir=empty)


def make_source(**config: Any) -> LibvirtSource:
    settings: dict[str, Any] = {
        "interval_seconds": 2 * TIMEOUT,
        "timeout_seconds": TIMEOUT,
        "parallel_calls": 3,
        "quarantine_seconds": 30.0,
    }
    return LibvirtSource(
        LibvirtConfig(**(settings | config)),
        compile_rules(AttributionConfig()),
        kernel=no_qemu_here(),
    )


def run(
    libvirtd: FakeLibvirtd, source: LibvirtSource, scenario: Callable[[], Awaitable[None]]
) -> None:
    async def main() -> None:
        try:
            await scenario()
        finally:
            libvirtd.release_all()
            # Let the released calls return while the loop still runs to take their results.
            settle_by = time.monotonic() + 5
            while libvirtd.calls_in_flight and time.monotonic() < settle_by:
                await asyncio.sleep(0.01)
            await source.close()

    asyncio.run(main())


async def timed_poll(source: LibvirtSource) -> tuple[LibvirtSample, float]:
    started = time.monotonic()
    sample = await source.poll()
    return sample, time.monotonic() - started


def stats_of(sample: LibvirtSample) -> dict[str, DomainStats]:
    return {domain.uuid: domain for domain in sample.domains}


def sampled_at(sample: LibvirtSample, uuid: str) -> float:
    when = sample.freshness[uuid].sampled_at
    assert when is not None, f"{uuid} was never sampled"
    return when


def timeouts(source: LibvirtSource) -> dict[str, int]:
    return dict(source.health().timeouts_by_reason)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def settled(libvirtd: FakeLibvirtd) -> None:
    await until(lambda: not libvirtd.calls_in_flight, "a stats call did not return")


async def probed(libvirtd: FakeLibvirtd, uuid: str, since: int) -> None:
    """Until the quarantine probe, a stats call on `uuid` alone, has asked it and returned."""
    await until(lambda: (uuid,) in libvirtd.stats_calls[since:], f"no probe of {uuid}")
    await settled(libvirtd)


def test_one_hung_domain_costs_the_others_nothing_and_is_not_asked_again(
    libvirtd: FakeLibvirtd,
) -> None:
    quarantine = 1.0
    source = make_source(quarantine_seconds=quarantine)
    hung = libvirtd.uuids[HUNG_AT]
    others = [uuid for uuid in libvirtd.uuids if uuid != hung]

    async def scenario() -> None:
        before = await source.poll()
        assert all(not f.quarantined for f in before.freshness.values())
        libvirtd.hang(hung)

        sample, took = await timed_poll(source)
        assert took < TIMEOUT + SLACK, f"the poll took {took:.2f} s"
        assert {domain.uuid for domain in sample.domains} == set(libvirtd.uuids)
        for uuid in others:  # the hung domain's chunk-mate included, retried in another lane
            assert sampled_at(sample, uuid) > sampled_at(before, uuid), uuid
            assert stats_of(sample)[uuid] != stats_of(before)[uuid], uuid
        assert sample.metadata_claims == before.metadata_claims  # the listing is untouched
        nova = libvirtd.uuids[3], hung  # hc-lab-a1 and hc-lab-b1 carry Nova metadata
        assert all(before.metadata_claims[uuid] for uuid in nova)
        assert sample.freshness[hung].quarantined
        assert stats_of(sample)[hung] == stats_of(before)[hung]  # its last good values
        assert sampled_at(sample, hung) == sampled_at(before, hung)  # and their age
        assert sample.listed_at > sampled_at(sample, hung)
        health = source.health()
        assert (health.quarantined_vms, health.quarantines_total) == (1, 1)
        assert timeouts(source) == {"stats": 1}
        assert len(libvirtd.stats_calls_with(hung)) == 2  # the first poll, and the one hung

        # Past the quarantine's expiry: its monitor is still occupied, so the quarantine is
        # renewed at each listing and no call reaches it.
        ends = time.monotonic() + quarantine + TIMEOUT / 2
        polls = 0
        while time.monotonic() < ends:
            previous = sample
            sample, took = await timed_poll(source)
            polls += 1
            assert took < TIMEOUT / 2, f"a poll with {hung} quarantined took {took:.2f} s"
            for uuid in others:
                assert sampled_at(sample, uuid) > sampled_at(previous, uuid), uuid
            assert sample.freshness[hung].quarantined
            assert stats_of(sample)[hung] == stats_of(before)[hung]
            assert sample.listed_at - sampled_at(sample, hung) > previous.listed_at - sampled_at(
                previous, hung
            )
            await asyncio.sleep(0.1)
        assert polls >= 5
        assert len(libvirtd.stats_calls_with(hung)) == 2
        assert source.health().quarantines_total == 1
        assert timeouts(source) == {"stats": 1}

    run(libvirtd, source, scenario)


def test_a_hung_domain_rejoins_once_its_monitor_answers(
    libvirtd: FakeLibvirtd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hostcollector.sources.libvirt_tracker")
    source = make_source()  # a 30 s quarantine: it must not take the expiry to come back
    hung = libvirtd.uuids[HUNG_AT]

    async def scenario() -> None:
        before = await source.poll()
        answers = libvirtd.hang(hung)
        sample = await source.poll()
        assert sample.freshness[hung].quarantined
        answers.set()
        await settled(libvirtd)  # the abandoned call returns; its result is dropped
        asked = len(libvirtd.stats_calls)

        # The next listing sees the monitor free: one probe asks it alone, off the main path.
        sample = await source.poll()
        await probed(libvirtd, hung, asked)
        assert not any(hung in call and len(call) > 1 for call in libvirtd.stats_calls[asked:])
        assert source.health().quarantined_vms == 0

        sample = await source.poll()
        assert not sample.freshness[hung].quarantined
        assert sampled_at(sample, hung) > sampled_at(before, hung)
        rejoined = stats_of(sample)[hung]
        assert rejoined.cpu_time_seconds != stats_of(before)[hung].cpu_time_seconds
        assert rejoined.memory.rss_bytes is not None and rejoined.blocks[0].read_bytes is not None
        # back on the main path, in a chunk with others
        assert any(hung in call and len(call) > 1 for call in libvirtd.stats_calls[asked:])

    run(libvirtd, source, scenario)
    assert "out of quarantine" in caplog.text


def test_control_state_is_asked_of_new_and_suspect_domains_only(libvirtd: FakeLibvirtd) -> None:
    """virDomainGetControlInfo is a libvirtd round trip per domain: asked at first sight, then
    only of a domain that looks suspect (here: its NOWAIT answer came back partial)."""
    source = make_source()
    busy = libvirtd.uuids[2]

    def calls() -> dict[str, int]:
        return {uuid: vm.control_calls for uuid, vm in libvirtd.vms.items()}

    async def scenario() -> None:
        await source.poll()
        assert set(calls().values()) == {1}  # first sight
        for _ in range(3):
            await source.poll()
        assert set(calls().values()) == {1}  # steady state: none
        assert source.health().control_info_calls_total == VMS
        job = libvirtd.vms[busy].job
        job.acquire()  # a job holds the domain: NOWAIT skips its monitor
        try:
            partial = await source.poll()
            assert calls()[busy] == 1
            await source.poll()  # asked, and partial again: asked again next listing
            assert calls()[busy] == 2
            await source.poll()
            assert calls()[busy] == 3
        finally:
            job.release()
        await source.poll()  # its answer is whole again: asked once more, then no longer
        await source.poll()
        assert calls()[busy] == 4
        assert {u: n for u, n in calls().items() if u != busy} == dict.fromkeys(
            (u for u in libvirtd.uuids if u != busy), 1
        )
        assert partial.freshness[busy].job_active is False  # the fake's control: OK

    run(libvirtd, source, scenario)


def test_polls_return_while_every_stats_lane_is_hung(libvirtd: FakeLibvirtd) -> None:
    lanes = 2
    source = make_source(parallel_calls=lanes)
    hung = libvirtd.uuids[:lanes]  # the first of each chunk: uuids[i::lanes]
    others = libvirtd.uuids[lanes:]

    async def scenario() -> None:
        before = await source.poll()
        releases = [libvirtd.hang(uuid) for uuid in hung]

        sample, took = await timed_poll(source)
        assert took < TIMEOUT + SLACK, f"the poll took {took:.2f} s"
        assert all(sample.freshness[uuid].quarantined for uuid in hung)
        assert timeouts(source) == {"stats": lanes}

        for count in range(1, 4):
            sample, took = await timed_poll(source)
            assert took < TIMEOUT / 2, f"a poll with no free lane took {took:.2f} s"
            assert timeouts(source) == {"stats": lanes, "no_free_lane": count}
            assert {domain.uuid for domain in sample.domains} == set(libvirtd.uuids)
            for uuid in libvirtd.uuids:  # everyone's last good values, ever older
                assert stats_of(sample)[uuid] == stats_of(before)[uuid], uuid
                assert sampled_at(sample, uuid) == sampled_at(before, uuid), uuid
        for uuid in hung:
            assert len(libvirtd.stats_calls_with(uuid)) == 2  # the first poll and the hang

        for release in releases:
            release.set()
        await settled(libvirtd)
        asked = len(libvirtd.stats_calls)
        sample = await source.poll()
        for uuid in others:
            assert sampled_at(sample, uuid) > sampled_at(before, uuid), uuid
        assert timeouts(source)["no_free_lane"] == 3
        for uuid in hung:  # one probe per poll, each domain alone
            await probed(libvirtd, uuid, asked)
            sample = await source.poll()
        assert not any(f.quarantined for f in sample.freshness.values())

    run(libvirtd, source, scenario)


def test_a_closed_connection_is_reopened_with_backoff(libvirtd: FakeLibvirtd) -> None:
    source = make_source()

    async def fails(reason: str, message: str = "") -> None:
        with pytest.raises(SourceError) as raised:
            await source.poll()
        assert raised.value.reason == reason
        assert message in str(raised.value)

    async def scenario() -> None:
        before = await source.poll()
        assert source.health().connects_total == 1
        libvirtd.stop()  # the close callback tells the source
        attempts = libvirtd.open_attempts

        await fails("connect", "cannot connect")
        assert libvirtd.open_attempts == attempts + 1
        await fails("connect", "next attempt in 1 s")
        assert libvirtd.open_attempts == attempts + 1  # not tried again before the backoff
        await asyncio.sleep(1.05)
        await fails("connect", "cannot connect")
        await fails("connect", "next attempt in 2 s")  # doubled
        assert libvirtd.open_attempts == attempts + 2

        libvirtd.start()
        await fails("connect", "next attempt in")  # up again, but the backoff holds
        assert libvirtd.open_attempts == attempts + 2
        await asyncio.sleep(2.05)
        sample = await source.poll()
        assert source.health().connects_total == 2
        for uuid in libvirtd.uuids:  # the stats lanes reopened their connections too
            assert sampled_at(sample, uuid) > sampled_at(before, uuid), uuid

    run(libvirtd, source, scenario)


def test_a_dead_connection_without_close_callback_is_reopened(libvirtd: FakeLibvirtd) -> None:
    source = make_source()

    async def scenario() -> None:
        before = await source.poll()
        libvirtd.stop(close_callbacks=False)  # the close event was missed
        libvirtd.start()
        # The listing fails on the dead connection; isAlive() says it is dead, so it is dropped.
        with pytest.raises(SourceError) as raised:
            await source.poll()
        assert raised.value.reason == "list"
        assert source.health().connects_total == 1
        sample = await source.poll()  # reopened at once: opening it never failed
        assert source.health().connects_total == 2
        for uuid in libvirtd.uuids:
            assert sampled_at(sample, uuid) > sampled_at(before, uuid), uuid

    run(libvirtd, source, scenario)


def test_a_domain_destroyed_while_its_chunk_is_isolated_costs_nothing(
    libvirtd: FakeLibvirtd,
) -> None:
    source = make_source()
    hung = libvirtd.uuids[HUNG_AT]
    victim = libvirtd.uuids[HUNG_AT + 3]  # the same chunk: uuids[1::3]

    async def scenario() -> None:
        before = await source.poll()
        libvirtd.hang(hung)
        poll = asyncio.create_task(source.poll())
        while libvirtd.vms[hung].in_monitor_since is None:
            await asyncio.sleep(0.01)
        libvirtd.destroy(victim)
        sample = await poll
        assert sample.freshness[hung].quarantined
        assert timeouts(source) == {"stats": 1}
        for uuid in libvirtd.uuids:  # the victim is no longer listed by the fake
            if uuid != hung:
                assert sampled_at(sample, uuid) > sampled_at(before, uuid), uuid
        sample = await source.poll()
        assert victim not in sample.freshness

    run(libvirtd, source, scenario)


# -- the fake against the real libvirt-python ------------------------------------------------


def test_the_fake_names_only_what_libvirt_python_has() -> None:
    libvirt = pytest.importorskip("libvirt")
    module = fake_libvirt.LibvirtModule
    for name in dir(module):
        if name.startswith("_") or name == "libvirtError":
            continue
        real = getattr(libvirt, name)
        fake = getattr(module, name)
        if isinstance(fake, int):
            assert fake == real, name
        else:
            assert_same_parameters(fake, real, name)
    pairs = (
        (fake_libvirt.FakeConnect, libvirt.virConnect),
        (fake_libvirt.FakeDomain, libvirt.virDomain),
        (fake_libvirt.libvirtError, libvirt.libvirtError),
    )
    for fake_class, real_class in pairs:
        for name, member in vars(fake_class).items():
            if name.startswith("_") or not callable(member):
                continue
            if fake_class is fake_libvirt.FakeConnect and name in ("check", "lose"):
                continue  # the daemon's side, not libvirt's
            assert_same_parameters(member, getattr(real_class, name), name)
    for name, value in vars(fake_libvirt).items():
        if name.startswith("VIR_"):
            assert getattr(libvirt, name) == value, name


def assert_same_parameters(fake: Any, real: Any, name: str) -> None:
    def names(fn: Any) -> list[str]:
        return [p for p in inspect.signature(fn).parameters if p != "self"]

    assert names(fake) == names(real), name


def test_the_fake_raises_attribute_error_for_what_it_lacks() -> None:
    daemon = FakeLibvirtd.lab(1)
    conn = daemon.module.openReadOnly("qemu:///system")
    for obj, name in (
        (daemon.module, "open"),
        (daemon.module, "VIR_DOMAIN_EVENT_ID_REBOOT"),
        (conn, "lookupByUUIDString"),
        (conn.listAllDomains(0)[0], "state"),
    ):
        with pytest.raises(AttributeError):
            getattr(obj, name)


def test_a_busy_job_answers_what_the_lab_recorded_of_a_stopped_qemu() -> None:
    full = by_name(load_raw(), "hc-lab-b1")["stats"]
    stopped = by_name(
        load_raw(Path(FIXTURES / "libvirt-lab-9.0-qemu-7.2-tcg-b1-stopped.json")), "hc-lab-b1"
    )["stats"]
    assert set(fake_libvirt.without_monitor(full)) == set(stopped)
