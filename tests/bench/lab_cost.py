#!/usr/bin/env python3
"""Benchmark (not a test): what hostcollector costs on the lab, per poll and per scrape.

Runs the daemon against the running lab (tests/lab/up.sh) for --polls polls, then reports its
own CPU and libvirtd's CPU per poll (from /proc), poll wall time, series exported and per VM,
RSS, and /metrics latency over --scrapes sequential scrapes. Writes bench-results/lab-cost.{json,md}.

    .venv/bin/python tests/bench/lab_cost.py [--polls 20] [--interval 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.labkit import one, pick, run_daemon  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
OUT = REPO / "bench-results"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def libvirtd_pid() -> int:
    out = subprocess.run(
        ["ps", "-C", "libvirtd", "-o", "pid=,stat="], capture_output=True, text=True
    ).stdout
    return next(int(line.split()[0]) for line in out.splitlines() if "Z" not in line.split()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--scrapes", type=int, default=500)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_daemon(Path(tmp), interval=args.interval) as daemon,
    ):
        daemon.wait_polls(2)  # warm: connections open, metadata cached
        pid, lpid = daemon.process.pid, libvirtd_pid()
        own0, lv0 = cpu_seconds(pid), cpu_seconds(lpid)
        durations = []
        for _ in range(args.polls):
            samples = daemon.wait_polls(1)
            durations.append(
                one(samples, "hostcollector_source_last_poll_duration_seconds", source="libvirt")
            )
        own, lv = cpu_seconds(pid) - own0, cpu_seconds(lpid) - lv0
        vms = len(pick(samples, "hostcollector_vm_info"))
        series = int(one(samples, "hostcollector_exposition_series"))
        vm_series = sum(1 for (name, labels) in samples if any(k == "vm_uuid" for k, _ in labels))
        latencies = []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            daemon.get()
            latencies.append(time.perf_counter() - started)
        latencies.sort()
        report = {
            "vms": vms,
            "polls": args.polls,
            "interval_s": args.interval,
            "own_cpu_per_poll_ms": 1000 * own / args.polls,
            "own_cpu_per_vm_per_poll_ms": 1000 * own / args.polls / vms,
            "libvirtd_cpu_per_poll_ms": 1000 * lv / args.polls,
            "poll_wall_p50_ms": 1000 * statistics.median(durations),
            "poll_wall_max_ms": 1000 * max(durations),
            "series": series,
            "series_per_vm": vm_series / vms,
            "rss_mb": rss_bytes(pid) / 2**20,
            "scrape_p50_ms": 1000 * latencies[len(latencies) // 2],
            "scrape_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        }
    OUT.mkdir(exist_ok=True)
    (OUT / "lab-cost.json").write_text(json.dumps(report, indent=2))
    lines = ["| measure | value |", "| --- | --- |"] + [
        f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in report.items()
    ]
    (OUT / "lab-cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(
        f"note: CPU from /proc utime+stime, 1/{TICK} s resolution; includes the daemon's idle timers"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
