"""Host identity on remote write (issue 12): external labels on the SRE endpoints' series, none of
the host on a tenant's, the config checks for both, and a fleet of three hosts into one store."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostcollector.config import (
    HOST_IDENTITY_LABELS,
    SERIES_LABELS,
    RemoteWriteConfig,
    RemoteWriteEndpointConfig,
    parse_config,
)
from hostcollector.errors import ConfigError
from hostcollector.exposition import series
from hostcollector.model import Snapshot
from hostcollector.remote_write.protocol import SeriesEncoder, parse_labels
from hostcollector.remote_write.writer import RemoteWriter
from tests.conftest import load_raw
from tests.receivers import PrometheusReceiver, TenantGateway, VictoriaMetricsReceiver
from tests.remote_write_wire import decode_write_request
from tests.snapshots import LAB_ATTRIBUTION, SOURCE_UP, snapshot_from_raw

ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
GLOBEX = "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1"
TENANT_URL = "http://127.0.0.1:9/{tenant}/api/v1/write"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def test_an_external_label_that_collides_with_a_series_label_is_refused() -> None:
    assert sorted(
        problems(
            'remote_write: {external_labels: {vm_uuid: x, source: y, __tenant: z, 9lives: a, zone: ""}}'
        )
    ) == [
        "remote_write.external_labels.9lives: not a valid Prometheus label name",
        "remote_write.external_labels.__tenant: names starting with __ are reserved for Prometheus",
        "remote_write.external_labels.source: hostcollector's series carry this label themselves",
        "remote_write.external_labels.vm_uuid: hostcollector's series carry this label themselves",
        "remote_write.external_labels.zone: the value must be 1-1024 printable characters",
    ]
    assert problems(
        """
remote_write:
  endpoints:
    - {name: sre, url: "http://x/", external_labels: {endpoint: e, cluster: "tab\\there"}}
"""
    ) == [
        "remote_write.endpoints[0].external_labels.endpoint: hostcollector's series carry this label themselves",
        "remote_write.endpoints[0].external_labels.cluster: the value must be 1-1024 printable characters",
    ]
    # info_labels are a VM's series labels too, known only across sections
    assert problems(
        """
attribution: {info_labels: [flavor]}
remote_write:
  external_labels: {flavor: b}
  endpoints: [{name: sre, url: "http://x/", external_labels: {flavor: c}}]
"""
    ) == [
        "remote_write.external_labels.flavor: also in attribution.info_labels (a VM's label)",
        "remote_write.endpoints[0].external_labels.flavor: also in attribution.info_labels (a VM's label)",
    ]
    parse_config("remote_write: {external_labels: {instance: hv-17.example.net, region: eu}}")


def test_series_labels_cover_every_label_the_exposition_emits() -> None:
    """SERIES_LABELS is derived from metrics.py: a label a new family adds is covered. This
    checks the derivation against what the exposition really writes."""
    snapshot = snapshot_from_raw()
    emitted = {name for _, text, _, _ in series(snapshot) for name, _ in parse_labels(text)}
    assert emitted - SERIES_LABELS <= set(LAB_ATTRIBUTION.info_labels)
    assert {"vm_uuid", "tenant_id", "source", "endpoint", "reason"} <= SERIES_LABELS


def test_a_tenant_endpoint_that_would_leak_the_host_is_refused_unless_asked_for() -> None:
    leaking = """
remote_write:
  endpoints:
    - {name: t, url: "http://x/{tenant}", split_by_tenant: true,
       external_labels: {node: hv-17, cloud: example}%s}
