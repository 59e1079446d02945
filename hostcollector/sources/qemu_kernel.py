"""What the kernel knows of a running QEMU/KVM domain, read without libvirtd: CPU time from the
domain's cgroup, per-vCPU time/wait/delay from the vCPU threads, host RSS, tap counters.

Every value has the unit and meaning of the libvirt stats field it stands in for (libvirt 9.0,
src/qemu/qemu_driver.c, src/util/vircgroup*.c, src/util/virprocess.c):

- cpu.time / cpu.user / cpu.system (qemuDomainGetStatsCpuCgroup): the domain's cgroup, the one
  libvirt places the QEMU process under, or its `libvirt/` child where libvirt made one under a
  systemd scope (virCgroupGetNested). cgroup v2 `cpu.stat` usage_usec / user_usec / system_usec
  (Documentation/admin-guide/cgroup-v2.rst); v1 `cpuacct.usage` (ns) and `cpuacct.stat` user /
  system in USER_HZ ticks, scaled as libvirt does (ticks * 1e9 / sysconf(_SC_CLK_TCK)). With
  both mounted (hybrid), libvirt's v2 backend is asked first and wins where the process is
  placed in the unified hierarchy: the lab's libvirt 9.0 reads its cpu.time from the unified
  hierarchy's cpu.stat while the process sits in the v1 cpuacct root.
- vcpu.N.time (qemuDomainHelperGetVcpus -> virProcessGetStatInfo): utime + stime of the vCPU
  thread's /proc/<pid>/task/<tid>/stat, ticks -> ns (so 10 ms steps at USER_HZ 100);
- vcpu.N.delay (qemuGetSchedstatDelay): the thread's schedstat 2nd field, run_delay in ns, time
  spent runnable on a run queue (Documentation/scheduler/sched-stats.rst); 0 without the file
  (CONFIG_SCHED_INFO off), as libvirt;
- vcpu.N.wait (virProcessGetSchedInfo): `wait_sum` of the thread's `sched` file, in ms with 6
  decimals; the kernel prints it only with schedstats on (kernel.sched_schedstats=1,
  CONFIG_SCHEDSTATS), and libvirt reports 0 without it. libvirt 9.0 matches the line names
  `se.statistics.wait_sum` and `se.wait_sum`; kernels >= 5.16 print plain `wait_sum`
  (kernel/sched/debug.c, struct sched_statistics moved to p->stats), which libvirt then misses
  and reports 0: here all three names are read.
- vCPU threads are found by name: QEMU names them "CPU <n>/<accel>" (qemu_thread_create in
  accel/*-accel-ops.c: "CPU %d/KVM", "CPU %d/TCG"); with debug-threads=on, which libvirt
  always sets (`-name guest=...,debug-threads=on`). State is VIR_VCPU_RUNNING (1) for each,
  as libvirt sets it for every online vCPU.
- balloon.rss (virProcessGetStatInfo): /proc/<pid>/stat's rss (field 24) * page size, in
  bytes (libvirt: KiB). The same read gives the thread count, which says when to list the vCPU
  threads again.

The QEMU pid: libvirt's pidfile `<run_dir>/<name>.pid` (mode 0644, so readable by an
unprivileged daemon, in a directory only root writes), else a scan of /proc/*/cmdline for
`-uuid <uuid>` that trusts no uuid two processes claim; either way the pid's cmdline must still
name the domain's uuid (a pid reused by another process names none). It is
looked up once per running domain (libvirt id): its files are then kept open and read with one
pread each per poll (_KeptFile), and a process that ended answers ESRCH on them.
"""

from __future__ import annotations

import errno
import os
import re
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hostcollector.model import InterfaceStats, VcpuStats
from hostcollector.sources.rtnetlink import LinkInfo
from hostcollector.sources.tap_counters import LinkDump, LinkDumpError, Tap, tap_stats

