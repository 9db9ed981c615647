"""`prune`: structured channel pruning of a distilled student, each step fine-tuned with KD.

    PRUNE/prune.json             PruneRecord: the run pruned, the target, sizes per step
    PRUNE/steps/K.architecture.json, K.pruned.pt   step K's architecture and pruned weights
    PRUNE/steps/K/               step K's KD fine-tuning: an ordinary distill run folder
    PRUNE/config.json, best.pt, student.onnx, export.json, architecture.json, metrics.jsonl,
    curves.png                   the last step's, once every step finished: a normal run folder

Each step's pruned weights and architecture are written (atomically, weights first) before
its fine-tuning starts, and the fine-tuning is a resumable distill run, so `--resume` after a
kill continues where the work stopped, never repeating a finished step.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from onnxkd.cache.reader import CacheReader
from onnxkd.distill import checkpoint
from onnxkd.distill.config import DistillConfig
from onnxkd.distill.history import plot_curves, write_metrics
from onnxkd.distill.run_folder import RunFolder, RunFolderError
from onnxkd.distill.trainer import distill
from onnxkd.files import claim_folder, read_json, write_json_atomic
from onnxkd.prune.config import FINETUNE_LR_SCALE, PruneConfig, PruneConfigError, PruneTarget
from onnxkd.prune.search import Size, measure, prune_to
from onnxkd.students.pruned import (
    PrunedArchitecture,
    check_prunable,
    read_architecture,
    write_architecture,
)
from onnxkd.workspace import Workspace

RECORD = "prune.json"
ARCHITECTURE = "architecture.json"
STEPS = "steps"


@dataclass
class PruneResult:
    out: Path
    steps: list[dict]
    export: dict


def prune(cfg: PruneConfig, log: Callable[[str], None] = print) -> PruneResult:
    """Prune the run `cfg.init` to `cfg.target` in `cfg.steps` steps, fine-tuning each with KD
    from the run's cache, and export the result as a run folder (see the module's doc)."""
    ws = Workspace(cfg.workdir)
    if cfg.resume:
        out = cfg.out or ws.latest("pruning")
        if not (out / RECORD).exists():
            raise PruneConfigError(f"{out} has no {RECORD}: no prune run to resume there")
        recorded = PruneConfig.from_dict(read_json(out / RECORD)["config"])
        cfg = replace(recorded, resume=True, overwrite=False, out=out, threads=cfg.threads)
        log(f"resuming the prune run in {out}")
    init = _finished_run(cfg.init or ws.latest("run"))
    out = cfg.out or ws.root / "runs" / f"pruned-{init.path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not cfg.resume:
        claim_folder(out, RECORD, "prune run", cfg.overwrite, RunFolderError, log)
    record = init.record()
    base_cfg = record.config
    base_arch = (
        read_architecture(base_cfg.architecture)
        if base_cfg.architecture
        else PrunedArchitecture(base_cfg.student)
    )
    check_prunable(base_arch.base)
    target = cfg.parsed_target
    cache = CacheReader(record.cache)
    spec, classes = cache.input_spec, cache.num_classes
    targets = _teacher_cache(cfg, cache, record.cache)  # checked before anything is written
    threads = cfg.latency_threads if target.kind == "latency" else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    student = base_arch.build(spec, classes)
    checkpoint.load_weights(init.best_weights, student)
    # A resumed run keeps the unpruned sizes it recorded: a re-timed latency would move the
    # goals of steps already pruned.
    start = (
        Size(**read_json(out / RECORD)["unpruned"])
        if cfg.resume
        else measure(student, spec, threads)
    )
    goals = _goals(target, start, cfg.steps)
    if not cfg.resume:
        out.mkdir(parents=True, exist_ok=True)
        _write_record(out, cfg, init, start, [])
        ws.record(pruning=out)
    log(
        f"pruning {init.path} ({base_arch.base}: {start.params / 1e6:.3f} M params, "
        f"{start.macs / 1e6:.1f} M MACs"
        + (f", {start.latency_ms:.3f} ms" if start.latency_ms else "")
        + f") to {target} in {cfg.steps} step(s), {cfg.epochs} KD epochs each"
    )
    finetune = _finetune_config(cfg, base_cfg, targets)
    steps, arch = [], base_arch
    for k, goal in enumerate(goals, start=1):
        arch_path, weights = _step_files(out, k)
        run_dir = out / STEPS / str(k)
        if arch_path.exists() and weights.exists():
            arch = read_architecture(arch_path)
        else:
            pruned = prune_to(student, spec, classes, target.kind, goal, cfg, log)
            arch = arch.then(pruned.removals)
            arch_path.parent.mkdir(parents=True, exist_ok=True)
            _save_weights(pruned.student, weights)  # weights first: an architecture file
            write_architecture(arch_path, arch)  # means its weights are complete
            log(
                f"step {k}/{cfg.steps}: channel ratio {pruned.ratio:.4f} -> "
                f"{pruned.size.params / 1e6:.3f} M params, {pruned.size.macs / 1e6:.1f} M MACs"
            )
        step_cfg = replace(
            finetune, architecture=arch_path.resolve(), init_weights=weights.resolve(), out=run_dir
        )
        run = RunFolder(run_dir)
        if not run.finished:
            resumed = run.started
            distill(replace(step_cfg, resume=resumed), log=log, given=set() if resumed else None)
        student = arch.build(spec, classes)
        checkpoint.load_weights(run.best_weights, student)
        size = measure(student, spec, threads)
        report = run.export_report()
        steps.append(
            {
                "step": k,
                "goal": goal,
                **size.to_dict(),
                "test_accuracy": report.test_accuracy,
                "val_accuracy": report.val_accuracy,
                "run": str(run_dir),
            }
        )
        _write_record(out, cfg, init, start, steps)
    export = _finish(out, steps, log)
    ws.record(run=out, student=out / "student.onnx")
    _write_record(out, cfg, init, start, steps, finished=True)
    return PruneResult(out, steps, export)


def _finished_run(path: Path) -> RunFolder:
    run = RunFolder(Path(path))
    if not run.finished:
        raise PruneConfigError(
            f"{path} is not a finished distill run (no export.json): prune a student that "
            "`onnxkd distill` trained and exported"
        )
    if run.record().config.qat:
        raise PruneConfigError(f"{path} is a QAT run: prune its float run, then run --qat")
    return run


def _goals(target: PruneTarget, start: Size, steps: int) -> list[float]:
    """Each step's goal: ratios compound geometrically, latency falls linearly."""
    if target.kind == "latency":
        if target.value >= start.latency_ms:
            raise PruneConfigError(
                f"--target {target}: the unpruned student already runs in "
                f"{start.latency_ms:.3f} ms at batch 1; nothing to prune"
            )
        step = (start.latency_ms - target.value) / steps
        return [start.latency_ms - step * k for k in range(1, steps + 1)]
    full = start.of(target.kind)
    return [full * target.value ** (k / steps) for k in range(1, steps + 1)]