"""
    assert problems(leaking % "") == [
        "remote_write.endpoints[0].external_labels.node: would tell tenants which host their "
        "VMs run on; set host_identity: true if they may know"
    ]
    config = parse_config(leaking % ", host_identity: true")
    assert config.remote_write.endpoints[0].host_identity
    assert problems(
        'remote_write: {endpoints: [{name: s, url: "http://x/", host_identity: true}]}'
    ) == ["remote_write.endpoints[0].host_identity: only meaningful with split_by_tenant: true"]
    assert {"instance", "host", "hostname", "node"} <= HOST_IDENTITY_LABELS


def encode(config: RemoteWriteConfig, snapshot: Snapshot) -> dict[str, list[dict[str, str]]]:
    """Each endpoint's series of one tick, decoded (which also checks labels are sorted and
    none is given twice)."""
    writer = RemoteWriter(config, lambda: snapshot)
    try:
        encoded = writer.encode(snapshot, 1_700_000_000_000)
        return {
            endpoint.name: [
                labels
                for parts in encoded.views[view].values()
                for labels, _ in decode_write_request(b"".join(parts), compressed=False)
            ]
            for endpoint, view in zip(config.endpoints, writer._view_keys, strict=True)
        }
    finally:
        writer._thread.shutdown()


def test_sre_series_carry_the_host_identity_and_tenant_series_none(tmp_path: Path) -> None:
    snapshot = snapshot_from_raw()
    config = RemoteWriteConfig(
        queue_dir=str(tmp_path),
        # Zone sorts before __name__ (upper case): the encoder puts it there, as 1.0 requires
        external_labels={"cluster": "eu-1", "Zone": "a"},
        endpoints=(
            RemoteWriteEndpointConfig("sre", "http://127.0.0.1:9/"),
            RemoteWriteEndpointConfig(
                "sre_too", "http://127.0.0.1:9/", external_labels={"store": "b"}
            ),
            RemoteWriteEndpointConfig("tenants", TENANT_URL, split_by_tenant=True),
            RemoteWriteEndpointConfig(
                "tenants_see_hosts",
                TENANT_URL,
                split_by_tenant=True,
                external_labels={"cloud": "example"},
                host_identity=True,
            ),
        ),
    )
    got = encode(config, snapshot)
    host = {"instance": socket.gethostname(), "cluster": "eu-1", "Zone": "a"}
    assert len(got["sre"]) == len(series(snapshot))
    assert all(labels.items() >= host.items() for labels in got["sre"])
    assert all(labels.items() >= (host | {"store": "b"}).items() for labels in got["sre_too"])
    tenants = got["tenants"]
    assert tenants and {labels["tenant_id"] for labels in tenants} == {ACME, GLOBEX}
    assert not any(set(labels) & (HOST_IDENTITY_LABELS | {"cluster", "Zone"}) for labels in tenants)
    assert all(
        labels.items() >= (host | {"cloud": "example"}).items()
        for labels in got["tenants_see_hosts"]
    )
    # the series themselves are the exposition's, the external labels aside
    exposition = sorted(
        sorted({"__name__": n, **{k: v for k, v in parse_labels(t) if v}}.items())
        for n, t, _, _ in series(snapshot)
    )
    stripped = sorted(sorted((k, v) for k, v in s.items() if k not in host) for s in got["sre"])
    assert stripped == exposition


def test_endpoints_that_read_a_tick_alike_share_one_encoding(tmp_path: Path) -> None:
    snapshot = snapshot_from_raw()
    config = RemoteWriteConfig(
        queue_dir=str(tmp_path),
        endpoints=(
            RemoteWriteEndpointConfig("a", "http://127.0.0.1:9/"),
            RemoteWriteEndpointConfig("b", "http://127.0.0.2:9/"),
            RemoteWriteEndpointConfig("t", TENANT_URL, split_by_tenant=True),
            RemoteWriteEndpointConfig("u", TENANT_URL.replace("9", "10"), split_by_tenant=True),
        ),
    )
    writer = RemoteWriter(config, lambda: snapshot)
    try:
        assert len(writer.encode(snapshot, 1000).views) == 2
    finally:
        writer._thread.shutdown()


def test_a_series_own_label_wins_over_an_external_one() -> None:
    # as Prometheus does: the config checks keep this from happening, the encoder still never
    # writes a label twice
    before, after = SeriesEncoder((("Zone", "z"), ("tenant_id", "x"))).label_set(
        'tenant_id="t",vm_uuid="u"'
    )
    assert b"x" not in after and b"Zone" in before


# --- Three hosts, one store -------------------------------------------------------------------

HOSTS = ("hv-a", "hv-b", "hv-c")
TICKS = 4


def host_snapshot(index: int) -> Snapshot:
    """The lab recording as host `index` would report it: its own VMs (a VM runs on one host)
    and its own poll figures, so host-level series differ between hosts as they do in a fleet."""
    raw = copy.deepcopy(load_raw())
    for entry in raw:
        entry["uuid"] = f"{index:02x}" + entry["uuid"][2:]
    snapshot = snapshot_from_raw(raw=raw)
    source = dataclasses.replace(SOURCE_UP, last_duration_seconds=0.25 + index / 100)
    return dataclasses.replace(snapshot, sources=(source,))


@pytest.fixture
def fleet_receivers(tmp_path: Path) -> Iterator[tuple[PrometheusReceiver, dict[str, VictoriaMetricsReceiver], TenantGateway]]:  # fmt: skip
    with (
        PrometheusReceiver(tmp_path / "prometheus") as prometheus,
        VictoriaMetricsReceiver(tmp_path / "vm-acme") as acme,
        VictoriaMetricsReceiver(tmp_path / "vm-globex") as globex,
        TenantGateway({ACME: acme.write_url, GLOBEX: globex.write_url}) as gateway,
    ):
        yield prometheus, {ACME: acme, GLOBEX: globex}, gateway


@pytest.mark.slow
def test_three_hosts_write_into_one_store_without_colliding(
    fleet_receivers: tuple[PrometheusReceiver, dict[str, VictoriaMetricsReceiver], TenantGateway],
    tmp_path: Path,
) -> None:
    prometheus, tenant_stores, gateway = fleet_receivers
    snapshots = [host_snapshot(i) for i in range(len(HOSTS))]
    now_ms = int(time.time()) * 1000
    ticks = [now_ms - 1000 * (TICKS - 1 - i) for i in range(TICKS)]

    async def run() -> list[RemoteWriter]:
        writers = [
            RemoteWriter(
                RemoteWriteConfig(
                    queue_dir=str(tmp_path / host),
                    external_labels={"instance": host},
                    endpoints=(
                        RemoteWriteEndpointConfig("sre", prometheus.write_url),
                        RemoteWriteEndpointConfig(
                            "tenants",
                            gateway.push_url(),
                            split_by_tenant=True,
                            headers={"X-Scope-OrgID": "{tenant}"},
                        ),
                    ),
                ),
                lambda snapshot=snapshot: snapshot,  # type: ignore[misc]
            )
            for host, snapshot in zip(HOSTS, snapshots, strict=True)
        ]
        try:
            for timestamp in ticks:  # every host on the same grid tick: the worst case
                for writer in writers:
                    await writer.tick(writer._snapshot(), timestamp)
            deadline = time.monotonic() + 30
            while any(s.queue.batches for w in writers for s in w.senders):
                if time.monotonic() > deadline:
                    raise AssertionError([w.status() for w in writers])
                await asyncio.sleep(0.05)
        finally:
            for writer in writers:
                await writer.close()
        return writers

    writers = asyncio.run(run())
    for writer in writers:
        for status in writer.status():
            assert status.samples_dropped_by_reason == (), status
            assert status.samples_failed_total == 0 and status.samples_sent_total > 0, status
    start, end = ticks[0] / 1000 - 1, ticks[-1] / 1000 + 1

    everything = prometheus.samples('{__name__=~"hostcollector_.+"}', start, end)
    assert len(everything) == sum(len(series(s)) for s in snapshots)
    assert all(len(points) == TICKS for points in everything.values())
    up = prometheus.samples("hostcollector_source_up", start, end)
    assert sorted(dict(key)["instance"] for key in up) == list(HOSTS)
    # every host-level series (no vm_uuid) once per host
    host_level: dict[frozenset[tuple[str, str]], set[str]] = {}
    for key in everything:
        labels = dict(key)
        if "vm_uuid" not in labels:
            instance = labels.pop("instance")
            host_level.setdefault(frozenset(labels.items()), set()).add(instance)
    assert len(host_level) > 20 and all(hosts == set(HOSTS) for hosts in host_level.values())

    for tenant, store in tenant_stores.items():
        got = store.samples('{__name__=~".+"}', start, end)
        assert {dict(key)["tenant_id"] for key in got} == {tenant}
        assert not any(set(dict(key)) & HOST_IDENTITY_LABELS for key in got)
        # unique by vm_uuid across hosts: every host's series of the tenant, each tick once
        expected = sum(
            1 for s in snapshots for _, t, _, _ in series(s) if f'tenant_id="{tenant}"' in t
        )
        assert len(got) == expected
        assert all(len(points) == TICKS for points in got.values())
    assert gateway.unknown_tenants == []
