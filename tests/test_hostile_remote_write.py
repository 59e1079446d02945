"""Remote write against hostile inputs and a hostile environment (issue 16): tenant ids that
would leave their tenant space, edited and misplaced queue files, a full and a read-only disk,
a store answering with an endless error body. Real files, real mounts, real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from hostcollector.config import RemoteWriteEndpointConfig
from hostcollector.remote_write.queue import DiskQueue, NewBatch
from hostcollector.remote_write.routing import Route, UnsafeRoute, tenant_id_problem
from hostcollector.remote_write.sender import EndpointSender, parse_tenant_ids
from tests.served import serve

SAMPLES = 7


def new_batch(tenant: str, samples: int = SAMPLES, body: bytes = b"x" * 100) -> NewBatch:
    return NewBatch(tenant, samples, 1000, 1000, body)


def endpoint(url: str, split: bool = True, **options: object) -> RemoteWriteEndpointConfig:
    return RemoteWriteEndpointConfig(
        name="t",
        url=url,
        split_by_tenant=split,
        timeout_seconds=5.0,
        **options,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def recording_store() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A store that takes every POST; yields its URL and the (raw path, X-Scope-OrgID) seen."""
    seen: list[tuple[str, str | None]] = []

    async def take(request: web.Request) -> web.Response:
        await request.read()
        seen.append((request.raw_path, request.headers.get("X-Scope-OrgID")))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", take)
    with serve(app) as url:
        yield url, seen


async def drain(sender: EndpointSender, timeout: float = 5.0) -> None:
    sender.kick()
    deadline = time.monotonic() + timeout
    while sender.queue.batches:
        if time.monotonic() > deadline:
            raise AssertionError(f"not delivered: {sender.status()}")
        await asyncio.sleep(0.02)


# -- 1. tenant ids stay inside their tenant space -------------------------------------------


@pytest.mark.parametrize(
    "tenant", [".", "..", "__mimir_cluster", "acme\n", "a/b", "a b", "", "x" * 151, "a%2e"]
)
def test_tenant_ids_a_store_would_refuse_or_resolve_are_refused(tenant: str) -> None:
    assert tenant_id_problem(tenant) is not None
    with pytest.raises(ValueError):
        parse_tenant_ids(json.dumps({"acme": tenant}).encode())


@pytest.mark.parametrize("tenant", ["acme", "42", "42:7", "a.b", "...", "!-_.*'()", "x" * 150])
def test_tenant_ids_every_store_takes_are_accepted(tenant: str) -> None:
    assert tenant_id_problem(tenant) is None
    assert parse_tenant_ids(json.dumps({"acme": tenant}).encode()) == {"acme": tenant}


def test_dot_segment_tenants_never_reach_another_tenant_space(tmp_path: Path) -> None:
    """Before: "." went to /tenants/api/v1/push (the space of a tenant named "api") and ".."
    to /api/v1/push (the store's default space)."""
    with recording_store() as (url, seen):
        templates = {
            "path": endpoint(f"{url}/tenants/{{tenant}}/api/v1/push"),
            "query": endpoint(f"{url}/api/v1/push?tenant={{tenant}}"),
            "header": endpoint(f"{url}/api/v1/push", headers={"X-Scope-OrgID": "{tenant}"}),
        }

        async def run(config: RemoteWriteEndpointConfig) -> dict[str, int]:
            queue = DiskQueue(tmp_path / config.url.split("/")[-1], 1 << 20)
            queue.add(queue.write([new_batch("."), new_batch(".."), new_batch("acme")]))
            sender = EndpointSender(config, queue)
            try:
                await drain(sender)
            finally:
                await sender.close()
            return dict(sender.status().samples_dropped_by_reason)

        for config in templates.values():
            assert asyncio.run(run(config)) == {"invalid_tenant": 2 * SAMPLES}
    assert sorted(seen) == sorted(
        [
            ("/tenants/acme/api/v1/push", None),
            ("/api/v1/push?tenant=acme", None),
            ("/api/v1/push", "acme"),
        ]
    )


