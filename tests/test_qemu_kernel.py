"""The kernel's view of a QEMU domain (sources/qemu_kernel.py, tap_counters.py) on fake /proc and
cgroup trees on disk, in the kernel's file formats, and RTM_NEWLINK messages in its binary layout.

The layouts are the ones libvirt makes (see qemu_kernel's docstring); the hybrid one is what the
lab's libvirt 9.0 made on this machine (`cat /proc/<qemu pid>/cgroup`, copied below).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from hostcollector.model import VcpuStats
from hostcollector.sources.qemu_kernel import (
    CMDLINE_LIMIT,
    DomainRef,
    KernelDomainStats,
    QemuKernelReader,
    cmdline_uuid,
    domain_cgroup,
    parse_sched_wait,
    parse_stat_cpu_ticks,
)
from hostcollector.sources.rtnetlink import link_name, parse_link
from hostcollector.sources.tap_counters import (
    NLMSG_DONE,
    RTM_NEWLINK,
    LinkDump,
    LinkDumpError,
    Tap,
    dump_request,
    links_by_name,
    split_messages,
)

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
UUID = "a1a1a1a1-0000-4000-8000-000000000001"
NAME = "hc-lab-a1"

# /proc/<pid>/cgroup of a lab QEMU: cgroup v1 controllers plus the unified hierarchy (hybrid)
HYBRID = """9:name=systemd:/
8:pids:/
7:blkio:/machine/qemu-1-hc-lab-a1.libvirt-qemu
6:freezer:/machine/qemu-1-hc-lab-a1.libvirt-qemu
5:devices:/
4:memory:/machine/qemu-1-hc-lab-a1.libvirt-qemu
3:cpuset:/machine/qemu-1-hc-lab-a1.libvirt-qemu/emulator
2:cpuacct:/
1:cpu:/machine/qemu-1-hc-lab-a1.libvirt-qemu/emulator
0::/machine/qemu-1-hc-lab-a1.libvirt-qemu/emulator
"""
SCOPE = r"machine.slice/machine-qemu\x2d1\x2dhc\x2dlab\x2da1.scope"
V2_NESTED = f"0::/{SCOPE}/libvirt/emulator\n"
V2_FLAT = f"0::/{SCOPE}/emulator\n"
V1_SYSTEMD = f"""11:cpu,cpuacct:/{SCOPE}/emulator
3:memory:/{SCOPE}
1:name=systemd:/{SCOPE}
"""


@dataclass
class Thread:
    tid: int
    comm: str
    utime: int  # ticks
    stime: int
    run_ns: int = 0
    delay_ns: int = 0
    sched_wait: str | None = None  # a line of the task's `sched` file, when schedstats are on


@dataclass
class Qemu:
    pid: int
    uuid: str = UUID
    name: str = NAME
    cgroup: str = HYBRID
    threads: list[Thread] = field(default_factory=list)
    resident_pages: int = 63009


def stat_line(
    pid: int, comm: str, utime: int, stime: int, threads: int = 8, rss: int = 62968
) -> str:
    """/proc/<pid>/stat as the kernel writes it (fs/proc/array.c do_task_stat), from a lab
    vCPU thread's, with utime and stime (fields 14, 15), num_threads (20) and rss (24)
    replaced."""
    return (
        f"{pid} ({comm}) S 22517 22621 22621 0 -1 138412224 3528 0 0 0 {utime} {stime} 0 0 20 0 "
        f"{threads} 0 1682950 2035998720 {rss} 18446744073709551615 94562519908352 94562525768789 "
        "140723358447840 0 0 0 2147220087 4096 16451 1 0 0 -1 1 0 0 0 0 0 94562528880888 "
        "94562534085040 94562894286848 140723358455584 140723358457389 140723358457389 "
        "140723358457820 0\n"
    )


def sched_file(comm: str, tid: int, wait_line: str | None) -> str:
    lines = [
        f"{comm} ({tid}, #threads: 8)",
        "-" * 67,
        "se.exec_start                                :      19971053.390613",
        "se.sum_exec_runtime                          :        145160.191295",
        "se.nr_migrations                             :                10681",
    ]
    if wait_line:
        lines.append(wait_line)
    lines.append("nr_switches                                  :               441131")
    return "\n".join(lines) + "\n"


def make_proc(root: Path, *qemus: Qemu, schedstats: str | None = None) -> Path:
    """The tree of /proc for these processes; again over an existing tree, it rewrites each
    file in place (same inode), as the kernel's files are read again by a reader that keeps
    them open."""
    proc = root / "proc"
    for qemu in qemus:
        base = proc / str(qemu.pid)
        (base / "task").mkdir(parents=True, exist_ok=True)
        (base / "cmdline").write_bytes(
            b"\0".join(
                [
                    b"/usr/bin/qemu-system-x86_64",
                    b"-name",
                    f"guest={qemu.name},debug-threads=on".encode(),
                    b"-uuid",
                    qemu.uuid.encode(),
                    b"-smp",
                    b"2,sockets=2,cores=1,threads=1",
                ]
            )
            + b"\0"
        )
        (base / "cgroup").write_text(qemu.cgroup)
        threads = [Thread(qemu.pid, "qemu-system-x86", 1200, 300), *qemu.threads]
        # the process's own stat: the sums over its threads, its thread count and RSS
        (base / "stat").write_text(
            stat_line(qemu.pid, "qemu-system-x86", 1, 1, len(threads), qemu.resident_pages)
        )
        for thread in threads:
            task = base / "task" / str(thread.tid)
            task.mkdir(exist_ok=True)
            (task / "comm").write_text(thread.comm + "\n")
            (task / "stat").write_text(
                stat_line(thread.tid, thread.comm, thread.utime, thread.stime)
            )
            (task / "schedstat").write_text(f"{thread.run_ns} {thread.delay_ns} 437564\n")
            (task / "sched").write_text(sched_file(thread.comm, thread.tid, thread.sched_wait))
    if schedstats is not None:
        (proc / "sys/kernel").mkdir(parents=True, exist_ok=True)
        (proc / "sys/kernel/sched_schedstats").write_text(schedstats + "\n")
    return proc


def cpu_stat(usage: int, user: int, system: int) -> str:
    """cgroup v2 cpu.stat (kernel/cgroup/rstat.c cgroup_base_stat_cputime_show)."""
    return (
        f"usage_usec {usage}\nuser_usec {user}\nsystem_usec {system}\nnice_usec 0\n"
        "core_sched.force_idle_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
        "nr_bursts 0\nburst_usec 0\n"
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


VCPUS_TCG = [
    Thread(22630, "CPU 0/TCG", 14172, 343, 145_160_191_295, 145_864_162_654),
    Thread(22631, "CPU 1/TCG", 14100, 350, 144_000_000_000, 146_000_000_001),
    Thread(22629, "IO mon_iothread", 380, 4, 3_839_555_331, 8_731_457_381),
    Thread(22627, "worker", 30, 2),
]


class RecordedDump(LinkDump):
    """The real LinkDump with the kernel's answer replayed: one datagram of RTM_NEWLINK
    messages and NLMSG_DONE, split as the socket's reader splits it."""

    def __init__(self, datagram: bytes | None) -> None:
        super().__init__()
        self.datagram = datagram
        self.dumps = 0

    def messages(self) -> list[bytes]:
        self.dumps += 1
        if self.datagram is None:
            raise LinkDumpError("RTM_GETLINK dump: Connection refused")
        return [m for kind, m in split_messages(self.datagram) if kind == RTM_NEWLINK]


