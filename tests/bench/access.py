"""What the JSON API and bearer tokens cost the HTTP side: the real app, served for real, over a
snapshot of N VMs (the lab recording's four VMs repeated with distinct UUIDs: two tenants and
unattributed ones), answered to wrk in its own process. Writes bench-results/access.{json,md};
asserts nothing.

Rows: /metrics without tokens, with the host's token and with a tenant's (its smaller body);
/api/v1/vms with the host's token and a tenant's, served from the per-snapshot answer cache;
and what building that list costs once per snapshot (views + orjson).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import sys
import tempfile
import time
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


def main() -> int:
    import orjson

    from hostcollector import views
    from hostcollector.app import build_app
    from hostcollector.collector import Collector, Exposition
    from hostcollector.config import AuthConfig, Config
    from tests.bench.scrape import parse_wrk, wrk_command
    from tests.served import serve
    from tests.snapshots import LAB_ATTRIBUTION

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
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
    with serve(apps[0]) as open_url, serve(apps[1]) as auth_url:
        cases = [
            ("/metrics, no tokens", f"{open_url}/metrics", ()),
            ("/metrics, host token", f"{auth_url}/metrics", bearer("host")),
            ("/metrics, tenant token", f"{auth_url}/metrics", bearer("tenant")),
            ("/api/v1/vms, host token", f"{auth_url}/api/v1/vms", bearer("host")),
            ("/api/v1/vms, tenant token", f"{auth_url}/api/v1/vms", bearer("tenant")),
        ]
        for what, url, headers in cases:
            out = subprocess.run(
                wrk_command(url, 1, args.seconds, headers),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            p50, p99 = parse_wrk(out)
            rows.append({"what": what, "p50_ms": p50, "p99_ms": p99})
            print(rows[-1], file=sys.stderr)

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
        "| request | p50 ms | p99 ms |",
        "| --- | --- | --- |",
        *(f"| {r['what']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |" for r in rows),
    ]
    text = "\n".join(lines) + "\n"
    (OUT / "access.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
