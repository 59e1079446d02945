"""Every alert has a runbook (issue 14): `runbook_url` names docs/runbooks/<alert>.md, the file
exists, names the alert and says what it means, what to check, what to do and who is affected;
every runbook belongs to an alert; severities are the one routing scale Alertmanager expects.

Covers conf/prometheus/rules.yml (`make test-deploy` runs promtool on it and its tests).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "conf" / "prometheus"
RUNBOOKS = REPO / "docs" / "runbooks"

# Alertmanager routes on `severity`: critical pages, warning opens a ticket, info notifies no one.
SEVERITIES = {"critical", "warning", "info"}
SECTIONS = ("## What it means", "## What to check", "## What to do", "## Who is affected")


def alerts(rule_file: str) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((PROMETHEUS / rule_file).read_text())
    found: dict[str, dict[str, Any]] = {}
    for group in data["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["alert"] not in found, f"{rule['alert']} defined twice in {rule_file}"
                found[rule["alert"]] = rule
    return found


def all_alerts() -> dict[str, dict[str, Any]]:
    return alerts("rules.yml")


def runbook_path(url: str) -> Path:
    # runbook_url is relative to the repository root (docs/runbooks/README.md says how an
    # operator turns it into a link to their copy).
    assert re.fullmatch(r"docs/runbooks/\w+\.md", url), f"not a repository-relative runbook: {url}"
    return REPO / url


def test_rule_files_have_alerts() -> None:
    assert len(alerts("rules.yml")) >= 29
    assert {"HostcollectorGPUXidHardware", "HostcollectorGPUUncorrectableECC"} <= set(
        alerts("rules.yml")
    )
    assert "HostcollectorGPUFabricDegraded" in alerts("rules.yml")


@pytest.mark.parametrize("name", sorted(all_alerts()))
def test_alert_has_runbook(name: str) -> None:
    rule = all_alerts()[name]
    url = rule.get("annotations", {}).get("runbook_url")
    assert url == f"docs/runbooks/{name}.md", f"{name}: runbook_url {url!r}"
    path = runbook_path(url)
    assert path.is_file(), f"{name}: {url} does not exist"
    text = path.read_text()
    assert text.startswith(f"# {name}\n"), f"{url} does not name {name} in its title"
    positions = [text.find(section + "\n") for section in SECTIONS]
    assert all(p > 0 for p in positions), f"{url} lacks one of {SECTIONS}"
    assert positions == sorted(positions), f"{url}: sections out of order"
    check = text[positions[1] : positions[2]]
    assert "```" in check, f"{url}: 'What to check' has no command or query to run"


@pytest.mark.parametrize("name", sorted(all_alerts()))
def test_alert_severity_is_a_routing_label(name: str) -> None:
    labels = all_alerts()[name].get("labels", {})
    assert labels.get("severity") in SEVERITIES, f"{name}: severity {labels.get('severity')!r}"
    assert set(labels) == {"severity"}, f"{name}: labels beyond severity: {labels}"


def test_every_runbook_belongs_to_an_alert() -> None:
    names = set(all_alerts())
    files = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert files - names == set(), "runbooks without an alert"
    assert names - files == set(), "alerts without a runbook"


def test_runbook_index_lists_every_alert_with_its_severity() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    rows = dict(re.findall(r"^\| \[(\w+)\]\(\1\.md\) \| (\w+) \|", index, re.MULTILINE))
    expected = {name: rule["labels"]["severity"] for name, rule in all_alerts().items()}
    assert rows == expected
