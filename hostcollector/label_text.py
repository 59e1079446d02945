"""Prometheus label text: `name="value",...` with values escaped, so no VM name, path or tenant
id can break a line or forge a series."""

from __future__ import annotations

from collections.abc import Iterable


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
