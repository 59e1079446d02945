"""The HTTP server: scrapes read the pre-rendered snapshot and never reach a source."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from hostcollector.app import COLLECTOR, build_app, wants_gzip, wants_openmetrics
from hostcollector.collector import Collector, Exposition
from hostcollector.config import AuthConfig, Config
from tests.replay import RecordedLibvirt
from tests.snapshots import LAB_ATTRIBUTION

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def with_client(
    source: RecordedLibvirt, test: Callable[[TestClient[Any, Any]], Awaitable[None]]
) -> None:
    config = Config(attribution=LAB_ATTRIBUTION)

    async def go() -> None:
        collector = Collector(config, sources={"libvirt": source})
        async with TestClient(TestServer(build_app(config, collector))) as client:
            # the first poll runs, then its snapshot is rendered (coalesced, off the loop)
            for _ in range(200):
                shown = collector.exposition.snapshot.sources
                if shown and shown[0].polls_total:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the first poll was never rendered")
            await test(client)

    asyncio.run(go())


def test_metrics_serves_the_snapshot_and_scrapes_cost_the_source_nothing() -> None:
    source = RecordedLibvirt()

    async def check(client: TestClient[Any, Any]) -> None:
        assert source.polls == 1
        bodies = []
        for _ in range(100):
            response = await client.get("/metrics")
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            bodies.append(await response.read())
        assert source.polls == 1
        assert len(set(bodies)) == 1
        text = bodies[0].decode()
        names = {s.name for f in parse_text(text) for s in f.samples}
        assert "hostcollector_vm_cpu_time_seconds_total" in names

    with_client(source, check)


def test_openmetrics_and_gzip_on_request() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        response = await client.get(
            "/metrics",
            headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
            auto_decompress=False,
        )
        assert response.headers["Content-Type"].startswith(
            "application/openmetrics-text; version=1.0.0"
        )
        assert response.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(await response.read()).decode()
        assert text.endswith("# EOF\n")
        assert any(f.name == "hostcollector_vm_cpu_time_seconds" for f in parse_om(text))

    with_client(RecordedLibvirt(), check)


def test_source_down_is_reported_not_a_failed_scrape() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        response = await client.get("/metrics")
        assert response.status == 200
        text = await response.text()
        up = [s for f in parse_text(text) for s in f.samples if s.name == "hostcollector_source_up"]
        assert [(s.labels, s.value) for s in up] == [({"source": "libvirt"}, 0.0)]
        errors = [
            s
            for f in parse_text(text)
            for s in f.samples
            if s.name == "hostcollector_source_poll_errors_total"
        ]
        assert [(s.labels["reason"], s.value) for s in errors] == [("connect", 1.0)]
        assert (await client.get("/healthz")).status == 200
        landing = await (await client.get("/")).text()
        assert "cannot connect to qemu:///system" in landing

    with_client(RecordedLibvirt(fail=True), check)


def test_health_and_landing() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        for path in ("/healthz", "/-/healthy"):
            response = await client.get(path)
            assert response.status == 200 and await response.text() == "ok\n"
        landing = await (await client.get("/")).text()
        assert "4 VMs" in landing and "/metrics" in landing
        assert (await client.get("/nope")).status == 404

    with_client(RecordedLibvirt(), check)


def test_ready_once_every_source_answered_a_failure_included() -> None:
    """/-/ready: 503 naming the sources without an answer yet, 200 once the snapshot served
    holds every enabled source's first answer; a failed poll is an answer."""

    async def go() -> None:
        config = Config(attribution=LAB_ATTRIBUTION, auth=AuthConfig("/nonexistent/tokens"))
        gate = asyncio.Event()
        working, failing = RecordedLibvirt(), RecordedLibvirt(fail=True)
        working_poll = working.poll

        async def slow_poll(*args: Any, **kwargs: Any) -> Any:
            await gate.wait()  # the first poll still running
            return await working_poll(*args, **kwargs)

        working.poll = slow_poll  # type: ignore[method-assign]
        collector = Collector(config, sources={"libvirt": working})
        async with TestClient(TestServer(build_app(config, collector))) as client:
            response = await client.get("/-/ready")  # no token needed, like /-/healthy
            assert response.status == 503
            assert await response.text() == "not ready: no answer yet from libvirt\n"
            assert (await client.get("/metrics")).status == 401
            gate.set()
            for _ in range(200):
                response = await client.get("/-/ready")
                if response.status == 200:
                    break
                await asyncio.sleep(0.02)
            assert response.status == 200 and await response.text() == "ready\n"
            # The snapshot served holds that answer.
            assert collector.exposition.snapshot.sources[0].polls_total >= 1

        collector = Collector(config, sources={"libvirt": failing})
        async with TestClient(TestServer(build_app(config, collector))) as client:
            for _ in range(200):
                response = await client.get("/-/ready")
                if response.status == 200:
                    break
                await asyncio.sleep(0.02)
            assert response.status == 200
            assert not collector.exposition.snapshot.sources[0].up

        collector = Collector(config, sources={})
        async with TestClient(TestServer(build_app(config, collector))) as client:
            assert (await client.get("/-/ready")).status == 200  # nothing to wait for

    asyncio.run(go())


def test_negotiation_helpers() -> None:
    assert wants_openmetrics(PROMETHEUS_ACCEPT)
    assert not wants_openmetrics("text/plain;version=0.0.4")
    assert wants_gzip("gzip, deflate") and wants_gzip("br;q=1.0, gzip;q=0.8")
    assert not wants_gzip("") and not wants_gzip("gzipx")


def rendered(exposition: Exposition) -> set[tuple[bool, bool]]:
    """(openmetrics, gzipped) bodies of the host's view rendered so far."""
    return {(om, gz) for om, gz, tenant in exposition._bodies if tenant is None}


def test_openmetrics_is_rendered_up_front_once_a_scraper_asked_for_it() -> None:
    source = RecordedLibvirt()

    async def check(client: TestClient[Any, Any]) -> None:
        collector = client.server.app[COLLECTOR]
        assert rendered(collector.exposition) == {(False, False), (False, True)}
        await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        assert collector.exposition.openmetrics_wanted
        await collector.pollers["libvirt"].poll_once()
        for _ in range(200):  # the next render, coalesced and off the loop
            if (True, True) in rendered(collector.exposition):
                break
            await asyncio.sleep(0.01)
        assert rendered(collector.exposition) == {
            (False, False),
            (False, True),
            (True, False),
            (True, True),
        }

    with_client(source, check)
