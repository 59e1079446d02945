"""A stand-in for the `libvirt` module (libvirt-python 9.0) and for the libvirtd behind it.

For unit tests of LibvirtSource's hang isolation: inject `FakeLibvirtd(...).module` where the
source keeps its imported module (`hostcollector.sources.libvirt._lib`). Only what the source
calls exists, with the real names, parameter names, constant values and return shapes
(tests/test_libvirt_hang.py checks them against the installed libvirt-python); anything else
raises AttributeError, so a new call in the source fails here until the fake learns it.

How libvirtd behaves, as far as the source depends on it (seen on the lab, tests/test_lab_faults.py
and tests/test_lab_vanishing.py):
- virConnectGetAllDomainStats walks its domains in order. For the groups that need the QEMU
  monitor (balloon, block) it takes each domain's job; with NOWAIT a busy job is not waited for:
  that domain comes back with only the fields that need no monitor (recorded in
  fixtures/libvirt-lab-9.0-qemu-7.2-tcg-b1-stopped.json: 32 of 57 fields). Without NOWAIT the
  call waits for the job.
- A QEMU that stops answering (kill -STOP) holds the call that reached its monitor, and that
  domain's job, until it answers again; meanwhile virDomainGetControlInfo says
  VIR_DOMAIN_CONTROL_OCCUPIED with the milliseconds since the call entered the monitor.
- Domains destroyed meanwhile are left out of a stats answer; other calls on their handles fail
  with VIR_ERR_NO_DOMAIN.
- When libvirtd dies every call on its connections fails, isAlive() is 0, the close callbacks
  run, and openReadOnly is refused until it is back.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import load_raw

# The values of libvirt-python 9.0 (include/libvirt/*.h)
VIR_ERR_INTERNAL_ERROR = 1
VIR_ERR_INVALID_ARG = 8
VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_NO_DOMAIN_METADATA = 80
VIR_DOMAIN_CONTROL_OK = 0
VIR_DOMAIN_CONTROL_OCCUPIED = 2
VIR_CONNECT_CLOSE_REASON_EOF = 1
VIR_DOMAIN_METADATA_ELEMENT = 2
VIR_DOMAIN_STATS_STATE = 1
VIR_DOMAIN_STATS_CPU_TOTAL = 2
VIR_DOMAIN_STATS_BALLOON = 4
VIR_DOMAIN_STATS_VCPU = 8
VIR_DOMAIN_STATS_INTERFACE = 16
VIR_DOMAIN_STATS_BLOCK = 32
VIR_DOMAIN_STATS_PERF = 64
VIR_DOMAIN_STATS_IOTHREAD = 128
VIR_DOMAIN_STATS_MEMORY = 256
VIR_DOMAIN_STATS_DIRTYRATE = 512
VIR_DOMAIN_STATS_VM = 1024
VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT = 1 << 29
VIR_DOMAIN_EVENT_ID_LIFECYCLE = 0
VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED = 15
VIR_DOMAIN_EVENT_ID_DEVICE_ADDED = 19
VIR_DOMAIN_EVENT_ID_METADATA_CHANGE = 23

# Typed-parameter prefixes of the groups the lab recording holds; the other groups
# (perf, iothread, memory, dirtyrate, vm) answer nothing there, and nothing here.
_GROUP_PREFIXES = {
    VIR_DOMAIN_STATS_STATE: ("state.",),
    VIR_DOMAIN_STATS_CPU_TOTAL: ("cpu.",),
    VIR_DOMAIN_STATS_BALLOON: ("balloon.",),
    VIR_DOMAIN_STATS_VCPU: ("vcpu.",),
    VIR_DOMAIN_STATS_INTERFACE: ("net.",),
    VIR_DOMAIN_STATS_BLOCK: ("block.",),
}
_MONITOR_GROUPS = VIR_DOMAIN_STATS_BALLOON | VIR_DOMAIN_STATS_BLOCK
# What a domain whose job was busy still reports of those groups (the b1-stopped recording)
_BALLOON_WITHOUT_MONITOR = frozenset({"balloon.current", "balloon.maximum"})
_BLOCK_WITHOUT_MONITOR = frozenset({"name", "path", "backingIndex"})


class libvirtError(Exception):
    """libvirt-python's exception; the real one reads its code from virGetLastError()."""

    def __init__(self, defmsg: str, code: int = VIR_ERR_INTERNAL_ERROR) -> None:
        super().__init__(defmsg)
        self._code = code

    def get_error_code(self) -> int:
        return self._code

    def get_error_message(self) -> str:
        return str(self.args[0])