def test_a_mapped_dot_segment_id_is_never_sent(tmp_path: Path) -> None:
    """The control plane's map is input too: a file mapping a tenant to ".." is rejected whole
    and the tenant waits (unmapped), nothing sent to the store's default space."""
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"acme": ".."}))
    with recording_store() as (url, seen):
        config = endpoint(f"{url}/tenants/{{tenant}}/api/v1/push", tenant_ids_file=str(ids))

        async def run() -> str | None:
            queue = DiskQueue(tmp_path / "q", 1 << 20)
            queue.add(queue.write([new_batch("acme")]))
            sender = EndpointSender(config, queue)
            try:
                sender.kick()
                await asyncio.sleep(0.5)
                return sender.status().last_error
            finally:
                await sender.close()

        last_error = asyncio.run(run())
    assert seen == []
    assert last_error is not None and "not in" in last_error


TENANT_TEXT = st.one_of(
    st.text(alphabet="abcAZ09!-_.*'():", min_size=0, max_size=160),
    st.sampled_from([".", "..", "...", ".:", ":.", "%2e", "%2E%2e", "__mimir_cluster"]),
    st.text(max_size=40),  # anything at all, "/", "?", "#", "%", unicode, control characters
)
MARK = "TENANTMARK"
TEMPLATES = [
    "http://store:8080/tenants/{tenant}/api/v1/push",
    "https://store/api/v1/write?tenant={tenant}&extra=1",
    "http://store/prefix.{tenant}/write",
    "http://store/{tenant}",
    "http://store/a/{tenant}/b/{tenant}/c?x={tenant}",
    "http://store/a b/é/{tenant}/",
]


@settings(max_examples=400, deadline=None)
@given(tenant=TENANT_TEXT, template=st.sampled_from(TEMPLATES))
def test_every_accepted_tenant_stays_inside_its_url_template(tenant: str, template: str) -> None:
    route = Route(template, {"X-Scope-OrgID": "{tenant}"})
    try:
        final = route.url(tenant)
    except UnsafeRoute:
        assert tenant_id_problem(tenant) is not None
        return
    assert tenant_id_problem(tenant) is None
    shape = URL(template.replace("{tenant}", MARK))
    assert (final.scheme, final.raw_host, final.port) == (shape.scheme, shape.raw_host, shape.port)
    # the tenant is exactly one path segment (or one query value) where {tenant} was, the
    # rest of the template unchanged
    for got, want, sep in (
        (final.raw_path, shape.raw_path, "/"),
        (final.raw_query_string, shape.raw_query_string, "&"),
    ):
        got_parts, want_parts = got.split(sep), want.split(sep)
        assert len(got_parts) == len(want_parts)
        for got_part, want_part in zip(got_parts, want_parts, strict=True):
            assert unquote(got_part) == unquote(want_part).replace(MARK, tenant)
            assert unquote(got_part) not in (".", "..")
    # what a normalising parse (a client or server resolving dot segments) makes of the URL is
    # the same path: nothing to resolve
    assert URL(str(final)).path == final.path
    assert URL(str(final)).query_string == final.query_string
    assert route.headers(tenant) == {"X-Scope-OrgID": tenant}


def test_a_template_with_the_tenant_outside_path_and_query_is_refused() -> None:
    for template in (
        "http://{tenant}.store/x",
        "http://store/x#{tenant}",
        "http://store/%7Btenant%7D",
    ):
        with pytest.raises(ValueError):
            Route(template, {})
    problems = RemoteWriteEndpointConfig(
        name="t", url="http://{tenant}.store/x", split_by_tenant=True
    ).problems()
    assert any("path or the query" in p for p in problems)


# -- 2. an invalid tenant is logged once, its drops all counted -----------------------------


