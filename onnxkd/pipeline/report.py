"""`report.md`: what was compressed, by how much, at what accuracy cost, on which hardware.

Written from the artifacts the stages left (cache manifest, run metrics and export check,
quantization report, bench.json), with the training curves and the Pareto plot beside it, the
resolved recipe and the versions of everything that ran.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from onnxkd import splits
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
        lines += _comparison(bench, chose_on_test=export.selected_on != "validation")
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


def _comparison(bench: dict, chose_on_test: bool = False) -> list[str]:
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
    lines += _headline(by, models, eps[0], small, large, host)
    lines += [
        "",
        f"Latency: median and 99th percentile of {bench['config']['rounds']} "
        "interleaved rounds per model (onnxkd bench); accuracy on the "
        + (
            "test split, which also chose the student's epoch (--val-fraction 0)"
            if chose_on_test
            else splits.described(quality_report.split_name(bench))
        )
        + ", with onnxruntime on this CPU.",
    ]
    noisy = [r for r in rows if r.get("cv", 0) > bench["config"]["cv_warn"]]
    if noisy:
        lines.append(
            f"Run-to-run variation was high for {len(noisy)} of {len(rows)} rows "
            "(coefficient of variation above "
            f"{bench['config']['cv_warn']}): trust the medians, not the means."
        )
    return lines


# Medians closer than this are reported as equal: the rounds' own spread is of this order.
SAME_SPEED = 0.05
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _headline(by: dict, models: list[str], ep: str, small: int, large: int, host: dict) -> list:
    """Which model to ship for each kind of budget (batch-1 latency, throughput, size), with
    its numbers; where INT8 is slower than its float model at batch 1, say so and why."""
    teacher = by.get(("teacher", ep, small))
    shipped = [m for m in models if m != "teacher" and (m, ep, small) in by]
    if teacher is None or not shipped:
        return []
    latency = min(shipped, key=lambda m: by[m, ep, small]["p50_ms"])
    throughput = max(shipped, key=lambda m: by.get((m, ep, large), {}).get("throughput", 0))
    size = min(shipped, key=lambda m: by[m, ep, small]["size_bytes"])

    def accuracy(m: str) -> str:
        a = by[m, ep, small].get("accuracy")
        return f", {100 * a:.2f}% accuracy" if a is not None else ""

    fast, big = by[latency, ep, small], by.get((throughput, ep, large))
    lines = [
        "",
        f"**In short** (on {ep}; the teacher: {_accuracy_of(teacher)}):",
        "",
        f"- for batch-{small} latency ship `{latency}`: {fast['p50_ms']:.3f} ms, "
        f"{teacher['p50_ms'] / fast['p50_ms']:.2f}x the teacher's speed{accuracy(latency)};",
    ]
    if big is not None:
        lines.append(
            f"- for throughput (batch {large}) ship `{throughput}`: {big['throughput']:,.0f}/s"
            f"{accuracy(throughput)};"
        )
    lines.append(
        f"- for size ship `{size}`: {by[size, ep, small]['size_bytes'] / 1e6:.3f} MB, "
        f"{_ratio(teacher['size_bytes'], by[size, ep, small]['size_bytes'])} than the "
        f"teacher{accuracy(size)}."
    )
    lines += _int8_slower(by, shipped, ep, small, host, smallest=size)
    if len({latency, throughput, size}) > 1:
        lines += [
            "",
            "They differ: ship the one for the budget that binds. `onnxkd sweep` picks the most "
            "accurate model within a latency or size budget (`--budget-ms`, `--budget-mb`).",
        ]
    return lines


def _int8_slower(
    by: dict, shipped: list[str], ep: str, batch: int, host: dict, smallest: str
) -> list[str]:
    """A line for each quantized model slower at this batch than the float model it came
    from, with the likely reason."""
    lines = []
    floats = [m for m in shipped if "int8" not in m]
    for m in shipped:
        if "int8" not in m or not floats:
            continue
        base = floats[-1]  # the last float stage before quantization (QAT or the student)
        ratio = by[m, ep, batch]["p50_ms"] / by[base, ep, batch]["p50_ms"]
        if ratio <= 1 + SAME_SPEED:
            continue
        flags = set(host.get("isa_flags", ()))
        why = (
            "this CPU has no 8-bit dot-product instructions (VNNI), so INT8 kernels gain little"
            if ep == "cpu" and not flags & set(VNNI_FLAGS)
            else "at this model's size per-node overhead and the quantize/dequantize steps "
            "outweigh what 8-bit arithmetic saves"
        )
        lines += [
            "",
            f"`{m}` is {ratio:.2f}x slower than `{base}` at batch {batch} here: {why}."
            + (" It is still the one for size." if m == smallest else ""),
        ]
    return lines


def _accuracy_of(row: dict) -> str:
    a = row.get("accuracy")
    return f"{100 * a:.2f}% accuracy" if a is not None else "accuracy not measured"


def _points(drop: float) -> str:
    if abs(drop) < 0.005:
        return "no loss"
    return f"{drop:.2f} points lost" if drop > 0 else f"{-drop:.2f} points gained"


def _selection(export) -> str:
    """How the epoch was chosen, so the accuracy next to it reads for what it is."""
    if export.selected_on == "validation":
        return (
            f"chosen on the validation split ({export.val_samples} samples held back from "
            f"training); test split accuracy {100 * export.test_accuracy:.2f}%, measured once"
        )
    return (
        "chosen on the test split itself (--val-fraction 0): its "
        f"{100 * export.test_accuracy:.2f}% is a selected maximum"
    )


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
