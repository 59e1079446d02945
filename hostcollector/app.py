"""The HTTP side: /metrics serves the latest pre-rendered snapshot and never calls a source."""

from __future__ import annotations

import gc
import html
from collections.abc import AsyncIterator

from aiohttp import web

from hostcollector import __version__
from hostcollector.collector import Collector
from hostcollector.config import Config
from hostcollector.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE

COLLECTOR = web.AppKey("collector", Collector)


def wants_openmetrics(accept: str) -> bool:
    # Prometheus asks for OpenMetrics first when it can parse it; like client_python, serve it
    # whenever it is named at all.
    return "application/openmetrics-text" in accept


def wants_gzip(accept_encoding: str) -> bool:
    return any(part.split(";")[0].strip() == "gzip" for part in accept_encoding.split(","))


async def metrics(request: web.Request) -> web.Response:
    collector = request.app[COLLECTOR]
    exposition = collector.exposition
    openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
    collector.openmetrics_wanted |= openmetrics
    gzipped = wants_gzip(request.headers.get("Accept-Encoding", ""))
    response = web.Response(
        body=exposition.body(openmetrics=openmetrics, gzipped=gzipped),
        headers={"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE},
    )
    if gzipped:
        response.headers["Content-Encoding"] = "gzip"
    return response


async def healthz(request: web.Request) -> web.Response:
    # Liveness of the daemon itself; a source being down is reported in /metrics, not here.
    return web.Response(text="ok\n")


async def landing(request: web.Request) -> web.Response:
    snapshot = request.app[COLLECTOR].exposition.snapshot
    rows = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{'up' if s.up else 'down'}</td>"
        f"<td>{html.escape(s.last_error or '')}</td></tr>"
        for s in snapshot.sources
    )
    body = (
        "<!doctype html><html><head><title>hostcollector</title></head><body>"
        f"<h1>hostcollector {html.escape(__version__)}</h1>"
        f"<p>{len(snapshot.vms)} VMs. <a href='/metrics'>Metrics</a> · "
        "<a href='/healthz'>Health</a></p>"
        f"<table><tr><th>source</th><th>state</th><th>last error</th></tr>{rows}</table>"
        "</body></html>"
    )
    return web.Response(text=body, content_type="text/html")


def tune_gc() -> None:
    """Fewer, shorter garbage collector pauses for a process that builds ~100k short-lived,
    acyclic objects per cycle (refcounting frees them; the cyclic GC only finds them alive).

    Objects alive at start-up are frozen out of every later collection, and collections run
    after 50,000 allocations instead of 700. Measured at 5,000 VMs (`make bench-synthetic`'s
    set-up): 717 collections in 4 cycles -> 7, the longest pause (it holds the GIL, so it
    delays scrapes) 60 ms -> 31 ms.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def build_app(config: Config, collector: Collector | None = None) -> web.Application:
    app = web.Application()
    app[COLLECTOR] = collector or Collector(config)

    async def polling(app: web.Application) -> AsyncIterator[None]:
        app[COLLECTOR].start()
        yield
        await app[COLLECTOR].stop()

    app.cleanup_ctx.append(polling)
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/-/healthy", healthz)
    return app
