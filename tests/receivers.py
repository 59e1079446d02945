"""Real Prometheus remote-write receivers for end-to-end tests, and a tenant gateway.

* `PrometheusReceiver`: Debian's `prometheus` (2.42) with `--web.enable-remote-write-receiver`.
* `VictoriaMetricsReceiver`: Debian's `victoria-metrics` (1.79.5, single node).
* `TenantGateway`: an in-process stand-in for a multi-tenant distributor (Grafana Mimir /
  Cortex), forwarding each tenant's writes to its own receiver.

A receiver keeps its data directory and port across `stop()` / `start()`, so a test can take it
away for a while and bring it back with what it stored before. Every process started here is
stopped by `close()` / the context manager, and by an atexit guard if a test forgets.

What the receivers accept (measured, see the tests in tests/test_receivers.py):

* Prometheus 2.42 appends per series in order only (out-of-order ingestion is off by default and
  left off here). A sample older than its series' newest one ("out of order sample"), the newest
  timestamp again with another value ("duplicate sample for timestamp"), or a sample more than
  about an hour older than the newest sample in the head block ("out of bounds") fails the
  whole request with HTTP 400, and none of its samples is stored. So resending a request that
  was stored already gets a 400 unless it holds only each series' newest sample. Samples minutes
  old are accepted if they come after their series' newest, also after a restart (the WAL is
  replayed on start). Visible to queries as soon as the POST returned.
* VictoriaMetrics 1.79.5 accepts any order and any age within `-retentionPeriod` (204), and
  keeps every copy of a resent sample (no deduplication without `-dedup.minScrapeInterval`, not
  set here): `samples()` then lists that timestamp twice. New rows become searchable about 10 s
  after the POST returned; the query helpers call `/internal/force_flush` first, so a sample is
  visible to them as soon as its POST returned. Queries are evaluated `-search.latencyOffset`
  (30 s by default, at least 1 s) before now unless given a time; a query at a time less than
  that from now is evaluated at now - offset unless `nocache=1`: the helpers set
  `-search.latencyOffset=0s`, always pass a time, and add `nocache=1`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time as _time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Self

import yaml
from aiohttp import ClientError, ClientSession, ClientTimeout, web

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 10.0

SeriesKey = frozenset[tuple[str, str]]


class ReceiverError(RuntimeError):
    """A receiver did not start, or answered a query with an error."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST `body`; the status and the response text, also for an HTTP error status."""
    return http_request(url, "POST", body, headers)


def http_request(
    url: str, method: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, str]:
    """The status and the response text of one request, also for an HTTP error status."""
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            text = exc.read().decode(errors="replace")
        raise ReceiverError(f"GET {url}: HTTP {exc.code}: {text}") from None


# Everything started and not yet stopped, for the atexit guard.
_LIVE: set[Receiver | TenantGateway] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for thing in live:
        with contextlib.suppress(Exception):
            thing.close()