VIR_VCPU_RUNNING = 1
USEC_PER_SECOND = 1e6
NS_PER_SECOND = 1e9
MS_PER_SECOND = 1e3
_VCPU_THREAD = re.compile(r"CPU (\d+)/\w+")
# The domain's own cgroup as libvirt names it: under systemd machined's scope
# (machine.slice/machine-qemu\x2d<id>\x2d<name>.scope, "-" escaped by systemd as a literal
# "\x2d"), or without systemd libvirt's own group (/machine/qemu-<id>-<name>.libvirt-qemu,
# virDomainGenerateMachineName + ".libvirt-qemu" in vircgroup.c). Newer libvirt (>= 6.x) makes
# a `libvirt` child under the scope and reads stats there; the threads sit one level lower
# (emulator, vcpuN, iothreadN).
_MACHINE_GROUP = re.compile(r"machine-qemu\\x2d.*\.scope|qemu-\d+-.*\.libvirt-qemu")
_NESTED = "libvirt"
_SCHED_WAIT_NAMES = ("se.statistics.wait_sum", "se.wait_sum", "wait_sum")


@dataclass(frozen=True, slots=True)
class DomainRef:
    """What the reader needs to know of a domain: identity, and its taps (from the XML)."""

    uuid: str
    name: str
    taps: tuple[Tap, ...] = ()
    # libvirt's id of the running domain (virDomainGetID): a new one is a new QEMU process
    domain_id: int | None = None


@dataclass(frozen=True, slots=True)
class KernelDomainStats:
    """The kernel's view of one domain. A value is None where it was not read; `problems` says
    why for each, as (value, reason). `not_found` is set when the QEMU process itself was not
    found (then nothing was read): the caller falls back to libvirt for the whole domain."""

    uuid: str
    pid: int | None
    not_found: str | None = None
    cgroup: str | None = None  # the directory CPU time was read from
    cpu_time_seconds: float | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    vcpus: tuple[VcpuStats, ...] = ()
    rss_bytes: int | None = None
    interfaces: tuple[InterfaceStats, ...] = ()
    problems: tuple[tuple[str, str], ...] = field(default=())

    def serves(self, group: str) -> bool:
        """Whether these values can stand in for libvirt's stats group (cpu_total, vcpu,
        interface) or balloon.rss ("rss") for this domain: every value of it was read."""
        if self.not_found is not None:
            return False
        if group == "cpu_total":
            return None not in (
                self.cpu_time_seconds,
                self.cpu_user_seconds,
                self.cpu_system_seconds,
            )
        if group == "vcpu":
            return bool(self.vcpus) and not any(v.startswith("vcpu") for v, _ in self.problems)
        if group == "interface":
            return not any(v.startswith("interface") for v, _ in self.problems)
        if group == "rss":
            return self.rss_bytes is not None
        return False


def _read(path: Path | str) -> str:
    with open(path, encoding="ascii", errors="replace") as file:
        return file.read()


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def cmdline_uuid(cmdline: bytes) -> str | None:
    """The value of `-uuid` in a NUL-separated command line, lower case; None without one."""
    args = cmdline.split(b"\0")
    for at, arg in enumerate(args[:-1]):
        if arg == b"-uuid":
            return args[at + 1].decode(errors="replace").lower()
    return None


def domain_cgroup(proc_cgroup: str) -> tuple[int, str, str] | None:
    """From /proc/<pid>/cgroup's text (`hierarchy-ID:controllers:path` lines), where libvirt
    reads the domain's CPU time: (2 for v2 / 1 for v1, the v1 controllers field, the group's
    path). v2 first, as libvirt's backends are asked; a v1 line only when it holds cpuacct."""
    placements: list[tuple[int, str, str]] = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            version = 2
        elif "cpuacct" in controllers.split(","):
            version = 1
        else:
            continue
        group = _machine_group(path)
        if group is not None:
            placements.append((version, controllers, group))
    placements.sort(key=lambda placement: -placement[0])
    return placements[0] if placements else None


def _machine_group(path: str) -> str | None:
    parts = path.split("/")
    for at in range(len(parts) - 1, -1, -1):
        if _MACHINE_GROUP.fullmatch(parts[at]):
            nested = at + 1 < len(parts) and parts[at + 1] == _NESTED
            return "/".join(parts[: at + 2 if nested else at + 1])
    return None