@dataclass
class FakeVm:
    """One domain as libvirtd holds it."""

    uuid: str
    name: str
    stats: dict[str, Any]  # every group's typed parameters, as the lab recorded them
    metadata: dict[str, str | None]  # namespace -> <metadata> element, None: absent
    job: threading.Lock = field(default_factory=threading.Lock)
    monitor: threading.Event | None = None  # not set: QEMU does not answer its monitor
    in_monitor_since: float | None = None  # time.monotonic() the current monitor call began
    reads: int = 0
    definition: str | None = None  # the domain XML, where a test gives one
    domain_id: int = 1  # libvirt's id of the running domain
    control_calls: int = 0  # virDomainGetControlInfo calls it answered

    def xml(self) -> str:
        if self.definition is not None:
            return self.definition
        return (
            f"<domain type='kvm'><name>{self.name}</name><uuid>{self.uuid}</uuid>"
            "<devices/></domain>"
        )


def without_monitor(stats: dict[str, Any]) -> dict[str, Any]:
    """The typed parameters a domain answers while another call holds its job (NOWAIT)."""
    kept = {}
    for key, value in stats.items():
        if key.startswith("balloon.") and key not in _BALLOON_WITHOUT_MONITOR:
            continue
        if key.startswith("cpu.haltpoll."):
            continue
        if (
            key.startswith("block.")
            and key != "block.count"
            and key.split(".", 2)[2] not in _BLOCK_WITHOUT_MONITOR
        ):
            continue
        kept[key] = value
    return kept


class FakeLibvirtd:
    """The daemon: its domains, its connections, and the faults a test can cause."""

    def __init__(self, vms: Iterable[FakeVm]) -> None:
        self.vms = {vm.uuid: vm for vm in vms}
        self.module = LibvirtModule(self)
        self.running = True
        self.open_attempts = 0
        self.connections: list[FakeConnect] = []
        # The UUIDs of each domainListGetStats call, in call order
        self.stats_calls: list[tuple[str, ...]] = []
        # The groups mask each of those calls asked, in the same order
        self.stats_masks: list[int] = []
        # Cleared: libvirtd is stopped (kill -STOP): every call on a connection blocks in it
        self.thawed = threading.Event()
        self.thawed.set()
        self.calls_in_flight = 0
        self._lock = threading.Lock()

    @classmethod
    def lab(cls, count: int) -> FakeLibvirtd:
        """`count` domains: the lab recording's, then clones of them with UUIDs of their own."""
        raw = load_raw()
        vms = []
        for index in range(count):
            entry = raw[index % len(raw)]
            uuid, name = entry["uuid"], entry["name"]
            if index >= len(raw):
                uuid, name = f"{uuid[:-4]}{index:04x}", f"{name}-{index}"
            vms.append(FakeVm(uuid, name, copy.deepcopy(entry["stats"]), dict(entry["metadata"])))
        return cls(vms)

    @property
    def uuids(self) -> list[str]:
        """In libvirtd's listing order."""
        return list(self.vms)

    # -- faults ----------------------------------------------------------------------------------

    def hang(self, uuid: str) -> threading.Event:
        """The domain's QEMU stops answering its monitor until the returned event is set."""
        answers = threading.Event()
        self.vms[uuid].monitor = answers
        return answers

    def freeze(self) -> None:
        """libvirtd stops (SIGSTOP): calls hang, connections stay open, until thaw()."""
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    def release_all(self) -> None:
        self.thaw()
        for vm in self.vms.values():
            if vm.monitor is not None:
                vm.monitor.set()

    def destroy(self, uuid: str) -> None:
        del self.vms[uuid]

    def stop(self, *, close_callbacks: bool = True) -> None:
        """libvirtd dies; without `close_callbacks` the clients only find out by failing."""
        self.running = False
        with self._lock:
            connections = list(self.connections)
        for conn in connections:
            conn.lose(close_callbacks)

    def start(self) -> None:
        self.running = True

    # -- what the tests read -----------------------------------------------------------------------

    def stats_calls_with(self, uuid: str) -> list[tuple[str, ...]]:
        with self._lock:
            return [call for call in self.stats_calls if uuid in call]

    # -- used by the connections -------------------------------------------------------------------

    def open(self, uri: str | None) -> FakeConnect:
        with self._lock:
            self.open_attempts += 1
            if not self.running:
                raise libvirtError(
                    "Failed to connect socket to '/var/run/libvirt/libvirt-sock-ro': "
                    "Connection refused",
                    VIR_ERR_SYSTEM_ERROR,
                )
            conn = FakeConnect(self, uri)
            self.connections.append(conn)
            return conn

    def read(self, vm: FakeVm, groups: int, nowait: bool) -> dict[str, Any]:
        vm.reads += 1
        stats = dict(vm.stats)
        # a running guest's counters move between reads
        stats["cpu.time"] = vm.stats["cpu.time"] + vm.reads * 10**9
        stats = {
            key: value
            for bit, prefixes in _GROUP_PREFIXES.items()
            if groups == 0 or groups & bit
            for key, value in stats.items()
            if key.startswith(prefixes)
        }
        if groups != 0 and not groups & _MONITOR_GROUPS:
            return stats
        if not vm.job.acquire(blocking=not nowait):
            return without_monitor(stats)
        try:
            if vm.monitor is not None and not vm.monitor.is_set():
                vm.in_monitor_since = time.monotonic()
                vm.monitor.wait()
            return stats
        finally:
            vm.in_monitor_since = None
            vm.job.release()

    def begin_stats_call(self, uuids: tuple[str, ...], mask: int = 0) -> None:
        with self._lock:
            self.stats_calls.append(uuids)
            self.stats_masks.append(mask)
            self.calls_in_flight += 1

    def end_stats_call(self) -> None:
        with self._lock:
            self.calls_in_flight -= 1


