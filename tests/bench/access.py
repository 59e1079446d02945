"""What the JSON API and bearer tokens cost the HTTP side: the real app, served for real, over a
snapshot of N VMs (the lab recording's four VMs repeated with distinct UUIDs: two tenants and
unattributed ones), answered to wrk in its own process. Writes bench-results/access.{json,md};
asserts nothing.

Rows: /metrics without tokens, with the host's token and with a tenant's (its smaller body);
/api/v1/vms with the host's token and a tenant's, served from the per-snapshot answer cache;
and what building that list costs once per snapshot (views + orjson). Served as the daemon
serves (hostcollector.server's connection guard, listen defaults).

Hostile rows: /metrics while another process holds 1,000 connections whose headers never
finish, re-opening each one the server closes (tests/bench/half_open.py); once as the daemon
serves, once with aiohttp's plain runner as before the guard, each server in its own process
under systemd's default soft descriptor limit of 1,024 (before: the descriptors run out).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench-results"
ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
TOKENS = {"host": "bench-host-token", "tenant": "bench-tenant-token"}


def snapshot_of(count: int) -> Any:
    from tests.snapshots import snapshot_from_raw

    base = snapshot_from_raw()
    vms = [
        dataclasses.replace(
            vm, stats=dataclasses.replace(vm.stats, uuid=f"{i:08x}{vm.stats.uuid[8:]}")
        )
        for i in range(count // len(base.vms))
        for vm in base.vms
    ]
    return dataclasses.replace(base, vms=tuple(vms))


HALF_OPEN = 1000


@contextlib.contextmanager
def holding(url: str, count: int) -> Iterator[None]:
    """`count` half-open connections held to `url` by another process meanwhile."""
    port = url.rsplit(":", 1)[1]
    holder = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("half_open.py")), port, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()  # "held N"
        time.sleep(1)  # the server accepts them from its backlog
        yield
    finally:
        holder.kill()
        holder.wait()


def _ms(value: float | None) -> str:
    return "no answer" if value is None else f"{value:.2f}"


def serve_alone(mode: str, vms: int) -> int:
    """The open app over `vms` VMs in this process, under systemd's default soft descriptor
    limit (1,024): as the daemon serves it (`guarded`: connection_limit raises the soft limit
    and the guard bounds the connections) or with aiohttp's plain runner (`plain`)."""
    from hostcollector.app import build_app
    from hostcollector.collector import Collector, Exposition
    from hostcollector.config import Config, ListenConfig
    from hostcollector.server import ConnectionGuard, connection_limit
    from tests.served import serve
    from tests.snapshots import LAB_ATTRIBUTION

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    config = Config(attribution=LAB_ATTRIBUTION)
    collector = Collector(config, sources={})
    collector.exposition = Exposition(snapshot_of(vms))
    guard = None
    if mode == "guarded":
        guard = ConnectionGuard(connection_limit(ListenConfig().max_connections))
    with serve(build_app(config, collector), guard=guard) as url:
        print(url, flush=True)
        while True:
            time.sleep(3600)


