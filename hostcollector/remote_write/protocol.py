"""Prometheus remote write 1.0 on the wire: a snappy-compressed protobuf `WriteRequest`.

    message WriteRequest { repeated TimeSeries timeseries = 1; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }  // ms since the epoch

Encoded by hand: four fixed messages do not justify a protobuf runtime and generated code,
and the per-series work is a few byte concatenations. Label pairs are encoded once per
distinct label set and reused across the ~30 families a VM's labels appear on.
"""

from __future__ import annotations

import re
import struct

import cramjam

CONTENT_TYPE = "application/x-protobuf"
CONTENT_ENCODING = "snappy"
VERSION_HEADER = ("X-Prometheus-Remote-Write-Version", "0.1.0")

_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")
_DOUBLE = struct.Struct("<d")

LabelPairs = tuple[tuple[str, str], ...]


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64: two's complement, 10 bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return bytes([number << 3 | 2]) + varint(len(payload)) + payload


def encode_label(name: str, value: str) -> bytes:
    return _field(1, _field(1, name.encode()) + _field(2, value.encode()))


def compress(body: bytes) -> bytes:
    """Snappy block format (not framed), as remote write specifies."""
    return bytes(cramjam.snappy.compress_raw(body))


def decompress(body: bytes) -> bytes:
    return bytes(cramjam.snappy.decompress_raw(body))


def parse_labels(text: str) -> LabelPairs:
    """`a="x",b="y\\"z"` as the exposition writes it -> (("a", "x"), ("b", 'y"z'))."""
    return tuple(
        (
            name,
            _UNESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], value)
            if "\\" in value
            else value,
        )
        for name, value in _LABEL_PAIR.findall(text)
    )


pack_value = _DOUBLE.pack  # a sample's value, as `prefix` expects it

# Prometheus's staleness marker: a NaN with this exact bit pattern ends a series at once,
# instead of it lingering for the 5 minutes of query lookback.
STALE_NAN = struct.pack("<Q", 0x7FF0000000000002)


class SeriesEncoder:
    """Encodes exposition series (family name, label text, value) for one timestamp, caching
    each label set's encoding and tenant: a VM's label text repeats on every family it has.
    `external` labels (the endpoint's external_labels) are added to every series that does not
    carry a label of that name itself, as Prometheus does."""

    def __init__(self, external: LabelPairs = ()) -> None:
        self._external = external
        self._names: dict[str, bytes] = {}
        # label text -> (labels sorting before __name__, those after)
        self._label_sets: dict[str, tuple[bytes, bytes]] = {}

    def label_set(self, text: str) -> tuple[bytes, bytes]:
        """The encoded labels that sort before __name__ and those after, each sorted. Before:
        names starting with an upper-case letter (or _ and one)."""
        cached = self._label_sets.get(text)
        if cached is None:
            # An empty value is no label, as in a scrape (the spec: values must not be empty).
            pairs = [(n, v) for n, v in parse_labels(text) if v]
            own = {n for n, _ in pairs}
            pairs += [(n, v) for n, v in self._external if n not in own]
            ordered = sorted(pairs)
            before = b"".join(encode_label(n, v) for n, v in ordered if n < "__name__")
            after = b"".join(encode_label(n, v) for n, v in ordered if n > "__name__")
            cached = self._label_sets[text] = (before, after)
        return cached

    def prefix(self, name: str, labels_text: str, tail_length: int) -> bytes:
        """A TimeSeries' bytes up to its sample's value. The series is then `prefix + packed value (8 bytes) + sample_tail(timestamp)`, whose length is
        `tail_length`: every length inside is known before the value is."""
        name_bytes = self._names.get(name)
        if name_bytes is None:
            name_bytes = self._names[name] = encode_label("__name__", name)
        before, after = self.label_set(labels_text)
        sample_length = 1 + 8 + tail_length
        body_length = len(before) + len(name_bytes) + len(after) + 2 + sample_length
        head = b"\x0a" + varint(body_length) + before + name_bytes + after
        return head + b"\x12" + bytes([sample_length]) + b"\x09"

    def forget(self) -> None:
        """Bound the caches (VMs come and go); called once per snapshot."""
        if len(self._label_sets) > 500_000:
            self._label_sets.clear()


def sample_tail(timestamp_ms: int) -> bytes:
    return b"\x10" + varint(timestamp_ms)
