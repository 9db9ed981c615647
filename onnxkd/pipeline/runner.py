"""`onnxkd run`: cache -> distill -> [qat] -> [quantize] -> bench -> report, from one recipe.

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

from onnxkd.files import read_json, sha256_file, write_json_atomic
from onnxkd.pipeline.recipe import SPEC_KEYS, Recipe, load_recipe
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
    for stage in (_cache, _distill, _qat, _quantize, _bench):
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
    from onnxkd.cache.build import CacheConfig, cache_teacher
    from onnxkd.data.source import DataRef
    from onnxkd.teacher.input_spec import SpecOptions

    opts = dict(state.recipe.cache)
    spec = {k: opts.pop(k) for k in SPEC_KEYS if k in opts}
    for key in ("size", "mean", "std"):
        if key in spec:
            spec[key] = tuple(spec[key]) if isinstance(spec[key], list) else (spec[key],)
    if "features" in opts:
        opts["features"] = tuple(opts["features"])
    data = dict(state.recipe.data)
    if data.get("image_size"):
        data["image_size"] = tuple(data["image_size"])
    cfg = CacheConfig(
        state.recipe.teacher,
        DataRef(**data),
        workdir=state.root,
        spec=SpecOptions(**spec),
        **opts,
    )
    result = cache_teacher(cfg, log=log)
    state.cache = result.path
    return StageRecord("cache", str(result.path), result.seconds == 0.0, 0.0)


def _distill_into(state: PipelineState, out: Path, options: dict, log, **extra):
    from onnxkd.distill.config import DistillConfig
    from onnxkd.distill.trainer import distill

    done = (out / "export.json").exists()
    if not done:
        resume = (out / "checkpoints" / "last.pt").exists()
        cfg = DistillConfig(
            cache=state.cache, workdir=state.root, out=out, resume=resume, **options, **extra
        )
        distill(cfg, log=log)
    return done


def _distill(state: PipelineState, log) -> StageRecord:
    manifest = read_json(state.cache / "manifest.json")
    out = state.root / "runs" / f"distill-{key_of(manifest['key'], state.recipe.distill)}"
    skipped = _distill_into(state, out, state.recipe.distill, log)
    state.run = out
    return StageRecord("distill", str(out / "student.onnx"), skipped, 0.0)


def _qat(state: PipelineState, log) -> StageRecord | None:
    if state.recipe.qat is None:
        return None
    out = state.root / "runs" / f"qat-{key_of(state.run.name, state.recipe.qat)}"
    skipped = _distill_into(state, out, state.recipe.qat, log, qat=True, init=state.run)
    state.qat_run = out
    return StageRecord("qat", str(out / "student.int8.onnx"), skipped, 0.0)


def _quantize(state: PipelineState, log) -> StageRecord | None:
    from onnxkd.quantize.config import QuantizeConfig
    from onnxkd.quantize.ptq import quantize

    if state.recipe.quantize is None:
        return None
    student = state.run / "student.onnx"
    key = key_of(sha256_file(student), state.recipe.quantize)
    out = state.root / "quantized" / f"student-{key}.int8.onnx"
    report = out.with_suffix(".json")
    skipped = report.exists()
    if not skipped:
        cfg = QuantizeConfig(
            model=student, out=out, workdir=state.root, cache=state.cache, **state.recipe.quantize
        )
        quantize(cfg, log=log)
    state.quantized = out
    return StageRecord("quantize", str(out), skipped, 0.0)


def bench_models(state: PipelineState) -> dict[str, Path]:
    """The models the bench stage compares, by the label the report uses."""
    models = {"teacher": state.recipe.teacher, "student": state.run / "student.onnx"}
    if state.quantized:
        models["int8 (PTQ)"] = state.quantized
    if state.qat_run:
        models["int8 (QAT+KD)"] = state.qat_run / "student.int8.onnx"
    return models


def _bench(state: PipelineState, log) -> StageRecord:
    from onnxkd.bench.config import BenchConfig
    from onnxkd.bench.runner import bench

    models = bench_models(state)
    options = dict(state.recipe.bench or {})
    for key in ("eps", "batches"):
        if key in options:
            options[key] = tuple(options[key])
    key = key_of({k: sha256_file(p) for k, p in models.items()}, options)
    out = state.root / "bench" / key
    skipped = (out / "bench.json").exists()
    if not skipped:
        cfg = BenchConfig(
            models=tuple(models.values()),
            labels=tuple(models),
            workdir=state.root,
            out=out,
            cache=state.cache,
            **options,
        )
        bench(cfg, log=log)
    state.bench = out
    return StageRecord("bench", str(out / "bench.json"), skipped, 0.0)
