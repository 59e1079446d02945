"""What Prometheus sees through access control: Debian's prometheus scrapes the real daemon
over HTTPS with a client certificate and a bearer token, once with the host's token, once with
one tenant's, and once with none."""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostcollector.certinfo import certificate_not_after
from tests.labkit import Daemon, one, pick, require_lab, run_daemon, wait_until
from tests.pki import make_ca, make_cert
from tests.receivers import PrometheusReceiver

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ACME = "6f1c3b2a8d9e4f7a9b0c1d2e3f4a5b6c"
GLOBEX = "0b7e5d4c3a2f41e8b9c7d6e5f4a3b2c1"
TOKENS = {"sre": "sre-token-for-the-lab", "acme": "acme-token-for-the-lab"}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    require_lab()
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki)
    make_cert(pki, "server", "hostcollector", server=True)
    make_cert(pki, "prometheus", "prometheus", server=False)
    digest = {name: hashlib.sha256(token.encode()).hexdigest() for name, token in TOKENS.items()}
    tokens = tmp_path / "tokens.yml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{name: sre, sha256: {digest['sre']}, scope: all}}\n"
        f"  - {{name: acme, sha256: {digest['acme']}, scope: tenant, tenant: '{ACME}'}}\n"
    )
    for name, token in TOKENS.items():
        (pki / f"{name}.token").write_text(token + "\n")
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "prometheus.pem", pki / "prometheus.key")
    (tmp_path / "daemon").mkdir()
    with run_daemon(
        tmp_path / "daemon",
        extra={"auth": {"tokens_file": str(tokens)}},
        tls={
            "cert_file": str(pki / "server.pem"),
            "key_file": str(pki / "server.key"),
            "client_ca_file": str(pki / "ca.pem"),
        },
        client_context=context,
        token=TOKENS["sre"],
    ) as daemon:
        yield daemon, pki
    log = daemon.log()
    for token in TOKENS.values():
        assert token not in log


def job(name: str, target: str, pki: Path, token: str | None) -> dict[str, object]:
    config: dict[str, object] = {
        "job_name": name,
        "scheme": "https",
        "scrape_interval": "1s",
        "tls_config": {
            "ca_file": str(pki / "ca.pem"),
            "cert_file": str(pki / "prometheus.pem"),
            "key_file": str(pki / "prometheus.key"),
        },
        "static_configs": [{"targets": [target]}],
    }
    if token:
        config["authorization"] = {"credentials_file": str(pki / f"{token}.token")}
    return config


def test_prometheus_sees_what_each_token_may_see(
    secured: tuple[Daemon, Path], tmp_path: Path
) -> None:
    daemon, pki = secured
    target = daemon.url.removeprefix("https://")
    jobs = [job("sre", target, pki, "sre"), job("acme", target, pki, "acme")]
    jobs.append(job("anonymous", target, pki, None))
    with PrometheusReceiver(tmp_path / "prometheus", scrape_configs=jobs) as prometheus:

        def scraped() -> bool:
            up = {r["metric"]["job"]: r["value"][1] for r in prometheus.query("up")}
            return len(up) == 3 and up["sre"] == up["acme"] == "1"

        wait_until(scraped, 30, "both tokens' scrapes to succeed")
        time.sleep(1.5)
        now = time.time()

        def tenants(job_name: str) -> dict[str, int]:
            query = f'count by (tenant_id) (hostcollector_vm_cpu_time_seconds_total{{job="{job_name}"}})'
            return {
                r["metric"].get("tenant_id", ""): int(r["value"][1])
                for r in prometheus.query(query, now)
            }

        assert tenants("sre") == {ACME: 1, GLOBEX: 2, "": 1}
        assert tenants("acme") == {ACME: 1}
        # The tenant's scrape holds nothing of the host's or of other tenants'.
        others = prometheus.query(
            f'{{job="acme", tenant_id!="{ACME}", __name__=~"hostcollector_.+"}}', now
        )
        assert others == []
        assert prometheus.query('hostcollector_build_info{job="acme"}', now) == []
        assert prometheus.query('hostcollector_build_info{job="sre"}', now) != []
        anonymous = prometheus.query('up{job="anonymous"}', now)
        assert [r["value"][1] for r in anonymous] == ["0"]
        expiry = one(daemon.scrape(), "hostcollector_tls_certificate_expiry_timestamp_seconds")
        assert expiry == certificate_not_after((pki / "server.pem").read_bytes())
        # The anonymous scrapes are counted (in the next snapshot the daemon renders).
        wait_until(
            lambda: pick(
                daemon.scrape(), "hostcollector_http_requests_denied_total", reason="missing"
            ),
            10,
            "the refused scrapes to be counted",
        )
