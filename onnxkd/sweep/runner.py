"""`sweep`: every trial x seed distilled from one cache, pruned where asked, quantized, scored
and timed; then a leaderboard, a Pareto front and the model chosen for a budget.

    SWEEP/sweep.config.json    the settings and the expanded trials (what --resume continues)
    SWEEP/runs/distill-K/      a distill run per distinct (settings, seed), shared by the
                               trials that prune it and the trial that does not
    SWEEP/runs/prune-K/        a prune run per (distill run, target)
    SWEEP/models/T-sS/         each model's INT8 file and eval.json
    SWEEP/logs/                one log per job
    SWEEP/latency.json         batch-1 p50 of every model, timed together after training
    SWEEP/sweep.json, leaderboard.md, pareto.png   the results

Training runs first (in `jobs` processes), then pruning, then evaluation; latency is measured
last with nothing else running, every model in the same interleaved rounds. A killed sweep
continues with `--resume`: finished runs are kept, unfinished ones resume from their last epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from onnxkd.cache.reader import CacheReader
from onnxkd.distill.run_folder import RunFolder
from onnxkd.files import claim_folder, read_json, write_json_atomic
from onnxkd.providers import resolve_provider
from onnxkd.sweep import leaderboard
from onnxkd.sweep.config import SweepConfig, SweepConfigError, Trial, key_of
from onnxkd.sweep.evaluate import EVAL
from onnxkd.sweep.jobs import Job, run_jobs
from onnxkd.workspace import Workspace

CONFIG = "sweep.config.json"
RESULTS = "sweep.json"
LATENCY = "latency.json"


@dataclass
class SweepResult:
    out: Path
    rows: list[dict]
    choice: dict
    failures: list[str]
    markdown: str


@dataclass(frozen=True)
class Planned:
    """Where one trial's seed lives: its distill run, its prune run (if any), its model."""

    trial: Trial
    seed: int
    distill: Path
    prune: Path | None
    model: Path

    @property
    def run(self) -> Path:
        """The run whose student this trial ships: the pruned one where it prunes."""
        return self.prune or self.distill


