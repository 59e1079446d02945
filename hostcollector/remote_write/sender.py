"""Delivers one endpoint's queue: oldest batch first within each tenant, tenants in parallel
(up to `concurrency`), so one tenant the store throttles (429) does not hold up the others.

A 2xx removes the batch. A 5xx, a 429 or no answer keeps it and retries after a backoff
(full jitter: uniform up to 0.5 s doubling to 30 s, after the store's Retry-After if it gave
one; schedule.py). Any other 4xx means the store will never
take it (malformed, too old): it is dropped and counted, and the store's reason logged (the
first ERROR_BODY_BYTES of its answer: a store's answer is input too, and may never end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import TypeVar

import aiohttp

from hostcollector import __version__
from hostcollector.config import RemoteWriteEndpointConfig
from hostcollector.model import RemoteWriteStatus
from hostcollector.reloading import ReloadingFiles, json_object, read_bytes
from hostcollector.remote_write.protocol import CONTENT_ENCODING, CONTENT_TYPE, VERSION_HEADER
from hostcollector.remote_write.queue import Batch, DiskQueue
from hostcollector.remote_write.routing import Route, UnsafeRoute, tenant_id_problem
from hostcollector.remote_write.schedule import retry_delay

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_RETRY_AFTER_SECONDS = 300.0
# A tenant not yet in the tenant_ids_file: how often its lane looks again (the file is stat'ed
# at most every second).
UNMAPPED_RECHECK_SECONDS = 1.0
# On shutdown, how long requests in flight may take to finish (systemd waits 90 s by default).
CLOSE_GRACE_SECONDS = 5.0
# How often the endpoint's TLS files are checked for a change, at most.
TLS_CHECK_SECONDS = 5.0
# Of a store's error answer, what is read for the reason; the rest is never read (the
# connection is closed instead of drained).
ERROR_BODY_BYTES = 4096
REASON_CHARS = 300
# Tenants whose refusal was logged (once each); bounded, so that endless distinct bad ids
# cost a log line each now and then, not memory.
MAX_REFUSED_TENANTS = 1024


class Retry(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(Exception):
    pass


class Unmapped(Retry):
    """The tenant has no entry in the tenant_ids_file yet: nothing was sent."""


class Damaged(Exception):
    """The batch's queue file cannot be read or trusted: nothing was sent."""


def client_ssl_context(config: RemoteWriteEndpointConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.tls.ca_file)
    if config.tls.cert_file and config.tls.key_file:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return context


class ClientTls:
    """The endpoint's TLS settings, re-read when the CA, certificate or key file changes (a
    client certificate rotated every few weeks must not need a restart). A new set that does
    not load is rejected and the last good one kept; with none ever loaded, sends fail (and
    are retried) with the reason."""

    def __init__(self, config: RemoteWriteEndpointConfig) -> None:
        tls = config.tls
        paths = tuple(p for p in (tls.ca_file, tls.cert_file, tls.key_file) if p is not None)
        self._files: ReloadingFiles[ssl.SSLContext | None] = ReloadingFiles(
            f"remote write {config.name}: TLS files",
            paths,
            lambda: client_ssl_context(config),
            None if paths else client_ssl_context(config),
            min_check_seconds=TLS_CHECK_SECONDS,
        )

    def context(self) -> ssl.SSLContext:
        current = self._files.current()
        if current is None:
            raise Retry(f"no usable TLS files: {self._files.last_error}")
        return current


def parse_tenant_ids(data: bytes) -> dict[str, str]:
    """A tenant_ids_file: {"<tenant_id>": "<store tenant>"}; ValueError naming what is wrong."""
    document = json_object(data, "top level must be an object of tenant id -> the store's tenant")
    bad = [
        k for k, v in document.items() if not isinstance(v, str) or tenant_id_problem(v) is not None
    ]
    if bad:
        raise ValueError(
            "store tenants must be 1-150 of A-Z a-z 0-9 !._*'():-, not . or .. "
            f"(for {[k[:160] for k in bad[:5]]})"
        )
    return {str(k): str(v) for k, v in document.items()}


