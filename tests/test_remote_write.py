"""Remote write: the wire format, the on-disk queue, and delivery to real receivers
(Debian's Prometheus and VictoriaMetrics, a tenant-routing gateway in front of the latter)."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hostcollector.config import ClientTlsConfig, RemoteWriteConfig, RemoteWriteEndpointConfig
from hostcollector.exposition import series
from hostcollector.remote_write import sender as sender_module
from hostcollector.remote_write import writer as writer_module
from hostcollector.remote_write.protocol import (
    SeriesEncoder,
    pack_value,
    parse_labels,
    sample_tail,
)
from hostcollector.remote_write.queue import DiskQueue, NewBatch
from hostcollector.remote_write.writer import RemoteWriter
from tests.conftest import load_raw
from tests.pki import make_ca, make_cert
from tests.receivers import PrometheusReceiver, TenantGateway, VictoriaMetricsReceiver
from tests.remote_write_wire import decode_write_request, encode_write_request, is_stale
from tests.served import serve
from tests.snapshots import snapshot_from_raw

ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
GLOBEX = "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1"


def test_label_text_parses_back_with_escapes() -> None:
    assert parse_labels('a="x",b="q\\"uote",c="back\\\\slash",d="new\\nline"') == (
        ("a", "x"),
        ("b", 'q"uote'),
        ("c", "back\\slash"),
        ("d", "new\nline"),
    )
    assert parse_labels("") == ()


def test_encoded_series_decode_to_the_exposition(tmp_path: Path) -> None:
    snapshot = snapshot_from_raw()
    writer = RemoteWriter(
        RemoteWriteConfig(queue_dir=str(tmp_path), endpoints=(endpoint("all"),)), lambda: snapshot
    )
    encoded = writer.encode(snapshot, 1_700_000_000_123)
    decoded = decode_write_request(b"".join(encoded.all), compressed=False)
    # The SRE view carries the host's identity (instance: its name) on every series.
    expected = [({"__name__": n, "instance": writer.identity} | {k: v for k, v in parse_labels(t) if v},
                 [(1_700_000_000_123, float(v))])
                for n, t, v, _ in series(snapshot)]  # fmt: skip
    assert decoded == expected
    assert len(decoded) > 200
    # by tenant: exactly the series labelled with that tenant, none unattributed
    for tenant, parts in encoded.by_tenant.items():
        got = decode_write_request(b"".join(parts), compressed=False)
        assert {labels["tenant_id"] for labels, _ in got} == {tenant}
    assert set(encoded.by_tenant) == set() or set(encoded.by_tenant) <= {ACME, GLOBEX}


def test_series_that_went_away_get_a_staleness_marker(tmp_path: Path) -> None:
    full = snapshot_from_raw()
    config = RemoteWriteConfig(queue_dir=str(tmp_path), endpoints=(endpoint("t", split=True),))
    writer = RemoteWriter(config, lambda: full)
    writer.encode(full, 1000)
    without_a1 = snapshot_from_raw(raw=[e for e in load_raw() if e["name"] != "hc-lab-a1"])
    encoded = writer.encode(without_a1, 2000)
    acme = decode_write_request(b"".join(encoded.by_tenant[ACME]), compressed=False)
    assert acme and all(is_stale(v) for _, samples in acme for _, v in samples)
    globex = decode_write_request(b"".join(encoded.by_tenant[GLOBEX]), compressed=False)
    assert not any(is_stale(v) for _, samples in globex for _, v in samples)
    assert not writer.encode(without_a1, 3000).by_tenant.get(ACME)  # marked once


def test_a_series_matches_a_reference_encoding() -> None:
    # TimeSeries{labels: [__name__="m", a="b"], samples: [{value: 1.0, timestamp: 1}]}, in
    # bytes as protoc encodes it, and as the writer builds it: prefix + value + tail.
    expected = bytes.fromhex(
        "0a24"  # TimeSeries, 36 bytes
        "0a0d" "0a085f5f6e616d655f5f" "12016d"  # Label __name__="m"
        "0a06" "0a0161" "120162"  # Label a="b"
        "120b" "09000000000000f03f" "1001"  # Sample 1.0 @ 1
    )  # fmt: skip
    tail = sample_tail(1)
    prefix = SeriesEncoder().prefix("m", 'a="b"', len(tail))
    assert prefix + pack_value(1.0) + tail == expected
    assert encode_write_request([((("__name__", "m"), ("a", "b")), [(1, 1.0)])]) == expected


def new_batch(tenant: str, samples: int, body: bytes = b"x" * 100) -> NewBatch:
    return NewBatch(tenant, samples, 1000, 1000, body)


def test_queue_survives_a_restart_in_order(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, max_bytes=1 << 20)
    queue.add(queue.write([new_batch("a", 1), new_batch("b", 2), new_batch("a", 3)]))
    (tmp_path / "0000000000000099.batch.tmp").write_bytes(b"half a write")
    (tmp_path / "0000000000000050.batch").write_bytes(b"not a header\n")
    again = DiskQueue(tmp_path, max_bytes=1 << 20)
    assert again.samples == 6 and again.batches == 3
    assert sorted(again.tenants()) == ["a", "b"]
    first = again.oldest("a")
    assert first is not None and first.samples == 1 and again.read(first) == b"x" * 100
    again.remove(first)
    assert again.oldest("a") is not None and again.oldest("a").samples == 3  # type: ignore[union-attr]
    # a file, not samples: the damaged header's count means nothing
    assert again.files_dropped == {"corrupt": 1} and again.dropped == {}
    assert not list(tmp_path.glob("*.tmp"))
    # numbering continues after the highest number on disk (the dropped file's too), so order
    # survives restarts
    written = again.write([new_batch("a", 4)])
    assert written[0].seq == 51


def test_queue_drops_the_oldest_past_its_bound_and_detects_damage(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, max_bytes=1000)
    for samples in range(1, 11):
        queue.add(queue.write([new_batch("", samples, b"y" * 200)]))
    assert queue.bytes <= 1000
    kept = queue.samples
    assert queue.dropped["queue_full"] == sum(range(1, 11)) - kept
    oldest = queue.oldest("")
    assert oldest is not None
    path = tmp_path / oldest.name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC32"):
        queue.read(oldest)


def endpoint(name: str, url: str = "http://127.0.0.1:9/api/v1/write", split: bool = False,
             **headers: str) -> RemoteWriteEndpointConfig:  # fmt: skip
    return RemoteWriteEndpointConfig(name=name, url=url, split_by_tenant=split, headers=headers)


async def deliver(writer: RemoteWriter, ticks: list[int], timeout: float = 20) -> None:
    """Queue `ticks` (ms) of the writer's snapshot and wait until every queue is empty."""
    for timestamp in ticks:
        await writer.tick(writer._snapshot(), timestamp)
    deadline = time.monotonic() + timeout
    while any(s.queue.batches for s in writer.senders):
        if time.monotonic() > deadline:
            raise AssertionError(f"not delivered: {writer.status()}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def receivers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    base = tmp_path_factory.mktemp("receivers")
    with (
        PrometheusReceiver(base / "prometheus") as prometheus,
        VictoriaMetricsReceiver(base / "vm-acme") as acme,
        VictoriaMetricsReceiver(base / "vm-globex") as globex,
        TenantGateway({ACME: acme.write_url, GLOBEX: globex.write_url}) as gateway,
    ):
        yield {"prometheus": prometheus, "acme": acme, "globex": globex, "gateway": gateway}


@pytest.mark.slow
def test_all_series_and_per_tenant_routing_into_real_receivers(
    receivers: dict[str, object], tmp_path: Path
) -> None:
    prometheus, acme, globex, gateway = (
        receivers[k] for k in ("prometheus", "acme", "globex", "gateway")
    )
    assert isinstance(prometheus, PrometheusReceiver) and isinstance(gateway, TenantGateway)
    assert isinstance(acme, VictoriaMetricsReceiver) and isinstance(globex, VictoriaMetricsReceiver)
    snapshot = snapshot_from_raw()
    config = RemoteWriteConfig(
        queue_dir=str(tmp_path),
        endpoints=(
            endpoint("sre", prometheus.write_url),
            endpoint("by_header", gateway.push_url(), split=True, **{"X-Scope-OrgID": "{tenant}"}),
            endpoint("by_path", gateway.url + "/tenants/{tenant}/api/v1/write", split=True),
        ),
    )
    now_ms = int(time.time() * 1000) // 1000 * 1000

    async def run() -> RemoteWriter:
        writer = RemoteWriter(config, lambda: snapshot)
        try:
            await deliver(writer, [now_ms - 2000, now_ms - 1000, now_ms])
        finally:
            await writer.close()
        return writer

    writer = asyncio.run(run())
    start, end = now_ms / 1000 - 5, now_ms / 1000 + 1
    everything = prometheus.samples('{__name__=~"hostcollector_.+"}', start, end)
    assert len(everything) == len(series(snapshot))
    assert all(len(points) == 3 for points in everything.values())
    cpu = prometheus.samples("hostcollector_vm_cpu_time_seconds_total", start, end)
    assert {dict(k).get("tenant_id") for k in cpu} == {ACME, GLOBEX, None}
    for tenant, store in ((ACME, acme), (GLOBEX, globex)):
        got = store.samples('{__name__=~".+"}', start, end)
        assert got and {dict(k).get("tenant_id") for k in got} == {tenant}
        # both endpoints (header and path) wrote the same samples: each twice (VM keeps both)
        assert all(len(points) == 6 for points in got.values())
        expected = sum(
            1 for _, labels, _, _ in series(snapshot) if f'tenant_id="{tenant}"' in labels
        )
        assert len(got) == expected
    assert gateway.unknown_tenants == []
    for status in writer.status():
        assert status.queue_batches == 0 and status.samples_failed_total == 0
        assert status.samples_sent_total > 0 and status.samples_dropped_by_reason == ()


@pytest.mark.slow
def test_an_outage_is_retried_and_a_rejection_dropped(
    receivers: dict[str, object], tmp_path: Path
) -> None:
    gateway = receivers["gateway"]
    globex = receivers["globex"]
    assert isinstance(gateway, TenantGateway) and isinstance(globex, VictoriaMetricsReceiver)
    snapshot = snapshot_from_raw()
    config = RemoteWriteConfig(
        queue_dir=str(tmp_path),
        endpoints=(endpoint("t", gateway.push_url(), split=True, **{"X-Scope-OrgID": "{tenant}"}),),
    )
    now_ms = int(time.time() * 1000)

    async def run() -> None:
        writer = RemoteWriter(config, lambda: snapshot)
        globex.stop()  # the gateway answers 502 for globex: retried, kept queued
        try:
            await writer.tick(snapshot, now_ms)
            await asyncio.sleep(1.5)
            status = writer.status()[0]
            assert status.queue_batches == 1 and status.samples_failed_total > 0
            assert status.last_error is not None and "HTTP 502" in status.last_error
            globex.start()
            await deliver(writer, [])
            assert writer.status()[0].samples_dropped_by_reason == ()
        finally:
            await writer.close()

    asyncio.run(run())
    got = globex.samples('{__name__=~".+"}', now_ms / 1000 - 1, now_ms / 1000 + 1)
    assert got and all(dict(k)["tenant_id"] == GLOBEX for k in got)

    prometheus = receivers["prometheus"]
    assert isinstance(prometheus, PrometheusReceiver)
    rejected = RemoteWriteConfig(
        queue_dir=str(tmp_path / "r"), endpoints=(endpoint("p", prometheus.write_url),)
    )

    async def stale() -> dict[str, int]:
        writer = RemoteWriter(rejected, lambda: snapshot)
        try:  # samples an hour and a half old: Prometheus answers 400 "out of bounds"
            await deliver(writer, [now_ms - 5_400_000])
            return dict(writer.status()[0].samples_dropped_by_reason)
        finally:
            await writer.close()

    assert asyncio.run(stale()) == {"rejected": len(series(snapshot))}


def test_a_big_host_is_cut_into_bounded_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "MAX_SERIES_PER_BATCH", 50)
    snapshot = snapshot_from_raw()
    config = RemoteWriteConfig(queue_dir=str(tmp_path), endpoints=(endpoint("all"),))

    async def run() -> list[int]:
        writer = RemoteWriter(config, lambda: snapshot)
        writer.senders[0].kick = lambda: None  # type: ignore[method-assign]  # queue only
        try:
            await writer.tick(snapshot, 1000)
            queue = writer.senders[0].queue
            return [decode_count(queue.read(b)) for b in list(queue._all.values())]
        finally:
            await writer.close()

    counts = asyncio.run(run())
    assert sum(counts) == len(series(snapshot)) and max(counts) == 50 and len(counts) > 2


