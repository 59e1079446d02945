"""`hostcollector top` against tenant-controlled text (issue 16): domain names, tenant IDs,
device names and error messages holding newlines, terminal escapes, bidi overrides, C1
controls, wide and zero-width characters.

Every line top prints (`--once`) or draws (the curses loop's `Live.lines`) must be one line,
free of control and format characters, with the table's columns still aligned; the odd
characters show as visible escapes (`\\n`, `\\x1b`, `\\u202e`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostcollector import cli
from hostcollector.app import build_app
from hostcollector.collector import Collector, Exposition
from hostcollector.config import Config
from hostcollector.model import Snapshot, SourceStatus
from hostcollector.top import client as top_client
from hostcollector.top import documents as top_documents
from hostcollector.top import layout as top_layout
from hostcollector.top import rows as top_rows
from hostcollector.top import screen as top_screen
from tests.served import serve
from tests.snapshots import LAB_ATTRIBUTION, TAKEN_AT
from tests.test_top import HOSTCOLLECTOR, Tmux, rows_of, table, two_snapshots

# What a terminal acts on rather than shows: controls (C0, DEL, C1), format characters (bidi
# overrides and isolates, zero-width joiners), lone surrogates, line and paragraph separators.
UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}
# The VMs of the lab recording, in the order two_snapshots() lists them.
VM_NAMES = ("hc-lab-a1", "hc-lab-b1", "hc-lab-c1", "hc-lab-orphan")

# (what a tenant wrote, what top shows)
CASES = [
    ("evil\nname", r"evil\nname"),
    ("\x1b[2J\x1b[Hclear", r"\x1b[2J\x1b[Hclear"),
    ("\x1b]0;title\x07", r"\x1b]0;title\x07"),
    ("cr\roverwrite", r"cr\roverwrite"),
    ("\u202b\u202eevil\u202c", r"\u202b\u202eevil\u202c"),
    ("\u2066iso\u2069\u202a\u202d", r"\u2066iso\u2069\u202a\u202d"),
    ("c1\x9b31m\x85\x90", r"c1\x9b31m\x85\x90"),
    ("del\x7f\x00\x08", r"del\x7f\x00\x08"),
    ("ls\u2028ps\u2029", r"ls\u2028ps\u2029"),
    ("tab\there", r"tab\there"),
    ("zw\u200bj\u200d\ufeff", r"zw\u200bj\u200d\ufeff"),
    ("tag\U000e0041", r"tag\U000e0041"),
    # a backslash is escaped too, so that no name can pass for another one's escape
    ("back\\nslash", r"back\\nslash"),
    # wide (two cells each) and combining (zero cells) characters are shown as they are
    ("名前-東京", "名前-東京"),
    ("cafe\u0301", "cafe\u0301"),
]
CASE_IDS = [repr(raw)[1:-1][:20] for raw, _ in CASES]


def cells(text: str) -> int:
    """Terminal columns, as wcwidth(3) counts them: wide characters 2, combining marks 0."""
    marks = [c for c in text if unicodedata.category(c) in ("Mn", "Me")]
    wide = [c for c in text if unicodedata.east_asian_width(c) in ("W", "F") and c not in marks]
    return len(text) - len(marks) + len(wide)


def assert_safe(lines: list[str]) -> None:
    for line in lines:
        unsafe = [c for c in line if unicodedata.category(c) in UNSAFE]
        assert not unsafe, (line, unsafe)
        assert len((line + "\n").splitlines()) == 1, line
        line.encode()  # no lone surrogate: print() would raise


def table_lines(lines: list[str]) -> list[str]:
    return lines[lines.index("") + 1 :]


def assert_aligned(lines: list[str], title: str) -> None:
    """`title`'s column (right-aligned) ends at the same terminal column on every table line."""
    rows = table_lines(lines)
    position = rows[0].split().index(title)
    ends = {
        cells(line[: list(re.finditer(r"\S+", line))[position].end()]) for line in rows
    }  # the names in CASES hold no space once shown, so words are cells
    assert len(ends) == 1, rows


