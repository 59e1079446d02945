"""systemd's notification protocol (sd_notify(3)), spoken over a plain AF_UNIX datagram socket:
no libsystemd, no python-systemd.

$NOTIFY_SOCKET names the socket, a path or an abstract address ('@' for the leading NUL); unset
(not under a Type=notify unit), every message is dropped. $WATCHDOG_USEC, with $WATCHDOG_PID
naming this process or unset, asks for WATCHDOG=1 at least that often. A send that fails is
logged once and never raised: the daemon's work does not depend on its supervisor hearing it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def notify_address(environ: Mapping[str, str]) -> str | bytes | None:
    """The socket address in $NOTIFY_SOCKET: a path, or an abstract name as bytes with its
    leading NUL; None when unset or of a kind this does not speak (vsock:)."""
    value = environ.get("NOTIFY_SOCKET", "")
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd asks this process to ping within, or None: no
    $WATCHDOG_USEC, a value that is not a positive integer, or $WATCHDOG_PID naming another
    process (a child that inherited the environment)."""
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid is not None and watchdog_pid.strip() != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Sends state changes to the service manager; every method is a no-op without one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.address = notify_address(environ)
        self.watchdog_seconds = watchdog_seconds(environ, os.getpid())
        self._socket: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def send(self, *assignments: str) -> bool:
        """One datagram of newline-separated assignments; True if it was sent. A newline in a
        value would start another assignment: it becomes a space."""
        if self.address is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                # A supervisor that stopped reading must not block the event loop.
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("cannot notify the service manager at %r: %s", self.address, exc)
            return False
        if self._failing:
            self._failing = False
            log.info("notifying the service manager again")
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
