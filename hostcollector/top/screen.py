"""The terminal: the curses loop (a fetching thread, keys, resize) and `--once`."""

from __future__ import annotations

import contextlib
import curses
import io
import locale
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hostcollector.top.client import Client, SetupError, fetch_or_error, make_client
from hostcollector.top.documents import Documents
from hostcollector.top.layout import frame
from hostcollector.top.rows import SORTS, History, View, apply_key
from hostcollector.top.text import pad

INPUT_POLL_MS = 100
# --once into a pipe or a file: lines are not cut.
UNCUT_WIDTH = 1000


def _fetch_loop(
    client: Client, interval: float, results: queue.Queue[Documents | str], stop: threading.Event
) -> None:
    """In its own thread, so that keys are answered while a slow host is being read."""
    while not stop.is_set():
        started = time.monotonic()
        results.put(fetch_or_error(client))
        stop.wait(max(0.0, interval - (time.monotonic() - started)))


def _draw(screen: curses.window, lines: Sequence[str]) -> None:
    screen.erase()
    height, width = screen.getmaxyx()
    header = lines.index("") + 1 if "" in lines else -1
    for y, line in enumerate(lines[:height]):
        attribute = curses.A_REVERSE if y == header else curses.A_NORMAL
        # Writing the bottom-right cell moves the cursor past the screen: curses writes the
        # character, then reports an error.
        with contextlib.suppress(curses.error):
            screen.addnstr(y, 0, pad(line, width) if y == header else line, width, attribute)
    screen.refresh()


@dataclass
class Live:
    """The curses loop's state: what the latest fetches brought and how it is viewed."""

    client: Client
    view: View
    history: History = field(default_factory=History)
    error: str | None = None

    def take(self, result: Documents | str) -> None:
        if isinstance(result, str):
            self.error = result  # the last good data stays on screen
        else:
            self.history = self.history.advance(result)
            self.error = None

    def lines(self, width: int) -> list[str]:
        return frame(
            self.history,
            self.view,
            width,
            url=self.client.url,
            now=time.time(),
            error=self.error,
            hint=True,
        )


def _key_name(key: int) -> str:
    return chr(key) if 0 <= key < 0x110000 else ""


def _loop(screen: curses.window, live: Live, interval: float) -> None:
    with contextlib.suppress(curses.error):  # a terminal that cannot hide the cursor
        curses.curs_set(0)
    screen.timeout(INPUT_POLL_MS)
    results: queue.Queue[Documents | str] = queue.Queue()
    stop = threading.Event()
    threading.Thread(
        target=_fetch_loop, args=(live.client, interval, results, stop), daemon=True
    ).start()
    try:
        dirty = True
        while True:
            while not results.empty():
                live.take(results.get_nowait())
                dirty = True
            if dirty:
                _draw(screen, live.lines(screen.getmaxyx()[1]))
                dirty = False
            key = screen.getch()
            if key == curses.KEY_RESIZE:
                curses.update_lines_cols()
                dirty = True
            elif key != -1:
                view = apply_key(live.view, _key_name(key))
                if view is None:
                    return
                dirty, live.view = view != live.view, view
    finally:
        stop.set()


def once(client: Client, interval: float, view: View, width: int) -> int:
    """Two fetches `interval` apart, one frame printed; 1 if the last fetch failed."""
    live = Live(client, view)
    live.take(fetch_or_error(client))
    time.sleep(interval)
    live.take(fetch_or_error(client))
    lines = frame(live.history, view, width, url=client.url, now=time.time(), error=live.error)
    # A name in a script the terminal's encoding lacks (LANG=C over ssh, PYTHONIOENCODING)
    # is shown as its escape rather than crashing the frame.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    print("\n".join(lines))
    return 0 if live.error is None else 1


def run(
    *,
    url: str,
    interval: float = 2.0,
    token_file: str | None = None,
    ca_file: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    sort: str = "cpu",
    tenants: bool = False,
    once_only: bool = False,
) -> int:
    """`hostcollector top`. Exit 0; 1: --once could not read the API; 2: bad options."""
    try:
        if not interval > 0:
            raise SetupError("--interval must be > 0")
        if sort not in SORTS:
            raise SetupError(f"--sort must be one of {', '.join(SORTS)}")
        client = make_client(
            url,
            token_file=token_file,
            ca_file=ca_file,
            cert=cert,
            key=key,
            timeout=max(1.0, min(5.0, interval)),
        )
    except SetupError as exc:
        print(f"hostcollector top: {exc}", file=sys.stderr)
        return 2
    view = View(sort=sort, tenants=tenants)
    if once_only:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else UNCUT_WIDTH
        return once(client, interval, view, width)
    locale.setlocale(locale.LC_ALL, "")  # curses draws non-ASCII names only under the locale
    # curses would take LINES/COLUMNS from the environment over the terminal's own size; they
    # go stale on a resize (and GNU readline exports them into every child of its process).
    for name in ("LINES", "COLUMNS"):
        os.environ.pop(name, None)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C quits like q
        curses.wrapper(_loop, Live(client, view), interval)
    return 0
