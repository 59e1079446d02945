"""Queue files are input: whatever bytes sit in a queue file, recovery and `read` raise nothing
past ValueError / OSError, and no Batch claims more samples than its body could hold."""

from __future__ import annotations

import contextlib
import tempfile
import zlib
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostcollector.remote_write.queue import (
    FORMAT_VERSION,
    MAX_SAMPLES_PER_BODY_BYTE,
    DiskQueue,
    NewBatch,
    encode_header,
)

NAME = "0000000000000003.batch"
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=5,
)
# headers close to real ones, so that the checks past the JSON parse are reached: any field
# may be missing or of any type, counts anywhere in range and past it
FIELD_VALUES = {
    "v": st.one_of(st.just(FORMAT_VERSION), st.just(1), JSON_VALUES),
    "tenant": st.one_of(st.text(max_size=20), JSON_VALUES),
    "samples": st.one_of(INT64, JSON_VALUES),
    "oldest_ms": st.one_of(INT64, JSON_VALUES),
    "newest_ms": st.one_of(st.integers(min_value=0, max_value=2**40), JSON_VALUES),
    "crc32": st.one_of(st.integers(min_value=-1, max_value=2**32), JSON_VALUES),
}


@st.composite
def queue_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "checksummed"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    body = draw(st.binary(max_size=64))
    fields = {key: draw(values) for key, values in FIELD_VALUES.items() if draw(st.booleans())}
    if draw(st.booleans()):
        fields["crc32"] = zlib.crc32(body)
    # checksummed: a valid header checksum, so that only the field checks stand
    line = encode_header(fields) if kind == "checksummed" else orjson.dumps(fields)
    return line + b"\n" + body


def check_queue(directory: Path) -> None:
    queue = DiskQueue(directory, 1 << 20)
    assert queue.unusable is None
    for batch in list(queue._all.values()):
        body_size = (directory / batch.name).stat().st_size - (
            (directory / batch.name).read_bytes().index(b"\n") + 1
        )
        assert 0 <= batch.samples <= MAX_SAMPLES_PER_BODY_BYTE * body_size
        assert isinstance(batch.tenant, str) and batch.oldest_ms >= 0
        with contextlib.suppress(ValueError, OSError):  # any other exception fails the test
            queue.read(batch)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=queue_files())
def test_any_queue_file_is_recovered_or_dropped(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        (directory / NAME).write_bytes(data)
        check_queue(directory)


@settings(max_examples=300, deadline=None)
@given(data=queue_files())
def test_a_file_replaced_after_recovery_is_refused_by_read(data: bytes) -> None:
    """The sender reads a batch long after recovery: the file may be anything by then."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        queue = DiskQueue(directory, 1 << 20)
        (batch,) = queue.write([NewBatch("acme", 3, 1000, 1000, b"y" * 40)])
        (directory / batch.name).write_bytes(data)
        try:
            body = queue.read(batch)
        except (ValueError, OSError):
            return
        assert body == data.partition(b"\n")[2] and batch.samples == 3
