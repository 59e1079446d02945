"""Remote write's WriteRequest for tests, written from the wire format spec and independent of
hostcollector's encoder: a plain encoder (requests the receiver harness sends) and a decoder
(what tests read back of what hostcollector sends or queues)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

from hostcollector.remote_write.protocol import decompress, encode_label, varint

Series = tuple[dict[str, str], list[tuple[int, float]]]


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2]) + varint(len(payload)) + payload


def encode_write_request(
    series: Iterable[tuple[Sequence[tuple[str, str]], Sequence[tuple[int, float]]]],
) -> bytes:
    """An uncompressed WriteRequest from (labels with __name__, [(timestamp_ms, value)])."""
    return b"".join(
        _field(
            1,
            b"".join(encode_label(n, v) for n, v in sorted(labels))
            + b"".join(
                _field(2, b"\x09" + struct.pack("<d", v) + b"\x10" + varint(ts))
                for ts, v in samples
            ),
        )
        for labels, samples in series
    )


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def _fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    out: list[tuple[int, int, bytes | int]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, wire, value))
        elif wire == 1:
            out.append((number, wire, data[i : i + 8]))
            i += 8
        elif wire == 2:
            length, i = _varint(data, i)
            out.append((number, wire, data[i : i + length]))
            i += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    if i != len(data):
        raise ValueError("truncated message")
    return out


def decode_write_request(body: bytes, compressed: bool = True) -> list[Series]:
    data = decompress(body) if compressed else body
    result = []
    for number, _, ts in _fields(data):
        assert number == 1 and isinstance(ts, bytes)
        labels: dict[str, str] = {}
        names: list[str] = []
        samples = []
        for field, _, part in _fields(ts):
            assert isinstance(part, bytes)
            if field == 1:
                pair = {n: v for n, _, v in _fields(part)}
                name, value = pair[1], pair[2]
                assert isinstance(name, bytes) and isinstance(value, bytes)
                names.append(name.decode())
                labels[name.decode()] = value.decode()
            elif field == 2:
                sample = {n: v for n, _, v in _fields(part)}
                raw, timestamp = sample[1], sample[2]
                assert isinstance(raw, bytes) and isinstance(timestamp, int)
                samples.append((timestamp, struct.unpack("<d", raw)[0]))
        assert names == sorted(names), f"labels not sorted: {names}"
        assert len(names) == len(set(names)), f"duplicate label names: {names}"
        result.append((labels, samples))
    return result


def is_stale(value: float) -> bool:
    return math.isnan(value) and struct.pack("<d", value) == struct.pack("<Q", 0x7FF0000000000002)
