"""`onnxkd run`: cache -> distill or sweep -> [prune] -> [qat] -> [quantize] -> bench -> report,
from one recipe.

Every stage's output lives in a folder named by a hash of its inputs (the upstream artifact's
content key and the stage's options), and a stage counts as done only when its last file is
written. A rerun with the same recipe therefore skips what is up to date and redoes only what
is missing: an interrupted cache or distill run resumes where it stopped.

    WORKDIR/pipelines/NAME/   state.json, caches/, runs/, quantized/, bench/, report/
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnxkd.cache.reader import CacheReader
from onnxkd.errors import CacheError
from onnxkd.files import read_json, sha256_file, write_json_atomic
from onnxkd.pipeline.recipe import Recipe, load_recipe
from onnxkd.settings import from_settings
from onnxkd.sweep.config import SweepConfigError
from onnxkd.workspace import DEFAULT_WORKDIR


@dataclass
class StageRecord:
    name: str
    output: str
    skipped: bool
    seconds: float
    note: str = ""


@dataclass
class PipelineState:
    """What the stages produced, for the report."""

    recipe: Recipe
    root: Path
    stages: list[StageRecord] = field(default_factory=list)
    cache: Path | None = None
    run: Path | None = None
    sweep: Path | None = None
    pruned_run: Path | None = None
    qat_run: Path | None = None
    quantized: Path | None = None
    bench: Path | None = None


def key_of(*parts) -> str:
    """A short content key for a stage's inputs."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_pipeline(
    recipe_path: Path, workdir: Path = DEFAULT_WORKDIR, log: Callable[[str], None] = print
) -> PipelineState:
    """Run every stage of the recipe that is not already up to date; write the report."""
    from onnxkd.pipeline.report import write_report

    recipe = load_recipe(recipe_path)
    state = PipelineState(recipe, Path(workdir) / "pipelines" / recipe.name)
    state.root.mkdir(parents=True, exist_ok=True)
    times_file = state.root / "stage_seconds.json"
    times = read_json(times_file) if times_file.exists() else {}
    for stage in (_cache, _sweep, _distill, _prune, _qat, _quantize, _bench):
        started = time.perf_counter()
        record = stage(state, log)
        if record is None:
            continue
        record.seconds = round(time.perf_counter() - started, 1)
        if record.skipped and record.output in times:
            record.note = f"made in {times[record.output]:.1f} s by an earlier run"
        elif not record.skipped:
            times[record.output] = record.seconds
            write_json_atomic(times_file, times)
        state.stages.append(record)
        verb = "up to date" if record.skipped else f"done in {record.seconds:.1f} s"
        log(f"[{recipe.name}] {record.name}: {verb} -> {record.output}")
    write_report(state)
    return state


def _cache(state: PipelineState, log) -> StageRecord:
    from onnxkd.cache.build import cache_teacher
    from onnxkd.cache.settings import cache_config
    from onnxkd.cache.summary import summarize

    recipe = state.recipe
    # The same builder as `cache-teacher`'s: [data] and [cache] hold its options' names.
    cfg = cache_config(teacher=recipe.teacher, workdir=state.root, **recipe.data, **recipe.cache)
    result = cache_teacher(cfg, log=log)
    if not result.complete:
        raise CacheError(
            f"cache {result.path}: shard {cfg.shard[0]}/{cfg.shard[1]} is written; the pipeline "
            "goes on once every shard is (rerun it then)"
        )
    state.cache = result.path
    skipped = result.seconds == 0.0
    if skipped:
        CacheReader(result.path)  # an up-to-date cache must still be intact: refuse it if not
    if not skipped:
        log(summarize(result.path, result.manifest, result.seconds))
    return StageRecord("cache", str(result.path), skipped, 0.0)


def _distill_into(state: PipelineState, out: Path, options: dict, log, **extra):
    from onnxkd.distill.config import DistillConfig
    from onnxkd.distill.run_folder import RunFolder
    from onnxkd.distill.summary import summarize
    from onnxkd.distill.trainer import distill

    run = RunFolder(out)
    done = run.finished
    if not done:
        resume = run.started  # killed before its first epoch ended too: new runs refuse it
        cfg = from_settings(
            DistillConfig,
            options,
            cache=state.cache,
            workdir=state.root,
            out=out,
            resume=resume,
            **extra,
        )
        log(summarize(distill(cfg, log=log)))
    return done


def _sweep(state: PipelineState, log) -> StageRecord | None:
    """With [sweep]: every trial from the cache; the budget's choice is the run shipped on."""
    from onnxkd.pipeline.recipe import sweep_config
    from onnxkd.sweep.runner import CONFIG, RESULTS, sweep

    recipe = state.recipe
    if recipe.sweep is None:
        return None
    cache_key = CacheReader(state.cache, check_arrays=False).key
    out = state.root / "sweeps" / f"sweep-{key_of(cache_key, recipe.distill, recipe.sweep)}"
    done = (out / RESULTS).exists() and not read_json(out / RESULTS)["failures"]
    if not done:
        cfg = sweep_config(
            recipe.distill,
            recipe.sweep,
            cache=state.cache,
            workdir=state.root,
            out=out,
            resume=(out / CONFIG).exists(),  # an interrupted sweep of this very stage
        )
        result = sweep(cfg, log=log)
        if result.failures:
            raise SweepConfigError(
                f"[sweep]: {len(result.failures)} run(s) did not finish "
                f"({'; '.join(result.failures)}); rerun to retry them"
            )
    choice = read_json(out / RESULTS)["choice"]
    if choice["chosen"] is None:
        raise SweepConfigError(f"[sweep]: {choice['why']}")
    state.sweep = out
    state.run = Path(choice["shipped"]["run"])
    log(f"[{recipe.name}] sweep chose {choice['why']}")
    return StageRecord("sweep", str(out / RESULTS), done, 0.0)