def parse_cpu_stat(text: str) -> tuple[float, float, float]:
    """cgroup v2 cpu.stat -> (usage, user, system) seconds; KeyError/ValueError if malformed."""
    words = text.split()  # "key value" lines: one split, read every poll for every domain
    fields = dict(zip(words[::2], words[1::2], strict=False))
    return (
        int(fields["usage_usec"]) / USEC_PER_SECOND,
        int(fields["user_usec"]) / USEC_PER_SECOND,
        int(fields["system_usec"]) / USEC_PER_SECOND,
    )


def parse_cpuacct_stat(text: str, ticks_per_second: int) -> tuple[float, float]:
    """cgroup v1 cpuacct.stat ("user N\\nsystem N", USER_HZ ticks) -> (user, system) seconds."""
    fields = dict(line.split(maxsplit=1) for line in text.splitlines() if " " in line)
    return int(fields["user"]) / ticks_per_second, int(fields["system"]) / ticks_per_second


def parse_stat_cpu_ticks(text: str) -> int:
    """utime + stime of /proc/<pid>/task/<tid>/stat (fields 14 and 15, proc(5)). The command
    name (field 2) may hold spaces and parentheses: the fields after it follow its last ')'."""
    after = text[text.rindex(")") + 2 :].split(maxsplit=13)
    return int(after[11]) + int(after[12])  # fields 14, 15 are the 12th, 13th after comm


def parse_process_stat(text: str) -> tuple[int, int]:
    """(num_threads, rss in pages) of /proc/<pid>/stat (fields 20 and 24, proc(5)); rss is the
    value libvirt's balloon.rss reads (virProcessGetStatInfo), get_mm_rss() as statm's."""
    after = text[text.rindex(")") + 2 :].split(maxsplit=22)
    return int(after[17]), int(after[21])


def parse_sched_wait(text: str) -> float | None:
    """wait_sum of a task's `sched` file in seconds; None where the kernel printed none
    (schedstats off)."""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in _SCHED_WAIT_NAMES:
            return float(value) / MS_PER_SECOND
    return None


class _KeptFile:
    """A kernel file read again each poll. Kept open and read with pread from offset 0 where the
    reader's budget allows: procfs and cgroupfs regenerate the text on every read from offset 0
    (seq_file), so one syscall a poll replaces open, read and close. A kept file of a process
    that ended answers ESRCH, even once its pid is reused: the descriptor holds the old process.
    Past the budget, the file is opened by path each time."""

    __slots__ = ("fd", "path", "size")

    def __init__(self, path: str, size: int, kept: bool) -> None:
        self.path, self.size, self.fd = path, size, None
        if kept:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> str:
        if self.fd is not None:
            return os.pread(self.fd, self.size, 0).decode("ascii", "replace")
        return _read(self.path)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass(slots=True)
class _VcpuFiles:
    index: int
    stat: _KeptFile
    schedstat: _KeptFile | None  # None: no such file (CONFIG_SCHED_INFO off)
    sched: _KeptFile | None = None  # opened once schedstats are on

    def files(self) -> list[_KeptFile]:
        return [f for f in (self.stat, self.schedstat, self.sched) if f is not None]


@dataclass(slots=True)
class _Process:
    """One domain's QEMU process and its files, kept between polls. `threads` is the thread
    count when the vCPU threads were last listed: a change (a vCPU plugged, a worker started or
    ended) lists them again, new threads' names read once."""

    domain_id: int | None
    pid: int
    stat: _KeptFile
    cgroup: str | None = None  # the directory CPU time is read from; None: resolve again
    cgroup_version: int = 0
    cpu: tuple[_KeptFile, ...] = ()  # v2: cpu.stat; v1: cpuacct.usage, cpuacct.stat
    threads: int = -1
    polls_since_listing: int = 0
    vcpus: dict[str, _VcpuFiles] = field(default_factory=dict)  # by tid
    others: set[str] = field(default_factory=set)  # tids known to be no vCPU thread
    last_read: int = 0  # the reader's read count when this domain was last read

    def files(self) -> list[_KeptFile]:
        return [self.stat, *self.cpu, *(f for v in self.vcpus.values() for f in v.files())]


