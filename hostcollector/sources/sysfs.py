"""Reading sysfs attributes: a file that vanished or holds junk is None, never an error."""

from __future__ import annotations

import os
from pathlib import Path


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):  # ValueError: bytes that are no UTF-8 (UnicodeDecodeError)
        return None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def link_name(path: Path) -> str | None:
    """The last component of a symlink's target (a PCI address, a driver name)."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None
