"""`distill`: train a student on a cache's soft targets, checkpoint every epoch, export it."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onnxkd import __version__
from onnxkd.cache.manifest import SCORES
from onnxkd.cache.reader import CacheReader
from onnxkd.cpu import lacks_native_bf16
from onnxkd.distill import (
    checkpoint,
    distributed,
    finite,
    qat,
    resume,
    temperature,
    unlabeled,
    validation,
)
from onnxkd.distill.config import (
    DEFAULT_EPOCHS,
    DEFAULT_QAT_EPOCHS,
    DEFAULT_STUDENT,
    DistillConfig,
    DistillConfigError,
)
from onnxkd.distill.data import CachedBatches, JoinedBatches, OnlineBatches, cached_keys
from onnxkd.distill.evaluate import evaluate
from onnxkd.distill.export import check_export, export_student
from onnxkd.distill.header import announce
from onnxkd.distill.history import plot_curves, write_metrics
from onnxkd.distill.losses import CompositeLoss
from onnxkd.distill.objective import DistillModule, build_objective
from onnxkd.distill.qdq import count_int8_ops
from onnxkd.distill.run_folder import ExportReport, RunFolder, RunRecord
from onnxkd.distill.starting_point import (
    StartingPointError,
    load_starting_point,
    read_state_dict,
)
from onnxkd.errors import CacheError
from onnxkd.interrupt import checkpoints
from onnxkd.metadata import CACHE_KEY
from onnxkd.students.custom import (
    check_origin,
    parse_custom,
    pin,
    same_origin,
    same_student,
)
from onnxkd.students.for_spec import create_student_for_spec
from onnxkd.students.pruned import read_architecture
from onnxkd.workspace import Workspace


@dataclass
class RunResult:
    run_dir: Path
    history: list[dict]
    export: dict | None


def _lr_lambda(cfg: DistillConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _optimizer(cfg: DistillConfig, params) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on norms and biases
    groups = [
        {"params": decay, "weight_decay": cfg.resolved_weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.resolved_lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.resolved_lr)


def _versions() -> dict:
    import onnxruntime as ort

    return {
        "onnxkd": __version__,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "onnxruntime_providers": ort.get_available_providers(),
    }


def _run_dir(cfg: DistillConfig, ws: Workspace) -> Path:
    if cfg.out is not None:
        return cfg.out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kind = "-qat" if cfg.qat else ""
    custom = parse_custom(cfg.student)
    label = cfg.student if custom is None else custom.label
    return ws.root / "runs" / f"{label}{kind}-{cfg.loss}-s{cfg.seed}-{stamp}"


def _resolve_new(cfg: DistillConfig, ws: Workspace) -> DistillConfig:
    """A new run's defaults; QAT first takes its student and cache from its float run."""
    if cfg.qat:
        cfg = qat.resolve_init(cfg, ws)
    epochs = cfg.epochs or (DEFAULT_QAT_EPOCHS if cfg.qat else DEFAULT_EPOCHS)
    return replace(cfg, student=cfg.student or DEFAULT_STUDENT, epochs=epochs)


def _resolve_resume(
    cfg: DistillConfig, ws: Workspace, given: Collection[str], log: Callable[[str], None]
) -> tuple[DistillConfig, Path, RunRecord]:
    """The run to continue, with the given settings applied or refused (see `resume`), and
    its record as it should read from now on."""
    # The run last started, killed or not (workspaces from before "training": the last finished)
    run_dir = cfg.out or ws.latest("training" if "training" in ws.state() else "run")
    record = RunFolder(run_dir).record()
    finished = checkpoint.finished_epochs(run_dir)
    if "student" in given and same_origin(record.student_origin, cfg.student):
        given = set(given) - {"student"}  # the file the run copied; its content is checked next
    note = check_origin(record.student_origin, run_dir)
    if note:
        log(note)
    cfg, recorded, notes = resume.resumed_config(record, cfg, given, run_dir, finished)
    for note in notes:
        log(note)
    return cfg, run_dir, replace(record, config=recorded)