TAP_COUNTERS = {
    "rx_packets": 2029,
    "tx_packets": 2127,
    "rx_bytes": 189110,
    "tx_bytes": 196364,
    "rx_errors": 1,
    "tx_errors": 2,
    "rx_dropped": 3,
    "tx_dropped": 4,
    "rx_missed_errors": 5,
}


def link_message(name: str, index: int, counters: dict[str, int]) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["flags"] = 2  # NLM_F_MULTI: part of a dump
    msg["header"]["sequence_number"] = 1
    msg["family"] = 0
    msg["ifi_type"] = 1
    msg["index"] = index
    msg["flags"] = 0x1043
    msg["change"] = 0
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_MTU", 1500), ("IFLA_STATS64", counters)]
    msg.encode()
    return bytes(msg.data[: msg["header"]["length"]])


def datagram(*messages: bytes) -> bytes:
    done = struct.pack("=IHHIIi", 20, NLMSG_DONE, 2, 1, 0, 0)
    return b"".join(m + b"\0" * (-len(m) % 4) for m in messages) + done


def interface_problems(stats: KernelDomainStats) -> list[tuple[str, str]]:
    return [problem for problem in stats.problems if problem[0].startswith("interface")]


def reader(
    tmp_path: Path, proc: Path, dump: LinkDump | None = None, max_open_files: int = 1000
) -> QemuKernelReader:
    pidfiles = tmp_path / "run"
    pidfiles.mkdir(exist_ok=True)
    return QemuKernelReader(
        proc_root=str(proc),
        cgroup_root=str(tmp_path / "cgroup"),
        pidfile_dir=str(pidfiles),
        links=dump or RecordedDump(datagram()),
        max_open_files=max_open_files,
    )


