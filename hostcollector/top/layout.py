"""Text layout, pure: history + view + width -> the lines of one frame (`frame`), which
`--once` prints and the curses loop draws. Widths are terminal cells (text.cells), not
characters: an escaped name is longer than it was, a CJK one twice as wide."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hostcollector.top.documents import Documents, Source
from hostcollector.top.rows import (
    NO_TENANT,
    History,
    Row,
    View,
    gpu_mean,
    sort_rows,
    tenant_rows,
    vm_rows,
)
from hostcollector.top.text import cells, clip, pad, visible

SHORT_TENANT = 8
FULL_TENANT = 32
KEYS_HINT = "keys: q quit  c m d n g v N sort by cpu mem disk net gpu vf name  r reverse  t tenants"


BYTE_UNITS = ("K", "M", "G", "T", "P")


def human_bytes(value: float | None) -> str:
    """1024-based, at most 4 characters plus the unit: 512, 1.5K, 256M, 12G."""
    if value is None:
        return "-"
    if value < 1024:
        return f"{value:.0f}"
    for unit in BYTE_UNITS:
        value /= 1024
        if value < 1024 or unit == BYTE_UNITS[-1]:
            break
    return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"


def cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def count(value: int | None) -> str:
    return "-" if value is None else str(value)


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def note(row: Row) -> str:
    if not row.summed:
        flags = ["quarantined"] if row.quarantined else []
        if row.age is not None:
            flags.append(f"{age(row.age)} old")
        return " ".join(flags)
    flags = [f"{row.quarantined} quarantined"] if row.quarantined else []
    if row.stale:
        flags.append(f"{row.stale} stale")
    return ", ".join(flags)


@dataclass(frozen=True)
class Column:
    title: str
    width: int
    cell: Callable[[Row], str]
    right: bool = True


# The columns after the name (and, per VM, the tenant and state), in both views.
FIGURES = (
    Column("CPU", 5, lambda r: cores(r.cpu)),
    Column("VCPU", 4, lambda r: count(r.vcpus)),
    Column("MEM", 5, lambda r: human_bytes(r.memory)),
    Column("RSS", 5, lambda r: human_bytes(r.rss)),
    Column("RD/s", 5, lambda r: human_bytes(r.disk_read)),
    Column("WR/s", 5, lambda r: human_bytes(r.disk_write)),
    Column("RX/s", 5, lambda r: human_bytes(r.net_rx)),
    Column("TX/s", 5, lambda r: human_bytes(r.net_tx)),
    Column("GPU", 3, lambda r: str(len(r.gpus)) if r.gpus else "-"),
    Column("GPU%", 4, lambda r: percent(gpu_mean(r))),
    Column("VFRX/s", 6, lambda r: human_bytes(r.vf_rx)),
    Column("VFTX/s", 6, lambda r: human_bytes(r.vf_tx)),
)
NOTE = Column("NOTE", 0, note, right=False)  # width 0: the rest of the line


def _tenant_label(tenant: str, width: int) -> str:
    return clip(tenant or NO_TENANT, width)


def columns(view: View, rows: Sequence[Row], width: int) -> list[Column]:
    """The table's columns; tenant IDs in full if the row still fits `width`, else shortened."""
    fixed = sum(c.width + 1 for c in FIGURES)
    if view.tenants:
        name_width = max([cells(r.name) for r in rows] + [len("TENANT")])
        if fixed + name_width > width:
            name_width = max(SHORT_TENANT, len("TENANT"))
        name = Column("TENANT", name_width, lambda r: r.name, right=False)
        return [name, Column("VMS", 4, lambda r: str(r.vms)), *FIGURES, NOTE]
    name_width = min(max([cells(r.name) for r in rows] + [len("NAME")]), FULL_TENANT)
    state = Column("STATE", 8, lambda r: r.state, right=False)
    tenant_width = FULL_TENANT
    if name_width + tenant_width + state.width + 3 + fixed > width:
        tenant_width = SHORT_TENANT
    tenant = Column("TENANT", tenant_width, lambda r: _tenant_label(r.tenant, tenant_width), False)
    name = Column("NAME", name_width, lambda r: r.name, right=False)
    return [name, tenant, state, *FIGURES, NOTE]


def table_line(entries: Sequence[tuple[Column, str]]) -> str:
    """One line of the table from each column's text, cut or padded to the column's width."""
    return " ".join(
        pad(text, column.width, right=column.right) for column, text in entries
    ).rstrip()


def table(view: View, rows: Sequence[Row], width: int) -> list[str]:
    shown = columns(view, rows, width)
    lines = [table_line([(c, c.title) for c in shown])]
    lines += [table_line([(c, c.cell(row)) for c in shown]) for row in rows]
    return lines


def source_status(source: Source) -> str:
    if source.up:
        return f"{source.name} up {age(source.last_success_age)} ago"
    since = (
        "never up" if source.last_success_age is None else f"ok {age(source.last_success_age)} ago"
    )
    error = f": {source.last_error}" if source.last_error else ""
    return f"{source.name} DOWN ({since}{error})"


def sources_line(documents: Documents | None) -> str:
    if documents is None:
        return "sources: -"
    if documents.sources is None:
        return "sources: not visible to this token"
    return "sources: " + (", ".join(map(source_status, documents.sources)) or "none")


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def title_line(url: str, now: float, view: View, documents: Documents | None) -> str:
    order = "ascending" if (view.sort == "name") != view.reverse else "descending"
    parts = [f"hostcollector top  {url}  {clock(now)}"]
    if documents is not None:
        tenants = {vm.tenant for vm in documents.vms if vm.tenant}
        parts.append(
            f"{len(documents.vms)} VMs  {len(tenants)} tenants  "
            f"{documents.gpus} GPUs  {len(documents.vfs)} VFs"
        )
    parts.append(f"sort: {view.sort} {order}  view: {'tenants' if view.tenants else 'VMs'}")
    return "  ".join(parts)


def frame(
    history: History,
    view: View,
    width: int,
    *,
    url: str,
    now: float,
    error: str | None = None,
    hint: bool = False,
) -> list[str]:
    """The whole screen as lines of at most `width` cells: title, sources, the last fetch's
    error if it failed, the keys (with `hint`), a blank line, then the table (its first line
    names the columns). `error` may quote the server: it is shown `visible`, like the
    documents' text."""
    url = visible(url)
    documents = history.latest
    lines = [title_line(url, now, view, documents), sources_line(documents)]
    if error is not None:
        shown = f" (showing data from {clock(documents.fetched_at)})" if documents else ""
        lines.append(f"error: {visible(error)}{shown}")
    if hint:
        lines.append(KEYS_HINT)
    lines.append("")
    if documents is None:
        lines.append(f"waiting for {url}")
    else:
        rows = vm_rows(history)
        if view.tenants:
            rows = tenant_rows(rows)
        lines += table(view, sort_rows(rows, view), width)
    return [clip(line, width).rstrip() for line in lines]


def frame_from(
    documents: Sequence[Documents], view: View, width: int, *, url: str, now: float
) -> list[str]:
    """The frame after fetching `documents` in turn (two: rates between them)."""
    history = History()
    for found in documents:
        history = history.advance(found)
    return frame(history, view, width, url=url, now=now)
