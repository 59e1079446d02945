"""hostcollector's metrics about itself, reported by the parts they describe.

Each owner (a poller, the libvirt source, a watched file, the HTTP server's guard, a
remote-write endpoint, ...) says what it knows through `collect()`, as samples naming their
family by its declaration in metrics.py: the collector holds a registry of owners and reads it
once per snapshot, on the event loop where the owners' counters change, and the renderer places
each sample under its family. Nothing reaches into an owner to read its counters, and no family
is looked up by name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Protocol, runtime_checkable

from hostcollector import metrics as m
from hostcollector.family import Family

# A record like the others (the snapshot holds them); the owners' interface is here.
from hostcollector.family import Sample as Sample
from hostcollector.label_text import escape_label_value
from hostcollector.model import LibvirtHealth, RemoteWriteStatus, SourceStatus, TenantMapStatus

log = logging.getLogger(__name__)


@runtime_checkable
class SelfMetrics(Protocol):
    def collect(self) -> Iterable[Sample]: ...


class SelfMetricsRegistry:
    """The owners whose samples every snapshot carries, in registration order (within a family,
    samples keep that order: sources as polled, endpoints as configured)."""

    def __init__(self) -> None:
        self._owners: list[SelfMetrics] = []
        self._failing: set[int] = set()  # owners whose last collect() raised (logged once)

    def register(self, owner: SelfMetrics) -> None:
        self._owners.append(owner)

    def collect(self) -> tuple[Sample, ...]:
        """Every owner's samples. An owner that raises loses its own samples for this
        snapshot, not anyone else's: logged when it starts failing, not on every snapshot."""
        collected: list[Sample] = []
        for owner in self._owners:
            try:
                samples = tuple(owner.collect())
            except Exception:
                if id(owner) not in self._failing:
                    self._failing.add(id(owner))
                    log.exception("self-metrics of %s not collected", type(owner).__name__)
                continue
            self._failing.discard(id(owner))
            collected += samples
        return tuple(collected)


# Statuses that are also served as JSON (/api/v1/sources): their samples are made from the same
# status, here, so the two never disagree.


def source_samples(status: SourceStatus) -> Iterator[Sample]:
    source = f'source="{escape_label_value(status.name)}"'
    yield Sample(m.SOURCE_UP, source, int(status.up))
    yield Sample(m.SOURCE_POLLS_TOTAL, source, status.polls_total)
    for reason, count in status.errors_by_reason:
        yield Sample(
            m.SOURCE_POLL_ERRORS_TOTAL, f'{source},reason="{escape_label_value(reason)}"', count
        )
    yield Sample(m.SOURCE_LAST_POLL_DURATION_SECONDS, source, status.last_duration_seconds)
    yield Sample(
        m.SOURCE_LAST_SUCCESS_TIMESTAMP_SECONDS, source, status.last_success_timestamp_seconds
    )


def libvirt_samples(health: LibvirtHealth) -> Iterator[Sample]:
    yield Sample(m.LIBVIRT_CONNECTS_TOTAL, "", health.connects_total)
    for reason, count in health.timeouts_by_reason:
        yield Sample(m.LIBVIRT_TIMEOUTS_TOTAL, f'reason="{reason}"', count)
    yield Sample(m.LIBVIRT_QUARANTINED_VMS, "", health.quarantined_vms)
    yield Sample(m.LIBVIRT_QUARANTINES_TOTAL, "", health.quarantines_total)
    yield Sample(m.LIBVIRT_BUSY_DOMAINS_TOTAL, "", health.busy_domains_total)
    for reason, count in health.kernel_fallbacks_by_reason:
        yield Sample(m.LIBVIRT_KERNEL_FALLBACKS_TOTAL, f'reason="{reason}"', count)
    yield Sample(m.LIBVIRT_CONTROL_INFO_CALLS_TOTAL, "", health.control_info_calls_total)


def tenant_map_samples(status: TenantMapStatus) -> Iterator[Sample]:
    if not status.configured:
        return
    yield Sample(m.TENANT_MAP_ENTRIES, "", status.entries)
    yield Sample(m.TENANT_MAP_RELOADS_TOTAL, "", status.reloads_total)
    yield Sample(m.TENANT_MAP_ERRORS_TOTAL, "", status.errors_total)
    yield Sample(
        m.TENANT_MAP_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
        "",
        status.last_reload_success_timestamp_seconds,
    )


def remote_write_samples(status: RemoteWriteStatus) -> Iterator[Sample]:
    endpoint = f'endpoint="{status.endpoint}"'
    yield Sample(m.REMOTE_WRITE_QUEUE_BATCHES, endpoint, status.queue_batches)
    yield Sample(m.REMOTE_WRITE_QUEUE_SAMPLES, endpoint, status.queue_samples)
    yield Sample(m.REMOTE_WRITE_QUEUE_BYTES, endpoint, status.queue_bytes)
    yield Sample(
        m.REMOTE_WRITE_QUEUE_OLDEST_SAMPLE_TIMESTAMP_SECONDS,
        endpoint,
        status.oldest_sample_timestamp_seconds,
    )
    yield Sample(m.REMOTE_WRITE_SAMPLES_SENT_TOTAL, endpoint, status.samples_sent_total)
    yield Sample(m.REMOTE_WRITE_SAMPLES_FAILED_TOTAL, endpoint, status.samples_failed_total)
    yield Sample(
        m.REMOTE_WRITE_LAST_SUCCESS_TIMESTAMP_SECONDS,
        endpoint,
        status.last_success_timestamp_seconds,
    )
    for reason, count in status.samples_dropped_by_reason:
        yield Sample(m.REMOTE_WRITE_SAMPLES_DROPPED_TOTAL, f'{endpoint},reason="{reason}"', count)
    for reason, count in status.queue_files_dropped_by_reason:
        yield Sample(
            m.REMOTE_WRITE_QUEUE_FILES_DROPPED_TOTAL, f'{endpoint},reason="{reason}"', count
        )


def counts_by_reason(family: Family, counts: Iterable[tuple[str, int]]) -> Iterator[Sample]:
    """A counter by reason (HTTP denials, closed connections), in reason order."""
    return (Sample(family, f'reason="{reason}"', count) for reason, count in sorted(counts))
