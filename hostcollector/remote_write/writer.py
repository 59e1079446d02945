"""Turns snapshots into remote-write batches for every endpoint, on a fixed wall-clock grid.

Every `interval_seconds`, at this host's own offset within the interval (schedule.py: a fleet
spreads its writes; the grid stays fixed, so samples stay evenly spaced across restarts),
the current snapshot is encoded once, as a scrape would read it: all series for endpoints of
the SRE view, and per tenant (only series whose tenant_id is that tenant) for split endpoints.
Series gone since the last tick get Prometheus's staleness marker. Encoding and the queue's
file writes run in the writer's own thread; delivery is the senders' (sender.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from hostcollector.config import RemoteWriteConfig
from hostcollector.exposition import series
from hostcollector.handover import Handover
from hostcollector.model import RemoteWriteStatus, Snapshot
from hostcollector.remote_write.protocol import (
    STALE_NAN,
    LabelPairs,
    SeriesEncoder,
    compress,
    pack_value,
    sample_tail,
)
from hostcollector.remote_write.queue import DiskQueue, NewBatch
from hostcollector.remote_write.schedule import host_offset_ms, interval_ms, next_tick_ms
from hostcollector.remote_write.sender import EndpointSender
from hostcollector.selfmetrics import Sample, remote_write_samples

log = logging.getLogger(__name__)
# Series per request: bounds a request's size (~1.5 MB uncompressed) and the cost of a retry.
MAX_SERIES_PER_BATCH = 10_000


def snapshot_ready(snapshot: Snapshot) -> bool:
    """Every source has answered at least once: a daemon just started has nothing to send yet
    (its first snapshot has no VM: a tick of it would be a tick of nothing but self-metrics)."""
    return all(s.polls_total > 0 for s in snapshot.sources)


# How endpoints read a tick: (split_by_tenant, the external labels they add). Each distinct view
# is encoded once, however many endpoints share it.
ViewKey = tuple[bool, LabelPairs]
# A series (name, label text) -> (its encoded prefix in each view, its tenant)
Prefixes = dict[tuple[str, str], tuple[tuple[bytes, ...], str]]


class Encoded:
    """One tick's series bytes, per view, by tenant ("" in a view of all series)."""

    def __init__(self, keys: list[ViewKey]) -> None:
        self.views: dict[ViewKey, defaultdict[str, list[bytes]]] = {
            key: defaultdict(list) for key in keys
        }

    @property
    def all(self) -> list[bytes]:
        """The series of the first view of all series (what tests and benchmarks read)."""
        return next((parts[""] for (split, _), parts in self.views.items() if not split), [])

    @property
    def by_tenant(self) -> Mapping[str, list[bytes]]:
        """The first split view's series, by tenant."""
        return next((parts for (split, _), parts in self.views.items() if split), {})


def host_identity(config: RemoteWriteConfig) -> str:
    """The name the store knows this host by: the configured `instance`, else the host name.
    The tick offset comes from it, so hosts whose machines share a name (containers, cloned
    images) but that the operator named apart still spread over the interval."""
    return config.external_labels.get("instance") or socket.gethostname()


