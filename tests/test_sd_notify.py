"""systemd's notification protocol: the real daemon, run as a subprocess under a real AF_UNIX
datagram socket as $NOTIFY_SOCKET (a path and an abstract address), tells READY=1 only once
/-/ready answers 200, pings WATCHDOG=1 while it runs (and not while it is stopped), and says
STOPPING=1 on SIGTERM. Its libvirt source points at a socket that accepts and never answers,
so the first poll takes the whole poll timeout (a hung libvirtd), and the pings go on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hostcollector.app import build_app
from hostcollector.collector import Collector
from hostcollector.config import Config
from hostcollector.errors import SourceError
from hostcollector.sd_notify import Notifier, notify_address, watchdog_seconds
from hostcollector.supervision import Supervision

REPO = Path(__file__).parent.parent
WATCHDOG_USEC = 500_000
LIBVIRT_TIMEOUT_SECONDS = 1.5


# -- The protocol on its own ---------------------------------------------------------------


def test_notify_address_kinds() -> None:
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@hc/notify"}) == b"\0hc/notify"
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": ""}) is None
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None  # not spoken here


def test_watchdog_seconds_respects_watchdog_pid() -> None:
    assert watchdog_seconds({"WATCHDOG_USEC": "500000"}, 42) == 0.5
    assert watchdog_seconds({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "42"}, 42) == 0.5
    # Meant for another process (we inherited its environment): no watchdog for us.
    assert watchdog_seconds({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_seconds({}, 42) is None


def test_without_a_socket_every_message_is_dropped() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_a_send_error_is_logged_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with caplog.at_level(logging.DEBUG, logger="hostcollector.sd_notify"):
        assert notifier.send("WATCHDOG=1") is False
        assert notifier.send("WATCHDOG=1") is False
    assert len(caplog.records) == 1
    assert "cannot notify the service manager" in caplog.records[0].getMessage()
    notifier.close()


def test_a_newline_in_a_status_cannot_forge_an_assignment(tmp_path: Path) -> None:
    with receiver(str(tmp_path / "notify")) as (sock, address):
        notifier = Notifier({"NOTIFY_SOCKET": address})
        notifier.status("source down\nREADY=1")
        assert sock.recv(4096) == b"STATUS=source down READY=1"
        notifier.close()


# -- The daemon under a notify socket --------------------------------------------------------


@dataclass
class Received:
    at: float
    assignments: list[str]


@dataclass
class Listener:
    sock: socket.socket
    address: str
    messages: list[Received] = field(default_factory=list)

    def pump(self, seconds: float) -> list[Received]:
        """What arrives within `seconds`."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            got.append(Received(time.monotonic(), data.decode().split("\n")))
        self.messages += got
        return got


@dataclass
class HungLibvirtd:
    """A libvirtd socket that accepts connections and never answers, until closed."""

    path: Path
    server: socket.socket

    def let_go(self) -> None:
        # Closing the listener resets the connections it holds: the calls stuck on them fail.
        self.server.close()


@pytest.fixture
def hung_libvirtd(tmp_path: Path) -> Iterator[HungLibvirtd]:
    path = tmp_path / "libvirt-sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    yield HungLibvirtd(path, server)
    server.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    address = (
        str(tmp_path / "notify") if request.param == "path" else f"@hc-test-{uuid.uuid4().hex}"
    )
    with receiver(address) as (sock, name):
        yield Listener(sock, name)


@contextmanager
def receiver(address: str) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
    try:
        yield sock, address
    finally:
        sock.close()


def ready_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as reply:
            status: int = reply.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # not listening yet


def names(messages: list[Received]) -> list[str]:
    return [a for m in messages for a in m.assignments if not a.startswith("STATUS=")]


