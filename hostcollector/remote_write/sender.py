"""Delivers one endpoint's queue: oldest batch first within each tenant, tenants in parallel
(up to `concurrency`), so one tenant the store throttles (429) does not hold up the others.

A 2xx removes the batch. A 5xx, a 429 or no answer keeps it and retries after a backoff
(0.5 s doubling to 30 s, or the store's Retry-After). Any other 4xx means the store will never
take it (malformed, too old): it is dropped and counted, and the store's reason logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from urllib.parse import quote

import aiohttp

from hostcollector import __version__
from hostcollector.config import TENANT_ID, TENANT_PLACEHOLDER, RemoteWriteEndpointConfig
from hostcollector.model import RemoteWriteStatus
from hostcollector.remote_write.protocol import CONTENT_ENCODING, CONTENT_TYPE, VERSION_HEADER
from hostcollector.remote_write.queue import Batch, DiskQueue

log = logging.getLogger(__name__)
BACKOFF_MIN_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 300.0


class Retry(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(Exception):
    pass


def client_ssl_context(config: RemoteWriteEndpointConfig) -> ssl.SSLContext | None:
    if not config.url.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=config.tls.ca_file)
    if config.tls.cert_file and config.tls.key_file:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return context


class EndpointSender:
    def __init__(self, config: RemoteWriteEndpointConfig, queue: DiskQueue) -> None:
        self.config = config
        self.queue = queue
        self.sent_total = 0
        self.failed_total = 0
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._ssl = client_ssl_context(config)
        self._session: aiohttp.ClientSession | None = None
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(config.concurrency)

    def kick(self) -> None:
        """Start delivering every tenant lane that has batches and no task yet."""
        for tenant in self.queue.tenants():
            task = self._lanes.get(tenant)
            if task is None or task.done():
                self._lanes[tenant] = asyncio.create_task(
                    self._deliver(tenant), name=f"remote-write-{self.config.name}"
                )

    async def _deliver(self, tenant: str) -> None:
        backoff = BACKOFF_MIN_SECONDS
        while (batch := self.queue.oldest(tenant)) is not None:
            if tenant and not TENANT_ID.match(tenant):
                log.warning(
                    "remote write %s: tenant id %r cannot be sent (a store takes 1-150 of "
                    "A-Z a-z 0-9 !._*'()-); its samples are dropped",
                    self.config.name,
                    tenant,
                )
                self.queue.drop(batch, "invalid_tenant")
                continue
            try:
                async with self._slots:
                    await self._send(batch)
            except Retry as exc:
                self.failed_total += batch.samples
                self.failed(str(exc))
                await asyncio.sleep(max(backoff, exc.retry_after or 0.0))
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            except Rejected as exc:
                self.failed(str(exc))
                self.queue.drop(batch, "rejected")
                continue
            except ValueError as exc:  # the file is damaged
                self.failed(f"queue file {batch.name}: {exc}")
                self.queue.drop(batch, "corrupt")
                continue
            backoff = BACKOFF_MIN_SECONDS
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

    async def _send(self, batch: Batch) -> None:
        body = await asyncio.to_thread(self.queue.read, batch)
        tenant = batch.tenant
        url = self.config.url.replace(TENANT_PLACEHOLDER, quote(tenant, safe=""))
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Content-Encoding": CONTENT_ENCODING,
            VERSION_HEADER[0]: VERSION_HEADER[1],
            "User-Agent": f"hostcollector/{__version__}",
        }
        headers |= {
            k: v.replace(TENANT_PLACEHOLDER, tenant) for k, v in self.config.headers.items()
        }
        if self.config.bearer_token_file:
            try:
                with open(self.config.bearer_token_file, encoding="utf-8") as handle:
                    headers["Authorization"] = f"Bearer {handle.read().strip()}"
            except OSError as exc:
                raise Retry(f"cannot read bearer_token_file: {exc.strerror}") from exc
        try:
            async with self.session().post(
                url, data=body, headers=headers, ssl=self._ssl if self._ssl else True
            ) as response:
                if 200 <= response.status < 300:
                    return
                reason = (await response.text(errors="replace"))[:300].strip()
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
            samples_dropped_by_reason=tuple(sorted(Counter(self.queue.dropped).items())),
            last_success_timestamp_seconds=self.last_success,
            last_error=self.last_error,
        )

    async def close(self) -> None:
        for task in self._lanes.values():
            task.cancel()
        await asyncio.gather(*self._lanes.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not worth parsing for a backoff)."""
    try:
        return min(float(value), MAX_RETRY_AFTER_SECONDS) if value else None
    except ValueError:
        return None
