"""End to end on the real lab: libvirtd + QEMU guests (tests/lab/up.sh), the daemon as a process.

Timing checks count the daemon's polls, not seconds: "within two intervals" means by the end of
the second poll that started after the change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.labkit import (
    ACME,
    GLOBEX,
    LAB_VMS,
    Daemon,
    domstats,
    free_port,
    one,
    pick,
    require_lab,
    run_daemon,
    scratch_vm,
    virsh,
    wait_until,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

EXPECTED_TENANTS = {
    "hc-lab-a1": (ACME, "metadata:nova-1.1"),
    "hc-lab-b1": (GLOBEX, "metadata:nova-1.0"),
    "hc-lab-c1": (GLOBEX, "metadata:tenancy"),
    "hc-lab-orphan": ("", ""),
}
UUIDS = {vm["name"]: vm["uuid"] for vm in LAB_VMS}


@pytest.fixture(scope="module")
def tenant_map(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("map") / "tenants.json"
    path.write_text("{}")
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tenant_map: Path) -> Iterator[Daemon]:
    require_lab()
    with run_daemon(tmp_path_factory.mktemp("daemon"), mapping_file=str(tenant_map)) as running:
        yield running
    log = running.log()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


def test_every_lab_vm_with_its_tenant_and_the_orphan_counted(daemon: Daemon) -> None:
    samples = daemon.scrape()
    info = {labels["name"]: labels for labels, _ in pick(samples, "hostcollector_vm_info")}
    for name, (tenant, source) in EXPECTED_TENANTS.items():
        assert info[name]["vm_uuid"] == UUIDS[name]
        assert (info[name]["tenant_id"], info[name]["tenant_source"]) == (tenant, source), name
        assert one(samples, "hostcollector_vm_state", vm_uuid=UUIDS[name]) == 1  # running
        # tenant on every per-VM series, not only on the info series
        for (_name, labels), _value in samples.items():
            if ("vm_uuid", UUIDS[name]) in labels:
                assert ("tenant_id", tenant) in labels
    assert info["hc-lab-a1"]["flavor"] == "g1.small"
    assert info["hc-lab-b1"]["project_name"] == "globex"
    assert info["hc-lab-c1"]["tier"] == "gold"
    unattributed = sum(1 for labels in info.values() if labels["tenant_id"] == "")
    assert unattributed >= 1
    assert one(samples, "hostcollector_vms_unattributed") == unattributed
    assert one(samples, "hostcollector_source_up", source="libvirt") == 1


def test_counters_agree_with_virsh_domstats(daemon: Daemon) -> None:
    name = "hc-lab-a1"
    uuid = UUIDS[name]
    before = domstats(name)
    # the second poll to finish after `before` started after it, so its values are newer
    samples = daemon.wait_polls(2)
    after = domstats(name)

    def between(metric: str, key: str, scale: float = 1.0, **labels: str) -> None:
        value = one(samples, metric, vm_uuid=uuid, **labels)
        low, high = int(before[key]) * scale, int(after[key]) * scale
        assert low - 1e-9 <= value <= high + 1e-9, f"{metric}: {low} <= {value} <= {high}"

    between("hostcollector_vm_cpu_time_seconds_total", "cpu.time", 1e-9)
    between("hostcollector_vm_vcpu_time_seconds_total", "vcpu.0.time", 1e-9, vcpu="0")
    between("hostcollector_vm_block_write_bytes_total", "block.0.wr.bytes", device="vda")
    between("hostcollector_vm_block_read_requests_total", "block.0.rd.reqs", device="vda")
    nic = str(before["net.0.name"])
    between("hostcollector_vm_network_transmit_packets_total", "net.0.tx.pkts", device=nic)
    between("hostcollector_vm_network_receive_bytes_total", "net.0.rx.bytes", device=nic)
    assert (
        one(samples, "hostcollector_vm_memory_maximum_bytes", vm_uuid=uuid)
        == int(before["balloon.maximum"]) * 1024
    )
    assert (
        one(samples, "hostcollector_vm_block_capacity_bytes", vm_uuid=uuid, device="vda")
        == before["block.0.capacity"]
    )


def test_counters_grow_while_the_guests_work(daemon: Daemon) -> None:
    first = daemon.scrape()
    later = daemon.wait_polls(3)
    for name in EXPECTED_TENANTS:
        uuid = UUIDS[name]
        for metric in (
            "hostcollector_vm_cpu_time_seconds_total",
            "hostcollector_vm_block_write_bytes_total",
            "hostcollector_vm_network_transmit_packets_total",
        ):
            grown = one(later, metric, vm_uuid=uuid) - one(first, metric, vm_uuid=uuid)
            assert grown > 0, f"{name}: {metric} did not grow"
        # guest-side balloon stats come from the guest's virtio_balloon driver
        assert one(later, "hostcollector_vm_memory_usable_bytes", vm_uuid=uuid) > 0


def vm_tenant(samples: dict, uuid: str) -> str | None:  # type: ignore[type-arg]
    found = pick(samples, "hostcollector_vm_info", vm_uuid=uuid)
    return found[0][0]["tenant_id"] if found else None


def test_vm_start_metadata_change_and_destroy_within_two_polls(daemon: Daemon) -> None:
    uuid = "e0e0e0e0-0000-4000-8000-0000000000a1"
    with scratch_vm("hc-scratch-churn", uuid, "nova11", project_id=ACME):
        assert vm_tenant(daemon.wait_polls(2), uuid) == ACME

        new_owner = (
            '<instance><owner><user uuid="u1">u</user>'
            f'<project uuid="{GLOBEX}">globex</project></owner></instance>'
        )
        virsh(
            "metadata",
            "hc-scratch-churn",
            "http://openstack.org/xmlns/libvirt/nova/1.1",
            "--key",
            "nova",
            "--set",
            new_owner,
            "--live",
        )
        assert vm_tenant(daemon.wait_polls(2), uuid) == GLOBEX
    samples = daemon.wait_polls(2)
    assert vm_tenant(samples, uuid) is None
    assert not [key for key in samples if ("vm_uuid", uuid) in key[1]], "series left behind"


def test_mapping_file_attributes_and_reloads(daemon: Daemon, tenant_map: Path) -> None:
    uuid = "e0e0e0e0-0000-4000-8000-0000000000a2"
    tenant_map.write_text(json.dumps({uuid: {"tenant_id": "t-mapped", "labels": {"flavor": "x1"}}}))
    with scratch_vm("hc-scratch-mapped", uuid, "none"):
        samples = daemon.wait_polls(2)
        assert vm_tenant(samples, uuid) == "t-mapped"
        info = pick(samples, "hostcollector_vm_info", vm_uuid=uuid)[0][0]
        assert (info["tenant_source"], info["flavor"]) == ("mapping_file", "x1")

        tenant_map.write_text(json.dumps({uuid: "t-moved"}))
        assert vm_tenant(daemon.wait_polls(2), uuid) == "t-moved"

        tenant_map.write_text("{not json")  # a bad write keeps the last good map
        samples = daemon.wait_polls(2)
        assert vm_tenant(samples, uuid) == "t-moved"
        assert one(samples, "hostcollector_tenant_map_errors_total") >= 1
    tenant_map.write_text("{}")


@pytest.fixture(scope="module")
def prometheus(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is not installed (the README's test command installs it)")
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    target = daemon.url.removeprefix("http://")
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: hostcollector\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    with open(tmp / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def promql(base: str, query: str) -> list[dict]:  # type: ignore[type-arg]
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return []
    assert body["status"] == "success", body
    result: list[dict] = body["data"]["result"]  # type: ignore[type-arg]
    return result


def test_prometheus_sums_cpu_and_network_per_tenant(prometheus: str) -> None:
    cpu = "sum by (tenant_id) (rate(hostcollector_vm_cpu_time_seconds_total[20s]))"
    net = "sum by (tenant_id) (rate(hostcollector_vm_network_transmit_bytes_total[20s]))"

    def per_tenant(query: str) -> dict[str, float] | None:
        rows = {
            r["metric"].get("tenant_id", ""): float(r["value"][1])
            for r in promql(prometheus, query)
        }
        return rows if {ACME, GLOBEX} <= rows.keys() and all(rows.values()) else None

    cpu_rows = wait_until(lambda: per_tenant(cpu), 90, "per-tenant CPU rates", step=1)
    net_rows = wait_until(lambda: per_tenant(net), 90, "per-tenant network rates", step=1)
    assert set(cpu_rows) == {ACME, GLOBEX, ""}  # the orphan sums under the empty tenant
    assert all(0 < rate < 4 for rate in cpu_rows.values())  # CPU-seconds per second, 2 host cores
    assert all(rate > 0 for rate in net_rows.values())
    up = promql(prometheus, 'up{job="hostcollector"}')
    assert [r["value"][1] for r in up] == ["1"]
    # a scrape failing sample_limit or parsing would show here
    assert promql(prometheus, "scrape_samples_scraped")[0]["value"][1] != "0"


def test_promtool_accepts_a_live_scrape(daemon: Daemon) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian's prometheus package has it)")
    body = daemon.get()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert result.returncode == 0 and not result.stdout and not result.stderr, result


def test_scrapes_do_not_poll_libvirt(daemon: Daemon) -> None:
    polls = one(daemon.scrape(), "hostcollector_source_polls_total", source="libvirt")
    started = time.monotonic()
    for _ in range(50):
        daemon.get()
    elapsed = time.monotonic() - started
    after = one(daemon.scrape(), "hostcollector_source_polls_total", source="libvirt")
    # at most the polls the schedule itself ran in that time, whatever the scrape count
    assert after - polls <= elapsed / daemon.interval + 1
