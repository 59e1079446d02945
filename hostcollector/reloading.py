"""Files the daemon re-reads when they change (tenant map, API tokens, TLS certificates),
keeping the last good version when a new one is bad: a half-written file must never take away
what worked."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import orjson

T = TypeVar("T")
log = logging.getLogger(__name__)


class ReloadingFiles(Generic[T]):
    """`current()` calls `load()` again when any of `paths` changed (mtime, size or inode) and
    keeps its result; when `load` raises OSError or ValueError the last good value stays.

    `min_check_seconds` bounds how often the files are stat'ed (0: on every call)."""

    def __init__(
        self,
        what: str,
        paths: tuple[str, ...],
        load: Callable[[], T],
        empty: T,
        *,
        min_check_seconds: float = 0.0,
    ) -> None:
        self.what = what
        self.paths = paths
        self._load = load
        self._value = empty
        self._seen: tuple[tuple[int, int, int], ...] | None = None
        self._min_check = min_check_seconds
        self._checked_at = float("-inf")
        self.loaded = False
        self.reloads_total = 0
        self.errors_total = 0
        self.last_success: float | None = None
        self.last_error: str | None = None

    @property
    def last_good(self) -> T:
        """The value in force, without looking at the files."""
        return self._value

    def current(self) -> T:
        if not self.paths:
            return self._value
        now = time.monotonic()
        if now - self._checked_at < self._min_check:
            return self._value
        self._checked_at = now
        try:
            seen = tuple(_identity(path) for path in self.paths)
        except OSError as exc:
            self._fail(f"cannot stat {exc.filename}: {exc.strerror}")
            return self._value
        if seen == self._seen:
            return self._value
        self._seen = seen
        try:
            value = self._load()
        except (OSError, ValueError) as exc:
            self._fail(f"{self.what} rejected, keeping the last good one: {exc}")
            return self._value
        self._value = value
        self.loaded = True
        self.reloads_total += 1
        self.last_success = time.time()
        if self.last_error is not None:
            log.info("%s loaded again", self.what)
        self.last_error = None
        return self._value

    def _fail(self, message: str) -> None:
        # One log line and one error per distinct bad version of the file, not one per read.
        if self.last_error == message:
            return
        self.errors_total += 1
        self.last_error = message
        log.warning("%s", message)


def _identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def json_object(data: bytes, not_an_object: str) -> dict[str, Any]:
    """A file's JSON object; ValueError if it is not valid JSON, or `not_an_object` if it is
    JSON but not an object."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(not_an_object)
    return document


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