class _Started:
    """`with X(...) as x`: started on entry, closed on exit."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Receiver(_Started):
    """One receiver process, with its data directory, log file and port kept across restarts."""

    kind: ClassVar[str]
    binary: ClassVar[str]
    ready_path: ClassVar[str]
    write_path: ClassVar[str] = "/api/v1/write"
    query_params: ClassVar[dict[str, str]] = {}  # added to every query API request

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.data_path = self.directory / "data"
        self.log_path = self.directory / f"{self.kind}.log"
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.write_url = self.url + self.write_path
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start (again, on the same directory and port) and wait until it is ready."""
        if self.running:
            return self
        self._reap()
        executable = shutil.which(self.binary)
        if executable is None:
            raise ReceiverError(f"{self.binary} is not installed (.ci/bootstrap installs it)")
        command = [executable, *self.command()]
        if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
            # Dies with the test process even where no finally or atexit handler runs
            # (SIGKILL, os._exit). Only from the main thread: the signal fires when the
            # *thread* that started the child ends.
            command = ["setpriv", "--pdeathsig", "KILL", "--", *command]
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap()
        stamp = _time.strftime("%Y-%m-%dT%H:%M:%S")
        self._log_file.write(f"--- {stamp} harness: {' '.join(command)}\n".encode())
        self._log_file.flush()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        self.starts += 1
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = _time.monotonic() + READY_TIMEOUT
        while True:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise ReceiverError(f"{self.kind} exited with {code}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if _time.monotonic() > deadline:
                raise ReceiverError(
                    f"{self.kind} not ready at {self.url}{self.ready_path} after "
                    f"{READY_TIMEOUT:.0f} s:\n{self.log_tail()}"
                )
            _time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited after 10 s. The data stays."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._reap()

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def close(self) -> None:
        """Stop for good (the directory stays for post-mortems)."""
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url}, {self.directory})"

    def log(self) -> str:
        """Everything it logged, over all its starts."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # Queries: the Prometheus HTTP API, which both receivers answer.

    def _before_query(self) -> None:
        """Make everything written so far visible (VictoriaMetrics buffers)."""

    def api(self, path: str, params: dict[str, str] | list[tuple[str, str]]) -> Any:
        """GET /api/v1/`path`; its `data`, raising unless the status is success."""
        items = list(params.items()) if isinstance(params, dict) else list(params)
        query = urllib.parse.urlencode([*items, *self.query_params.items()])
        url = f"{self.url}/api/v1/{path}?{query}"
        body = _get_json(url)
        if body.get("status") != "success":
            raise ReceiverError(f"GET {url}: {body}")
        return body["data"]

    def query(self, promql: str, time: float | None = None) -> list[dict[str, Any]]:
        """The result list of an instant query at `time` (seconds; default now, to the
        millisecond: VictoriaMetrics' own default is the last whole second)."""
        self._before_query()
        params = {"query": promql, "time": _seconds(_time.time() if time is None else time)}
        result: list[dict[str, Any]] = self.api("query", params)["result"]
        return result

    def samples(
        self, selector: str, start: float, end: float
    ) -> dict[SeriesKey, list[tuple[float, float]]]:
        """Every raw sample (seconds, value) from `start` to `end` (both included) of the series
        `selector` matches, by label set (with __name__). A range vector: no interpolation."""
        window = math.ceil(end - start) + 1  # a whole number of seconds, covering both ends
        self._before_query()
        data = self.api("query", {"query": f"{selector}[{window}s]", "time": _seconds(end)})
        if data["resultType"] != "matrix":
            raise ReceiverError(f"{selector}[{window}s]: a {data['resultType']}, not a matrix")
        out: dict[SeriesKey, list[tuple[float, float]]] = {}
        for row in data["result"]:
            points = [(float(t), float(v)) for t, v in row["values"] if start <= float(t) <= end]
            if points:
                out[frozenset(row["metric"].items())] = points
        return out

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        """The label sets (sorted) of the series `match` selects with samples from `start` to
        `end`. VictoriaMetrics looks series up by whole days: it may list more."""
        self._before_query()
        params = [("match[]", match), ("start", _seconds(start)), ("end", _seconds(end))]
        result: list[dict[str, str]] = self.api("series", params)
        return sorted(result, key=lambda labels: sorted(labels.items()))

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """The values of `label` (over the receiver's default time range: for VictoriaMetrics
        the last day), optionally only on the series `match` selects."""
        self._before_query()
        params = [("match[]", match)] if match is not None else []
        result: list[str] = self.api(f"label/{urllib.parse.quote(label)}/values", params)
        return sorted(result)


def _seconds(t: float) -> str:
    return f"{t:.3f}"


class PrometheusReceiver(Receiver):
    """Prometheus with its remote-write receiver (POST /api/v1/write), and no scrape jobs."""

    kind = "prometheus"
    binary = "prometheus"
    ready_path = "/-/ready"

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        scrape_configs: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(directory, port)
        self.scrape_configs = scrape_configs or []

    def command(self) -> list[str]:
        config = self.directory / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {"global": {"scrape_interval": "1m"}, "scrape_configs": self.scrape_configs}
            )
        )
        return [
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_path}",
            "--storage.tsdb.retention.time=10y",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-remote-write-receiver",
        ]


class VictoriaMetricsReceiver(Receiver):
    """Single-node VictoriaMetrics (POST /api/v1/write, the Prometheus query API)."""

    kind = "victoria-metrics"
    binary = "victoria-metrics"
    ready_path = "/health"
    # Without nocache, a query whose time is within -search.latencyOffset (at least 1 s) of
    # now is evaluated at now - 1 s and the result relabelled with the time asked for.
    query_params = {"nocache": "1"}

    def command(self) -> list[str]:
        return [
            f"-storageDataPath={self.data_path}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            "-retentionPeriod=10y",
            # Evaluate queries near now (0s counts as 1 s, see query_params); cache nothing.
            "-search.latencyOffset=0s",
            "-search.disableCache",
        ]

    def _before_query(self) -> None:
        # Rows sit in in-memory buffers for ~10 s before they are searchable.
        with urllib.request.urlopen(self.url + "/internal/force_flush", timeout=HTTP_TIMEOUT):
            pass


