"""Self-metrics reported by their owners (selfmetrics.py): under their family, isolated from
each other's failures, and never named by string outside metrics.py."""

from __future__ import annotations

import ast
import logging
import ssl
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from hostcollector import metrics
from hostcollector.app import build_app
from hostcollector.auth import DeniedRequests
from hostcollector.collector import Collector
from hostcollector.config import AuthConfig, Config, ListenConfig, ServerTlsConfig
from hostcollector.exposition import render
from hostcollector.family import Family
from hostcollector.metrics import ALL_FAMILIES, PREFIX, SELF_FAMILIES
from hostcollector.model import Snapshot
from hostcollector.selfmetrics import Sample
from hostcollector.server import ConnectionGuard
from hostcollector.tls import ReloadingServerTls
from tests.pki import make_ca, make_cert
from tests.served import get, serve
from tests.test_api import SRE_TOKEN, tokens_yaml

PACKAGE = Path(__file__).parent.parent / "hostcollector"


class BrokenOwner:
    """An owner whose counters cannot be read: it yields one sample, then fails."""

    def __init__(self) -> None:
        self.calls = 0

    def collect(self) -> Iterator[Sample]:
        self.calls += 1
        yield Sample(metrics.TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, "", 1.0)
        raise OSError("certificate vanished")


def family_block(text: str, family: Family) -> list[str]:
    """The lines of one family in a text exposition: its header and samples."""
    lines = text.splitlines()
    start = lines.index(f"# HELP {family.name} {family.help}")
    end = next(
        (i for i in range(start + 2, len(lines)) if lines[i].startswith("# HELP ")), len(lines)
    )
    return lines[start:end]


def test_a_registered_owners_samples_appear_under_their_family() -> None:
    collector = Collector(Config(), sources={})
    denied = DeniedRequests()
    guard = ConnectionGuard(10)
    collector.register(denied)
    collector.register(guard)
    denied.deny("invalid")
    denied.deny("invalid")
    denied.deny("missing")
    guard.closed_total["refused"] += 1
    collector.refresh()
    text = collector.exposition.body(openmetrics=False, gzipped=False).decode()

    assert family_block(text, metrics.HTTP_REQUESTS_DENIED_TOTAL)[2:] == [
        'hostcollector_http_requests_denied_total{reason="invalid"} 2',
        'hostcollector_http_requests_denied_total{reason="missing"} 1',
    ]
    assert family_block(text, metrics.HTTP_CONNECTIONS)[2:] == ["hostcollector_http_connections 0"]
    assert family_block(text, metrics.HTTP_CONNECTIONS_CLOSED_TOTAL)[2:] == [
        'hostcollector_http_connections_closed_total{reason="refused"} 1'
    ]
    # Every self-metric family keeps its place, in SELF_FAMILIES' order (no libvirt source,
    # no NVML, no tenant map, no process owner: their families are not shown, as before).
    process = {f.name for f in metrics.SELF_FAMILIES_WITH_OWNER[-1]}
    assert metrics.MEMORY_LIMIT_BYTES.name in process
    self_names = {f.name for f in SELF_FAMILIES}
    shown = [
        name
        for line in text.splitlines()
        if line.startswith("# HELP ") and (name := line.split()[2]) in self_names
    ]
    assert shown == [
        f.name
        for f in SELF_FAMILIES
        if f.name.removeprefix(PREFIX).split("_")[0] not in {"libvirt", "nvml", "tenant"}
        and f.name not in process
    ]


