"""The shipped recipes' own numbers (issue 28): run each recipe from an empty workspace and keep
what its stages measured, so that pipelines/NAME.md quotes a committed results file.

    .venv/bin/python benchmarks/pipelines.py [--recipes digits,mnist] [--work DIR]

For each recipe: `onnxkd run pipelines/NAME.toml --workdir WORK/NAME` in a fresh folder (a
workspace left from an earlier run is removed first, so nothing is skipped as up to date), then
benchmarks/results/pipeline_NAME.json gets the run's bench.json (accuracy, latency, size,
memory, calibration per model), its export check (best epoch, parity, accuracies), the training
history, the seconds each stage took, the wall time and the host. The figures in pipelines/*.md
are copied from the report each run wrote; tests/test_doc_figures.py checks them against these
files. A sweep recipe also keeps its sweep.json.
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
    args = parser.parse_args()
    names = args.recipes.split(",")
    if unknown := sorted(set(names) - set(RECIPES)):
        parser.error(f"unknown recipe(s) {unknown}; valid: {', '.join(RECIPES)}")
    for name in names:
        out = ROOT / "benchmarks" / "results" / f"pipeline_{name}.json"
        results = run_recipe(name, args.work / name)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(out)
        print(f"{name}: {results['wall_seconds']} s, written to {out}", flush=True)


def run_recipe(name: str, work: Path) -> dict:
    if work.exists():
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
        "wall_seconds": wall,
        "stage_seconds": _stage_seconds(root),
        "host": host_info(None, packages=("torch", "onnxruntime")),
        "export": json.loads((run / "export.json").read_text()),
        "history": [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()],
        "bench": json.loads(benches[-1].read_text()) if benches else None,
    }
    sweeps = sorted(root.glob("sweep*/sweep.json"))
    if sweeps:
        results["sweep"] = json.loads(sweeps[-1].read_text())
    return results


def _stage_seconds(root: Path) -> dict[str, float]:
    """stage_seconds.json keyed by each stage's kind (cache, distill, quantize, bench, ...)
    rather than by its hashed output path."""
    stages = json.loads((root / "stage_seconds.json").read_text())
    return {str(Path(path).relative_to(root)): seconds for path, seconds in stages.items()}


if __name__ == "__main__":
    main()
