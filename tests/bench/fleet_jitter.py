"""A fleet through a store outage: N collectors (real RemoteWriters in one process, each with its
own host identity and queue directory, over the recorded lab snapshot) write to ONE receiver, a
small aiohttp app served for real that notes each request's arrival and answers 503 during an
outage window, 204 otherwise. Run twice in one go: without jitter (the shared wall-clock grid
and the fixed 0.5 s doubling backoff from before issue 12) and with it (each host at its own
offset, full-jitter backoff). Writes bench-results/jitter.{json,md}; asserts nothing.

Figures: the phase of normal ticks before the outage within the interval (spread and the most
requests in any 100 ms); requests during the outage and their worst 100 ms; and, per collector,
its first successful request after the outage ends: offsets from the end (p50/p90/max), their
spread (max - min) and the most of them in any 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench-results"
WINDOW_SECONDS = 0.1


@dataclass
class Arrival:
    at: float  # wall clock, as the receiver saw the request's body
    collector: int
    status: int


@dataclass
class Store:
    """One receiver for the whole fleet; `/write/<collector>` tells the collectors apart."""

    down_from: float = float("inf")
    down_until: float = float("-inf")
    arrivals: list[Arrival] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/write/{collector}", self._write)
        return app

    async def _write(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.time()
        status = 503 if self.down_from <= now < self.down_until else 204
        self.arrivals.append(Arrival(now, int(request.match_info["collector"]), status))
        if status == 503:
            return web.Response(status=503, text="store is down\n")
        return web.Response(status=204)


def peak_in_window(times: list[float], window: float = WINDOW_SECONDS) -> int:
    """The most of `times` within any `window` seconds."""
    ordered, best, start = sorted(times), 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def nearest_rank(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min_s": min(values),
        "p50_s": statistics.median(values),
        "p90_s": nearest_rank(values, 0.9),
        "max_s": max(values),
        "spread_s": max(values) - min(values),
    }


async def run_fleet(jitter: bool, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from hostcollector.config import RemoteWriteConfig, RemoteWriteEndpointConfig
    from hostcollector.remote_write.writer import RemoteWriter
    from tests.served import serve
    from tests.snapshots import snapshot_from_raw

    snapshot = snapshot_from_raw()
    store = Store()
    mode = "jitter" if jitter else "grid"
    with serve(store.app()) as url:
        writers = [
            RemoteWriter(
                RemoteWriteConfig(
                    interval_seconds=args.interval,
                    queue_dir=str(scratch / f"{mode}-{i}"),
                    endpoints=(RemoteWriteEndpointConfig(name="store", url=f"{url}/write/{i}"),),
                ),
                lambda: snapshot,
                identity=f"hv-{i:04d}.fra1.example.net",
                jitter=jitter,
            )
            for i in range(args.collectors)
        ]
        began = time.time()
        store.down_from = began + args.before * args.interval
        store.down_until = store.down_from + args.outage
        for writer in writers:
            writer.start()
        deadline = store.down_until + args.outage + 60

        def recovered() -> set[int]:
            return {
                a.collector for a in store.arrivals if a.at >= store.down_until and a.status < 300
            }

        while len(recovered()) < args.collectors and time.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(args.interval)  # a normal tick after the backlog, for the record
        for writer in writers:
            await writer.close()

    arrivals = list(store.arrivals)
    before = [a.at for a in arrivals if a.at < store.down_from]
    during = [a.at for a in arrivals if a.status == 503]
    first_after: dict[int, float] = {}
    for a in sorted(arrivals, key=lambda a: a.at):
        if a.at >= store.down_until and a.status < 300:
            first_after.setdefault(a.collector, a.at)
    firsts = list(first_after.values())
    phases = [t % args.interval for t in before]
    return {
        "mode": mode,
        "offsets_ms": [w.offset_ms for w in writers],
        "before": {
            "requests": len(before),
            "phase_spread_s": max(phases) - min(phases) if phases else None,
            "peak_per_100ms": peak_in_window(before),
        },
        "outage": {"requests": len(during), "peak_per_100ms": peak_in_window(during)},
        "after": {
            "collectors_recovered": len(firsts),
            **(summary([t - store.down_until for t in firsts]) if firsts else {}),
            "peak_per_100ms": peak_in_window(firsts),
        },
        "requests_total": len(arrivals),
        # every request: seconds since the outage ended, collector, status (for a plot)
        "arrivals": [(round(a.at - store.down_until, 4), a.collector, a.status) for a in arrivals],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--collectors", type=int, default=20)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds")
    parser.add_argument("--before", type=int, default=3, help="intervals before the outage")
    parser.add_argument("--outage", type=float, default=8.0, help="seconds")
    args = parser.parse_args()
    # Each collector logs the outage and its end: 2 x N lines that say nothing here.
    logging.getLogger("hostcollector").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="hc-jitter-") as scratch:
        runs = [asyncio.run(run_fleet(jitter, args, Path(scratch))) for jitter in (False, True)]
    report = {
        "collectors": args.collectors,
        "interval_s": args.interval,
        "outage_s": args.outage,
        "runs": runs,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "jitter.json").write_text(json.dumps(report, indent=2))
    grid, jittered = runs

    def cell(run: dict[str, Any], part: str, key: str, unit: str = "") -> str:
        value = run[part].get(key)
        if value is None:
            return "-"
        return f"{value:.3f}{unit}" if isinstance(value, float) else f"{value}{unit}"

    rows = [
        ("before: phase spread of normal ticks", "before", "phase_spread_s", " s"),
        ("before: most requests in 100 ms", "before", "peak_per_100ms", ""),
        ("outage: requests (503)", "outage", "requests", ""),
        ("outage: most requests in 100 ms", "outage", "peak_per_100ms", ""),
        ("after: collectors delivering again", "after", "collectors_recovered", ""),
        ("after: first success, spread (max - min)", "after", "spread_s", " s"),
        ("after: first success, p50 after the end", "after", "p50_s", " s"),
        ("after: first success, p90 after the end", "after", "p90_s", " s"),
        ("after: first success, last one after the end", "after", "max_s", " s"),
        ("after: most first successes in 100 ms", "after", "peak_per_100ms", ""),
    ]
    lines = [
        f"{args.collectors} collectors, one receiver, interval {args.interval:g} s, "
        f"a {args.outage:g} s outage (503) after {args.before} intervals:",
        "",
        "| | before (shared grid, fixed backoff) | jitter (own offset, full jitter) |",
        "| --- | --- | --- |",
        *(
            f"| {what} | {cell(grid, part, key, unit)} | {cell(jittered, part, key, unit)} |"
            for what, part, key, unit in rows
        ),
    ]
    text = "\n".join(lines) + "\n"
    (OUT / "jitter.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