def test_the_daemon_under_systemd(
    notify_socket: Listener, hung_libvirtd: HungLibvirtd, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "hostcollector.yml"
    config.write_text(
        f"listen: {{port: {port}}}\n"
        "sources:\n"
        "  libvirt:\n"
        f"    uri: 'qemu+unix:///system?socket={hung_libvirtd.path}&no_verify=1'\n"
        f"    interval_seconds: 2.0\n    timeout_seconds: {LIBVIRT_TIMEOUT_SECONDS}\n"
        "  sriov: {enabled: false}\n  nvml: {enabled: false}\n"
    )
    env = {
        **os.environ,
        "NOTIFY_SOCKET": notify_socket.address,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
    }
    env.pop("WATCHDOG_PID", None)
    env.pop("JOURNAL_STREAM", None)
    log = (tmp_path / "daemon.log").open("wb")
    started = time.monotonic()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "hostcollector", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        # READY=1 only once /-/ready answers 200; before, it answers 503 (libvirt's first
        # poll hangs for its whole timeout).
        not_ready_seen_at: list[float] = []
        ready_at = None
        while time.monotonic() - started < 30 and ready_at is None:
            status = ready_status(port)
            if status == 503:
                not_ready_seen_at.append(time.monotonic())
            for message in notify_socket.pump(0.05):
                if "READY=1" in message.assignments:
                    ready_at = message.at
        assert ready_at is not None, "no READY=1 within 30 s"
        assert ready_status(port) == 200
        assert not_ready_seen_at, "/-/ready was never seen unready: the test proves nothing"
        assert max(not_ready_seen_at) < ready_at
        assert ready_at - started >= LIBVIRT_TIMEOUT_SECONDS

        # WATCHDOG=1 about every WATCHDOG_USEC / 2, while libvirt keeps hanging.
        pings = [m.at for m in notify_socket.pump(3.0) if "WATCHDOG=1" in m.assignments]
        assert len(pings) >= 4, pings
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 0.1 < statistics.median(gaps) < 0.6, gaps

        # Stopped, the process pings no more; continued, it pings again.
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            notify_socket.pump(0.1)  # what was sent before the stop took effect
            assert "WATCHDOG=1" not in names(notify_socket.pump(1.5))
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        assert "WATCHDOG=1" in names(notify_socket.pump(2.0))

        daemon.send_signal(signal.SIGTERM)
        stopping = False
        deadline = time.monotonic() + 15
        while not stopping and time.monotonic() < deadline:
            stopping = "STOPPING=1" in names(notify_socket.pump(0.2))
        assert stopping, "no STOPPING=1 after SIGTERM"
        # libvirtd still hangs: the daemon leaves its stuck thread behind instead of waiting for
        # it (which would last until systemd's TimeoutStopSec), and says so.
        assert daemon.wait(10) == 0
        assert "still hung in a backend" in (tmp_path / "daemon.log").read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        log.close()
    # Exactly one READY=1 in the whole life.
    assert names(notify_socket.messages).count("READY=1") == 1


# -- The watchdog's condition, in process ------------------------------------------------------


class SchedulerBug(BaseException):
    """What no poller survives (it catches Exception): its task ends."""


class DyingLibvirt:
    """A libvirt source whose second poll kills its poll task."""

    name = "libvirt"
    interval_seconds = 0.05

    def __init__(self) -> None:
        self.polls = 0

    async def poll(self) -> Any:
        self.polls += 1
        if self.polls > 1:
            raise SchedulerBug()
        raise SourceError("connect", "no libvirtd here")

    async def close(self) -> None:
        pass


def test_pings_stop_once_a_poll_task_has_died(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go(sock: socket.socket, address: str) -> list[str]:
        config = Config()
        source = DyingLibvirt()
        collector = Collector(config, sources={"libvirt": source})
        notifier = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"})
        supervision = Supervision(collector, notifier)
        app = build_app(config, collector)
        app.cleanup_ctx.append(supervision.context)
        async with TestClient(TestServer(app)):
            supervision.listening("http://test")
            await asyncio.sleep(1.0)
            assert source.polls == 2 and not collector.scheduling_alive()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.recv(4096)  # what came before
            await asyncio.sleep(0.5)
            late = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    late.append(sock.recv(4096).decode())
        return late

    with (
        receiver(str(tmp_path / "notify")) as (sock, address),
        caplog.at_level(logging.ERROR, logger="hostcollector.supervision"),
    ):
        late = asyncio.run(go(sock, address))
    assert not any("WATCHDOG=1" in message for message in late), late
    assert [r.getMessage() for r in caplog.records] == [
        "a poll task has ended: watchdog pings stop, for systemd to restart us"
    ]
