"""The process's own metrics (hostcollector/process_metrics.py): the values client_python's
ProcessCollector reads at the same moment, the cgroup memory limit found in v1 and v2 trees on
disk and on this machine, and what one collect costs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from prometheus_client.process_collector import ProcessCollector

from hostcollector import metrics
from hostcollector.collector import Collector
from hostcollector.config import Config, LibvirtConfig, NvmlConfig, SourcesConfig, SriovConfig
from hostcollector.process_metrics import (
    ProcessMetrics,
    memory_limit_file,
    read_memory_limit,
)
from hostcollector.wiring import build_collector
from tests.test_selfmetrics import family_block

CLIENT_PYTHON_NAMES = {
    "process_cpu_seconds": metrics.PROCESS_CPU_SECONDS_TOTAL,
    "process_resident_memory_bytes": metrics.PROCESS_RESIDENT_MEMORY_BYTES,
    "process_virtual_memory_bytes": metrics.PROCESS_VIRTUAL_MEMORY_BYTES,
    "process_open_fds": metrics.PROCESS_OPEN_FDS,
    "process_max_fds": metrics.PROCESS_MAX_FDS,
    "process_start_time_seconds": metrics.PROCESS_START_TIME_SECONDS,
}


def test_same_values_as_client_pythons_process_collector() -> None:
    theirs_collector = ProcessCollector(registry=None)
    ours = {s.family: s.value for s in ProcessMetrics().collect()}
    theirs = {f.name: f for f in theirs_collector.collect()}
    assert set(theirs) == set(CLIENT_PYTHON_NAMES)
    for name, family in CLIENT_PYTHON_NAMES.items():
        # Same name, type and help: dashboards made for any exporter read ours.
        assert family.name.removesuffix("_total") == name
        assert (family.kind, family.help) == (theirs[name].type, theirs[name].documentation)
        value = theirs[name].samples[0].value
        mine = ours[family]
        assert mine is not None
        if family is metrics.PROCESS_CPU_SECONDS_TOTAL:
            # Ours read first; it only grows (other threads of the test run may still spin).
            # client_python adds utime/ticks and stime/ticks, we divide their sum: an ulp apart.
            assert value - 0.5 <= mine <= value + 1e-9
        elif family in (
            metrics.PROCESS_RESIDENT_MEMORY_BYTES,
            metrics.PROCESS_VIRTUAL_MEMORY_BYTES,
        ):
            assert abs(mine - value) <= max(0.05 * value, 4 << 20)
        elif family is metrics.PROCESS_OPEN_FDS:
            # The listing's own descriptor, and other threads of the test run opening files.
            assert abs(mine - value) <= 8
        else:
            assert mine == value
    assert ours[metrics.PROCESS_THREADS] == len(os.listdir("/proc/self/task"))


def test_cost_of_one_collect() -> None:
    """Printed for the record (-s); bounded generously: it runs once per snapshot."""
    owner = ProcessMetrics()
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        tuple(owner.collect())
    micros = (time.perf_counter() - started) / rounds * 1e6
    print(
        f"process self-metrics: {micros:.1f} us per collect, {len(os.listdir('/proc/self/fd'))} fds"
    )
    assert micros < 2000


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


V2_MOUNTINFO = (
    "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
    "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate\n"
)
V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
UNIT = "system.slice/hostcollector.service"


def v2_tree(root: Path, limit: str, cgroup: str = f"/{UNIT}", mount_root: str = "/") -> Path:
    write(root / "proc/self/cgroup", f"0::{cgroup}\n")
    write(
        root / "proc/self/mountinfo",
        V2_MOUNTINFO.replace(" / /sys/fs/cgroup ", f" {mount_root} /sys/fs/cgroup "),
    )
    relative = os.path.relpath(cgroup, mount_root)
    write(root / "sys/fs/cgroup" / relative / "memory.max", f"{limit}\n")
    return root


def v1_tree(root: Path, limit: str) -> Path:
    write(
        root / "proc/self/cgroup",
        f"12:pids:/{UNIT}\n4:memory:/{UNIT}\n2:cpu,cpuacct:/{UNIT}\n1:name=systemd:/{UNIT}\n0::/{UNIT}\n",
    )
    write(root / "proc/self/mountinfo", V1_MOUNTINFO)
    write(root / "sys/fs/cgroup/memory" / UNIT / "memory.limit_in_bytes", f"{limit}\n")
    return root


def limit_of(root: Path) -> int | None:
    file = memory_limit_file(root / "proc/self", root)
    return None if file is None else read_memory_limit(file)


def test_cgroup_v2_limit(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, "536870912")
    assert memory_limit_file(root / "proc/self", root) == (
        root / "sys/fs/cgroup" / UNIT / "memory.max"
    )
    assert limit_of(root) == 512 << 20
    assert limit_of(v2_tree(tmp_path / "max", "max")) is None


def test_cgroup_v2_inside_a_containers_namespace(tmp_path: Path) -> None:
    # Its own cgroup namespace: we are at its root, the mount shows it from there.
    assert limit_of(v2_tree(tmp_path / "ns", "1073741824", cgroup="/")) == 1 << 30
    # No namespace of its own, its subtree bind-mounted: the mount's root is our path.
    bound = v2_tree(tmp_path / "bind", "2147483648", cgroup="/docker/abc", mount_root="/docker/abc")
    assert memory_limit_file(bound / "proc/self", bound) == bound / "sys/fs/cgroup/memory.max"
    assert limit_of(bound) == 2 << 30


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    root = v1_tree(tmp_path, "268435456")
    # The memory controller's hierarchy, not the unified one mounted beside it (hybrid).
    assert memory_limit_file(root / "proc/self", root) == (
        root / "sys/fs/cgroup/memory" / UNIT / "memory.limit_in_bytes"
    )
    assert limit_of(root) == 256 << 20
    assert limit_of(v1_tree(tmp_path / "unlimited", "9223372036854771712")) is None


def test_no_limit_when_nothing_is_readable(tmp_path: Path) -> None:
    assert memory_limit_file(tmp_path / "proc/self", tmp_path) is None
    root = v2_tree(tmp_path / "garbled", "lots")
    assert limit_of(root) is None
    (root / "sys/fs/cgroup" / UNIT / "memory.max").unlink()
    assert limit_of(root) is None


def test_the_limit_is_a_sample_only_when_there_is_one(tmp_path: Path) -> None:
    limited = v2_tree(tmp_path / "limited", "536870912")
    # The tree has no /proc/self/stat: give it this process's.
    for name in ("stat", "fd"):
        (limited / "proc/self" / name).symlink_to(f"/proc/self/{name}")
    (limited / "proc/stat").symlink_to("/proc/stat")
    samples = {s.family: s.value for s in ProcessMetrics(limited / "proc", limited).collect()}
    assert samples[metrics.MEMORY_LIMIT_BYTES] == 512 << 20
    (limited / "sys/fs/cgroup" / UNIT / "memory.max").write_text("max\n")
    samples = {s.family: s.value for s in ProcessMetrics(limited / "proc", limited).collect()}
    assert metrics.MEMORY_LIMIT_BYTES not in samples
    assert samples[metrics.PROCESS_THREADS] >= 1


def test_this_machines_cgroup() -> None:
    file = memory_limit_file(Path("/proc/self"))
    if file is None:
        pytest.skip("no memory controller mounted where this process can see it")
    assert file.exists(), file
    text = file.read_text().strip()
    expected = None if text == "max" or int(text) >= 2**62 else int(text)
    assert read_memory_limit(file) == expected
    print(f"this machine: {file} = {text}")


def test_the_daemon_reports_them_and_a_bare_collector_does_not() -> None:
    off = SourcesConfig(
        LibvirtConfig(enabled=False), SriovConfig(enabled=False), NvmlConfig(enabled=False)
    )
    config = Config(sources=off)
    daemon = build_collector(config)
    daemon.refresh()
    text = daemon.exposition.body(openmetrics=False, gzipped=False).decode()
    threads = family_block(text, metrics.PROCESS_THREADS)
    assert threads[:2] == [
        "# HELP process_threads Number of OS threads in the process.",
        "# TYPE process_threads gauge",
    ]
    assert int(threads[2].split()[1]) >= 1
    bare = Collector(config, sources={})
    bare.refresh()
    assert "process_" not in bare.exposition.body(openmetrics=False, gzipped=False).decode()
