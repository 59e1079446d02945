"""An aiohttp application served for real (a TCP port, a thread with its own loop), so tests
talk to it over HTTP like any client: urllib, curl, tmux-driven `hostcollector top`."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hostcollector.server import ConnectionGuard, GuardedSite, make_runner


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@contextmanager
def serve(
    app: web.Application,
    ssl_context: ssl.SSLContext | None = None,
    guard: ConnectionGuard | None = None,
    idle_timeout_seconds: float = 15.0,
) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:PORT); the app's startup and cleanup run. With
    `guard`, served as the daemon serves (hostcollector.server: connection bound, timeouts)."""
    loop = asyncio.new_event_loop()
    if guard is None:
        runner = web.AppRunner(app, access_log=None)
    else:
        runner = make_runner(app, guard, idle_timeout_seconds)
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            await runner.setup()
            site: web.BaseSite
            if guard is None:
                site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            else:
                site = GuardedSite(runner, "127.0.0.1", 0, guard, ssl_context=ssl_context)
            await site.start()
            holder["port"] = runner.addresses[0][1]

        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="served-app", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the app did not start")
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{holder['port']}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def get(
    url: str,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    context: ssl.SSLContext | None = None,
) -> Reply:
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


def eventually(what: str, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for `predicate`: a watched file is re-read in a thread, a moment after it changed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