def distill(
    cfg: DistillConfig,
    log: Callable[[str], None] = print,
    online_teacher: Callable[[np.ndarray], np.ndarray] | None = None,
    given: Collection[str] | None = None,
) -> RunResult:
    """Train `cfg.student` on the cache's targets and export the best epoch (see `_distill`).

    torch's thread count is the process's: `--threads` applies to this run only and is put
    back afterwards, so that a later run in the same process (a pipeline, a sweep, a test)
    trains with its own setting, not an earlier run's (1 thread instead of 2 changes the
    digits recipe's student by 1.1 points).
    """
    threads = torch.get_num_threads()
    try:
        return _distill(cfg, log, online_teacher, given)
    finally:
        torch.set_num_threads(threads)


def _distill(
    cfg: DistillConfig,
    log: Callable[[str], None] = print,
    online_teacher: Callable[[np.ndarray], np.ndarray] | None = None,
    given: Collection[str] | None = None,
) -> RunResult:
    """Train `cfg.student` on the cache's targets and export the best epoch to ONNX.

    The best epoch is chosen on `cfg.val_fraction` of the training samples, held back from
    training; the exported model is then measured once on the cache's eval (test) split.

    Args:
        cfg: the settings (see `DistillConfig`).
        log: receives one line per epoch and notes.
        online_teacher: with `cfg.online`, a function from a batch of model input to teacher
            logits, replacing the cached teacher run through onnxruntime (benchmarks use it to
            time an eager PyTorch teacher).
        given: with `cfg.resume`, the names of the settings the user set, each compared with
            the run's record (None: those that differ from the defaults).

    Example:
        >>> distill(DistillConfig(student="resnet8", epochs=2))  # doctest: +SKIP
    """
    starting_weights = None  # a float run's --init; a resumed run's checkpoint replaces it
    if cfg.init is not None and not cfg.qat and not cfg.resume:
        try:  # read before anything is built: a bad starting point is refused at once
            starting_weights = read_state_dict(cfg.init)
        except StartingPointError as e:
            raise DistillConfigError(str(e)) from e
    ws = Workspace(cfg.workdir)
    dist = distributed.setup()
    say = log if dist.is_main else _quiet
    record, replacing = None, False
    pinned = None  # a new run's student as it records it (a file student: its copy)
    if cfg.resume:
        given = resume.differing_from_defaults(cfg) if given is None else given
        cfg, run_dir, record = _resolve_resume(cfg, ws, given, say)
    else:
        cfg = _resolve_new(cfg, ws)
        run_dir = dist.broadcast_path(_run_dir(cfg, ws))
        pinned = pin(cfg.student, run_dir)
        cfg = replace(cfg, student=pinned.spec)
        # Refused before any work; the old run is removed only once the new one can start.
        replacing = dist.is_main and RunFolder(run_dir).check_new(cfg.overwrite)
    cache_path = cfg.cache or ws.latest("cache")
    cache = CacheReader(cache_path)
    if record is not None:
        resume.check_cache(record, cache.key, run_dir)
    unlabeled.check_labeled(cache, cache_path)
    extra_caches = unlabeled.open_caches(cfg, cache)
    if record is not None:
        unlabeled.check_resumed(record, extra_caches, run_dir)
    if "eval" not in cache.sections:
        raise CacheError(
            f"cache {cache_path} has no eval section to test on; recache without --no-eval"
        )
    train_section = cache.section("train")
    split = validation.carve(train_section.n, cfg.val_fraction, cfg.seed)
    if cfg.batch_size > len(split.train):
        # One step per epoch on fewer samples than asked, at a learning rate scaled for the
        # batch asked: a run that trains on nothing like its settings.
        raise DistillConfigError(
            f"--batch-size {cfg.batch_size} is more than the {len(split.train)} samples there "
            "are to train on; pass a smaller --batch-size"
        )
    train_src = cache.open_data("train", cfg.data, cfg.workers, cfg.workdir)
    eval_src = cache.open_data("eval", None, cfg.workers, cfg.workdir)
    spec = cache.input_spec
    device = torch.device(
        "cuda"
        if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    if cfg.bf16 and device.type == "cpu" and lacks_native_bf16():
        # Without bf16 arithmetic torch's CPU autocast runs emulated kernels: a MobileNetV2 w0.5
        # step at batch 128 took 26.3 s against float32's 2.6 s with oneDNN held to AVX2
        # (ONEDNN_MAX_CPU_ISA=AVX2). bf16 is a speed setting: train in float32 and say so.
        say("--bf16: this CPU has no bf16 arithmetic (avx512_bf16/amx_bf16); training in float32")
        cfg = replace(cfg, bf16=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    # Takes the cache's input as the teacher does (NHWC, NHW, flat), so its export does too.
    student = _build_student(cfg, spec, cache.num_classes, pinned.text if pinned else None)
    if starting_weights is not None:
        try:
            say(load_starting_point(cfg.init, student, starting_weights).describe())
        except StartingPointError as e:
            raise DistillConfigError(str(e)) from e
    # --channels-last re-lays NCHW batches; other layouts reach the network already permuted.
    channels_last = cfg.channels_last and spec.layout == "NCHW"
    if cfg.qat:  # on resume the run's own checkpoint fills the weights, not the float run
        student = qat.build(student, spec, init=None if cfg.resume else cfg.init)
        say(f"QAT from {cfg.init}: BatchNorm folded, U8S8 fake quantization inserted")
    samples = train_section.n + sum(c.section("train").n for c in extra_caches)
    module = DistillModule(student, build_objective(cfg, num_samples=samples))
    if extra_caches:
        unlabeled.check_objective(module.objective)
    _check_mixed_views(module.objective, train_section, cfg.online)
    teacher_keys = _check_teacher_arrays(module.objective, cache, cache_path, cfg.online)
    if dist.is_main:  # before the student moves to the device: it is timed on the CPU
        announce(cfg, student, cache, device, split, log)
    # Beyond the class scores: features (and top-k arrays), which may size lazy adapters.
    beyond_scores = tuple(k for k in teacher_keys if k != SCORES)
    if cfg.online:
        batches = OnlineBatches(cache, train_src, teacher=online_teacher, members=split.train)
    else:
        batches = CachedBatches(train_section, train_src, teacher_keys, members=split.train)
        if extra_caches:
            more = unlabeled.batches(extra_caches, teacher_keys, cfg.workers)
            batches = JoinedBatches([batches, *more])
    test_batches = CachedBatches(cache.section("eval"), eval_src)
    # The held-back samples (with --val-fraction 0: the test split). Agreement and KL compare
    # with the teacher on the first cached view; accuracy, which chooses the best epoch, is
    # scored on the samples unaugmented, as the deployed model will see them.
    select_batches = (
        test_batches
        if split.val is None
        else CachedBatches(train_section, train_src, members=split.val)
    )
    augmented = train_section.augmentation.policy != "none"
    clean_select = (
        CachedBatches(train_section, train_src, members=split.val, clean=True)
        if split.val is not None and augmented
        else None
    )
    module.to(device)
    if beyond_scores:  # a first forward builds the lazily shaped adapters of feature losses
        with torch.no_grad():
            probe = batches.load(np.arange(min(2, len(batches))), 0)
            # in eval mode: CRD fixes its normalisation and moves its memory in training only
            module.eval()
            module(*_to_device(probe, device, channels_last))
    # Sized by the batches actually taken (a partial last one is dropped), so the cosine
    # reaches its end on the last step.
    steps_per_epoch = max(1, batches.batches_per_epoch(cfg.batch_size, dist.world, drop_last=True))
    optimizer = _optimizer(cfg, module.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    state = checkpoint.State()
    if cfg.resume:
        state = _restore(run_dir, record, cfg, module, optimizer, scheduler, say)
    elif dist.is_main:
        if replacing:
            say(RunFolder(run_dir).remove_run())
        run_dir.mkdir(parents=True, exist_ok=True)
        pinned.write_copy()
        RunFolder(run_dir).write_record(
            RunRecord(
                config=cfg,
                cache=Path(cache_path).resolve(),
                cache_key=cache.key,
                versions=_versions(),
                world_size=dist.world,
                device=str(device),
                student_parameters=sum(p.numel() for p in student.parameters()),
                validation=split.record(),
                unlabeled_keys=tuple(c.key for c in extra_caches),
                student_origin=pinned.origin,
            )
        )
        ws.record(training=run_dir)
    model = dist.wrap(module)
    teacher_acc = (
        cache.manifest.eval_teacher_accuracy
        if split.val is None
        else validation.teacher_accuracy(train_section, split.val)
    )
    scored_on = "test" if split.val is None else "val"
    title = f"{cfg.student}{' QAT' if cfg.qat else ''} ({cfg.loss}) on {Path(cache_path).name}"
    # Ctrl-C stops at the next step (finished epochs are checkpointed; --resume continues)
    with checkpoints() as check:
        for epoch in range(state.epoch + 1, cfg.epochs):
            kept = finite.kept_checkpoint(run_dir, state.epoch + 1)
            started = time.perf_counter()
            train_loss = _train_epoch(
                model,
                batches,
                optimizer,
                scheduler,
                cfg,
                epoch,
                device,
                dist,
                channels_last,
                check,
                kept,
            )
            seconds = time.perf_counter() - started
            # A step can leave weights non-finite with every loss still finite: never save them.
            finite.check_weights(
                module,
                f"after epoch {epoch + 1}",
                f"{kept}; start over with --overwrite and a lower --lr",
            )
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "epoch_seconds": round(seconds, 3),
                "lr": scheduler.get_last_lr()[0],
                "view": batches.view_for_epoch(epoch),
                "teacher_accuracy": teacher_acc,
                # α, T, DKD's warm-up weight as they stood at the epoch's last step
                **module.objective.schedule_state(),
            }
            if dist.is_main:
                row.update(evaluate(student, select_batches, device, channels_last))
                if clean_select is not None:
                    row["val_accuracy_view0"] = row["val_accuracy"]
                    clean = evaluate(student, clean_select, device, channels_last)
                    row["val_accuracy"] = clean["val_accuracy"]
                state.history.append(row)
                state.epoch = epoch
                best = row["val_accuracy"] > state.best_accuracy
                if best:
                    state.best_accuracy, state.best_epoch = row["val_accuracy"], epoch
                checkpoint.save(run_dir, module, optimizer, scheduler, state, best=best)
                write_metrics(RunFolder(run_dir).metrics_path, state.history)
                plot_curves(RunFolder(run_dir).curves_path, state.history, title)
                log(
                    f"epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}  {scored_on} acc "
                    f"{100 * row['val_accuracy']:.2f}%  agreement {100 * row['val_agreement']:.2f}%"
                    f"  KL {row['val_kl']:.4f}  ({seconds:.1f} s)"
                )
            dist.barrier()
    report = None
    if dist.is_main and cfg.export:
        fitting = cfg.fit_temperature or cfg.apply_temperature
        fit_batches = (clean_select or select_batches) if fitting else None
        fit = (fit_batches, device, channels_last)
        report = _export_best(run_dir, student, cfg, cache, test_batches, state, split, fit)
        # A QAT model is the workspace's quantized model, never its float student.
        ws.record(run=run_dir, **{"quantized" if cfg.qat else "student": Path(report["onnx"])})
        log(
            f"exported {report['onnx']}: test accuracy {100 * report['test_accuracy']:.2f}% "
            f"under onnxruntime (torch {100 * report['torch_accuracy']:.2f}%), max |diff| "
            f"{report['max_abs_diff']:.2e}"
        )
        if "temperature" in report:
            t = report["temperature"]
            log(
                f"temperature {t['temperature']:.3f} fitted on {t['fitted_on']}: NLL "
                f"{t['nll_before']:.4f} -> {t['nll_after']:.4f}, ECE {t['ece_before']:.4f} -> "
                f"{t['ece_after']:.4f} ("
                + (
                    "applied: the exported logits are divided by it"
                    if t["applied"]
                    else "stored in the model's metadata, not applied"
                )
                + "; bench and quantize report calibration with and without it)"
            )
    elif dist.is_main:
        ws.record(run=run_dir)
    dist.close()
    return RunResult(run_dir, state.history, report)


def _build_student(cfg: DistillConfig, spec, num_classes: int, code: str | None) -> nn.Module:
    """The student (from `code`, a new run's pinned file content, when given), or the pruned
    architecture it was cut down to; a run given starting weights loads them (a resumed run's
    checkpoint then replaces them)."""
    if cfg.architecture is None:
        student = create_student_for_spec(cfg.student, spec, num_classes, code)
    else:
        architecture = read_architecture(cfg.architecture)
        if not same_student(architecture.base, cfg.student):
            raise DistillConfigError(
                f"{cfg.architecture} prunes {architecture.base}, not --student {cfg.student}"
            )
        student = architecture.build(spec, num_classes)
    if cfg.init_weights is not None:
        try:
            checkpoint.load_weights(cfg.init_weights, student)
        except RuntimeError as e:
            raise DistillConfigError(
                f"{cfg.init_weights} does not fit student {cfg.student} ({str(e).splitlines()[0]})"
            ) from e
    return student


def _quiet(message: str) -> None:
    """The log of a process other than rank 0."""


def _restore(
    run_dir: Path,
    record: RunRecord,
    cfg: DistillConfig,
    module: nn.Module,
    optimizer,
    scheduler,
    log: Callable[[str], None],
) -> checkpoint.State:
    """The state after the run's last finished epoch, with `record` (the run's, with this
    command's changes) written to config.json."""
    run = RunFolder(run_dir)
    state = checkpoint.State()
    if run.last_checkpoint.exists():  # else killed before its first epoch ended
        state = checkpoint.load(run_dir, module, optimizer, scheduler)
    finished = state.epoch + 1
    log(f"resuming {run_dir} after epoch {finished} of {cfg.epochs}")
    if record != run.record():  # e.g. a new --epochs: config.json says what the run is
        run.write_record(record)
    if run.finished and finished < cfg.epochs:
        # The run is no longer finished: its export must not stand for the longer run.
        run.export_path.unlink()
        log(f"resume: {run.export_path} removed; the run exports again after epoch {cfg.epochs}")
    return state


def _tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.ascontiguousarray(value))


def _pinned(batch):
    """A batch in page-locked memory (run in the loader's thread): the copy to the GPU is
    then asynchronous and overlaps the step before it."""
    batch.x = _tensor(batch.x).pin_memory()
    batch.teacher = {k: _tensor(v).pin_memory() for k, v in batch.teacher.items()}
    batch.labels = _tensor(batch.labels).pin_memory()
    return batch


def _to_device(batch, device: torch.device, channels_last: bool):
    x = _tensor(batch.x).to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    teacher = {k: _tensor(v).to(device, non_blocking=True) for k, v in batch.teacher.items()}
    labels = _tensor(batch.labels).to(device, non_blocking=True)
    return x, teacher, labels


def _train_epoch(
    model: nn.Module,
    batches,
    optimizer,
    scheduler,
    cfg: DistillConfig,
    epoch: int,
    device: torch.device,
    dist,
    channels_last: bool,
    check: Callable[[], None],
    kept: str,
) -> float:
    """One epoch; stops at the first non-finite loss, before it reaches the weights."""
    from tqdm import tqdm

    model.train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    # Fake quantization rounds to 256 levels: in fp16/bf16 the rounding itself would be off.
    use_amp = device.type == "cuda" and not cfg.qat
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    autocast = torch.autocast(
        device.type,
        dtype=torch.float16 if use_amp else torch.bfloat16,
        enabled=use_amp or cfg.bf16,
    )
    total, count = 0.0, 0
    steps = batches.epoch(
        epoch,
        cfg.batch_size,
        cfg.seed,
        rank=dist.rank,
        world=dist.world,
        drop_last=True,
        finish=_pinned if device.type == "cuda" else None,
    )
    total_steps = batches.batches_per_epoch(cfg.batch_size, dist.world, drop_last=True)
    bar = tqdm(
        steps,
        total=total_steps,
        desc=f"epoch {epoch + 1}",
        leave=False,
        disable=None if dist.is_main else True,
    )
    objective = getattr(model, "module", model).objective  # under DDP, the wrapped module's
    for step, batch in enumerate(bar):
        check()
        # Schedules move step by step: the epochs done once this step is taken.
        objective.set_progress(epoch + min(1.0, (step + 1) / max(1, total_steps)), cfg.epochs)
        x, teacher, labels = _to_device(batch, device, channels_last)
        with autocast:
            loss, _ = model(x, teacher, labels)
        value = dist.unless_any_non_finite(float(loss.detach()))  # every rank stops together
        lr = scheduler.get_last_lr()[0]
        finite.check_loss(value, epoch + 1, step + 1, total_steps, lr, cfg.resolved_lr, kept)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += value * len(labels)
        count += len(labels)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def _check_mixed_views(objective: CompositeLoss, section, online: bool) -> None:
    """Mixed views (MixUp, CutMix) have two labels mixed by λ: refused where they would not
    be honoured (a loss with one target class; online KD, which draws fresh views)."""
    if not section.augmentation.mixes:
        return
    if online:
        raise DistillConfigError(
            "--online draws fresh views, and this cache's views are mixed (MixUp/CutMix) with "
            "labels mixed to match: train from the cache (drop --online)"
        )
    single = objective.lacking("takes_mixed_labels", default=True)
    if single:
        raise DistillConfigError(
            f"loss {', '.join(single)} decouples at one label per sample, and this cache's "
            "views are mixed (MixUp/CutMix, two labels each): use --loss kd"
        )


def _check_teacher_arrays(
    objective: CompositeLoss, cache: CacheReader, cache_path: Path, online: bool
) -> tuple[str, ...]:
    """The teacher arrays the objective's losses read, refused in one message where the cache
    (or, with --online, the live teacher's logits) cannot give them."""
    problems = [
        problem
        for label, term in zip(objective.term_names, objective.terms, strict=True)
        if (
            problem := cache.manifest.missing_arrays(
                cached_keys(term.teacher_keys), f"loss {label!r}", str(cache_path)
            )
        )
    ]
    if problems:
        raise CacheError("; ".join(problems))
    keys = objective.teacher_keys
    beyond_logits = [k for k in cached_keys(keys) if k != SCORES]
    if online and beyond_logits:
        raise DistillConfigError(
            f"--online runs the teacher for its logits only; the losses also read cached "
            f"arrays ({', '.join(beyond_logits)}): drop --online"
        )
    return keys


def _export_best(
    run_dir: Path,
    student: nn.Module,
    cfg: DistillConfig,
    cache: CacheReader,
    test_batches: CachedBatches,
    state: checkpoint.State,
    split: validation.Split,
    fit: tuple,
) -> dict:
    """Export the chosen epoch and measure it, once, on the test split; with
    --fit-temperature, fit a temperature on the validation split (`fit`: its batches, the
    device, channels-last) and record it in the model."""
    run = RunFolder(run_dir)
    checkpoint.load_weights(run.best_weights, student)
    finite.check_weights(
        student, f"in {run.best_weights}", "refusing to export it; start over with --overwrite"
    )
    metadata = {CACHE_KEY: cache.key}
    fitted, exported = None, student
    if fit[0] is not None:
        fitted = temperature.fit_on(student, *fit)
        fitted["applied"] = cfg.apply_temperature
        metadata.update(temperature.metadata_entry(fitted))
        if cfg.apply_temperature:
            exported = temperature.Scaled(student, fitted["temperature"])
    export = qat.export_qat if cfg.qat else export_student
    path = export(exported, cache.input_spec, run.student_path(cfg.qat), cfg.student, metadata)
    batches = ((b.x, b.labels) for b in test_batches.epoch(0, 256, shuffle=False))
    # For QAT this compares onnxruntime's int8 kernels with torch's fake quantization.
    check = check_export(exported, path, batches)
    report = ExportReport.from_dict(
        {
            **check,
            "best_epoch": state.best_epoch,
            "val_accuracy": state.best_accuracy,
            "test_accuracy": check["onnxruntime_accuracy"],
            "teacher_accuracy": cache.manifest.eval_teacher_accuracy,
            "selected_on": split.selected_on,
            "epochs": len(state.history),
            "val_samples": None if split.val is None else len(split.val),
            "int8_ops": count_int8_ops(path) if cfg.qat else None,
            **({"temperature": fitted} if fitted else {}),
        }
    )
    run.write_export_report(report)
    return report.to_dict()