def hostile(snapshot: Snapshot, raw: str) -> Snapshot:
    """Every VM named `raw` + its number, tenants `raw` + A (a1) and + B (b1, c1), the orphan
    unattributed; the libvirt source down with `raw` in its error."""
    tenants = (raw + "A", raw + "B", raw + "B", "")
    vms = tuple(
        dataclasses.replace(
            vm, stats=dataclasses.replace(vm.stats, name=f"{raw}{i}"), tenant_id=tenant
        )
        for i, (vm, tenant) in enumerate(zip(snapshot.vms, tenants, strict=True))
    )
    assert [vm.stats.name[len(raw) :] for vm in vms] == ["0", "1", "2", "3"]
    down = SourceStatus(
        "libvirt", False, 3, 0.1, TAKEN_AT - 20, f"domain '{raw}': refused", (("connect", 2),)
    )
    others = tuple(s for s in snapshot.sources if s.name != "libvirt")
    return dataclasses.replace(snapshot, vms=vms, sources=(down, *others))


def ordered(snapshot: Snapshot) -> Snapshot:
    """The lab's VMs in VM_NAMES order, so that hostile() numbers them the same each time."""
    by_name = {vm.stats.name: vm for vm in snapshot.vms}
    return dataclasses.replace(snapshot, vms=tuple(by_name[name] for name in VM_NAMES))


@pytest.fixture(scope="module")
def daemon() -> Iterator[Callable[[str], tuple[top_documents.Documents, ...]]]:
    """The daemon's app over HTTP; call it with a tenant's text to read two hostile
    snapshots (rates between them) as top reads them."""
    config = Config(attribution=LAB_ATTRIBUTION)
    collector = Collector(config, sources={})
    first, second = (ordered(s) for s in two_snapshots())
    collector.exposition = Exposition(first)
    with serve(build_app(config, collector)) as url:
        client = top_client.make_client(url)

        def read(raw: str) -> tuple[top_documents.Documents, ...]:
            collector.exposition = Exposition(hostile(first, raw))
            before = top_client.fetch(client)
            collector.exposition = Exposition(hostile(second, raw))
            return before, top_client.fetch(client)

        yield read


@contextmanager
def serving(raw: str) -> Iterator[str]:
    """The daemon's app serving a hostile snapshot (rates unknown: one sample each)."""
    config = Config(attribution=LAB_ATTRIBUTION)
    collector = Collector(config, sources={})
    collector.exposition = Exposition(hostile(ordered(two_snapshots()[1]), raw))
    with serve(build_app(config, collector)) as url:
        yield url


def once_lines(docs: tuple[top_documents.Documents, ...], view: top_rows.View) -> list[str]:
    """What `--once` prints: the frame after the fetches."""
    return top_layout.frame_from(docs, view, 200, url="http://hv1:9730", now=TAKEN_AT)


def live_lines(docs: tuple[top_documents.Documents, ...], view: top_rows.View) -> list[str]:
    """What the curses loop draws."""
    live = top_screen.Live(top_client.make_client("http://hv1:9730"), view)
    for found in docs:
        live.take(found)
    return live.lines(200)


@pytest.mark.parametrize("build", [once_lines, live_lines], ids=["once", "curses"])
@pytest.mark.parametrize(("raw", "shown"), CASES, ids=CASE_IDS)
def test_tenant_text_is_shown_escaped_one_row_per_vm_aligned(
    daemon: Callable[[str], tuple[top_documents.Documents, ...]],
    build: Callable[[tuple[top_documents.Documents, ...], top_rows.View], list[str]],
    raw: str,
    shown: str,
) -> None:
    docs = daemon(raw)
    lines = build(docs, top_rows.View(sort="name"))
    assert_safe(lines)
    rows = table(lines)
    assert len(table_lines(lines)) == 1 + len(VM_NAMES)
    assert [r["NAME"] for r in rows] == [f"{shown}{i}" for i in range(4)]
    assert [r["TENANT"] for r in rows] == [shown + "A", shown + "B", shown + "B", "(none)"]
    assert [r["CPU"] for r in rows] == ["1.25", "0.10", "0.50", "-"]
    assert_aligned(lines, "CPU")
    assert lines[1].startswith("sources: libvirt DOWN (ok ")
    assert f" ago: domain '{shown}': refused)" in lines[1]

    lines = build(docs, top_rows.View(sort="name", tenants=True))
    assert_safe(lines)
    assert len(table_lines(lines)) == 1 + 3
    assert [r["TENANT"] for r in table(lines)] == ["(none)", shown + "A", shown + "B"]
    assert_aligned(lines, "CPU")