def test_an_invalid_tenant_is_logged_once_not_at_every_tick(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with recording_store() as (url, seen):
        config = endpoint(f"{url}/tenants/{{tenant}}/api/v1/push")

        async def run() -> dict[str, int]:
            queue = DiskQueue(tmp_path, 1 << 20)
            sender = EndpointSender(config, queue)
            try:
                for _ in range(4):  # four ticks
                    queue.add(queue.write([new_batch("not a tenant"), new_batch("..")]))
                    await drain(sender)
            finally:
                await sender.close()
            return dict(sender.status().samples_dropped_by_reason)

        with caplog.at_level(logging.WARNING):
            dropped = asyncio.run(run())
    assert seen == []
    assert dropped == {"invalid_tenant": 8 * SAMPLES}
    warned = [r.getMessage() for r in caplog.records if "tenant id" in r.getMessage()]
    assert len(warned) == 2, warned  # one per tenant


# -- 3. the on-disk queue ------------------------------------------------------------------


def batch_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_an_edited_sample_count_is_never_trusted(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, 1 << 20)
    (written,) = queue.write([new_batch("acme")])
    path = tmp_path / written.name
    line, _, body = path.read_bytes().partition(b"\n")
    header = orjson.loads(line)
    header["samples"] = 10**18
    path.write_bytes(orjson.dumps(header) + b"\n" + body)
    again = DiskQueue(tmp_path, 1 << 20)
    assert again.samples < 10**18  # before: 10**18, and samples_sent_total jumped by as much
    assert again.batches == 0 and again.files_dropped == {"corrupt": 1}
    assert batch_files(tmp_path) == []


def test_an_old_format_file_is_dropped_and_counted(tmp_path: Path) -> None:
    # as the previous version wrote it: no checksum over the header, so its count is not trusted
    body = b"x" * 100
    line = orjson.dumps(
        {"v": 1, "tenant": "", "samples": 5, "oldest_ms": 1, "newest_ms": 1, "crc32": 0}
    )
    (tmp_path / "0000000000000004.batch").write_bytes(line + b"\n" + body)
    queue = DiskQueue(tmp_path, 1 << 20)
    assert queue.batches == 0 and queue.files_dropped == {"old_format": 1}
    assert queue.write([new_batch("")])[0].seq == 5  # numbering continues past it


def test_a_directory_with_a_batch_name_is_skipped_not_fatal(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path, 1 << 20)
    queue.add(queue.write([new_batch("a"), new_batch("b")]))
    (tmp_path / "0000000000000007.batch").mkdir()
    (tmp_path / "0000000000000008.batch.tmp").mkdir()
    (tmp_path / "0000000000000009.batch").symlink_to("/etc/hostname")
    again = DiskQueue(tmp_path, 1 << 20)
    assert again.unusable is None  # before: the whole queue unusable
    assert again.batches == 2 and sorted(again.tenants()) == ["a", "b"]
    assert again.files_dropped == {"not_a_file": 3}
    # left alone (not ours to delete), and never reused as a batch's name
    assert again.write([new_batch("a")])[0].seq == 10
    assert (tmp_path / "0000000000000007.batch").is_dir()


def test_a_queue_file_replaced_after_recovery_is_dropped_not_fatal(tmp_path: Path) -> None:
    """Delivery goes on behind a batch whose file became unreadable."""
    with recording_store() as (url, seen):
        config = endpoint(f"{url}/api/v1/write", split=False)

        async def run() -> EndpointSender:
            queue = DiskQueue(tmp_path, 1 << 20)
            first, second = queue.write([new_batch(""), new_batch("")])
            queue.add([first, second])
            (tmp_path / first.name).unlink()
            (tmp_path / first.name).mkdir()
            sender = EndpointSender(config, queue)
            try:
                await drain(sender)
            finally:
                await sender.close()
            return sender

        sender = asyncio.run(run())
    assert len(seen) == 1 and sender.sent_total == SAMPLES
    assert dict(sender.status().samples_dropped_by_reason) == {"corrupt": SAMPLES}


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A real small filesystem (root only): to fill up or to turn read-only."""
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def remount(mountpoint: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mountpoint)], check=True)


def test_a_full_disk_leaves_no_temporary_or_partial_files(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "64k") as disk:
        queue = DiskQueue(disk / "q", 1 << 20)
        for _ in range(3):  # three ticks refused
            with pytest.raises(OSError):
                queue.write([new_batch("a"), new_batch("b", body=os.urandom(100_000))])
        assert batch_files(disk / "q") == []  # before: a .tmp per failed tick, until restart
        queue.add(queue.write([new_batch("a")]))
        assert queue.batches == 1 and len(batch_files(disk / "q")) == 1


def test_a_read_only_disk_does_not_stop_delivery(tmp_path: Path) -> None:
    """Sent batches that cannot be deleted are out of delivery at once and deleted when the
    disk takes writes again. (After a restart on a disk still read-only they are found again
    and sent again: nothing can record that they were sent.)"""
    with tmpfs(tmp_path / "disk", "1m") as disk, recording_store() as (url, seen):
        config = endpoint(f"{url}/api/v1/write", split=False)

        async def run() -> EndpointSender:
            queue = DiskQueue(disk / "q", 1 << 20)
            queue.add(queue.write([new_batch(""), new_batch(""), new_batch("")]))
            remount(disk, "ro")
            sender = EndpointSender(config, queue)
            try:
                await drain(sender)  # before: stopped after the first, which was sent again
                assert len(seen) == 3 and len(batch_files(disk / "q")) == 3
                with pytest.raises(OSError):
                    queue.write([new_batch("")])
                remount(disk, "rw")
                queue.add(queue.write([new_batch("")]))
                await drain(sender)
            finally:
                await sender.close()
            return sender

        sender = asyncio.run(run())
        assert len(seen) == 4 and sender.sent_total == 4 * SAMPLES
        assert batch_files(disk / "q") == []  # the sent ones deleted once the disk allowed it
        assert DiskQueue(disk / "q", 1 << 20).batches == 0  # a restart sends nothing again


# -- 4. a store's error body ------------------------------------------------------------


def test_an_endless_error_body_is_read_only_as_far_as_the_reason(tmp_path: Path) -> None:
    served = {"bytes": 0}

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        status = 400 if request.path.startswith("/reject") else 500
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        chunk = b"out of order sample\x1b[2J\n" + b"E" * 65_000
        with contextlib.suppress(ConnectionError):
            for _ in range(16_000):  # ~1 GB unless the client hangs up
                await response.write(chunk)
                served["bytes"] += len(chunk)
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", endless)
    with serve(app) as url:

        async def run(path: str) -> tuple[float, EndpointSender]:
            queue = DiskQueue(tmp_path / path, 1 << 20)
            queue.add(queue.write([new_batch("")]))
            sender = EndpointSender(endpoint(f"{url}/{path}", split=False), queue)
            began = time.monotonic()
            try:
                sender.kick()
                while sender.last_error is None:
                    await asyncio.sleep(0.01)
                return time.monotonic() - began, sender
            finally:
                await sender.close(grace_seconds=0.1)

        for path, outcome in (("reject", "dropped"), ("fail", "")):
            served["bytes"] = 0
            took, sender = asyncio.run(run(path))
            reason = sender.last_error or ""
            assert reason.startswith(f"HTTP {400 if path == 'reject' else 500} for {SAMPLES}")
            assert outcome in reason and "out of order sample" in reason, reason
            assert len(reason) < 400 and "\x1b" not in reason and "\n" not in reason
            assert took < 2.0, took  # before: the whole body, or the request's timeout
            assert served["bytes"] < 16 * 1024 * 1024, served
