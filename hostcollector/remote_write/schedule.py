"""When a host writes and when it retries, spread across a fleet.

Every host on the same wall-clock grid, retrying with the same doubling backoff, hits the store
in the same instant at each tick and again after every outage. Instead each host ticks at its
own offset within the interval, derived from its identity: stable across restarts (a host keeps
its own evenly spaced grid, which a store's chunks and `rate()` prefer), and uniform across a
fleet because it comes from sha256. Retries wait a "full jitter" backoff (uniform between 0 and
the doubling ceiling), so hosts that failed together do not retry together.
"""

from __future__ import annotations

import hashlib
import math
import random

BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
# Past this many doublings the ceiling is the cap anyway; it bounds 2**n.
_MAX_DOUBLINGS = 32


def interval_ms(interval_seconds: float) -> int:
    return max(1, round(interval_seconds * 1000))


def host_offset_ms(identity: str, interval_seconds: float) -> int:
    """The host's offset within the interval, in [0, interval) ms. 64 bits of the digest make
    the modulo's bias negligible for any interval."""
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % interval_ms(interval_seconds)


def next_tick_ms(now_seconds: float, interval_seconds: float, offset_ms: int) -> int:
    """The first tick strictly after `now_seconds`: t with (t - offset) % interval == 0, in
    integer ms, so a host's timestamps are exactly evenly spaced."""
    step = interval_ms(interval_seconds)
    elapsed = now_seconds * 1000 - offset_ms
    return offset_ms + (math.floor(elapsed / step) + 1) * step


def backoff_ceiling(failures: int) -> float:
    """The doubling ceiling after `failures` consecutive failures (1 = the first)."""
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0**doublings)


def retry_delay(
    failures: int,
    retry_after: float | None = None,
    jitter: bool = True,
    uniform: random.Random | None = None,
) -> float:
    """Seconds to wait before retrying after `failures` consecutive failures.

    Full jitter: uniform in [0, ceiling]. A store's Retry-After is a floor the jitter is added
    to: retrying earlier than it asked only earns another 429/503, and a whole fleet told the
    same Retry-After (a load balancer's fixed answer) must still not come back in one instant.
    `jitter=False` is the deterministic backoff from before, kept for the fleet benchmark's
    comparison (tests/bench/fleet_jitter.py).
    """
    ceiling = backoff_ceiling(failures)
    if not jitter:
        return max(ceiling, retry_after or 0.0)
    spread = (uniform or _RANDOM).uniform(0.0, ceiling)
    return (retry_after or 0.0) + spread


# Not for secrets: only spreads retries. Seeded from the OS, so hosts differ.
_RANDOM = random.Random()
