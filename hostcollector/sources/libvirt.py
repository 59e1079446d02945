"""The libvirt source: one read-only connection, one bulk stats call per poll, cached metadata.

The only module that imports `libvirt`, lazily, so that check-config and unit tests run without
it. Everything blocking runs in this source's own one-thread worker with a deadline; libvirt's
event loop runs in a daemon thread so that lifecycle and metadata-change events can invalidate
the tenant metadata cache (parsing every domain's XML every cycle is what burned CPU in VDSM and
Ceilometer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hostcollector.config import LibvirtConfig
from hostcollector.errors import SourceError
from hostcollector.model import DomainStats, LibvirtSample, TenantClaim
from hostcollector.sources.libvirt_stats import parse_domain_stats
from hostcollector.sources.worker import BlockingWorker
from hostcollector.tenancy import MetadataRule, parse_tenant

log = logging.getLogger(__name__)

_GROUP_FLAGS = {
    "state": "VIR_DOMAIN_STATS_STATE",
    "cpu_total": "VIR_DOMAIN_STATS_CPU_TOTAL",
    "balloon": "VIR_DOMAIN_STATS_BALLOON",
    "vcpu": "VIR_DOMAIN_STATS_VCPU",
    "interface": "VIR_DOMAIN_STATS_INTERFACE",
    "block": "VIR_DOMAIN_STATS_BLOCK",
    "perf": "VIR_DOMAIN_STATS_PERF",
    "iothread": "VIR_DOMAIN_STATS_IOTHREAD",
    "memory": "VIR_DOMAIN_STATS_MEMORY",
    "dirtyrate": "VIR_DOMAIN_STATS_DIRTYRATE",
    "vm": "VIR_DOMAIN_STATS_VM",
}

_lib: Any = None
_lib_lock = threading.Lock()


def _libvirt() -> Any:
    """Import libvirt once, silence its stderr printer, start its event loop thread."""
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                import libvirt
            except ImportError as exc:
                raise SourceError("no_library", f"libvirt-python is not installed: {exc}") from exc
            # Without a handler libvirt prints every error (even "domain not found" during
            # normal churn) to stderr.
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            # Must precede any connection: keepalive and domain events need an event loop.
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(
                target=_run_events, args=(libvirt,), name="hc-libvirt-events", daemon=True
            ).start()
            _lib = libvirt
        return _lib


def _run_events(libvirt: Any) -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # an event loop that dies silently would stop all invalidation
            log.exception("libvirt event loop iteration failed")
            time.sleep(1)


@dataclass
class _CachedMetadata:
    xml_by_namespace: dict[str, str | None]
    claim: TenantClaim | None
    fetched_at: float


class LibvirtSource:
    name = "libvirt"

    def __init__(
        self, config: LibvirtConfig, rules: Sequence[MetadataRule], *, record_raw: bool = False
    ) -> None:
        self.config = config
        self._rules = tuple(rules)
        self._namespaces = tuple(dict.fromkeys(rule.namespace for rule in rules))
        self._record_raw = record_raw
        self._worker = BlockingWorker(self.name)
        self._conn: Any = None
        self._conn_closed = threading.Event()
        self._callback_ids: list[int] = []
        self._metadata: dict[str, _CachedMetadata] = {}
        self._stale: set[str] = set()  # UUIDs whose metadata an event said changed
        self._stale_lock = threading.Lock()

    @property
    def interval_seconds(self) -> float:
        return self.config.interval_seconds

    async def poll(self) -> LibvirtSample:
        return await self._worker.call(self._collect, self.config.timeout_seconds)

    async def close(self) -> None:
        self._worker.shutdown()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # the connection may already be gone
                log.debug("closing libvirt connection: %s", exc)

    # -- everything below runs in the worker thread --------------------------------------------

    def _collect(self) -> LibvirtSample:
        libvirt = _libvirt()
        conn = self._connection(libvirt)
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT if self.config.nowait else 0
        try:
            listing = conn.getAllDomainStats(self._group_mask(libvirt), flags)
        except libvirt.libvirtError as exc:
            self._forget_connection_if_dead(conn)
            raise SourceError("stats_call", f"getAllDomainStats failed: {_describe(exc)}") from exc
        domains: list[DomainStats] = []
        claims: dict[str, TenantClaim | None] = {}
        raw: list[dict[str, object]] = []
        now = time.monotonic()
        for dom, stats in listing:
            uuid = dom.UUIDString()
            name = dom.name()
            domains.append(parse_domain_stats(uuid, name, stats))
            cached = self._cached_metadata(libvirt, dom, uuid, now)
            claims[uuid] = cached.claim if cached else None
            if self._record_raw:
                xml = cached.xml_by_namespace if cached else {}
                raw.append({"uuid": uuid, "name": name, "stats": dict(stats), "metadata": xml})
        for gone in self._metadata.keys() - claims.keys():
            del self._metadata[gone]
        return LibvirtSample(tuple(domains), claims, tuple(raw) if self._record_raw else None)

    def _group_mask(self, libvirt: Any) -> int:
        mask = 0
        for group in self.config.stats_groups:
            flag = getattr(libvirt, _GROUP_FLAGS[group], None)
            if flag is None:
                raise SourceError(
                    "unsupported_group", f"this libvirt-python has no stats group {group!r}"
                )
            mask |= flag
        return int(mask)

    def _connection(self, libvirt: Any) -> Any:
        if self._conn is not None and not self._conn_closed.is_set():
            return self._conn
        if self._conn is not None:
            log.info("libvirt connection to %s closed; reconnecting", self.config.uri)
            self._conn = None
        try:
            conn = libvirt.openReadOnly(self.config.uri)
        except libvirt.libvirtError as exc:
            raise SourceError(
                "connect", f"cannot connect to {self.config.uri}: {_describe(exc)}"
            ) from exc
        self._conn_closed.clear()
        # Events may have been missed while disconnected: re-read every domain's metadata.
        self._metadata.clear()
        with self._stale_lock:
            self._stale.clear()
        try:
            conn.setKeepAlive(5, 3)
            conn.registerCloseCallback(self._on_close, None)
            self._callback_ids = [
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                ),
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata, None
                ),
            ]
        except libvirt.libvirtError as exc:
            # Events are an optimisation: without them metadata_refresh_seconds still applies.
            log.warning(
                "libvirt events unavailable, relying on periodic metadata refresh: %s",
                _describe(exc),
            )
        self._conn = conn
        return conn

    def _forget_connection_if_dead(self, conn: Any) -> None:
        try:
            alive = conn.isAlive()
        except Exception:
            alive = False
        if not alive:
            self._conn_closed.set()

    def _cached_metadata(
        self, libvirt: Any, dom: Any, uuid: str, now: float
    ) -> _CachedMetadata | None:
        with self._stale_lock:
            stale = uuid in self._stale
            self._stale.discard(uuid)
        cached = self._metadata.get(uuid)
        fresh = (
            cached is not None and now - cached.fetched_at < self.config.metadata_refresh_seconds
        )
        if fresh and not stale:
            return cached
        xml_by_namespace: dict[str, str | None] = {}
        for namespace in self._namespaces:
            try:
                xml_by_namespace[namespace] = dom.metadata(
                    libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace, 0
                )
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                    xml_by_namespace[namespace] = None
                    continue
                # The domain vanished between list and metadata, or libvirt hiccuped: normal
                # churn. Export the stats unattributed this cycle and try again next cycle.
                log.debug("metadata of %s unavailable: %s", uuid, _describe(exc))
                return cached
        entry = _CachedMetadata(xml_by_namespace, parse_tenant(xml_by_namespace, self._rules), now)
        self._metadata[uuid] = entry
        return entry

    # -- libvirt event thread callbacks ----------------------------------------------------------

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        self._conn_closed.set()

    def _on_lifecycle(self, _conn: Any, dom: Any, _event: int, _detail: int, _opaque: Any) -> None:
        self._mark_stale(dom)

    def _on_metadata(self, _conn: Any, dom: Any, _kind: int, _nsuri: Any, _opaque: Any) -> None:
        self._mark_stale(dom)

    def _mark_stale(self, dom: Any) -> None:
        with self._stale_lock:
            self._stale.add(dom.UUIDString())


def _describe(exc: Any) -> str:
    try:
        return f"{exc.get_error_message()} (code {exc.get_error_code()})"
    except Exception:
        return str(exc)
