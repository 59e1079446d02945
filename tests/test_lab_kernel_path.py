"""The kernel path on the real lab (sources.libvirt.kernel_path, on by default): libvirtd
stopped with kill -STOP for 60 s, every running VM's CPU, vCPU and NIC series keep advancing
every poll while block and balloon show their age; after kill -CONT all is back without a
restart. And what a poll costs the daemon with and without the kernel path, measured alike.

A UDP broadcast on the lab bridge every 0.2 s makes every tap's counters move (the bridge
floods it to each port: host-side transmit, the guest's receive), so "advancing" is a fact to
check, not luck of guest traffic.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.labkit import Daemon, Samples, one, pick, require_lab, run_daemon
from tests.test_lab_faults import libvirtd_pids

pytestmark = [pytest.mark.lab, pytest.mark.slow]

INTERVAL = 2.0
STOPPED_SECONDS = 60.0
BRIDGE_ADDRESS, BRIDGE_BROADCAST = "10.99.0.1", "10.99.0.255"


@pytest.fixture
def broadcasts() -> Iterator[None]:
    stop = threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind((BRIDGE_ADDRESS, 0))
            while not stop.wait(0.2):
                sock.sendto(b"hostcollector lab", (BRIDGE_BROADCAST, 9))

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


def running_vms(samples: Samples) -> list[str]:
    return [
        labels["vm_uuid"] for labels, value in pick(samples, "hostcollector_vm_state") if value == 1
    ]


def kernel_series(samples: Samples, uuid: str) -> dict[str, float]:
    """The VM's kernel-read values: CPU time, each vCPU's time, each NIC's received packets."""
    found = {"cpu": one(samples, "hostcollector_vm_cpu_time_seconds_total", vm_uuid=uuid)}
    for labels, value in pick(samples, "hostcollector_vm_vcpu_time_seconds_total", vm_uuid=uuid):
        found[f"vcpu{labels['vcpu']}"] = value
    for labels, value in pick(
        samples, "hostcollector_vm_network_receive_packets_total", vm_uuid=uuid
    ):
        found[f"nic {labels['device']}"] = value
    return found


def libvirt_series(samples: Samples, uuid: str) -> dict[str, float]:
    found = {}
    for labels, value in pick(samples, "hostcollector_vm_block_read_requests_total", vm_uuid=uuid):
        found[f"block {labels['device']}"] = value
    found["balloon"] = one(samples, "hostcollector_vm_memory_current_bytes", vm_uuid=uuid)
    return found


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    require_lab()
    with run_daemon(
        tmp_path, interval=INTERVAL, sources_extra={"max_sample_age_seconds": 180.0}
    ) as running:
        running.wait_polls(2)
        yield running
    log = running.log()
    assert "Traceback" not in log, log


def test_a_stopped_libvirtd_leaves_cpu_vcpu_and_nic_series_advancing(
    daemon: Daemon, broadcasts: None
) -> None:
    samples = daemon.wait_polls(2)
    vms = running_vms(samples)
    assert len(vms) >= 2, vms
    for uuid in vms:
        assert one(samples, "hostcollector_vm_stats_path", vm_uuid=uuid, path="kernel") == 1
    previous = {uuid: kernel_series(samples, uuid) for uuid in vms}
    kept = {uuid: libvirt_series(samples, uuid) for uuid in vms}
    (pid,) = libvirtd_pids()
    polls = ages = 0.0
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < STOPPED_SECONDS:
            samples = daemon.wait_polls(1)
            polls += 1
            assert one(samples, "hostcollector_source_up", source="libvirt") == 0
            for uuid in vms:
                now = kernel_series(samples, uuid)
                assert now.keys() == previous[uuid].keys(), uuid
                still = [name for name in now if now[name] <= previous[uuid][name]]
                assert not still, f"{uuid}: {still} did not advance in poll {polls:.0f}"
                previous[uuid] = now
                assert libvirt_series(samples, uuid) == kept[uuid], uuid
                assert one(samples, "hostcollector_vm_stats_path", vm_uuid=uuid, path="kernel")
            ages = min(
                one(samples, "hostcollector_vm_sample_age_seconds", vm_uuid=uuid) for uuid in vms
            )
        assert ages > STOPPED_SECONDS - 3 * INTERVAL, ages  # block/balloon: their age shows
        assert polls >= STOPPED_SECONDS / INTERVAL / 2, polls
    finally:
        os.kill(pid, signal.SIGCONT)
    # back without a restart: libvirt answers again, the values' age falls to one poll
    for _ in range(15):
        samples = daemon.wait_polls(1)
        if one(samples, "hostcollector_source_up", source="libvirt") == 1 and all(
            one(samples, "hostcollector_vm_sample_age_seconds", vm_uuid=uuid) < 2 * INTERVAL + 1
            for uuid in vms
        ):
            break
    else:
        raise AssertionError("libvirt did not come back within 15 polls of kill -CONT")
    assert daemon.process.poll() is None
    for uuid in vms:
        assert one(samples, "hostcollector_vm_stats_path", vm_uuid=uuid, path="kernel") == 1
    assert not pick(samples, "hostcollector_libvirt_kernel_fallbacks_total")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cost(tmp: Path, kernel_path: bool, polls: int) -> tuple[float, float]:
    """(the daemon's CPU, libvirtd's CPU) per poll, over `polls` polls, scraped only at both
    ends (a scrape costs CPU too)."""
    with run_daemon(tmp, interval=INTERVAL, sources_extra={"kernel_path": kernel_path}) as running:
        running.wait_polls(2)
        (libvirtd,) = libvirtd_pids()
        start = one(running.scrape(), "hostcollector_source_polls_total", source="libvirt")
        ours, theirs = _cpu_seconds(running.process.pid), _cpu_seconds(libvirtd)
        time.sleep(polls * INTERVAL)
        end = one(running.scrape(), "hostcollector_source_polls_total", source="libvirt")
        ours, theirs = _cpu_seconds(running.process.pid) - ours, _cpu_seconds(libvirtd) - theirs
    return ours / (end - start), theirs / (end - start)


def test_cost_per_poll_with_and_without_the_kernel_path(tmp_path: Path) -> None:
    """Prints both, alternating, same method; asserts only that the kernel path costs libvirtd
    less (it asks it for three groups fewer)."""
    require_lab()
    rounds: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for index in range(4):
        kernel_path = index % 2 == 0
        (tmp_path / str(index)).mkdir()
        rounds[kernel_path].append(_cost(tmp_path / str(index), kernel_path, 15))
    for kernel_path, found in rounds.items():
        print(
            f"\nkernel_path={kernel_path}: per poll of {len(found)} rounds: daemon CPU "
            + ", ".join(f"{ours * 1e3:.1f}" for ours, _ in found)
            + " ms; libvirtd CPU "
            + ", ".join(f"{theirs * 1e3:.1f}" for _, theirs in found)
            + " ms"
        )
    with_kernel = sum(theirs for _, theirs in rounds[True])
    without = sum(theirs for _, theirs in rounds[False])
    assert with_kernel < without
