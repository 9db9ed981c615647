"""The shipped recipes' own numbers (issue 28): run each recipe from an empty workspace and keep
what its stages measured, so that pipelines/NAME.md quotes a committed results file.

    .venv/bin/python benchmarks/pipelines.py [--recipes digits,mnist] [--work DIR]
    .venv/bin/python benchmarks/pipelines.py --md-only     # rewrite the .md from the last runs

For each recipe: `onnxkd run pipelines/NAME.toml --workdir WORK/NAME` in a fresh folder (a
workspace left from an earlier run is removed first, so nothing is skipped as up to date), then
benchmarks/results/pipeline_NAME.json gets the run's bench.json (accuracy, latency, size,
memory, calibration per model), its export check (best epoch, parity, accuracies), the training
history, the seconds each stage took, the wall time and the host. The figures in pipelines/*.md
are copied from the report each run wrote; tests/test_doc_figures.py checks them against these
files. A sweep recipe also keeps its sweep.json. Then each pipelines/NAME.md gets its
"Numbers it reached" and "Run time" sections rewritten from that run's report (the result
table, "In short", calibration, memory, the sweep's leaderboard), each table marked with its
results file; everything above those sections is left as written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from onnxkd.bench.host import host_info

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "pipelines").glob("*.toml"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--work", type=Path, default=ROOT / "onnxkd-out" / "bench-pipelines")
    parser.add_argument("--md-only", action="store_true", help="rewrite the .md files only")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run in its workspace instead of starting from an empty one "
        "(stages done are skipped; their times are kept from the run that made them)",
    )
    parser.add_argument(
        "--note", default="", help="how the machine was loaded, said in the .md (e.g. 'idle')"
    )
    args = parser.parse_args()
    names = args.recipes.split(",")
    if unknown := sorted(set(names) - set(RECIPES)):
        parser.error(f"unknown recipe(s) {unknown}; valid: {', '.join(RECIPES)}")
    for name in names:
        out = ROOT / "benchmarks" / "results" / f"pipeline_{name}.json"
        results = (
            json.loads(out.read_text())
            if args.md_only
            else run_recipe(name, args.work / name, args.resume)
        )
        results["against_teacher"] = against_teacher(results["bench"])
        if "sweep" not in results:  # results written before sweeps were kept
            results["sweep"] = _sweep(args.work / name / "pipelines" / name)
        if results["sweep"] is None:
            del results["sweep"]
        if "sweep" in results:  # the leaderboard's INT8 speed-up column, from its latencies
            results["sweep_int8_speedup"] = int8_speedups(results["sweep"]["candidates"])
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(out)
        print(f"{name}: {results['wall_seconds']} s, written to {out}", flush=True)
        write_md(name, results, args.work / name, args.note)


def run_recipe(name: str, work: Path, resume: bool = False) -> dict:
    if work.exists() and not resume:
        shutil.rmtree(work)
    command = [str(Path(sys.executable).with_name("onnxkd")), "run"]
    command += [str(ROOT / "pipelines" / f"{name}.toml"), "--workdir", str(work)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    root = work / "pipelines" / name
    state = json.loads((root / "state.json").read_text())
    run = Path(state["run"])
    benches = sorted((root / "bench").glob("*/bench.json"), key=lambda p: p.stat().st_mtime)
    results = {
        "recipe": f"pipelines/{name}.toml",
        "command": " ".join(["onnxkd", *command[1:]]),
        # resumed: this call's wall time covers only the stages it ran
        "wall_seconds": None if resume else wall,
        "stage_seconds": _stage_seconds(root),
        "host": host_info(None, packages=("torch", "onnxruntime")),
        "export": json.loads((run / "export.json").read_text()),
        "history": [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()],
        "bench": json.loads(benches[-1].read_text()) if benches else None,
    }
    sweep = _sweep(root)
    if sweep:
        results["sweep"] = sweep
    return results


def _sweep(root: Path) -> dict | None:
    """A sweep recipe's sweep.json (its trials' accuracies, sizes and latencies)."""
    sweeps = sorted(root.glob("sweeps/*/sweep.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(sweeps[-1].read_text()) if sweeps else None


def _stage_seconds(root: Path) -> dict[str, float]:
    """stage_seconds.json keyed by each stage's kind (cache, distill, quantize, bench, ...)
    rather than by its hashed output path."""
    stages = json.loads((root / "stage_seconds.json").read_text())
    return {str(Path(path).relative_to(root)): seconds for path, seconds in stages.items()}


def against_teacher(bench: dict | None) -> dict:
    """The report's ratios, from the bench rows they are computed from: each model's size
    and batch-1 (smallest batch) speed against the teacher's."""
    if not bench:
        return {}
    rows = [r for r in bench["rows"] if r["status"] == "ok"]
    small = min(r["batch"] for r in rows)
    by = {(r["model"], r["ep"]): r for r in rows if r["batch"] == small}
    out = {}
    for (model, ep), r in by.items():
        teacher = by.get(("teacher", ep))
        if teacher and model != "teacher":
            out[f"{model} ({ep})"] = {
                "times_smaller": teacher["size_bytes"] / r["size_bytes"],
                "speedup_batch_small": teacher["p50_ms"] / r["p50_ms"],
            }
    return out


