"""One endpoint's on-disk queue: each batch (one remote-write request) is one file, so a store
outage or a restart of hostcollector loses nothing that was queued.

A file is `<sequence>.batch`: a JSON header line (tenant, samples, time range, CRC32 of the
body) and the snappy-compressed WriteRequest. It is written to a temporary name, fsync'ed and
renamed, so a crash leaves either the whole batch or none of it. Sequence numbers only grow,
across restarts too, and give the delivery order: oldest first within each tenant.

The queue is bounded by bytes; past the bound the oldest batches are dropped, and counted.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger(__name__)
SUFFIX = ".batch"
FORMAT_VERSION = 1


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


class DiskQueue:
    """`write` runs in the writer's thread (it only makes files); everything else on the event
    loop, where the sender takes batches off."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped: Counter[str] = Counter()
        self._lanes: dict[str, deque[Batch]] = {}
        self._all: dict[int, Batch] = {}  # by seq, oldest first (insertion order)
        self._bytes = 0
        self._next_seq = 0
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
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)  # a write that never finished: never acknowledged
        found = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                seq = int(path.name.removesuffix(SUFFIX))
                tenant, samples, oldest_ms = _read_header(path)
                size = path.stat().st_size
            except (OSError, ValueError) as exc:
                log.warning("remote write: dropping unreadable queue file %s: %s", path, exc)
                self.dropped["corrupt"] += 1
                path.unlink(missing_ok=True)
                continue
            found.append(Batch(seq, tenant, samples, oldest_ms, size))
        for batch in sorted(found, key=lambda b: b.seq):
            self._add(batch)
        self._next_seq = max((b.seq for b in found), default=-1) + 1
        if found:
            log.info(
                "remote write: %d queued batches (%d samples) found in %s",
                len(found),
                sum(b.samples for b in found),
                self.directory,
            )

    def _add(self, batch: Batch) -> None:
        self._all[batch.seq] = batch
        self._lanes.setdefault(batch.tenant, deque()).append(batch)
        self._bytes += batch.size

    def write(self, batches: list[NewBatch]) -> list[Batch]:
        """Make the batches durable (file I/O: the writer's thread); `add` then queues them.
        OSError if the disk refuses (full, read-only): the caller loses this tick's batches."""
        if self.unusable is not None:
            self._open()
            if self.unusable is not None:
                raise OSError(self.unusable)
        written = []
        for new in batches:
            seq = self._next_seq
            self._next_seq += 1
            header = orjson.dumps(
                {
                    "v": FORMAT_VERSION,
                    "tenant": new.tenant,
                    "samples": new.samples,
                    "oldest_ms": new.oldest_ms,
                    "newest_ms": new.newest_ms,
                    "crc32": zlib.crc32(new.body),
                }
            )
            size = len(header) + 1 + len(new.body)
            batch = Batch(seq, new.tenant, new.samples, new.oldest_ms, size)
            temporary = self.directory / f"{batch.name}.tmp"
            with open(temporary, "wb") as handle:
                handle.write(header + b"\n" + new.body)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, self.directory / batch.name)
            written.append(batch)
        if written:
            _fsync_directory(self.directory)
        return written

    def add(self, batches: list[Batch]) -> None:
        """Queue written batches (on the loop, with the sender); drop the oldest past the bound."""
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
        """The batch's compressed body; ValueError if the file is damaged."""
        data = (self.directory / batch.name).read_bytes()
        newline = data.index(b"\n")
        header, body = orjson.loads(data[:newline]), data[newline + 1 :]
        if zlib.crc32(body) != header["crc32"]:
            raise ValueError("CRC32 mismatch")
        return body

    def remove(self, batch: Batch) -> None:
        if self._all.pop(batch.seq, None) is None:
            return  # already gone (evicted while it was being sent)
        lane = self._lanes[batch.tenant]
        lane.remove(batch)
        if not lane:
            del self._lanes[batch.tenant]
        self._bytes -= batch.size
        (self.directory / batch.name).unlink(missing_ok=True)

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


def _read_header(path: Path) -> tuple[str, int, int]:
    """(tenant, samples, oldest_ms) from a queue file's first line."""
    with open(path, "rb") as handle:
        line = handle.readline(64 * 1024)
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"bad header: {exc}") from exc
    if not isinstance(header, dict) or header.get("v") != FORMAT_VERSION:
        raise ValueError("not a hostcollector queue file of this version")
    tenant, samples, oldest_ms = (
        header.get("tenant"),
        header.get("samples"),
        header.get("oldest_ms"),
    )
    if not (isinstance(tenant, str) and isinstance(samples, int) and isinstance(oldest_ms, int)):
        raise ValueError("header lacks tenant, samples or oldest_ms")
    return tenant, samples, oldest_ms


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
