"""The libvirt source: one read-only connection, chunked bulk stats, quarantine for hung QEMUs.

The only module that imports `libvirt`, lazily, so that check-config and unit tests run without
it. Each poll:

1. lists the domains and asks the new and the suspect ones for their control state
   (`virDomainGetControlInfo`: no job, no QEMU monitor; it answers even while the monitor is
   stuck; _suspects says which) and, for new or changed domains, reads the tenant metadata;
2. leaves out domains whose monitor has been occupied past the poll deadline (quarantine, see
   libvirt_tracker.py) and queries the others with `virDomainListGetStats(NOWAIT)` in at most
   `parallel_calls` chunks at once;
3. if a chunk overruns half the deadline, asks its members' control state again: the one our
   abandoned call is stuck on shows as occupied and is quarantined; the rest are queried again
   in the remaining time, so one hung QEMU costs the others nothing;
4. retries one quarantined domain whose quarantine expired, alone and off the main path.

With `kernel_path` (libvirt_kernel.py), before step 2 the kernel's view of every active domain
is read in a lane of its own (qemu_kernel.py: cgroup, /proc, one netlink dump): cpu_total, vcpu
and interface are then asked of libvirt only for the domains the kernel could not serve, in one
call of their own. When the listing fails (libvirtd stopped, stuck or restarting), the domains
of the last listing that were active are read from the kernel all the same and the poll ends in
SourceDegraded: the source is down, and those VMs' CPU, vCPU and NIC series stay fresh, their
other values kept with their age (sampled_at stays libvirt's last answer).

Blocking calls run in fixed-size thread lanes: one for listing, `parallel_calls` for chunks, one
for the quarantine probe; nothing ever queues behind a hung call. Each stats and probe thread has
its own read-only connection: measured on the lab, while one call sat on a stopped QEMU, other
calls sharing its connection stalled for 5 s at random (the libvirt client's socket hand-over
between threads); on a connection of their own they never did. libvirt's event loop runs in a
daemon thread for keepalive, the close callback and the lifecycle and metadata-change events that
invalidate the metadata cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hostcollector.config import LibvirtConfig
from hostcollector.errors import SourceDegraded, SourceError
from hostcollector.handover import Handover
from hostcollector.model import (
    DomainStats,
    LibvirtHealth,
    LibvirtSample,
    PciDevice,
    TenantClaim,
    VmFreshness,
)
from hostcollector.selfmetrics import Sample, libvirt_samples
from hostcollector.sources.domain_xml import DomainDevices, domain_devices
from hostcollector.sources.libvirt_kernel import (
    KERNEL_GROUPS,
    fallback_reasons,
    overlay,
    served_groups,
)
from hostcollector.sources.libvirt_stats import carry_over, is_partial, parse_domain_stats
from hostcollector.sources.libvirt_tracker import (
    CONTROL_OCCUPIED,
    CONTROL_OK,
    DomainTracker,
    ListedDomain,
)
from hostcollector.sources.pci_sysfs import read_pci_devices
from hostcollector.sources.qemu_kernel import DomainRef, KernelDomainStats, QemuKernelReader
from hostcollector.sources.tap_counters import Tap
from hostcollector.sources.worker import BlockingLane
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
RECONNECT_BACKOFF_MAX_SECONDS = 60.0
# After a chunk overran: a member whose monitor has been busy this long is the one it hangs on.
STUCK_MONITOR_SECONDS = 0.2

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
class _CachedDefinition:
    """What a domain's definition says, re-read only on events or after metadata_refresh."""

    xml_by_namespace: dict[str, str | None]
    claim: TenantClaim | None
    devices: DomainDevices  # hostdev PCI addresses and mdev UUIDs, for VF and GPU attribution
    fetched_at: float


class _Gone(enum.Enum):
    """The domain was destroyed between listing it and asking about it: normal churn.

    A return value rather than an exception, so that mypy makes every caller handle it.
    """

    VANISHED = enum.auto()


