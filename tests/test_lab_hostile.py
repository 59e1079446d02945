"""The real daemon against hostile peers and a hostile environment: connections that never
finish their headers, and watched files replaced by a FIFO. Each of these froze or starved the
daemon before: the FIFO's open() blocked the event loop for good, and ~1,000 half-open
connections took every descriptor."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from tests.labkit import Daemon, one, require_lab, run_daemon, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TOKEN = "sre-token-for-hostile-tests"
HALF_OPEN = 1000


def half_open(port: int) -> socket.socket:
    """A connection that starts a request and never finishes its headers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: hostcollector\r\nX-Slow: ")
    return sock


def open_descriptors(daemon: Daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.process.pid}/fd"))


def healthy_within(daemon: Daemon, seconds: float) -> bool:
    try:
        return daemon.get("/healthz", timeout=seconds) == b"ok\n"
    except OSError:
        return False


def test_half_open_connections_do_not_starve_scrapes_or_descriptors(tmp_path: Path) -> None:
    require_lab()
    listen = {"max_connections": 64, "idle_timeout_seconds": 5.0}
    with run_daemon(tmp_path, listen_extra=listen) as daemon:
        port = int(daemon.url.rsplit(":", 1)[1])
        held: list[socket.socket] = []
        try:
            for _ in range(HALF_OPEN):
                held.append(half_open(port))
            # Every real scrape still answers while the half-open ones keep coming.
            for _ in range(10):
                held.append(half_open(port))
                samples = daemon.scrape()
            assert open_descriptors(daemon) < 64 + 100
            # Accepted from the kernel's backlog a moment after connect() returned.
            samples = wait_until(lambda: _evicted(daemon), 20, "every connection accepted")
            assert one(samples, "hostcollector_http_connections") <= 64
            assert open_descriptors(daemon) < 64 + 100
        finally:
            for sock in held:
                sock.close()
        log = daemon.log()
    assert "Traceback" not in log and "ERROR" not in log
    assert len(log) < 20_000  # nothing logged per connection


def test_headers_that_arrive_a_byte_a_second_are_cut_off(tmp_path: Path) -> None:
    require_lab()
    with run_daemon(tmp_path, listen_extra={"idle_timeout_seconds": 2.0}) as daemon:
        port = int(daemon.url.rsplit(":", 1)[1])
        sock = half_open(port)
        started = time.monotonic()
        closed_after = None
        try:
            while time.monotonic() - started < 15:
                try:
                    sock.sendall(b"x")
                    sock.settimeout(1.0)
                    if sock.recv(1024) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    continue
                except OSError:  # reset by the server
                    closed_after = time.monotonic() - started
                    break
        finally:
            sock.close()
    assert closed_after is not None, "a trickling request was never cut off"
    assert closed_after < 2.0 + 3.0


def test_a_fifo_in_place_of_a_watched_file_freezes_nothing(tmp_path: Path) -> None:
    require_lab()
    tokens, mapping = tmp_path / "tokens.yml", tmp_path / "tenants.json"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(f"tokens:\n  - {{name: sre, sha256: {digest}, scope: all}}\n")
    os.mkfifo(mapping)  # at start: its open() would block the daemon's loop for good
    extra = {"auth": {"tokens_file": str(tokens)}}
    with run_daemon(tmp_path, extra=extra, mapping_file=str(mapping), token=TOKEN) as daemon:
        samples = daemon.scrape()
        assert one(samples, "hostcollector_tenant_map_entries") == 0
        assert one(samples, "hostcollector_tenant_map_errors_total") == 1

        # On reload: the tokens file becomes a FIFO; health and scrapes go on, the last good
        # tokens stay in force.
        tokens.unlink()
        os.mkfifo(tokens)
        wait_until(  # the file is checked when a request needs it
            lambda: daemon.scrape() and f"tokens file {tokens} rejected" in daemon.log(),
            10,
            "the FIFO refused",
        )
        for _ in range(3):
            assert healthy_within(daemon, 2.0)
            daemon.scrape()

        # A regular file back in the map's place is loaded.
        mapping.unlink()
        mapping.write_text('{"00000000-0000-4000-8000-00000000f1f0": "tenant-from-map"}')
        wait_until(
            lambda: one(daemon.scrape(), "hostcollector_tenant_map_entries") == 1,
            10,
            "the map to load",
        )
        log = daemon.log()
    assert "Traceback" not in log
    assert log.count("is not a regular file") == 2  # once per file, not once per check


def _evicted(daemon: Daemon) -> dict | None:  # type: ignore[type-arg]
    samples = daemon.scrape()
    return (
        samples
        if one(samples, "hostcollector_http_connections_closed_total", reason="evicted")
        >= HALF_OPEN - 64
        else None
    )
