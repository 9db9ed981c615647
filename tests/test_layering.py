"""The package's shape holds: a stage imports only from stages below it (DESIGN.md), and the
stages that only need onnxruntime load without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnxkd"
# data <- teacher <- cache <- students/distill <- prune/quantize/bench/ondevice
#   <- sweep/pipeline <- cli; modules directly in onnxkd/ (errors, files, runtime, …) are below all.
RANK = {
    "data": 1,
    "teacher": 2,
    "cache": 3,
    "students": 4,
    "distill": 4,
    "prune": 5,
    "quantize": 5,
    "bench": 5,
    "ondevice": 5,
    "sweep": 6,
    "pipeline": 6,
    "cli": 7,
}
ENTRY_POINTS = {"onnxkd.__main__"}  # `python -m onnxkd` runs the CLI, the top of the stack


def _rank(module: str) -> int:
    parts = module.split(".")
    return RANK.get(parts[1], 0) if len(parts) > 1 else 0


def _imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name.split(".")[0] == "onnxkd"]


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((name, path))
    return out


def test_no_module_imports_from_a_higher_stage():
    upward = [
        f"{name} imports {other} (line {line})"
        for name, path in _modules()
        if name not in ENTRY_POINTS
        for other, line in _imports(path)
        if _rank(other) > _rank(name)
    ]
    assert upward == []


@pytest.mark.parametrize(
    "module",
    ["onnxkd.cache.reader", "onnxkd.cache.build", "onnxkd.quantize.ptq", "onnxkd.bench.runner"],
)
def test_stages_that_need_only_onnxruntime_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
