"""Jitter across a fleet: each host's tick offset (stable per identity, uniform over many), the
writer's ticks on its own grid, and full-jitter retry delays."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

from aiohttp import web

from hostcollector.config import RemoteWriteConfig, RemoteWriteEndpointConfig
from hostcollector.model import Snapshot
from hostcollector.remote_write.schedule import (
    BACKOFF_CAP_SECONDS,
    backoff_ceiling,
    host_offset_ms,
    next_tick_ms,
    retry_delay,
)
from hostcollector.remote_write.writer import RemoteWriter
from tests.served import serve
from tests.snapshots import snapshot_from_raw


def test_a_host_offset_is_stable_and_within_the_interval() -> None:
    first = host_offset_ms("hv-0042.fra1.example.net", 15)
    assert first == host_offset_ms("hv-0042.fra1.example.net", 15)  # same across restarts
    assert 0 <= first < 15_000
    assert host_offset_ms("hv-0043.fra1.example.net", 15) != first
    # a known value: sha256, not Python's per-process salted hash()
    assert host_offset_ms("hv-0042.fra1.example.net", 15) == 9_649


def test_offsets_of_many_hosts_cover_the_interval_evenly() -> None:
    names = [f"hv-{i:04d}.fra1.example.net" for i in range(1000)]
    offsets = [host_offset_ms(name, 15) for name in names]
    tenths = [0] * 10
    for offset in offsets:
        tenths[offset * 10 // 15_000] += 1
    assert all(50 <= count <= 150 for count in tenths), tenths
    assert len(set(offsets)) > 950  # ms resolution: hosts rarely share an instant


def test_next_tick_is_on_the_host_grid_and_strictly_later() -> None:
    offset = 2_345
    for now in (1_795_929_820.0, 1_795_929_822.345, 1_795_929_822.3449, 1_795_929_837.0001):
        tick = next_tick_ms(now, 15, offset)
        assert (tick - offset) % 15_000 == 0
        assert now * 1000 < tick <= now * 1000 + 15_000
    # exactly on a tick (x.5 is exact in binary): the next one
    assert next_tick_ms(1_795_929_812.5, 15, 2_500) == 1_795_929_827_500


class RecordingWriter(RemoteWriter):
    """The real writer; each tick also notes when it ran and the timestamp it was given."""

    def __init__(self, config: RemoteWriteConfig, snapshot: Snapshot, identity: str) -> None:
        super().__init__(config, lambda: snapshot, identity=identity)
        self.ticks: list[tuple[float, int]] = []

    async def tick(self, snapshot: Snapshot, timestamp_ms: int) -> None:
        self.ticks.append((time.time(), timestamp_ms))
        await super().tick(snapshot, timestamp_ms)


def test_writers_tick_at_their_own_offsets(tmp_path: Path) -> None:
    interval = 0.4
    snapshot = snapshot_from_raw()
    config = RemoteWriteConfig(interval_seconds=interval, queue_dir=str(tmp_path), endpoints=())
    identities = ["hv-a", "hv-b", "hv-c"]

    async def run() -> list[RecordingWriter]:
        writers = [RecordingWriter(config, snapshot, name) for name in identities]
        for writer in writers:
            writer.start()
        await asyncio.sleep(interval * 5.5)
        for writer in writers:
            await writer.close()
        return writers

    writers = asyncio.run(run())
    assert len({w.offset_ms for w in writers}) == 3  # three phases, not one shared instant
    for writer in writers:
        assert writer.offset_ms == host_offset_ms(writer.identity, interval)
        assert len(writer.ticks) >= 4, writer.ticks
        stamps = [stamp for _, stamp in writer.ticks]
        # the tick's own timestamp, on this host's grid, evenly spaced
        assert all((stamp - writer.offset_ms) % 400 == 0 for stamp in stamps), stamps
        assert all(b - a == 400 for a, b in itertools.pairwise(stamps)), stamps
        # and it ran at that instant (generous: a loaded CI machine)
        for ran_at, stamp in writer.ticks:
            assert -0.005 <= ran_at - stamp / 1000 < 0.2, (ran_at, stamp)


def test_full_jitter_delays_stay_within_the_ceiling_and_vary() -> None:
    uniform = random.Random(12)
    for failures in (1, 2, 3, 6, 7, 12, 100):
        ceiling = backoff_ceiling(failures)
        delays = [retry_delay(failures, uniform=uniform) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 150
        # spread over the window, not bunched at one end
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9
    assert [backoff_ceiling(n) for n in (1, 2, 3, 7, 8, 100)] == [0.5, 1, 2, 30, 30, 30]
    assert backoff_ceiling(10**6) == BACKOFF_CAP_SECONDS


def test_retry_after_is_a_floor_under_the_jitter() -> None:
    uniform = random.Random(7)
    delays = [retry_delay(3, retry_after=20.0, uniform=uniform) for _ in range(200)]
    assert all(20.0 <= d <= 22.0 for d in delays) and len(set(delays)) > 150


def test_without_jitter_the_backoff_is_the_old_doubling() -> None:
    assert [retry_delay(n, jitter=False) for n in (1, 2, 3, 4, 7, 8)] == [0.5, 1, 2, 4, 30, 30]
    assert retry_delay(1, retry_after=20.0, jitter=False) == 20.0


def test_a_sender_retries_a_failing_store_after_jittered_delays(tmp_path: Path) -> None:
    """Over real HTTP: the store answers 503 three times, then takes the batch. The waits
    between tries stay under each doubling ceiling, and are not the fixed 0.5, 1, 2 s of old."""
    arrivals: list[float] = []

    async def flaky(request: web.Request) -> web.Response:
        await request.read()
        arrivals.append(time.monotonic())
        if len(arrivals) <= 3:
            return web.Response(status=503, text="down\n")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/write", flaky)
    snapshot = snapshot_from_raw()
    with serve(app) as url:
        config = RemoteWriteConfig(
            queue_dir=str(tmp_path),
            endpoints=(RemoteWriteEndpointConfig(name="store", url=f"{url}/write"),),
        )

        async def run() -> int:
            writer = RemoteWriter(config, lambda: snapshot, identity="hv-a")
            try:
                await writer.tick(snapshot, 1000)
                deadline = time.monotonic() + 10
                while writer.senders[0].queue.batches and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                return writer.senders[0].queue.batches
            finally:
                await writer.close()

        left = asyncio.run(run())
    assert left == 0 and len(arrivals) == 4
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0 <= gap <= ceiling + 0.2 for gap, ceiling in zip(gaps, (0.5, 1, 2), strict=True))
    assert not all(abs(gap - old) < 0.03 for gap, old in zip(gaps, (0.5, 1, 2), strict=True))