def test_hybrid_layout_of_the_lab_reads_the_unified_hierarchy(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, Qemu(22622, threads=VCPUS_TCG))
    group = tmp_path / "cgroup/unified/machine/qemu-1-hc-lab-a1.libvirt-qemu"
    write(group / "cpu.stat", cpu_stat(823724313, 790258814, 33465498))
    write(group / "emulator/cpu.stat", cpu_stat(1, 1, 0))  # where the process is: not the VM's
    write(tmp_path / "cgroup/cpuacct/cpuacct.usage", "99999999999999\n")  # v1 root: the host's
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / f"{NAME}.pid").write_text("22622")  # libvirt writes no newline

    stats = reader(tmp_path, proc).read_domain(DomainRef(UUID, NAME))

    assert stats.not_found is None and stats.pid == 22622 and stats.problems == ()
    assert stats.cgroup == str(group)
    assert stats.cpu_time_seconds == pytest.approx(823.724313, abs=1e-9)
    assert stats.cpu_user_seconds == pytest.approx(790.258814, abs=1e-9)
    assert stats.cpu_system_seconds == pytest.approx(33.465498, abs=1e-9)
    assert stats.vcpus == (
        VcpuStats(0, 1, (14172 + 343) / TICKS, 0.0, 145.864162654),
        VcpuStats(1, 1, (14100 + 350) / TICKS, 0.0, 146.000000001),
    )
    assert stats.rss_bytes == 63009 * PAGE
    assert all(stats.serves(group) for group in ("cpu_total", "vcpu", "interface", "rss"))


@pytest.mark.parametrize(
    ("layout", "stats_at"),
    [(V2_NESTED, f"{SCOPE}/libvirt"), (V2_FLAT, SCOPE)],
    ids=["with-libvirt-sublevel", "without"],
)
def test_systemd_v2_scope_with_and_without_the_libvirt_sublevel(
    tmp_path: Path, layout: str, stats_at: str
) -> None:
    kvm = [Thread(101, "CPU 0/KVM", 500, 20, 0, 7_000_000), Thread(102, "CPU 1/KVM", 400, 10)]
    proc = make_proc(tmp_path, Qemu(100, cgroup=layout, threads=kvm))
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    # The scope also counts what the process used before libvirt moved it into libvirt/:
    # libvirt reads the nested group where there is one (virCgroupGetNested).
    write(root / SCOPE / "cpu.stat", cpu_stat(9_000_000, 8_000_000, 1_000_000))
    write(root / SCOPE / "libvirt/cpu.stat", cpu_stat(7_000_000, 6_500_000, 500_000))
    expected = 7.0 if stats_at.endswith("libvirt") else 9.0

    stats = reader(tmp_path, proc).read_domain(DomainRef(UUID, NAME))

    assert stats.cgroup == str(root / stats_at)
    assert stats.cpu_time_seconds == expected
    assert [(v.index, v.time_seconds, v.delay_seconds) for v in stats.vcpus] == [
        (0, 520 / TICKS, 0.007),
        (1, 410 / TICKS, 0.0),
    ]


def test_cgroup_v1_cpuacct_in_ns_and_user_hz_ticks(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, Qemu(200, cgroup=V1_SYSTEMD, threads=VCPUS_TCG[:1]))
    group = tmp_path / "cgroup/cpu,cpuacct" / SCOPE
    write(group / "cpuacct.usage", "823724693000\n")
    write(group / "cpuacct.stat", "user 79025\nsystem 3346\n")

    stats = reader(tmp_path, proc).read_domain(DomainRef(UUID, NAME))

    assert stats.cgroup == str(group)
    assert stats.cpu_time_seconds == 823.724693
    # libvirt: ticks * (1e9 / sysconf(_SC_CLK_TCK)) ns
    assert stats.cpu_user_seconds == pytest.approx(79025 / TICKS)
    assert stats.cpu_system_seconds == pytest.approx(3346 / TICKS)


