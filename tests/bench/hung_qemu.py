#!/usr/bin/env python3
"""Benchmark (not a test): hostcollector vs Debian's prometheus-libvirt-exporter, one QEMU stopped.

Runs both against the lab (tests/lab/up.sh), scrapes each from its own thread for a baseline,
then with one guest's QEMU `kill -STOP`ped, then after `kill -CONT`, and writes
bench-results/hung-qemu.json and .md: scrape latency, VMs present, freshness, up metric.

    .venv/bin/python tests/bench/hung_qemu.py [--phase-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.labkit import LAB_VMS, free_port, parse, pick, run_daemon  # noqa: E402

STUCK = "hc-lab-b1"
OUT = REPO / "bench-results"


def scrape(url: str, timeout: float) -> tuple[float, bytes | None]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return time.monotonic() - started, response.read()
    except OSError:
        return time.monotonic() - started, None


def hostcollector_view(body: bytes) -> dict[str, object]:
    """Freshness is measured at the scrape: now minus when each VM's values were read."""
    now = time.time()
    samples = parse(body.decode())
    infos = pick(samples, "hostcollector_vm_info")
    ages = {
        labels["vm_uuid"]: now - sampled
        for labels, sampled in pick(samples, "hostcollector_vm_sample_timestamp_seconds")
    }
    stuck_uuid = next(vm["uuid"] for vm in LAB_VMS if vm["name"] == STUCK)
    others = [age for uuid, age in ages.items() if uuid != stuck_uuid]
    return {
        "up": pick(samples, "hostcollector_source_up", source="libvirt")[0][1],
        "vms": len(infos),
        "max_age_others_s": max(others) if others else None,
        "age_stuck_s": ages.get(stuck_uuid),
    }


def kumina_view(body: bytes) -> dict[str, object]:
    """It reads libvirt during the scrape, so its values are as old as the scrape took."""
    samples = parse(body.decode())
    up = pick(samples, "libvirt_up")
    domains = {
        labels.get("domain")
        for labels, _ in pick(samples, "libvirt_domain_info_cpu_time_seconds_total")
    }
    return {"up": up[0][1] if up else None, "vms": len(domains), "max_age_others_s": 0.0}


def scraper(
    name: str, url: str, view, stop: threading.Event, phase: list[str], rows: list[dict]
) -> None:  # type: ignore[no-untyped-def]
    while not stop.is_set():
        current = phase[0]
        latency, body = scrape(url, timeout=120)
        row = {"exporter": name, "phase": current, "latency_s": latency, "ok": body is not None}
        if body is not None:
            row.update(view(body))
        rows.append(row)
        stop.wait(max(0.0, 2.0 - latency))


def summarise(rows: list[dict]) -> list[dict]:
    table = []
    for exporter in ("hostcollector", "prometheus-libvirt-exporter"):
        for phase in ("baseline", "one QEMU stopped", "recovered"):
            mine = [r for r in rows if r["exporter"] == exporter and r["phase"] == phase]
            if not mine:
                continue
            latencies = sorted(r["latency_s"] for r in mine)
            ok = [r for r in mine if r["ok"]]
            table.append(
                {
                    "exporter": exporter,
                    "phase": phase,
                    "scrapes": len(mine),
                    "answered": len(ok),
                    "latency_p50_s": statistics.median(latencies),
                    "latency_max_s": latencies[-1],
                    "vms_min": min((r["vms"] for r in ok), default=0),
                    "vms_max": max((r["vms"] for r in ok), default=0),
                    "up_0_scrapes": sum(1 for r in ok if r.get("up") == 0),
                    "max_age_other_vms_s": max(
                        (r.get("max_age_others_s") or r["latency_s"] for r in ok), default=None
                    ),
                    "max_age_stuck_vm_s": max(
                        (r.get("age_stuck_s") or 0 for r in ok), default=None
                    ),
                }
            )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--phase-seconds", type=float, default=60)
    args = parser.parse_args()
    exporter = shutil.which("prometheus-libvirt-exporter")
    if exporter is None:
        print("apt-get install prometheus-libvirt-exporter first", file=sys.stderr)
        return 1
    port = free_port()
    kumina = subprocess.Popen(
        [exporter, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows: list[dict] = []
    phase = ["baseline"]
    stop = threading.Event()
    pid = int(Path(f"/run/libvirt/qemu/{STUCK}.pid").read_text())
    with tempfile.TemporaryDirectory() as tmp, run_daemon(Path(tmp), interval=5.0) as daemon:
        time.sleep(2)
        threads = [
            threading.Thread(
                target=scraper,
                args=(
                    "hostcollector",
                    daemon.url + "/metrics",
                    hostcollector_view,
                    stop,
                    phase,
                    rows,
                ),
            ),
            threading.Thread(
                target=scraper,
                args=(
                    "prometheus-libvirt-exporter",
                    f"http://127.0.0.1:{port}/metrics",
                    kumina_view,
                    stop,
                    phase,
                    rows,
                ),
            ),
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(args.phase_seconds / 2)
            phase[0] = "one QEMU stopped"
            os.kill(pid, signal.SIGSTOP)
            time.sleep(args.phase_seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        phase[0] = "recovered"
        time.sleep(args.phase_seconds)
        stop.set()
        for thread in threads:
            thread.join(130)
    kumina.terminate()
    kumina.wait(10)

    table = summarise(rows)
    OUT.mkdir(exist_ok=True)
    (OUT / "hung-qemu.json").write_text(json.dumps({"summary": table, "scrapes": rows}, indent=2))
    header = (
        "| exporter | phase | scrapes | answered | p50 s | max s | VMs min-max | up=0 scrapes "
        "| max age of other VMs' values s | max age of the stopped VM's values s |"
    )
    lines = [header, "|" + " --- |" * 10]
    for r in table:
        lines.append(
            f"| {r['exporter']} | {r['phase']} | {r['scrapes']} | {r['answered']} | {r['latency_p50_s']:.3f} | "
            f"{r['latency_max_s']:.3f} | {r['vms_min']}-{r['vms_max']} | {r['up_0_scrapes']} | "
            f"{r['max_age_other_vms_s']:.1f} | {r['max_age_stuck_vm_s']:.1f} |"
        )
    report = "\n".join(lines) + "\n"
    (OUT / "hung-qemu.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
