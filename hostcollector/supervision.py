"""The daemon's side of its systemd unit (Type=notify, WatchdogSec=): READY=1 once it serves
what /-/ready calls ready, WATCHDOG=1 while its own scheduling is alive, STOPPING=1 on the way
out. Hooked into the app's lifecycle as a cleanup context (cli._run)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from hostcollector.collector import Collector
from hostcollector.sd_notify import Notifier

log = logging.getLogger(__name__)

# How often readiness is looked at until it is reached: the first answers take seconds, so a
# tenth of a second late is nothing, and it costs nothing once ready.
READY_CHECK_SECONDS = 0.1


class Supervision:
    def __init__(self, collector: Collector, notifier: Notifier) -> None:
        self._collector = collector
        self._notifier = notifier
        self._listening = asyncio.Event()
        self._url = ""

    def listening(self, url: str) -> None:
        """The server is bound and accepting at `url` (serve_until_stopped's `started`)."""
        self._url = url
        self._listening.set()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """For app.cleanup_ctx, after the collector's own: pings start with the polls, and
        STOPPING=1 goes out before the collector closes its sources (which can take a while)."""
        tasks = [asyncio.create_task(self._announce_ready(), name="sd-ready")]
        if self._notifier.enabled and self._notifier.watchdog_seconds is not None:
            tasks.append(
                asyncio.create_task(
                    self._watchdog(self._notifier.watchdog_seconds / 2), name="sd-watchdog"
                )
            )
        try:
            yield
        finally:
            self._notifier.stopping()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._notifier.close()

    async def _announce_ready(self) -> None:
        await self._listening.wait()
        shown: tuple[str, ...] = ()
        while waiting := self._collector.unanswered_sources():
            if waiting != shown:
                shown = waiting
                self._notifier.status(f"listening on {self._url}; waiting for {', '.join(waiting)}")
            await asyncio.sleep(READY_CHECK_SECONDS)
        sources = ", ".join(
            f"{s.name} {'up' if s.up else 'down'}"
            for s in self._collector.exposition.snapshot.sources
        )
        status = f"serving {self._url}; sources: {sources or 'none'}"
        log.info("ready: %s", status)
        self._notifier.ready(status)

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every `interval` from the event loop, while every poll task runs.

        Sent from the loop so that a blocked loop (a synchronous call or a CPU-bound bug on it)
        stops the pings; and only while the poll tasks live, since without them the daemon
        would answer scrapes with ever older values. Either way systemd kills and restarts it.

        A hung libvirt call does not stop them, on purpose: libvirt's calls run in worker
        threads under their own deadlines, so the poller gets its timeout, the VM is
        quarantined or the source served down, and every other source stays fresh. A restart
        would not unhang libvirtd; it would only lose that state and every source's freshness.
        """
        reported = False
        while True:
            if self._collector.scheduling_alive():
                self._notifier.watchdog()
            elif not reported:
                reported = True
                log.error("a poll task has ended: watchdog pings stop, for systemd to restart us")
                self._notifier.status("a poll task has ended; waiting for the watchdog")
            await asyncio.sleep(interval)
