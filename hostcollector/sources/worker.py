"""Run a blocking library call off the event loop, with a deadline, never queued behind a hung one.

A Python thread blocked in libvirt or NVML cannot be cancelled: when the deadline passes we stop
waiting and the thread is abandoned. While it is still stuck, further calls are refused at once
instead of piling up behind it in the executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

from hostcollector.errors import SourceError

T = TypeVar("T")


class BlockingWorker:
    def __init__(self, name: str) -> None:
        self._name = name
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"hc-{name}"
        )
        self._in_flight: asyncio.Future[Any] | None = None

    @property
    def busy(self) -> bool:
        return self._in_flight is not None and not self._in_flight.done()

    async def call(self, fn: Callable[[], T], timeout: float) -> T:
        if self.busy:
            raise SourceError(
                "busy", f"{self._name}: the previous call is still running; not queueing another"
            )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn)
        self._in_flight = future
        try:
            # shield: a timeout must not cancel the future's bookkeeping, only our wait.
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            # Retrieve the abandoned call's eventual exception so asyncio does not log it.
            future.add_done_callback(_swallow)
            raise SourceError(
                "timeout", f"{self._name}: no answer within {timeout:g} s; abandoned the call"
            ) from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _swallow(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