def test_a_process_outside_any_machine_group_is_a_cgroup_not_found(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, Qemu(300, cgroup="0::/user.slice/user-0.slice/session-1.scope\n"))

    stats = reader(tmp_path, proc).read_domain(DomainRef(UUID, NAME))

    assert stats.not_found is None  # the process is there: vCPUs, RSS and taps still read
    assert stats.cpu_time_seconds is None and not stats.serves("cpu_total")
    assert stats.problems[0][0] == "cpu" and "cgroup not found" in stats.problems[0][1]
    assert stats.rss_bytes == 63009 * PAGE


def test_pidfile_of_a_reused_pid_is_not_trusted_and_the_scan_finds_the_domain(
    tmp_path: Path,
) -> None:
    other = Qemu(400, uuid="b1b1b1b1-0000-4000-8000-000000000002", name="hc-lab-b1")
    proc = make_proc(tmp_path, other, Qemu(401, threads=VCPUS_TCG[:1]))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / f"{NAME}.pid").write_text("400\n")  # stale: 400 is another VM now
    kernel = reader(tmp_path, proc)

    assert kernel.find_qemu_pid(UUID, NAME) == 401
    assert kernel.find_qemu_pid(UUID.upper(), NAME) == 401

    # the process ends and its pid goes to a process that is no QEMU of this domain
    (proc / "401/cmdline").write_bytes(b"/usr/bin/sleep\0" + b"infinity\0")
    stats = kernel.read_domain(DomainRef(UUID, NAME))
    assert stats.pid is None and stats.not_found is not None and UUID in stats.not_found
    assert stats.vcpus == () and not stats.serves("vcpu")


def test_an_unreadable_file_loses_only_its_value(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, Qemu(500, threads=VCPUS_TCG))
    group = tmp_path / "cgroup/unified/machine/qemu-1-hc-lab-a1.libvirt-qemu"
    write(group / "cpu.stat", "usage_usec 12\nuser_usec junk\nsystem_usec 3\n")
    schedstat = proc / "500/task/22631/schedstat"
    schedstat.unlink()
    schedstat.mkdir()  # reading it fails with EISDIR, as an unreadable file would (even as root)

    stats = reader(tmp_path, proc).read_domain(DomainRef(UUID, NAME))

    assert stats.cpu_time_seconds is None and stats.cpu_user_seconds is None
    assert stats.vcpus[0].delay_seconds == 145.864162654
    assert stats.vcpus[1].delay_seconds is None
    assert stats.vcpus[1].time_seconds == (14100 + 350) / TICKS
    assert stats.rss_bytes == 63009 * PAGE
    assert [name for name, _ in stats.problems] == ["cpu", "vcpu.1.delay"]
    assert "Is a directory" in dict(stats.problems)["vcpu.1.delay"]
    assert not stats.serves("vcpu") and not stats.serves("cpu_total") and stats.serves("interface")


def test_without_schedstat_files_delay_is_zero_as_libvirt_reports_it(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, Qemu(550, threads=VCPUS_TCG[:1]))
    (proc / "550/task/22630/schedstat").unlink()  # CONFIG_SCHED_INFO off

    stats = reader(tmp_path, proc).read_domain(DomainRef(UUID, NAME))

    assert stats.vcpus[0].delay_seconds == 0.0 and stats.serves("vcpu")


@pytest.mark.parametrize(
    "line",
    [
        "wait_sum                                     :          1234.567890",  # >= 5.16
        "se.statistics.wait_sum                       :          1234.567890",  # before
    ],
)
def test_wait_is_the_sched_files_wait_sum_when_schedstats_are_on(tmp_path: Path, line: str) -> None:
    vcpu = Thread(601, "CPU 0/KVM", 1, 1, sched_wait=line)
    proc = make_proc(tmp_path, Qemu(600, threads=[vcpu]), schedstats="1")

    stats = reader(tmp_path, proc).read_domain(DomainRef(UUID, NAME))

    assert stats.vcpus[0].wait_seconds == pytest.approx(1.23456789)


