from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
LAB_FIXTURE = FIXTURES / "libvirt-lab-9.0-qemu-7.2-tcg.json"


def load_raw(path: Path = LAB_FIXTURE) -> list[dict[str, Any]]:
    """The libvirt part of a `hostcollector dump --raw` recording."""
    data: list[dict[str, Any]] = json.loads(path.read_text())["libvirt"]
    return data


@pytest.fixture
def lab_raw() -> list[dict[str, Any]]:
    return load_raw()


def by_name(raw: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(entry for entry in raw if entry["name"] == name)
