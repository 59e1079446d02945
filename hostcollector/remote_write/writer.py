"""Turns snapshots into remote-write batches for every endpoint, on a fixed wall-clock grid.

Every `interval_seconds` (aligned to the clock, so samples stay evenly spaced across restarts)
the current snapshot is encoded once, as a scrape would read it: all series for endpoints of
the SRE view, and per tenant (only series whose tenant_id is that tenant) for split endpoints.
Series gone since the last tick get Prometheus's staleness marker. Encoding and the queue's
file writes run in the writer's own thread; delivery is the senders' (sender.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

from hostcollector.config import RemoteWriteConfig
from hostcollector.exposition import series
from hostcollector.model import RemoteWriteStatus, Snapshot
from hostcollector.remote_write.protocol import (
    STALE_NAN,
    SeriesEncoder,
    compress,
    pack_value,
    sample_tail,
)
from hostcollector.remote_write.queue import DiskQueue, NewBatch
from hostcollector.remote_write.sender import EndpointSender

log = logging.getLogger(__name__)
# Series per request: bounds a request's size (~1.5 MB uncompressed) and the cost of a retry.
MAX_SERIES_PER_BATCH = 10_000


def snapshot_ready(snapshot: Snapshot) -> bool:
    """Every source has answered at least once: a daemon just started has nothing to send yet
    (its first snapshot has no VM: a tick of it would be a tick of nothing but self-metrics)."""
    return all(s.polls_total > 0 for s in snapshot.sources)


class Encoded:
    """One tick's series bytes: all of them, and by tenant."""

    def __init__(self) -> None:
        self.all: list[bytes] = []
        self.by_tenant: defaultdict[str, list[bytes]] = defaultdict(list)


class RemoteWriter:
    def __init__(self, config: RemoteWriteConfig, snapshot: Callable[[], Snapshot]) -> None:
        self.config = config
        self._snapshot = snapshot
        self._encoder = SeriesEncoder()
        # The last tick's series (name, label text) -> (encoded prefix, tenant): reused by the
        # next tick, and what it compares with for staleness markers.
        self._prefixes: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._tail_length = 0
        self.senders = [
            EndpointSender(
                endpoint,
                DiskQueue(Path(config.queue_dir) / endpoint.name, endpoint.max_queue_bytes),
            )
            for endpoint in config.endpoints
        ]
        self._split = any(e.split_by_tenant for e in config.endpoints)
        self._whole = any(not e.split_by_tenant for e in config.endpoints)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hc-rw")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for sender in self.senders:
            sender.kick()  # what a previous run left queued goes first
        self._task = asyncio.create_task(self._run(), name="remote-write")

    async def _run(self) -> None:
        interval = self.config.interval_seconds
        while True:
            await asyncio.sleep(interval - time.time() % interval)
            snapshot = self._snapshot()
            if not snapshot_ready(snapshot):
                continue
            await self.tick(snapshot, int(time.time() * 1000))

    async def tick(self, snapshot: Snapshot, timestamp_ms: int) -> None:
        loop = asyncio.get_running_loop()
        whole, split = await loop.run_in_executor(
            self._thread, self._batches, snapshot, timestamp_ms
        )
        for sender in self.senders:
            batches = split if sender.config.split_by_tenant else whole
            try:
                written = await loop.run_in_executor(self._thread, sender.queue.write, batches)
            except OSError as exc:  # a full or read-only disk: this tick is lost, not the daemon
                sender.queue.dropped["unqueueable"] += sum(b.samples for b in batches)
                sender.failed(f"cannot queue this tick's samples: {exc.strerror or exc}")
                continue
            sender.queue.add(written)
            sender.kick()

    def _batches(
        self, snapshot: Snapshot, timestamp_ms: int
    ) -> tuple[list[NewBatch], list[NewBatch]]:
        """The tick's compressed batches, once per view however many endpoints share it:
        (all series, by tenant). Runs in the writer's thread, off the event loop."""
        encoded = self.encode(snapshot, timestamp_ms)

        def pack(parts: Mapping[str, list[bytes]]) -> list[NewBatch]:
            return [
                NewBatch(tenant, len(chunk), timestamp_ms, timestamp_ms, compress(b"".join(chunk)))
                for tenant, items in parts.items()
                for chunk in _chunks(items)
            ]

        return pack({"": encoded.all}), pack(encoded.by_tenant)

    def encode(self, snapshot: Snapshot, timestamp_ms: int) -> Encoded:
        """The tick's series, each `prefix + value + tail`: the per-series work is a dict
        lookup and a concatenation (~1 us), the prefixes kept from the last tick."""
        tail = sample_tail(timestamp_ms)
        previous = self._prefixes if self._tail_length == len(tail) else {}
        self._encoder.forget()
        prefix_of = self._encoder.prefix
        current: dict[tuple[str, str], tuple[bytes, str]] = {}
        out = Encoded()
        whole, split = self._whole, self._split
        add_all, by_tenant = out.all.append, out.by_tenant
        for name, labels_text, value in series(snapshot):
            key = (name, labels_text)
            entry = previous.get(key)
            if entry is None:
                entry = prefix_of(name, labels_text, len(tail))
            current[key] = entry
            data = entry[0] + pack_value(value) + tail
            if whole:
                add_all(data)
            # Unattributed and host series have no tenant: they never go to a tenant endpoint.
            if split and entry[1]:
                by_tenant[entry[1]].append(data)
        for key, (prefix, tenant) in previous.items():
            if key not in current:  # gone since the last tick: a staleness marker
                data = prefix + STALE_NAN + tail
                if whole:
                    add_all(data)
                if split and tenant:
                    by_tenant[tenant].append(data)
        self._prefixes, self._tail_length = current, len(tail)
        return out

    def status(self) -> tuple[RemoteWriteStatus, ...]:
        return tuple(sender.status() for sender in self.senders)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for sender in self.senders:
            await sender.close()
        self._thread.shutdown(wait=True)


def _chunks(items: list[bytes]) -> list[list[bytes]]:
    return [items[i : i + MAX_SERIES_PER_BATCH] for i in range(0, len(items), MAX_SERIES_PER_BATCH)]
