"""Every measured table in the docs names its committed results file, and every figure in it is
in that file: a hand-typed, stale or made-up number fails here.

A table is marked by an HTML comment within the three lines above it:
    <!-- figures: benchmarks/results/students.json -->
(several files separated by commas); a table of settings says so with a reason:
    <!-- no figures: recipe settings, not measurements -->
Each decimal number in the table's body must equal a
number in those files at the table's precision, as stored or scaled to the table's unit
(fraction → percent, count → millions or thousands, seconds → ms or minutes, bytes → KiB or
MiB). Goals written into a cell ("goal ≥ 0.95") are thresholds, not figures, and are skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    ROOT / "benchmarks" / "README.md",
    *sorted(ROOT.glob("pipelines/*.md")),
    *sorted(ROOT.glob("docs/**/*.md")),  # the pages issue 30 moves the tables to
]
MARKER = re.compile(r"<!--\s*figures:\s*(.+?)\s*-->")
NO_FIGURES = re.compile(r"<!--\s*no figures:\s*\S.*?-->")  # a reason is required
DECIMAL = re.compile(r"(?<![\w.])\d[\d,]*\.\d+")
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")
GOAL = re.compile(r"goal[^≥≤<>|]*[≥≤<>]=?\s*[\d.]+")  # "goal (b)/(a) ≤ 1.10"
# stored value x scale = the table's figure
SCALES = (1, 100, 1e-6, 1e-3, 1e3, 1 / 60, 2**-10, 2**-20)


def tables(path: Path) -> list[tuple[int, list[str], list[str]]]:
    """(line number, results files named above it, body rows) of each table in a markdown file."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
            start, rows = i, []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            above = " ".join(lines[max(0, start - 3) : start])
            named = [f.strip() for m in MARKER.finditer(above) for f in m.group(1).split(",")]
            if not NO_FIGURES.search(above):
                found.append((start + 1, named, rows))
        else:
            i += 1
    return found


def stored_numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in stored_numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in stored_numbers(v)]
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, str):  # commands and notes hold figures too ("--epochs 30")
        return [float(m.group().replace(",", "")) for m in NUMBER.finditer(value)]
    return []


def figures(row: str) -> list[str]:
    cells = row.strip().strip("|").split("|")[1:]  # the first cell names the row
    return [m.group() for cell in cells for m in DECIMAL.finditer(GOAL.sub("", cell))]


def in_results(figure: str, stored: list[float]) -> bool:
    decimals = len(figure.split(".")[1])
    target = float(figure.replace(",", ""))
    tolerance = 0.5 * 10**-decimals + 1e-9
    return any(abs(abs(v * s) - target) <= tolerance for v in stored for s in SCALES)


MEASURED = [
    (path, line, named, rows)
    for path in DOCS
    for line, named, rows in tables(path)
    if any(figures(r) for r in rows)
]


@pytest.mark.parametrize(
    ("path", "line", "named", "rows"),
    MEASURED,
    ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _, _ in MEASURED],
)
def test_each_measured_table_matches_its_results_file(path, line, named, rows):
    where = f"{path.relative_to(ROOT)}:{line}"
    assert named, f"{where}: a table of measured figures names no results file (<!-- figures: -->)"
    stored = []
    for name in named:
        results = ROOT / name
        assert results.is_file(), f"{where}: {name} does not exist"
        stored += stored_numbers(json.loads(results.read_text()))
    missing = [f for r in rows for f in figures(r) if not in_results(f, stored)]
    assert not missing, f"{where}: figures not in {', '.join(named)}: {missing}"


def test_the_check_finds_a_figure_that_is_not_in_the_file():
    stored = stored_numbers({"accuracy": 0.4199, "ms": [0.433], "note": "3 seeds at 1.5x"})
    assert in_results("41.99", stored) and in_results("0.433", stored)
    assert in_results("1.5", stored)
    assert not in_results("42.10", stored) and not in_results("0.434", stored)
    assert figures("| kd | 63.30 ± 0.08 | 1 (goal ≥ 0.95: 0.981) |") == ["63.30", "0.08", "0.981"]
    assert figures("| b | 1 (goal (b)/(a) ≤ 1.10: 0.98) |") == ["0.98"]
