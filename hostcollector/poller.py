"""One task per source: poll on a fixed schedule, never overlapping, keep the up/down state.

A poll that fails marks the source down (one log line on the change, not one per poll); the
daemon and every other source carry on. A poll that takes longer than the interval skips the
ticks it overran instead of queueing them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Generic, TypeVar, cast

from hostcollector.errors import SourceDegraded, SourceError
from hostcollector.model import SourceStatus
from hostcollector.selfmetrics import Sample, source_samples

log = logging.getLogger(__name__)

T = TypeVar("T")


class Poller(Generic[T]):
    def __init__(
        self,
        name: str,
        poll: Callable[[], Awaitable[T]],
        interval_seconds: float,
        on_result: Callable[[str, T | None], None],
    ) -> None:
        self.name = name
        self._poll = poll
        self._interval = interval_seconds
        self._on_result = on_result
        self._up: bool | None = None  # None until the first poll ends
        self._polls = 0
        self._errors: Counter[str] = Counter()
        self._last_duration: float | None = None
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._last_reason: str | None = None
        self.in_flight = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            await self.poll_once()
            next_tick += self._interval
            now = loop.time()
            if next_tick < now:
                missed = int((now - next_tick) // self._interval) + 1
                log.warning(
                    "%s: poll took longer than the %g s interval; skipping %d tick(s)",
                    self.name,
                    self._interval,
                    missed,
                    extra={"source": self.name},
                )
                next_tick += missed * self._interval
            await asyncio.sleep(next_tick - now)

    async def poll_once(self) -> T | None:
        started = time.monotonic()
        result: T | None = None
        self.in_flight = True
        try:
            result = await self._poll()
        except SourceDegraded as exc:
            # Down, and still a result: the part its backend did not have to give.
            self._failed(exc.reason, str(exc))
            result = cast(T, exc.result)
        except SourceError as exc:
            self._failed(exc.reason, str(exc))
        except Exception as exc:  # a bug in one source must not stop the daemon
            log.exception(
                "%s: unexpected error while polling", self.name, extra={"source": self.name}
            )
            self._failed("internal", f"{type(exc).__name__}: {exc}")
        else:
            if self._up is False:
                log.info("%s: source is up again", self.name, extra={"source": self.name})
            self._up = True
            self._last_error = None
            self._last_reason = None
            self._last_success = time.time()
        self._polls += 1
        self._last_duration = time.monotonic() - started
        self.in_flight = False
        self._on_result(self.name, result)
        return result

    def _failed(self, reason: str, message: str) -> None:
        self._errors[reason] += 1
        # One line when the source goes down, and one when the kind of failure changes; not one
        # per poll, and not for a message that only differs in its details (a backoff countdown).
        if self._up is not False or reason != self._last_reason:
            log.warning("%s: source is down: %s", self.name, message, extra={"source": self.name})
        self._up = False
        self._last_error = message
        self._last_reason = reason

    def status(self) -> SourceStatus:
        return SourceStatus(
            name=self.name,
            up=bool(self._up),
            polls_total=self._polls,
            last_duration_seconds=self._last_duration,
            last_success_timestamp_seconds=self._last_success,
            last_error=self._last_error,
            errors_by_reason=tuple(sorted(self._errors.items())),
        )

    def collect(self) -> Iterator[Sample]:
        return source_samples(self.status())
