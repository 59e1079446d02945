"""The tenant's read path (issue 12): a vmauth config generated from a digests-only tenant-token
file, and real vmauth in front of per-tenant VictoriaMetrics spaces seeded by three
hostcollector writers with three host identities; the tenant dashboard and README queries run
through it."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostcollector import vmauth
from hostcollector.cli import main
from hostcollector.config import HOST_IDENTITY_LABELS, RemoteWriteConfig, RemoteWriteEndpointConfig
from hostcollector.metrics import ALL_FAMILIES
from hostcollector.model import AttributedGpu, AttributedVF, GpuStats, Snapshot, VfStats, VgpuStats
from hostcollector.remote_write.writer import RemoteWriter
from hostcollector.vmauth import READ_PATHS
from tests.conftest import load_raw
from tests.receivers import TenantGateway, VictoriaMetricsReceiver, VmAuth
from tests.snapshots import snapshot_from_raw

ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
GLOBEX = "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1"
KEYS = {"acme-grafana": (ACME, "a" * 40), "globex-portal": (GLOBEX, "g" * 40)}
ACME_KEY, GLOBEX_KEY = KEYS["acme-grafana"][1], KEYS["globex-portal"][1]
HOSTS = ("hv-a", "hv-b", "hv-c")
TICKS = 6
STEP_S = 15
DASHBOARD = Path(__file__).parent.parent / "conf" / "grafana" / "tenant-vms.json"


def write_inventory(directory: Path, keys: dict[str, tuple[str, str]] = KEYS) -> tuple[Path, Path]:
    """The tenant-token file (digests) and the secrets directory (one 0600 file per key)."""
    secrets = directory / "keys"
    secrets.mkdir(mode=0o700, exist_ok=True)
    lines = ["tokens:"]
    for name, (tenant, key) in keys.items():
        digest = hashlib.sha256(key.encode()).hexdigest()
        lines.append(f"  - {{name: {name}, tenant: '{tenant}', sha256: {digest}}}")
        (secrets / name).write_text(key + "\n")
        (secrets / name).chmod(0o600)
    inventory = directory / "tenant-tokens.yml"
    inventory.write_text("\n".join(lines) + "\n")
    return inventory, secrets


def generate(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    inventory, secrets = write_inventory(tmp_path)
    output = tmp_path / "auth.yml"
    argv = ["vmauth-config", "--tenant-tokens", str(inventory), "--secrets-dir", str(secrets)]
    return main([*argv, *extra, "--output", str(output)]), output


# --- The generator ---------------------------------------------------------------------------


def test_the_config_maps_each_key_to_the_read_paths_of_its_space(tmp_path: Path) -> None:
    import yaml

    code, output = generate(
        tmp_path, "--space-url", "http://vmselect:8481/select/{tenant}/prometheus"
    )
    assert code == 0
    assert os.stat(output).st_mode & 0o777 == 0o600
    users = yaml.safe_load(output.read_text())["users"]
    assert users == [
        {
            "name": name,
            "bearer_token": key,
            "url_map": [
                {
                    "src_paths": list(READ_PATHS),
                    "url_prefix": f"http://vmselect:8481/select/{tenant}/prometheus",
                }
            ],
        }
        for name, (tenant, key) in KEYS.items()
    ]
    assert not any("write" in p or "import" in p or "admin" in p for p in READ_PATHS)


@pytest.mark.parametrize(
    ("damage", "args", "message"),
    [
        (lambda d: (d / "keys" / "acme-grafana").write_text("b" * 40), (),
         "acme-grafana: " + "{keys}/acme-grafana does not match its sha256"),
        (lambda d: (d / "keys" / "globex-portal").chmod(0o644), (),
         "globex-portal: {keys}/globex-portal is readable by others (mode 0644"),
        (lambda d: (d / "keys" / "globex-portal").unlink(), (),
         "globex-portal: cannot read {keys}/globex-portal"),
        (lambda d: None, ("--space-url", "http://vm:8428/"),
         "no {tenant}: every tenant would read one space"),
        (lambda d: None, ("--space", f"{ACME}=http://vm:1", "--space", f"{GLOBEX}=http://vm:1/"),
         "share the space 'http://vm:1'"),
        (lambda d: None, ("--space", f"{ACME}=http://vm:1"), f"tenant {GLOBEX!r}: no space"),
        (lambda d: None, ("--space-url", "http://vm/{tenant}?extra_label=x"),
         "no query or fragment"),
        (lambda d: None, ("--space", "nobody=http://vm:1", "--space-url", "http://v/{tenant}"),
         "--space 'nobody': no key in the tenant-token file reads this tenant"),
    ],
)  # fmt: skip
def test_bad_input_names_the_entry_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Any,
    args: tuple[str, ...],
    message: str,
) -> None:
    inventory, secrets = write_inventory(tmp_path)
    damage(tmp_path)
    output = tmp_path / "auth.yml"
    argv = ["vmauth-config", "--tenant-tokens", str(inventory), "--secrets-dir", str(secrets)]
    code = main([*argv, *(args or ("--space-url", "http://v/{tenant}")), "-o", str(output)])
    assert code == 1 and not output.exists()
    err = capsys.readouterr().err
    assert message.replace("{keys}", str(secrets)) in err and err.rstrip().endswith(
        "nothing written"
    )
    assert "a" * 40 not in err and "g" * 40 not in err  # never a key in an error


def test_bad_tenant_token_files_are_refused_whole(tmp_path: Path) -> None:
    from hostcollector.vmauth import parse_tenant_tokens

    digest = "0" * 64
    with pytest.raises(ValueError) as caught:
        parse_tenant_tokens(
            f"""tokens:
  - {{name: a, tenant: '..', sha256: '{digest}'}}
  - {{name: a, tenant: t, sha256: '{"1" * 64}'}}
  - {{name: b/c, tenant: t, sha256: nope}}
  - {{name: d, tenant: t, sha256: '{digest}', scope: all}}