def test_wait_is_not_read_while_schedstats_are_off(tmp_path: Path) -> None:
    vcpu = Thread(701, "CPU 0/KVM", 1, 1, sched_wait="wait_sum : 99.0")  # stale: not printed
    proc = make_proc(tmp_path, Qemu(700, threads=[vcpu]), schedstats="0")

    stats = reader(tmp_path, proc).read_domain(DomainRef(UUID, NAME))

    assert stats.vcpus[0].wait_seconds == 0.0


def test_tap_counters_are_swapped_to_the_guests_view(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, Qemu(800, threads=VCPUS_TCG[:1]))
    other = dict.fromkeys(TAP_COUNTERS, 7)
    dump = RecordedDump(
        datagram(
            link_message("lo", 1, other),
            link_message("vnet0", 6, TAP_COUNTERS),
            link_message("macvtap0", 9, TAP_COUNTERS),
        )
    )
    kernel = reader(tmp_path, proc, dump)
    taps = (Tap("vnet0"), Tap("macvtap0", swapped=False), Tap("vnet9"))

    stats = kernel.read_domain(DomainRef(UUID, NAME, taps))

    tap, macvtap = stats.interfaces
    # what the tap transmitted the guest received; drop as /proc/net/dev: + rx_missed_errors
    assert (tap.receive_bytes, tap.receive_packets) == (196364, 2127)
    assert (tap.transmit_bytes, tap.transmit_packets) == (189110, 2029)
    assert (tap.receive_errors, tap.receive_drop) == (2, 4)
    assert (tap.transmit_errors, tap.transmit_drop) == (1, 3 + 5)
    assert (macvtap.receive_bytes, macvtap.receive_drop) == (189110, 3 + 5)
    assert (macvtap.transmit_bytes, macvtap.transmit_drop) == (196364, 4)
    assert interface_problems(stats) == [("interface vnet9", "no such link in the dump")]
    assert dump.dumps == 1


def test_one_dump_serves_every_domain_and_its_failure_loses_only_the_taps(tmp_path: Path) -> None:
    second = "c1c1c1c1-0000-4000-8000-000000000003"
    proc = make_proc(
        tmp_path,
        Qemu(900, threads=VCPUS_TCG[:1]),
        Qemu(901, uuid=second, name="hc-lab-c1", threads=VCPUS_TCG[:1]),
    )
    dump = RecordedDump(datagram(link_message("vnet0", 6, TAP_COUNTERS)))
    kernel = reader(tmp_path, proc, dump)
    domains = [
        DomainRef(UUID, NAME, (Tap("vnet0"),)),
        DomainRef(second, "hc-lab-c1", (Tap("vnet0"),)),
    ]

    assert len(kernel.read_domains(domains)) == 2 and dump.dumps == 1

    dump.datagram = None
    stats = kernel.read_domains(domains)
    for domain in stats.values():
        assert domain.interfaces == () and not domain.serves("interface")
        assert interface_problems(domain) == [
            ("interface vnet0", "RTM_GETLINK dump: Connection refused")
        ]
        assert domain.rss_bytes == 63009 * PAGE


def test_rx_missed_errors_decoded_as_pyroute2_decodes_it() -> None:
    message = link_message("vnet0", 6, TAP_COUNTERS)
    decoded = ifinfmsg(message)
    decoded.decode()
    stats = decoded.get_attr("IFLA_STATS64")
    link = parse_link(message)
    assert link.link_stats["rx_missed_errors"] == stats["rx_missed_errors"] == 5
    assert link.link_stats["tx_dropped"] == stats["tx_dropped"] == 4


def test_only_the_named_links_are_decoded_and_a_name_is_read_as_parse_link_reads_it() -> None:
    messages = [
        link_message("br0", 3, {**TAP_COUNTERS, "rx_packets": 1}),
        link_message("vnet0", 6, TAP_COUNTERS),
        link_message("vnet1", 7, {**TAP_COUNTERS, "rx_packets": 2}),
    ]
    assert [link_name(m) for m in messages] == [parse_link(m).name for m in messages]
    assert link_name(messages[0][:31]) is None  # cut inside ifinfomsg: no attribute
    chosen = links_by_name(messages, {"vnet1", "vnet9"})
    assert list(chosen) == ["vnet1"]
    assert chosen["vnet1"] == parse_link(messages[2])
    assert list(links_by_name(messages)) == ["br0", "vnet0", "vnet1"]


