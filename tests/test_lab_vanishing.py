"""A domain that vanishes while the chunk it was in is being isolated and retried (real lab).

A stopped QEMU makes its chunk overrun; while the stats call hangs on it, another domain of the
same chunk is destroyed. The daemon then asks every member of the chunk for its control state:
the destroyed one answers VIR_ERR_NO_DOMAIN, which is normal churn and must cost nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.labkit import (
    LAB_VMS,
    URI,
    Daemon,
    one,
    pick,
    qemu_pid,
    require_lab,
    run_daemon,
    sample_times,
    scratch_vm,
    virsh,
    wait_until,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

UUIDS = {vm["name"]: vm["uuid"] for vm in LAB_VMS}
STUCK = "hc-lab-b1"
PARALLEL_CALLS = 2
# Wide enough that `virsh destroy` fits between the stats call reaching the stopped QEMU and the
# daemon giving up on it (half the timeout).
INTERVAL = 6.0
TIMEOUT = 5.0
MAX_SCRATCH = 6


def listing_order() -> list[str]:
    """Domain UUIDs in libvirtd's listing order, which the daemon splits into chunks."""
    import libvirt

    conn = libvirt.openReadOnly(URI)
    try:
        return [dom.UUIDString() for dom in conn.listAllDomains(0)]
    finally:
        conn.close()


def same_chunk(uuids: list[str], anchor: str) -> list[str]:
    """The daemon's chunking (LibvirtSource._query): uuids[i::lanes]."""
    at = uuids.index(anchor)
    return [uuid for uuid in uuids[at % PARALLEL_CALLS :: PARALLEL_CALLS] if uuid != anchor]


def monitor_occupied(name: str) -> bool:
    return virsh("-r", "domcontrol", name).strip().startswith("occupied")


@pytest.fixture
def scratch_in_stuck_chunk() -> Iterator[tuple[str, str]]:
    """Scratch domains, added until one shares the stopped VM's chunk: (its name, its uuid)."""
    stuck = UUIDS[STUCK]
    with contextlib.ExitStack() as stack:
        names: dict[str, str] = {}
        for n in range(MAX_SCRATCH):
            name, uuid = f"hc-scratch-vanish-{n}", f"e0e0e0e0-0000-4000-8000-0000000a{n:04x}"
            stack.enter_context(scratch_vm(name, uuid, "nova11", project_id=f"vanish{n}"))
            names[uuid] = name
            partners = [u for u in same_chunk(listing_order(), stuck) if u in names]
            if partners:
                yield names[partners[0]], partners[0]
                return
        pytest.fail(f"none of {MAX_SCRATCH} scratch domains landed in {STUCK}'s chunk")


@pytest.fixture
def daemon(tmp_path: Path, scratch_in_stuck_chunk: tuple[str, str]) -> Iterator[Daemon]:
    require_lab()
    with run_daemon(
        tmp_path,
        interval=INTERVAL,
        sources_extra={"timeout_seconds": TIMEOUT, "parallel_calls": PARALLEL_CALLS},
    ) as running:
        running.wait_polls(2)
        yield running
    log = running.log()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


def test_a_domain_destroyed_during_the_retry_costs_nothing(
    daemon: Daemon, scratch_in_stuck_chunk: tuple[str, str]
) -> None:
    victim_name, victim = scratch_in_stuck_chunk
    stuck = UUIDS[STUCK]
    assert victim in same_chunk(listing_order(), stuck), "the chunking changed under the test"
    previous = sample_times(daemon.scrape())
    pid = qemu_pid(STUCK)
    os.kill(pid, signal.SIGSTOP)
    try:
        # The next poll's stats call reaches the stopped QEMU: its monitor shows as occupied.
        wait_until(lambda: monitor_occupied(STUCK), INTERVAL * 2, f"{STUCK}'s monitor", 0.02)
        hung_seen = time.monotonic()
        virsh("destroy", victim_name)
        destroyed_in = time.monotonic() - hung_seen
        # Otherwise the daemon may have asked for the control states before the destroy.
        assert destroyed_in < TIMEOUT / 2 - 0.5, f"virsh destroy took {destroyed_in:.2f} s"
        samples = daemon.wait_polls(1)
    finally:
        os.kill(pid, signal.SIGCONT)
    log = daemon.log()
    # The chunk was isolated after the destroy: the stuck VM was found by its control state.
    assert f"{STUCK} ({stuck}) quarantined: stats call hung for" in log, log
    assert one(samples, "hostcollector_source_up", source="libvirt") == 1
    assert pick(samples, "hostcollector_source_poll_errors_total", source="libvirt") == []
    times = sample_times(samples)
    for name, uuid in UUIDS.items():
        if name != STUCK:
            assert times[uuid] > previous[uuid], f"{name} was not served in that poll"
    later = daemon.wait_polls(1)
    assert one(later, "hostcollector_source_up", source="libvirt") == 1
    assert victim not in sample_times(later)
    assert daemon.process.poll() is None
