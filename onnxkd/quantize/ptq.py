"""`quantize`: post-training static INT8 quantization of a student, checked against the float model.

    simplify -> quant_pre_process -> calibrate -> quantize_static (QDQ, per-channel)
        -> float vs INT8 on the test split -> [accuracy-aware: keep sensitive nodes float]

Intermediate files and the calibration ranges live in the workspace under
`quantize/<model>-<sha>/`, keyed by the model's content, so a rerun reuses its calibration. The
INT8 model and its report are written beside the model (or to `--out`) only when complete, and
never over an earlier one unless `--overwrite` says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxkd import __version__
from onnxkd.bench.output_path import check_writable, refuse_existing, writing
from onnxkd.cache.for_model import ModelData, resolve_model_data
from onnxkd.distill.config import DistillConfigError
from onnxkd.distill.run_folder import RunFolder
from onnxkd.distill.validation import carve
from onnxkd.errors import QuantizeError
from onnxkd.files import sha256_file, write_json_atomic
from onnxkd.metadata import QUANTIZED, TEMPERATURE, read_metadata, write_metadata
from onnxkd.quantize import calibration, evaluate, passes, sensitivity
from onnxkd.quantize.config import TARGETS, QuantizeConfig
from onnxkd.workspace import Workspace

SENSITIVITY_SAMPLES = 64
# Accuracy-aware mode chooses on at most this many held-back training samples when the model
# has no run folder with a validation split.
SELECTION_SAMPLES = 1024


@dataclass
class QuantizeResult:
    model: Path
    report_path: Path
    report: dict


def _calibration_count(cfg: QuantizeConfig, data) -> str:
    """How many samples calibrate: all the training split has when --calib-samples asks more."""
    available = len(data.train)
    if cfg.calib_samples <= available:
        return str(cfg.calib_samples)
    return f"all {available} (--calib-samples {cfg.calib_samples} asks more than there are)"


def quantize(cfg: QuantizeConfig, log: Callable[[str], None] = print) -> QuantizeResult:
    """Quantize `cfg.model` (default: the workspace's latest student) to INT8 QDQ."""
    started = time.perf_counter()
    ws = Workspace(cfg.workdir)
    src = Path(cfg.model) if cfg.model else ws.latest("student")
    passes.load_model(src)
    passes.check_runs(src)
    metadata = read_metadata(src)
    if metadata.get(QUANTIZED):
        raise QuantizeError(f"{src} is already quantized ({metadata[QUANTIZED]})")
    out = Path(cfg.out) if cfg.out else src.with_name(f"{src.stem}.int8.onnx")
    report_path = out.with_suffix(".json")
    _check_outputs(src, out, report_path, ws.root, cfg.overwrite)
    hints = RunFolder.cache_hints(src)
    data = resolve_model_data(
        src, metadata, cfg.workdir, cfg.cache, cfg.data, hints, workers=cfg.workers
    )
    sha = sha256_file(src)
    work = ws.root / "quantize" / f"{src.stem}-{sha[:12]}"
    with writing(QuantizeError, f"the quantization work folder {work}"):
        work.mkdir(parents=True, exist_ok=True)
    log(
        f"quantizing {src} ({cfg.resolved_target}: {'/'.join(TARGETS[cfg.resolved_target])}, "
        f"{cfg.calibration} calibration on {_calibration_count(cfg, data)} samples from "
        f"{data.origin})"
    )

    steps = []
    prepared = work / "prepared.onnx"
    simplified = work / "simplified.onnx"
    if cfg.simplify:
        steps.append(passes.simplify(src, simplified))
    else:
        onnx.save(onnx.load(str(src)), str(simplified))
        steps.append(passes.PassResult("simplify", False, "skipped (--no-simplify)"))
    steps.append(passes.preprocess(simplified, prepared))
    steps.append(passes.name_nodes(prepared))
    for step in steps:
        log(f"  {step.name}: {step.note}")
    if cfg.resolved_reduce_range:
        why = "asked for" if cfg.reduce_range == "yes" else "this x86 host has no VNNI"
        log(f"  weights: 7-bit ({why}; full-range U8S8 products saturate without VNNI)")

    calib_file, calib_facts = _calibrate(cfg, data, prepared, work, log)
    act_type, weight_type = TARGETS[cfg.resolved_target]

    def quantize_to(dst: Path, excluded: list[str]) -> passes.PassResult:
        return passes.quantize_qdq(
            prepared,
            dst,
            calib_file,
            calibration.calibration_method(cfg.calibration),
            act_type,
            weight_type,
            cfg.per_channel,
            excluded,
            reduce_range=cfg.resolved_reduce_range,
        )

    full = work / "int8-full.onnx"
    steps.append(quantize_to(full, []))
    log(f"  quantize: {steps[-1].note}")
    eval_batches = list(_eval_batches(cfg, data))
    scored = evaluate.scores(
        {"float": evaluate.session(src, cfg.threads), "int8": evaluate.session(full, cfg.threads)},
        eval_batches,
    )
    preds = evaluate.top1(scored)
    accuracy = evaluate.accuracy_report(preds)
    drop = 100 * (accuracy["float_accuracy"] - accuracy["int8_accuracy"])
    log(
        f"  float {100 * accuracy['float_accuracy']:.2f}% -> int8 "
        f"{100 * accuracy['int8_accuracy']:.2f}% (drop {drop:.2f} points)"
    )
    final, excluded, aware = full, [], None
    if cfg.max_drop is not None:
        # Whether to keep nodes float, and which, is chosen on samples held back from the
        # test split: the accuracies reported below stay measured once.
        chosen_on, select_batches = _selection_batches(cfg, data, src)
        selected = evaluate.top1(
            evaluate.scores(
                {
                    "float": evaluate.session(src, cfg.threads),
                    "int8": evaluate.session(full, cfg.threads),
                },
                select_batches,
            )
        )
        select_drop = 100 * float(
            np.mean(selected["float"] == selected["labels"])
            - np.mean(selected["int8"] == selected["labels"])
        )
        log(f"  accuracy-aware: drop {select_drop:.2f} points on {chosen_on}")
        if select_drop > cfg.max_drop:
            final, excluded, aware = _accuracy_aware(
                cfg, data, prepared, work, select_batches, selected, quantize_to, log
            )
            aware["chosen_on"] = chosen_on
        else:
            aware = {
                "max_drop": cfg.max_drop,
                "met": True,
                "chosen_on": chosen_on,
                "attempts": [{"nodes": 0, "drop_points": round(select_drop, 4)}],
            }
    if excluded:
        scored["int8"] = evaluate.scores(
            {"int8": evaluate.session(final, cfg.threads)}, eval_batches
        )["int8"]
        preds = evaluate.top1(scored)
        accuracy = evaluate.accuracy_report(preds)
    quality = evaluate.quality_report(
        scored, data.spec.label_names, json.loads(metadata.get(TEMPERATURE, "null"))
    )
    models = {"float": src, "int8": final}
    if excluded:
        models["int8_all_nodes"] = full
    latency = evaluate.latency_report(models, eval_batches[0][0], cfg.threads)
    memory = evaluate.memory_report({"float": src, "int8": final})

    how = f"ptq-{cfg.calibration}-{cfg.resolved_target}"
    with writing(QuantizeError, f"the INT8 model {out}"):
        int8_tmp, compacted = _prepare_model(final, out, metadata, how)
    steps.append(compacted)
    try:
        int8_bytes = int8_tmp.stat().st_size
        report = {
            "model": str(src.resolve()),
            "model_sha256": sha,
            "int8_model": str(out.resolve()),
            "config": cfg.to_dict(),
            "activation_type": act_type,
            "weight_type": weight_type,
            "weight_bits": 7 if cfg.resolved_reduce_range else 8,
            "data": data.origin,
            "calibration": calib_facts,
            "passes": [vars(s) for s in steps],
            **accuracy,
            "drop_points": round(100 * (accuracy["float_accuracy"] - accuracy["int8_accuracy"]), 3),
            "quality": quality,
            "excluded_nodes": excluded,
            "accuracy_aware": aware,
            "float_bytes": src.stat().st_size,
            "int8_bytes": int8_bytes,
            "size_ratio": round(int8_bytes / src.stat().st_size, 4),
            **latency,
            "memory": memory,
            "seconds": round(time.perf_counter() - started, 1),
            "versions": _versions(),
        }
        with writing(QuantizeError, f"the INT8 model {out} and its report"):
            _publish(int8_tmp, out, report, report_path)
    finally:
        int8_tmp.unlink(missing_ok=True)  # left only when something failed before the rename
    ws.record(quantized=out)
    return QuantizeResult(out, report_path, report)


def _calibrate(cfg, data: ModelData, prepared: Path, work: Path, log) -> tuple[Path, dict]:
    """Calibrate once per (model, method, samples, data); a rerun reuses the saved ranges."""
    indices = data.calibration_indices(cfg.calib_samples)
    key = json.dumps(
        [cfg.calibration, cfg.percentile, indices.tolist(), data.train.fingerprint()]
    ).encode()
    calib_file = work / f"calibration-{cfg.calibration}-{hashlib.sha256(key).hexdigest()[:12]}.json"
    facts_file = calib_file.with_suffix(".facts.json")
    if calib_file.exists() and facts_file.exists():
        log(f"  calibration: reusing {calib_file.name}")
        return calib_file, json.loads(facts_file.read_text())
    batches = (x for x, _ in data.batches(data.train, cfg.calib_batch, indices))
    facts = calibration.calibrate(
        prepared,
        calib_file,
        cfg.calibration,
        batches,
        len(indices),
        cfg.calib_memory_mb,
        cfg.percentile,
        log,
    )
    write_json_atomic(facts_file, facts)
    log(
        f"  calibration: {facts['samples']} samples, "
        f"{facts['activation_bytes_per_sample'] / 2**20:.1f} MB of activations per sample"
    )
    return calib_file, facts


def _eval_batches(cfg: QuantizeConfig, data: ModelData):
    import numpy as np

    n = len(data.eval) if cfg.eval_samples is None else min(cfg.eval_samples, len(data.eval))
    return data.batches(data.eval, 256, np.arange(n))


def _selection_batches(cfg: QuantizeConfig, data: ModelData, src: Path) -> tuple[str, list]:
    """What accuracy-aware mode chooses on, never the test split: the distill run's own
    validation split when the model comes from a run folder that held one back, else
    training samples the calibration did not use (the student may have trained on those,
    which inflates both accuracies but not much the drop between them)."""
    run = RunFolder.of_model(src)
    try:
        config = run.record().config if run else None
    except DistillConfigError:
        config = None
    if config is not None and config.val_fraction > 0:
        val = carve(len(data.train), config.val_fraction, config.seed).val
        where = f"the run's validation split ({len(val)} samples held back from training)"
        return where, list(data.batches(data.train, 256, val))
    used = set(data.calibration_indices(cfg.calib_samples).tolist())
    rest = np.array([i for i in range(len(data.train)) if i not in used], dtype=np.int64)
    if len(rest) == 0:  # every training sample calibrates: nothing is left but those
        rest = np.arange(len(data.train))
    rest = np.sort(np.random.default_rng(1).permutation(rest)[:SELECTION_SAMPLES])
    where = f"{len(rest)} training samples the calibration did not use"
    return where, list(data.batches(data.train, 256, rest))


def _accuracy_aware(cfg, data, prepared, work, select_batches, preds, quantize_to, log):
    """Keep the most sensitive nodes in float until INT8 is within `cfg.max_drop` points on
    the selection samples."""

    indices = data.calibration_indices(SENSITIVITY_SAMPLES)
    samples = [x for x, _ in data.batches(data.train, cfg.calib_batch, indices)]
    units = sensitivity.rank_units(prepared, work / "int8-full.onnx", samples, cfg.calib_memory_mb)
    worst = ", ".join(f"{u['tensor']} ({u['sqnr_db']:.1f} dB)" for u in units[:3])
    log(f"accuracy-aware: most noise added at {worst}")
    labels = preds["labels"]
    float_acc = float((preds["float"] == labels).mean())

    def drop_with(excluded: list[str]) -> float:
        dst = work / f"int8-excl{len(excluded)}.onnx"
        quantize_to(dst, excluded)
        p = evaluate.predictions({"q": evaluate.session(dst, cfg.threads)}, select_batches)["q"]
        return 100 * (float_acc - float(np.mean(p == labels)))

    excluded, attempts = sensitivity.search_exclusions(
        units, drop_with, cfg.max_drop, cfg.max_excluded, log
    )
    final = work / (f"int8-excl{len(excluded)}.onnx" if excluded else "int8-full.onnx")
    met = any(a["nodes"] == len(excluded) and a["drop_points"] <= cfg.max_drop for a in attempts)
    if not met:
        log(
            f"accuracy-aware: no exclusion of up to {cfg.max_excluded} nodes brings the drop "
            f"within {cfg.max_drop} points; keeping the best found ({len(excluded)} nodes "
            "float). Try --calibration entropy/percentile, more --calib-samples, or "
            "`onnxkd distill --qat`"
        )
    aware = {
        "max_drop": cfg.max_drop,
        "met": met,
        "ranking": units[:20],
        "attempts": attempts,
    }
    return final, excluded, aware


def _check_outputs(src: Path, out: Path, report: Path, workspace: Path, overwrite: bool) -> None:
    """Before calibrating: the INT8 model and its report can be written, replace neither the
    float model nor (unless `--overwrite`) an earlier result or any other file."""
    if out.resolve() == src.resolve() or report.resolve() == src.resolve():
        raise QuantizeError(
            f"-o {out} would replace the float model {src} it is made from; pass another path"
        )
    if report.resolve() == out.resolve():
        raise QuantizeError(f"-o {out}: the report would replace the model; pass an .onnx path")
    check_writable(
        out.parent, QuantizeError, f"the INT8 model {out}", "pass -o a path you can write"
    )
    check_writable(
        workspace,
        QuantizeError,
        f"work files in {workspace}",
        "pass --workdir a folder you can write",
    )
    if not overwrite:
        # The default name too: a rerun after retraining in place, or with other settings,
        # must not replace the INT8 model a user has kept (or shipped) without a word.
        refuse_existing(
            [out, report],
            QuantizeError,
            "an earlier INT8 model or report; pass --overwrite to replace it, or -o another path",
        )


def _prepare_model(
    src: Path, out: Path, metadata: dict[str, str], how: str
) -> tuple[Path, passes.PassResult]:
    """The INT8 model, compacted and with the float model's metadata, in a temporary file
    beside `out` (renamed into place by `_publish`)."""
    model = onnx.load(str(src))
    passes.drop_zero_zero_points(model)
    compacted = passes.compact_tensor_names(model)
    write_metadata(model, {**metadata, QUANTIZED: how}, replace=True)
    model.producer_name, model.producer_version = "onnxkd", __version__
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    try:
        onnx.save(model, str(tmp))
    except BaseException:  # Ctrl-C or a full disk: no half-written file is left behind
        tmp.unlink(missing_ok=True)
        raise
    return tmp, compacted


def _publish(int8_tmp: Path, out: Path, report: dict, report_path: Path) -> None:
    """Put the model and then its report in place. An earlier report goes first, so that at no
    moment does a report describe a model it was not made with."""
    report_path.unlink(missing_ok=True)
    os.replace(int8_tmp, out)
    write_json_atomic(report_path, report)


def _versions() -> dict:
    import onnxruntime

    return {"onnxkd": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