""".encode()
        )
    assert str(caught.value) == (
        "tokens[0] (a).tenant: '..': a dot segment: in a URL path it names another path; "
        "tokens[1].name: 'a' is used twice; "
        "tokens[2].name: expected 1-64 of A-Z a-z 0-9 . _ - (got 'b/c'); "
        "tokens[2].sha256: expected 64 hex digits (printf %s KEY | sha256sum); "
        "tokens[3]: unknown keys ['scope']; "
        "tokens[3] (d).sha256: the same key is listed twice"
    )


def test_a_key_vmauth_would_rewrite_is_refused(tmp_path: Path) -> None:
    keys = {"acme-grafana": (ACME, "%{HOME}" + "x" * 20)}
    inventory, secrets = write_inventory(tmp_path, keys)
    argv = ["vmauth-config", "--tenant-tokens", str(inventory), "--secrets-dir", str(secrets)]
    assert main([*argv, "--space-url", "http://v/{tenant}"]) == 1


# --- Real vmauth in front of real spaces ------------------------------------------------------


def host_snapshot(index: int, tick: int) -> Snapshot:
    """Host `index`'s recording at `tick`: its own VM UUIDs (a VM runs on one host), counters
    grown by one STEP_S of half a core, 1 MB/s of disk and network each; acme's VM has a VF and
    a vGPU, globex's a vGPU on the same shared GPU."""
    raw = copy.deepcopy(load_raw())
    for entry in raw:
        entry["uuid"] = f"{index:02x}" + entry["uuid"][2:]
        stats = entry["stats"]
        stats["cpu.time"] += tick * STEP_S * 500_000_000
        for key in ("block.0.rd.bytes", "block.0.wr.bytes", "net.0.rx.bytes", "net.0.tx.bytes"):
            stats[key] += tick * STEP_S * 1_000_000
    snapshot = snapshot_from_raw(raw=raw)
    acme = next(vm.stats.uuid for vm in snapshot.vms if vm.tenant_id == ACME)
    globex = next(vm.stats.uuid for vm in snapshot.vms if vm.tenant_id == GLOBEX)
    grown = tick * STEP_S * 1000
    vf = VfStats("pf0", index, f"0000:3b:02.{index}", "netlink", receive_bytes=grown,
                 transmit_bytes=grown, receive_packets=tick, transmit_packets=tick, receive_drop=0)  # fmt: skip
    vgpus = (
        VgpuStats(1, acme, "uuid", uuid=f"vgpu-{index}-a", sm_utilization_ratio=0.4, fb_usage_bytes=1 << 30),
        VgpuStats(2, globex, "uuid", uuid=f"vgpu-{index}-g", sm_utilization_ratio=0.2, fb_usage_bytes=1 << 29),
    )  # fmt: skip
    gpu = GpuStats(f"0000:af:00.{index}", nvml_visible=True, uuid=f"GPU-{index}",
                   gpu_utilization_ratio=0.6, vgpus=vgpus)  # fmt: skip
    return dataclasses.replace(
        snapshot,
        vfs=(AttributedVF(vf, acme, ACME),),
        gpus=(AttributedGpu(gpu, "", "", ((acme, ACME), (globex, GLOBEX))),),
    )


