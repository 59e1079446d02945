#!/usr/bin/env python3
"""Benchmark (not a test): hostcollector at 1,000-5,000 VMs with VFs and vGPUs, backends
replaced at their boundary only.

- libvirt: a fake connection answering with typed parameters and metadata recorded from the lab
  (tests/bench/fakes.py); every VM holds one SR-IOV VF as a hostdev;
- SR-IOV: RTM_NEWLINK messages in the kernel's layout (tests/sriov_fixtures.py), 250 VFs per PF,
  and a sysfs tree on disk;
- NVML: the stand-in libnvidia-ml.so.1 (tests/nvml_stub) with one vGPU per VM, 16 per GPU.

Everything above those boundaries is the real code: the sources' lanes, parsing, the tracker,
attribution, rendering. Each size runs in a fresh process so RSS is its own. Per size: own CPU
per cycle and per VM, series, RSS, and /metrics latency p50/p99 with 1 and 10 concurrent
scrapers (wrk, a separate process, gzip like Prometheus). Writes bench-results/synthetic.{json,md}.

    .venv/bin/python tests/bench/synthetic.py [--sizes 1000 2000 5000] [--cycles 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench-results"
VFS_PER_PF = 250
VGPUS_PER_GPU = 16
MAX_VGPUS = 256  # the NVML stand-in holds at most 256 vGPU instances


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def one_size(count: int, cycles: int) -> dict[str, Any]:
    """Runs in its own process (see main)."""
    import libvirt
    from aiohttp import web

    from hostcollector.app import build_app, tune_gc
    from hostcollector.config import (
        AttributionConfig,
        Config,
        LibvirtConfig,
        ListenConfig,
        MetadataRuleConfig,
        NvmlConfig,
        RemoteWriteConfig,
        RemoteWriteEndpointConfig,
        SourcesConfig,
        SriovConfig,
    )
    from hostcollector.remote_write.protocol import compress
    from hostcollector.remote_write.writer import RemoteWriter
    from hostcollector.wiring import build_collector
    from tests.bench.fakes import FakeConnection
    from tests.bench.scrape import parse_wrk, wrk_command
    from tests.labkit import free_port
    from tests.nvml_stub import stub
    from tests.replay import RecordedLinks
    from tests.sriov_fixtures import PfSpec, link_message, make_sysfs

    baseline = rss_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="hc-bench-"))
    pfs = [
        PfSpec(f"ens{i}f0", 10 + i, f"0000:{0x20 + i:02x}:00.0", f"0000:{0x80 + i:02x}", VFS_PER_PF)
        for i in range((count + VFS_PER_PF - 1) // VFS_PER_PF)
    ]
    vf_of_vm = {i: pfs[i // VFS_PER_PF].vf_pci(i % VFS_PER_PF) for i in range(count)}
    sysfs = make_sysfs(tmp / "root", pfs)
    links = RecordedLinks(
        [
            {
                "ifindex": pf.ifindex,
                "rtm_newlink_base64": base64.b64encode(link_message(pf)).decode(),
            }
            for pf in pfs
        ]
    )
    conn = FakeConnection(count, vf_of_vm)
    libvirt.openReadOnly = lambda _uri: conn  # the boundary: everything past it is real
    lib = stub.ensure_loaded(REPO / ".pytest_cache/d/nvml_stub")
    gpus = []
    vgpu_vms = min(count, MAX_VGPUS)
    for g in range((vgpu_vms + VGPUS_PER_GPU - 1) // VGPUS_PER_GPU):
        vgpus = [
            {
                "id": 1 + i,
                "vm_id": conn.domains[i].UUIDString(),
                "vm_id_type": "uuid",
                "type_id": 557,
                "type_name": "NVIDIA A40-2Q",
                "fb_usage_bytes": 2**30,
                "utilization_samples": [(1_700_000_000_000_000 + i, 30, 10, 0, 0)],
            }
            for i in range(g * VGPUS_PER_GPU, min(vgpu_vms, (g + 1) * VGPUS_PER_GPU))
        ]
        gpus.append(
            {
                "name": "NVIDIA A40",
                "pci_bus_id": f"0000{g // 256:04X}:{g % 256:02X}:00.0",
                "vgpus": vgpus,
            }
        )
    scenario = tmp / "nvml.scn"
    stub.write_scenario(scenario, {"gpus": gpus})
    os.environ[stub.SCENARIO_ENV] = str(scenario)

    port = free_port()
    config = Config(
        listen=ListenConfig(port=port),
        sources=SourcesConfig(
            libvirt=LibvirtConfig(interval_seconds=3600, timeout_seconds=600),
            sriov=SriovConfig(interval_seconds=3600, timeout_seconds=600, sysfs_root=str(sysfs)),
            nvml=NvmlConfig(
                interval_seconds=3600,
                timeout_seconds=600,
                library_path=lib._name,
                sysfs_root=str(tmp / "none"),
            ),
        ),
        attribution=AttributionConfig(
            metadata_rules=(
                MetadataRuleConfig(
                    "tenancy",
                    "https://cloud.example.com/xmlns/tenancy/1",
                    "tenant/@id",
                    {"tier": "tier"},
                ),
            )
        ),
    )

    async def run() -> dict[str, Any]:
        collector = build_collector(config)
        tune_gc()  # as `hostcollector run` does
        collector.sources["sriov"]._links = links  # type: ignore[attr-defined]
        await collector.poll_all_once()  # warm: connections, metadata parsed once per VM
        stages: dict[str, float] = {}
        cpu0 = time.process_time()
        for _ in range(cycles):
            conn.tick()
            for name, poller in collector.pollers.items():
                started = time.process_time()
                await poller.poll_once()
                stages[name] = stages.get(name, 0.0) + time.process_time() - started
            # the three sources finishing together cost one snapshot and one render (coalesced)
            started = time.process_time()
            collector.refresh()
            stages["snapshot+render+gzip"] = (
                stages.get("snapshot+render+gzip", 0.0) + time.process_time() - started
            )
        cpu = (time.process_time() - cpu0) / cycles
        snapshot = collector.exposition.snapshot
        body = collector.exposition.body(openmetrics=False, gzipped=False)
        gz = collector.exposition.body(openmetrics=False, gzipped=True)

        # Remote write: one tick's encoding for an all-series and a split-by-tenant endpoint
        # (what the writer's thread does every remote_write interval), without the disk.
        writer = RemoteWriter(
            RemoteWriteConfig(
                queue_dir=str(tmp / "remote-write"),
                endpoints=(
                    RemoteWriteEndpointConfig("all", "http://127.0.0.1:9/"),
                    RemoteWriteEndpointConfig(
                        "split", "http://127.0.0.1:9/{tenant}", split_by_tenant=True
                    ),
                ),
            ),
            lambda: snapshot,
        )
        started = time.process_time()
        for i in range(cycles):
            encoded = writer.encode(snapshot, 1_800_000_000_000 + i * 15_000)
            wire = compress(b"".join(encoded.all))
            tenants_wire = sum(len(compress(b"".join(v))) for v in encoded.by_tenant.values())
        remote_write_ms = (time.process_time() - started) * 1000 / cycles
        await writer.close()

        runner = web.AppRunner(build_app(config, collector))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        latency = {}
        for workers in (1, 10):
            proc = await asyncio.create_subprocess_exec(
                *wrk_command(f"http://127.0.0.1:{port}/metrics", workers, 10),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            latency[workers] = parse_wrk(out.decode())
        await runner.cleanup()
        return {
            "vms": len(snapshot.vms),
            "vfs": len(snapshot.vfs),
            "vgpus": sum(len(g.gpu.vgpus) for g in snapshot.gpus),
            "series": body.count(b"\n") - body.count(b"\n#"),
            "body_mb": len(body) / 2**20,
            "gzip_mb": len(gz) / 2**20,
            "own_cpu_per_cycle_ms": cpu * 1000,
            "own_cpu_per_vm_per_cycle_ms": cpu * 1000 / count,
            "stage_cpu_ms": {k: v * 1000 / cycles for k, v in stages.items()},
            "remote_write_tick_cpu_ms": remote_write_ms,
            "remote_write_all_mb": len(wire) / 2**20,
            "remote_write_tenants_mb": tenants_wire / 2**20,
            "rss_mb": rss_bytes() / 2**20,
            "rss_growth_per_vm_kb": (rss_bytes() - baseline) / count / 1024,
            "scrape_1_p50_ms": latency[1][0],
            "scrape_1_p99_ms": latency[1][1],
            "scrape_10_p50_ms": latency[10][0],
            "scrape_10_p99_ms": latency[10][1],
        }

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.cycles)))
        return 0
    results = []
    for size in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--cycles", str(args.cycles)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{size} VMs: {results[-1]}", file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    (OUT / "synthetic.json").write_text(json.dumps(results, indent=2))
    keys = [k for k in results[0] if k != "stage_cpu_ms"]
    lines = [
        "| measure | " + " | ".join(f"{r['vms']} VMs" for r in results) + " |",
        "|" + " --- |" * (len(results) + 1),
    ]
    for key in keys:
        cells = [f"{r[key]:.3f}" if isinstance(r[key], float) else str(r[key]) for r in results]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    for stage in results[0]["stage_cpu_ms"]:
        lines.append(
            f"| poll+render CPU ms: {stage} | "
            + " | ".join(f"{r['stage_cpu_ms'][stage]:.1f}" for r in results)
            + " |"
        )
    report = "\n".join(lines) + "\n"
    (OUT / "synthetic.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