class EndpointSender:
    def __init__(
        self, config: RemoteWriteEndpointConfig, queue: DiskQueue, jitter: bool = True
    ) -> None:
        self.config = config
        self.queue = queue
        self._jitter = jitter  # False only for the fleet benchmark's "before"
        self.sent_total = 0
        self.failed_total = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._tls = ClientTls(config) if config.url.startswith("https://") else None
        self._route = Route(config.url, config.headers)
        self._refused_tenants: dict[str, None] = {}
        no_ids: dict[str, str] = {}
        self._tenant_ids = _watched(
            config.tenant_ids_file, "tenant_ids_file", config, parse_tenant_ids, no_ids
        )
        # Read when it changes, not at each request: a catch-up sends hundreds of batches.
        self._bearer_token = _watched(
            config.bearer_token_file, "bearer_token_file", config, _token, ""
        )
        self._session: aiohttp.ClientSession | None = None
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(config.concurrency)
        self._closing = asyncio.Event()

    def kick(self) -> None:
        """Start delivering every tenant lane that has batches and no task yet."""
        if self._closing.is_set():
            return
        self._lanes = {t: task for t, task in self._lanes.items() if not task.done()}
        for tenant in self.queue.tenants():
            if tenant not in self._lanes:
                task = asyncio.create_task(
                    self._deliver(tenant), name=f"remote-write-{self.config.name}"
                )
                task.add_done_callback(self._lane_ended)
                self._lanes[tenant] = task

    def _lane_ended(self, task: asyncio.Task[None]) -> None:
        # A bug must not silently stop delivery: say so; the next tick starts the lane again.
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "remote write %s: delivery stopped by an error",
                self.config.name,
                exc_info=task.exception(),
            )

    async def _deliver(self, tenant: str) -> None:
        failures = 0
        while not self._closing.is_set() and (batch := self.queue.oldest(tenant)) is not None:
            problem = tenant_id_problem(tenant) if tenant else None
            if problem is not None:
                self._refuse(tenant, problem)
                self.queue.drop(batch, "invalid_tenant")
                continue
            try:
                store_tenant = self._store_tenant(tenant)
                async with self._slots:
                    await self._send(batch, store_tenant)
            except UnsafeRoute as exc:
                self._refuse(tenant, str(exc))
                self.queue.drop(batch, "invalid_tenant")
                continue
            except Unmapped as exc:
                self.failed(str(exc))
                # Waiting for the control plane, not for the store: look again as soon as the
                # tenant_ids_file may have changed, not after a backoff that grew meanwhile.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), UNMAPPED_RECHECK_SECONDS)
                continue
            except Retry as exc:
                self.failed_total += batch.samples
                self.failed(str(exc))
                failures += 1
                delay = retry_delay(failures, exc.retry_after, self._jitter)
                # The backoff, cut short by close(): a waiting lane has nothing in flight.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
                continue
            except Rejected as exc:
                self.failed(str(exc))
                self.queue.drop(batch, "rejected")
                continue
            except Damaged as exc:
                self.failed(str(exc))
                self.queue.drop(batch, "corrupt")
                continue
            failures = 0
            self.queue.remove(batch)
            self.sent_total += batch.samples
            self.last_success = time.time()
            if self.last_error is not None:
                log.info("remote write %s: delivering again", self.config.name)
                self.last_error = None

    def failed(self, message: str) -> None:
        # One log line per change of error, not one per retry during an outage.
        if message != self.last_error:
            log.warning("remote write %s: %s", self.config.name, message)
        self.last_error = message

    def _refuse(self, tenant: str, problem: str) -> None:
        """Log a tenant whose samples cannot be sent once, not at each tick's batch of it."""
        if tenant in self._refused_tenants:
            return
        if len(self._refused_tenants) >= MAX_REFUSED_TENANTS:
            del self._refused_tenants[next(iter(self._refused_tenants))]
        self._refused_tenants[tenant] = None
        log.warning(
            "remote write %s: tenant id %r cannot be sent (%s); its samples are dropped",
            self.config.name,
            tenant[:160],
            problem,
        )

    def _store_tenant(self, tenant: str) -> str:
        """How the store names the tenant: itself, or its entry in the tenant_ids_file."""
        if self._tenant_ids is None or not tenant:
            return tenant
        mapped = self._tenant_ids.current().get(tenant)
        if mapped is None:
            # Kept queued, not dropped: the control plane may not have written it yet.
            raise Unmapped(f"tenant {tenant} is not in {self.config.tenant_ids_file} yet")
        return mapped

    async def _send(self, batch: Batch, tenant: str) -> None:
        """POST one batch; `tenant` is the store's name for the batch's tenant."""
        url = self._route.url(tenant)  # UnsafeRoute before anything is read or sent
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Content-Encoding": CONTENT_ENCODING,
            VERSION_HEADER[0]: VERSION_HEADER[1],
            "User-Agent": f"hostcollector/{__version__}",
            # An error answer is read only in part: compressed, a few KiB could unpack to GiB.
            "Accept-Encoding": "identity",
        }
        headers |= self._route.headers(tenant)
        try:
            body = await asyncio.to_thread(self.queue.read, batch)
        except (ValueError, OSError) as exc:
            raise Damaged(f"queue file {batch.name}: {exc}") from exc
        if self._bearer_token is not None:
            token = self._bearer_token.current()
            if not token:
                raise Retry(f"no bearer token: {self._bearer_token.last_error}")
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self.session().post(
                url, data=body, headers=headers, ssl=self._tls.context() if self._tls else True
            ) as response:
                if 200 <= response.status < 300:
                    return
                reason = await _error_reason(response)
                what = f"HTTP {response.status} for {batch.samples} samples" + (
                    f" of tenant {tenant}" if tenant else ""
                )
                if response.status == 429 or response.status >= 500:
                    raise Retry(
                        f"{what}: {reason}", _retry_after(response.headers.get("Retry-After"))
                    )
                raise Rejected(f"{what}, dropped: {reason}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Retry(f"{type(exc).__name__}: {exc or 'timed out'}") from exc

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
                # Keep one warm connection per tenant lane; no cookies, no env proxies.
                connector=aiohttp.TCPConnector(limit=self.config.concurrency),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self._session

    def status(self) -> RemoteWriteStatus:
        oldest = self.queue.oldest_ms
        return RemoteWriteStatus(
            endpoint=self.config.name,
            queue_batches=self.queue.batches,
            queue_samples=self.queue.samples,
            queue_bytes=self.queue.bytes,
            oldest_sample_timestamp_seconds=None if oldest is None else oldest / 1000,
            samples_sent_total=self.sent_total,
            samples_failed_total=self.failed_total,
            samples_dropped_by_reason=tuple(sorted(self.queue.dropped.items())),
            queue_files_dropped_by_reason=tuple(sorted(self.queue.files_dropped.items())),
            last_success_timestamp_seconds=self.last_success,
            last_error=self.last_error,
        )

    async def close(self, grace_seconds: float = CLOSE_GRACE_SECONDS) -> None:
        """Let requests in flight finish (for at most `grace_seconds`), then stop. A request
        cut off may have been stored without its answer seen: its batch stays queued and is
        sent again after a restart, which a store may refuse as a duplicate."""
        self._closing.set()
        lanes = list(self._lanes.values())
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=grace_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def _watched(
    path: str | None,
    option: str,
    config: RemoteWriteEndpointConfig,
    parse: Callable[[bytes], T],
    empty: T,
) -> ReloadingFiles[T] | None:
    """One of the endpoint's files, re-read when it changes (checked at most once a second)."""
    if path is None:
        return None
    return ReloadingFiles(
        f"remote write {config.name}: {option} {path}",
        (path,),
        lambda: parse(read_bytes(path)),
        empty,
        min_check_seconds=1.0,
    )


def _token(data: bytes) -> str:
    token = data.decode("utf-8").strip()
    if not token:
        raise ValueError("the file is empty")
    return token


async def _error_reason(response: aiohttp.ClientResponse) -> str:
    """The start of a store's error answer, on one line of printable text."""
    data = bytearray()
    while len(data) < ERROR_BODY_BYTES:
        chunk = await response.content.read(ERROR_BODY_BYTES - len(data))
        if not chunk:
            break
        data += chunk
    text = data.decode("utf-8", errors="replace")
    # One line: a reason goes into the log and /status, where newlines and escapes would lie.
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:REASON_CHARS]


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not worth parsing for a backoff)."""
    try:
        return min(float(value), MAX_RETRY_AFTER_SECONDS) if value else None
    except ValueError:
        return None