class TenantGateway(_Started):
    """The tenancy contract of a Mimir / Cortex distributor, in front of one receiver per tenant.

    * `POST /api/v1/push` with the tenant in `X-Scope-OrgID` (no header: 401 "no org id"),
    * `POST /tenants/{tenant}/api/v1/write`, the tenant in the path.

    The body goes unchanged, with its Content-Encoding, Content-Type and remote-write version
    headers, to `backends[tenant]` (a receiver's write_url); the answer is the backend's status
    and body (502 if the backend cannot be reached). A tenant with no backend is answered 204
    and recorded in `unknown_tenants`.
    `forwarded` counts the requests forwarded per tenant.
    """

    HEADER = "X-Scope-OrgID"
    PUSH_PATH = "/api/v1/push"
    _FORWARDED_HEADERS = ("Content-Encoding", "Content-Type", "X-Prometheus-Remote-Write-Version")

    def __init__(self, backends: dict[str, str]) -> None:
        self.backends = dict(backends)
        self.forwarded: dict[str, int] = dict.fromkeys(self.backends, 0)
        self.unknown_tenants: list[str] = []
        self.rejected = 0  # requests answered 401
        self.port = 0
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    def push_url(self) -> str:
        return self.url + self.PUSH_PATH

    def tenant_url(self, tenant: str) -> str:
        return f"{self.url}/tenants/{urllib.parse.quote(tenant, safe='')}/api/v1/write"

    def start(self) -> Self:
        if self._loop is not None:
            return self
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="tenant-gateway", daemon=True)
        self._thread.start()
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(READY_TIMEOUT)
        except BaseException:
            self.close()
            raise
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post(self.PUSH_PATH, self._push)
        app.router.add_post("/tenants/{tenant}/api/v1/write", self._tenant_write)
        self._session = ClientSession(timeout=ClientTimeout(total=HTTP_TIMEOUT))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def _push(self, request: web.Request) -> web.Response:
        tenant = request.headers.get(self.HEADER, "")
        if not tenant:
            self.rejected += 1
            return web.Response(status=401, text="no org id\n")
        return await self._forward(tenant, request)

    async def _tenant_write(self, request: web.Request) -> web.Response:
        return await self._forward(request.match_info["tenant"], request)

    async def _forward(self, tenant: str, request: web.Request) -> web.Response:
        body = await request.read()
        backend = self.backends.get(tenant)
        if backend is None:
            self.unknown_tenants.append(tenant)
            return web.Response(status=204)
        self.forwarded[tenant] += 1
        headers = {h: request.headers[h] for h in self._FORWARDED_HEADERS if h in request.headers}
        assert self._session is not None
        try:
            async with self._session.post(backend, data=body, headers=headers) as response:
                answer = await response.read()
                return web.Response(
                    status=response.status,
                    body=answer,
                    content_type=response.content_type if answer else None,
                )
        except (ClientError, TimeoutError) as exc:  # the backend is down (an outage test)
            return web.Response(status=502, text=f"backend {backend}: {exc!r}\n")

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            if thread is not None and thread.is_alive():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(STOP_TIMEOUT)
                loop.call_soon_threadsafe(loop.stop)
                thread.join(STOP_TIMEOUT)
            if not loop.is_running():
                loop.close()
        finally:
            self._loop = self._thread = None
            with _LIVE_LOCK:
                _LIVE.discard(self)


class VmAuth(Receiver):
    """Debian's `vmauth` (1.79.5) with a given -auth.config: the tenant's read gateway.

    What it does, measured (tests/test_read_path.py): a request without `Authorization` is
    answered 401, an unknown token 400 ("cannot find the provided auth token"), a path no
    `url_map` entry of the user matches 400 ("missing route"); paths are matched after `..`,
    `//` and percent-encoded slashes are resolved. `%{NAME}` in the config is replaced by the
    environment variable NAME.
    """

    kind = "vmauth"
    binary = "vmauth"
    ready_path = "/health"

    def __init__(self, directory: Path, auth_config: Path, port: int | None = None) -> None:
        super().__init__(directory, port)
        self.auth_config = auth_config

    def command(self) -> list[str]:
        # vmauth serves /-/reload, /metrics, /flags and /debug/pprof itself, to anyone, unless
        # each has an auth key: a tenant must reach none of them.
        self.admin_key = secrets.token_hex(16)
        own = ("reloadAuthKey", "metricsAuthKey", "flagsAuthKey", "pprofAuthKey")
        return [
            f"-auth.config={self.auth_config}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            *(f"-{flag}={self.admin_key}" for flag in own),
        ]

    def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        params: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """The status and text of one request through the gateway, with `token` as bearer."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return http_request(self.url + path + query, method, body, sent)

    def read(self, token: str, path: str, params: list[tuple[str, str]], **kwargs: Any) -> Any:
        """GET /api/v1/`path` as the tenant whose key `token` is; its `data` (ReceiverError
        unless it succeeded)."""
        status, text = self.request("GET", f"/api/v1/{path}", token, params, **kwargs)
        if status != 200:
            raise ReceiverError(f"GET {path} {params}: HTTP {status}: {text}")
        body = json.loads(text)
        if body.get("status") != "success":
            raise ReceiverError(f"GET {path} {params}: {body}")
        return body["data"]