def test_an_owner_that_raises_costs_only_its_own_families(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = Collector(Config(), sources={})
    broken = BrokenOwner()
    denied = DeniedRequests()
    collector.register(broken)
    collector.register(denied)
    denied.deny("scope")
    with caplog.at_level(logging.WARNING, logger="hostcollector.selfmetrics"):
        collector.refresh()
        collector.refresh()
    text = render(collector.exposition.snapshot).decode()

    # Its family is headed as always, without the sample it yielded before failing.
    assert family_block(text, metrics.TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS)[2:] == []
    assert family_block(text, metrics.HTTP_REQUESTS_DENIED_TOTAL)[2:] == [
        'hostcollector_http_requests_denied_total{reason="scope"} 1'
    ]
    assert "hostcollector_exposition_series" in text
    # Logged when it started failing, not once per snapshot (the constructor's snapshot was
    # built before it was registered).
    assert broken.calls == 2
    assert [r.getMessage() for r in caplog.records] == ["self-metrics of BrokenOwner not collected"]


def _string_pieces(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_no_family_is_looked_up_by_name_outside_metrics_py() -> None:
    """A family is named by its declaration (metrics.SOURCE_UP), never by a string: no string
    in the package outside metrics.py spells a family's name, whole, without the prefix, or as
    the start of several (f"remote_write_{name}")."""
    full = {f.name for f in ALL_FAMILIES}
    short = {f.name.removeprefix(PREFIX) for f in SELF_FAMILIES}
    # Plain words are API fields and config keys too ("vms", "gpus"), and some names are the
    # snapshot's fields too ("nvml_available"): only other compound names count.
    short = {name for name in short if "_" in name} - {f.name for f in fields(Snapshot)}
    stems = {
        name[: i + 1]
        for name in short
        for i, char in enumerate(name)
        if char == "_" and sum(other.startswith(name[: i + 1]) for other in short) > 1
    }
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "metrics.py" and path.parent == PACKAGE:
            continue
        for line, text in _string_pieces(ast.parse(path.read_text(), str(path))):
            if text in full or text in short or text in stems or text in {PREFIX}:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    assert found == []


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d)
    make_cert(d, "server", "hostcollector-one", server=True)
    return d


def test_the_http_sides_owners_are_registered_where_the_app_is_built(
    pki: Path, tmp_path: Path
) -> None:
    """As `hostcollector run` wires them: the certificate, the tokens file, the refusals and
    the connection guard report through the collector, and /api/v1/sources shows the files."""
    tokens = tmp_path / "tokens.yml"
    tokens.write_text(tokens_yaml([("sre", SRE_TOKEN, None)]))
    settings = ServerTlsConfig(str(pki / "server.pem"), str(pki / "server.key"))
    config = Config(listen=ListenConfig(tls=settings), auth=AuthConfig(str(tokens)))
    server_tls = ReloadingServerTls(settings)
    guard = ConnectionGuard(16)
    collector = Collector(config, sources={})
    app = build_app(config, collector, server_tls=server_tls, guard=guard)
    client = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with serve(app, ssl_context=server_tls.context, guard=guard) as url:
        assert get(f"{url}/metrics", context=client).status == 401
        collector.refresh()
        text = get(f"{url}/metrics", token=SRE_TOKEN, context=client).body.decode()
        sources = get(f"{url}/api/v1/sources", token=SRE_TOKEN, context=client).json()

    assert family_block(text, metrics.FILE_RELOADS_TOTAL)[2:] == [
        'hostcollector_file_reloads_total{file="tls"} 1',
        'hostcollector_file_reloads_total{file="tokens"} 1',
    ]
    assert family_block(text, metrics.TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS)[2:] == [
        f"hostcollector_tls_certificate_expiry_timestamp_seconds {server_tls.not_after!r}"
    ]
    assert family_block(text, metrics.HTTP_REQUESTS_DENIED_TOTAL)[2:] == [
        'hostcollector_http_requests_denied_total{reason="missing"} 1'
    ]
    assert family_block(text, metrics.HTTP_CONNECTIONS)[2][:-1] == "hostcollector_http_connections "
    assert sources["files"] == [
        {"file": "tls", "reloads_total": 1, "errors_total": 0},
        {"file": "tokens", "reloads_total": 1, "errors_total": 0},
    ]
    assert sources["tls_certificate_not_after"] == server_tls.not_after


def test_every_self_family_declared_is_rendered() -> None:
    """A self family left out of SELF_FAMILIES is never rendered, however often its owner
    reports it (the exposition walks that tuple): every one declared must be in it."""
    listed = {id(family) for family in metrics.SELF_FAMILIES}
    missing = [f.name for f in metrics.DECLARED_SELF_FAMILIES if id(f) not in listed]
    assert missing == []
