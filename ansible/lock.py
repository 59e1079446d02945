"""Print the pinned runtime dependency set (ansible/roles/hostcollector/files/requirements.lock)
from the development venv: pyproject.toml's runtime dependencies and what they pull in, at the
versions installed. `make lock` writes it."""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "ansible" / "roles" / "hostcollector" / "files" / "requirements.lock"


def closure(roots: list[str]) -> dict[str, str]:
    """Distribution name -> installed version, for roots and everything they require here."""
    pinned: dict[str, str] = {}
    pending = list(roots)
    while pending:
        dist = distribution(pending.pop())
        name = dist.metadata["Name"]
        if name.lower() in {n.lower() for n in pinned}:
            continue
        pinned[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return pinned


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [Requirement(text).name for text in project["dependencies"]]
    header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
    pins = [f"{n}=={v}" for n, v in sorted(closure(roots).items(), key=lambda kv: kv[0].lower())]
    sys.stdout.write("\n".join(header + pins) + "\n")


if __name__ == "__main__":
    main()