class FakeDomain:
    """virDomain: a handle on one domain, valid on the connection that listed it."""

    __slots__ = ("_conn", "_name", "_uuid")

    def __init__(self, conn: FakeConnect, uuid: str, name: str) -> None:
        self._conn, self._uuid, self._name = conn, uuid, name

    def UUIDString(self) -> str:
        return self._uuid

    def name(self) -> str:
        return self._name

    def ID(self) -> int:
        """virDomainGetID: the handle's own id, no libvirtd call; every fake domain runs."""
        return self._vm().domain_id

    def controlInfo(self, flags: int = 0) -> list[int]:
        """[virDomainControlState, its details, milliseconds in that state]."""
        vm = self._vm()
        vm.control_calls += 1
        since = vm.in_monitor_since
        if since is None:
            return [VIR_DOMAIN_CONTROL_OK, 0, 0]
        return [VIR_DOMAIN_CONTROL_OCCUPIED, 0, int((time.monotonic() - since) * 1000)]

    def metadata(self, type: int, uri: str, flags: int = 0) -> str:
        vm = self._vm()
        if type != VIR_DOMAIN_METADATA_ELEMENT:
            raise libvirtError(f"unsupported metadata type {type}", VIR_ERR_INVALID_ARG)
        xml = vm.metadata.get(uri)
        if xml is None:
            raise libvirtError(
                "metadata not found: Requested metadata element is not present",
                VIR_ERR_NO_DOMAIN_METADATA,
            )
        return xml

    def XMLDesc(self, flags: int = 0) -> str:
        return self._vm().xml()

    def _vm(self) -> FakeVm:
        self._conn.check()
        vm = self._conn.daemon.vms.get(self._uuid)
        if vm is None:
            raise libvirtError(
                f"Domain not found: no domain with matching uuid '{self._uuid}' ({self._name})",
                VIR_ERR_NO_DOMAIN,
            )
        return vm


