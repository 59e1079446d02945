#!/usr/bin/env python3
"""Benchmark (not a test): hostcollector and Debian's prometheus-libvirt-exporter side by side
on N real domains of the lab's libvirtd (paused QEMU processes with no OS: real monitors, cheap).

Variants, taking turns in rounds (median of the rounds per measure, so drift on a shared machine
hits every variant alike):

- `defaults`: the shipped stats groups and the kernel path (sources.libvirt.kernel_path);
- `libvirt_only`: the same groups, all from libvirtd (kernel_path off): the cost before it;
- `same_data`: the peer's groups (state, cpu_total, block, interface), kernel path on;
- `peer`: prometheus-libvirt-exporter, one collection per scrape.

Per collection, for each: its own CPU, libvirtd's CPU, the QEMU processes' CPU (their monitors
answering), wall time, series (and per VM), RSS. hostcollector polls every source on one 10 s
interval and is scraped once per poll, as by one Prometheus. Then /metrics latency p50/p99 with 1 and 10
concurrent scrapers, once. Writes bench-results/real-scale.{json,md}. Needs the lab
(tests/lab/up.sh) and prometheus-libvirt-exporter (make bench-scale installs it).

    .venv/bin/python tests/bench/real_scale.py [--domains 200] [--rounds 3] [--collections 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.lab_cost import cpu_seconds, libvirtd_pid, rss_bytes  # noqa: E402
from tests.bench.scrape import parse_wrk, wrk_command  # noqa: E402
from tests.labkit import domxml, free_port, one, parse, pick, run_daemon, virsh  # noqa: E402

OUT = REPO / "bench-results"
PREFIX = "hc-scratch-scale-"
INTERVAL = 10.0
IDLE_FRAMES = ("EpollSelector.select", "virEventRunDefaultImpl", "select (")
PEER_GROUPS = ["state", "cpu_total", "block", "interface"]  # the peer's: what it exports
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "libvirt_only": {"kernel_path": False},
    "same_data": {"stats_groups": PEER_GROUPS},
}


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


def qemu_pids() -> list[int]:
    """The benchmark's own domains' QEMU processes (not the lab's booted guests)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if f"guest={PREFIX}".encode() in cmdline:
                pids.append(int(entry))
    return pids


class HostCpu:
    """CPU seconds of one process, libvirtd and every QEMU process between start and stop."""

    def __init__(self, pid: int) -> None:
        self.pid, self.libvirtd, self.qemus = pid, libvirtd_pid(), qemu_pids()
        self.start = self._now()

    def _now(self) -> tuple[float, float, float]:
        qemu = 0.0
        for pid in self.qemus:
            with contextlib.suppress(OSError):  # a QEMU that ended since
                qemu += cpu_seconds(pid)
        return cpu_seconds(self.pid), cpu_seconds(self.libvirtd), qemu

    def per_collection_ms(self, collections: int) -> dict[str, float]:
        end = self._now()
        own, lv, qemu = (1000 * (b - a) / collections for a, b in zip(self.start, end, strict=True))
        return {
            "own_cpu_per_collection_ms": own,
            "libvirtd_cpu_per_collection_ms": lv,
            "qemu_cpu_per_collection_ms": qemu,
        }


def scrape_latency(url: str, seconds: int) -> dict[str, float]:
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


def _polls(daemon: Any) -> tuple[float, Any]:
    samples = daemon.scrape()
    return one(samples, "hostcollector_source_polls_total", source="libvirt"), samples


def _next_poll(daemon: Any, after: float) -> Any:
    """Sleep to just past the next poll, then scrape once: one scraper, once per interval."""
    deadline = time.monotonic() + 3 * INTERVAL + 30
    while time.monotonic() < deadline:
        time.sleep(INTERVAL / 2)
        polls, samples = _polls(daemon)
        if polls > after:
            return polls, samples
    raise AssertionError("no poll completed in time")


def profile(pid: int, seconds: int) -> list[str]:
    """Where the daemon's CPU goes: py-spy's samples of whichever thread holds the GIL (the
    daemon's Python work; syscalls and C code that release it are not seen), folded stacks to
    bench-results/real-scale-profile.txt, the top functions as report lines. Needs py-spy on
    PATH or in the venv (make bench-scale installs it there)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("py-spy not on PATH: no profile", file=sys.stderr)
        return []
    folded = OUT / "real-scale-profile.txt"
    OUT.mkdir(exist_ok=True)
    subprocess.run(
        [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "500",
         "--format", "raw", "--output", str(folded), "--threads", "--gil", "--nonblocking"],
        check=False, capture_output=True, timeout=seconds + 60,
    )  # fmt: skip
    return summarize(folded, seconds)


# Where a sample's stack passes through, the part of the daemon it is counted to (the first
# that matches), for the profile's table
PARTS = (
    ("render of the exposition (gzip not seen: zlib releases the GIL)", "Exposition.__init__"),
    ("kernel path: /proc, cgroup and tap reads", "QemuKernelReader.read_domains"),
    ("kernel path: merge into the stats", "LibvirtSource._apply_kernel"),
    ("libvirt stats: decode and record (event loop)", "LibvirtSource._record"),
    ("libvirt stats calls (lanes)", "LibvirtSource._stats ("),
    ("libvirt listing", "LibvirtSource._list ("),
    ("SR-IOV source", "SriovSource"),
    ("NVML source", "NvmlSource"),
)


def summarize(folded: Path, seconds: int) -> list[str]:
    """py-spy's folded stacks as two tables: the share of each part of the daemon (PARTS),
    and the functions running most."""
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        # the thread first; a function once, whatever line of it was running
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")[1:]]
        if not frames or frames[-1].startswith(IDLE_FRAMES):
            continue  # waiting in epoll or libvirt's event poll, as py-spy cannot always tell
        total += int(count)
        own[frames[-1]] += int(count)
        part = next(
            (name for name, marker in PARTS if marker in stack),
            "the rest: asyncio, HTTP, lanes, self-metrics",
        )
        parts[part] += int(count)
    share = lambda count: f"{100 * count / max(total, 1):.0f}%"  # noqa: E731
    lines = [f"py-spy: {total} samples of the GIL holder over {seconds} s at 500 Hz.", ""]
    lines += ["| part of the daemon | share |", "| --- | --- |"]
    lines += [f"| {name} | {share(count)} |" for name, count in parts.most_common()]
    lines += ["", "| function running | share |", "| --- | --- |"]
    lines += [f"| `{frame}` | {share(count)} |" for frame, count in own.most_common(10)]
    print("\n".join(lines), file=sys.stderr)
    return lines


def measure_hostcollector(
    collections: int, latency: bool, profile_seconds: int = 0, **libvirt_options: Any
) -> dict[str, Any]:
    # Every source on the one interval, as the shipped defaults have it (15 s each but SR-IOV's
    # 30 s): their polls end together and cost one render of the exposition per collection.
    sources = {
        "libvirt": {"interval_seconds": INTERVAL, "timeout_seconds": 8.0, **libvirt_options},
        "sriov": {"interval_seconds": INTERVAL},
        "nvml": {"interval_seconds": INTERVAL},
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_daemon(Path(tmp), interval=INTERVAL, extra={"sources": sources}) as daemon,
    ):
        polls, _ = _next_poll(daemon, _polls(daemon)[0])  # warm: metadata of every domain
        polls, _ = _next_poll(daemon, polls)
        cpu, first = HostCpu(daemon.process.pid), polls
        walls = []
        for _ in range(collections):
            polls, samples = _next_poll(daemon, polls)
            walls.append(
                one(samples, "hostcollector_source_last_poll_duration_seconds", source="libvirt")
            )
        # per poll that ran, not per scrape: a late scrape may have seen two at once
        result: dict[str, Any] = cpu.per_collection_ms(int(polls - first))
        vms = len(pick(samples, "hostcollector_vm_info"))
        vm_series = sum(1 for _, labels in samples if any(k == "vm_uuid" for k, _v in labels))
        paths = Counter(
            labels["path"] for labels, _ in pick(samples, "hostcollector_vm_stats_path")
        )
        result.update(
            vms=vms,
            wall_per_collection_ms=1000 * statistics.median(walls),
            series=int(one(samples, "hostcollector_exposition_series")),
            series_per_vm=vm_series / vms,
            rss_mb=rss_bytes(daemon.process.pid) / 2**20,
            vms_by_path=dict(paths),
        )
        if latency:
            result.update(scrape_latency(daemon.url + "/metrics", seconds=10))
        if profile_seconds:
            result["profile"] = profile(daemon.process.pid, profile_seconds)
    return result


def measure_peer(collections: int, latency: bool) -> dict[str, Any]:
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
        for _ in range(50):
            try:
                urllib.request.urlopen(url, timeout=120).read()
                break
            except OSError:
                time.sleep(0.2)
        cpu = HostCpu(proc.pid)
        walls = []
        body = b""
        for _ in range(collections):  # each scrape is one collection
            started = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=300).read()
            walls.append(time.perf_counter() - started)
        result: dict[str, Any] = cpu.per_collection_ms(collections)
        samples = parse(body.decode())
        vms = len({dict(labels)["domain"] for name, labels in samples if "domain" in dict(labels)})
        vm_series = sum(1 for (_n, labels) in samples if any(k == "domain" for k, _ in labels))
        result.update(
            vms=vms,
            wall_per_collection_ms=1000 * statistics.median(walls),
            series=len(samples),
            series_per_vm=vm_series / max(vms, 1),
            rss_mb=rss_bytes(proc.pid) / 2**20,
        )
        if latency:
            result.update(scrape_latency(url, seconds=30))  # each scrape is a collection
        return result
    finally:
        proc.terminate()
        proc.wait(10)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if key in r]
        numeric = all(isinstance(v, int | float) for v in values)
        merged[key] = statistics.median(values) if numeric else values[-1]
    for r in rounds[1:]:  # latency is measured in one round only
        merged.update({k: v for k, v in r.items() if k not in merged})
    return merged


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--collections", type=int, default=4)
    parser.add_argument("--variants", default="defaults,libvirt_only,same_data,peer")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="SECONDS",
        help="after the rounds, profile the defaults' daemon this long (py-spy)",
    )  # fmt: skip
    args = parser.parse_args()
    variants = args.variants.split(",")
    started = time.time()
    names = start_domains(args.domains)
    print(f"started {len(names)} paused domains in {time.time() - started:.0f} s", file=sys.stderr)
    measures: dict[str, Callable[[bool], dict[str, Any]]] = {
        name: (lambda latency, o=options: measure_hostcollector(args.collections, latency, **o))
        for name, options in VARIANTS.items()
    }
    measures["peer"] = lambda latency: measure_peer(args.collections, latency)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    profiled: list[str] = []
    try:
        for round_no in range(args.rounds):
            order = variants if round_no % 2 == 0 else variants[::-1]
            for name in order:
                latency = round_no == args.rounds - 1 and name in ("defaults", "peer")
                rounds[name].append(measures[name](latency))
                print(f"round {round_no + 1} {name}: {rounds[name][-1]}", file=sys.stderr)
        if args.profile:
            profiled = measure_hostcollector(1, False, args.profile)["profile"]
    finally:
        stop_domains(names)
    results = {name: median_of(rs) for name, rs in rounds.items()}
    for r in results.values():
        r["own_cpu_per_vm_ms"] = r["own_cpu_per_collection_ms"] / r["vms"]
        r["host_cpu_per_vm_ms"] = (
            r["own_cpu_per_collection_ms"] + r["libvirtd_cpu_per_collection_ms"]
        ) / r["vms"]
        r["host_cpu_per_vm_with_qemu_ms"] = (
            r["host_cpu_per_vm_ms"] + r["qemu_cpu_per_collection_ms"] / r["vms"]
        )
    goals = {}
    if "peer" in results:
        peer = results["peer"]["host_cpu_per_vm_ms"]
        if "defaults" in results:
            goals["defaults: host CPU per VM <= 0.8x the peer's"] = (
                results["defaults"]["host_cpu_per_vm_ms"] <= 0.8 * peer
            )
        if "same_data" in results:
            goals["same data: host CPU per VM <= 0.5x the peer's"] = (
                results["same_data"]["host_cpu_per_vm_ms"] <= 0.5 * peer
            )
    if "defaults" in results:
        goals["defaults: own CPU per VM <= 0.2 ms"] = (
            results["defaults"]["own_cpu_per_vm_ms"] <= 0.2
        )
    report = {
        "domains": args.domains,
        "rounds": args.rounds,
        "collections_per_round": args.collections,
        "interval_seconds": INTERVAL,
        "results": results,
        "all_rounds": rounds,
        "goals": goals,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "real-scale.json").write_text(json.dumps(report, indent=2))
    keys = [k for k in results[variants[0]] if not isinstance(results[variants[0]][k], dict)]
    for r in results.values():
        keys += [k for k in r if k not in keys and not isinstance(r[k], dict)]
    head = " | ".join(variants)
    ratio_of = [v for v in variants if v != "peer"] if "peer" in results else []
    lines = [
        f"{args.domains} paused domains, {INTERVAL:.0f} s interval, median of {args.rounds} "
        f"rounds of {args.collections} collections, variants taking turns.",
        "",
        f"| per collection | {head} |" + "".join(f" {v} / peer |" for v in ratio_of),
        "| --- |" + " --- |" * (len(variants) + len(ratio_of)),
    ]
    for key in keys:
        cells = [_cell(results[v].get(key, "")) for v in variants]
        ratios = []
        for v in ratio_of:
            a, b = results[v].get(key), results["peer"].get(key)
            ok = isinstance(a, int | float) and isinstance(b, int | float) and b
            ratios.append(f"{a / b:.2f}" if ok else "")
        lines.append(f"| {key} | " + " | ".join(cells + ratios) + " |")
    lines += ["", *(f"- {goal}: {'met' if ok else 'NOT met'}" for goal, ok in goals.items())]
    if profiled:
        lines += ["", "Where the defaults' own CPU goes:", "", *profiled]
    text = "\n".join(lines) + "\n"
    (OUT / "real-scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
