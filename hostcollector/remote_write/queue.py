"""One endpoint's on-disk queue: each batch (one remote-write request) is one file, so a store
outage or a restart of hostcollector loses nothing that was queued.

A file is `<sequence>.batch`: a JSON header line (tenant, samples, time range, CRC32 of the
body, and a CRC32 of the header's own fields) and the snappy-compressed WriteRequest. It is
written to a temporary name, fsync'ed and renamed, so a crash leaves either the whole batch or
none of it. Sequence numbers only grow, across restarts too, and give the delivery order:
oldest first within each tenant.

What is on disk is input: a header whose checksum fails, whose fields are out of range, or
whose sample count no body of its size could hold is dropped, and counted; an entry that is
not a regular file is left alone, and counted; neither stops the batches around it.

The queue is bounded by bytes; past the bound the oldest batches are dropped, and counted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import zlib
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

log = logging.getLogger(__name__)
SUFFIX = ".batch"
TEMPORARY_SUFFIX = ".tmp"
BATCH_NAME = re.compile(r"[0-9]{16}\.batch")
# Version 1 (the first) had no checksum over its header: its sample count could be edited
# unseen, so its files are dropped (counted as old_format), not trusted.
FORMAT_VERSION = 2
OLD_FORMAT_VERSIONS = frozenset({1})
MAX_HEADER_BYTES = 64 * 1024
# A sample takes at least 2 bytes of a WriteRequest (its field's tag and length) and snappy
# expands at most ~21x (a 3-byte copy makes 64 bytes): n compressed bytes hold < 11n samples.
MAX_SAMPLES_PER_BODY_BYTE = 11
MAX_INT64 = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Batch:
    seq: int
    tenant: str  # "" in a queue of all series
    samples: int
    oldest_ms: int
    size: int  # bytes on disk

    @property
    def name(self) -> str:
        return f"{self.seq:016d}{SUFFIX}"


@dataclass(frozen=True, slots=True)
class NewBatch:
    tenant: str
    samples: int
    oldest_ms: int
    newest_ms: int
    body: bytes  # compressed


@dataclass(frozen=True, slots=True)
class Header:
    tenant: str
    samples: int
    oldest_ms: int
    newest_ms: int
    body_crc32: int


class QueueFileError(ValueError):
    """A queue file that cannot be trusted; `reason` is how its drop is counted."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotAFile(OSError):
    """An entry with a batch's name that is a directory, a link, a device..."""