def _teacher_cache(cfg: PruneConfig, own: CacheReader, own_path: Path) -> Path:
    """The cache the fine-tuning distils from: the run's own, or `--teacher-cache` when it
    holds the same training samples for the same inputs and classes."""
    if cfg.teacher_cache is None:
        return own_path
    other = CacheReader(cfg.teacher_cache)
    checks = (
        (
            "training samples",
            other.manifest.section("train").fingerprint,
            own.manifest.section("train").fingerprint,
        ),
        ("input spec", other.input_spec, own.input_spec),
        ("classes", other.num_classes, own.num_classes),
    )
    for what, theirs, ours in checks:
        if theirs != ours:
            raise PruneConfigError(
                f"--teacher-cache {cfg.teacher_cache}: its {what} do not match those of "
                f"the run's cache {own_path}; cache the other teacher over the same data (and "
                "preprocessing) the run was distilled on"
            )
    return cfg.teacher_cache


def _finetune_config(cfg: PruneConfig, base: DistillConfig, cache: Path) -> DistillConfig:
    """The run's own distillation settings, for a short fine-tuning of the pruned student."""
    return replace(
        base,
        cache=cache,
        epochs=cfg.epochs,
        lr=cfg.lr or base.resolved_lr * FINETUNE_LR_SCALE,
        warmup_epochs=0.0,
        batch_size=cfg.batch_size or base.batch_size,
        seed=base.seed if cfg.seed is None else cfg.seed,
        workdir=cfg.workdir,
        threads=cfg.threads or base.threads,
        device=cfg.device,
        resume=False,
        overwrite=False,
        export=True,
    )


def _step_files(out: Path, k: int) -> tuple[Path, Path]:
    return out / STEPS / f"{k}.{ARCHITECTURE}", out / STEPS / f"{k}.pruned.pt"


def _save_weights(student: torch.nn.Module, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(student.state_dict(), tmp)
    tmp.replace(path)


def _write_record(
    out: Path, cfg: PruneConfig, init: RunFolder, start: Size, steps: list, finished=False
) -> None:
    write_json_atomic(
        out / RECORD,
        {
            "config": cfg.to_dict(),
            "init": str(init.path.resolve()),
            "unpruned": start.to_dict(),
            "steps": steps,
            "finished": finished,
        },
    )


def _finish(out: Path, steps: list[dict], log: Callable[[str], None]) -> dict:
    """The last step's run as the prune folder's own, with every step's epochs in its curves."""
    last = RunFolder(Path(steps[-1]["run"]))
    top = RunFolder(out)
    arch_path, _ = _step_files(out, len(steps))
    shutil.copyfile(arch_path, out / ARCHITECTURE)
    record = last.record()
    top.write_record(replace(record, config=replace(record.config, out=out)))
    for name in ("best.pt", "student.onnx"):
        tmp = out / (name + ".tmp")
        shutil.copyfile(last.path / name, tmp)
        tmp.replace(out / name)
    history, offset = [], 0
    for step in steps:
        rows = RunFolder(Path(step["run"])).metrics_path.read_text().splitlines()
        for row in map(json.loads, rows):
            history.append({**row, "epoch": offset + row["epoch"], "prune_step": step["step"]})
        offset += len(rows)
    write_metrics(top.metrics_path, history)
    plot_curves(top.curves_path, history, f"pruned in {len(steps)} step(s)")
    report = last.export_report()
    final = steps[-1]
    extra = {**dict(report.extra), "pruned": {k: final[k] for k in ("params", "macs")}}
    top.write_export_report(replace(report, onnx=out / "student.onnx", extra=extra))
    log(
        f"pruned student: {final['params'] / 1e6:.3f} M params, test accuracy "
        f"{100 * final['test_accuracy']:.2f}% -> {out / 'student.onnx'}"
    )
    return top.export_report().to_dict()
