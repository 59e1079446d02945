"""A real live migration between two libvirtds on this machine (lab host A and host B).

Host B (tests/lab/second-host.sh) is a second libvirtd in its own mount, UTS and network
namespaces, with its own hostname and host UUID, joined to host A by a veth pair. What libvirt
reports on each side at each phase is recorded in
tests/fixtures/libvirt-9.0-live-migration-events.txt.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.labkit import (
    ACME,
    HOST_B_HOST_UUID,
    HOST_B_HOSTNAME,
    HOST_B_TCP_URI,
    HOST_B_URI,
    URI,
    booted_scratch_vm,
    domstate_reason,
    migrate,
    one,
    require_host_a,
    run_daemon,
    second_host,
    undelivered,
    virsh_at,
    wait_until,
)
from tests.receivers import PrometheusReceiver, TenantGateway

pytestmark = [pytest.mark.lab, pytest.mark.slow]

NAME = "hc-scratch-mig1"
UUID = "e1e1e1e1-0000-4000-8000-00000000a001"
IP = "10.99.0.31"


@pytest.fixture(scope="module")
def host_b() -> Iterator[str]:
    require_host_a()
    second_host("up")
    try:
        yield HOST_B_URI
    finally:
        second_host("down")


def host_uuid(uri: str) -> str:
    found = re.search(r"<host>\s*<uuid>([0-9a-f-]+)</uuid>", virsh_at(uri, "capabilities"))
    assert found, f"no host UUID in {uri}'s capabilities"
    return found.group(1)


def disk_writes(uri: str, name: str) -> int:
    for line in virsh_at(uri, "domstats", "--block", name).splitlines():
        key, _, value = line.strip().partition("=")
        if key == "block.0.wr.bytes":
            return int(value)
    raise AssertionError(f"no block.0.wr.bytes for {name} on {uri}")


def test_host_b_is_another_host_to_libvirt(host_b: str) -> None:
    """The identity libvirt's "migrating to the same host" check compares, and both URIs."""
    assert virsh_at(host_b, "hostname").strip() == HOST_B_HOSTNAME
    assert virsh_at(URI, "hostname").strip() != HOST_B_HOSTNAME
    assert host_uuid(host_b) == HOST_B_HOST_UUID
    assert host_uuid(HOST_B_TCP_URI) == HOST_B_HOST_UUID
    assert host_uuid(URI) != HOST_B_HOST_UUID
    assert second_host("up") == "", "second-host.sh up is not idempotent and silent"
    assert second_host("status").startswith("host-b: up")


def test_live_migration_there_and_back(host_b: str) -> None:
    with booted_scratch_vm(NAME, UUID, IP):
        assert domstate_reason(URI, NAME) == ("running", "booted")
        assert domstate_reason(host_b, NAME) is None

        migrate(NAME, URI, host_b)
        # a transient domain leaves the source entirely; a persistent one stays shut off
        assert domstate_reason(URI, NAME) in (None, ("shut off", "migrated"))
        assert domstate_reason(host_b, NAME) == ("running", "migrated")
        assert virsh_at(host_b, "domuuid", NAME).strip() == UUID
        assert "Incoming migration" in virsh_at(host_b, "domjobinfo", "--completed", NAME)
        # the guest goes on writing its disk on B: its QEMU runs, not just a paused shell
        written = disk_writes(host_b, NAME)
        wait_until(lambda: disk_writes(host_b, NAME) > written, 20, "the guest to write on B")

        migrate(NAME, host_b, URI)
        assert domstate_reason(host_b, NAME) is None
        assert domstate_reason(URI, NAME) == ("running", "migrated")
        written = disk_writes(URI, NAME)
        wait_until(lambda: disk_writes(URI, NAME) > written, 20, "the guest to write on A")


def test_daemon_reads_host_b(host_b: str, tmp_path: Path) -> None:
    """HOST_B_URI as `sources.libvirt.uri`: a hostcollector daemon sees the VM that moved."""
    with booted_scratch_vm(NAME, UUID, IP):
        migrate(NAME, URI, host_b)
        with run_daemon(tmp_path, sources_extra={"uri": host_b}) as daemon:
            samples = daemon.wait_polls(1)
            assert one(samples, "hostcollector_source_up", source="libvirt") == 1
            assert any(UUID in dict(labels).get("vm_uuid", "") for _, labels in samples)


RW_INTERVAL = 2.0


def tenant_remote_write(gateway: TenantGateway, instance: str, queue: Path) -> dict[str, Any]:
    return {
        "interval_seconds": RW_INTERVAL,
        "queue_dir": str(queue),
        "external_labels": {"instance": instance},
        "endpoints": [
            {
                "name": "tenants",
                "url": gateway.url + "/tenants/{tenant}/api/v1/write",
                "split_by_tenant": True,
            }
        ],
    }


def points_of(store: PrometheusReceiver, selector: str, since: float) -> list[tuple[float, float]]:
    return next(iter(store.samples(selector, since, time.time()).values()), [(0.0, 0.0)])


def test_a_migrating_vm_is_one_series_in_its_tenants_store(host_b: str, tmp_path: Path) -> None:
    """Issue 12's migration handover, for real: daemons on host A and host B write a tenant's
    VM into one Prometheus (which refuses a duplicate or out-of-order sample with the whole
    request) while the VM live-migrates from A to B over ~10 s. The store gets one series, no
    request refused, one counter reset where B took over, and no gap beyond one interval on each
    side of the switchover."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        PrometheusReceiver(tmp_path / "store") as store,
        TenantGateway({ACME: store.write_url}) as gateway,
        booted_scratch_vm(NAME, UUID, IP),
        run_daemon(
            tmp_path / "a",
            extra={"remote_write": tenant_remote_write(gateway, "host-a", tmp_path / "a" / "q")},
        ) as on_a,
        run_daemon(
            tmp_path / "b",
            sources_extra={"uri": host_b},
            extra={"remote_write": tenant_remote_write(gateway, "host-b", tmp_path / "b" / "q")},
        ) as on_b,
    ):
        started = time.time()
        cpu = f'hostcollector_vm_cpu_time_seconds_total{{vm_uuid="{UUID}"}}'
        wait_until(lambda: len(points_of(store, cpu, started)) >= 3, 30, "3 ticks from host A")
        # Throttled, so the migration spans several ticks of both hosts.
        took = migrate(NAME, URI, host_b, bandwidth_mib=8)
        migrated_at = time.time()
        assert domstate_reason(host_b, NAME) == ("running", "migrated")
        wait_until(
            lambda: points_of(store, cpu, started)[-1][0] > migrated_at + 3 * RW_INTERVAL,
            30,
            "host B's ticks of the VM",
        )
        a_samples, b_samples = on_a.scrape(), on_b.scrape()
        series = store.samples(cpu, started - 60, time.time())
    assert undelivered(a_samples) == {} and undelivered(b_samples) == {}
    assert gateway.forwarded[ACME] > 0
    assert len(series) == 1, f"one series, no host identity: {list(series)}"
    ((labels, points),) = series.items()
    assert "instance" not in dict(labels)
    times = [t for t, _ in points]
    values = [v for _, v in points]
    assert times[0] < migrated_at - took and times[-1] > migrated_at, "written before and after"
    resets = sum(1 for earlier, later in itertools.pairwise(values) if later < earlier)
    assert resets <= 1, f"the hosts' counters interleave: {points}"
    # Each host ticks every interval at its own offset: the switchover may cost one interval on
    # each side, plus the downtime (~25 ms here).
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert max(gaps) <= 2 * RW_INTERVAL + 1.0, f"gaps {gaps} (migration took {took:.1f} s)"
