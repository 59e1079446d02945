"""Remote write from the real daemon on the lab into real receivers, through a two-minute
receiver outage with a restart of hostcollector in the middle: no sample is lost.

The SRE endpoint writes every series to Debian's Prometheus (remote-write receiver on); the
tenant endpoint splits by tenant (X-Scope-OrgID) through a gateway into one VictoriaMetrics
per tenant. Both receivers are stopped for 120 s; hostcollector is restarted at 60 s.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostcollector.remote_write.queue import SUFFIX
from tests.labkit import LAB_VMS, Daemon, one, pick, require_lab, run_daemon, wait_until
from tests.receivers import PrometheusReceiver, TenantGateway, VictoriaMetricsReceiver

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
GLOBEX = "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1"
UUIDS = {vm["name"]: vm["uuid"] for vm in LAB_VMS}
INTERVAL = 2.0
OUTAGE_SECONDS = 120.0
CPU = "hostcollector_vm_cpu_time_seconds_total"


def remote_write_config(queue_dir: Path, prometheus: str, gateway: str) -> dict[str, Any]:
    return {
        "remote_write": {
            "interval_seconds": INTERVAL,
            "queue_dir": str(queue_dir),
            "endpoints": [
                {"name": "sre", "url": prometheus},
                {
                    "name": "tenants",
                    "url": gateway,
                    "split_by_tenant": True,
                    "headers": {"X-Scope-OrgID": "{tenant}"},
                },
            ],
        }
    }


def queued_timestamps(queue_dir: Path) -> set[float]:
    """Sample timestamps (s) of every batch queued for the SRE endpoint, read off the disk."""
    found = set()
    for path in (queue_dir / "sre").glob(f"*{SUFFIX}"):
        header = path.read_bytes().split(b"\n", 1)[0]
        found.add(int(header.split(b'"oldest_ms":')[1].split(b",")[0]) / 1000)
    return found


def queue_empty(daemon: Daemon) -> bool:
    samples = daemon.scrape()
    batches = pick(samples, "hostcollector_remote_write_queue_batches")
    return bool(batches) and all(value == 0 for _, value in batches)


@pytest.fixture
def receivers(
    tmp_path: Path,
) -> Iterator[tuple[PrometheusReceiver, dict[str, VictoriaMetricsReceiver], TenantGateway]]:
    require_lab()
    with (
        PrometheusReceiver(tmp_path / "prometheus") as prometheus,
        VictoriaMetricsReceiver(tmp_path / "vm-acme") as acme,
        VictoriaMetricsReceiver(tmp_path / "vm-globex") as globex,
        TenantGateway({ACME: acme.write_url, GLOBEX: globex.write_url}) as gateway,
    ):
        yield prometheus, {ACME: acme, GLOBEX: globex}, gateway


def test_outage_and_restart_lose_no_sample(
    tmp_path: Path,
    receivers: tuple[PrometheusReceiver, dict[str, VictoriaMetricsReceiver], TenantGateway],
) -> None:
    prometheus, tenants, gateway = receivers
    queue_dir = tmp_path / "queue"
    extra = remote_write_config(queue_dir, prometheus.write_url, gateway.push_url())
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
    began = time.time()

    # 1. Running: series arrive, each tenant's only in its own store.
    with run_daemon(tmp_path / "first", interval=INTERVAL, extra=extra) as daemon:
        wait_until(lambda: len(prometheus.samples(CPU, began, time.time())) == 4, 30, "4 VMs")
        for tenant, store in tenants.items():
            wait_until(lambda s=store: s.samples(CPU, began, time.time()), 30, "tenant series")
            seen = store.samples('{__name__=~".+"}', began, time.time())
            assert {dict(key).get("tenant_id") for key in seen} == {tenant}
        assert gateway.unknown_tenants == []
        got = prometheus.samples(CPU, began, time.time())
        assert {dict(k).get("vm_uuid") for k in got} == set(UUIDS.values())

        # 2. Both receivers go away; hostcollector queues on disk.
        prometheus.stop()
        tenants[GLOBEX].stop()
        outage_began = time.time()
        time.sleep(OUTAGE_SECONDS / 2)
        samples = daemon.scrape()
        assert one(samples, "hostcollector_remote_write_queue_samples", endpoint="sre") > 0
        assert one(samples, "hostcollector_remote_write_samples_failed_total", endpoint="sre") > 0
        queued_before_restart = queued_timestamps(queue_dir)
    first_log = (tmp_path / "first" / "hostcollector.log").read_text()

    # 3. hostcollector restarts mid-outage; the queue it left is still there and goes first.
    with run_daemon(tmp_path / "second", interval=INTERVAL, extra=extra) as daemon:
        time.sleep(max(0.0, outage_began + OUTAGE_SECONDS - time.time()))
        queued_before_recovery = queued_timestamps(queue_dir)
        prometheus.start()
        tenants[GLOBEX].start()
        recovered = time.time()
        wait_until(lambda: queue_empty(daemon), 90, "the queues to drain")
        drained = time.time()
        samples = daemon.scrape()
        assert not pick(samples, "hostcollector_remote_write_samples_dropped_total")
        end = time.time()
    second_log = (tmp_path / "second" / "hostcollector.log").read_text()
    for log in (first_log, second_log):
        assert "Traceback" not in log and " ERROR " not in log, log

    # 4. Every sample taken during the outage, before and after the restart, arrived.
    queued = queued_before_restart | queued_before_recovery
    print(  # the figures for the record (pytest -s)
        f"outage {recovered - outage_began:.0f} s: {len(queued)} ticks queued "
        f"({len(queued_before_restart)} before the restart), drained {drained - recovered:.1f} s "
        "after the receivers came back"
    )
    assert len(queued_before_restart) >= OUTAGE_SECONDS / 2 / INTERVAL - 3
    assert min(queued) <= outage_began + INTERVAL and max(queued) >= recovered - 2 * INTERVAL
    for vm, uuid in UUIDS.items():
        points = prometheus.samples(f'{CPU}{{vm_uuid="{uuid}"}}', began, end)
        (timestamps,) = [[t for t, _ in values] for values in points.values()]
        missing = sorted(queued - set(timestamps))
        assert not missing, f"{vm}: {len(missing)} queued samples never arrived: {missing[:5]}"
        # No hole but the restart itself (the daemon is down for a few seconds).
        gaps = [b - a for a, b in itertools.pairwise(timestamps)]
        assert sum(1 for gap in gaps if gap > INTERVAL * 1.5) <= 1, gaps
        assert max(gaps) < 15, gaps
    # The tenant stores too: globex's (stopped with the rest) holds the whole outage.
    for tenant, store in tenants.items():
        points = store.samples(CPU, began, end)
        assert points and {dict(k)["tenant_id"] for k in points} == {tenant}
        for values in points.values():
            timestamps = {t for t, _ in values}
            assert not sorted(queued - timestamps), tenant
    assert gateway.unknown_tenants == []
