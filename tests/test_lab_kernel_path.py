"""The kernel path on the real lab (sources.libvirt.kernel_path, on by default): libvirtd
stopped with kill -STOP for 60 s, every running VM's CPU, vCPU and NIC series keep advancing
every poll while block and balloon show their age; after kill -CONT all is back without a
restart. What a poll costs with and without the kernel path is measured by `make bench-scale`
(its defaults and libvirt_only variants), not here.

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
VCPU_POLLS = 3
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
    moved: dict[tuple[str, str], float] = {}  # the poll each series last advanced in
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
                for name in now:
                    if now[name] > previous[uuid][name]:
                        moved[uuid, name] = polls
                # A thread's time is counted in USER_HZ ticks (10 ms): an idle vCPU of a TCG
                # guest may run less than that in one 2 s interval, so each vCPU must advance
                # within VCPU_POLLS polls; the VM's CPU time and its NICs every poll.
                late = [
                    name
                    for name in now
                    if polls - moved.get((uuid, name), 0) >= (VCPU_POLLS if "vcpu" in name else 1)
                ]
                assert not late, f"{uuid}: {late} did not advance by poll {polls:.0f}"
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
