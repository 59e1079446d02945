"""The JSON API and access control over real HTTP: answers, 4xx errors, token scopes."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hostcollector import views
from hostcollector.app import TOKENS, build_app
from hostcollector.collector import Collector, Exposition
from hostcollector.config import AuthConfig, Config
from tests.served import eventually, get, serve
from tests.snapshots import LAB_ATTRIBUTION, snapshot_from_raw

ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
GLOBEX = "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1"
SRE_TOKEN = "sre-0123456789abcdef-secret"
ACME_TOKEN = "acme-fedcba9876543210-secret"


def tokens_yaml(entries: list[tuple[str, str, str | None]]) -> str:
    lines = ["tokens:"]
    for name, token, tenant in entries:
        digest = hashlib.sha256(token.encode()).hexdigest()
        lines.append(
            f"  - {{name: {name}, sha256: {digest}, scope: {'tenant' if tenant else 'all'}"
        )
        lines[-1] += f", tenant: '{tenant}'}}" if tenant else "}"
    return "\n".join(lines) + "\n"


def served_snapshot(config: Config) -> Collector:
    collector = Collector(config, sources={})
    collector.exposition = Exposition(snapshot_from_raw())
    return collector


@pytest.fixture
def open_api() -> Iterator[str]:
    config = Config(attribution=LAB_ATTRIBUTION)
    with serve(build_app(config, served_snapshot(config))) as url:
        yield url


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yml"
    path.write_text(tokens_yaml([("sre", SRE_TOKEN, None), ("acme-portal", ACME_TOKEN, ACME)]))
    return path


@pytest.fixture
def api(tokens_file: Path) -> Iterator[str]:
    config = Config(attribution=LAB_ATTRIBUTION, auth=AuthConfig(str(tokens_file)))
    with serve(build_app(config, served_snapshot(config))) as url:
        yield url


def test_vms_list_filters_and_one_vm(open_api: str) -> None:
    listing = get(f"{open_api}/api/v1/vms").json()
    assert listing["snapshot_timestamp"] == snapshot_from_raw().taken_at
    names = sorted(vm["name"] for vm in listing["vms"])
    assert names == ["hc-lab-a1", "hc-lab-b1", "hc-lab-c1", "hc-lab-orphan"]
    a1 = next(vm for vm in listing["vms"] if vm["name"] == "hc-lab-a1")
    assert a1["tenant_id"] == ACME and a1["state"] == "running"
    assert a1["cpu_time_seconds"] > 0 and a1["memory"]["current_bytes"] > 0
    assert a1["interfaces"] and a1["blocks"][0]["device"]

    globex = get(f"{open_api}/api/v1/vms?tenant={GLOBEX}").json()["vms"]
    assert sorted(vm["name"] for vm in globex) == ["hc-lab-b1", "hc-lab-c1"]
    unattributed = get(f"{open_api}/api/v1/vms?tenant=").json()["vms"]
    assert [vm["name"] for vm in unattributed] == ["hc-lab-orphan"]
    assert len(get(f"{open_api}/api/v1/vms?state=running").json()["vms"]) == 4
    assert get(f"{open_api}/api/v1/vms?state=paused").json()["vms"] == []

    one = get(f"{open_api}/api/v1/vms/{a1['uuid'].upper()}").json()["vm"]
    assert one["name"] == "hc-lab-a1" and one["gpus"] == [] and one["vfs"] == []
    b1 = get(f"{open_api}/api/v1/vms/b1b1b1b1-0000-4000-8000-000000000002").json()["vm"]
    assert b1["quarantined"] is True and b1["sample_age_seconds"] > 0


def test_tenants_and_sources(open_api: str) -> None:
    tenants = get(f"{open_api}/api/v1/tenants").json()["tenants"]
    assert tenants == [
        {"tenant_id": GLOBEX, "vms": 2, "vfs": 0, "gpus": 0, "vgpus": 0},
        {"tenant_id": ACME, "vms": 1, "vfs": 0, "gpus": 0, "vgpus": 0},
    ]
    acme = get(f"{open_api}/api/v1/tenants/{ACME}").json()["tenant"]
    assert [vm["name"] for vm in acme["vms"]] == ["hc-lab-a1"]
    assert acme["gpus"] == [] and acme["vfs"] == []
    sources = get(f"{open_api}/api/v1/sources").json()
    assert [(s["name"], s["up"]) for s in sources["sources"]] == [("libvirt", True)]
    assert sources["sources"][0]["errors_by_reason"] == {"timeout": 1}
    assert sources["libvirt"]["quarantined_vms"] == 1
    assert sources["tenant_map"]["configured"] is False
    assert sources["files"] == [] and sources["tls_certificate_not_after"] is None


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/v1/nope", 404, "Not Found"),
        ("/api/v1/vms/not-a-vm", 404, "no VM not-a-vm on this host"),
        ("/api/v1/tenants/nobody", 404, "no VM, GPU or VF of tenant 'nobody'"),
        ("/api/v1/vms?colour=red", 400, "unknown query parameter 'colour'; known: tenant, state"),
        ("/api/v1/vms?state=running&state=paused", 400, "query parameter 'state' given twice"),
        ("/api/v1/vms?state=sleepy", 400, "unknown state 'sleepy'; known: nostate, running"),
        ("/api/v1/sources?x=1", 400, "unknown query parameter 'x'; known: none"),
    ],
)
def test_client_errors_are_json_4xx(open_api: str, path: str, status: int, message: str) -> None:
    reply = get(open_api + path)
    assert reply.status == status
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.json()["error"]
    assert error["status"] == status and error["message"].startswith(message)


def test_wrong_method_and_oversized_headers_do_not_hurt_the_daemon(open_api: str) -> None:
    reply = get(f"{open_api}/api/v1/vms", method="POST")
    assert reply.status == 405 and reply.json()["error"]["status"] == 405
    assert reply.headers["Allow"] == "GET,HEAD"
    huge = get(f"{open_api}/api/v1/vms", headers={"X-Junk": "x" * 20_000})
    assert huge.status == 400
    many = get(f"{open_api}/metrics", headers={f"X-H{i}": "y" for i in range(200)})
    assert many.status in (200, 400)
    assert get(f"{open_api}/api/v1/vms").status == 200


def test_a_token_is_needed_and_its_scope_is_enforced(api: str) -> None:
    for path in ("/metrics", "/api/v1/vms", "/", "/api/v1/nope"):
        missing = get(api + path)
        assert missing.status == 401, path
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="hostcollector"'
        assert get(api + path, token="not-a-token").status == 401
    assert get(f"{api}/api/v1/vms", headers={"Authorization": "Basic Zm9vOmJhcg=="}).status == 401
    assert get(f"{api}/api/v1/vms").json()["error"]["status"] == 401
    assert get(f"{api}/healthz").status == 200  # liveness needs no token

    assert len(get(f"{api}/api/v1/vms", token=SRE_TOKEN).json()["vms"]) == 4
    assert get(f"{api}/api/v1/sources", token=SRE_TOKEN).status == 200

    answer = get(f"{api}/api/v1/vms", token=ACME_TOKEN).json()
    assert [vm["name"] for vm in answer["vms"]] == ["hc-lab-a1"]
    # when each source last read its data: any scope gets it, to compute rates
    assert answer["source_sampled_at"] == {"libvirt": 1795929818.5}
    assert get(f"{api}/api/v1/vms?tenant={ACME}", token=ACME_TOKEN).status == 200
    other = get(f"{api}/api/v1/vms?tenant={GLOBEX}", token=ACME_TOKEN)
    assert other.status == 403
    assert other.json()["error"]["message"] == f"token 'acme-portal' may only see tenant '{ACME}'"
    assert get(f"{api}/api/v1/tenants/{GLOBEX}", token=ACME_TOKEN).status == 403
    assert get(f"{api}/api/v1/sources", token=ACME_TOKEN).status == 403
    assert get(f"{api}/", token=ACME_TOKEN).status == 403
    # Another tenant's VM is "not found", exactly like a VM that does not exist.
    globex_vm = get(f"{api}/api/v1/vms/c1c1c1c1-0000-4000-8000-000000000003", token=ACME_TOKEN)
    nothing = get(f"{api}/api/v1/vms/c1c1c1c1-0000-4000-8000-00000000ffff", token=ACME_TOKEN)
    assert globex_vm.status == nothing.status == 404
    assert get(f"{api}/api/v1/tenants", token=ACME_TOKEN).json()["tenants"] == [
        {"tenant_id": ACME, "vms": 1, "vfs": 0, "gpus": 0, "vgpus": 0}
    ]

    text = get(f"{api}/metrics", token=ACME_TOKEN).body.decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert samples and {s.labels["tenant_id"] for s in samples} == {ACME}
    assert "hostcollector_vms " not in text and "hostcollector_build_info" not in text
    full = get(f"{api}/metrics", token=SRE_TOKEN).body.decode()
    assert GLOBEX in full and "hostcollector_http_requests_denied_total" in full


def test_secrets_are_never_logged(api: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for token in (SRE_TOKEN, ACME_TOKEN, "wrong-secret-token"):
        for path in ("/metrics", "/api/v1/vms", "/api/v1/sources", "/api/v1/nope"):
            get(api + path, token=token)
    everything = caplog.text + "".join(str(r.args) for r in caplog.records)
    for token in (SRE_TOKEN, ACME_TOKEN, "wrong-secret-token"):
        assert token not in everything


def test_tokens_file_reloads_and_a_bad_one_keeps_the_last_good(api: str, tokens_file: Path) -> None:
    assert get(f"{api}/api/v1/vms", token=SRE_TOKEN).status == 200
    time.sleep(1.1)  # the file is checked at most once a second
    tokens_file.write_text(tokens_yaml([("rotated", "new-token-after-rotation", None)]))
    # Checked at most once a second, then re-read in its thread while requests go on.
    eventually(
        "the rotated token accepted",
        lambda: get(f"{api}/api/v1/vms", token="new-token-after-rotation").status == 200,
    )
    assert get(f"{api}/api/v1/vms", token=SRE_TOKEN).status == 401
    tokens_file.write_text("tokens: [{name: broken, sha256: nothex, scope: all}]\n")
    time.sleep(2.2)
    assert get(f"{api}/api/v1/vms", token="new-token-after-rotation").status == 200


def test_token_file_reloads_and_rejections_are_self_metrics(tokens_file: Path) -> None:
    config = Config(attribution=LAB_ATTRIBUTION, auth=AuthConfig(str(tokens_file)))
    collector = served_snapshot(config)
    app = build_app(config, collector)
    with serve(app) as url:
        time.sleep(1.1)
        tokens_file.write_text("tokens: [{name: broken, sha256: nothex, scope: all}]\n")
        assert get(f"{url}/api/v1/vms", token=SRE_TOKEN).status == 200  # the last good file
        tokens = app[TOKENS]
        eventually("the broken file rejected", lambda: tokens.errors_total == 1)
        collector.refresh()
        text = get(f"{url}/metrics", token=SRE_TOKEN).body.decode()
        sources = get(f"{url}/api/v1/sources", token=SRE_TOKEN).json()
    assert 'hostcollector_file_reloads_total{file="tokens"} 1' in text
    assert 'hostcollector_file_reload_errors_total{file="tokens"} 1' in text
    assert sources["files"] == [{"file": "tokens", "reloads_total": 1, "errors_total": 1}]


def test_answers_are_built_once_per_snapshot_and_follow_a_new_one() -> None:
    config = Config(attribution=LAB_ATTRIBUTION)
    collector = served_snapshot(config)
    app = build_app(config, collector)
    built: list[str] = []
    original = views.vms

    def counting(*args: Any) -> Any:
        built.append("vms")
        return original(*args)

    with serve(app) as url, pytest.MonkeyPatch.context() as patch:
        patch.setattr(views, "vms", counting)
        first = [get(f"{url}/api/v1/vms").body for _ in range(3)]
        assert len(set(first)) == 1 and built == ["vms"]
        snapshot = snapshot_from_raw()
        renamed = dataclasses.replace(
            snapshot.vms[0], stats=dataclasses.replace(snapshot.vms[0].stats, name="renamed")
        )
        collector.exposition = Exposition(
            dataclasses.replace(snapshot, vms=(renamed, *snapshot.vms[1:]))
        )
        after = get(f"{url}/api/v1/vms").json()["vms"]
        assert "renamed" in {vm["name"] for vm in after} and built == ["vms", "vms"]


def test_lists_are_gzipped_for_clients_that_ask(open_api: str) -> None:
    plain = get(f"{open_api}/api/v1/vms")
    packed = get(f"{open_api}/api/v1/vms", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in plain.headers
    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed.body) == plain.body and len(packed.body) < len(plain.body) / 3