class DiskQueue:
    """`write` runs in the writer's thread (it only makes files); everything else on the event
    loop, where the sender takes batches off."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped: Counter[str] = Counter()  # samples
        # Files found at start that were not queued, by reason: corrupt, old_format (deleted),
        # not_a_file, foreign_name (left in place: not hostcollector's to delete).
        self.files_dropped: Counter[str] = Counter()
        self._lanes: dict[str, deque[Batch]] = {}
        self._all: dict[int, Batch] = {}  # by seq, oldest first (insertion order)
        self._bytes = 0
        self._next_seq = 0
        # Names of batches sent (or dropped) whose file the disk would not delete (read-only):
        # out of delivery at once, deleted when a later write shows the disk takes writes.
        self._undeleted: set[str] = set()
        # Why the directory cannot be used (not creatable, not readable); retried at each write.
        # A queue that cannot be used costs remote write its samples, never the daemon.
        self.unusable: str | None = None
        self._open()

    def _open(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            if self.unusable is None:
                log.error("remote write: queue directory %s unusable: %s", self.directory, exc)
            self.unusable = f"queue directory {self.directory}: {exc.strerror or exc}"
            return
        if self.unusable is not None:
            log.info("remote write: queue directory %s usable again", self.directory)
        self.unusable = None

    def _recover(self) -> None:
        found = []
        highest = -1
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(TEMPORARY_SUFFIX):
                    if entry.is_file(follow_symlinks=False):
                        self._delete_quietly(name)  # a write that never finished: never acked
                    else:
                        self._skip(name, "not_a_file")
                    continue
                if not name.endswith(SUFFIX):
                    continue
                if not BATCH_NAME.fullmatch(name):
                    self._skip(name, "foreign_name")
                    continue
                seq = int(name.removesuffix(SUFFIX))
                highest = max(highest, seq)  # never reused, even by a name that is skipped
                if not entry.is_file(follow_symlinks=False):
                    self._skip(name, "not_a_file")
                    continue
                try:
                    found.append(self._load(seq))
                except NotAFile:
                    self._skip(name, "not_a_file")
                except (QueueFileError, OSError) as exc:
                    reason = exc.reason if isinstance(exc, QueueFileError) else "corrupt"
                    log.warning(
                        "remote write: dropping queue file %s/%s: %s", self.directory, name, exc
                    )
                    self.files_dropped[reason] += 1
                    self._delete_quietly(name)
        for batch in sorted(found, key=lambda b: b.seq):
            self._add(batch)
        self._next_seq = highest + 1
        if found:
            log.info(
                "remote write: %d queued batches (%d samples) found in %s",
                len(found),
                sum(b.samples for b in found),
                self.directory,
            )

    def _load(self, seq: int) -> Batch:
        path = self.directory / f"{seq:016d}{SUFFIX}"
        with _open_regular(path) as handle:
            line = handle.readline(MAX_HEADER_BYTES)
            size = os.fstat(handle.fileno()).st_size
        if not line.endswith(b"\n"):
            raise QueueFileError("corrupt", "no header line")
        header = parse_header(line[:-1], size - len(line))
        return Batch(seq, header.tenant, header.samples, header.oldest_ms, size)

    def _skip(self, name: str, reason: str) -> None:
        log.warning(
            "remote write: skipping %s/%s in the queue directory (%s); left in place",
            self.directory,
            name,
            reason.replace("_", " "),
        )
        self.files_dropped[reason] += 1

    def _add(self, batch: Batch) -> None:
        self._all[batch.seq] = batch
        self._lanes.setdefault(batch.tenant, deque()).append(batch)
        self._bytes += batch.size

    def write(self, batches: list[NewBatch]) -> list[Batch]:
        """Make the batches durable (file I/O: the writer's thread); `add` then queues them.
        OSError if the disk refuses (full, read-only): the caller loses this tick's batches,
        and nothing of them stays on disk (no temporary file, no part of the tick: a batch left
        behind would be sent after a restart, after being counted as never queued)."""
        if self.unusable is not None:
            self._open()
            if self.unusable is not None:
                raise OSError(self.unusable)
        written: list[Batch] = []
        temporary: Path | None = None
        try:
            for new in batches:
                seq = self._next_seq
                self._next_seq += 1
                fields = {
                    "v": FORMAT_VERSION,
                    "tenant": new.tenant,
                    "samples": new.samples,
                    "oldest_ms": new.oldest_ms,
                    "newest_ms": new.newest_ms,
                    "crc32": zlib.crc32(new.body),
                }
                data = encode_header(fields) + b"\n" + new.body
                batch = Batch(seq, new.tenant, new.samples, new.oldest_ms, len(data))
                path = self.directory / f"{batch.name}{TEMPORARY_SUFFIX}"
                # O_EXCL|O_NOFOLLOW: whatever sits at the name is not ours to write through.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                temporary = path
                with open(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.rename(temporary, self.directory / batch.name)
                temporary = None
                written.append(batch)
            if written:
                _fsync_directory(self.directory)
        except BaseException:
            with contextlib.suppress(OSError):
                if temporary is not None:
                    temporary.unlink(missing_ok=True)
                for batch in written:
                    (self.directory / batch.name).unlink(missing_ok=True)
            raise
        return written

    def add(self, batches: list[Batch]) -> None:
        """Queue written batches (on the loop, with the sender); drop the oldest past the bound."""
        if batches:
            self._retry_deletes()  # they were just written: the disk takes writes now
        for batch in batches:
            self._add(batch)
        self._evict()

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._all:
            oldest = next(iter(self._all.values()))
            self.dropped["queue_full"] += oldest.samples
            self.remove(oldest)

    def oldest(self, tenant: str) -> Batch | None:
        lane = self._lanes.get(tenant)
        return lane[0] if lane else None

    def tenants(self) -> list[str]:
        return [tenant for tenant, lane in self._lanes.items() if lane]

    def read(self, batch: Batch) -> bytes:
        """The batch's compressed body; ValueError if the file is damaged or is no longer the
        one queued, OSError if it cannot be read (NotAFile: it is no longer a file)."""
        with _open_regular(self.directory / batch.name) as handle:
            data = handle.read(batch.size + 1)
        if len(data) != batch.size:
            raise ValueError("the file changed since it was queued (its size)")
        line, newline, body = data.partition(b"\n")
        if not newline:
            raise QueueFileError("corrupt", "no header line")
        header = parse_header(line, len(body))
        if (header.tenant, header.samples) != (batch.tenant, batch.samples):
            raise ValueError("the file changed since it was queued (its header)")
        if zlib.crc32(body) != header.body_crc32:
            raise ValueError("CRC32 mismatch")
        return body

    def remove(self, batch: Batch) -> None:
        """Take the batch out of the queue (sent, or dropped). Its file is deleted; where the
        disk refuses (read-only), it is out of delivery all the same and deleted later. If
        hostcollector restarts before the disk takes writes again, the file is found and the
        batch sent again (a store may take it twice or refuse it as a duplicate): nothing can
        be recorded on a disk that takes no writes."""
        if self._all.pop(batch.seq, None) is None:
            return  # already gone (evicted while it was being sent)
        lane = self._lanes[batch.tenant]
        lane.remove(batch)
        if not lane:
            del self._lanes[batch.tenant]
        self._bytes -= batch.size
        try:
            (self.directory / batch.name).unlink(missing_ok=True)
        except OSError as exc:
            if not self._undeleted:
                log.warning(
                    "remote write: cannot delete finished batches in %s (%s): deleted when the disk "
                    "takes writes again; sent again if hostcollector restarts before",
                    self.directory,
                    exc.strerror or exc,
                )
            self._undeleted.add(batch.name)

    def _retry_deletes(self) -> None:
        for name in sorted(self._undeleted):
            try:
                (self.directory / name).unlink(missing_ok=True)
            except OSError:
                return
            self._undeleted.discard(name)
            if not self._undeleted:
                log.info("remote write: sent batches in %s deleted", self.directory)

    def _delete_quietly(self, name: str) -> None:
        # At start, on a read-only disk: the file stays, the queue is still usable.
        with contextlib.suppress(OSError):
            (self.directory / name).unlink(missing_ok=True)

    def drop(self, batch: Batch, reason: str) -> None:
        self.dropped[reason] += batch.samples
        self.remove(batch)

    @property
    def batches(self) -> int:
        return len(self._all)

    @property
    def samples(self) -> int:
        return sum(b.samples for b in self._all.values())

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def oldest_ms(self) -> int | None:
        return min((b.oldest_ms for b in self._all.values()), default=None)


def encode_header(fields: dict[str, object]) -> bytes:
    """The header line for `fields` (no newline): they and a CRC32 of them, as sorted JSON."""
    return orjson.dumps(fields | {"header_crc32": zlib.crc32(_canonical(fields))})


def parse_header(line: bytes, body_size: int) -> Header:
    """A queue file's header line, checked against its CRC32 and the body's size (bytes after
    the line). QueueFileError (a ValueError) naming what is wrong."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise QueueFileError("corrupt", f"bad header: {exc}") from exc
    if not isinstance(document, dict):
        raise QueueFileError("corrupt", "the header is not an object")
    version = document.get("v")
    if type(version) is int and version in OLD_FORMAT_VERSIONS:
        raise QueueFileError("old_format", f"format version {version} has no header checksum")
    if version != FORMAT_VERSION or type(version) is not int:
        raise QueueFileError("corrupt", "not a hostcollector queue file of this version")
    claimed = document.pop("header_crc32", None)
    try:
        actual = zlib.crc32(_canonical(document))
    except orjson.JSONEncodeError as exc:
        raise QueueFileError("corrupt", f"bad header: {exc}") from exc
    if type(claimed) is not int or claimed != actual:
        raise QueueFileError("corrupt", "header CRC32 mismatch")
    tenant = document.get("tenant")
    if not isinstance(tenant, str):
        raise QueueFileError("corrupt", "the header's tenant is not a string")
    samples = _bounded(document, "samples", MAX_SAMPLES_PER_BODY_BYTE * max(body_size, 0))
    return Header(
        tenant,
        samples,
        _bounded(document, "oldest_ms", MAX_INT64),
        _bounded(document, "newest_ms", MAX_INT64),
        _bounded(document, "crc32", 2**32 - 1),
    )


def _canonical(fields: dict[str, object]) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def _bounded(document: dict[str, object], key: str, highest: int) -> int:
    value = document.get(key)
    if type(value) is not int or not 0 <= value <= highest:
        raise QueueFileError("corrupt", f"the header's {key} is not an integer in 0..{highest}")
    return value


def _open_regular(path: Path) -> BinaryIO:
    """The file for reading, if it is a regular file (not through a link: NotAFile)."""
    try:
        # O_NONBLOCK: a FIFO put there must not hang the opener.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAFile(exc.errno, "a symbolic link", str(path)) from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAFile(errno.EISDIR, "not a regular file", str(path))
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
