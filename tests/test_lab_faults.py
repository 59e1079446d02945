"""Faults on the real lab: a hung QEMU, libvirtd killed and restarted, domain churn.

Each test runs its own daemon with short intervals; checks count polls, not seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.labkit import (
    LAB_DIR,
    LAB_VMS,
    Daemon,
    Samples,
    one,
    pick,
    qemu_pid,
    require_lab,
    run_daemon,
    sample_times,
    scratch_vm,
    virsh,
    wait_until,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

UUIDS = {vm["name"]: vm["uuid"] for vm in LAB_VMS}
STUCK = "hc-lab-b1"


def libvirtd_pids() -> list[int]:
    out = subprocess.run(
        ["ps", "-C", "libvirtd", "-o", "pid=,stat="], capture_output=True, text=True
    )
    return [int(line.split()[0]) for line in out.stdout.splitlines() if "Z" not in line.split()[1]]


def assert_no_duplicate_series(daemon: Daemon) -> None:
    lines = [
        line for line in daemon.get().decode().splitlines() if line and not line.startswith("#")
    ]
    keys = [line.rsplit(" ", 1)[0] for line in lines]
    assert len(keys) == len(set(keys)), "duplicate series"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    require_lab()
    with run_daemon(
        tmp_path,
        interval=2.0,
        # the default 40 s quarantine: a VM whose monitor is free again must not wait for it
        sources_extra={"max_sample_age_seconds": 60.0},
    ) as running:
        running.wait_polls(2)
        yield running
    log = running.log()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


@pytest.fixture
def stopped_qemu() -> Iterator[int]:
    pid = qemu_pid(STUCK)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_stopped_qemu_is_quarantined_and_blocks_nobody(daemon: Daemon) -> None:
    others = [uuid for name, uuid in UUIDS.items() if name != STUCK]
    stuck = UUIDS[STUCK]
    previous = sample_times(daemon.scrape())
    pid = qemu_pid(STUCK)
    os.kill(pid, signal.SIGSTOP)
    slowest = 0.0
    ages = []
    try:
        for _ in range(6):
            samples = daemon.wait_polls(1)
            started = time.monotonic()
            daemon.get(timeout=5)
            slowest = max(slowest, time.monotonic() - started)
            times = sample_times(samples)
            for uuid in others:  # every other VM is fresh at every poll, the first one included
                assert times[uuid] > previous[uuid], f"{uuid} did not advance"
            previous = times
            ages.append(one(samples, "hostcollector_vm_sample_age_seconds", vm_uuid=stuck))
        assert one(samples, "hostcollector_vm_quarantined", vm_uuid=stuck) == 1
        assert one(samples, "hostcollector_libvirt_quarantined_vms") == 1
        assert ages[-1] > ages[2] > 0, ages  # its last good values, ever older
        for uuid in others:
            assert one(samples, "hostcollector_vm_quarantined", vm_uuid=uuid) == 0
        assert one(samples, "hostcollector_source_up", source="libvirt") == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    # released by a probe as soon as its monitor is free, well before the 40 s expiry, and
    # without a restart
    for _ in range(5):
        samples = daemon.wait_polls(1)
        if one(samples, "hostcollector_vm_quarantined", vm_uuid=stuck) == 0:
            break
    else:
        raise AssertionError("the VM did not leave quarantine within 5 polls of kill -CONT")
    samples = daemon.wait_polls(2)
    assert (
        one(samples, "hostcollector_vm_sample_age_seconds", vm_uuid=stuck) < 2 * daemon.interval + 1
    )
    assert daemon.process.poll() is None
    assert_no_duplicate_series(daemon)
    assert slowest < 1.0, f"a scrape took {slowest:.3f} s while a QEMU was stopped"
    log = daemon.log()
    assert "hc-lab-b1 (b1b1b1b1-0000-4000-8000-000000000002) quarantined" in log
    assert "answers again; out of quarantine" in log


def libvirt_up_becomes(daemon: Daemon, up: int, timeout: float, what: str) -> Samples:
    """The first scrape whose hostcollector_source_up{source="libvirt"} is `up`."""
    return wait_until(
        lambda: (
            (s := daemon.scrape())
            and one(s, "hostcollector_source_up", source="libvirt") == up
            and s
        ),
        timeout,
        what,
    )


def test_libvirtd_killed_and_restarted(daemon: Daemon) -> None:
    before = daemon.scrape()
    assert one(before, "hostcollector_libvirt_connects_total") == 1
    for pid in libvirtd_pids():
        os.kill(pid, signal.SIGKILL)
    try:
        samples = libvirt_up_becomes(daemon, 0, 30, "the libvirt source to go down")
        # still serving: the VMs' last good values, with their age
        assert len(pick(samples, "hostcollector_vm_info")) >= len(LAB_VMS)
        daemon.wait_polls(2)
    finally:
        subprocess.run([str(LAB_DIR / "start.sh")], check=True, timeout=120)
    samples = libvirt_up_becomes(daemon, 1, 120, "the libvirt source to come back")
    assert one(samples, "hostcollector_libvirt_connects_total") == 2
    resumed = sample_times(daemon.wait_polls(2))
    for uuid in UUIDS.values():
        assert resumed[uuid] > sample_times(before)[uuid]
    later = daemon.wait_polls(2)
    assert one(later, "hostcollector_vm_cpu_time_seconds_total", vm_uuid=UUIDS["hc-lab-a1"]) > one(
        before, "hostcollector_vm_cpu_time_seconds_total", vm_uuid=UUIDS["hc-lab-a1"]
    )
    assert daemon.process.poll() is None
    assert_no_duplicate_series(daemon)
    log = daemon.log()
    assert log.count("libvirt: source is down") == 1, log
    assert "libvirt: source is up again" in log


def test_domains_churn_without_errors_or_leftovers(daemon: Daemon) -> None:
    created: list[str] = []
    errors: list[BaseException] = []

    def churn(worker: int) -> None:
        try:
            for i in range(3):
                uuid = f"e0e0e0e0-0000-4000-8000-0000000{worker:02d}{i:03d}"
                with scratch_vm(
                    f"hc-scratch-churn-{worker}-{i}", uuid, "nova11", project_id=f"t{i}"
                ):
                    created.append(uuid)
                    time.sleep(0.3 * i)
        except BaseException as exc:  # surface in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=churn, args=(w,)) for w in range(3)]
    for thread in workers:
        thread.start()
    # meanwhile, a persistent domain is defined, renamed and undefined
    uuid = "e0e0e0e0-0000-4000-8000-0000000009ff"
    xml = Path("/tmp/hc-scratch-rename.xml")
    from tests.labkit import domxml

    xml.write_text(
        domxml.domain_xml(
            "hc-scratch-rename",
            uuid,
            tenant_style="none",
            ip=None,
            mac=domxml.scratch_mac("rename"),
            disk_path="/nonexistent.qcow2",
            paused_noos=True,
        )
    )
    virsh("define", str(xml))
    daemon.wait_polls(1)
    virsh("domrename", "hc-scratch-rename", "hc-scratch-renamed")
    names = {
        labels["name"]
        for labels, _ in pick(daemon.wait_polls(2), "hostcollector_vm_info", vm_uuid=uuid)
    }
    assert names == {"hc-scratch-renamed"}
    virsh("undefine", "hc-scratch-renamed")
    for thread in workers:
        thread.join(120)
    assert not errors, errors
    assert len(created) == 9

    samples = daemon.wait_polls(2)
    leftovers = [key for key in samples if any(v.startswith("e0e0e0e0") for _, v in key[1])]
    assert leftovers == []
    assert one(samples, "hostcollector_source_up", source="libvirt") == 1
    assert one(samples, "hostcollector_vms") == len(LAB_VMS)
    assert_no_duplicate_series(daemon)
    log = daemon.log()
    assert " WARNING " not in log, log
