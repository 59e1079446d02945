#!/usr/bin/env python3
"""Benchmark (not a test): hostcollector and Debian's prometheus-libvirt-exporter side by side
on N real domains of the lab's libvirtd (paused QEMU processes with no OS: real monitors, cheap).

Per collection, for each: its own CPU, libvirtd's CPU, wall time, series exported (and per VM),
RSS; then /metrics latency p50/p99 with 1 and 10 concurrent scrapers. hostcollector collects on
its interval whatever the scrapers do; the peer collects on every scrape. Writes
bench-results/real-scale.{json,md}. Needs the lab (tests/lab/up.sh) and
prometheus-libvirt-exporter (make bench-scale installs it).

    .venv/bin/python tests/bench/real_scale.py [--domains 200] [--collections 6]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.lab_cost import cpu_seconds, libvirtd_pid, rss_bytes  # noqa: E402
from tests.bench.scrape import parse_wrk, wrk_command  # noqa: E402
from tests.labkit import domxml, free_port, one, parse, pick, run_daemon, virsh  # noqa: E402

OUT = REPO / "bench-results"
PREFIX = "hc-scratch-scale-"


def start_domains(count: int) -> list[str]:
    import libvirt

    conn = libvirt.open("qemu:///system")

    def start(i: int) -> str:
        name = f"{PREFIX}{i:04d}"
        disk = f"{domxml.DISK_DIR}/{name}.qcow2"
        domxml.make_disk(disk, 16)
        xml = domxml.domain_xml(
            name,
            f"e0e0e0e0-0000-4000-8000-00000005{i:04d}",
            tenant_style="nova11",
            ip=None,
            mac=domxml.scratch_mac(name),
            disk_path=disk,
            paused_noos=True,
            project_id=(
                "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c" if i % 2 else "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1"
            ),
            project_name="scale",
            user_id="0" * 32,
            user_name="scale",
            flavor="m1.tiny",
            display_name=name,
        )
        conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
        return name

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(start, range(count)))


def stop_domains(names: list[str]) -> None:
    def stop(name: str) -> None:
        virsh("destroy", name, check=False)
        Path(f"{domxml.DISK_DIR}/{name}.qcow2").unlink(missing_ok=True)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(stop, names))


def scrape_latency(url: str, seconds: int = 10) -> dict[str, float]:
    found = {}
    for workers in (1, 10):
        out = subprocess.run(
            wrk_command(url, workers, seconds),
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
        found[f"scrape_{workers}_p50_ms"], found[f"scrape_{workers}_p99_ms"] = parse_wrk(out)
    return found


def measure_hostcollector(collections: int, **libvirt_options: Any) -> dict[str, Any]:
    extra = {"timeout_seconds": 8.0, **libvirt_options}
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_daemon(Path(tmp), interval=10.0, sources_extra=extra) as daemon,
    ):
        daemon.wait_polls(2)  # warm: connections open, metadata of every domain cached
        pid, lpid = daemon.process.pid, libvirtd_pid()
        own0, lv0 = cpu_seconds(pid), cpu_seconds(lpid)
        walls = []
        for _ in range(collections):
            samples = daemon.wait_polls(1)
            walls.append(
                one(samples, "hostcollector_source_last_poll_duration_seconds", source="libvirt")
            )
        own, lv = (cpu_seconds(pid) - own0) / collections, (cpu_seconds(lpid) - lv0) / collections
        vms = len(pick(samples, "hostcollector_vm_info"))
        vm_series = sum(1 for _, labels in samples if any(k == "vm_uuid" for k, _v in labels))
        result = {
            "vms": vms,
            "own_cpu_per_collection_ms": own * 1000,
            "libvirtd_cpu_per_collection_ms": lv * 1000,
            "wall_per_collection_ms": 1000 * sum(walls) / len(walls),
            "series": int(one(samples, "hostcollector_exposition_series")),
            "series_per_vm": vm_series / vms,
            "rss_mb": rss_bytes(pid) / 2**20,
        }
        result.update(scrape_latency(daemon.url + "/metrics"))
        cpu_during_scrapes = cpu_seconds(pid) - own0
        result["note"] = f"own CPU incl. scrapes over the run: {cpu_during_scrapes:.2f} s"
    return result


def measure_peer(collections: int) -> dict[str, Any]:
    exporter = shutil.which("prometheus-libvirt-exporter")
    if exporter is None:
        raise SystemExit(
            "apt-get install prometheus-libvirt-exporter first (make bench-scale does)"
        )
    port = free_port()
    proc = subprocess.Popen(
        [exporter, f"--web.listen-address=127.0.0.1:{port}", "--libvirt.export-nova-metadata"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        import urllib.request

        for _ in range(50):
            try:
                urllib.request.urlopen(url, timeout=120).read()
                break
            except OSError:
                time.sleep(0.2)
        lpid = libvirtd_pid()
        own0, lv0 = cpu_seconds(proc.pid), cpu_seconds(lpid)
        walls = []
        body = b""
        for _ in range(collections):  # each scrape is one collection
            started = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=300).read()
            walls.append(time.perf_counter() - started)
        own, lv = (
            (cpu_seconds(proc.pid) - own0) / collections,
            (cpu_seconds(lpid) - lv0) / collections,
        )
        samples = parse(body.decode())
        vms = len({dict(labels)["domain"] for name, labels in samples if "domain" in dict(labels)})
        vm_series = sum(
            1 for (name, labels_set) in samples if any(k == "domain" for k, _ in labels_set)
        )
        result = {
            "vms": vms,
            "own_cpu_per_collection_ms": own * 1000,
            "libvirtd_cpu_per_collection_ms": lv * 1000,
            "wall_per_collection_ms": 1000 * sum(walls) / len(walls),
            "series": len(samples),
            "series_per_vm": vm_series / max(vms, 1),
            "rss_mb": rss_bytes(proc.pid) / 2**20,
        }
        result.update(scrape_latency(url, seconds=30))  # each scrape is a collection: seconds
        return result
    finally:
        proc.terminate()
        proc.wait(10)


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--collections", type=int, default=6)
    args = parser.parse_args()
    started = time.time()
    names = start_domains(args.domains)
    print(f"started {len(names)} paused domains in {time.time() - started:.0f} s", file=sys.stderr)
    try:
        ours = measure_hostcollector(args.collections)
        # the lever domain.md names: dear groups on their own cadence (vcpu, balloon: ~40 %
        # of libvirtd's CPU), read every second poll
        tuned = measure_hostcollector(
            args.collections, slow_stats_groups=["vcpu", "balloon"], slow_stats_every=2
        )
        peer = measure_peer(args.collections)
    finally:
        stop_domains(names)
    per_vm = {
        name: {
            "own_cpu_per_vm_ms": r["own_cpu_per_collection_ms"] / r["vms"],
            "host_cpu_per_vm_ms": (
                r["own_cpu_per_collection_ms"] + r["libvirtd_cpu_per_collection_ms"]
            )
            / r["vms"],
        }
        for name, r in (("hostcollector", ours), ("tuned", tuned), ("peer", peer))
    }
    goals = {
        "own CPU per VM per collection <= 0.2 ms": per_vm["hostcollector"]["own_cpu_per_vm_ms"]
        <= 0.2,
        "host CPU per VM <= 0.7x the peer's": per_vm["hostcollector"]["host_cpu_per_vm_ms"]
        <= 0.7 * per_vm["peer"]["host_cpu_per_vm_ms"],
        "host CPU per VM <= 0.7x the peer's, slow vcpu/balloon": per_vm["tuned"][
            "host_cpu_per_vm_ms"
        ]
        <= 0.7 * per_vm["peer"]["host_cpu_per_vm_ms"],
        "series per VM >= 2x the peer's": ours["series_per_vm"] >= 2 * peer["series_per_vm"],
    }
    report = {
        "domains": args.domains,
        "hostcollector": ours,
        "hostcollector_slow_vcpu_balloon": tuned,
        "peer": peer,
        "per_vm": per_vm,
        "goals": goals,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "real-scale.json").write_text(json.dumps(report, indent=2))
    keys = [k for k in ours if k != "note"]
    lines = [
        "| measure | hostcollector | hostcollector, vcpu+balloon every 2nd poll | prometheus-libvirt-exporter | ratio to the peer |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in keys:
        a, b = ours[key], peer.get(key)
        ratio = f"{a / b:.2f}" if isinstance(b, int | float) and b else ""
        lines.append(f"| {key} | {_cell(a)} | {_cell(tuned[key])} | {_cell(b)} | {ratio} |")
    for key in ("own_cpu_per_vm_ms", "host_cpu_per_vm_ms"):
        a, t, b = per_vm["hostcollector"][key], per_vm["tuned"][key], per_vm["peer"][key]
        lines.append(f"| {key} | {a:.3f} | {t:.3f} | {b:.3f} | {a / b:.2f} (slow: {t / b:.2f}) |")
    lines += ["", *(f"- {goal}: {'met' if ok else 'NOT met'}" for goal, ok in goals.items())]
    text = "\n".join(lines) + "\n"
    (OUT / "real-scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
