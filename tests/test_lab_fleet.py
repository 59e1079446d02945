"""A fleet, not a host: three daemons with three host identities write for a minute and a half into one
real Prometheus (every series) and, split by tenant, into per-tenant VictoriaMetrics spaces.

The three daemons share the lab's libvirt (the real one, not recordings), so each sees the same
four VMs; each has its own `remote_write.external_labels.instance` (fleet-host-N), queue
directory and port. Nothing may be refused or dropped: in Prometheus every series is there once
per host, told apart by `instance`. A tenant's space gets no host identity, so the three hosts'
copies of a VM land in one series there, which a real fleet never does (a VM runs on one host);
what tells the hosts apart in it is when they write: each on its own offset in the interval.

Other tests' scratch VMs may come and go on the same libvirt meanwhile: a VM that lives for
seconds is seen by some hosts and not others, so the per-host checks are on the lab's four VMs
and the host-level series (`ours`); the tenant checks are on everything a tenant space holds.

The receivers and the run are module fixtures; the tests below only read what they stored.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hostcollector.config import HOST_IDENTITY_LABELS, parse_config
from hostcollector.remote_write.schedule import host_offset_ms, interval_ms
from hostcollector.wiring import build_collector
from tests.labkit import (
    ACME,
    GLOBEX,
    LAB_VMS,
    Daemon,
    FleetHost,
    Samples,
    pick,
    require_lab,
    run_fleet,
    undelivered,
    wait_until,
)
from tests.receivers import (
    PrometheusReceiver,
    SeriesKey,
    TenantGateway,
    VictoriaMetricsReceiver,
)

# CI runs this: the whole module takes about DURATION_SECONDS + 5 s (182 s measured at 180 s).
# 90 s is 18 remote-write ticks per host: enough for the grid, offset and drop checks.
DURATION_SECONDS = 90.0
INTERVAL = 5.0  # remote_write.interval_seconds
POLL_INTERVAL = 2.0  # sources.libvirt.interval_seconds
INSTANCES = ["fleet-host-1", "fleet-host-2", "fleet-host-3"]
TENANT_VMS = {
    tenant: {vm["uuid"] for vm in LAB_VMS if vm["project_id"] == tenant}
    for tenant in (ACME, GLOBEX)
}
LAB_UUIDS = {vm["uuid"] for vm in LAB_VMS}
CPU = "hostcollector_vm_cpu_time_seconds_total"
EVERY_SERIES = '{__name__=~".+"}'


@dataclass
class Receivers:
    prometheus: PrometheusReceiver
    tenants: dict[str, VictoriaMetricsReceiver]
    gateway: TenantGateway


@dataclass
class FleetRun:
    hosts: list[FleetHost]
    stopped: float  # every sample the tests read was written before this
    final: dict[str, Samples]  # each host's last scrape, by instance
    logs: dict[str, str]


def fleet_remote_write(receivers: Receivers) -> Callable[[str, Path], dict[str, Any]]:
    """Each host's remote_write section: every series to Prometheus, each tenant's to its own
    space through the gateway, with the host's identity as its instance."""

    def section(instance: str, directory: Path) -> dict[str, Any]:
        return {
            "interval_seconds": INTERVAL,
            "queue_dir": str(directory / "queue"),
            "external_labels": {"instance": instance},
            "endpoints": [
                {"name": "sre", "url": receivers.prometheus.write_url},
                {
                    "name": "tenants",
                    "url": receivers.gateway.push_url(),
                    "split_by_tenant": True,
                    "headers": {"X-Scope-OrgID": "{tenant}"},
                },
            ],
        }

    return section


@pytest.fixture(scope="module")
def receivers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receivers]:
    require_lab()
    tmp = tmp_path_factory.mktemp("fleet-receivers")
    with (
        PrometheusReceiver(tmp / "prometheus") as prometheus,
        VictoriaMetricsReceiver(tmp / "vm-acme") as acme,
        VictoriaMetricsReceiver(tmp / "vm-globex") as globex,
        TenantGateway({ACME: acme.write_url, GLOBEX: globex.write_url}) as gateway,
    ):
        yield Receivers(prometheus, {ACME: acme, GLOBEX: globex}, gateway)


