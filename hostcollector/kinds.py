"""What a kind of entity is (a VM, a vCPU, a VF, a GPU, ...), and the one place where a tenant's
scope is applied to it.

Each kind is declared once, in metrics.py next to its families: its label names, how its items
come out of a snapshot (each with its label text, built once per snapshot view, and its owner),
its owner rule and its families. The Prometheus renderer, the JSON views, remote write's tenant
routing, the README's metric table and the scoping property test all read those declarations;
a new kind declared there is rendered, scoped and tested without another edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from hostcollector.label_text import escape_label_value

if TYPE_CHECKING:
    from hostcollector.family import Family
    from hostcollector.model import Snapshot

# Whose an entity is:
# - "vm": its VM's tenant ("" for an unattributed VM): the VM itself, its vCPUs, disks, NICs;
# - "assignee": the tenant of the VM it is assigned to, else the host's ("" ): a VF, a GPU passed
#   through whole, a vGPU; a GPU shared by several tenants' vGPUs is the host's;
# - "host": the host's alone, never in a tenant's scope (a PF).
Owner = Literal["vm", "assignee", "host"]


class Item(NamedTuple):
    """One entity as the renderers see it."""

    labels: str  # the kind's label text, escaped: `vm_uuid="...",tenant_id="..."`
    tenant: str  # its owner: a tenant id, or "" for the host's or nobody's
    record: Any  # what the kind's families read


_new_item: Callable[[type[Item], tuple[str, str, Any]], Item] = tuple.__new__
Label = tuple[str, Callable[[Any], str]]  # a label's name, and how to read its value


@dataclass(frozen=True)
class EntityKind:
    """A kind of entity. A top-level kind reads its `records` from the snapshot and its owner
    with `tenant_of`; a child kind (a VM's vCPUs) reads `children` of each parent record, is
    its parent's, and its labels follow its parent's."""

    name: str
    owner: Owner
    labels: tuple[Label, ...]  # its own labels, in order
    families: tuple[Family, ...]  # in exposition order
    # A top-level kind's records: the Snapshot field holding them, or a function deriving them.
    snapshot_field: str | None = None
    records: Callable[[Snapshot], Iterable[Any]] | None = None
    tenant_of: Callable[[Any], str] | None = None
    parent: EntityKind | None = None
    children: Callable[[Any], Iterable[Any]] | None = None
    counted_as: str | None = None  # its count per tenant in /api/v1/tenants, under this name

    @property
    def label_names(self) -> tuple[str, ...]:
        own = tuple(name for name, _ in self.labels)
        return own if self.parent is None else self.parent.label_names + own

    def item(self, record: Any, tenant: str, parent_labels: str = "") -> Item:
        # ~1 us per item and made for every entity of every snapshot: hence the plain loop, the
        # escape only where needed, and the tuple built in C (a NamedTuple's Python __new__
        # alone cost ~10 ms per 25,000 items).
        parts = []
        for opening, get in self._openings:
            value = get(record)
            if "\\" in value or '"' in value or "\n" in value:
                value = escape_label_value(value)
            parts.append(opening + value + '"')
        text = parts[0] if len(parts) == 1 else ",".join(parts)
        return _new_item(
            Item, (f"{parent_labels},{text}" if parent_labels else text, tenant, record)
        )

    @cached_property
    def _openings(self) -> tuple[tuple[str, Callable[[Any], str]], ...]:
        return tuple((f'{name}="', get) for name, get in self.labels)


def records_of(kind: EntityKind, snapshot: Snapshot) -> Iterable[Any]:
    """A top-level kind's records, all of them."""
    if kind.records is not None:
        return kind.records(snapshot)
    if kind.snapshot_field is not None:
        records: Iterable[Any] = getattr(snapshot, kind.snapshot_field)
        return records
    raise TypeError(f"kind {kind.name}: neither a snapshot_field nor records")


# Each kind with its items in one scope: what a render reads. Built once per snapshot and scope
# and shared by its renders (text, OpenMetrics), so label text is made once per item.
View = list[tuple["EntityKind", list[Item]]]


def visible(owner: str, scope: str | None) -> bool:
    """The tenant scope, in its one place: None sees everything, a tenant only its own. ("" as a
    scope is the API's filter for what no tenant owns.)"""
    return scope is None or owner == scope


def items_of(kind: EntityKind, snapshot: Snapshot, scope: str | None = None) -> list[Item]:
    """The kind's items that `scope` may see."""
    return _scoped(kind, snapshot, scope, {})


def in_scope(
    kinds: Sequence[EntityKind], snapshot: Snapshot, scope: str | None
) -> Iterator[tuple[EntityKind, list[Item]]]:
    """Each kind with the items `scope` may see, in declaration order; a kind that is the host's
    alone is left out of a tenant's view entirely (not even its family headers)."""
    built: dict[str, list[Item]] = {}
    for kind in kinds:
        if scope is not None and kind.owner == "host":
            continue
        yield kind, _scoped(kind, snapshot, scope, built)


def _scoped(
    kind: EntityKind, snapshot: Snapshot, scope: str | None, built: dict[str, list[Item]]
) -> list[Item]:
    if kind.name in built:
        return built[kind.name]
    if scope is not None and kind.owner == "host":
        found: list[Item] = []
    elif kind.parent is not None and kind.children is not None:
        # A child is its parent's: in scope with it, out with it.
        children = kind.children
        found = [
            kind.item(child, parent.tenant, parent.labels)
            for parent in _scoped(kind.parent, snapshot, scope, built)
            for child in children(parent.record)
        ]
    elif kind.tenant_of is not None and scope is None:  # the host's view: all of them
        tenant_of = kind.tenant_of
        found = [kind.item(record, tenant_of(record)) for record in records_of(kind, snapshot)]
    elif kind.tenant_of is not None:
        tenant_of = kind.tenant_of
        found = [
            kind.item(record, owner)
            for record in records_of(kind, snapshot)
            if visible(owner := tenant_of(record), scope)
        ]
    else:
        raise TypeError(f"kind {kind.name}: needs records and tenant_of, or parent and children")
    built[kind.name] = found
    return found