_VANISHED: Literal[_Gone.VANISHED] = _Gone.VANISHED
_Control = tuple[int | None, float]  # virDomainControlState (None: unknown), seconds in it
_KernelRead = tuple[KernelDomainStats, float]  # the kernel's view of a domain, when it was read
_NO_DEVICES = DomainDevices()  # a domain whose definition is not cached (yet)


@dataclass(frozen=True)
class _Listing:
    domains: tuple[ListedDomain, ...]
    handles: dict[str, Any]  # uuid -> virDomain, on the main connection
    claims: dict[str, TenantClaim | None]
    pci_devices: dict[str, tuple[str, ...]]
    mdev_devices: dict[str, tuple[str, ...]]
    pci_health: dict[str, PciDevice]
    devices: dict[str, DomainDevices]  # what the cached definition says, for the kernel path


class _ThreadConnections:
    """One read-only connection per lane thread, reopened after the main one reconnected."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._local = threading.local()
        self.generation = 0

    def get(self, libvirt: Any) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.generation == self.generation and conn.isAlive():
            return conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        try:
            conn = libvirt.openReadOnly(self._uri)
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError as exc:
            self._local.conn = None
            raise SourceError(
                "connect", f"cannot connect to {self._uri}: {_describe(exc)}"
            ) from exc
        self._local.conn, self._local.generation = conn, self.generation
        self._local.handles = {}
        return conn

    def handles(self, conn: Any, uuids: set[str]) -> list[Any]:
        """This lane's handles on `uuids` (a handle belongs to the connection that listed it).
        Kept between polls: libvirt finds a handle's domain by its uuid, so it stays good
        across a restart, and a domain gone since is skipped by the stats call. One listing
        (a round trip, and a Python object per domain) only when a domain is new to the lane."""
        known: dict[str, Any] = self._local.handles
        if not uuids <= known.keys():
            known.clear()
            known.update((dom.UUIDString(), dom) for dom in conn.listAllDomains(0))
        return [known[uuid] for uuid in uuids if uuid in known]


class LibvirtSource:
    name = "libvirt"

    def __init__(
        self,
        config: LibvirtConfig,
        rules: Sequence[MetadataRule],
        *,
        handover: Handover | None = None,
        record_raw: bool = False,
        kernel: QemuKernelReader | None = None,
    ) -> None:
        """`handover`: where lifecycle events go for remote write (the composition root hands
        the writer the same one); a fresh one if none is given. `kernel`: the kernel reader of
        the kernel path (tests give one over a tree on disk); the host's if none is given."""
        self.config = config
        self._rules = tuple(rules)
        self._namespaces = tuple(dict.fromkeys(rule.namespace for rule in rules))
        self._record_raw = record_raw
        self._raw: dict[str, dict[str, object]] = {}
        self._main = BlockingLane("libvirt-main")
        self._chunks = BlockingLane("libvirt-stats", config.parallel_calls)
        self._probe_lane = BlockingLane("libvirt-probe")
        self._probe_task: asyncio.Task[None] | None = None
        self._tracker = DomainTracker(config.quarantine_seconds, config.timeout_seconds)
        self._group_names = tuple(config.stats_groups)
        self._fast_groups = tuple(
            g for g in config.stats_groups if g not in config.slow_stats_groups
        )
        self._polls = 0
        self._kernel: QemuKernelReader | None = None
        self._kernel_groups: tuple[str, ...] = ()
        if config.kernel_path:
            self._kernel = kernel if kernel is not None else QemuKernelReader()
            self._kernel_groups = tuple(g for g in KERNEL_GROUPS if g in config.stats_groups)
        if not self._kernel_groups:
            self._kernel = None  # nothing it could serve
        self._kernel_lane = BlockingLane("libvirt-kernel")
        self._kernel_now: dict[str, tuple[KernelDomainStats, tuple[str, ...]]] = {}
        self._kernel_read_at: dict[str, float] = {}
        # Domains whose fresh libvirt stats took the kernel's values this poll (_record)
        self._kernel_recorded: set[str] = set()
        self._kernel_fallbacks: Counter[str] = Counter()
        self._last_listing: _Listing | None = None
        self._conn: Any = None  # the main connection: listing, metadata, events
        self._lane_conns = _ThreadConnections(config.uri)
        self._conn_closed = threading.Event()
        self._connects = 0
        self._next_connect = 0.0
        self._backoff = 0.0
        self._timeouts: Counter[str] = Counter()
        self._busy_domains = 0
        self._metadata: dict[str, _CachedDefinition] = {}
        self._stale: set[str] = set()  # UUIDs whose metadata an event said changed
        # UUIDs whose control state to ask next listing (an event, a partial answer)
        self._flagged: set[str] = set()
        self._stale_lock = threading.Lock()
        # Each running domain's control state when last asked (_suspects says when that is)
        self._controls: dict[str, _Control] = {}
        self._control_calls = 0
        # Lifecycle events as far as live migration goes: which VMs remote write leaves to the
        # other host now (handover.py).
        self.handover = Handover() if handover is None else handover

    @property
    def interval_seconds(self) -> float:
        return self.config.interval_seconds

    def health(self) -> LibvirtHealth:
        return LibvirtHealth(
            connects_total=self._connects,
            timeouts_by_reason=tuple(sorted(self._timeouts.items())),
            quarantined_vms=self._tracker.quarantined,
            quarantines_total=self._tracker.quarantines_total,
            busy_domains_total=self._busy_domains,
            kernel_fallbacks_by_reason=tuple(sorted(self._kernel_fallbacks.items())),
            control_info_calls_total=self._control_calls,
        )

    async def poll(self) -> LibvirtSample:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_seconds
        last = self._last_listing
        early: asyncio.Future[dict[str, _KernelRead]] | None = None
        if self._kernel is not None and last is not None:
            # Alongside the listing, for the domains of the last one: while libvirtd does not
            # answer, the listing takes the whole deadline and leaves the kernel no time after.
            early = asyncio.ensure_future(self._kernel_views(last.domains, last, deadline))
        suspects = self._suspects()
        try:
            listing = await self._main.call(
                lambda: self._list(suspects), self.config.timeout_seconds
            )
        except SourceError as exc:
            if exc.reason == "timeout":
                self._timeouts["list"] += 1
            if early is None or last is None:
                raise
            self._apply_kernel(last, await early)
            domains, freshness = self._sample(last)
            sample = LibvirtSample(
                domains,
                last.claims,
                freshness,
                time.time(),
                pci_devices=last.pci_devices,
                mdev_devices=last.mdev_devices,
                pci_health=last.pci_health,
            )
            raise SourceDegraded(exc.reason, str(exc), sample) from exc
        self._last_listing = listing
        listed_at = time.time()
        plan = self._tracker.plan(listing.domains, listed_at)
        every = self.config.slow_stats_every
        groups = self._group_names if self._polls % every == 0 else self._fast_groups
        self._polls += 1
        if self._kernel is None:
            await self._query(plan.query, listing, deadline, groups)
        else:
            views = await early if early is not None else {}
            # Domains the early read did not cover: new, just started, or their NICs changed
            late = [
                d
                for d in listing.domains
                if d.uuid not in views or _taps(listing, d.uuid) != _taps(last, d.uuid)
            ]
            if late:
                views |= await self._kernel_views(late, listing, deadline)
            served = self._apply_kernel(listing, views, plan.query, merge=False)
            # Every poll, slow or not: the kernel's read costs no libvirtd time
            wanted = set(self._kernel_groups)
            lean = tuple(g for g in groups if g not in self._kernel_groups)
            await self._query(
                [u for u in plan.query if served.get(u) == wanted], listing, deadline, lean
            )
            # One call of their own for the domains the kernel did not serve whole (and the
            # inactive ones, which answer with their state only).
            rest = [u for u in plan.query if served.get(u) != wanted]
            missing = {g for u in rest for g in wanted - served.get(u, set())}
            await self._query(
                rest, listing, deadline, tuple(g for g in groups if g in missing or g in lean)
            )
            # Once per domain: those libvirt answered for took the kernel's values in _record
            self._merge_kernel(listing, skip=self._kernel_recorded)
        if plan.probe:
            self._start_probe(plan.probe[0])
        domains, freshness = self._sample(listing)
        raw = None
        if self._record_raw:
            raw = tuple(
                self._raw[uuid] | {"metadata": self._metadata_xml(uuid)}
                for uuid in listing.handles
                if uuid in self._raw
            )
        return LibvirtSample(
            domains,
            listing.claims,
            freshness,
            listed_at,
            pci_devices=listing.pci_devices,
            mdev_devices=listing.mdev_devices,
            pci_health=listing.pci_health,
            raw=raw,
        )

    def _sample(self, listing: _Listing) -> tuple[tuple[DomainStats, ...], dict[str, VmFreshness]]:
        return self._tracker.sample(listing.domains, self._kernel_read_at)

    # -- the kernel path -------------------------------------------------------------------------

    async def _kernel_views(
        self, domains: Sequence[ListedDomain], listing: _Listing, deadline: float
    ) -> dict[str, _KernelRead]:
        """The kernel's view of each of `domains` that is active, with when it was read."""
        kernel = self._kernel
        refs = [
            DomainRef(d.uuid, d.name, _taps(listing, d.uuid), d.domain_id)
            for d in domains
            if d.domain_id is not None  # inactive: no QEMU process to read
        ]
        if kernel is None or not refs:
            return {}
        loop = asyncio.get_running_loop()
        try:
            views = await self._kernel_lane.call(
                lambda: kernel.read_domains(refs), deadline - loop.time()
            )
        except SourceError as exc:  # a /proc read stuck (D state): libvirt serves them all
            self._kernel_fallbacks[exc.reason] += len(refs)
            return {}
        read_at = time.time()
        return {uuid: (view, read_at) for uuid, view in views.items()}

    def _apply_kernel(
        self,
        listing: _Listing,
        views: dict[str, _KernelRead],
        uuids: Sequence[str] | None = None,
        *,
        merge: bool = True,
    ) -> dict[str, set[str]]:
        """Takes what the kernel serves of each domain (of `uuids`, if given), merged into its
        last stats now if `merge` (else by _record and _merge_kernel once libvirt answered),
        and says which groups it served for each. A domain not served whole is counted, by
        reason, once per poll."""
        self._kernel_now = {}
        self._kernel_read_at = {}
        self._kernel_recorded = set()
        wanted = self._kernel_groups
        served_by_uuid: dict[str, set[str]] = {}
        chosen = set(views if uuids is None else uuids) & set(listing.handles)
        for domain in listing.domains:
            if domain.uuid not in chosen or domain.uuid not in views:
                continue
            view, read_at = views[domain.uuid]
            devices = listing.devices.get(domain.uuid, _NO_DEVICES)
            served = served_groups(view, devices, wanted)
            for reason in fallback_reasons(view, served, wanted):
                self._kernel_fallbacks[reason] += 1
            served_by_uuid[domain.uuid] = set(served)
            if view.not_found is not None:
                continue
            self._kernel_now[domain.uuid] = (view, served)
            if set(served) == set(wanted):
                self._kernel_read_at[domain.uuid] = read_at
        if merge:
            self._merge_kernel(listing)
        return served_by_uuid

    def _merge_kernel(
        self, listing: _Listing, skip: set[str] | frozenset[str] = frozenset()
    ) -> None:
        """The kernel's values of this poll into each served domain's last stats (but those of
        `skip`, which have them already)."""
        for domain in listing.domains:
            if domain.uuid not in self._kernel_now or domain.uuid in skip:
                continue
            last = self._tracker.last_stats(domain.uuid) or DomainStats(domain.uuid, domain.name)
            self._tracker.kernel(domain.uuid, self._overlay(domain.uuid, last, listing))

    def _overlay(self, uuid: str, stats: DomainStats, listing: _Listing | None) -> DomainStats:
        found = self._kernel_now.get(uuid)
        if found is None:
            return stats
        view, served = found
        devices = _NO_DEVICES if listing is None else listing.devices.get(uuid, _NO_DEVICES)
        return overlay(stats, view, served, devices, with_rss="balloon" in self._group_names)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        for lane in (self._main, self._chunks, self._probe_lane, self._kernel_lane):
            lane.shutdown()
        if self._kernel is not None:
            self._kernel.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # the connection may already be gone
                log.debug("closing libvirt connection: %s", exc)

    # -- the main path ---------------------------------------------------------------------------

    async def _query(
        self, uuids: Sequence[str], listing: _Listing, deadline: float, groups: tuple[str, ...]
    ) -> None:
        if not uuids:
            return
        loop = asyncio.get_running_loop()
        lanes = min(self._chunks.free, self.config.parallel_calls, len(uuids))
        if lanes <= 0:
            # Every stats thread is still stuck in an abandoned call: serve last good values.
            self._timeouts["no_free_lane"] += 1
            return
        chunks = [list(uuids[i::lanes]) for i in range(lanes)]
        first_deadline = loop.time() + (deadline - loop.time()) / 2
        results = await asyncio.gather(
            *(self._stats_in_lane(chunk, first_deadline, groups) for chunk in chunks),
            return_exceptions=True,
        )
        overran: list[str] = []
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, SourceError):
                self._timeouts["stats" if result.reason == "timeout" else result.reason] += 1
                overran += chunk
            elif isinstance(result, BaseException):
                raise result
        if overran:
            await self._isolate_and_retry(overran, listing, deadline, groups)

    async def _isolate_and_retry(
        self, uuids: list[str], listing: _Listing, deadline: float, groups: tuple[str, ...]
    ) -> None:
        """Find which domain an overrun chunk is stuck on, quarantine it, retry the others."""
        loop = asyncio.get_running_loop()
        try:
            controls = await self._main.call(
                lambda: self._control_states(uuids, listing.handles), deadline - loop.time()
            )
        except SourceError:
            return
        now = time.time()
        rest = []
        for uuid, (state, seconds) in controls.items():
            # A healthy monitor answers in milliseconds; the domain our abandoned call waits on
            # has been occupied ever since the call reached it.
            if state == CONTROL_OCCUPIED and seconds >= STUCK_MONITOR_SECONDS:
                self._tracker.quarantine(uuid, now, f"stats call hung for {seconds:.1f} s")
            else:
                rest.append(uuid)
        if rest and self._chunks.free:
            try:
                await self._stats_in_lane(rest, deadline, groups)
            except SourceError as exc:
                self._timeouts["stats_retry" if exc.reason == "timeout" else exc.reason] += 1

    async def _stats_in_lane(
        self, uuids: list[str], deadline: float, groups: tuple[str, ...]
    ) -> None:
        loop = asyncio.get_running_loop()
        results = await self._chunks.call(
            lambda: self._stats(uuids, groups), deadline - loop.time()
        )
        self._record(results, groups)

    def _record(
        self, results: list[tuple[str, str, dict[str, Any]]], groups: tuple[str, ...]
    ) -> None:
        sampled_at = time.time()
        skipped = tuple(g for g in self._group_names if g not in groups)
        for uuid, name, raw in results:
            # The kernel's values win for the groups it served this poll, whoever else was
            # asked: those groups are not carried over from the last stats only to be replaced
            found = self._kernel_now.get(uuid)
            carried = tuple(g for g in skipped if g not in found[1]) if found else skipped
            stats = carry_over(
                parse_domain_stats(uuid, name, raw), self._tracker.last_stats(uuid), carried
            )
            stats = self._overlay(uuid, stats, self._last_listing)
            if is_partial(raw, groups):
                self._busy_domains += 1
                with self._stale_lock:
                    self._flagged.add(uuid)  # its control state asked next listing
                self._tracker.partial(uuid, stats, sampled_at)  # keeps the last: not recorded
            else:
                self._tracker.fresh(uuid, stats, sampled_at)
                self._kernel_recorded.add(uuid)
            if self._record_raw:
                self._raw[uuid] = {"uuid": uuid, "name": name, "stats": dict(raw)}

    # -- quarantine probe, off the main path ---------------------------------------------------

    def _start_probe(self, uuid: str) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            return
        if self._probe_lane.busy:
            return  # the previous probe is still stuck; it holds the domain's job anyway
        self._probe_task = asyncio.create_task(self._probe(uuid), name=f"probe-{uuid}")

    async def _probe(self, uuid: str) -> None:
        started = time.time()
        try:
            results = await self._probe_lane.call(
                lambda: self._stats([uuid], self._group_names), self.config.timeout_seconds
            )
        except SourceError as exc:
            self._timeouts["probe" if exc.reason == "timeout" else exc.reason] += 1
            self._tracker.quarantine(uuid, time.time(), "probe did not answer")
            return
        for result_uuid, name, raw in results:
            if is_partial(raw, self._group_names):
                self._tracker.quarantine(result_uuid, time.time(), "probe found the job busy")
            else:
                self._tracker.fresh(
                    result_uuid, parse_domain_stats(result_uuid, name, raw), started
                )

    # -- everything below runs in a lane thread ------------------------------------------------

    def _suspects(self) -> set[str]:
        """Domains asked for their control state in this listing, besides the new ones: those a
        job or lifecycle event named, those whose NOWAIT answer came back partial (job busy)
        last poll, the quarantined, and those not OK when last asked (a job, a busy monitor).
        The rest are taken as OK, as they were last asked: virDomainGetControlInfo is a
        libvirtd round trip per domain (~0.1 ms each), and a monitor that hangs mid-poll is
        found by the chunk overrun anyway (_isolate_and_retry asks the chunk's members)."""
        with self._stale_lock:
            flagged, self._flagged = self._flagged, set()
        not_ok = {uuid for uuid, (state, _) in self._controls.items() if state != CONTROL_OK}
        return flagged | not_ok | self._tracker.quarantined_uuids()

    def _list(self, suspects: set[str]) -> _Listing:
        libvirt = _libvirt()
        conn = self._connection(libvirt)
        try:
            handles = conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            self._forget_connection_if_dead(conn)
            raise SourceError("list", f"listing domains failed: {_describe(exc)}") from exc
        domains = []
        by_uuid = {}
        claims: dict[str, TenantClaim | None] = {}
        pci_devices: dict[str, tuple[str, ...]] = {}
        mdev_devices: dict[str, tuple[str, ...]] = {}
        devices: dict[str, DomainDevices] = {}
        now = time.monotonic()
        for dom in handles:
            uuid = dom.UUIDString()
            domain_id = _running_id(dom)
            control: _Control = (None, 0.0)  # inactive: no control interface
            if domain_id is None:
                self._controls.pop(uuid, None)
            elif uuid in suspects or uuid not in self._controls:
                asked = self._control_info(dom)
                if asked is _VANISHED:
                    continue
                self._control_calls += 1
                self._controls[uuid] = control = asked
            else:
                control = self._controls[uuid]
            cached = self._cached_metadata(libvirt, dom, uuid, now)
            if cached is _VANISHED:
                continue
            domains.append(ListedDomain(uuid, dom.name(), *control, domain_id=domain_id))
            by_uuid[uuid] = dom
            claims[uuid] = cached.claim if cached else None
            if cached and cached.devices.pci:
                pci_devices[uuid] = cached.devices.pci
            if cached and cached.devices.mdev:
                mdev_devices[uuid] = cached.devices.mdev
            if cached:
                devices[uuid] = cached.devices
        for gone in self._metadata.keys() - by_uuid.keys():
            del self._metadata[gone]
        for gone in self._controls.keys() - by_uuid.keys():
            del self._controls[gone]
        for gone in self._raw.keys() - by_uuid.keys():
            del self._raw[gone]
        # The hostdevs' PCIe side, read fresh each poll (AER counters move): plain sysfs reads,
        # ~25 small files per device and its upstream port, no libvirt call.
        held = [address for addresses in pci_devices.values() for address in addresses]
        pci_health = read_pci_devices(self.config.sysfs_root, held)
        return _Listing(
            tuple(domains), by_uuid, claims, pci_devices, mdev_devices, pci_health, devices
        )

    def _control_info(self, dom: Any) -> _Control | Literal[_Gone.VANISHED]:
        libvirt = _libvirt()
        try:
            state, _details, state_ms = dom.controlInfo()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return _VANISHED
            return None, 0.0  # inactive domains have no control interface
        return int(state), state_ms / 1000.0

    def _control_states(self, uuids: list[str], handles: dict[str, Any]) -> dict[str, _Control]:
        """The control state of each of `uuids` that still exists."""
        controls = {}
        for uuid in uuids:
            control = self._control_info(handles[uuid])
            self._control_calls += 1
            if control is not _VANISHED:
                controls[uuid] = self._controls[uuid] = control
        return controls

    def _stats(
        self, uuids: list[str], groups: tuple[str, ...]
    ) -> list[tuple[str, str, dict[str, Any]]]:
        libvirt = _libvirt()
        conn = self._lane_conns.get(libvirt)
        wanted = set(uuids)
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT if self.config.nowait else 0
        try:
            handles = self._lane_conns.handles(conn, wanted)
            # Domains that vanish meanwhile are skipped by libvirt, not an error.
            listing = conn.domainListGetStats(handles, self._group_mask(libvirt, groups), flags)
        except libvirt.libvirtError as exc:
            raise SourceError("stats_call", f"domainListGetStats failed: {_describe(exc)}") from exc
        return [(dom.UUIDString(), dom.name(), stats) for dom, stats in listing]

    def _group_mask(self, libvirt: Any, groups: tuple[str, ...]) -> int:
        mask = 0
        for group in groups:
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
            # The poller logs the source going down; this line only helps debugging.
            log.debug(
                "libvirt connection to %s lost; reconnecting",
                self.config.uri,
                extra={"source": "libvirt"},
            )
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        now = time.monotonic()
        if now < self._next_connect:
            raise SourceError(
                "connect",
                f"not connected to {self.config.uri}; next attempt in {self._next_connect - now:.0f} s",
            )
        try:
            conn = libvirt.openReadOnly(self.config.uri)
        except libvirt.libvirtError as exc:
            self._backoff = min(max(1.0, self._backoff * 2), RECONNECT_BACKOFF_MAX_SECONDS)
            self._next_connect = now + self._backoff
            raise SourceError(
                "connect", f"cannot connect to {self.config.uri}: {_describe(exc)}"
            ) from exc
        self._backoff = 0.0
        self._connects += 1
        self._lane_conns.generation += 1
        if self._connects > 1:
            log.info("reconnected to %s", self.config.uri, extra={"source": "libvirt"})
        self._conn_closed.clear()
        # Events may have been missed while disconnected: re-read every domain's metadata.
        self._metadata.clear()
        with self._stale_lock:
            self._stale.clear()
        try:
            conn.setKeepAlive(5, 3)
            conn.registerCloseCallback(self._on_close, None)
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata, None
            )
            # hostdevs attached or detached at run time change the VF and GPU attribution
            for event in ("VIR_DOMAIN_EVENT_ID_DEVICE_ADDED", "VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED"):
                conn.domainEventRegisterAny(None, getattr(libvirt, event), self._on_device, None)
            # a job starting sends no event of its own; a migration's iterations and any job's
            # end do, and make the domain's control state asked (_suspects)
            for event in (
                "VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION",
                "VIR_DOMAIN_EVENT_ID_JOB_COMPLETED",
            ):
                if hasattr(libvirt, event):
                    conn.domainEventRegisterAny(None, getattr(libvirt, event), self._on_job, None)
        except libvirt.libvirtError as exc:
            # Events are an optimisation: without them metadata_refresh_seconds still applies.
            log.warning(
                "libvirt events unavailable, relying on periodic metadata refresh: %s",
                _describe(exc),
                extra={"source": "libvirt"},
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
    ) -> _CachedDefinition | Literal[_Gone.VANISHED] | None:
        with self._stale_lock:
            stale = uuid in self._stale
            self._stale.discard(uuid)
        cached = self._metadata.get(uuid)
        refresh_after = self.config.metadata_refresh_seconds
        if cached is not None and not stale and now - cached.fetched_at < refresh_after:
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
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return _VANISHED
                # libvirt hiccuped: keep what we had and try again next cycle.
                log.debug(
                    "metadata of %s unavailable: %s",
                    uuid,
                    _describe(exc),
                    extra={"vm_uuid": uuid, "source": "libvirt"},
                )
                return cached
        try:
            # The live definition: hostdevs attached at run time appear here. No monitor call.
            devices = domain_devices(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return _VANISHED
            log.debug(
                "definition of %s unavailable: %s",
                uuid,
                _describe(exc),
                extra={"vm_uuid": uuid, "source": "libvirt"},
            )
            return cached
        claim = parse_tenant(xml_by_namespace, self._rules)
        entry = _CachedDefinition(xml_by_namespace, claim, devices, now)
        self._metadata[uuid] = entry
        return entry

    def _metadata_xml(self, uuid: str) -> dict[str, str | None]:
        cached = self._metadata.get(uuid)
        return cached.xml_by_namespace if cached else {}

    # -- libvirt event thread callbacks ----------------------------------------------------------

    def _on_close(self, _conn: Any, _reason: int, _opaque: Any) -> None:
        self._conn_closed.set()

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self.handover.record(dom.UUIDString(), event, detail)
        self._mark_stale(dom)

    def _on_metadata(self, _conn: Any, dom: Any, _kind: int, _nsuri: Any, _opaque: Any) -> None:
        self._mark_stale(dom)

    def _on_device(self, _conn: Any, dom: Any, _alias: str, _opaque: Any) -> None:
        self._mark_stale(dom)

    def _on_job(self, _conn: Any, dom: Any, *_args: Any) -> None:
        """A migration iteration or a job that completed: its control state is asked next."""
        with self._stale_lock:
            self._flagged.add(dom.UUIDString())

    def _mark_stale(self, dom: Any) -> None:
        with self._stale_lock:
            self._stale.add(dom.UUIDString())
            self._flagged.add(dom.UUIDString())

    def collect(self) -> Iterator[Sample]:
        """Its health as self-metrics (selfmetrics.SelfMetrics)."""
        return libvirt_samples(self.health())


def _taps(listing: _Listing | None, uuid: str) -> tuple[Tap, ...]:
    devices = listing.devices.get(uuid) if listing is not None else None
    return devices.taps if devices is not None else ()


def _running_id(dom: Any) -> int | None:
    """The running domain's id (virDomainGetID: the handle's own, no libvirtd call); None when
    inactive (-1, which libvirt-python returns as an unsigned int)."""
    domain_id = int(dom.ID())
    return None if domain_id in (-1, 0xFFFFFFFF) else domain_id


def _describe(exc: Any) -> str:
    try:
        return f"{exc.get_error_message()} (code {exc.get_error_code()})"
    except Exception:
        return str(exc)