class RemoteWriter:
    def __init__(
        self,
        config: RemoteWriteConfig,
        snapshot: Callable[[], Snapshot],
        identity: str | None = None,
        jitter: bool = True,
        handover: Handover | None = None,
    ) -> None:
        """`identity` names the host for its tick offset (by default the `instance` the
        operator configured, else the host name); `jitter=False` is the shared grid and fixed
        backoff from before, for the fleet benchmark's comparison only. `handover` says which
        VMs this host writes while they live-migrate (handover.py); None: all of them."""
        self.config = config
        self._snapshot = snapshot
        self._handover = handover
        self.identity = host_identity(config) if identity is None else identity
        self.offset_ms = host_offset_ms(self.identity, config.interval_seconds) if jitter else 0
        self._view_keys = [
            (e.split_by_tenant, config.external_labels_for(e, self.identity))
            for e in config.endpoints
        ]
        self._views = list(dict.fromkeys(self._view_keys))
        self._encoders = [SeriesEncoder(external) for _, external in self._views]
        # The last tick's prefixes: reused by the next tick, and what it compares with for
        # staleness markers.
        self._prefixes: Prefixes = {}
        self._tail_length = 0
        self.senders = [
            EndpointSender(
                endpoint,
                DiskQueue(Path(config.queue_dir) / endpoint.name, endpoint.max_queue_bytes),
                jitter,
            )
            for endpoint in config.endpoints
        ]
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hc-rw")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for sender in self.senders:
            sender.kick()  # what a previous run left queued goes first
        self._task = asyncio.create_task(self._run(), name="remote-write")

    async def _run(self) -> None:
        interval = self.config.interval_seconds
        last_ms = None
        while True:
            tick_ms = next_tick_ms(time.time(), interval, self.offset_ms)
            if tick_ms == last_ms:  # woke a hair early (the loop's clock is not the wall's)
                tick_ms += interval_ms(interval)
            await asyncio.sleep(max(0.0, tick_ms / 1000 - time.time()))
            last_ms = tick_ms
            snapshot = self._snapshot()
            if not snapshot_ready(snapshot):
                continue
            await self.tick(snapshot, tick_ms)

    async def tick(self, snapshot: Snapshot, timestamp_ms: int) -> None:
        loop = asyncio.get_running_loop()
        by_view = await loop.run_in_executor(self._thread, self._batches, snapshot, timestamp_ms)
        for sender, view in zip(self.senders, self._view_keys, strict=True):
            batches = by_view[view]
            try:
                written = await loop.run_in_executor(self._thread, sender.queue.write, batches)
            except OSError as exc:  # a full or read-only disk: this tick is lost, not the daemon
                sender.queue.dropped["unqueueable"] += sum(b.samples for b in batches)
                sender.failed(f"cannot queue this tick's samples: {exc.strerror or exc}")
                continue
            sender.queue.add(written)
            sender.kick()

    def _batches(self, snapshot: Snapshot, timestamp_ms: int) -> dict[ViewKey, list[NewBatch]]:
        """The tick's compressed batches, once per view however many endpoints share it.
        Runs in the writer's thread, off the event loop."""
        encoded = self.encode(snapshot, timestamp_ms)

        def pack(parts: Mapping[str, list[bytes]]) -> list[NewBatch]:
            return [
                NewBatch(tenant, len(chunk), timestamp_ms, timestamp_ms, compress(b"".join(chunk)))
                for tenant, items in parts.items()
                for chunk in _chunks(items)
            ]

        return {key: pack(parts) for key, parts in encoded.views.items()}

    def encode(self, snapshot: Snapshot, timestamp_ms: int) -> Encoded:
        """The tick's series, each `prefix + value + tail`: the per-series work is one dict
        lookup and a concatenation per view (~1 us), the prefixes kept from the last tick."""
        tail = sample_tail(timestamp_ms)
        previous = self._prefixes if self._tail_length == len(tail) else {}
        snapshot, handed_over = self._handover_view(snapshot)
        current: Prefixes = {}
        out = Encoded(self._views)
        whole = [(i, out.views[key][""].append) for i, key in enumerate(self._views) if not key[0]]
        split = [(i, out.views[key]) for i, key in enumerate(self._views) if key[0]]
        for encoder in self._encoders:
            encoder.forget()
        for name, labels_text, value, tenant in series(snapshot):
            key = (name, labels_text)
            entry = previous.get(key)
            if entry is None:
                prefixes = tuple(e.prefix(name, labels_text, len(tail)) for e in self._encoders)
                entry = (prefixes, tenant)
            current[key] = entry
            prefixes = entry[0]
            sample = pack_value(value) + tail
            for i, add in whole:
                add(prefixes[i] + sample)
            # The series' owner, as its kind declares it: unattributed and host series have none
            # and never go to a tenant endpoint.
            if tenant:
                for i, by_tenant in split:
                    by_tenant[tenant].append(prefixes[i] + sample)
        for key, (prefixes, tenant) in previous.items():
            if key not in current and not _of_vm(key[1], handed_over):
                # Gone since the last tick: a staleness marker.
                for i, add in whole:
                    add(prefixes[i] + STALE_NAN + tail)
                if tenant:
                    for i, by_tenant in split:
                        by_tenant[tenant].append(prefixes[i] + STALE_NAN + tail)
        self._prefixes, self._tail_length = current, len(tail)
        return out

    def _handover_view(self, snapshot: Snapshot) -> tuple[Snapshot, tuple[str, ...]]:
        """The snapshot without the VMs another host writes now, and the label-text openings
        of every VM handed over (their series end without staleness markers)."""
        if self._handover is None:
            return snapshot, ()
        writes_here = self._handover.writes_here
        away = {vm.stats.uuid for vm in snapshot.vms if not writes_here(vm)}
        away |= self._handover.left()
        if not away:  # no migration under way: every tick but a few
            return snapshot, ()
        here = tuple(vm for vm in snapshot.vms if vm.stats.uuid not in away)
        if len(here) < len(snapshot.vms):
            snapshot = dataclasses.replace(snapshot, vms=here)
        return snapshot, tuple(f'vm_uuid="{uuid}"' for uuid in sorted(away))

    def status(self) -> tuple[RemoteWriteStatus, ...]:
        return tuple(sender.status() for sender in self.senders)

    def collect(self) -> Iterator[Sample]:
        for status in self.status():
            yield from remote_write_samples(status)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for sender in self.senders:
            await sender.close()
        self._thread.shutdown(wait=True)


def _of_vm(labels_text: str, openings: tuple[str, ...]) -> bool:
    # A VM's own series (exposition.py) open with its vm_uuid; a VF's or GPU's carry the host's
    # PCI address or GPU UUID, differ between hosts, and end with a marker as usual.
    return bool(openings) and labels_text.startswith(openings)


def _chunks(items: list[bytes]) -> list[list[bytes]]:
    return [items[i : i + MAX_SERIES_PER_BATCH] for i in range(0, len(items), MAX_SERIES_PER_BATCH)]
