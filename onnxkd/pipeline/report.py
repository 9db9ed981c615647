"""`report.md`: what was compressed, by how much, at what accuracy cost, on which hardware.

Written from the artifacts the stages left (cache manifest, run metrics and export check,
quantization report, bench.json), with the training curves and the Pareto plot beside it, the
resolved recipe and the versions of everything that ran.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from onnxkd.bench import quality_report, resources_report
from onnxkd.cache.manifest import Manifest
from onnxkd.cache.reader import CacheReader
from onnxkd.distill.run_folder import ExportReport, RunFolder, RunRecord
from onnxkd.files import read_json, write_json_atomic

# bench's pictures beyond latency, shown under the same names as in bench.md.
BENCH_PICTURES = (*quality_report.PLOTS, resources_report.PLOT)


def write_report(state) -> Path:
    """Write `report/report.md` (and its images and resolved config) for a pipeline run."""
    out = state.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    bench = read_json(state.bench / "bench.json") if state.bench else None
    manifest = CacheReader(state.cache, check_arrays=False).manifest
    run = RunFolder(state.run)
    export = run.export_report()
    images = []
    for src, name in (
        (run.curves_path, "curves.png"),
        (state.bench / "pareto.png" if state.bench else None, "pareto.png"),
        (state.sweep / "pareto.png" if state.sweep else None, "sweep.png"),
        *((state.bench / n if state.bench else None, n) for n in BENCH_PICTURES),
    ):
        if src is not None and src.exists():
            shutil.copy(src, out / name)
            images.append(name)
    resolved = {
        "recipe": state.recipe.to_dict(),
        "recipe_file": str(state.recipe.path),
        "outputs": {s.name: s.output for s in state.stages},
        "distill_config": run.record().to_dict(),
        "versions": versions(),
    }
    write_json_atomic(out / "resolved.json", resolved)
    text = _markdown(state, manifest, run.record(), export, bench, images)
    tmp = out / "report.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "report.md")
    return out / "report.md"


def summarize(state) -> str:
    """What `onnxkd run` prints: the report and where it is."""
    report = state.root / "report" / "report.md"
    return f"{report.read_text()}\nreport: {report}"


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    from onnxkd import __version__

    return {
        "onnxkd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _markdown(
    state,
    manifest: Manifest,
    record: RunRecord,
    export: ExportReport,
    bench: dict | None,
    images: list,
) -> str:
    recipe = state.recipe
    teacher = manifest.teacher
    config = record.config
    train = manifest.section("train")
    lines = [
        f"# {recipe.name}: {Path(teacher.path).name} -> {config.student}",
        "",
        recipe.description,
        "",
        f"- **Teacher**: `{Path(teacher.path).name}` ({teacher.producer or 'ONNX'}, "
        f"opset {_opset(dict(teacher.opset))}), cached on {train.n} training samples x "
        f"{train.views} views ({train.augmentation['policy']} augmentation) of "
        f"`{train.data_ref.data}`.",
        f"- **Student**: `{config.student}`, {record.student_parameters:,} "
        f"parameters, {config.loss} loss for {config.epochs} epochs "
        f"(best epoch {export.best_epoch + 1}, {_selection(export)}); onnxruntime and torch "
        f"agree to {export.max_abs_diff:.1e}.",
    ]
    if bench:
        lines += _comparison(bench)
    lines += ["", "## Stages", "", "| stage | output | time |", "|---|---|---|"]
    for s in state.stages:
        when = f"up to date ({s.note or 'skipped'})" if s.skipped else f"{s.seconds:.1f} s"
        lines.append(
            f"| {s.name} | `{Path(s.output).relative_to(state.root.parent.parent)}` | {when} |"
        )
    if state.sweep is not None:
        # The whole frontier, not only the model that shipped: what the budget traded away.
        lines += ["", "## Sweep: every trial", "", (state.sweep / "leaderboard.md").read_text()]
        if "sweep.png" in images:
            lines += ["![sweep: accuracy against latency](sweep.png)"]
    if "curves.png" in images:
        lines += ["", "## Training", "", "![training curves](curves.png)"]
    if "pareto.png" in images:
        lines += ["", "## Accuracy, latency and size", "", "![pareto](pareto.png)"]
    if bench:
        # Calibration and its INT8 drift, per-class damage, running memory and energy: what
        # top-1 and latency hide, in bench's own words (its pictures are copied beside this).
        lines += resources_report.memory_lines(bench)
        lines += resources_report.energy_lines(bench)
        lines += quality_report.markdown_lines(bench)
    lines += [
        "",
        "## Reproduce",
        "",
        "```",
        f"onnxkd run {_shown_path(recipe.path)}",
        "```",
        "",
        "The resolved recipe, every stage's settings and the versions are in "
        "`resolved.json` next to this file.",
        "",
    ]
    return "\n".join(lines)


def _comparison(bench: dict) -> list[str]:
    host = bench["host"]
    rows = [r for r in bench["rows"] if r["status"] == "ok"]
    if not rows:
        return []
    small, large = min(r["batch"] for r in rows), max(r["batch"] for r in rows)
    by = {(r["model"], r["ep"], r["batch"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in bench["rows"]))
    eps = list(dict.fromkeys(r["ep"] for r in rows))
    teacher = bench["models"].get("teacher", {})
    lines = [
        f"- **Hardware**: {host['cpu']}, {host['logical_cores']} logical cores "
        f"({' '.join(host['isa_flags'])}); onnxruntime {host['onnxruntime']}, "
        f"{host['intra_op_threads']} intra-op threads.",
        "",
        "## Result",
        "",
        f"| model | accuracy | size | vs teacher | params | p50 @{small} | p99 @{small} | "
        f"throughput @{large} | speed-up vs teacher @{small} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ep in eps:
        base = by.get(("teacher", ep, small))
        for m in models:
            r, big = by.get((m, ep, small)), by.get((m, ep, large))
            if r is None:
                continue
            acc = f"{100 * r['accuracy']:.2f}%" if r.get("accuracy") is not None else "-"
            ratio = (
                _ratio(teacher["size_bytes"], r["size_bytes"]) if teacher and m != "teacher" else ""
            )
            speed = f"{base['p50_ms'] / r['p50_ms']:.2f}x" if base and m != "teacher" else ""
            name = m if len(eps) == 1 else f"{m} ({ep})"
            lines.append(
                f"| {name} | {acc} | {r['size_bytes'] / 1e6:.3f} MB | {ratio} | "
                f"{_count(r['parameters'])} | {r['p50_ms']:.3f} ms | {r['p99_ms']:.3f} ms | "
                f"{big['throughput']:,.0f}/s | {speed} |"
            )
    lines += _headline(by, models, eps[0], small)
    lines += [
        "",
        f"Latency: median and 99th percentile of {bench['config']['rounds']} "
        "interleaved rounds per model (onnxkd bench); accuracy on the cache's eval split "
        "(the test split, never used to choose an epoch) with onnxruntime on this CPU.",
    ]
    noisy = [r for r in rows if r.get("cv", 0) > bench["config"]["cv_warn"]]
    if noisy:
        lines.append(
            f"Run-to-run variation was high for {len(noisy)} of {len(rows)} rows "
            "(coefficient of variation above "
            f"{bench['config']['cv_warn']}): trust the medians, not the means."
        )
    return lines


def _headline(by: dict, models: list[str], ep: str, batch: int) -> list[str]:
    """One sentence on the model to ship (the last stage's) against the teacher."""
    teacher = by.get(("teacher", ep, batch))
    final = next((by[m, ep, batch] for m in reversed(models) if (m, ep, batch) in by), None)
    if teacher is None or final is None or final is teacher:
        return []
    text = (
        f"**In short**: `{final['model']}` is {_ratio(teacher['size_bytes'], final['size_bytes'])}"
        f" than the teacher and {teacher['p50_ms'] / final['p50_ms']:.2f}x its speed at batch "
        f"{batch} on {ep}"
    )
    if final.get("accuracy") is not None and teacher.get("accuracy") is not None:
        drop = 100 * (teacher["accuracy"] - final["accuracy"])
        text += (
            f", at {100 * final['accuracy']:.2f}% accuracy against the teacher's "
            f"{100 * teacher['accuracy']:.2f}% ({_points(drop)})"
        )
    return ["", text + "."]


def _points(drop: float) -> str:
    if abs(drop) < 0.005:
        return "no loss"
    return f"{drop:.2f} points lost" if drop > 0 else f"{-drop:.2f} points gained"


def _selection(export) -> str:
    """How the epoch was chosen, so the accuracy next to it reads for what it is."""
    if export.selected_on == "validation":
        return (
            f"chosen on {export.val_samples} held-back training samples; test accuracy "
            f"{100 * export.test_accuracy:.2f}% measured once"
        )
    return f"chosen on the test split: {100 * export.test_accuracy:.2f}% is a selected maximum"


def _opset(opset) -> str:
    if isinstance(opset, dict):
        return ", ".join(f"{v}" if k in ("", "ai.onnx") else f"{k} {v}" for k, v in opset.items())
    return str(opset)


def _shown_path(path: Path) -> str:
    """The recipe as a user would type it: relative to the current folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _ratio(teacher_bytes: int, model_bytes: int) -> str:
    if model_bytes <= teacher_bytes:
        return f"{teacher_bytes / model_bytes:.1f}x smaller"
    return f"{model_bytes / teacher_bytes:.1f}x larger"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"
