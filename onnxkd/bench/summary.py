"""A benchmark's rows as a terminal table, with what was not timed and where the files are."""

from __future__ import annotations

from typing import TYPE_CHECKING

from onnxkd.bench.report import table

if TYPE_CHECKING:
    from onnxkd.bench.runner import BenchResult


def summarize(result: BenchResult) -> str:
    """The table of every row (error rows included), a note when an EP is absent from this
    host, and the result files."""
    lines = [table(result.rows)]
    if any(r["status"] == "not timed" for r in result.rows):
        lines.append(
            "not timed: no such EP on this host; see bench.md for onnxruntime's static "
            "analysis and the ORT-format files"
        )
    files = [result.json_path, result.markdown_path, *filter(None, [result.plot_path])]
    lines.append(f"results: {', '.join(map(str, files))}")
    return "\n".join(lines)
