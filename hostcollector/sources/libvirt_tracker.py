"""Which domains to query this cycle, which are quarantined, and the last good stats of each.

Pure bookkeeping (no libvirt, the clock passed in), after oVirt VDSM's sampling: a domain whose
QEMU monitor has been occupied longer than the poll deadline is stuck; it goes into quarantine
for `quarantine_seconds` (deliberately not a multiple of the usual 15 s interval or of QEMU's
30 s job timeout), is left out of the main path, and is retried alone on expiry, or earlier once
its monitor is free again. Meanwhile its
last good stats are served with their sample time, so the renderers can show the age.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from hostcollector.model import DomainStats, VmFreshness

log = logging.getLogger(__name__)

# virDomainControlState
CONTROL_OK = 0
CONTROL_JOB = 1  # a background job (migration, ...) is running
CONTROL_OCCUPIED = 2  # a monitor command is running; stateTime says for how long


@dataclass(frozen=True, slots=True)
class ListedDomain:
    uuid: str
    name: str
    # virDomainGetControlInfo when last asked (libvirt.py _suspects says when); None: unknown
    # (inactive domain, or the call failed)
    control_state: int | None
    control_seconds: float = 0.0  # how long the control interface has been in that state
    domain_id: int | None = None  # libvirt's id of the running domain; None: inactive


@dataclass(frozen=True, slots=True)
class Plan:
    query: tuple[str, ...]  # the main path, in chunks
    probe: tuple[str, ...]  # quarantine expired: retry alone, off the main path


@dataclass(slots=True)
class _Entry:
    name: str
    stats: DomainStats | None = None
    sampled_at: float | None = None
    quarantined_until: float | None = None


class DomainTracker:
    def __init__(self, quarantine_seconds: float, stuck_after_seconds: float) -> None:
        self._quarantine_seconds = quarantine_seconds
        self._stuck_after = stuck_after_seconds
        self._entries: dict[str, _Entry] = {}
        self.quarantines_total = 0

    def is_stuck(self, domain: ListedDomain) -> bool:
        return (
            domain.control_state == CONTROL_OCCUPIED and domain.control_seconds >= self._stuck_after
        )

    def plan(self, listed: Sequence[ListedDomain], now: float) -> Plan:
        query: list[str] = []
        probe: list[str] = []
        for domain in listed:
            entry = self._entries.get(domain.uuid)
            if entry is None:
                entry = self._entries[domain.uuid] = _Entry(domain.name)
            entry.name = domain.name  # renames are normal; the UUID is the identity
            if self.is_stuck(domain):
                self.quarantine(
                    domain.uuid, now, f"QEMU monitor busy for {domain.control_seconds:.0f} s"
                )
            elif entry.quarantined_until is None:
                query.append(domain.uuid)
            elif now >= entry.quarantined_until or domain.control_state == CONTROL_OK:
                # On expiry, or as soon as libvirt says the monitor is free again (the call
                # that hung on it returned): the VM rejoins after one probe answers in full.
                probe.append(domain.uuid)
        self._forget_all_but(domain.uuid for domain in listed)
        return Plan(tuple(query), tuple(probe))

    def quarantine(self, uuid: str, now: float, why: str) -> None:
        entry = self._entries.get(uuid)
        if entry is None:
            return
        if entry.quarantined_until is None:
            self.quarantines_total += 1
            log.warning(
                "VM %s (%s) quarantined: %s",
                entry.name,
                uuid,
                why,
                extra={"vm_uuid": uuid, "source": "libvirt"},
            )
        entry.quarantined_until = now + self._quarantine_seconds

    def fresh(self, uuid: str, stats: DomainStats, sampled_at: float) -> None:
        entry = self._entries.get(uuid)
        if entry is None:
            return  # vanished meanwhile
        if entry.sampled_at is not None and sampled_at < entry.sampled_at:
            return  # a late result never overwrites newer data
        if entry.quarantined_until is not None:
            log.info(
                "VM %s (%s) answers again; out of quarantine",
                entry.name,
                uuid,
                extra={"vm_uuid": uuid, "source": "libvirt"},
            )
        entry.stats, entry.sampled_at, entry.quarantined_until = stats, sampled_at, None

    def kernel(self, uuid: str, stats: DomainStats) -> None:
        """The kernel's values merged into the last good stats: they are the VM's values now,
        but libvirt did not answer for them, so its sample time (and age) stays."""
        entry = self._entries.get(uuid)
        if entry is not None:
            entry.stats = stats

    def partial(self, uuid: str, stats: DomainStats, sampled_at: float) -> None:
        """NOWAIT skipped this domain's monitor (job busy): keep the last good stats if any."""
        entry = self._entries.get(uuid)
        if entry is not None and entry.stats is None:
            entry.stats, entry.sampled_at = stats, sampled_at

    def last_stats(self, uuid: str) -> DomainStats | None:
        entry = self._entries.get(uuid)
        return entry.stats if entry else None

    def quarantined_uuids(self) -> set[str]:
        return {uuid for uuid, entry in self._entries.items() if entry.quarantined_until}

    @property
    def quarantined(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.quarantined_until is not None)

    def sample(
        self, listed: Sequence[ListedDomain], kernel_read_at: Mapping[str, float] | None = None
    ) -> tuple[tuple[DomainStats, ...], dict[str, VmFreshness]]:
        """Each listed VM's stats and freshness; `kernel_read_at`: when the kernel path served
        each VM it served this poll."""
        domains = []
        freshness = {}
        for domain in listed:
            entry = self._entries.get(domain.uuid)
            if entry is None:
                continue
            stats = entry.stats or DomainStats(domain.uuid, domain.name)
            if stats.name != domain.name:
                stats = dataclasses.replace(stats, name=domain.name)
            domains.append(stats)
            job = None if domain.control_state is None else domain.control_state == CONTROL_JOB
            freshness[domain.uuid] = VmFreshness(
                entry.sampled_at,
                entry.quarantined_until is not None,
                job,
                kernel_read_at.get(domain.uuid) if kernel_read_at else None,
            )
        return tuple(domains), freshness

    def _forget_all_but(self, uuids: Iterable[str]) -> None:
        keep = set(uuids)
        for gone in self._entries.keys() - keep:
            del self._entries[gone]
