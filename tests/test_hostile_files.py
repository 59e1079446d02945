"""Watched files as hostile input: what the control plane or a rotator puts at a watched path
(a FIFO, a device, a huge file, a file with a key twice) is refused with a reason, never read
on the event loop, and the last good version stays."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostcollector import reloading
from hostcollector.reloading import ReloadingFiles, json_object, read_bytes
from hostcollector.tenant_map import MAX_MAP_BYTES, TenantMapFile, parse_tenant_map

VM = "d0d0d0d0-0000-4000-8000-000000000001"


def counting_loader(path: Path) -> tuple[ReloadingFiles[bytes], list[bytes]]:
    loads: list[bytes] = []

    def load() -> bytes:
        loads.append(read_bytes(str(path)))
        return loads[-1]

    return ReloadingFiles("test file", (str(path),), load, b""), loads


def test_a_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    os.mkfifo(path)
    tenant_map = TenantMapFile(str(path))
    finished = threading.Event()

    def check() -> None:
        tenant_map.current()
        finished.set()

    # Before the fix this open() blocked until a writer came: forever.
    threading.Thread(target=check, daemon=True).start()
    assert finished.wait(5), "reading a FIFO blocked"
    assert tenant_map.current() == {}
    assert "is not a regular file" in (tenant_map.status().last_error or "")


def test_read_bytes_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_bytes(str(fifo))  # opened without blocking, then refused
    with pytest.raises(ValueError, match="not a regular file"):
        read_bytes("/dev/zero")  # endless bytes
    with pytest.raises(ValueError, match="not a regular file"):
        read_bytes(str(tmp_path))


def test_a_path_with_endless_bytes_keeps_the_last_good_map(tmp_path: Path) -> None:
    link = tmp_path / "tenants.json"
    link.write_text(json.dumps({VM: "t-1"}))
    tenant_map = TenantMapFile(str(link))
    assert tenant_map.current()[VM].tenant_id == "t-1"
    link.unlink()
    link.symlink_to("/dev/zero")
    assert tenant_map.current()[VM].tenant_id == "t-1"
    assert "is not a regular file" in (tenant_map.status().last_error or "")


def test_a_map_over_its_size_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({VM: "t-1"}))
    tenant_map = TenantMapFile(str(path))
    tenant_map.current()
    entry = '"%s": "tenant-with-a-long-enough-name",'
    body = "".join(entry % f"{i:08x}-0000-4000-8000-000000000000" for i in range(100_000))
    path.write_text("{" + body.rstrip(",") + "}")
    assert path.stat().st_size > MAX_MAP_BYTES
    assert tenant_map.current()[VM].tenant_id == "t-1"
    assert f"more than the {MAX_MAP_BYTES} allowed" in (tenant_map.status().last_error or "")


def test_a_chmod_alone_triggers_a_reload(tmp_path: Path) -> None:
    """A file made readable with chmod (mtime, size and inode unchanged) is read again: the
    daemon runs as its own user, and a control plane that fixes a mode must not need a restart
    (root reads any mode, so the test counts the loads)."""
    path = tmp_path / "tokens.yml"
    path.write_text("tokens: []\n")
    files, loads = counting_loader(path)
    files.current()
    mtime = path.stat().st_mtime_ns
    os.chmod(path, 0o640)
    os.utime(path, ns=(mtime, mtime))
    files.current()
    assert len(loads) == 2
    os.chown(path, 0, 1)
    files.current()
    assert len(loads) == 3
    files.current()
    assert len(loads) == 3  # nothing changed: not read


def frozen_timestamps(monkeypatch: pytest.MonkeyPatch, mtime_ns: int) -> None:
    """Every file's mtime and ctime read as `mtime_ns`: a filesystem whose clock did not tick
    between two writes (4 ms at HZ=250, a second on some network filesystems)."""
    real_identity = reloading._identity

    def identity(path: str) -> tuple[int, ...]:
        return (*real_identity(path)[:6], mtime_ns, mtime_ns)

    monkeypatch.setattr(reloading, "_identity", identity)


def test_a_same_size_rewrite_within_one_clock_tick_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI found this: a client certificate rotated a few ms after the first was read, its
    # stat identical (same inode, size and timestamps), was never loaded.
    frozen_timestamps(monkeypatch, time.time_ns())
    path = tmp_path / "cert.pem"
    path.write_bytes(b"one")
    files, loads = counting_loader(path)
    assert files.current() == b"one"
    path.write_bytes(b"two")
    assert files.current() == b"two"
    assert files.current() == b"two"
    assert loads == [b"one", b"two"], "an unchanged racy state is compared, not reloaded"


def test_a_same_tick_rewrite_is_found_after_the_state_stops_being_racy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The TLS files are checked every 5 s, longer than the racy window: the check that finds
    # the state no longer racy still compares content once.
    frozen_timestamps(monkeypatch, time.time_ns() - reloading.RACY_WINDOW_NS + 200_000_000)
    path = tmp_path / "cert.pem"
    path.write_bytes(b"one")
    files, loads = counting_loader(path)
    assert files.current() == b"one"
    path.write_bytes(b"two")
    time.sleep(0.3)
    assert files.current() == b"two"
    assert files.current() == b"two"
    assert loads == [b"one", b"two"]


def test_checks_on_the_event_loop_run_in_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("one")
    threads: list[str] = []

    def load() -> bytes:
        threads.append(threading.current_thread().name)
        return read_bytes(str(path))

    files = ReloadingFiles("test file", (str(path),), load, b"")

    async def run() -> bytes:
        assert files.current() == b"one"  # the first load: in the caller, at start
        path.write_text("two!")
        value = files.current()  # the last good one while the thread reads
        deadline = time.monotonic() + 5
        while value != b"two!" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            value = files.current()
        return value

    assert asyncio.run(run()) == b"two!"
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("hc-reload")


def test_a_loader_bug_costs_the_reload_not_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")

    def load() -> bytes:
        raise TypeError("'<' not supported between instances of 'int' and 'str'")

    files = ReloadingFiles("test file", (str(path),), load, b"empty")
    assert files.current() == b"empty"
    assert files.last_error is not None and "TypeError" in files.last_error


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"%s": "t-1", "%s": "t-2"}' % (VM.encode(), VM.encode()), "keys given twice"),
        (
            b'{"%s": "t-1", "%s": "t-2"}' % (VM.encode(), VM.upper().encode()),
            "the same VM is listed twice",
        ),
        (b'{"%s": {"tenant_id": "t", "tenant_id": "u"}}' % VM.encode(), "keys given twice"),
        (b'{"%s": NaN}' % VM.encode(), "NaN is not a JSON value"),
        (b"[" * 100_000, "nested too deep"),
        (b'{"\xff": "t"}', "not valid UTF-8"),
        ('{"a": "t"}'.encode("utf-16"), "not valid UTF-8"),
    ],
)
def test_ambiguous_or_hostile_maps_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tenant_map(data)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=512))
def test_any_bytes_give_a_map_or_a_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_tenant_map(data)


@given(st.dictionaries(st.text(max_size=40), JSON_VALUES, max_size=6))
def test_any_json_object_gives_a_map_or_a_value_error(document: dict[str, object]) -> None:
    try:
        claims = parse_tenant_map(json.dumps(document).encode())
    except ValueError:
        return
    for uuid, claim in claims.items():
        assert uuid == uuid.lower()
        assert claim.tenant_id and len(claim.tenant_id) <= 256


@given(st.binary(max_size=256))
def test_json_object_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        json_object(data, "not an object")
