"""Quarantine bookkeeping and partial-result detection, on lab recordings and a fake clock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hostcollector.config import DEFAULT_STATS_GROUPS
from hostcollector.model import DomainStats
from hostcollector.sources.libvirt_stats import is_partial, parse_domain_stats
from hostcollector.sources.libvirt_tracker import (
    CONTROL_JOB,
    CONTROL_OCCUPIED,
    CONTROL_OK,
    DomainTracker,
    ListedDomain,
)
from tests.conftest import FIXTURES, by_name, load_raw

STOPPED = FIXTURES / "libvirt-lab-9.0-qemu-7.2-tcg-b1-stopped.json"


def listed(
    uuid: str, state: int | None = CONTROL_OK, seconds: float = 0.0, name: str = ""
) -> ListedDomain:
    return ListedDomain(uuid, name or uuid, state, seconds)


def stats(uuid: str, cpu: float) -> DomainStats:
    return DomainStats(uuid, uuid, state=1, cpu_time_seconds=cpu)


def test_partial_results_of_a_stopped_qemu_are_recognised() -> None:
    # Recorded with hc-lab-b1's QEMU kill -STOPped and another client stuck on its monitor.
    raw = load_raw(Path(STOPPED))
    assert is_partial(by_name(raw, "hc-lab-b1")["stats"], DEFAULT_STATS_GROUPS)
    for name in ("hc-lab-a1", "hc-lab-c1", "hc-lab-orphan"):
        assert not is_partial(by_name(raw, name)["stats"], DEFAULT_STATS_GROUPS)
    partial = parse_domain_stats("u", "b1", by_name(raw, "hc-lab-b1")["stats"])
    assert partial.cpu_time_seconds is not None and partial.blocks[0].write_bytes is None


def test_partial_depends_on_the_groups_asked_and_on_the_state() -> None:
    b1 = by_name(load_raw(Path(STOPPED)), "hc-lab-b1")["stats"]
    assert not is_partial(b1, ("state", "cpu_total"))
    assert is_partial(b1, ("state", "block"))
    shut_off = {"state.state": 5, "state.reason": 1}
    assert not is_partial(shut_off, DEFAULT_STATS_GROUPS)


def test_a_monitor_busy_past_the_deadline_is_quarantined_then_probed_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = DomainTracker(quarantine_seconds=40, stuck_after_seconds=10)
    plan = tracker.plan([listed("a"), listed("b")], now=0)
    assert plan.query == ("a", "b") and plan.probe == ()
    tracker.fresh("a", stats("a", 1.0), 0)
    tracker.fresh("b", stats("b", 2.0), 0)

    with caplog.at_level(logging.INFO):
        # a monitor busy for less than the deadline is still queried (NOWAIT skips it cheaply)
        assert tracker.plan([listed("a"), listed("b", CONTROL_OCCUPIED, 3)], now=15).query == (
            "a",
            "b",
        )
        plan = tracker.plan([listed("a"), listed("b", CONTROL_OCCUPIED, 18)], now=30)
        assert plan.query == ("a",) and plan.probe == ()
        assert tracker.quarantined == 1 and tracker.quarantines_total == 1
        # still busy: the quarantine is renewed, not counted again, not probed
        plan = tracker.plan([listed("a"), listed("b", CONTROL_OCCUPIED, 60)], now=60)
        assert tracker.quarantines_total == 1 and plan.probe == ()
        # an unknown control state (the call failed) waits for the expiry, renewed at 60
        assert tracker.plan([listed("a"), listed("b", None)], now=90).probe == ()
        assert tracker.plan([listed("a"), listed("b", None)], now=100).probe == ("b",)
        # the monitor is free again before the expiry: probed at once
        tracker.quarantine("b", 100, "probe found the job busy")
        plan = tracker.plan([listed("a"), listed("b")], now=105)
        assert plan.query == ("a",) and plan.probe == ("b",)
        tracker.fresh("b", stats("b", 3.0), 105)
    assert tracker.quarantined == 0
    assert tracker.plan([listed("a"), listed("b")], now=110).query == ("a", "b")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "VM b (b) quarantined: QEMU monitor busy for 18 s",
        "VM b (b) answers again; out of quarantine",
    ]


def test_last_good_values_are_served_with_their_time_and_flags() -> None:
    tracker = DomainTracker(quarantine_seconds=40, stuck_after_seconds=10)
    tracker.plan([listed("a"), listed("b")], now=0)
    tracker.fresh("a", stats("a", 1.0), 0)
    tracker.fresh("b", stats("b", 2.0), 0)
    vms = [listed("a", CONTROL_JOB), listed("b", CONTROL_OCCUPIED, 30)]
    tracker.plan(vms, now=15)
    tracker.fresh("a", stats("a", 5.0), 15)
    domains, freshness = tracker.sample(vms)
    assert [d.cpu_time_seconds for d in domains] == [5.0, 2.0]
    assert freshness["a"].sampled_at == 15 and not freshness["a"].quarantined
    assert freshness["a"].job_active is True
    assert freshness["b"].sampled_at == 0 and freshness["b"].quarantined
    assert freshness["b"].job_active is False


def test_late_results_never_overwrite_newer_data() -> None:
    tracker = DomainTracker(quarantine_seconds=40, stuck_after_seconds=10)
    tracker.plan([listed("a")], now=0)
    tracker.fresh("a", stats("a", 9.0), 20)
    tracker.fresh("a", stats("a", 4.0), 10)  # an abandoned call returning at last
    domains, freshness = tracker.sample([listed("a")])
    assert domains[0].cpu_time_seconds == 9.0 and freshness["a"].sampled_at == 20


def test_partial_keeps_last_good_but_fills_a_gap() -> None:
    tracker = DomainTracker(quarantine_seconds=40, stuck_after_seconds=10)
    tracker.plan([listed("a"), listed("b")], now=0)
    tracker.fresh("a", stats("a", 1.0), 0)
    tracker.partial("a", DomainStats("a", "a", state=1), 15)
    tracker.partial("b", DomainStats("b", "b", state=1), 15)  # nothing better known yet
    domains, freshness = tracker.sample([listed("a"), listed("b")])
    assert domains[0].cpu_time_seconds == 1.0 and freshness["a"].sampled_at == 0
    assert domains[1].state == 1 and freshness["b"].sampled_at == 15


def test_churn_renames_and_vanishing_domains() -> None:
    tracker = DomainTracker(quarantine_seconds=40, stuck_after_seconds=10)
    tracker.plan([listed("a", name="old"), listed("b")], now=0)
    tracker.fresh("a", DomainStats("a", "old", state=1), 0)
    tracker.plan([listed("a", name="new")], now=15)  # renamed; b destroyed
    tracker.fresh("b", stats("b", 1.0), 15)  # a result for a vanished domain is ignored
    domains, freshness = tracker.sample([listed("a", name="new")])
    assert [(d.uuid, d.name) for d in domains] == [("a", "new")]
    assert set(freshness) == {"a"}
    # a domain never read successfully is still listed, with no sample time
    domains, freshness = tracker.sample([listed("a", name="new"), listed("c")])
    assert [d.uuid for d in domains] == ["a"]  # c was never planned, so it is unknown
    tracker.plan([listed("a", name="new"), listed("c", None)], now=30)
    domains, freshness = tracker.sample([listed("a", name="new"), listed("c", None)])
    assert domains[1] == DomainStats("c", "c") and freshness["c"].sampled_at is None
    assert freshness["c"].job_active is None
