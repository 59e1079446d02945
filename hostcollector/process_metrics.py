"""The daemon's own process: CPU, memory, descriptors, threads, start time, as every Prometheus
client library reports them, and the memory limit of the cgroup it runs in.

Read once per snapshot, on the event loop: one read of /proc/self/stat (CPU, memory, threads,
start time), one listing of /proc/self/fd, getrlimit(2) for the descriptor limit (what
/proc/self/limits shows of this process, without a file to parse), and the cgroup's limit
file, found once at start. Measured: 25-35 us per snapshot with a few descriptors open, ~160 us
with 600 (the listing grows with them); tests/test_process_metrics.py prints it.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import resource
from collections.abc import Iterator
from pathlib import Path

from hostcollector import metrics as m
from hostcollector.selfmetrics import Sample

log = logging.getLogger(__name__)

# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number
# (9223372036854771712); any value this large is no limit a host could have.
UNLIMITED_V1 = 2**62
_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # mountinfo writes a space, tab, newline or backslash in a path as an octal escape.
    return _MOUNTINFO_ESCAPE.sub(lambda match: chr(int(match[1], 8)), field)


def memory_limit_file(proc_self: Path, fs_root: Path = Path("/")) -> Path | None:
    """The file holding the memory limit of the cgroup this process is in: cgroup v2's
    memory.max, or cgroup v1's memory controller's memory.limit_in_bytes (a hybrid host's
    memory controller is v1's). None when there is no memory controller mounted that shows it.

    Our cgroup's path (/proc/self/cgroup) is relative to the cgroup namespace's root, and a
    mount shows the hierarchy from its own root (mountinfo's 4th field): inside a container
    both are "/" and the limit is the mount's own file; a container without its own cgroup
    namespace has its subtree bind-mounted, the mount's root is then our path. `fs_root` is
    where mountinfo's mount points are (tests: a tree on disk)."""
    try:
        cgroups = (proc_self / "cgroup").read_text()
        mounts = (proc_self / "mountinfo").read_text()
    except OSError:
        return None
    v1_path = v2_path = None
    for line in cgroups.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            v1_path = path
        elif hierarchy == "0" and controllers == "":
            v2_path = path
    for line in mounts.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        if len(fields) < separator + 4:
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        fstype, options = fields[separator + 1], fields[separator + 3].split(",")
        if v1_path is not None and fstype == "cgroup" and "memory" in options:
            return _within(fs_root, mount_point, root, v1_path, "memory.limit_in_bytes")
        if v1_path is None and v2_path is not None and fstype == "cgroup2":
            return _within(fs_root, mount_point, root, v2_path, "memory.max")
    return None


def _within(fs_root: Path, mount_point: str, root: str, path: str, name: str) -> Path | None:
    relative = posixpath.relpath(path, root)
    if relative == ".." or relative.startswith("../"):
        return None  # our cgroup is outside what this mount shows
    return fs_root / mount_point.lstrip("/") / relative / name


def read_memory_limit(file: Path) -> int | None:
    """The limit in bytes; None when unlimited ("max", or v1's huge value) or unreadable."""
    try:
        text = file.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        limit = int(text)
    except ValueError:
        return None
    return limit if limit < UNLIMITED_V1 else None


def _boot_time(proc: Path) -> float | None:
    try:
        with open(proc / "stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class ProcessMetrics:
    """The self-metrics owner of this process (registered by wiring.build_collector)."""

    def __init__(self, proc: Path = Path("/proc"), fs_root: Path = Path("/")) -> None:
        self._stat = str(proc / "self" / "stat")
        self._fd = str(proc / "self" / "fd")
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._page_size = resource.getpagesize()
        self._boot_time = _boot_time(proc)
        self._limit_file = memory_limit_file(proc / "self", fs_root)

    def collect(self) -> Iterator[Sample]:
        with open(self._stat, "rb") as stat:
            # The command name, field 2, is in parentheses and may hold spaces and ")".
            fields = stat.read().rpartition(b")")[2].split()
        # proc_pid_stat(5) fields from the 3rd: utime 14, stime 15, num_threads 20,
        # starttime 22, vsize 23, rss 24.
        yield Sample(
            m.PROCESS_CPU_SECONDS_TOTAL, "", (int(fields[11]) + int(fields[12])) / self._ticks
        )
        yield Sample(m.PROCESS_RESIDENT_MEMORY_BYTES, "", int(fields[21]) * self._page_size)
        yield Sample(m.PROCESS_VIRTUAL_MEMORY_BYTES, "", int(fields[20]))
        yield Sample(m.PROCESS_OPEN_FDS, "", len(os.listdir(self._fd)))
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            yield Sample(m.PROCESS_MAX_FDS, "", soft)
        if self._boot_time is not None:
            yield Sample(
                m.PROCESS_START_TIME_SECONDS, "", int(fields[19]) / self._ticks + self._boot_time
            )
        yield Sample(m.PROCESS_THREADS, "", int(fields[17]))
        if self._limit_file is not None:
            limit = read_memory_limit(self._limit_file)
            if limit is not None:
                yield Sample(m.MEMORY_LIMIT_BYTES, "", limit)
