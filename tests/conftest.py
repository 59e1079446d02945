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


@pytest.fixture(scope="session")
def stub_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The NVML stand-in library (tests/nvml_stub), built and loaded once per test session."""
    from tests.nvml_stub.stub import StubBuildError, ensure_loaded

    cache = request.config.cache
    build_dir = Path(cache.mkdir("nvml_stub")) if cache else tmp_path_factory.mktemp("nvml_stub")
    try:
        ensure_loaded(build_dir)
    except StubBuildError as exc:
        pytest.fail(f"cannot build the NVML stub: {exc}")
    return build_dir / "libnvidia-ml.so.1"
