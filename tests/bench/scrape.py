"""/metrics latency under 1 and 10 concurrent scrapers, measured with wrk (Debian's package):
a C load generator in its own process, so the client's own overhead stays out of the figures.
Sends `Accept-Encoding: gzip` as Prometheus does."""

from __future__ import annotations

import re
import shutil

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_LINE = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s|m)\s*$")


def wrk_command(
    url: str, connections: int, seconds: int, headers: tuple[str, ...] = ()
) -> list[str]:
    """`headers`: more "Name: value" headers (e.g. Authorization)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("apt-get install wrk first (the make bench targets do)")
    extra = [arg for header in headers for arg in ("-H", header)]
    return [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "120s",
        "--latency",
        "-H",
        "Accept-Encoding: gzip",
        *extra,
        url,
    ]


def parse_wrk(output: str) -> tuple[float, float]:
    """p50 and p99 in milliseconds from `wrk --latency` output."""
    found = {}
    for line in output.splitlines():
        match = _LINE.match(line)
        if match:
            found[match.group(1)] = float(match.group(2)) * _UNITS[match.group(3)]
    return found["50"], found["99"]
