"""The snapshot across source failures: last good values kept, aged, then dropped."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from hostcollector.collector import Collector
from hostcollector.config import Config, LibvirtConfig, SourcesConfig
from hostcollector.errors import SourceError
from hostcollector.model import LibvirtSample, VmFreshness
from tests.test_http import RecordedLibvirt


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
        collector.latest["libvirt"] = source.sample
        await collector.poll_all_once()
        snapshot = collector.exposition.snapshot
        assert not snapshot.sources[0].up
        assert len(snapshot.vms) == 4  # still served, with their age
        assert all(
            vm.sample_age_seconds is not None and vm.sample_age_seconds >= 30 for vm in snapshot.vms
        )

        source.sampled(now - 61)
        collector.latest["libvirt"] = source.sample
        await collector.poll_all_once()
        assert collector.exposition.snapshot.vms == ()  # too old: gone rather than lie

        await collector.stop()

    asyncio.run(go())