def decode_count(body: bytes) -> int:
    return len(decode_write_request(body))


def test_an_unusable_queue_directory_costs_samples_not_the_daemon(tmp_path: Path) -> None:
    blocker = tmp_path / "queue"
    blocker.write_text("a file where the queue directory should be")
    snapshot = snapshot_from_raw()
    config = RemoteWriteConfig(queue_dir=str(blocker), endpoints=(endpoint("all"),))

    async def run() -> tuple[Any, Any]:
        writer = RemoteWriter(config, lambda: snapshot)
        writer.senders[0].kick = lambda: None  # type: ignore[method-assign]  # queue only
        try:
            await writer.tick(snapshot, 1000)
            broken = writer.status()[0]
            blocker.unlink()  # the disk is fixed: the next tick queues again
            await writer.tick(snapshot, 2000)
            return broken, writer.status()[0]
        finally:
            await writer.close()

    broken, fixed = asyncio.run(run())
    assert broken.samples_dropped_by_reason == (("unqueueable", len(series(snapshot))),)
    assert broken.last_error is not None and "cannot queue" in broken.last_error
    assert fixed.queue_batches == 1 and fixed.queue_samples == len(series(snapshot))


def test_close_lets_a_request_in_flight_finish_and_cuts_backoffs_short(tmp_path: Path) -> None:
    """A restart must not cut off a request the store is storing (it would be sent again)."""
    started = threading.Event()

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        if request.path.startswith("/down"):
            return web.Response(status=503, text="down for maintenance")
        started.set()
        await asyncio.sleep(1.0)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", slow)
    snapshot = snapshot_from_raw()
    with serve(app) as url:
        config = RemoteWriteConfig(
            queue_dir=str(tmp_path),
            endpoints=(endpoint("slow", f"{url}/write"), endpoint("down", f"{url}/down")),
        )

        async def run() -> tuple[float, Any, Any]:
            writer = RemoteWriter(config, lambda: snapshot)
            await writer.tick(snapshot, 1000)
            while not started.is_set():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the slow one is mid-request; the other backs off
            began = time.monotonic()
            await writer.close()
            slow_status, down_status = writer.status()
            return time.monotonic() - began, slow_status, down_status

        took, slow_status, down_status = asyncio.run(run())
    assert slow_status.queue_batches == 0 and slow_status.samples_sent_total > 0
    assert down_status.queue_batches == 1 and "HTTP 503" in (down_status.last_error or "")
    assert 0.5 < took < 3.0  # waited for the request, not for the 503's backoff