def test_names_that_would_look_alike_once_escaped_stay_apart(
    daemon: Callable[[str], tuple[top_documents.Documents, ...]],
) -> None:
    """A tenant cannot pass for another by writing out the other's escape: "x\\n" (with a
    newline) and "x\\\\n" (with a backslash) are two tenants, shown differently."""
    first, second = daemon("x\n")
    third, fourth = daemon("x\\n")
    mixed = tuple(
        dataclasses.replace(a, vms=(a.vms[0], b.vms[0]))
        for a, b in ((first, third), (second, fourth))
    )
    lines = once_lines(mixed, top_rows.View(sort="name", tenants=True))
    assert [r["TENANT"] for r in table(lines)] == [r"x\\nA", r"x\nA"]


def test_once_prints_hostile_names_from_the_daemon_safely(
    daemon: Callable[[str], tuple[top_documents.Documents, ...]],
) -> None:
    """`hostcollector top --once`, the program, reading the daemon's app over HTTP; its
    stdout is what reaches the SRE's terminal."""
    raw = "\x1b]0;pwned\x07\x1b[2J\r\nevil\u202e\x9b名"
    with serving(raw) as url:
        for extra in ([], ["--tenants"]):
            result = subprocess.run(
                [HOSTCOLLECTOR, "top", "--url", url, "--interval", "0.05", "--once", *extra],
                capture_output=True, timeout=20, check=False,
            )  # fmt: skip
            assert (result.returncode, result.stderr) == (0, b"")
            out = result.stdout.decode()
            lines = out.splitlines()
            assert_safe(lines)
            assert len(table_lines(lines)) == 1 + (3 if extra else 4)
            assert r"\x1b]0;pwned\x07\x1b[2J\r\nevil\u202e\x9b名" in out


def test_once_to_a_terminal_that_cannot_show_a_name_does_not_crash(
    daemon: Callable[[str], tuple[top_documents.Documents, ...]],
) -> None:
    """A name in a script the terminal's encoding lacks (here ASCII) is escaped, not a crash."""
    with serving("名前") as url:
        result = subprocess.run(
            [HOSTCOLLECTOR, "top", "--url", url, "--interval", "0.05", "--once"],
            capture_output=True, timeout=20, check=False,
            env={**os.environ, "PYTHONIOENCODING": "ascii"},
        )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, b"")
    assert r"\u540d\u524d0" in result.stdout.decode("ascii")


def test_the_live_view_draws_one_row_per_vm_in_a_real_terminal() -> None:
    """The curses loop in tmux: ncurses would act on a newline (the rest of the row on the
    next line) and pass bidi overrides on to the terminal."""
    tmux = Tmux()
    shown = r"\x1b]0;pwned\x07\nevil\u202e"
    with serving("\x1b]0;pwned\x07\nevil\u202e") as url:
        command = f"{shlex.quote(HOSTCOLLECTOR)} top --url {url} --interval 1 --sort name"
        try:
            tmux("new-session", "-d", "-s", "top", "-x", "200", "-y", "30", command)
            screen = tmux.wait_for("the first frame", lambda s: "running" in s)
            assert rows_of(screen) == ["NAME", *(f"{shown}{i}" for i in range(4))], screen
            assert_safe(screen.splitlines())
            tmux("send-keys", "-t", "top", "t")
            screen = tmux.wait_for("the tenant view", lambda s: "view: tenants" in s)
            assert rows_of(screen) == ["TENANT", "(none)", shown + "A", shown + "B"], screen
        finally:
            tmux("kill-server", check=False)


@pytest.fixture(scope="module")
def hostile_errors() -> Iterator[str]:
    """A server answering with the API's error envelope, a tenant's text in its message."""

    async def refuse(request: web.Request) -> web.Response:
        message = "no VM '\x1b[2J\x1b]0;pwned\x07\nforged line\u202e'"
        return web.json_response({"error": {"message": message}}, status=500)

    app = web.Application()
    app.router.add_get("/api/v1/vms", refuse)
    with serve(app) as url:
        yield url


