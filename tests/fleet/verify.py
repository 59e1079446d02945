#!/usr/bin/env python3
"""Check the fleet test ground end to end and print the figures (as root, lab up).

    .venv/bin/python tests/fleet/verify.py [--cold] [--keep]

--cold removes the cached rootfs first (times a full build); --keep leaves the fleet up.
Exits 1 with the failed checks listed. Not a pytest module: it builds, boots and tears down.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fleetkit import FLEET_CACHE, Fleet

LAB_DOMAINS = {"hc-lab-a1", "hc-lab-b1", "hc-lab-c1", "hc-lab-orphan"}
HIERARCHIES = ["systemd", "memory", "cpu", "cpuacct", "pids", "devices", "blkio"]
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def timed(label: str, fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    took = time.monotonic() - start
    print(f"     {label}: {took:.1f} s")
    return took


def machine_state(fleet: Fleet) -> tuple[list[str], bool, list[str], list[str]]:
    """What the fleet may leave on the machine: overlays, bridge, nspawn, cgroups."""
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(fleet.fleet_dir))
    ]
    bridge = subprocess.run(["ip", "link", "show", "hcfleet0"], capture_output=True).returncode == 0
    nspawn = [
        p.name
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _comm(p) == "systemd-nspawn" and not _zombie(p)
    ]
    cgroups = [str(p) for p in Path("/sys/fs/cgroup").glob("*/hostcollector-fleet")]
    return mounts, bridge, nspawn, cgroups


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


def _zombie(proc: Path) -> bool:
    """An exited nspawn that this machine's PID 1 has not reaped yet (it does so late)."""
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def host_memory(fleet: Fleet, name: str) -> tuple[int, int, int]:
    """usage_in_bytes, total_rss, total_cache of the host's memory cgroup on the machine."""
    cg = Path("/sys/fs/cgroup/memory") / fleet.machine_cgroup(name, "memory").lstrip("/")
    # The leader sits in <host>/init.scope; the host's whole tree is its parent.
    host_cg = cg.parent if cg.name == "init.scope" else cg
    usage = int((host_cg / "memory.usage_in_bytes").read_text())
    stat = dict(line.split() for line in (host_cg / "memory.stat").read_text().splitlines())
    return usage, int(stat["total_rss"]), int(stat["total_cache"])


