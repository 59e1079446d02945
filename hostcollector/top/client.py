"""Fetching the JSON API over HTTP(S) with urllib: a token, a CA, a client certificate;
every failure is a `FetchError` (shown on screen, retried next refresh), never a crash."""

from __future__ import annotations

import gzip
import http.client
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from hostcollector.top.documents import API, Documents, FetchError, parse_documents


class SetupError(Exception):
    """A command-line option that cannot work (bad URL, unreadable token or certificate)."""


@dataclass(frozen=True)
class Client:
    url: str  # scheme://host:port, no trailing slash
    token: str | None = None
    context: ssl.SSLContext | None = None
    timeout: float = 5.0

    def __repr__(self) -> str:
        # Never show the token, even in a traceback or a debugger.
        return f"Client(url={self.url!r}, token={'***' if self.token else None})"


def read_token(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise SetupError(f"cannot read the token file: {exc}") from exc
    if not token:
        raise SetupError(f"the token file {path} is empty")
    return token


def ssl_context(ca_file: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SetupError(f"cannot load the TLS files: {exc}") from exc
    return context


def make_client(
    url: str,
    *,
    token_file: str | None = None,
    ca_file: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    timeout: float = 5.0,
) -> Client:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SetupError(f"--url must be http://HOST:PORT or https://HOST:PORT, not {url!r}")
    if (cert is None) != (key is None):
        raise SetupError("--cert and --key go together")
    https = parts.scheme == "https"
    if not https and (ca_file or cert):
        # Most likely a typo in the URL; a token would then cross the network in clear.
        raise SetupError("--ca-file, --cert and --key need an https:// URL")
    return Client(
        url=url.rstrip("/"),
        token=read_token(token_file) if token_file else None,
        context=ssl_context(ca_file, cert, key) if https else None,
        timeout=timeout,
    )


def _request(client: Client, path: str) -> tuple[int, bytes]:
    # gzip: a 1,000-VM list is 1.4 MB, ~10x less compressed, for a viewer on another host.
    request = urllib.request.Request(
        client.url + path, headers={"Accept": "application/json", "Accept-Encoding": "gzip"}
    )
    if client.token:
        # Unredirected: if the server ever redirected elsewhere, the token would not follow.
        request.add_unredirected_header("Authorization", f"Bearer {client.token}")
    try:
        with urllib.request.urlopen(request, timeout=client.timeout, context=client.context) as r:
            body = bytes(r.read())
            if r.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            return int(r.status), body
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, _read_quietly(exc)
    except urllib.error.URLError as exc:
        raise FetchError(f"{path}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"{path}: {exc or type(exc).__name__}") from exc


def _read_quietly(response: urllib.error.HTTPError) -> bytes:
    try:
        return bytes(response.read())
    except (OSError, http.client.HTTPException):
        return b""


def _error_message(body: bytes) -> str:
    """The API's {"error": {"message": ...}}, or the start of whatever else came back."""
    try:
        message = orjson.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body[:80].decode(errors="replace").strip()
    return str(message)


def get_json(client: Client, path: str) -> tuple[int, Any]:
    """(status, document) for 2xx and 403; any other answer is a FetchError."""
    status, body = _request(client, path)
    if status == 403:
        return status, None
    if not 200 <= status < 300:
        raise FetchError(f"{path}: HTTP {status}: {_error_message(body)}")
    try:
        return status, orjson.loads(body)
    except ValueError as exc:
        raise FetchError(f"{path}: not JSON: {exc}") from exc


def _get_required(client: Client, name: str) -> Any:
    path = f"{API}/{name}"
    status, document = get_json(client, path)
    if status == 403:
        raise FetchError(f"{path}: HTTP 403: this token may not read it")
    return document


def fetch(client: Client) -> Documents:
    """One refresh: the four documents, parsed. /sources answers 403 to a tenant's token."""
    vms = _get_required(client, "vms")
    gpus = _get_required(client, "gpus")
    vfs = _get_required(client, "vfs")
    _, sources = get_json(client, f"{API}/sources")
    return parse_documents(vms, gpus, vfs, sources, fetched_at=time.time())


def fetch_or_error(client: Client) -> Documents | str:
    try:
        return fetch(client)
    except FetchError as exc:
        return str(exc)