@contextlib.contextmanager
def served_alone(mode: str, vms: int) -> Iterator[tuple[str, int]]:
    """(url, pid) of `serve_alone` in its own process, so that its descriptors are its own."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--vms", str(vms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        yield server.stdout.readline().strip(), server.pid
    finally:
        server.kill()
        server.wait()


def main() -> int:
    import orjson

    from hostcollector import views
    from hostcollector.app import build_app
    from hostcollector.collector import Collector, Exposition
    from hostcollector.config import AuthConfig, Config, ListenConfig
    from hostcollector.server import ConnectionGuard, connection_limit
    from tests.bench.scrape import parse_wrk, wrk_command
    from tests.served import serve
    from tests.snapshots import LAB_ATTRIBUTION

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--serve", choices=("guarded", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_alone(args.serve, args.vms)
    snapshot = snapshot_of(args.vms)

    started, rounds = time.perf_counter(), 20
    for _ in range(rounds):
        body = orjson.dumps({"vms": views.vms(snapshot, None)}, option=orjson.OPT_NON_STR_KEYS)
    build_ms = (time.perf_counter() - started) * 1000 / rounds

    tokens = Path(tempfile.mkdtemp(prefix="hc-bench-access-")) / "tokens.yml"
    digest = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in TOKENS.items()}
    tokens.write_text(
        "tokens:\n"
        f"  - {{name: host, sha256: {digest['host']}, scope: all}}\n"
        f"  - {{name: acme, sha256: {digest['tenant']}, scope: tenant, tenant: '{ACME}'}}\n"
    )
    open_config = Config(attribution=LAB_ATTRIBUTION)
    auth_config = Config(attribution=LAB_ATTRIBUTION, auth=AuthConfig(str(tokens)))
    apps = []
    for config in (open_config, auth_config):
        collector = Collector(config, sources={})
        collector.exposition = Exposition(snapshot)
        apps.append(build_app(config, collector))

    def bearer(who: str) -> tuple[str, ...]:
        return (f"Authorization: Bearer {TOKENS[who]}",)

    rows: list[dict[str, Any]] = []

    def guarded() -> ConnectionGuard:
        return ConnectionGuard(connection_limit(ListenConfig().max_connections))

    def measure(what: str, url: str, headers: tuple[str, ...]) -> None:
        out = subprocess.run(
            wrk_command(url, 1, args.seconds, headers),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        answered = re.search(r"^\s*(\d+) requests in", out, re.MULTILINE)
        if answered is None or answered[1] == "0":
            rows.append({"what": what, "p50_ms": None, "p99_ms": None})
        else:
            p50, p99 = parse_wrk(out)
            rows.append({"what": what, "p50_ms": p50, "p99_ms": p99})
        print(rows[-1], file=sys.stderr)

    with (
        serve(apps[0], guard=guarded()) as open_url,
        serve(apps[1], guard=guarded()) as auth_url,
    ):
        cases = [
            ("/metrics, no tokens", f"{open_url}/metrics", ()),
            ("/metrics, host token", f"{auth_url}/metrics", bearer("host")),
            ("/metrics, tenant token", f"{auth_url}/metrics", bearer("tenant")),
            ("/api/v1/vms, host token", f"{auth_url}/api/v1/vms", bearer("host")),
            ("/api/v1/vms, tenant token", f"{auth_url}/api/v1/vms", bearer("tenant")),
        ]
        for what, url, headers in cases:
            measure(what, url, headers)
    hostile = [
        ("/metrics, 1,000 half-open connections held", HALF_OPEN, "guarded"),
        ("/metrics, 1,100 half-open held", 1100, "guarded"),
        ("/metrics, 1,100 half-open held, before (aiohttp's runner, no guard)", 1100, "plain"),
    ]
    for what, count, mode in hostile:
        with served_alone(mode, args.vms) as (url, pid), holding(url, count):
            measure(what, f"{url}/metrics", ())
            rows[-1]["descriptors"] = len(os.listdir(f"/proc/{pid}/fd"))

    report = {
        "vms": len(snapshot.vms),
        "vms_list_build_ms": build_ms,
        "vms_list_mb": len(body) / 2**20,
        "latency": rows,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "access.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"{report['vms']} VMs; building /api/v1/vms once per snapshot: {build_ms:.1f} ms "
        f"({report['vms_list_mb']:.2f} MB); one connection, {args.seconds} s each, gzip asked:",
        "",
        "| request | p50 ms | p99 ms | server's descriptors |",
        "| --- | --- | --- | --- |",
        *(
            f"| {r['what']} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {r.get('descriptors', '')} |"
            for r in rows
        ),
    ]
    text = "\n".join(lines) + "\n"
    (OUT / "access.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