@pytest.fixture(scope="module")
def fleet(receivers: Receivers, tmp_path_factory: pytest.TempPathFactory) -> FleetRun:
    tmp = tmp_path_factory.mktemp("fleet")
    remote_write = fleet_remote_write(receivers)
    with run_fleet(tmp, INSTANCES, remote_write, interval=POLL_INTERVAL) as hosts:
        time.sleep(max(0.0, hosts[0].started + DURATION_SECONDS - time.time()))
        for host in hosts:  # what the last tick queued is delivered before anyone looks
            wait_until(functools.partial(_drained, host.daemon), 30, "queues to drain")
        stopped = time.time()
        final = {host.instance: host.daemon.scrape() for host in hosts}
    logs = {host.instance: host.daemon.log() for host in hosts}
    return FleetRun(hosts, stopped, final, logs)


def _drained(daemon: Daemon) -> bool:
    batches = pick(daemon.scrape(), "hostcollector_remote_write_queue_batches")
    return len(batches) == 2 and all(value == 0 for _, value in batches)


def ours(key: SeriesKey) -> bool:
    """A host-level series, or one of a lab VM (not of another test's scratch VM)."""
    uuid = dict(key).get("vm_uuid")
    return uuid is None or uuid in LAB_UUIDS


def without_instance(key: SeriesKey) -> SeriesKey:
    return frozenset((name, value) for name, value in key if name != "instance")


def grid_problems(timestamps: list[float], began: float, ended: float) -> list[str]:
    """What is wrong with one host's samples of one series written from `began` to `ended`:
    too few or too many for the time, or two consecutive ones more than two intervals apart."""
    expected = (ended - began) / INTERVAL
    problems = []
    if not expected - 2 <= len(timestamps) <= expected + 1:
        problems.append(f"{len(timestamps)} samples in {ended - began:.0f} s")
    gaps = [b - a for a, b in itertools.pairwise(timestamps)]
    if gaps and max(gaps) > 2 * INTERVAL:
        problems.append(f"a gap of {max(gaps):.1f} s")
    return problems


def offset_of(timestamp: float) -> int:
    return round(timestamp * 1000) % interval_ms(INTERVAL)


def test_daemons_named_apart_tick_at_their_own_offsets(tmp_path: Path) -> None:
    """The daemon's writer takes its offset from the configured instance: three daemons on one
    machine (one host name) that the operator named apart spread over the interval."""
    offsets = {}
    for instance in INSTANCES:
        config = parse_config(
            f"remote_write:\n"
            f"  interval_seconds: {INTERVAL}\n"
            f"  queue_dir: {tmp_path / instance}\n"
            f"  external_labels: {{instance: {instance}, region: lab}}\n"
            f"  endpoints: [{{name: sre, url: 'http://127.0.0.1:9/api/v1/write'}}]\n"
        )
        writer = build_collector(config).remote_writer
        assert writer is not None
        assert writer.identity == instance
        offsets[instance] = writer.offset_ms
    assert offsets == {name: host_offset_ms(name, INTERVAL) for name in INSTANCES}
    assert len(set(offsets.values())) == len(INSTANCES), offsets


@pytest.mark.lab
@pytest.mark.slow
def test_no_batch_is_refused_or_dropped_on_any_host(fleet: FleetRun, receivers: Receivers) -> None:
    for instance, samples in fleet.final.items():
        assert undelivered(samples) == {}, instance
        sent = {
            labels["endpoint"]: value
            for labels, value in pick(samples, "hostcollector_remote_write_samples_sent_total")
        }
        assert sent.keys() == {"sre", "tenants"} and min(sent.values()) > 0, (instance, sent)
    for instance, log in fleet.logs.items():
        assert "Traceback" not in log and " ERROR " not in log and " WARNING " not in log, (
            instance,
            log,
        )
    assert receivers.gateway.unknown_tenants == [] and receivers.gateway.rejected == 0
    assert set(receivers.gateway.forwarded) == {ACME, GLOBEX}
    assert min(receivers.gateway.forwarded.values()) > 0


@pytest.mark.lab
@pytest.mark.slow
def test_prometheus_holds_every_series_once_per_host(fleet: FleetRun, receivers: Receivers) -> None:
    """Told apart by instance, each host's copy of a series is its own: three per label set."""
    began = fleet.hosts[0].started
    stored = receivers.prometheus.series(EVERY_SERIES, began, fleet.stopped)
    by_labels: defaultdict[SeriesKey, list[str]] = defaultdict(list)
    for labels in stored:
        if not ours(frozenset(labels.items())):
            continue
        by_labels[without_instance(frozenset(labels.items()))].append(labels.get("instance", ""))
    not_thrice = {
        dict(key).get("__name__", ""): sorted(found)
        for key, found in by_labels.items()
        if sorted(found) != INSTANCES
    }
    assert not_thrice == {}
    names = {dict(key)["__name__"] for key in by_labels}
    host_level = {dict(key)["__name__"] for key in by_labels if "vm_uuid" not in dict(key)}
    assert {
        "hostcollector_source_up",
        "hostcollector_remote_write_samples_sent_total",
    } <= host_level
    assert CPU in names
    vms = {dict(key)["vm_uuid"] for key in by_labels if dict(key)["__name__"] == CPU}
    assert vms == LAB_UUIDS
    print(  # the figures for the record (pytest -s)
        f"prometheus: {len(by_labels)} label sets x {len(INSTANCES)} hosts; "
        f"{len(host_level)} host-level metric names"
    )


