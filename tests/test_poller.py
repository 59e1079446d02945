"""Poll scheduling, up/down state and the deadline on blocking calls."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading

import pytest

from hostcollector.errors import SourceError
from hostcollector.poller import Poller
from hostcollector.sources.worker import BlockingLane


def test_worker_abandons_a_hung_call_and_never_queues_behind_it() -> None:
    release = threading.Event()

    async def go() -> None:
        worker = BlockingLane("test")
        with pytest.raises(SourceError) as timeout:
            await worker.call(lambda: release.wait(10), timeout=0.05)
        assert timeout.value.reason == "timeout"
        # the stuck thread still runs: a second call is refused at once, not queued
        with pytest.raises(SourceError) as busy:
            await worker.call(lambda: 1, timeout=5)
        assert busy.value.reason == "busy"
        release.set()
        for _ in range(100):
            if not worker.busy:
                break
            await asyncio.sleep(0.01)
        assert await worker.call(lambda: 42, timeout=5) == 42
        worker.shutdown()

    asyncio.run(go())


def test_state_changes_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    outcomes = [
        SourceError("connect", "refused"),
        SourceError("connect", "refused"),
        "ok",
        ValueError("bug"),
    ]
    results: list[object] = []

    async def poll() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def go() -> Poller[str]:
        poller: Poller[str] = Poller(
            "fake", poll, 1.0, lambda _name, result: results.append(result)
        )
        for _ in range(4):
            await poller.poll_once()
        return poller

    with caplog.at_level(logging.INFO):
        poller = asyncio.run(go())
    assert results == [None, None, "ok", None]
    status = poller.status()
    assert not status.up
    assert status.polls_total == 4 and status.errors_total == 3
    assert dict(status.errors_by_reason) == {"connect": 2, "internal": 1}
    assert status.last_success_timestamp_seconds is not None
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("fake: source is down: refused") == 1
    assert "fake: source is up again" in messages
    assert sum("unexpected error" in m for m in messages) == 1


def test_run_keeps_a_fixed_rate_and_skips_overrun_ticks(caplog: pytest.LogCaptureFixture) -> None:
    starts: list[float] = []

    async def poll() -> None:
        starts.append(asyncio.get_running_loop().time())
        if len(starts) == 2:
            await asyncio.sleep(0.25)  # overruns 0.1 s ticks

    async def go() -> None:
        poller: Poller[None] = Poller("fake", poll, 0.1, lambda *_: None)
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(0.62)
        task.cancel()

    with caplog.at_level(logging.WARNING):
        asyncio.run(go())
    # polls at 0, 0.1 (runs to 0.35), then on the 0.1 grid again: 0.4, 0.5, 0.6
    assert 4 <= len(starts) <= 6
    assert any("took longer than the 0.1 s interval" in r.getMessage() for r in caplog.records)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.05 for gap in gaps)  # never back-to-back catch-up polls
