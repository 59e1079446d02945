"""What a metric family is, and one sample of a self-metric: the vocabulary metrics.py declares
with, model.py's snapshot carries and the renderers read. Imports nothing from the package."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

MetricType = Literal["counter", "gauge", "info"]
Number = int | float


@dataclass(frozen=True)
class Family:
    """A metric family. Of an entity kind's families, `value` reads one sample from an item's
    record (None: no sample), or `samples` several, each with the label text it adds (`,a="x"`):
    an info family's descriptive labels, a GPU's ECC counters by type. A self-metric has
    neither: its owner reports its samples (selfmetrics.py)."""

    name: str  # as the samples are named: counters end in _total, info in _info
    kind: MetricType
    help: str
    labels: tuple[str, ...]
    value: Callable[[Any], Number | None] | None = None
    samples: Callable[[Any], Iterable[tuple[str, Number]]] | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One self-metric sample, as its owner reports it (selfmetrics.py)."""

    family: Family  # its declaration in metrics.py, never its name
    labels: str  # label text, values escaped: 'source="libvirt"'; "" for none
    # None: no value now (a gauge not measured yet); the family is still shown, as before.
    value: Number | None