@pytest.mark.lab
@pytest.mark.slow
def test_every_host_writes_every_series_on_its_own_offset_without_gaps(
    fleet: FleetRun, receivers: Receivers
) -> None:
    by_instance = {host.instance: host for host in fleet.hosts}
    stored = receivers.prometheus.samples(EVERY_SERIES, fleet.hosts[0].started, fleet.stopped)
    problems = {}
    sample_count = 0
    for key, points in stored.items():
        if not ours(key):
            continue
        host = by_instance[dict(key)["instance"]]
        timestamps = [t for t, _ in points if t >= host.started]
        sample_count += len(timestamps)
        found = grid_problems(timestamps, host.started, fleet.stopped)
        offsets = {offset_of(t) for t in timestamps}
        if offsets != {host_offset_ms(host.instance, INTERVAL)}:
            found.append(f"offsets {sorted(offsets)}")
        if found:
            problems[str(sorted(key))] = found
    assert problems == {}
    print(f"prometheus: {sample_count} samples, every one on its host's grid")


def tenant_series(receivers: Receivers, fleet: FleetRun) -> dict[str, dict[SeriesKey, list[float]]]:
    return {
        tenant: {
            key: [t for t, _ in points]
            for key, points in store.samples(
                EVERY_SERIES, fleet.hosts[0].started, fleet.stopped
            ).items()
        }
        for tenant, store in receivers.tenants.items()
    }


@pytest.mark.lab
@pytest.mark.slow
def test_a_tenant_space_holds_only_its_own_vms_and_no_host_identity(
    fleet: FleetRun, receivers: Receivers
) -> None:
    window = (fleet.hosts[0].started, fleet.stopped)
    host_level = {
        labels["__name__"]
        for labels in receivers.prometheus.series('{__name__=~".+", vm_uuid=""}', *window)
    }
    # Whose each VM is, as the SRE view (every series, every host) says.
    owner = {
        labels["vm_uuid"]: labels.get("tenant_id", "")
        for labels in receivers.prometheus.series("hostcollector_vm_info", *window)
    }
    for tenant, stored in tenant_series(receivers, fleet).items():
        labels = [dict(key) for key in stored]
        assert {label.get("tenant_id") for label in labels} == {tenant}
        vms = {label["vm_uuid"] for label in labels}
        assert vms >= TENANT_VMS[tenant]
        assert {owner.get(vm) for vm in vms} == {tenant}, tenant
        leaked = {name for label in labels for name in label} & HOST_IDENTITY_LABELS
        assert leaked == set(), tenant
        assert {label["__name__"] for label in labels} & host_level == set(), tenant
        assert CPU in {label["__name__"] for label in labels}


@pytest.mark.lab
@pytest.mark.slow
def test_every_host_wrote_each_tenant_vm_without_gaps(
    fleet: FleetRun, receivers: Receivers
) -> None:
    """No instance label in a tenant's space: each host's samples are the ones on its offset."""
    by_offset = {host_offset_ms(host.instance, INTERVAL): host for host in fleet.hosts}
    problems = {}
    sample_count = 0
    for tenant, stored in tenant_series(receivers, fleet).items():
        for key, timestamps in stored.items():
            if not ours(key):
                continue
            sample_count += len(timestamps)
            per_host: defaultdict[int, list[float]] = defaultdict(list)
            for t in timestamps:
                per_host[offset_of(t)].append(t)
            found = []
            if per_host.keys() != by_offset.keys():
                found.append(f"offsets {sorted(per_host)}, not {sorted(by_offset)}")
            for offset, host in by_offset.items():
                own = [t for t in per_host.get(offset, []) if t >= host.started]
                found += [
                    f"{host.instance}: {p}" for p in grid_problems(own, host.started, fleet.stopped)
                ]
            if found:
                problems[f"{tenant} {sorted(key)}"] = found
    assert problems == {}
    print(f"tenant spaces: {sample_count} samples of the lab's VMs, every one on a host's grid")