def test_split_messages_stops_at_a_truncated_message() -> None:
    whole = datagram(link_message("vnet0", 6, TAP_COUNTERS), link_message("vnet1", 7, TAP_COUNTERS))
    kinds = [kind for kind, _ in split_messages(whole)]
    assert kinds == [RTM_NEWLINK, RTM_NEWLINK, NLMSG_DONE]
    cut = whole[: len(whole) - 30]
    assert [kind for kind, _ in split_messages(cut)] == [RTM_NEWLINK]


def test_dump_request_layout() -> None:
    request = dump_request(7)
    length, kind, flags, sequence, port = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, sequence, port) == (len(request), 18, 0x301, 7, 0)
    assert struct.unpack_from("=HHI", request, 32) == (8, 29, 0)  # IFLA_EXT_MASK 0: no VF info


def test_parsers_of_the_kernels_text() -> None:
    # a thread may name itself anything, parentheses and spaces included
    assert parse_stat_cpu_ticks(stat_line(5, "a) (b c)", 17, 4)) == 21
    assert cmdline_uuid(b"qemu\0-uuid\0A1A1-X\0") == "a1a1-x"
    assert cmdline_uuid(b"qemu\0-name\0x\0-uuid") is None
    assert parse_sched_wait("se.wait_sum : 2000.5\n") == pytest.approx(2.0005)
    assert parse_sched_wait("wait_start : 1.0\nwait_count : 3\n") is None
    assert domain_cgroup(HYBRID) == (2, "", "/machine/qemu-1-hc-lab-a1.libvirt-qemu")
    assert domain_cgroup(V1_SYSTEMD) == (1, "cpu,cpuacct", f"/{SCOPE}")
    assert domain_cgroup("0::/\n1:cpu,cpuacct:/\n") is None


@pytest.mark.parametrize("max_open_files", [0, 3, 1000], ids=["by-path", "budget-3", "kept"])
def test_the_same_values_with_files_kept_open_or_read_by_path(
    tmp_path: Path, max_open_files: int
) -> None:
    proc = make_proc(tmp_path, Qemu(22622, threads=VCPUS_TCG))
    write(
        tmp_path / "cgroup/unified/machine/qemu-1-hc-lab-a1.libvirt-qemu/cpu.stat",
        cpu_stat(9, 7, 2),
    )
    kernel = reader(tmp_path, proc, max_open_files=max_open_files)

    first = kernel.read_domain(DomainRef(UUID, NAME, (), 1))
    assert kernel.open_files == min(max_open_files, 6)  # stat, cpu.stat, 2 x (stat, schedstat)
    moved = [
        Thread(t.tid, t.comm, t.utime + 10, t.stime, t.run_ns, t.delay_ns + 5) for t in VCPUS_TCG
    ]
    make_proc(tmp_path, Qemu(22622, threads=moved, resident_pages=70000))  # in place
    second = kernel.read_domain(DomainRef(UUID, NAME, (), 1))

    assert first.problems == second.problems == ()
    assert [
        v.time_seconds - u.time_seconds for u, v in zip(first.vcpus, second.vcpus, strict=True)
    ] == pytest.approx([10 / TICKS] * 2)  # type: ignore[operator]
    assert second.rss_bytes == 70000 * PAGE
    kernel.close()
    assert kernel.open_files == 0


def test_vcpu_threads_are_listed_again_when_the_thread_count_changes(tmp_path: Path) -> None:
    proc = make_proc(tmp_path, Qemu(22622, threads=VCPUS_TCG))
    kernel = reader(tmp_path, proc)
    assert [v.index for v in kernel.read_domain(DomainRef(UUID, NAME, (), 1)).vcpus] == [0, 1]
    plugged = [*VCPUS_TCG, Thread(22640, "CPU 2/TCG", 5, 1)]
    make_proc(tmp_path, Qemu(22622, threads=plugged))  # one thread more: listed again
    # A known thread's name is not read again: its comm may go unreadable without effect
    comm = proc / "22622/task/22630/comm"
    comm.unlink()
    comm.mkdir()
    assert [v.index for v in kernel.read_domain(DomainRef(UUID, NAME, (), 1)).vcpus] == [0, 1, 2]
    # A restart (a new libvirt id) is a new process: found and listed anew
    restarted = kernel.read_domain(DomainRef(UUID, NAME, (), 2))
    assert [v.index for v in restarted.vcpus] == [1, 2]  # 22630's name unreadable now


