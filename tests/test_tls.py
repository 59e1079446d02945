"""HTTPS, client certificates and certificate rotation, over real TLS handshakes."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostcollector import tls
from hostcollector.app import build_app
from hostcollector.certinfo import certificate_not_after
from hostcollector.collector import Collector
from hostcollector.config import Config, ListenConfig, ServerTlsConfig
from hostcollector.errors import ConfigError
from tests.pki import make_ca, make_cert
from tests.served import eventually, get, serve


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d)
    make_cert(d, "server", "hostcollector-one", server=True)
    make_cert(d, "server2", "hostcollector-two", server=True)
    make_cert(d, "client", "prometheus", server=False)
    return d


def client_context(pki: Path, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if with_cert:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    return context


def served_cn(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        subject = dict(item[0] for item in conn.getpeercert()["subject"])  # type: ignore[index]
        return str(subject["commonName"])


Live = tuple[str, Path, tls.ReloadingServerTls]


@pytest.fixture
def live(pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    monkeypatch.setattr(tls, "RELOAD_CHECK_SECONDS", 0.0)
    for name in ("server.pem", "server.key"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    settings = ServerTlsConfig(
        str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(pki / "ca.pem")
    )
    config = Config(listen=ListenConfig(tls=settings))
    server_tls = tls.ReloadingServerTls(settings)
    app = build_app(config, Collector(config, sources={}))
    with serve(app, ssl_context=server_tls.context) as url:
        yield url, tmp_path, server_tls


def test_https_with_client_certificates(live: Live, pki: Path) -> None:
    url, _, _ = live
    assert url.startswith("https://")
    assert get(f"{url}/metrics", context=client_context(pki, with_cert=True)).status == 200
    with pytest.raises(OSError):  # no client certificate: the handshake is refused
        get(f"{url}/metrics", context=client_context(pki, with_cert=False))
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):  # the server is verified too
        get(f"{url}/metrics", context=ssl.create_default_context())


def test_certificates_are_reloaded_when_the_files_change(live: Live, pki: Path) -> None:
    url, directory, server_tls = live
    port = int(url.rsplit(":", 1)[1])
    context = client_context(pki, with_cert=True)
    assert served_cn(port, context) == "hostcollector-one"
    # A key that does not match the certificate is rejected; the last good pair stays.
    (directory / "server.pem").write_bytes((pki / "server2.pem").read_bytes())
    eventually(
        "the mismatched pair rejected",
        lambda: (
            served_cn(port, context) == "hostcollector-one" and server_tls.files.errors_total == 1
        ),
    )
    (directory / "server.key").write_bytes((pki / "server2.key").read_bytes())
    eventually("the new pair served", lambda: served_cn(port, context) == "hostcollector-two")
    assert (server_tls.files.reloads_total, server_tls.files.errors_total) == (2, 1)
    assert server_tls.not_after == certificate_not_after((pki / "server2.pem").read_bytes())
    assert get(f"{url}/metrics", context=context).status == 200


def test_unusable_files_at_start_are_a_config_error(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"listen\.tls: TLS certificate files rejected"):
        tls.ReloadingServerTls(ServerTlsConfig(str(pki / "server.pem"), str(pki / "client.key")))
    with pytest.raises(ConfigError, match="cannot stat"):
        tls.ReloadingServerTls(ServerTlsConfig(str(tmp_path / "nope.pem"), str(tmp_path / "k")))
