"""Migration handover (issue 12): while a VM live-migrates, exactly one host writes it, and the
tenant's series stays one history: no overlap, no staleness marker in the middle, no sample out
of order. The rule is driven here by libvirt's own lifecycle events and domain states in the
order a live migration produces them (tests/fixtures/libvirt-9.0-live-migration-events.txt
holds a real transcript; tests/test_lab_migration.py migrates for real)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

from hostcollector.config import RemoteWriteConfig, RemoteWriteEndpointConfig
from hostcollector.handover import (
    EVENT_RESUMED,
    EVENT_STARTED,
    EVENT_STOPPED,
    EVENT_SUSPENDED,
    PAUSED_MIGRATION,
    RESUMED_MIGRATED,
    STARTED_MIGRATED,
    STATE_PAUSED,
    STATE_RUNNING,
    STOPPED_MIGRATED,
    SUSPENDED_MIGRATED,
    Handover,
)
from hostcollector.model import AttributedVM, Snapshot
from hostcollector.remote_write.writer import RemoteWriter
from tests.remote_write_wire import decode_write_request
from tests.snapshots import snapshot_from_raw

MIGRATING = "a1a1a1a1-0000-4000-8000-000000000001"  # hc-lab-a1, tenant acme
INTERVAL_S = 10
EPOCH_S = 1_700_000_000  # the timeline's 0 s (a real timestamp's length, as the encoder expects)


def vm_as(vm: AttributedVM, state: int, reason: int, sampled_at: float) -> AttributedVM:
    stats = dataclasses.replace(vm.stats, state=state, state_reason=reason)
    return dataclasses.replace(vm, stats=stats, sampled_at=sampled_at)


def with_vms(snapshot: Snapshot, vms: tuple[AttributedVM, ...]) -> Snapshot:
    return dataclasses.replace(snapshot, vms=vms)


class Host:
    """One host's remote writer with a tenant endpoint, ticked by hand."""

    def __init__(self, name: str, tmp_path: Path, handover: Handover | None) -> None:
        config = RemoteWriteConfig(
            queue_dir=str(tmp_path / name),
            interval_seconds=INTERVAL_S,
            endpoints=(
                RemoteWriteEndpointConfig(
                    name="tenants", url="http://127.0.0.1:9/{tenant}/write", split_by_tenant=True
                ),
            ),
        )
        self.name = name
        self.writer = RemoteWriter(config, lambda: snapshot_from_raw(), handover=handover)

    def tick(self, snapshot: Snapshot, at_s: float) -> list[tuple[float, float]]:
        """The migrating VM's CPU series as this tick writes it: [(timestamp_s, value)]."""
        encoded = self.writer.encode(snapshot, int((EPOCH_S + at_s) * 1000))
        written = []
        for parts in encoded.views[self.writer._view_keys[0]].values():
            for labels, samples in decode_write_request(b"".join(parts), compressed=False):
                if (
                    labels["__name__"] == "hostcollector_vm_cpu_time_seconds_total"
                    and labels["vm_uuid"] == MIGRATING
                ):
                    written += [(t / 1000 - EPOCH_S, v) for t, v in samples]
        return written

    def close(self) -> None:
        self.writer._thread.shutdown()


