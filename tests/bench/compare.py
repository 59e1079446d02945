#!/usr/bin/env python3
"""Benchmark (not a test): `synthetic.py` of two checkouts side by side, in one run, taking turns
(before, after, before, after, ...) so that the machine's noise falls on both alike. Reports the
median of each measure and the spread. Writes bench-results/synthetic-compare.{json,md}.

    git worktree add /tmp/before <commit>
    .venv/bin/python tests/bench/compare.py /tmp/before . [--sizes 1000 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[2] / "bench-results"
MEASURES = (
    "series",
    "own_cpu_per_cycle_ms",
    "remote_write_tick_cpu_ms",
    "rss_mb",
    "scrape_1_p50_ms",
    "scrape_1_p99_ms",
    "scrape_10_p50_ms",
    "scrape_10_p99_ms",
)


def one(tree: Path, size: int, cycles: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "tests/bench/synthetic.py", "--one", str(size), "--cycles", str(cycles)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {"before": {}, "after": {}}
    for size in args.sizes:
        for round_ in range(args.rounds):
            for name, tree in (("before", args.before), ("after", args.after)):
                runs[name].setdefault(size, []).append(one(tree, size, args.cycles))
                print(f"{size} VMs, round {round_ + 1}, {name} done", file=sys.stderr)
    lines = ["| measure | VMs | before (median, min-max) | after (median, min-max) |"]
    lines.append("| --- | --- | --- | --- |")
    for size in args.sizes:
        for measure in MEASURES:
            cells = []
            for name in ("before", "after"):
                values = [r[measure] for r in runs[name][size]]
                cells.append(
                    f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
                )
            lines.append(f"| {measure} | {size} | {cells[0]} | {cells[1]} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "synthetic-compare.json").write_text(json.dumps(runs, indent=2))
    report = "\n".join(lines) + "\n"
    (OUT / "synthetic-compare.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