def check_limits(fleet: Fleet, host: str) -> None:
    unit = "fleet-verify-limits.service"
    fleet.ssh(
        host,
        f"systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null; true",
        sudo=True,
    )
    fleet.ssh(
        host,
        f"systemd-run -q --unit={unit} -p MemoryMax=50M -p CPUQuota=20% "
        "sh -c 'while :; do :; done'",
        sudo=True,
    )
    try:
        limit = fleet.read_cgroup(host, unit, "memory.limit_in_bytes")
        quota = fleet.read_cgroup(host, unit, "cpu.cfs_quota_us")
        period = fleet.read_cgroup(host, unit, "cpu.cfs_period_us")
        check(limit == str(50 << 20), f"{host}: memory.limit_in_bytes {limit} == 50M")
        check(
            (quota, period) == ("20000", "100000"),
            f"{host}: cfs quota/period {quota}/{period} == 20%",
        )
        # utime + stime of the loop (clock ticks, 100 Hz) over 3 s: the quota measured, not shown.
        ticks = f"awk '{{print $14 + $15}}' /proc/$(systemctl show -P MainPID {unit})/stat"
        time.sleep(1)
        before = int(fleet.ssh(host, ticks).stdout)
        t0 = time.monotonic()
        time.sleep(3)
        used = int(fleet.ssh(host, ticks).stdout) - before
        share = used / 100 / (time.monotonic() - t0)
        check(
            0.12 < share < 0.26, f"{host}: a busy loop under CPUQuota=20% used {share:.0%} of a CPU"
        )
    finally:
        fleet.ssh(host, f"systemctl stop {unit}", sudo=True, check=False)
    alloc = "python3 -c 'b=bytearray(200<<20)'"
    killed = fleet.ssh(
        host, f"systemd-run --wait -p MemoryMax=50M -p CPUQuota=20% {alloc}", sudo=True, check=False
    )
    check(
        # cgroup v1 has no memory.events for systemd to tell an OOM kill: it reports SIGKILL.
        killed.returncode != 0 and "status=KILL" in killed.stdout + killed.stderr,
        f"{host}: 200 MB under MemoryMax=50M killed: {' / '.join((killed.stdout + killed.stderr).split(chr(10))[1:3])}",
    )
    spared = fleet.ssh(
        host, f"systemd-run --wait -p MemoryMax=300M {alloc}", sudo=True, check=False
    )
    check(spared.returncode == 0, f"{host}: the same allocation under MemoryMax=300M succeeds")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="rebuild the cached rootfs first")
    parser.add_argument("--keep", action="store_true", help="leave the fleet up")
    args = parser.parse_args()
    fleet = Fleet()

    fleet.down()
    if args.cold:
        for base in FLEET_CACHE.glob("base-*"):
            shutil.rmtree(base)
        timed(
            "cold rootfs build",
            lambda: subprocess.run(
                [str(Path(__file__).parent / "rootfs.sh")], check=True, capture_output=True
            ),
        )
    base = next(FLEET_CACHE.glob("base-*"))
    du_base = subprocess.run(["du", "-sm", str(base)], capture_output=True, text=True)
    size = du_base.stdout.split()[0]
    print(f"     rootfs {base}: {size} MB")

    timed("boot 3 hosts to SSH + running (up.sh, rootfs cached)", lambda: fleet.up(3))
    hosts = [h.name for h in fleet.hosts]
    check(hosts == ["hc-fleet-1", "hc-fleet-2", "hc-fleet-3"], f"hosts {hosts}")
    for host in hosts:
        state = fleet.ssh(host, "systemctl is-system-running", check=False).stdout.strip()
        check(state == "running", f"{host}: systemctl is-system-running = {state}")
        check(fleet.ssh(host, "id -u", sudo=True).stdout.strip() == "0", f"{host}: deploy has sudo")
    leaders = {h: fleet.leader_pid(h) for h in hosts}
    timed("up.sh again (idempotent)", lambda: fleet.up(3))
    check(
        {h: fleet.leader_pid(h) for h in hosts} == leaders,
        "up.sh on a running fleet keeps the hosts",
    )

    for tree in HIERARCHIES:
        paths = {fleet.machine_cgroup(h, tree).split("/")[2] for h in hosts}
        check(len(paths) == 3, f"3 hosts in 3 {tree} cgroups on the machine: {sorted(paths)}")

    host = hosts[0]
    ro = fleet.ssh(host, "virsh -r -c qemu:///system list --name", sudo=True, check=False)
    seen = set(ro.stdout.split())
    check(seen >= LAB_DOMAINS, f"{host}: virsh -r sees the lab domains {sorted(seen)}")
    rw = fleet.ssh(host, "virsh -c qemu:///system list --name", sudo=True, check=False)
    check(
        rw.returncode != 0,
        f"{host}: read-write virsh fails ({rw.stderr.strip().splitlines()[-1:]})",
    )
    listing = fleet.ssh(host, "ls /run/libvirt", sudo=True).stdout.split()
    check(listing == ["libvirt-sock-ro"], f"{host}: /run/libvirt holds only {listing}")

    check_limits(fleet, hosts[1])

    time.sleep(5)  # let the hosts settle after the checks
    for name in hosts:
        usage, rss, cache = host_memory(fleet, name)
        mb = f"usage {usage >> 20} MB (rss {rss >> 20} MB, cache {cache >> 20} MB)"
        print(f"     {name} idle memory cgroup: {mb}")
    du = subprocess.run(
        ["du", "-sm", *(str(fleet.fleet_dir / h / "upper") for h in hosts)],
        capture_output=True,
        text=True,
    )
    print(
        "     upper layers (MB): " + ", ".join(line.split()[0] for line in du.stdout.splitlines())
    )

    if not args.keep:
        timed("down.sh", fleet.down)
        mounts, bridge, nspawn, cgroups = machine_state(fleet)
        check(not mounts, f"down.sh left no mounts {mounts}")
        check(not bridge, "down.sh removed the bridge")
        check(not nspawn, f"down.sh left no systemd-nspawn {nspawn}")
        check(not cgroups, f"down.sh left no cgroups {cgroups}")
        check(not fleet.fleet_dir.exists(), f"down.sh removed {fleet.fleet_dir}")
        check(base.is_dir(), "the cached rootfs stays")

    if failures:
        print(f"{len(failures)} check(s) failed:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