class FakeConnect:
    """virConnect, read-only."""

    __slots__ = ("_alive", "_close_callbacks", "_closed", "daemon", "event_callbacks", "uri")

    def __init__(self, daemon: FakeLibvirtd, uri: str | None) -> None:
        self.daemon, self.uri = daemon, uri
        self._alive = True
        self._closed = False
        self._close_callbacks: list[tuple[Callable[..., None], Any]] = []
        self.event_callbacks: list[tuple[int, Callable[..., None], Any]] = []

    def listAllDomains(self, flags: int = 0) -> list[FakeDomain]:
        self.check()
        return [FakeDomain(self, vm.uuid, vm.name) for vm in list(self.daemon.vms.values())]

    def domainListGetStats(
        self, doms: list[FakeDomain], stats: int = 0, flags: int = 0
    ) -> list[tuple[FakeDomain, dict[str, Any]]]:
        self.check()
        for dom in doms:
            if not isinstance(dom, FakeDomain) or dom._conn is not self:
                raise libvirtError(
                    "invalid argument: domains from different connections", VIR_ERR_INVALID_ARG
                )
        nowait = bool(flags & VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
        self.daemon.begin_stats_call(tuple(dom.UUIDString() for dom in doms), stats)
        try:
            answers = []
            for dom in doms:
                vm = self.daemon.vms.get(dom.UUIDString())
                if vm is not None:  # destroyed meanwhile: left out, not an error
                    answers.append((dom, self.daemon.read(vm, stats, nowait)))
            self.check()  # libvirtd died while the call ran
            return answers
        finally:
            self.daemon.end_stats_call()

    def setKeepAlive(self, interval: int, count: int) -> int:
        self.check()
        return 0

    def isAlive(self) -> int:
        return int(self._alive and not self._closed)

    def registerCloseCallback(self, cb: Callable[..., None], opaque: Any) -> int:
        self.check()
        self._close_callbacks.append((cb, opaque))
        return 0

    def domainEventRegisterAny(
        self, dom: FakeDomain | None, eventID: int, cb: Callable[..., None], opaque: Any
    ) -> int:
        self.check()
        self.event_callbacks.append((eventID, cb, opaque))
        return len(self.event_callbacks) - 1

    def close(self) -> int:
        self._closed = True
        return 0

    def check(self) -> None:
        self.daemon.thawed.wait()
        if self._closed:
            raise libvirtError("internal error: client socket is closed", VIR_ERR_INTERNAL_ERROR)
        if not self._alive:
            raise libvirtError("Cannot recv data: Connection reset by peer", VIR_ERR_SYSTEM_ERROR)

    def lose(self, close_callbacks: bool) -> None:
        self._alive = False
        if close_callbacks and not self._closed:
            # libvirt calls them from its event loop thread; no test depends on which thread
            for cb, opaque in self._close_callbacks:
                cb(self, VIR_CONNECT_CLOSE_REASON_EOF, opaque)


class LibvirtModule:
    """What `import libvirt` gives the source: constants, libvirtError, openReadOnly."""

    __slots__ = ("_daemon",)

    libvirtError = libvirtError
    VIR_ERR_NO_DOMAIN = VIR_ERR_NO_DOMAIN
    VIR_ERR_NO_DOMAIN_METADATA = VIR_ERR_NO_DOMAIN_METADATA
    VIR_DOMAIN_METADATA_ELEMENT = VIR_DOMAIN_METADATA_ELEMENT
    VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT = VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
    VIR_DOMAIN_STATS_STATE = VIR_DOMAIN_STATS_STATE
    VIR_DOMAIN_STATS_CPU_TOTAL = VIR_DOMAIN_STATS_CPU_TOTAL
    VIR_DOMAIN_STATS_BALLOON = VIR_DOMAIN_STATS_BALLOON
    VIR_DOMAIN_STATS_VCPU = VIR_DOMAIN_STATS_VCPU
    VIR_DOMAIN_STATS_INTERFACE = VIR_DOMAIN_STATS_INTERFACE
    VIR_DOMAIN_STATS_BLOCK = VIR_DOMAIN_STATS_BLOCK
    VIR_DOMAIN_STATS_PERF = VIR_DOMAIN_STATS_PERF
    VIR_DOMAIN_STATS_IOTHREAD = VIR_DOMAIN_STATS_IOTHREAD
    VIR_DOMAIN_STATS_MEMORY = VIR_DOMAIN_STATS_MEMORY
    VIR_DOMAIN_STATS_DIRTYRATE = VIR_DOMAIN_STATS_DIRTYRATE
    VIR_DOMAIN_STATS_VM = VIR_DOMAIN_STATS_VM
    VIR_DOMAIN_EVENT_ID_LIFECYCLE = VIR_DOMAIN_EVENT_ID_LIFECYCLE
    VIR_DOMAIN_EVENT_ID_METADATA_CHANGE = VIR_DOMAIN_EVENT_ID_METADATA_CHANGE
    VIR_DOMAIN_EVENT_ID_DEVICE_ADDED = VIR_DOMAIN_EVENT_ID_DEVICE_ADDED
    VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED = VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED

    def __init__(self, daemon: FakeLibvirtd) -> None:
        self._daemon = daemon

    def openReadOnly(self, name: str | None = None) -> FakeConnect:
        return self._daemon.open(name)
