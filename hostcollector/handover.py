"""Which host writes a VM's samples while it live-migrates: at any moment, at most one.

During a live migration the same domain (same UUID, same tenant, so the same series in a
tenant's store, which carries no host identity) exists on two hosts. If both wrote it, the
store would get two interleaved histories of one series: the destination's QEMU counters start
from zero, so every switch between the hosts reads as a counter reset, and a sample that lands
behind the other host's is refused as out of order, taking the whole request with it. The rule,
from libvirt's own view of the migration on each side:

- the source writes the VM while it runs, its outgoing migration job included (precopy: the
  guest still runs here);
- the source stops at the switchover: the domain pauses for the migration (event
  SUSPENDED/MIGRATED, or POSTCOPY once the guest runs on the destination) and then stops
  (STOPPED/MIGRATED);
- the destination does not write the domain while it waits paused for the incoming migration
  (STARTED/MIGRATED; state paused, reason migration) and writes it once it runs (RESUMED).

The gap in the tenant's series is then the switchover's downtime plus at most one interval on
each side, never an overlap. A VM that left is not given staleness markers by the source: they
would land between the destination's samples and end the series there (or be refused as out of
order). If the migration fails, the source resumes the guest (RESUMED) and writes it again.

Events come from libvirt's event thread, ticks from the remote writer's: the record is locked.
An event newer than the polled state wins (the poll may be a whole interval old at a tick);
otherwise the polled state and its reason decide, which also covers a daemon started
mid-migration, or events lost with a connection.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from hostcollector.model import AttributedVM

# virDomainEventType and the details used here (libvirt-domain.h; a stable ABI since 0.9).
EVENT_STARTED = 2
EVENT_SUSPENDED = 3
EVENT_RESUMED = 4
EVENT_STOPPED = 5
STARTED_MIGRATED = 1  # the destination's incoming domain, paused until the migration ends
SUSPENDED_MIGRATED = 1  # the source paused for the switchover
SUSPENDED_POSTCOPY = 7  # the source paused: the guest now runs on the destination
SUSPENDED_POSTCOPY_FAILED = 8
STOPPED_MIGRATED = 3  # the source, once the destination took over
RESUMED_MIGRATED = 1  # the destination, running from now on

# virDomainState and virDomainPausedReason
STATE_RUNNING = 1
STATE_PAUSED = 3
PAUSED_MIGRATION = 2
PAUSED_POSTCOPY = 12
PAUSED_POSTCOPY_FAILED = 13
_HANDOVER_PAUSES = frozenset((PAUSED_MIGRATION, PAUSED_POSTCOPY, PAUSED_POSTCOPY_FAILED))

_NOT_HERE = frozenset(
    (
        (EVENT_STARTED, STARTED_MIGRATED),
        (EVENT_SUSPENDED, SUSPENDED_MIGRATED),
        (EVENT_SUSPENDED, SUSPENDED_POSTCOPY),
        (EVENT_SUSPENDED, SUSPENDED_POSTCOPY_FAILED),
        (EVENT_STOPPED, STOPPED_MIGRATED),
    )
)
# A record this old says nothing a poll has not said since; dropping it bounds the record.
FORGET_AFTER_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class _Event:
    kind: int
    detail: int
    at: float  # Unix time


class Handover:
    """Lifecycle events of this host's domains, as far as a migration is concerned."""

    def __init__(self) -> None:
        self._events: dict[str, _Event] = {}
        self._lock = threading.Lock()

    def record(self, uuid: str, kind: int, detail: int, at: float | None = None) -> None:
        """A libvirt lifecycle event (called on libvirt's event thread)."""
        at = time.time() if at is None else at
        with self._lock:
            self._events[uuid] = _Event(kind, detail, at)
            if len(self._events) > 64:
                for old in [u for u, e in self._events.items() if at - e.at > FORGET_AFTER_SECONDS]:
                    del self._events[old]

    def writes_here(self, vm: AttributedVM) -> bool:
        """Whether this host writes the VM's samples now."""
        with self._lock:
            event = self._events.get(vm.stats.uuid)
        if event is not None and (vm.sampled_at is None or event.at >= vm.sampled_at):
            return (event.kind, event.detail) not in _NOT_HERE
        return not (vm.stats.state == STATE_PAUSED and vm.stats.state_reason in _HANDOVER_PAUSES)

    def left(self) -> frozenset[str]:
        """VMs that migrated away from this host (or are leaving now): their series end here
        without staleness markers, for the destination carries them on."""
        with self._lock:
            return frozenset(
                uuid
                for uuid, event in self._events.items()
                if event.kind in (EVENT_SUSPENDED, EVENT_STOPPED)
                and (event.kind, event.detail) in _NOT_HERE
            )