def test_a_rotated_client_certificate_is_used_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An mTLS store sees the new client certificate after its files are replaced."""
    monkeypatch.setattr(sender_module, "TLS_CHECK_SECONDS", 0.0)
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki)
    make_cert(pki, "store", "store", server=True)
    for name in ("one", "two"):
        make_cert(pki, name, f"hostcollector-{name}", server=False)
    store_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    store_context.load_cert_chain(pki / "store.pem", pki / "store.key")
    store_context.verify_mode = ssl.CERT_REQUIRED
    seen: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        subject = dict(item[0] for item in request.transport.get_extra_info("peercert")["subject"])
        seen.append(subject["commonName"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/write", receive)
    for suffix in ("pem", "key"):
        (tmp_path / f"client.{suffix}").write_bytes((pki / f"one.{suffix}").read_bytes())
    snapshot = snapshot_from_raw()
    with serve(app, ssl_context=store_context) as url:
        config = RemoteWriteConfig(
            queue_dir=str(tmp_path / "queue"),
            endpoints=(
                RemoteWriteEndpointConfig(
                    name="mtls",
                    url=f"{url}/write",
                    tls=ClientTlsConfig(
                        str(pki / "ca.pem"),
                        str(tmp_path / "client.pem"),
                        str(tmp_path / "client.key"),
                    ),
                ),
            ),
        )

        async def run() -> None:
            writer = RemoteWriter(config, lambda: snapshot)
            try:
                await deliver(writer, [1000])
                client_tls = writer.senders[0]._tls
                assert client_tls is not None
                loads_before = client_tls._files.reloads_total
                for suffix in ("pem", "key"):
                    (tmp_path / f"client.{suffix}").write_bytes(
                        (pki / f"two.{suffix}").read_bytes()
                    )
                # The files are re-read in a thread of their own, off the event loop. A check
                # already running may load them before the next line: wait for a load after the
                # write, not for the context to differ from one read now (CI hung on that).
                deadline = time.monotonic() + 20
                while client_tls._files.reloads_total <= loads_before:
                    client_tls.context()  # a check of the files, in their thread
                    assert time.monotonic() < deadline, "the new client certificate was not loaded"
                    await asyncio.sleep(0.01)
                await deliver(writer, [2000])
            finally:
                await writer.close()

        asyncio.run(run())
    assert seen == ["hostcollector-one", "hostcollector-two"]


@pytest.mark.slow
def test_a_store_that_names_tenants_its_own_way_gets_their_ids_from_a_map(
    receivers: dict[str, object], tmp_path: Path
) -> None:
    """VictoriaMetrics cluster takes a numeric account id: tenant -> id from a file, and a
    tenant not in it yet waits in the queue (nothing lost, nothing sent to a wrong space)."""
    acme, globex = receivers["acme"], receivers["globex"]
    assert isinstance(acme, VictoriaMetricsReceiver) and isinstance(globex, VictoriaMetricsReceiver)
    ids = tmp_path / "tenant-ids.json"
    ids.write_text(json.dumps({ACME: "1"}))
    snapshot = snapshot_from_raw()
    now_ms = int(time.time() * 1000)
    with TenantGateway({"1": acme.write_url, "2:0": globex.write_url}) as gateway:
        config = RemoteWriteConfig(
            queue_dir=str(tmp_path / "queue"),
            endpoints=(
                RemoteWriteEndpointConfig(
                    name="cluster",
                    url=gateway.url + "/tenants/{tenant}/api/v1/write",
                    split_by_tenant=True,
                    tenant_ids_file=str(ids),
                ),
            ),
        )

        async def run() -> tuple[Any, Any]:
            writer = RemoteWriter(config, lambda: snapshot)
            try:
                await writer.tick(snapshot, now_ms)
                await asyncio.sleep(1.5)
                waiting = writer.status()[0]
                ids.write_text(json.dumps({ACME: "1", GLOBEX: "2:0"}))
                await deliver(writer, [])
                return waiting, writer.status()[0]
            finally:
                await writer.close()

        waiting, done = asyncio.run(run())
        assert gateway.forwarded == {"1": 1, "2:0": 1} and gateway.unknown_tenants == []
    assert waiting.queue_batches == 1 and waiting.samples_failed_total == 0
    assert f"tenant {GLOBEX} is not in" in (waiting.last_error or "")
    assert done.queue_batches == 0 and done.samples_dropped_by_reason == ()
    for tenant, store in ((ACME, acme), (GLOBEX, globex)):
        got = store.samples('{__name__=~".+"}', now_ms / 1000 - 1, now_ms / 1000 + 1)
        assert got and {dict(k)["tenant_id"] for k in got} == {tenant}