def test_a_hostile_error_message_is_shown_escaped(
    hostile_errors: str, daemon: Callable[[str], tuple[top_documents.Documents, ...]]
) -> None:
    live = top_screen.Live(top_client.make_client(hostile_errors), top_rows.View())
    for found in daemon("ok"):
        live.take(found)
    live.take(top_client.fetch_or_error(live.client))
    lines = live.lines(200)
    assert_safe(lines)
    assert lines[2].startswith(
        r"error: /api/v1/vms: HTTP 500: no VM '\x1b[2J\x1b]0;pwned\x07\nforged line\u202e'"
    )
    assert len(table_lines(lines)) == 5


def test_once_prints_a_hostile_error_message_escaped(
    hostile_errors: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["top", "--url", hostile_errors, "--interval", "0.05", "--once"]) == 1
    out = capsys.readouterr().out
    assert_safe(out.splitlines())
    assert r"\x1b]0;pwned\x07\nforged line\u202e'" in out


# --- any text at all ---------------------------------------------------------------------------

# Any character (lone surrogates included), with the dangerous ones drawn often.
TEXT = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from("\n\r\t\x1b\x07\x00\x7f\x85\x9b\u200b\u202e\u2028\u2066\ufeff\\名\u0301"),
    ),
    max_size=40,
)
# What a field of the JSON may hold instead of a string, in an answer not the API's.
ANY_VALUE = st.one_of(TEXT, st.none(), st.integers(), st.lists(TEXT, max_size=2))


@st.composite
def api_answers(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str | None, int]:
    """The four API answers, twice (for rates), with any text in every field a tenant's text
    can reach; and the error text and the number of tenants top must show."""
    tenants = [draw(ANY_VALUE), draw(ANY_VALUE)]
    fields = {key: draw(ANY_VALUE) for key in ("name", "state", "disk", "nic", "pf")}
    vms: list[dict[str, Any]] = [
        {
            "uuid": draw(TEXT) + str(i),
            "name": fields["name"],
            "tenant_id": tenants[i],
            "state": fields["state"],
            "vcpu_current": 2,
            "memory": {"current_bytes": 2**30, "rss_bytes": 2**29},
            "blocks": [{"device": fields["disk"], "read_bytes": 0, "write_bytes": 0}],
            "interfaces": [{"device": fields["nic"], "receive_bytes": 0, "transmit_bytes": 0}],
        }
        for i in range(2)
    ]
    vfs = [{"vm_uuid": vms[0]["uuid"], "vf": {"pf": fields["pf"], "index": draw(ANY_VALUE)}}]
    source = {"name": draw(ANY_VALUE), "up": False, "last_error": draw(ANY_VALUE)}
    answers = []
    for step in range(2):
        for vm in vms:
            vm.update(cpu_time_seconds=10.0 * step, sampled_at=TAKEN_AT + step)
        answers.append(
            {
                "vms": {"snapshot_timestamp": TAKEN_AT + step, "vms": [dict(vm) for vm in vms]},
                "gpus": {"gpus": [{"vm_uuid": vms[1]["uuid"], "gpu": {}}]},
                "vfs": {"vfs": vfs},
                "sources": {"sources": [source]},
            }
        )
    error = draw(st.none() | TEXT)
    shown_tenants = len({t if isinstance(t, str) else "" for t in tenants})
    return answers, error, shown_tenants


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    found=api_answers(),
    width=st.sampled_from([0, 1, 7, 40, 80, 200]),
    tenants=st.booleans(),
)
def test_any_tenant_text_renders_safe_single_lines(
    found: tuple[list[dict[str, Any]], str | None, int], width: int, tenants: bool
) -> None:
    answers, error, shown_tenants = found
    history = top_rows.History()
    for answer in answers:
        history = history.advance(
            top_documents.parse_documents(
                answer["vms"], answer["gpus"], answer["vfs"], answer["sources"], fetched_at=0.0
            )
        )
    view = top_rows.View(tenants=tenants)
    lines = top_layout.frame(
        history, view, width, url="http://hv1:9730", now=TAKEN_AT, error=error, hint=True
    )
    assert_safe(lines)
    rows = shown_tenants if tenants else 2
    # title, sources, the error, the keys, a blank line, the column titles, the rows
    assert len(lines) == 2 + (error is not None) + 1 + 1 + 1 + rows
    assert all(cells(line) <= width for line in lines)