def test_kept_files_follow_a_real_process_and_see_its_end(tmp_path: Path) -> None:
    """On this machine's /proc: values read again through the kept descriptors advance, and
    once the process ended they answer ESRCH, so the domain is not found and nothing stays
    open. A vCPU is a thread of the child that names itself as QEMU names one."""
    uuid = "e1e1e1e1-0000-4000-8000-00000000abcd"
    code = (
        "import threading, time\n"
        "def vcpu():\n"
        "    tid = threading.get_native_id()\n"
        "    with open(f'/proc/self/task/{tid}/comm', 'w') as comm:\n"
        "        comm.write('CPU 0/TCG')\n"
        "    while True:\n"
        "        until = time.monotonic() + 0.03\n"
        "        while time.monotonic() < until:\n"
        "            pass\n"
        "        time.sleep(0.03)\n"
        "threading.Thread(target=vcpu, daemon=True).start()\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, "-uuid", uuid])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "guest.pid").write_text(str(child.pid))
        kernel = QemuKernelReader(
            cgroup_root=str(tmp_path), pidfile_dir=str(run), links=RecordedDump(datagram()),
            max_open_files=100,
        )  # fmt: skip
        ref = DomainRef(uuid, "guest", (), 5)
        deadline = time.monotonic() + 10
        while not (first := kernel.read_domain(ref)).vcpus:
            assert time.monotonic() < deadline, "the child's vCPU thread never named itself"
            time.sleep(0.02)
        assert first.pid == child.pid and first.rss_bytes and first.rss_bytes > 0
        assert kernel.open_files == 3  # the process's stat, the vCPU's stat and schedstat
        while (later := kernel.read_domain(ref)).vcpus[0].time_seconds == first.vcpus[
            0
        ].time_seconds:
            assert time.monotonic() < deadline, "the vCPU's time never advanced"
            time.sleep(0.05)
        assert later.vcpus[0].time_seconds > first.vcpus[0].time_seconds  # type: ignore[operator]
    finally:
        child.kill()
        child.wait()
    gone = kernel.read_domain(ref)
    assert gone.not_found is not None and kernel.open_files == 0


def test_a_uuid_two_processes_claim_is_trusted_to_neither(tmp_path: Path) -> None:
    """Hostile: any local user can run a process with `-uuid <a tenant's VM>`. Without a
    pidfile, the scan finds two claims and trusts neither: the VM falls back to libvirt, and no
    other process's values are ever read as its own."""
    fake = Qemu(700, threads=[Thread(701, "CPU 0/TCG", 999_999, 0)])
    proc = make_proc(tmp_path, fake, Qemu(710, threads=VCPUS_TCG[:1]))
    kernel = reader(tmp_path, proc)

    stats = kernel.read_domain(DomainRef(UUID, NAME, (), 1))
    assert stats.not_found is not None and stats.pid is None and kernel.open_files == 0

    # libvirt's pidfile (root's directory) names the real one: that is trusted
    (tmp_path / "run" / f"{NAME}.pid").write_text("710")
    assert kernel.read_domain(DomainRef(UUID, NAME, (), 1)).pid == 710


def test_a_command_line_is_read_only_to_its_first_64_kib(tmp_path: Path) -> None:
    """Hostile: a process with megabytes of arguments costs the scan 64 KiB; a `-uuid` past
    that is not seen (QEMU's comes within its first ~2 KiB)."""
    proc = make_proc(tmp_path, Qemu(720, threads=VCPUS_TCG[:1]))
    padding = b"x" * (CMDLINE_LIMIT + 10)
    (proc / "720/cmdline").write_bytes(
        b"qemu-system-x86_64\0" + padding + b"\0-uuid\0" + UUID.encode() + b"\0"
    )

    assert reader(tmp_path, proc).read_domain(DomainRef(UUID, NAME, (), 1)).not_found is not None
