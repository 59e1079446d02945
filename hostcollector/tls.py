"""HTTPS for the HTTP server, with certificates re-read when their files change.

A new SSLContext is built from the files when one of them changed (checked at most every
RELOAD_CHECK_SECONDS, on a handshake) and handed to each new connection from the handshake's
server-name callback, which OpenSSL calls whether or not the client sent SNI. Connections
already open keep the certificate they started with. A new set of files that does not load
(a key that does not match, half-written PEM) is rejected and the last good one kept.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from hostcollector import metrics
from hostcollector.certinfo import certificate_not_after
from hostcollector.config import ServerTlsConfig
from hostcollector.errors import ConfigError
from hostcollector.reloading import ReloadingFiles
from hostcollector.selfmetrics import Sample

RELOAD_CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class ServerCertificate:
    context: ssl.SSLContext
    not_after: float  # when the certificate served expires (Unix time)


def load_server_certificate(config: ServerTlsConfig) -> ServerCertificate:
    assert config.cert_file is not None
    with open(config.cert_file, "rb") as handle:
        not_after = certificate_not_after(handle.read())
    return ServerCertificate(server_context(config), not_after)


def server_context(config: ServerTlsConfig) -> ssl.SSLContext:
    assert config.cert_file is not None and config.key_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.cert_file, config.key_file)
    if config.client_ca_file is not None:
        context.load_verify_locations(cafile=config.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ReloadingServerTls:
    def __init__(self, config: ServerTlsConfig) -> None:
        paths = tuple(
            p for p in (config.cert_file, config.key_file, config.client_ca_file) if p is not None
        )
        self._files: ReloadingFiles[ServerCertificate | None] = ReloadingFiles(
            "TLS certificate files",
            paths,
            lambda: load_server_certificate(config),
            None,
            min_check_seconds=RELOAD_CHECK_SECONDS,
        )
        first = self._files.current()
        if first is None:
            # At start there is no last good certificate to fall back on.
            raise ConfigError([f"listen.tls: {self._files.last_error}"])
        # The context the server listens with; its callback hands out the newest one. Its own
        # verify mode stays in force for every connection (OpenSSL keeps the first one's).
        self.context = first.context
        self.context.sni_callback = self._select

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        current = self._files.current()
        if current is not None and current.context is not connection.context:
            connection.context = current.context
        return None

    @property
    def files(self) -> ReloadingFiles[ServerCertificate | None]:
        return self._files

    @property
    def not_after(self) -> float | None:
        """When the certificate now served expires (the last good one)."""
        served = self._files.last_good
        return served.not_after if served is not None else None

    def collect(self) -> Iterator[Sample]:
        yield Sample(metrics.TLS_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS, "", self.not_after)
