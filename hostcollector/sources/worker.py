"""Run blocking library calls off the event loop, with a deadline, never queued behind hung ones.

A Python thread blocked in libvirt or NVML cannot be cancelled: when the deadline passes we stop
waiting and the thread is abandoned. A lane has a fixed number of threads; while they are all
taken (by running or abandoned calls), further calls are refused at once instead of piling up in
the executor's queue behind a call that may never return.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from hostcollector.errors import SourceError

T = TypeVar("T")

_LANES: weakref.WeakSet[BlockingLane] = weakref.WeakSet()


def calls_still_running() -> int:
    """Calls of every lane that have not returned, abandoned ones included. At exit, Python
    joins the executors' threads: one stuck in a hung libvirt call would hold the process."""
    return sum(len(lane._in_flight) for lane in _LANES)


class BlockingLane:
    def __init__(self, name: str, threads: int = 1) -> None:
        self._name = name
        self._threads = threads
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"hc-{name}"
        )
        self._in_flight: set[asyncio.Future[Any]] = set()
        _LANES.add(self)

    @property
    def free(self) -> int:
        return self._threads - len(self._in_flight)

    @property
    def busy(self) -> bool:
        return self.free <= 0

    async def call(self, fn: Callable[[], T], timeout: float) -> T:
        if self.busy:
            raise SourceError(
                "busy",
                f"{self._name}: all {self._threads} call(s) still running; not queueing another",
            )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn)
        self._in_flight.add(future)
        future.add_done_callback(self._finished)
        try:
            # shield: a timeout ends our wait, not the call (which cannot be stopped anyway).
            return await asyncio.wait_for(asyncio.shield(future), max(timeout, 0.0))
        except TimeoutError:
            raise SourceError(
                "timeout", f"{self._name}: no answer within {timeout:.3g} s; abandoned the call"
            ) from None

    def _finished(self, future: asyncio.Future[Any]) -> None:
        self._in_flight.discard(future)
        # A late result is dropped on purpose; retrieve its exception so asyncio does not log it.
        if not future.cancelled():
            future.exception()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
