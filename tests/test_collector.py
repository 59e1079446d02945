"""The snapshot across source failures: last good values kept, aged, then dropped."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from hostcollector.collector import Collector
from hostcollector.config import Config, LibvirtConfig, SourcesConfig
from hostcollector.errors import SourceError
from hostcollector.model import LibvirtSample, SriovSample, VmFreshness
from tests.replay import RecordedLibvirt


class FlakyLibvirt(RecordedLibvirt):
    """Answers with a recording sampled `age` seconds ago, or fails."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    async def poll(self) -> LibvirtSample:
        self.polls += 1
        if self.fail_next:
            raise SourceError("connect", "libvirtd is gone")
        return self.sample

    def sampled(self, at: float) -> None:
        uuids = [d.uuid for d in self.sample.domains]
        self.sample = dataclasses.replace(
            self.sample, freshness={u: VmFreshness(at) for u in uuids}, listed_at=at
        )


class QuickSriov:
    """A source that answers at once, with no VFs."""

    name = "sriov"
    interval_seconds = 3600.0

    async def poll(self) -> SriovSample:
        return SriovSample((), ())

    async def close(self) -> None:
        pass


def test_a_failed_poll_keeps_last_good_values_until_max_age() -> None:
    config = Config(sources=SourcesConfig(libvirt=LibvirtConfig(max_sample_age_seconds=60)))
    source = FlakyLibvirt()

    async def go() -> None:
        collector = Collector(config, sources={"libvirt": source})
        now = time.time()
        source.sampled(now - 1)
        await collector.poll_all_once()
        snapshot = collector.exposition.snapshot
        assert len(snapshot.vms) == 4 and snapshot.sources[0].up
        assert all(
            vm.sample_age_seconds is not None and vm.sample_age_seconds < 5 for vm in snapshot.vms
        )

        source.fail_next = True
        source.sampled(now - 30)  # what the collector holds is 30 s old by now
        collector.latest = dataclasses.replace(collector.latest, libvirt=source.sample)
        await collector.poll_all_once()
        snapshot = collector.exposition.snapshot
        assert not snapshot.sources[0].up
        assert len(snapshot.vms) == 4  # still served, with their age
        assert all(
            vm.sample_age_seconds is not None and vm.sample_age_seconds >= 30 for vm in snapshot.vms
        )

        source.sampled(now - 61)
        collector.latest = dataclasses.replace(collector.latest, libvirt=source.sample)
        await collector.poll_all_once()
        assert collector.exposition.snapshot.vms == ()  # too old: gone rather than lie

        await collector.stop()

    asyncio.run(go())


def test_sources_finishing_together_cost_one_render_off_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    import hostcollector.collector as collector_module

    renders: list[str] = []
    real_render = collector_module.render

    def counting_render(snapshot, **kwargs):  # type: ignore[no-untyped-def]
        renders.append(threading.current_thread().name)
        return real_render(snapshot, **kwargs)

    monkeypatch.setattr(collector_module, "render", counting_render)
    first, second = FlakyLibvirt(), QuickSriov()

    async def go() -> None:
        collector = Collector(Config(), sources={"libvirt": first, "sriov": second})
        renders.clear()
        await collector.pollers["libvirt"].poll_once()
        await collector.pollers["sriov"].poll_once()
        assert renders == []  # nothing rendered on the loop
        await asyncio.sleep(collector_module.RENDER_COALESCE_SECONDS + 0.3)
        assert len(renders) == 1 and renders[0].startswith("hc-render")
        assert collector.exposition.snapshot.sources[0].polls_total == 1
        await collector.stop()

    asyncio.run(go())


def test_a_render_waits_for_a_poll_still_running(monkeypatch: pytest.MonkeyPatch) -> None:
    import hostcollector.collector as collector_module

    renders: list[float] = []
    real_render = collector_module.render

    def counting_render(snapshot, **kwargs):  # type: ignore[no-untyped-def]
        renders.append(time.monotonic())
        return real_render(snapshot, **kwargs)

    monkeypatch.setattr(collector_module, "render", counting_render)
    quick, slow = QuickSriov(), FlakyLibvirt()
    slow_poll = slow.poll

    async def slower() -> LibvirtSample:
        await asyncio.sleep(0.8)  # like libvirt at a few hundred domains, next to NVML's ms
        return await slow_poll()

    slow.poll = slower  # type: ignore[method-assign]

    async def go() -> None:
        collector = Collector(Config(), sources={"sriov": quick, "libvirt": slow})
        renders.clear()
        await asyncio.gather(*(p.poll_once() for p in collector.pollers.values()))
        await asyncio.sleep(collector_module.RENDER_COALESCE_SECONDS + 0.3)
        assert len(renders) == 1  # not one for the quick source and one for the slow one
        assert {s.name: s.polls_total for s in collector.exposition.snapshot.sources} == {
            "sriov": 1,
            "libvirt": 1,
        }
        await collector.stop()

    asyncio.run(go())