@dataclasses.dataclass
class ReadPath:
    gateway: VmAuth
    spaces: dict[str, VictoriaMetricsReceiver]
    vms: dict[str, set[str]]  # tenant -> its VM UUIDs on every host
    at: float  # the last tick, seconds


def seed(spaces: dict[str, VictoriaMetricsReceiver], directory: Path) -> float:
    now_ms = int(time.time()) * 1000
    ticks = [now_ms - 1000 * STEP_S * (TICKS - 1 - i) for i in range(TICKS)]

    async def run() -> None:
        with TenantGateway({t: s.write_url for t, s in spaces.items()}) as split:
            writers = [
                RemoteWriter(
                    RemoteWriteConfig(
                        queue_dir=str(directory / host),
                        external_labels={"instance": host, "hostname": host},
                        endpoints=(
                            RemoteWriteEndpointConfig(
                                "tenants",
                                split.push_url(),
                                split_by_tenant=True,
                                headers={"X-Scope-OrgID": "{tenant}"},
                            ),
                        ),
                    ),
                    lambda: host_snapshot(0, 0),
                )
                for host in HOSTS
            ]
            try:
                for tick, timestamp in enumerate(ticks):
                    for index, writer in enumerate(writers):
                        await writer.tick(host_snapshot(index, tick), timestamp)
                deadline = time.monotonic() + 30
                while any(s.queue.batches for w in writers for s in w.senders):
                    assert time.monotonic() < deadline, [w.status() for w in writers]
                    await asyncio.sleep(0.05)
            finally:
                for writer in writers:
                    await writer.close()
            for writer in writers:
                for status in writer.status():
                    assert status.samples_dropped_by_reason == (), status
                    assert status.samples_failed_total == 0 < status.samples_sent_total
            assert split.unknown_tenants == []

    asyncio.run(run())
    return ticks[-1] / 1000


@pytest.fixture(scope="module")
def read_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadPath]:
    directory = tmp_path_factory.mktemp("read-path")
    with (
        VictoriaMetricsReceiver(directory / "vm-acme") as acme,
        VictoriaMetricsReceiver(directory / "vm-globex") as globex,
    ):
        spaces = {ACME: acme, GLOBEX: globex}
        at = seed(spaces, directory)
        spaces_args = [a for t, s in spaces.items() for a in ("--space", f"{t}={s.url}")]
        code, config = generate(directory, *spaces_args)
        assert code == 0
        vms = {
            tenant: {vm.stats.uuid for i in range(len(HOSTS)) for vm in host_snapshot(i, 0).vms
                     if vm.tenant_id == tenant}
            for tenant in spaces
        }  # fmt: skip
        for space in spaces.values():
            space._before_query()  # flushed: visible to queries through the gateway too
        with VmAuth(directory / "vmauth", config) as gateway:
            yield ReadPath(gateway, spaces, vms, at)


def instant(path: ReadPath, token: str, promql: str, **kwargs: Any) -> list[dict[str, Any]]:
    params = [("query", promql), ("time", f"{path.at:.3f}"), ("nocache", "1")]
    result: list[dict[str, Any]] = path.gateway.read(token, "query", params, **kwargs)["result"]
    return result