CMDLINE_LIMIT = 64 * 1024
# Every RELIST_POLLS polls the vCPU threads are listed again even at an unchanged thread count
# (a vCPU plugged while another thread ended in the same interval).
RELIST_POLLS = 30
# A domain not read in this many reads (stopped, or gone from the listing) has its files closed
FORGET_AFTER_READS = 3
_STAT_SIZE = 1024  # /proc/<pid>/stat: ~300 bytes (52 numbers)
_SMALL_SIZE = 4096  # cpu.stat, cpuacct.*, schedstat
_SCHED_SIZE = 16384  # a task's `sched`: ~2-3 KB with schedstats on


class QemuKernelReader:
    """Reads the kernel's view of QEMU domains below configurable roots. Not thread-safe: one
    caller (the libvirt source's poll) at a time.

    `max_open_files`: how many files it keeps open between polls (2 per vCPU and 2-3 per
    domain); beyond it, files are opened by path on each read, the same values at ~3x the
    syscalls. None: half the process's descriptor limit (RLIMIT_NOFILE's soft value, read at
    the first read, once the daemon has raised it); the unit's LimitNOFILE= sets it."""

    def __init__(
        self,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        pidfile_dir: str = "/run/libvirt/qemu",
        links: LinkDump | None = None,
        max_open_files: int | None = None,
    ) -> None:
        # str paths, not Path: pathlib's joins were a third of the read's CPU (profiled)
        self.proc = proc_root.rstrip("/") or "/"
        self.cgroup_root = Path(cgroup_root)
        self.pidfile_dir = Path(pidfile_dir)
        self._links = links if links is not None else LinkDump()
        self._ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._max_open = max_open_files  # None: from the descriptor limit, at the first read
        self._open = 0  # files kept open now
        self._processes: dict[str, _Process] = {}  # by uuid
        self._reads = 0
        self._v2: Path | None = None
        # One scan of /proc per read_domains at most, however many domains are not found
        self._scanned: dict[str, int] | None = None

    @property
    def open_files(self) -> int:
        return self._open

    # --- the QEMU process

    def find_qemu_pid(self, uuid: str, name: str) -> int | None:
        uuid = uuid.lower()
        candidate = self._pidfile_pid(name)
        if candidate is not None and self._names_uuid(candidate, uuid):
            return candidate
        if self._scanned is None:
            self._scanned = self._scan()
        return self._scanned.get(uuid)

    def _pidfile_pid(self, name: str) -> int | None:
        if not name or "/" in name or name.startswith("."):
            return None  # not a libvirt domain name; never a path outside the directory
        try:
            return int(_read(self.pidfile_dir / f"{name}.pid").strip())
        except (OSError, ValueError):
            return None

    def _cmdline(self, pid: int) -> bytes | None:
        """The first CMDLINE_LIMIT bytes of the command line: QEMU's `-uuid` comes within its
        first ~2 KiB (libvirt's order); any process may have megabytes of arguments."""
        try:
            with open(f"{self.proc}/{pid}/cmdline", "rb") as file:
                return file.read(CMDLINE_LIMIT)
        except OSError:
            return None

    def _names_uuid(self, pid: int, uuid: str) -> bool:
        cmdline = self._cmdline(pid)
        return cmdline is not None and cmdline_uuid(cmdline) == uuid

    def _scan(self) -> dict[str, int]:
        """uuid -> pid of every process whose command line has a `-uuid` (QEMU's). Any local
        user can start a process with `-uuid <a tenant's VM>` on its command line: a uuid two
        processes claim is trusted to neither (libvirt serves that VM), so a fake can take the
        kernel path away from a VM, never give it another process's values."""
        found: dict[str, int] = {}
        claimed_twice: set[str] = set()
        try:
            entries = os.listdir(self.proc)
        except OSError:
            return found
        for entry in entries:
            if not entry.isdigit():
                continue
            cmdline = self._cmdline(int(entry))
            if cmdline and b"qemu" in cmdline.split(b"\0", 1)[0]:
                uuid = cmdline_uuid(cmdline)
                if uuid is not None and found.setdefault(uuid, int(entry)) != int(entry):
                    claimed_twice.add(uuid)
        for uuid in claimed_twice:
            del found[uuid]
        return found

    # --- the files kept open

    def _file(self, path: str, size: int) -> _KeptFile:
        if self._max_open is None:
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            self._max_open = 1 << 20 if soft == resource.RLIM_INFINITY else int(soft) // 2
        kept = self._open < self._max_open
        try:
            file = _KeptFile(path, size, kept)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            file = _KeptFile(path, size, False)  # out of descriptors: read by path
        if file.fd is not None:
            self._open += 1
        return file

    def _close(self, files: Sequence[_KeptFile]) -> None:
        for file in files:
            if file.fd is not None:
                file.close()
                self._open -= 1

    def _forget(self, uuid: str) -> None:
        process = self._processes.pop(uuid, None)
        if process is not None:
            self._close(process.files())

    def _attach(self, domain: DomainRef) -> _Process | None:
        """The domain's process, found anew, its stat file opened."""
        pid = self.find_qemu_pid(domain.uuid, domain.name)
        if pid is None:
            return None
        try:
            stat = self._file(f"{self.proc}/{pid}/stat", _STAT_SIZE)
        except OSError:
            return None  # ended since
        process = _Process(domain.domain_id, pid, stat)
        self._processes[domain.uuid] = process
        return process

    # --- reading

    def read_domains(self, domains: Sequence[DomainRef]) -> dict[str, KernelDomainStats]:
        """Every domain's kernel view, by uuid, with one link dump for all their taps."""
        links: dict[str, LinkInfo] | None = None
        link_problem = ""
        names = {tap.ifname for domain in domains for tap in domain.taps}
        if names:
            try:
                links = self._links.links(names)
            except LinkDumpError as exc:
                link_problem = str(exc)
        wait_kept = self._schedstats_enabled()
        self._reads += 1
        self._scanned = None
        try:
            return {
                domain.uuid: self._read_domain(domain, links, link_problem, wait_kept)
                for domain in domains
            }
        finally:
            self._scanned = None
            for uuid, process in list(self._processes.items()):
                if self._reads - process.last_read >= FORGET_AFTER_READS:
                    self._forget(uuid)

    def read_domain(self, domain: DomainRef) -> KernelDomainStats:
        return self.read_domains([domain])[domain.uuid]

    def _schedstats_enabled(self) -> bool:
        """Whether task `sched` files hold wait_sum: kernel.sched_schedstats is 1. Without the
        sysctl (CONFIG_SCHEDSTATS off) they never do."""
        try:
            return _read(f"{self.proc}/sys/kernel/sched_schedstats").strip() == "1"
        except OSError:
            return False

    def _read_domain(
        self,
        domain: DomainRef,
        links: dict[str, LinkInfo] | None,
        link_problem: str,
        wait_kept: bool,
    ) -> KernelDomainStats:
        found = self._read_process(domain)
        if found is None:
            return KernelDomainStats(
                uuid=domain.uuid,
                pid=None,
                not_found=f"no process has -uuid {domain.uuid} on its command line",
            )
        process, threads, rss = found
        process.last_read = self._reads
        problems: list[tuple[str, str]] = []
        cgroup, cpu = self._cpu(process, problems)
        vcpus = self._vcpus(process, threads, wait_kept, problems)
        interfaces = []
        for tap in domain.taps:
            stats = tap_stats(links, tap) if links is not None else None
            if stats is None:
                problems.append(
                    (f"interface {tap.ifname}", link_problem or "no such link in the dump")
                )
            else:
                interfaces.append(stats)
        return KernelDomainStats(
            uuid=domain.uuid,
            pid=process.pid,
            cgroup=cgroup,
            cpu_time_seconds=cpu[0],
            cpu_user_seconds=cpu[1],
            cpu_system_seconds=cpu[2],
            vcpus=vcpus,
            rss_bytes=rss * self._page_size,
            interfaces=tuple(interfaces),
            problems=tuple(problems),
        )

    def _read_process(self, domain: DomainRef) -> tuple[_Process, int, int] | None:
        """The domain's process (the one read before while the domain keeps its libvirt id and
        the process lives; else found anew), its thread count and RSS in pages."""
        process = self._processes.get(domain.uuid)
        if process is not None and process.domain_id != domain.domain_id:
            self._forget(domain.uuid)  # restarted: another process
            process = None
        for _attempt in range(2):
            if process is None:
                process = self._attach(domain)
                if process is None:
                    return None
            try:
                threads, rss = parse_process_stat(process.stat.read())
                return process, threads, rss
            except (OSError, ValueError, IndexError):
                self._forget(domain.uuid)  # ended (ESRCH), or not a process's stat at all
                process = None
        return None

    def _cpu(
        self, process: _Process, problems: list[tuple[str, str]]
    ) -> tuple[str | None, tuple[float | None, float | None, float | None]]:
        """The directory CPU time is read from, and (usage, user, system) seconds."""
        if process.cgroup is None and not self._place(process, problems):
            return None, (None, None, None)
        directory = process.cgroup
        values = self._cpu_values(process, directory, problems)
        if None in values:
            self._unplace(process)  # moved or removed: placed again next poll
        return directory, values

    def _cpu_values(
        self, process: _Process, directory: str | None, problems: list[tuple[str, str]]
    ) -> tuple[float | None, float | None, float | None]:
        if process.cgroup_version == 2:
            try:
                return parse_cpu_stat(process.cpu[0].read())
            except (OSError, KeyError, ValueError) as exc:
                problems.append(("cpu", f"{directory}/cpu.stat: {_describe(exc)}"))
                return None, None, None
        usage_file, stat_file = process.cpu
        try:
            usage: float | None = int(usage_file.read()) / NS_PER_SECOND
        except (OSError, ValueError) as exc:
            problems.append(("cpu_time", f"{directory}/cpuacct.usage: {_describe(exc)}"))
            usage = None
        try:
            user, system = parse_cpuacct_stat(stat_file.read(), self._ticks_per_second)
        except (OSError, KeyError, ValueError) as exc:
            problems.append(("cpu_user_system", f"{directory}/cpuacct.stat: {_describe(exc)}"))
            return usage, None, None
        return usage, user, system

    def _place(self, process: _Process, problems: list[tuple[str, str]]) -> bool:
        """Finds the process's machine cgroup and opens its CPU files."""
        try:
            placement = domain_cgroup(_read(f"{self.proc}/{process.pid}/cgroup"))
        except OSError as exc:
            problems.append(("cpu", f"/proc/{process.pid}/cgroup: {_reason(exc)}"))
            return False
        if placement is None:
            problems.append(
                ("cpu", "cgroup not found: no libvirt machine group in /proc/<pid>/cgroup")
            )
            return False
        version, controllers, group = placement
        names: tuple[str, ...]
        if version == 2:
            directory, names = self._v2_mount() / group.lstrip("/"), ("cpu.stat",)
        else:
            directory = self._v1_mount(controllers) / group.lstrip("/")
            names = ("cpuacct.usage", "cpuacct.stat")
        files = []
        for name in names:
            try:
                files.append(self._file(f"{directory}/{name}", _SMALL_SIZE))
            except OSError as exc:
                self._close(files)
                problems.append(("cpu", f"{directory}/{name}: {_describe(exc)}"))
                return False
        process.cgroup, process.cgroup_version, process.cpu = str(directory), version, tuple(files)
        return True

    def _unplace(self, process: _Process) -> None:
        self._close(process.cpu)
        process.cpu, process.cgroup = (), None

    def _v2_mount(self) -> Path:
        """The unified hierarchy: the cgroup root itself (v2 only), or `unified` below it
        (systemd's hybrid layout, and this lab's)."""
        if self._v2 is None:
            unified = (self.cgroup_root / "cgroup.controllers").exists()
            self._v2 = self.cgroup_root if unified else self.cgroup_root / "unified"
        return self._v2

    def _v1_mount(self, controllers: str) -> Path:
        """A v1 hierarchy is mounted at its controllers' names ("cpu,cpuacct"), and systemd
        links each controller's own name to it; either will do."""
        joint = self.cgroup_root / controllers
        return joint if joint.is_dir() else self.cgroup_root / "cpuacct"

    def _vcpus(
        self, process: _Process, threads: int, wait_kept: bool, problems: list[tuple[str, str]]
    ) -> tuple[VcpuStats, ...]:
        process.polls_since_listing += 1
        if threads != process.threads or process.polls_since_listing >= RELIST_POLLS:
            if not self._list_vcpus(process, problems):
                return ()
            process.threads, process.polls_since_listing = threads, 0
        vcpus = []
        for tid, files in list(process.vcpus.items()):
            try:
                vcpus.append(self._vcpu(files, wait_kept, problems))
            except ProcessLookupError:  # the thread ended (vCPU unplugged): list again next poll
                self._close(files.files())
                del process.vcpus[tid]
                process.threads = -1
        return tuple(sorted(vcpus, key=lambda vcpu: vcpu.index))

    def _list_vcpus(self, process: _Process, problems: list[tuple[str, str]]) -> bool:
        """The vCPU threads of the process: known threads kept, new ones' names read."""
        tasks = f"{self.proc}/{process.pid}/task"
        try:
            tids = set(os.listdir(tasks))
        except OSError as exc:
            problems.append(("vcpu", f"/proc/{process.pid}/task: {_reason(exc)}"))
            return False
        for gone in process.vcpus.keys() - tids:
            self._close(process.vcpus.pop(gone).files())
        process.others &= tids
        for tid in tids - process.vcpus.keys() - process.others:
            task = f"{tasks}/{tid}"
            try:
                match = _VCPU_THREAD.fullmatch(_read(f"{task}/comm").strip())
                if match is None:
                    process.others.add(tid)
                    continue
                stat = self._file(f"{task}/stat", _STAT_SIZE)
            except OSError:
                continue  # the thread ended between the listing and now
            try:
                schedstat: _KeptFile | None = self._file(f"{task}/schedstat", _SMALL_SIZE)
            except FileNotFoundError:
                schedstat = None  # CONFIG_SCHED_INFO off: libvirt reports a delay of 0 too
            except OSError:
                schedstat = _KeptFile(f"{task}/schedstat", _SMALL_SIZE, kept=False)
            process.vcpus[tid] = _VcpuFiles(int(match.group(1)), stat, schedstat)
        return True

    def _vcpu(
        self, files: _VcpuFiles, wait_kept: bool, problems: list[tuple[str, str]]
    ) -> VcpuStats:
        """One vCPU thread's values; ProcessLookupError once the thread has ended."""
        index, task = files.index, files.stat.path.rsplit("/", 1)[0]
        time = delay = None
        wait: float | None = 0.0  # libvirt's value where the kernel keeps no schedstats
        try:
            time = parse_stat_cpu_ticks(files.stat.read()) / self._ticks_per_second
        except ProcessLookupError:
            raise
        except (OSError, ValueError, IndexError) as exc:
            problems.append((f"vcpu.{index}.time", f"{task}/stat: {_describe(exc)}"))
        if files.schedstat is None:
            delay = 0.0
        else:
            try:
                delay = int(files.schedstat.read().split()[1]) / NS_PER_SECOND
            except FileNotFoundError:
                delay = 0.0  # CONFIG_SCHED_INFO off (a file read by path: not kept open)
            except (OSError, ValueError, IndexError) as exc:
                problems.append((f"vcpu.{index}.delay", f"{task}/schedstat: {_describe(exc)}"))
        if wait_kept:
            try:
                if files.sched is None:
                    files.sched = self._file(f"{task}/sched", _SCHED_SIZE)
                wait = parse_sched_wait(files.sched.read()) or 0.0
            except (OSError, ValueError) as exc:
                problems.append((f"vcpu.{index}.wait", f"{task}/sched: {_describe(exc)}"))
                wait = None
        return VcpuStats(
            index=index,
            state=VIR_VCPU_RUNNING,
            time_seconds=time,
            wait_seconds=wait,
            delay_seconds=delay,
        )

    def close(self) -> None:
        for uuid in list(self._processes):
            self._forget(uuid)
        self._links.close()


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return _reason(exc)
    return f"unreadable ({type(exc).__name__}: {exc})"
