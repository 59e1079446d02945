"""Run blocking library calls off the event loop, with a deadline, never queued behind hung ones.

A Python thread blocked in libvirt or NVML cannot be cancelled: when the deadline passes we stop
waiting and the thread is abandoned. A lane has a fixed number of threads; while they are all
taken (by running or abandoned calls), further calls are refused at once instead of piling up in
the executor's queue behind a call that may never return. The threads are daemons: the
interpreter's exit must not wait for an abandoned one (concurrent.futures' ThreadPoolExecutor
joins its workers at exit, so a hung libvirtd would hold a stopping daemon until systemd's
TimeoutStopSec killed it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from hostcollector.errors import SourceError

T = TypeVar("T")
log = logging.getLogger(__name__)

_Work = tuple["concurrent.futures.Future[Any]", Callable[[], Any]]


class _DaemonThreads(concurrent.futures.Executor):
    """A fixed set of daemon threads taking calls from one queue (what the lane needs of
    ThreadPoolExecutor, without its join at interpreter exit)."""

    def __init__(self, workers: int, name: str) -> None:
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(  # type: ignore[override]
        self, fn: Callable[[], T], /
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._work.put((future, fn))
        return future

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting coroutine, as the pool does
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


class BlockingLane:
    def __init__(self, name: str, threads: int = 1) -> None:
        self._name = name
        self._threads = threads
        self._executor = _DaemonThreads(threads, f"hc-{name}")
        self._in_flight: set[asyncio.Future[Any]] = set()

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
        if self._in_flight:
            log.warning(
                "%s: %d call(s) still hung in a backend at shutdown; not waiting for them",
                self._name,
                len(self._in_flight),
            )
        self._executor.shutdown(wait=False, cancel_futures=True)