def test_a_tenant_key_reads_its_vms_from_every_host_and_nothing_else(read_path: ReadPath) -> None:
    assert len(read_path.vms[ACME]) == len(HOSTS) == len(read_path.vms[GLOBEX]) // 2
    for tenant, key in ((ACME, ACME_KEY), (GLOBEX, GLOBEX_KEY)):
        got = instant(read_path, key, '{__name__=~".+"}')
        assert {row["metric"]["tenant_id"] for row in got} == {tenant}
        assert {row["metric"]["vm_uuid"] for row in got} == read_path.vms[tenant]
        cpu = instant(read_path, key, "hostcollector_vm_cpu_time_seconds_total")
        assert {row["metric"]["vm_uuid"] for row in cpu} == read_path.vms[tenant]
        values = read_path.gateway.read(key, "label/vm_uuid/values", [])
        assert set(values) == read_path.vms[tenant]
        series = read_path.gateway.read(key, "series", [("match[]", '{__name__=~".+"}')])
        assert {labels["tenant_id"] for labels in series} == {tenant}


def test_no_key_a_wrong_key_and_a_forged_tenant_reach_no_other_data(read_path: ReadPath) -> None:
    gateway = read_path.gateway
    params = [("query", "hostcollector_vm_info"), ("time", f"{read_path.at:.3f}")]
    assert gateway.request("GET", "/api/v1/query", None, params)[0] == 401
    for wrong in ("b" * 40, ACME_KEY + "x", ACME_KEY[:-1], f"Basic {ACME_KEY}"):
        status, text = gateway.request("GET", "/api/v1/query", wrong, params)
        assert status in (400, 401, 403) and GLOBEX not in text and ACME not in text
    status, _ = gateway.request("GET", "/api/v1/query", None, params, headers={"Authorization": f"Basic {ACME_KEY}"})  # fmt: skip
    assert status == 400
    # acme's key, asking for globex in every way a query can
    for promql in (f'{{tenant_id="{GLOBEX}"}}', f'{{__name__=~".+", tenant_id!="{ACME}"}}'):
        assert instant(read_path, ACME_KEY, promql) == []
    wide = instant(read_path, ACME_KEY, f'hostcollector_vm_info{{tenant_id=~"{GLOBEX}|.*"}}')
    assert wide and {row["metric"]["tenant_id"] for row in wide} == {ACME}
    forged = [
        ("query", "hostcollector_vm_info"),
        ("time", f"{read_path.at:.3f}"),
        ("extra_label", f"tenant_id={GLOBEX}"),
        ("tenant_id", GLOBEX),
        ("accountID", GLOBEX),
    ]
    assert (
        gateway.read(ACME_KEY, "query", forged, headers={"X-Scope-OrgID": GLOBEX})["result"] == []
    )
    # a path that would name another space, or another API, resolves to a refused route
    for path in (f"/select/{GLOBEX}/prometheus/api/v1/query", "/api/v1/query/../export",
                 "/api/v1/export", "/federate", "/api/v1/status/tsdb"):  # fmt: skip
        assert gateway.request("GET", path, ACME_KEY, params)[0] == 400, path


