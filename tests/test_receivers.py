"""The receiver harness (tests/receivers.py) against the real Prometheus and VictoriaMetrics."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from hostcollector.remote_write.protocol import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    VERSION_HEADER,
    compress,
)
from tests.receivers import (
    PrometheusReceiver,
    Receiver,
    ReceiverError,
    TenantGateway,
    VictoriaMetricsReceiver,
    http_post,
)
from tests.remote_write_wire import encode_write_request

pytestmark = pytest.mark.slow

Points = list[tuple[int, float]]  # (timestamp ms, value)


def write(
    url: str,
    name: str,
    points: Sequence[tuple[int, float]],
    labels: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """One remote-write request of one series; the status and body of the answer."""
    series = [([("__name__", name), *(labels or {}).items()], list(points))]
    all_headers = {
        "Content-Type": CONTENT_TYPE,
        "Content-Encoding": CONTENT_ENCODING,
        VERSION_HEADER[0]: VERSION_HEADER[1],
        **(headers or {}),
    }
    return http_post(url, compress(encode_write_request(series)), all_headers)


def ramp(end_ms: int, count: int, step_ms: int = 1000, first_value: float = 0.0) -> Points:
    """`count` samples `step_ms` apart ending at `end_ms`, valued first_value, first_value + 1..."""
    start = end_ms - (count - 1) * step_ms
    return [(start + i * step_ms, first_value + i) for i in range(count)]


def stored(
    receiver: Receiver, name: str, points: Points, end_ms: int | None = None
) -> list[tuple[float, float]]:
    """The samples of the one series `name` from the first of `points` to the last (or end_ms)."""
    end = points[-1][0] if end_ms is None else end_ms
    found = receiver.samples(name, points[0][0] / 1000, end / 1000)
    assert len(found) <= 1, found
    return next(iter(found.values()), [])


def seconds(points: Points) -> list[tuple[float, float]]:
    return [(t / 1000, v) for t, v in points]


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusReceiver]:
    with PrometheusReceiver(tmp_path_factory.mktemp("prometheus")) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsReceiver]:
    with VictoriaMetricsReceiver(tmp_path_factory.mktemp("victoria-metrics")) as receiver:
        yield receiver


def test_prometheus_keeps_samples_across_a_restart(prometheus: PrometheusReceiver) -> None:
    end = now_ms()
    recent = ramp(end, 10)
    backlog = ramp(end - 300_000, 10, first_value=100)  # ends 5 minutes ago
    assert write(prometheus.write_url, "rw_recent", recent, {"job": "t"}) == (204, "")
    assert write(prometheus.write_url, "rw_backlog", backlog, {"job": "t"}) == (204, "")
    assert prometheus.samples("rw_recent", recent[0][0] / 1000, end / 1000) == {
        frozenset({("__name__", "rw_recent"), ("job", "t")}): seconds(recent)
    }
    port, pid = prometheus.port, prometheus.pid

    prometheus.stop()
    assert not prometheus.running
    prometheus.start()
    assert (prometheus.port, prometheus.starts) == (port, 2)
    assert prometheus.pid != pid
    assert stored(prometheus, "rw_recent", recent) == seconds(recent)
    assert stored(prometheus, "rw_backlog", backlog) == seconds(backlog)

    # After the restart the series continue: right after their last sample, and with samples
    # minutes old (what a sender buffered through an outage).
    more = [(end + 1000 * i, 10.0 + i) for i in range(1, 3)]
    assert write(prometheus.write_url, "rw_recent", more, {"job": "t"}) == (204, "")
    catch_up = ramp(end - 60_000, 5, step_ms=30_000, first_value=110)  # 3 to 1 minutes old
    assert write(prometheus.write_url, "rw_backlog", catch_up, {"job": "t"}) == (204, "")
    assert stored(prometheus, "rw_recent", recent + more) == seconds(recent + more)
    assert stored(prometheus, "rw_backlog", backlog + catch_up) == seconds(backlog + catch_up)
    assert prometheus.series('{job="t"}', end / 1000 - 600, end / 1000 + 10) == [
        {"__name__": "rw_backlog", "job": "t"},
        {"__name__": "rw_recent", "job": "t"},
    ]
    assert "rw_recent" in prometheus.label_values("__name__")
    assert prometheus.query('rw_recent{job="t"}', time=end / 1000) == [
        {"metric": {"__name__": "rw_recent", "job": "t"}, "value": [end / 1000, "9"]}
    ]


def test_prometheus_rejects_a_whole_request_with_an_out_of_order_sample(
    prometheus: PrometheusReceiver,
) -> None:
    end = now_ms()
    first = ramp(end - 5000, 3)
    assert write(prometheus.write_url, "rw_ooo", first) == (204, "")
    # A sample before the series' newest one spoils the whole request: none of it is stored.
    late = [(end, 50.0), (first[0][0], 51.0)]
    assert write(prometheus.write_url, "rw_ooo", late) == (400, "out of order sample\n")
    # So does resending what was stored already, but not just the newest sample.
    assert write(prometheus.write_url, "rw_ooo", first)[0] == 400
    assert write(prometheus.write_url, "rw_ooo", first[-1:]) == (204, "")
    assert write(prometheus.write_url, "rw_ooo", [(first[-1][0], 7.0)]) == (
        400,
        "duplicate sample for timestamp\n",
    )
    assert stored(prometheus, "rw_ooo", first, end) == seconds(first)
    assert "Out of order sample from remote write" in prometheus.log()


def test_victoria_metrics_keeps_samples_across_a_restart(
    victoria: VictoriaMetricsReceiver,
) -> None:
    end = now_ms()
    recent = ramp(end, 10)
    backlog = ramp(end - 300_000, 10, first_value=100)
    assert write(victoria.write_url, "rw_recent", recent, {"job": "t"}) == (204, "")
    assert write(victoria.write_url, "rw_backlog", backlog, {"job": "t"}) == (204, "")
    # Visible at once: the query helpers flush VictoriaMetrics' in-memory rows first.
    assert victoria.samples("rw_recent", recent[0][0] / 1000, end / 1000) == {
        frozenset({("__name__", "rw_recent"), ("job", "t")}): seconds(recent)
    }
    port = victoria.port

    victoria.stop()
    assert not victoria.running
    victoria.start()
    assert (victoria.port, victoria.starts) == (port, 2)
    assert stored(victoria, "rw_recent", recent) == seconds(recent)
    assert stored(victoria, "rw_backlog", backlog) == seconds(backlog)

    more = [(end + 1000 * i, 10.0 + i) for i in range(1, 3)]
    catch_up = ramp(end - 60_000, 5, step_ms=30_000, first_value=110)
    assert write(victoria.write_url, "rw_recent", more, {"job": "t"}) == (204, "")
    assert write(victoria.write_url, "rw_backlog", catch_up, {"job": "t"}) == (204, "")
    assert stored(victoria, "rw_recent", recent + more) == seconds(recent + more)
    assert stored(victoria, "rw_backlog", backlog + catch_up) == seconds(backlog + catch_up)
    assert victoria.series('{job="t"}', end / 1000 - 600, end / 1000 + 10) == [
        {"__name__": "rw_backlog", "job": "t"},
        {"__name__": "rw_recent", "job": "t"},
    ]
    assert victoria.label_values("job") == ["t"]
    assert victoria.query('rw_recent{job="t"}', time=end / 1000) == [
        {"metric": {"__name__": "rw_recent", "job": "t"}, "value": [end / 1000, "9"]}
    ]


def test_victoria_metrics_stores_any_order_and_every_copy(
    victoria: VictoriaMetricsReceiver,
) -> None:
    end = now_ms()
    first = ramp(end - 5000, 3)
    assert write(victoria.write_url, "rw_any", first) == (204, "")
    assert write(victoria.write_url, "rw_any", [(end, 50.0), (first[0][0], 51.0)]) == (204, "")
    assert write(victoria.write_url, "rw_any", first[-1:]) == (204, "")  # a resend
    found = stored(victoria, "rw_any", first, end)
    assert sorted(found) == sorted(seconds([*first, (end, 50.0), (first[0][0], 51.0), first[-1]]))
    # An old sample of a new series (within -retentionPeriod) is accepted too.
    day_old = [(end - 86_400_000, 1.0)]
    assert write(victoria.write_url, "rw_day_old", day_old) == (204, "")
    assert stored(victoria, "rw_day_old", day_old) == seconds(day_old)


@pytest.mark.parametrize("kind", [PrometheusReceiver, VictoriaMetricsReceiver])
def test_start_reports_a_receiver_that_cannot_start(kind: type[Receiver], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        receiver = kind(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(ReceiverError, match="address already in use"):
            receiver.start()
    assert not receiver.running
    assert receiver.pid is None


def test_close_leaves_no_process(tmp_path: Path) -> None:
    with VictoriaMetricsReceiver(tmp_path) as receiver:
        pid = receiver.pid
        assert pid is not None
        assert "started VictoriaMetrics" in receiver.log()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.fixture(scope="module")
def tenants(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TenantGateway, PrometheusReceiver, VictoriaMetricsReceiver]]:
    with (
        PrometheusReceiver(tmp_path_factory.mktemp("acme")) as acme,
        VictoriaMetricsReceiver(tmp_path_factory.mktemp("globex")) as globex,
        TenantGateway({"acme": acme.write_url, "globex": globex.write_url}) as gateway,
    ):
        yield gateway, acme, globex


def test_tenant_gateway_routes_each_tenant_to_its_own_receiver(
    tenants: tuple[TenantGateway, PrometheusReceiver, VictoriaMetricsReceiver],
) -> None:
    gateway, acme, globex = tenants
    end = now_ms()
    acme_points, globex_points = ramp(end, 3), ramp(end, 3, first_value=10)
    org = TenantGateway.HEADER

    assert write(gateway.push_url(), "gw_acme", acme_points, headers={org: "acme"}) == (204, "")
    assert write(gateway.tenant_url("globex"), "gw_globex", globex_points) == (204, "")
    assert gateway.forwarded == {"acme": 1, "globex": 1}

    window = (end / 1000 - 60, end / 1000)
    assert [s["__name__"] for s in acme.series('{__name__=~"gw_.*"}', *window)] == ["gw_acme"]
    assert [s["__name__"] for s in globex.series('{__name__=~"gw_.*"}', *window)] == ["gw_globex"]
    assert stored(acme, "gw_acme", acme_points) == seconds(acme_points)
    assert stored(globex, "gw_globex", globex_points) == seconds(globex_points)

    # The backend's answer comes back as it is.
    assert write(gateway.push_url(), "gw_acme", acme_points[:1], headers={org: "acme"}) == (
        400,
        "out of order sample\n",
    )
    assert gateway.forwarded == {"acme": 2, "globex": 1}


def test_tenant_gateway_refuses_no_tenant_and_swallows_unknown_ones(
    tenants: tuple[TenantGateway, PrometheusReceiver, VictoriaMetricsReceiver],
) -> None:
    gateway, acme, globex = tenants
    before = dict(gateway.forwarded)
    points = ramp(now_ms(), 2)

    assert write(gateway.push_url(), "gw_nobody", points) == (401, "no org id\n")
    assert write(gateway.push_url(), "gw_nobody", points, headers={gateway.HEADER: ""})[0] == 401
    assert gateway.rejected == 2
    assert write(gateway.push_url(), "gw_initech", points, headers={gateway.HEADER: "initech"}) == (
        204,
        "",
    )
    assert write(gateway.tenant_url("umbrella"), "gw_umbrella", points) == (204, "")
    assert gateway.unknown_tenants == ["initech", "umbrella"]
    assert gateway.forwarded == before

    window = (points[0][0] / 1000 - 1, points[-1][0] / 1000 + 1)
    for receiver in (acme, globex):
        assert receiver.series('{__name__=~"gw_(nobody|initech|umbrella)"}', *window) == []


def test_tenant_gateway_answers_502_while_a_backend_is_down(
    tenants: tuple[TenantGateway, PrometheusReceiver, VictoriaMetricsReceiver],
) -> None:
    gateway, _, globex = tenants
    before = now_ms() - 60_000
    globex.stop()
    try:
        status, body = write(gateway.tenant_url("globex"), "gw_outage", [(before, 1.0)])
        assert status == 502, body
    finally:
        globex.start()
    after = [(before + 1000, 2.0)]
    assert write(gateway.tenant_url("globex"), "gw_outage", after) == (204, "")
    assert stored(globex, "gw_outage", after) == seconds(after)
