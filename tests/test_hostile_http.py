"""The HTTP server against peers that hold connections: the bound evicts the connection that
has waited longest without a request, never one being answered; resource errors from accept()
are logged once a minute; an address in use is a clear error, not a traceback."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from hostcollector.server import ConnectionGuard, ResourceErrorLog
from tests.served import eventually, get, serve


def test_the_bound_evicts_the_longest_waiting_never_a_request_in_progress() -> None:
    release = threading.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.to_thread(release.wait, 10)
        return web.Response(text="answered")

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="fast")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    guard = ConnectionGuard(max_connections=3)
    with serve(app, guard=guard) as url:
        port = int(url.rsplit(":", 1)[1])
        answer: dict[str, int] = {}
        in_progress = threading.Thread(
            target=lambda: answer.update(status=get(f"{url}/slow").status)
        )
        in_progress.start()
        eventually("the slow request in progress", lambda: len(guard._busy) == 1)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        idle[0].sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n")  # never finished
        eventually("both accepted", lambda: guard.open == 3)
        # A fourth connection: the oldest waiting one goes, the request in progress stays.
        assert get(f"{url}/fast").body == b"fast"
        idle[0].settimeout(5)
        assert idle[0].recv(100) == b""  # closed by the server
        release.set()
        in_progress.join(10)
        for sock in idle:
            sock.close()
    assert answer == {"status": 200}
    assert guard.closed_total["evicted"] >= 1 and guard.closed_total["refused"] == 0


def test_a_new_connection_is_refused_only_when_every_one_is_busy() -> None:
    guard = ConnectionGuard(max_connections=1)
    busy = object()
    assert guard.admit(busy)  # type: ignore[arg-type]
    guard.request_started(busy)  # type: ignore[arg-type]
    assert not guard.admit(object())  # type: ignore[arg-type]
    assert guard.closed_total == {"refused": 1}
    guard.request_done(busy)  # type: ignore[arg-type]
    assert guard.open == 1


def test_resource_errors_from_accept_are_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = ConnectionGuard(max_connections=8)
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(ResourceErrorLog(guard))
        with caplog.at_level(logging.ERROR):
            for _ in range(500):  # asyncio retries accept() every second while out of fds
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    }
                )
    finally:
        loop.close()
    records = [r for r in caplog.records if r.name == "hostcollector.server"]
    assert len(records) == 1
    assert records[0].exc_info is None  # no traceback
    assert "Too many open files" in records[0].getMessage()
    assert guard.closed_total["accept_failed"] == 500


def test_an_address_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {
            "listen": {"address": "127.0.0.1", "port": port},
            "sources": {name: {"enabled": False} for name in ("libvirt", "sriov", "nvml")},
        }
        path = tmp_path / "hostcollector.yml"
        path.write_text(yaml.safe_dump(config))
        run = subprocess.run(
            [sys.executable, "-m", "hostcollector", "run", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in run.stderr
    assert "Traceback" not in run.stderr and "listening" not in run.stderr