def migrate(tmp_path: Path, handover: bool) -> list[tuple[str, float, float]]:
    """One live migration of hc-lab-a1 from host A to host B, A ticking at :03 and B at :07 of
    each 10 s, in the order libvirt reports it on each side. What the tenant's store receives
    of the VM's CPU series, in arrival order: [(host, timestamp_s, value)]."""
    full = snapshot_from_raw()
    vm = next(v for v in full.vms if v.stats.uuid == MIGRATING)
    others = tuple(v for v in full.vms if v.stats.uuid != MIGRATING)
    a_events, b_events = (Handover(), Handover()) if handover else (None, None)
    a, b = Host("a", tmp_path, a_events), Host("b", tmp_path, b_events)
    running_on_a = with_vms(full, (*others, vm_as(vm, STATE_RUNNING, 1, sampled_at=EPOCH_S + 1)))
    received: list[tuple[str, float, float]] = []

    def tick(host: Host, snapshot: Snapshot, at_s: float) -> None:
        received.extend((host.name, t, v) for t, v in host.tick(snapshot, at_s))

    try:
        tick(a, running_on_a, 3)
        # 5 s: the destination defines the incoming domain, paused; its poll sees it so.
        if b_events:
            b_events.record(MIGRATING, EVENT_STARTED, STARTED_MIGRATED, at=EPOCH_S + 5)
        incoming = with_vms(
            full, (vm_as(vm, STATE_PAUSED, PAUSED_MIGRATION, sampled_at=EPOCH_S + 5.5),)
        )
        tick(b, incoming, 7)
        # 8 s: switchover. A pauses the guest, B resumes it, A's domain stops. Neither host
        # has polled since: their snapshots still say running (A) and paused (B).
        if a_events and b_events:
            a_events.record(MIGRATING, EVENT_SUSPENDED, SUSPENDED_MIGRATED, at=EPOCH_S + 8.0)
            b_events.record(MIGRATING, EVENT_RESUMED, RESUMED_MIGRATED, at=EPOCH_S + 8.1)
            a_events.record(MIGRATING, EVENT_STOPPED, STOPPED_MIGRATED, at=EPOCH_S + 8.2)
        tick(a, running_on_a, 13)
        tick(b, incoming, 17)
        # 20 s: both have polled again: the VM is gone from A and runs on B.
        running_on_b = with_vms(full, (vm_as(vm, STATE_RUNNING, 2, sampled_at=EPOCH_S + 20),))
        tick(a, with_vms(full, others), 23)
        tick(b, running_on_b, 27)
        tick(a, with_vms(full, others), 33)
        tick(b, running_on_b, 37)
    finally:
        a.close()
        b.close()
    return received


def test_one_host_writes_the_migrating_vm_at_a_time(tmp_path: Path) -> None:
    received = migrate(tmp_path, handover=True)
    assert [(host, t) for host, t, _ in received] == [("a", 3), ("b", 17), ("b", 27), ("b", 37)]
    assert not any(math.isnan(v) for _, _, v in received), "no staleness marker mid-series"
    times = [t for _, t, _ in received]
    assert times == sorted(times), "every sample lands after the one before"
    # The gap: one interval on each side of the 8 s switchover, never more.
    assert max(later - earlier for earlier, later in itertools.pairwise(times)) < 2 * INTERVAL_S


def test_without_the_handover_both_hosts_write_and_the_source_ends_the_series(
    tmp_path: Path,
) -> None:
    # What the rule prevents (and what this test file would not notice if it broke).
    received = migrate(tmp_path, handover=False)
    hosts = [host for host, _, _ in received]
    assert hosts[:4] == ["a", "b", "a", "b"], "both hosts write the VM during the migration"
    assert any(host == "a" and math.isnan(v) for host, _, v in received), "A's stale marker"


def test_a_failed_migration_leaves_the_vm_with_the_source() -> None:
    full = snapshot_from_raw()
    vm = next(v for v in full.vms if v.stats.uuid == MIGRATING)
    running = vm_as(vm, STATE_RUNNING, 1, sampled_at=EPOCH_S + 1)
    source = Handover()
    source.record(MIGRATING, EVENT_SUSPENDED, SUSPENDED_MIGRATED, at=EPOCH_S + 8)
    assert not source.writes_here(running)
    assert MIGRATING in source.left()
    # The migration was cancelled or failed: the source resumes the guest (any RESUMED).
    source.record(MIGRATING, EVENT_RESUMED, 0, at=EPOCH_S + 9)
    assert source.writes_here(running)
    assert MIGRATING not in source.left()


def test_without_events_the_polled_state_decides() -> None:
    # A daemon started mid-migration, or events lost with a connection.
    vm = next(v for v in snapshot_from_raw().vms if v.stats.uuid == MIGRATING)
    handover = Handover()
    assert handover.writes_here(vm_as(vm, STATE_RUNNING, 1, sampled_at=EPOCH_S + 5))
    assert not handover.writes_here(
        vm_as(vm, STATE_PAUSED, PAUSED_MIGRATION, sampled_at=EPOCH_S + 5)
    )
    assert handover.writes_here(vm_as(vm, STATE_PAUSED, 1, sampled_at=EPOCH_S + 5)), (
        "paused by a user"
    )
    # An event older than the polled state says nothing the poll did not.
    handover.record(MIGRATING, EVENT_STARTED, STARTED_MIGRATED, at=4)
    assert handover.writes_here(vm_as(vm, STATE_RUNNING, 2, sampled_at=EPOCH_S + 5))
