"""Files the daemon re-reads when they change (tenant map, API tokens, TLS certificates),
keeping the last good version when a new one is bad: a half-written file must never take away
what worked.

These paths are written by other programs (the control plane, a certificate rotator), so a file
is treated as hostile input: only a regular file is read (a FIFO's open would block forever, a
character device like /dev/zero never ends), never more than its size bound, and never on the
event loop once the daemon runs: there a check runs in a thread of the file's own and the
callers keep the last good value meanwhile, so a path that hangs stalls its own reloads only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hostcollector import metrics
from hostcollector.selfmetrics import Sample

T = TypeVar("T")
log = logging.getLogger(__name__)

# Tokens, TLS files, a bearer token, a tenant-id map: all far below this.
DEFAULT_MAX_BYTES = 1024 * 1024

# A file's timestamps advance by the kernel's clock tick (4 ms at HZ=250), by a second on some
# network and overlay filesystems, by two on FAT: a rewrite of the same size within one tick
# leaves its stat unchanged. While any file's mtime or ctime is this recent, its state is
# "racy" (git's word for the same problem) and its content is compared as well.
RACY_WINDOW_NS = 3_000_000_000


class ReloadingFiles(Generic[T]):
    """`current()` calls `load()` again when any of `paths` changed and keeps its result; when
    `load` fails the last good value stays.

    A change is any difference in the files' stat: mtime, ctime (so a `chmod` or `chown` that
    makes a file readable again is noticed), size, inode, device, mode or owner; and, while the
    files' timestamps are too recent to tell two writes apart, their content. The first check
    runs in the caller; later ones, when called on a running event loop, in a thread, so the
    value changes a moment after the file did. `min_check_seconds` bounds how often the files
    are stat'ed (0: on every call)."""

    def __init__(
        self,
        what: str,
        paths: tuple[str, ...],
        load: Callable[[], T],
        empty: T,
        *,
        min_check_seconds: float = 0.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.what = what
        self.paths = paths
        self.max_bytes = max_bytes
        self._load = load
        self._value = empty
        self._seen: tuple[tuple[int, ...], ...] | None = None
        self._seen_digest: bytes | None = None  # set only while `_seen` is racy
        self._min_check = min_check_seconds
        self._checked_at = float("-inf")
        self._checked_once = False
        self._in_flight = threading.Lock()
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
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
        if not self._checked_once or not _on_event_loop():
            self.check()
            return self._value
        if self._in_flight.acquire(blocking=False):  # else the last check is still running
            if self._thread is None:
                self._thread = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="hc-reload"
                )
            self._thread.submit(self._check_and_release)
        return self._value

    def _check_and_release(self) -> None:
        try:
            self.check()
        finally:
            self._in_flight.release()

    def check(self) -> None:
        """Stat the files and load them if they changed (blocking: not on the event loop)."""
        self._checked_once = True
        try:
            seen = tuple(_identity(path) for path in self.paths)
        except OSError as exc:
            self._seen = None  # whatever comes back is new
            self._fail(f"cannot stat {exc.filename}: {exc.strerror}")
            return
        racy = _racy(seen, time.time_ns())
        # Content is compared while the state is racy, and once more when it stops being so:
        # a same-tick rewrite after the last racy check shows in nothing else.
        digest = None
        if racy or self._seen_digest is not None:
            digest = _digest(self.paths, self.max_bytes)
        unchanged = seen == self._seen and digest == self._seen_digest
        self._seen = seen
        self._seen_digest = digest if racy else None
        if unchanged:
            return
        for path, identity in zip(self.paths, seen, strict=True):
            problem = _unreadable(identity, self.max_bytes)
            if problem:
                self._fail(f"{self.what} rejected, keeping the last good one: {path} {problem}")
                return
        try:
            value = self._load()
        except (OSError, ValueError) as exc:
            self._fail(f"{self.what} rejected, keeping the last good one: {exc}")
            return
        except Exception as exc:  # a parser's bug must cost this file's reload only
            log.error("%s: unexpected error while loading", self.what, exc_info=exc)
            self._fail(f"{self.what} rejected, keeping the last good one: {type(exc).__name__}")
            return
        self._value = value
        self.loaded = True
        self.reloads_total += 1
        self.last_success = time.time()
        if self.last_error is not None:
            log.info("%s loaded again", self.what)
        self.last_error = None

    def _fail(self, message: str) -> None:
        # One log line and one error per distinct bad version of the file, not one per read.
        if self.last_error == message:
            return
        self.errors_total += 1
        self.last_error = message
        log.warning("%s", message)


@dataclass(frozen=True)
class WatchedFile:
    """Files re-read on change, under the name their self-metrics carry (tokens, tls)."""

    name: str
    files: ReloadingFiles[Any]

    def collect(self) -> Iterator[Sample]:
        labels = f'file="{self.name}"'
        yield Sample(metrics.FILE_RELOADS_TOTAL, labels, self.files.reloads_total)
        yield Sample(metrics.FILE_RELOAD_ERRORS_TOTAL, labels, self.files.errors_total)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _identity(path: str) -> tuple[int, ...]:
    # stat() follows symlinks (certificate directories are often symlinked) and never blocks
    # on a FIFO the way open() does.
    st = os.stat(path)
    return (
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def _racy(seen: tuple[tuple[int, ...], ...], now_ns: int) -> bool:
    # A timestamp in the future (a clock stepped back) counts as recent: content is compared.
    return any(now_ns - max(identity[6], identity[7]) < RACY_WINDOW_NS for identity in seen)


def _digest(paths: tuple[str, ...], max_bytes: int) -> bytes:
    """The files' content, hashed; a file that cannot be read hashes as a fresh value, so the
    loader runs and reports why."""
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        try:
            digest.update(hashlib.blake2b(read_bytes(path, max_bytes), digest_size=16).digest())
        except (OSError, ValueError):
            digest.update(os.urandom(16))
    return digest.digest()


def _unreadable(identity: tuple[int, ...], max_bytes: int) -> str | None:
    mode, size = identity[2], identity[5]
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if size > max_bytes:
        return f"is {size} bytes, more than the {max_bytes} allowed"
    return None


def read_bytes(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A regular file's bytes, at most `max_bytes` (ValueError past that or for anything not a
    regular file). Opened without blocking, so a FIFO put in the file's place fails at once."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        handle = open(fd, "rb", closefd=False)  # noqa: SIM115 (the fd is closed below)
        data = handle.read(max_bytes + 1)  # /proc files report size 0: bound the read itself
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"{path} is more than the {max_bytes} bytes allowed")
    return data


def json_object(data: bytes, not_an_object: str) -> dict[str, Any]:
    """A file's JSON object; ValueError if it is not valid UTF-8 JSON (NaN and Infinity are not
    JSON), holds a key twice in one object (the last would silently win), nests too deep, or is
    JSON but not an object (`not_an_object`)."""
    try:
        document = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_refuse_duplicates,
            parse_constant=_refuse_constant,
        )
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("nested too deep") from exc
    if not isinstance(document, dict):
        raise ValueError(not_an_object)
    return document


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        twice = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise ValueError(f"keys given twice: {', '.join(map(repr, twice[:5]))}")
    return document


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")