def test_a_write_through_the_gateway_with_a_tenant_key_is_refused(read_path: ReadPath) -> None:
    from tests.remote_write_wire import encode_write_request

    body = encode_write_request([((("__name__", "forged"), ("tenant_id", ACME)), [(int(read_path.at * 1000), 1.0)])])  # fmt: skip
    line = f'forged{{tenant_id="{ACME}"}} 1\n'.encode()
    for method, path, payload in (
        ("POST", "/api/v1/write", body),
        (
            "POST",
            "/api/v1/import",
            b'{"metric":{"__name__":"forged"},"values":[1],"timestamps":[1]}',
        ),
        ("POST", "/api/v1/import/prometheus", line),
        ("POST", "/api/v1/query/../import/prometheus", line),
        ("POST", "//api/v1/write", body),
        ("POST", '/api/v1/admin/tsdb/delete_series?match[]={__name__=~".%2B"}', b""),
        ("GET", '/api/v1/admin/tsdb/delete_series?match[]={__name__=~".%2B"}', None),
        ("POST", "/write", line),
        ("POST", "/influx/write", b"forged value=1\n"),
        ("GET", "/internal/resetRollupResultCache", None),
    ):
        status, text = read_path.gateway.request(method, path, ACME_KEY, body=payload)
        assert status == 400 and "missing route" in text, (path, status, text)
    # vmauth's own endpoints, with the tenant's key as the authKey too
    for path in ("/-/reload", "/metrics", "/flags", "/debug/pprof/"):
        for params in ([], [("authKey", ACME_KEY)]):
            status, text = read_path.gateway.request("GET", path, ACME_KEY, params)
            assert status in (400, 401) and "authKey" in text, (path, status, text)
    space = read_path.spaces[ACME]
    assert space.query('{__name__="forged"}', read_path.at) == []
    # and nothing was deleted
    assert len(space.query("hostcollector_vm_cpu_time_seconds_total", read_path.at)) == len(HOSTS)


def test_no_host_identity_in_any_tenant_space(read_path: ReadPath) -> None:
    hosts = {*HOSTS, socket.gethostname()}
    for space in read_path.spaces.values():
        got = space.query('{__name__=~".+"}', read_path.at)
        assert got
        for row in got:
            labels = row["metric"]
            assert not set(labels) & (HOST_IDENTITY_LABELS | {"instance", "hostname"}), labels
            assert not set(labels.values()) & hosts, labels


# --- The tenant dashboard and the README's queries --------------------------------------------

FAMILY_LABELS = {f.name: set(f.labels) - {"..."} for f in ALL_FAMILIES}
VM_INFO_LABELS = {"flavor", "project_name", "tier"}  # the lab's attribution.info_labels
METRIC = re.compile(r"\bhostcollector_[a-z0-9_]+\b")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
HOST_LABELS = HOST_IDENTITY_LABELS | {"instance", "host", "hostname", "pf"}


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) of every query in the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"], target.get("legendFormat", "")))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"${variable['name']}", variable["query"]["query"], ""))
    return found


def label_use_problems(expr: str, legend: str = "") -> list[str]:
    names = set(METRIC.findall(expr))
    problems = [f"{name}: no such metric" for name in names - set(FAMILY_LABELS)]
    allowed = set().union(*(FAMILY_LABELS.get(n, set()) for n in names)) | {"__name__"}
    if "hostcollector_vm_info" in names:
        allowed |= VM_INFO_LABELS
    used = set(MATCHER.findall(expr)) | set(LEGEND.findall(legend))
    used |= {g.strip() for group in GROUPING.findall(expr) for g in group.split(",") if g.strip()}
    used |= set(re.findall(r"label_values\([^,]+,\s*([a-zA-Z_]+)\)", expr))
    problems += [f"{label}: not a label of {sorted(names)}" for label in used - allowed]
    problems += [f"{label}: host identity" for label in used & HOST_LABELS]
    return problems


def test_the_dashboard_names_only_real_metrics_and_labels_and_no_host() -> None:
    targets = dashboard_targets()
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "vm_uuid" in variables["vm"]["query"]["query"]
    assert all(
        p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if "targets" in p
    )
    titles = {title for title, _, _ in targets}
    for wanted in ("CPU", "Memory", "Disk", "Network", "VF", "GPU"):
        assert any(wanted in title for title in titles), wanted
    problems = {expr: label_use_problems(expr, legend) for _, expr, legend in targets}
    assert {expr: p for expr, p in problems.items() if p} == {}
    # the checker finds what it is for
    assert label_use_problems('hostcollector_pf_vfs{instance="x"}', "{{pf}}") != []
    assert label_use_problems("hostcollector_vm_cpu_seconds") == [
        "hostcollector_vm_cpu_seconds: no such metric"
    ]