def _distill(state: PipelineState, log) -> StageRecord | None:
    if state.sweep is not None:
        return None  # the sweep's choice is the run
    cache_key = CacheReader(state.cache, check_arrays=False).key
    out = state.root / "runs" / f"distill-{key_of(cache_key, state.recipe.distill)}"
    skipped = _distill_into(state, out, state.recipe.distill, log)
    state.run = out
    return StageRecord("distill", str(out / "student.onnx"), skipped, 0.0)


def _prune(state: PipelineState, log) -> StageRecord | None:
    from onnxkd.prune.config import PruneConfig
    from onnxkd.prune.runner import RECORD, prune

    if state.recipe.prune is None:
        return None
    out = state.root / "runs" / f"prune-{key_of(state.run.name, state.recipe.prune)}"
    skipped = (out / "export.json").exists()
    if not skipped:
        cfg = from_settings(
            PruneConfig,
            state.recipe.prune,
            init=state.run,
            workdir=state.root,
            out=out,
            # an interrupted prune of this very stage (the folder is named by its inputs)
            resume=(out / RECORD).exists(),
        )
        prune(cfg, log=log)
    state.pruned_run = out
    return StageRecord("prune", str(out / "student.onnx"), skipped, 0.0)


def shipped_run(state: PipelineState) -> Path:
    """The float run that later stages take: the pruned one where the recipe prunes."""
    return state.pruned_run or state.run


def _qat(state: PipelineState, log) -> StageRecord | None:
    if state.recipe.qat is None:
        return None
    init = shipped_run(state)
    out = state.root / "runs" / f"qat-{key_of(init.name, state.recipe.qat)}"
    skipped = _distill_into(state, out, state.recipe.qat, log, qat=True, init=init)
    state.qat_run = out
    return StageRecord("qat", str(out / "student.int8.onnx"), skipped, 0.0)


def _quantize(state: PipelineState, log) -> StageRecord | None:
    from onnxkd.quantize.config import QuantizeConfig
    from onnxkd.quantize.ptq import quantize
    from onnxkd.quantize.summary import summarize

    if state.recipe.quantize is None:
        return None
    student = shipped_run(state) / "student.onnx"
    key = key_of(sha256_file(student), state.recipe.quantize)
    out = state.root / "quantized" / f"student-{key}.int8.onnx"
    report = out.with_suffix(".json")
    skipped = report.exists()
    if not skipped:
        cfg = from_settings(
            QuantizeConfig,
            state.recipe.quantize,
            model=student,
            out=out,
            workdir=state.root,
            cache=state.cache,
            # The folder is the pipeline's, named by a hash of the inputs: a model without its
            # report is an interrupted run of this very stage, to be redone.
            overwrite=True,
        )
        log(summarize(quantize(cfg, log=log)))
    state.quantized = out
    return StageRecord("quantize", str(out), skipped, 0.0)


def bench_models(state: PipelineState) -> dict[str, Path]:
    """The models the bench stage compares, by the label the report uses."""
    models = {"teacher": state.recipe.teacher, "student": state.run / "student.onnx"}
    if state.pruned_run:
        models["pruned"] = state.pruned_run / "student.onnx"
    if state.quantized:
        models["int8 (PTQ)"] = state.quantized
    if state.qat_run:
        models["int8 (QAT+KD)"] = state.qat_run / "student.int8.onnx"
    return models


def made_from(state: PipelineState) -> dict[str, str]:
    """Each benched model's source, which its calibration drift and class losses are
    measured against: the INT8 models come from the float model the later stages take."""
    source = "pruned" if state.pruned_run else "student"
    return {
        "student": "teacher",
        "pruned": "teacher",
        "int8 (PTQ)": source,
        "int8 (QAT+KD)": source,
    }


def _bench(state: PipelineState, log) -> StageRecord:
    from onnxkd.bench.config import BenchConfig
    from onnxkd.bench.runner import bench
    from onnxkd.bench.summary import summarize

    models = bench_models(state)
    options = state.recipe.bench or {}
    key = key_of({k: sha256_file(p) for k, p in models.items()}, options)
    out = state.root / "bench" / key
    skipped = (out / "bench.json").exists()
    if not skipped:
        cfg = from_settings(
            BenchConfig,
            options,
            models=tuple(models.values()),
            labels=tuple(models),
            made_from=tuple((k, v) for k, v in made_from(state).items() if {k, v} <= set(models)),
            workdir=state.root,
            out=out,
            cache=state.cache,
            overwrite=True,  # the pipeline's own hash-named folder, unfinished if we got here
        )
        log(summarize(bench(cfg, log=log)))
    state.bench = out
    return StageRecord("bench", str(out / "bench.json"), skipped, 0.0)
