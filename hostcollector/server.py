"""The listening side of the HTTP server, built to stay up when its peers misbehave.

A scraper that opens connections and never finishes its request headers (slowloris), or simply
very many of them, must not starve the real scrapes nor run the process out of descriptors:

- a connection has `listen.idle_timeout_seconds` from being accepted, and from each response,
  to deliver a complete request's headers, or it is closed (aiohttp's keep-alive timer, which since 3.14
  also runs before the first request and while headers are still arriving: the tests hold it
  to that); a TLS handshake has TLS_HANDSHAKE_TIMEOUT_SECONDS;
- at most `listen.max_connections` are open at once, well below the descriptor limit (raised to its
  hard limit at start; the unit sets LimitNOFILE). At the bound, a new connection closes the
  one that has waited longest without a request in progress: a real scrape finishes its
  headers within milliseconds and so is never the oldest waiting, while connections that
  never finish go first;
- the event loop's own complaints about resources (accept() failing with EMFILE) are logged
  once a minute, not with a traceback each time.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import resource
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from hostcollector import metrics
from hostcollector.config import ListenConfig
from hostcollector.selfmetrics import Sample, counts_by_reason

log = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT_SECONDS = 10.0
# Descriptors kept for everything else: libvirt's connections, netlink, NVML, queue files.
RESERVED_DESCRIPTORS = 256
RESOURCE_LOG_INTERVAL_SECONDS = 60.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ListenError(Exception):
    """The address cannot be listened on (in use, not this host's, not permitted)."""


class ConnectionGuard:
    """Counts the server's connections and closes the longest-waiting one to admit a new one
    past the bound."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        # Transports with no request in progress, the longest waiting first.
        self._waiting: collections.OrderedDict[asyncio.BaseTransport, None] = (
            collections.OrderedDict()
        )
        self._busy: set[asyncio.BaseTransport] = set()
        self.closed_total: collections.Counter[str] = collections.Counter()

    @property
    def open(self) -> int:
        return len(self._waiting) + len(self._busy)

    def collect(self) -> Iterator[Sample]:
        yield Sample(metrics.HTTP_CONNECTIONS, "", self.open)
        yield from counts_by_reason(
            metrics.HTTP_CONNECTIONS_CLOSED_TOTAL, self.closed_total.items()
        )

    def protocol_factory(
        self, make: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedProtocol(self, make())

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        if self.open >= self.max_connections:
            if not self._waiting:
                self.closed_total["refused"] += 1
                return False
            oldest, _ = self._waiting.popitem(last=False)
            self.closed_total["evicted"] += 1
            oldest.close()
        self._waiting[transport] = None
        return True

    def release(self, transport: asyncio.BaseTransport) -> None:
        self._waiting.pop(transport, None)
        self._busy.discard(transport)

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        # Only a connection the guard admitted (and has not evicted) becomes busy.
        if transport is not None and transport in self._waiting:
            del self._waiting[transport]
            self._busy.add(transport)

    def request_done(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and transport in self._busy:
            self._busy.discard(transport)
            self._waiting[transport] = None

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        self.request_started(transport)
        try:
            return await handler(request)
        finally:
            self.request_done(transport)


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard told when it opens and closes."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.BaseProtocol) -> None:
        self._guard = guard
        self._inner: Any = inner
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(transport):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._transport is None:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._guard.release(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite with the guard in front of every connection."""

    __slots__ = ("_bound", "_guard", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._guard = host, port, guard
        self._bound: tuple[str, int] | None = None

    @property
    def name(self) -> str:
        host, port = self._bound or (self._host, self._port)
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    @property
    def address(self) -> tuple[str, int]:
        assert self._bound is not None, "not started"
        return self._bound

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_SECONDS if self._ssl_context else None,
            backlog=self._backlog,
            reuse_address=True,
        )
        self._bound = self._server.sockets[0].getsockname()[:2]


def make_runner(
    app: web.Application, guard: ConnectionGuard, idle_timeout_seconds: float
) -> web.AppRunner:
    """The app's runner with the guard's middleware first and the idle timeout set; the app
    must not have started yet (its middleware list is frozen then)."""
    app.middlewares.insert(0, guard.middleware)
    return web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout_seconds)


def connection_limit(wanted: int) -> int:
    """`wanted`, or fewer if the descriptor limit leaves less room; the soft limit is raised to
    the hard one first (a Python process starts at the soft 1,024 outside the unit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(int(soft) - RESERVED_DESCRIPTORS, 16)
    if room < wanted:
        log.warning(
            "the descriptor limit (%d) allows %d HTTP connections, not %d", soft, room, wanted
        )
    return min(wanted, room)


class ResourceErrorLog:
    """A loop exception handler: resource errors from accept() once a minute with a count,
    everything else to the default handler."""

    def __init__(self, guard: ConnectionGuard | None = None) -> None:
        self._guard = guard
        self._last = float("-inf")
        self._suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS):
            loop.default_exception_handler(context)
            return
        if self._guard is not None:
            self._guard.closed_total["accept_failed"] += 1
        now = time.monotonic()
        if now - self._last < RESOURCE_LOG_INTERVAL_SECONDS:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        log.error("%s: %s%s", context.get("message", "resource error"), exc.strerror, more)
        self._last, self._suppressed = now, 0


async def serve_until_stopped(
    app: web.Application,
    listen: ListenConfig,
    *,
    ssl_context: ssl.SSLContext | None,
    guard: ConnectionGuard,
    started: Callable[[str], None],
) -> None:
    """Serve until SIGTERM or SIGINT, then clean up (the app's cleanup context stops polling
    and remote write). ListenError if the address cannot be listened on."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(ResourceErrorLog(guard))
    runner = make_runner(app, guard, listen.idle_timeout_seconds)
    await runner.setup()
    try:
        site = GuardedSite(runner, listen.address, listen.port, guard, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            where = f"{listen.address}:{listen.port}"
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot listen on {where}: {reason}") from exc
        started(site.name)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