def int8_speedups(candidates: list[dict]) -> dict[str, float]:
    """Each sweep trial's FP32 latency over its INT8 latency (mean over seeds)."""
    ms = {(c["trial"], c["precision"]): c["latency_ms"] for c in candidates}
    return {
        trial: ms[trial, "fp32"] / ms[trial, "int8"]
        for trial, precision in ms
        if precision == "fp32" and ms.get((trial, "int8"))
    }


STAGES = {"caches": "cache", "runs": "distill", "quantized": "quantize", "bench": "bench"}


def write_md(name: str, results: dict, work: Path, note: str) -> None:
    """pipelines/NAME.md from "## Numbers it reached" on, rebuilt from the run's report."""
    md = ROOT / "pipelines" / f"{name}.md"
    report = (work / "pipelines" / name / "report" / "report.md").read_text()
    mark = f"<!-- figures: benchmarks/results/pipeline_{name}.json -->"
    host, export = results["host"], results["export"]
    chosen = (
        f"the student's epoch chosen on the validation split ({export['val_samples']} samples "
        "held back from training)"
        if export.get("selected_on") == "validation"
        else "the student's epoch chosen on the test split itself"
    )
    lines = [
        "## Numbers it reached",
        "",
        f"`.venv/bin/python benchmarks/pipelines.py --recipes {name}` (that is, `onnxkd run "
        f"pipelines/{name}.toml` from an empty workspace) on {host['cpu']}, "
        f"{host['logical_cores']} logical cores, onnxruntime {host['onnxruntime']}, torch "
        f"{host.get('torch')}{'; ' + note if note else ''}; {chosen}; accuracies on the test "
        "split (measured once) with onnxruntime; latency from `onnxkd bench` (median and 99th "
        "percentile of interleaved rounds; at these sizes the latencies are noisy). Results: "
        f"`benchmarks/results/pipeline_{name}.json`.",
        "",
    ]
    result, in_short = _section(report, "## Result"), _in_short(report)
    lines += [mark, "", result, "", in_short, ""]
    sweep = _section(report, "## Sweep: every trial")
    if sweep:
        lines += ["The sweep's trials:", "", mark, "", sweep, ""]
    for title in ("## Calibration", "## Memory while running"):
        table = _section(report, title)
        if table:
            heading = next(line for line in report.splitlines() if line.startswith(title))
            lines += [f"{heading[3:]}:", "", mark, "", table, ""]
    stages = {}
    for path, seconds in results["stage_seconds"].items():
        kind = STAGES.get(Path(path).parts[0], Path(path).parts[0])
        stages[kind] = stages.get(kind, 0) + seconds
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
    lines += [
        "## Run time",
        "",
        (
            f"{results['wall_seconds']} s wall from an empty workspace ({parts}; the rest is "
            "start-up and the report)."
            if results["wall_seconds"] is not None
            else f"Finished in a second call after the first was interrupted, so no wall time: "
            f"{parts}."
        )
        + " A rerun with the same recipe skips every stage that is up to date.",
        "",
    ]
    text = md.read_text()
    head = text[: text.index("## Numbers it reached")] if "## Numbers it reached" in text else text
    md.write_text(head + "\n".join(lines))
    print(f"rewrote {md}")


def _section(report: str, title: str) -> str:
    """The first table under the section whose heading starts with `title`."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(title)), None)
    if start is None:
        return ""
    table, i = [], start + 1
    while i < len(lines) and not lines[i].startswith("## "):
        if lines[i].startswith("|"):
            table.append(lines[i])
        elif table:
            break
        i += 1
    return "\n".join(table)


def _in_short(report: str) -> str:
    """The report's "In short" paragraph, up to the latency note."""
    lines = report.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("**In short**")), None)
    if start is None:
        return ""
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("Latency:"))
    return "\n".join(lines[start:end]).strip()


if __name__ == "__main__":
    main()