def sweep(cfg: SweepConfig, log: Callable[[str], None] = print) -> SweepResult:
    """Run the sweep `cfg` describes (see the module's doc) and write its results."""
    started = time.perf_counter()
    ws = Workspace(cfg.workdir)
    if cfg.resume:
        if cfg.trials or cfg.grid or cfg.base:
            raise SweepConfigError(
                "--resume continues the recorded sweep with its own trials; drop --trial, "
                "--grid and --set, or start a new sweep (-o NEW_FOLDER)"
            )
        out = cfg.out or ws.latest("sweep")
        if not (out / CONFIG).exists():
            raise SweepConfigError(f"{out} has no {CONFIG}: no sweep to resume there")
        recorded = read_json(out / CONFIG)
        cfg = replace(
            SweepConfig.from_dict(recorded["config"]),
            resume=True,
            overwrite=False,
            out=out,
            jobs=cfg.jobs,
            threads=cfg.threads,
        )
        cache_path = Path(recorded["cache"])
        log(f"resuming the sweep in {out}")
    else:
        cache_path = cfg.cache or ws.latest("cache")
        out = cfg.out or ws.root / "sweeps" / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out).resolve()  # sweep.json's paths hold wherever it is read from
    resolve_provider(cfg.ep)  # a provider this build lacks, refused before hours of training
    cache = CacheReader(cache_path)
    trials = cfg.expand()
    if not cfg.resume:
        claim_folder(out, CONFIG, "sweep", cfg.overwrite, SweepConfigError, log)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            out / CONFIG,
            {
                "config": cfg.to_dict(),
                "cache": str(Path(cache_path).resolve()),
                "trials": [t.to_dict() for t in trials],
            },
        )
        ws.record(sweep=out)
    plan = _plan(out, trials, cfg.seeds, cache.key)
    threads = cfg.threads_per_job
    log(
        f"sweep of {len(trials)} trial(s) x {len(cfg.seeds)} seed(s) from {cache_path} in {out}: "
        f"{cfg.jobs} job(s) at a time, {threads} thread(s) each; logs in {out / 'logs'}"
    )
    outcomes = []
    outcomes += run_jobs(_distill_jobs(out, plan, cache_path, threads), cfg.jobs, threads, log)
    outcomes += run_jobs(_prune_jobs(out, cfg, plan, threads), cfg.jobs, threads, log)
    outcomes += run_jobs(_evaluate_jobs(out, cfg, plan, threads), cfg.jobs, threads, log)
    entries, failures = _entries(plan)
    latency = _latency(out, cfg, entries, cache, log)
    cands = leaderboard.candidates(entries, latency)
    front = leaderboard.pareto_front(cands)
    choice = leaderboard.choose(cands, cfg.budget_ms, cfg.budget_mb)
    if choice["chosen"]:
        choice["shipped"] = _shipped(plan, choice["chosen"])
    rows = leaderboard.trial_rows(cands, front)
    text = leaderboard.markdown(rows, choice, cfg.ep, cfg.latency_threads)
    if cands:
        leaderboard.plot(cands, front, choice, out / "pareto.png", cfg.budget_ms)
    (out / "leaderboard.md").write_text(text)
    seconds = {o.job.label: round(o.seconds, 1) for o in outcomes}
    write_json_atomic(
        out / RESULTS,
        {
            "config": cfg.to_dict(),
            "cache": str(cache_path),
            "entries": entries,
            "candidates": cands,
            "front": front,
            "choice": choice,
            "failures": failures,
            "job_seconds": seconds,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    if choice["chosen"]:
        _record_choice(ws, choice["shipped"], choice["chosen"]["precision"])
    return SweepResult(out, rows, choice, failures, text)


def _plan(out: Path, trials: list[Trial], seeds, cache_key: str) -> list[Planned]:
    plan = []
    for trial in trials:
        for seed in seeds:
            distill = out / "runs" / f"distill-{key_of(trial.settings, seed, cache_key)}"
            prune = (
                out / "runs" / f"prune-{key_of(distill.name, trial.prune)}" if trial.prune else None
            )
            plan.append(
                Planned(trial, seed, distill, prune, out / "models" / f"{trial.slug}-s{seed}")
            )
    return plan


def _distill_jobs(out: Path, plan: list[Planned], cache: Path, threads: int) -> list[Job]:
    jobs, seen = [], set()
    for p in plan:
        if p.distill in seen or RunFolder(p.distill).finished:
            continue
        seen.add(p.distill)
        decided = {
            "cache": str(cache),
            "workdir": str(out),
            "out": str(p.distill),
            "seed": p.seed,
            "threads": threads,
            "resume": RunFolder(p.distill).started,
        }
        label = f"distill {p.trial.name.removesuffix(f' prune:{p.trial.prune}')} seed {p.seed}"
        jobs.append(
            Job(
                "distill",
                {"settings": p.trial.settings, "decided": decided},
                label,
                _log(out, p.distill),
            )
        )
    return jobs


def _prune_jobs(out: Path, cfg: SweepConfig, plan: list[Planned], threads: int) -> list[Job]:
    from onnxkd.prune.config import PruneConfig
    from onnxkd.prune.runner import RECORD

    jobs, seen = [], set()
    for p in plan:
        if p.prune is None or p.prune in seen or (p.prune / "export.json").exists():
            continue
        if not RunFolder(p.distill).finished:
            continue  # its distill run failed: reported with the trial
        seen.add(p.prune)
        prune_cfg = PruneConfig(
            target=p.trial.prune,
            init=p.distill,
            epochs=cfg.prune_epochs,
            workdir=out,
            out=p.prune,
            resume=(p.prune / RECORD).exists(),
            threads=threads,
        )
        jobs.append(
            Job(
                "prune",
                prune_cfg.to_dict(),
                f"prune {p.trial.name} seed {p.seed}",
                _log(out, p.prune),
            )
        )
    return jobs


def _evaluate_jobs(out: Path, cfg: SweepConfig, plan: list[Planned], threads: int) -> list[Job]:
    jobs = []
    for p in plan:
        if (p.model / EVAL).exists() or not _finished(p.run):
            continue
        args = {
            "run": str(p.run),
            "out": str(p.model),
            "workdir": str(out),
            "threads": threads,
            "quantize": cfg.quantize,
        }
        jobs.append(
            Job("evaluate", args, f"evaluate {p.trial.name} seed {p.seed}", _log(out, p.model))
        )
    return jobs


def _finished(run: Path) -> bool:
    return (run / "export.json").exists() and (run / "student.onnx").exists()


def _log(out: Path, folder: Path) -> Path:
    return out / "logs" / f"{folder.name}.log"


def _entries(plan: list[Planned]) -> tuple[list[dict], list[str]]:
    """Each trial and seed with its evaluation, or why it has none."""
    entries, failures = [], []
    for p in plan:
        report = read_json(p.model / EVAL) if (p.model / EVAL).exists() else None
        entry = {
            "trial": p.trial.slug,
            "name": p.trial.name,
            "seed": p.seed,
            "run": str(p.run),
            "eval": report,
        }
        if report is None:
            stage = (
                "distill"
                if not _finished(p.distill)
                else "prune"
                if not _finished(p.run)
                else "evaluate"
            )
            entry["failed"] = stage
            failures.append(f"{p.trial.name} seed {p.seed}: {stage} did not finish")
        entries.append(entry)
    return entries, failures


def _latency(out: Path, cfg: SweepConfig, entries: list[dict], cache: CacheReader, log) -> dict:
    """Batch-1 p50 (ms) of every model, all timed in the same interleaved rounds; kept for a
    resumed sweep unless its set of models changed."""
    from onnxkd.bench.timing import interleaved_p50
    from onnxkd.distill.data import CachedBatches
    from onnxkd.runtime import ort_session

    paths = sorted(m["path"] for e in entries if e["eval"] for m in e["eval"]["models"].values())
    if not paths:
        return {}
    saved = read_json(out / LATENCY) if (out / LATENCY).exists() else None
    if saved and sorted(saved["p50_ms"]) == paths and saved["ep"] == cfg.ep:
        return saved["p50_ms"]
    log(f"timing {len(paths)} models at batch 1 on {cfg.ep}, {cfg.latency_threads} thread(s)")
    sessions = {
        p: ort_session(p, cfg.ep, cfg.latency_threads, error=SweepConfigError, purpose="timed")
        for p in paths
    }
    x = CachedBatches(cache.section("eval"), cache.open_data("eval")).load([0], 0).x
    name = next(iter(sessions.values())).get_inputs()[0].name
    p50 = interleaved_p50(sessions, {name: x}, rounds=5, runs=30)
    write_json_atomic(out / LATENCY, {"ep": cfg.ep, "threads": cfg.latency_threads, "p50_ms": p50})
    return p50


def _shipped(plan: list[Planned], chosen: dict) -> dict:
    """The chosen trial's seed that ships: the one with the best validation accuracy."""
    runs = [p for p in plan if p.trial.slug == chosen["trial"] and (p.model / EVAL).exists()]
    best = max(runs, key=lambda p: read_json(p.model / EVAL)["models"]["fp32"]["val_accuracy"])
    models = read_json(best.model / EVAL)["models"]
    return {
        "seed": best.seed,
        "run": str(best.run),
        "student": models["fp32"]["path"],
        "model": models[chosen["precision"]]["path"],
    }


def _record_choice(ws: Workspace, shipped: dict, precision: str) -> None:
    """The workspace's latest run and student become the chosen model's, so that `quantize`,
    `bench` and `distill --qat` take it next."""
    ws.record(run=Path(shipped["run"]), student=Path(shipped["student"]))
    if precision == "int8":
        ws.record(quantized=Path(shipped["model"]))
