"""The JSON API (/api/v1) for SREs and tools such as `hostcollector top`.

Every answer is JSON, errors included ({"error": {"status": 404, "message": "..."}}), with a 4xx
for anything the caller got wrong. A source being down is data (GET /api/v1/sources), never a
5xx. Which VMs, GPUs and VFs a caller sees is decided by the scope of its token (auth.py).
"""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from hostcollector import views
from hostcollector.auth import Scope
from hostcollector.model import Snapshot
from hostcollector.reloading import WatchedFile

if TYPE_CHECKING:
    from hostcollector.tls import ReloadingServerTls

PREFIX = "/api/v1"
# Set by the auth middleware on every request it lets through.
SCOPE = web.RequestKey("scope", Scope)
SNAPSHOT = web.RequestKey("snapshot", Snapshot)


@dataclass(frozen=True)
class ServedFiles:
    """The HTTP side's own files, for /api/v1/sources: those re-read on change, and the TLS
    certificate it presents. Read from their owners: the collector does not know them."""

    watched: tuple[WatchedFile, ...] = ()
    tls: ReloadingServerTls | None = None


SERVED_FILES = web.AppKey("served_files", ServedFiles)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(document: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


def wants_gzip(accept_encoding: str) -> bool:
    return any(part.split(";")[0].strip() == "gzip" for part in accept_encoding.split(","))


class AnswerCache:
    """The current snapshot's list answers, each built once (and gzipped once, for clients
    that ask): listing 1,000 VMs costs ~7 ms of the event loop (in which no scrape is
    answered) and 1.4 MB, and `top` asks every 2 s per viewer."""

    MAX_ANSWERS = 256  # distinct (endpoint, tenant, filter, encoding) answers per snapshot

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._bodies: dict[tuple[str | None, ...], bytes] = {}

    def response(
        self, request: web.Request, key: tuple[str | None, ...], build: Callable[[], Any]
    ) -> web.Response:
        snapshot = request[SNAPSHOT]
        if snapshot is not self._snapshot:
            self._snapshot, self._bodies = snapshot, {}
        gzipped = wants_gzip(request.headers.get("Accept-Encoding", ""))
        body = self._bodies.get((*key, "gzip") if gzipped else key)
        if body is None:
            body = self._bodies.get(key) or orjson.dumps(build(), option=orjson.OPT_NON_STR_KEYS)
            self._keep(key, body)
            if gzipped:
                body = gzip.compress(body, compresslevel=1)
                self._keep((*key, "gzip"), body)
        response = web.Response(body=body, content_type="application/json")
        if gzipped:
            response.headers["Content-Encoding"] = "gzip"
        return response

    def _keep(self, key: tuple[str | None, ...], body: bytes) -> None:
        if len(self._bodies) < self.MAX_ANSWERS:
            self._bodies[key] = body


ANSWERS = web.AppKey("answers", AnswerCache)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response({"error": {"status": status, "message": message}}, status)
    if headers:
        response.headers.update(headers)
    return response


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _scope(request: web.Request) -> Scope:
    return request[SCOPE]


def _snapshot(request: web.Request) -> Snapshot:
    return request[SNAPSHOT]


def _params(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once, all of them known."""
    found: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise ApiError(400, f"unknown query parameter {key!r}; known: {known}")
        if key in found:
            raise ApiError(400, f"query parameter {key!r} given twice")
        found[key] = value
    return found


def _tenant(request: web.Request, params: dict[str, str]) -> str | None:
    """The tenant the answer is limited to: the token's, or the `tenant` filter (which a
    tenant-scoped token may only set to its own tenant). "" selects unattributed ones."""
    scope = _scope(request)
    wanted = params.get("tenant")
    if scope.tenant is None:
        return wanted
    if wanted is not None and wanted != scope.tenant:
        raise ApiError(403, f"token {scope.name!r} may only see tenant {scope.tenant!r}")
    return scope.tenant


def _host_only(request: web.Request) -> None:
    scope = _scope(request)
    if scope.tenant is not None:
        raise ApiError(
            403, f"token {scope.name!r} is scoped to one tenant; this is the host's view"
        )


def _envelope(snapshot: Snapshot, **document: Any) -> dict[str, Any]:
    # When each source last read its data: what a client needs to turn two answers' counters
    # into rates (VFs and GPUs carry no time of their own). Timestamps only, for every scope.
    sampled_at = {s.name: s.last_success_timestamp_seconds for s in snapshot.sources}
    return {"snapshot_timestamp": snapshot.taken_at, "source_sampled_at": sampled_at, **document}


async def list_vms(request: web.Request) -> web.Response:
    params = _params(request, ("tenant", "state"))
    state = params.get("state")
    if state is not None and state not in views.VM_STATES.values():
        raise ApiError(
            400, f"unknown state {state!r}; known: {', '.join(views.VM_STATES.values())}"
        )
    snapshot, tenant = _snapshot(request), _tenant(request, params)
    return request.app[ANSWERS].response(
        request,
        ("vms", tenant, state),
        lambda: _envelope(snapshot, vms=views.vms(snapshot, tenant, state)),
    )


async def one_vm(request: web.Request) -> web.Response:
    _params(request, ())
    uuid = request.match_info["uuid"].lower()
    snapshot = _snapshot(request)
    detail = views.vm_detail(snapshot, uuid, _scope(request).tenant)
    if detail is None:
        # The same answer for "no such VM" and "not yours": existence is not disclosed.
        raise ApiError(404, f"no VM {uuid} on this host")
    return json_response(_envelope(snapshot, vm=detail))


async def list_gpus(request: web.Request) -> web.Response:
    params = _params(request, ("tenant",))
    snapshot, tenant = _snapshot(request), _tenant(request, params)
    return request.app[ANSWERS].response(
        request, ("gpus", tenant), lambda: _envelope(snapshot, gpus=views.gpus(snapshot, tenant))
    )


async def list_vfs(request: web.Request) -> web.Response:
    params = _params(request, ("tenant",))
    snapshot, tenant = _snapshot(request), _tenant(request, params)
    return request.app[ANSWERS].response(
        request, ("vfs", tenant), lambda: _envelope(snapshot, vfs=views.vfs(snapshot, tenant))
    )


async def list_tenants(request: web.Request) -> web.Response:
    _params(request, ())
    snapshot = _snapshot(request)
    return json_response(
        _envelope(snapshot, tenants=views.tenants(snapshot, _scope(request).tenant))
    )


async def one_tenant(request: web.Request) -> web.Response:
    _params(request, ())
    tenant_id = request.match_info["tenant"]
    _tenant(request, {"tenant": tenant_id})
    snapshot = _snapshot(request)
    detail = views.tenant_detail(snapshot, tenant_id)
    if detail is None:
        raise ApiError(404, f"no VM, GPU or VF of tenant {tenant_id!r} on this host")
    return json_response(_envelope(snapshot, tenant=detail))


async def list_sources(request: web.Request) -> web.Response:
    _params(request, ())
    _host_only(request)
    snapshot = _snapshot(request)
    served = request.app.get(SERVED_FILES) or ServedFiles()
    document = views.sources(
        snapshot,
        files=[(w.name, w.files.reloads_total, w.files.errors_total) for w in served.watched],
        tls_certificate_not_after=served.tls.not_after if served.tls else None,
    )
    return json_response(_envelope(snapshot, **document))


async def index(request: web.Request) -> web.Response:
    _params(request, ())
    return json_response({"endpoints": [f"{PREFIX}/{path}" for path in ENDPOINTS]})


ENDPOINTS = {
    "vms": list_vms,
    "vms/{uuid}": one_vm,
    "gpus": list_gpus,
    "vfs": list_vfs,
    "tenants": list_tenants,
    "tenants/{tenant}": one_tenant,
    "sources": list_sources,
}


def api_app(served_files: ServedFiles) -> web.Application:
    """The JSON API as an application of its own, mounted at PREFIX: its routes, its answer
    cache, the HTTP side's files it reports, and JSON for every error under it (an unknown path
    or method included: aiohttp resolves those in this app). The host app's authentication
    runs first and puts the scope and the snapshot on the request."""
    app = web.Application(middlewares=[json_errors])
    app[ANSWERS] = AnswerCache()
    app[SERVED_FILES] = served_files
    app.router.add_get("", index)
    for path, handler in ENDPOINTS.items():
        app.router.add_get(f"/{path}", handler)
    return app


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under /api, every error is JSON: ours, aiohttp's 404/405, and anything unexpected."""
    if not request.path.startswith("/api"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return json_error(exc.status, exc.reason, headers)