def substitute(expr: str, vm: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$vm", vm)


def test_every_dashboard_query_runs_through_the_gateway(read_path: ReadPath) -> None:
    vm_regex = "|".join(sorted(read_path.vms[ACME]))
    answered: dict[str, int] = {}
    for title, expr, _ in dashboard_targets():
        if expr.startswith("label_values("):
            metric = re.match(r"label_values\(([^,]+),", expr)[1]  # type: ignore[index]
            values = read_path.gateway.read(ACME_KEY, "label/vm_uuid/values", [("match[]", metric)])
            assert set(values) == read_path.vms[ACME]
            continue
        rows = instant(read_path, ACME_KEY, substitute(expr, vm_regex))
        assert all(row["metric"].get("vm_uuid", "") in read_path.vms[ACME] for row in rows)
        answered[title] = answered.get(title, 0) + len(rows)
    for title in ("CPU (cores)", "Memory", "Disk throughput", "Disk operations", "Network",
                  "SR-IOV VFs", "GPU / vGPU utilisation", "GPU / vGPU memory"):  # fmt: skip
        assert answered[title] > 0, (title, answered)


# The README's "Reading your metrics (tenants)" queries, each with what the seed makes it.
README_QUERIES = {
    "sum by (vm_uuid) (rate(hostcollector_vm_cpu_time_seconds_total[5m]))": 0.5,
    "hostcollector_vm_memory_current_bytes - hostcollector_vm_memory_usable_bytes": None,
    "hostcollector_vm_memory_rss_bytes / hostcollector_vm_memory_current_bytes": None,
    "sum by (vm_uuid) (rate(hostcollector_vm_block_read_bytes_total[5m])"
    " + rate(hostcollector_vm_block_write_bytes_total[5m]))": 2e6,
    "sum by (vm_uuid) (rate(hostcollector_vm_network_receive_bytes_total[5m]))": 1e6,
    "sum by (vm_uuid) (rate(hostcollector_vm_network_transmit_bytes_total[5m]))": 1e6,
    "sum by (vm_uuid, vf) (rate(hostcollector_vf_receive_bytes_total[5m]))": 1000,
    "avg by (vm_uuid) (hostcollector_vgpu_sm_utilization_ratio)": 0.4,
    "sum by (vm_uuid) (hostcollector_vgpu_framebuffer_used_bytes)": float(1 << 30),
    "hostcollector_vm_info * on (vm_uuid) group_left ()"
    " sum by (vm_uuid) (rate(hostcollector_vm_cpu_time_seconds_total[5m]))": 0.5,
}


def test_the_readme_queries_name_real_metrics_and_no_host() -> None:
    assert {q: p for q in README_QUERIES if (p := label_use_problems(q))} == {}


def test_the_readme_queries_answer_through_the_gateway(read_path: ReadPath) -> None:
    for promql, expected in README_QUERIES.items():
        rows = instant(read_path, ACME_KEY, promql)
        assert rows, promql
        assert {row["metric"].get("vm_uuid") for row in rows} <= read_path.vms[ACME]
        if expected is not None:
            values = [float(row["value"][1]) for row in rows]
            assert values == pytest.approx([expected] * len(values), rel=0.01), promql


def test_the_readme_shows_exactly_the_queries_tested_here() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Tenants reading their metrics", 1)[1].split("\n## ", 1)[0]
    shown = set(re.findall(r"^\| [^|]+ \| `([^`]+)` \|$", section, flags=re.MULTILINE))
    # The network row names `transmit` in words; its query is tested too.
    tested = set(README_QUERIES) - {q for q in README_QUERIES if "transmit" in q}
    assert shown == tested


def test_a_fifo_in_a_keys_place_or_as_the_inventory_is_refused_without_blocking(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tenant-tokens.yml"
    os.mkfifo(tokens)
    with pytest.raises(ValueError, match="not a regular file"):
        vmauth.generate(tokens, tmp_path, "http://vm:8481/select/{tenant}/prometheus", {})
    secrets = tmp_path / "keys"
    secrets.mkdir(mode=0o700)
    os.mkfifo(secrets / "acme-grafana", 0o600)
    key = vmauth.TenantKey("acme-grafana", ACME, "0" * 64)
    with pytest.raises(ValueError, match="not a regular file"):
        vmauth.read_keys([key], secrets)
