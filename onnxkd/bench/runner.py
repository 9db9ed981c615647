"""`bench`: every model on every execution provider and batch size, timed the same way.

For each EP, sessions for all models are created first; then, per batch size, the models are
timed in interleaved rounds (A B C A B C …) so that a noisy neighbour slows them alike, and the
spread between rounds is reported. Throughput is the batch over the median latency, like the
p50 beside it. Each model's peak memory is measured in a process of its own (`bench.memory`),
never as this process's peak, which holds every model's sessions at once. An EP that is not
available gives an error row (or, asked for alone, an error); CoreML and NNAPI, which cannot
run on this kind of host, give onnxruntime's static usability analysis and an ORT-format file
instead, marked as not timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxkd import splits
from onnxkd.bench import energy, measure, quality, report
from onnxkd.bench.activations import graph_memories
from onnxkd.bench.config import BenchConfig, BenchError
from onnxkd.bench.host import host_info
from onnxkd.bench.memory import own_peak_mb
from onnxkd.bench.models import (
    BenchModel,
    attach_data,
    label_models,
    teacher_outputs,
    workspace_models,
)
from onnxkd.bench.output_path import check_writable, refuse_existing, writing
from onnxkd.bench.timing import summarize, time_session
from onnxkd.errors import ProviderError
from onnxkd.model_file import load_model_file
from onnxkd.providers import PROVIDERS, STATIC_CHECK_EPS, resolve_provider

MOBILE_EPS = STATIC_CHECK_EPS


@dataclass
class BenchResult:
    rows: list[dict]
    json_path: Path
    markdown_path: Path
    plot_path: Path | None


def bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> BenchResult:
    """Benchmark `cfg.models` (default: the workspace's) on `cfg.eps` at `cfg.batches`."""
    started = time.perf_counter()
    eps = [e.strip().lower() for e in cfg.eps]
    for name in eps:
        if name not in PROVIDERS:
            resolve_provider(name)  # raises: unknown name, listing the known ones
    if len(eps) == 1 and eps[0] not in MOBILE_EPS:
        resolve_provider(eps[0])  # asked for alone, an unavailable EP is an error
    if cfg.models:
        models = label_models(cfg.models, cfg.labels)
        teacher_outputs(models, cfg.cache)
    else:
        models = workspace_models(cfg.workdir, log)
    for model in models:  # a file that is no model is the user's mistake, not an error row
        load_model_file(model.path, BenchError)
    labels = {m.label for m in models}
    for name in {n for pair in cfg.made_from for n in pair} - labels:
        raise BenchError(
            f"--made-from names {name!r}, which is not a benched model; the models are "
            f"{', '.join(sorted(labels))}"
        )
    out = cfg.out_dir
    _check_output(out, cfg.overwrite)
    if cfg.accuracy:
        attach_data(models, cfg.workdir, cfg.cache, cfg.data, log, cfg.workers)
    static = {m.label: _static_facts(m) for m in models}
    rows: list[dict] = []
    qualities: dict[str, dict] = {}
    energies: dict[str, dict] = {}
    for ep_name in eps:
        ep_rows, ep_quality, energies[ep_name] = _bench_ep(cfg, ep_name, models, static, log)
        rows += ep_rows
        if ep_quality:
            qualities[ep_name] = ep_quality
    if len(eps) == 1 and rows and all(r["status"] == "error" for r in rows):
        raise ProviderError(f"nothing could be timed on {eps[0]}: {rows[0]['error']}")
    noisy = [f"{r['model']}/{r['ep']}/b{r['batch']}" for r in rows if r.get("cv", 0) > cfg.cv_warn]
    if noisy:
        log(
            f"warning: run-to-run variation above CV {cfg.cv_warn} for {', '.join(noisy)}: "
            "trust p50 over the mean, close other programs, or raise --rounds/--min-seconds"
        )
    document = {
        "format": 1,
        "host": host_info(cfg.threads),
        "config": cfg.to_dict(),
        "models": {
            m.label: {"path": str(m.path), **static[m.label], "data": _origin(m)} for m in models
        },
        # accuracy, calibration and per-class figures are all on this split
        "split": {"name": splits.TEST, "meaning": splits.MEANING[splits.TEST]},
        "rows": rows,
        "quality": {ep: quality.for_json(q) for ep, q in qualities.items()},
        "graph_memory": _graph_memories(models, cfg.batches, log),
        "energy": energies,
        "shipped": quality.shipped_model([m.label for m in models]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    with writing(BenchError, f"bench results to {out}"):
        out.mkdir(parents=True, exist_ok=True)
        paths = report.write_all(document, out)
    return BenchResult(rows, paths["json"], paths["markdown"], paths.get("plot"))


def _check_output(out: Path, overwrite: bool) -> None:
    """Before any timing: the folder can be written, and holds no earlier result unless
    `--overwrite` says to replace it."""
    check_writable(out, BenchError, f"bench results to {out}", "pass -o a folder you can write to")
    if not overwrite:
        refuse_existing(
            [out / name for name in report.RESULT_FILES],
            BenchError,
            "an earlier bench result; pass --overwrite to replace it, or -o another folder",
        )


def _static_facts(model: BenchModel) -> dict:
    return {
        "size_bytes": model.path.stat().st_size,
        "parameters": measure.parameter_count(model.path),
    }


def _origin(model: BenchModel) -> str | None:
    return model.data.origin if model.data else None


def _bench_ep(
    cfg, ep_name: str, models: list[BenchModel], static: dict, log
) -> tuple[list[dict], dict, dict]:
    """The rows of one EP, the quality figures of each model it scored, and their energy."""
    base = [{"model": m.label, "ep": ep_name, **static[m.label]} for m in models]
    try:
        ep = resolve_provider(ep_name)
    except ProviderError as e:
        if ep_name in MOBILE_EPS:
            rows = [_mobile_row(cfg, ep_name, m, b, log) for m, b in zip(models, base, strict=True)]
            return rows, {}, energy.unavailable(f"not available here: {ep_name} is not timed")
        log(f"{ep_name}: {e}")
        rows = [{**b, "status": "error", "error": str(e)} for b in base]
        return rows, {}, energy.unavailable(f"not available here: {ep_name} did not run")
    sessions, rows = {}, {}
    for model, b in zip(models, base, strict=True):
        try:
            session, seconds = measure.create_session(model.path, ep, cfg.threads)
            sessions[model.label] = session
            rows[model.label] = {**b, "status": "ok", "session_seconds": round(seconds, 4)}
            probe = model.inputs(min(cfg.batches))
            rows[model.label]["placement"] = measure.node_placement(
                model.path, ep, probe, cfg.threads
            )
        except Exception as e:  # one model failing on one EP must not stop the others
            sessions.pop(model.label, None)
            rows[model.label] = {**b, "status": "error", "error": _one_line(e)}
            log(f"{model.label} on {ep_name}: {_one_line(e)}")
    feeds, failed, broken = _prepare_feeds(cfg, models, sessions, log)
    peaks = _own_peaks(cfg, ep, models, feeds, log)
    result = []
    for batch in cfg.batches:
        timed = _time_interleaved(cfg, sessions, feeds, batch, log)
        for model in models:
            row = {**rows[model.label], "batch": batch}
            if model.label in timed:
                row.update(timed[model.label])
                row["peak_rss_added_mb"] = peaks.get(model.label, {}).get(batch)
            elif row["status"] == "ok":
                row.update(status="error", error=failed.get((model.label, batch), "not timed"))
            result.append(row)
    energies = _energies(cfg, ep_name, sessions, feeds, log)
    qualities = {}
    for model in models:
        score = None
        if cfg.accuracy and model.data is not None and model.label in sessions:
            score = measure.accuracy(sessions[model.label], _eval_batches(cfg, model), model.output)
            for row in result:
                if row["model"] == model.label and row["ep"] == ep_name:
                    row["accuracy"] = round(score.accuracy, 5)
                    row["non_finite_outputs"] = score.non_finite
            if score.samples and not score.non_finite and score.scores.dtype.kind == "f":
                names = model.data.spec.label_names
                qualities[model.label] = quality.model_quality(score, model.path, names)
        _warn_non_finite(model.label, ep_name, score, model.label in broken, log)
    quality.compare(qualities, [m.label for m in models], dict(cfg.made_from))
    return result, qualities, energies


def _energies(cfg, ep_name: str, sessions: dict, feeds: dict, log) -> dict:
    """Joules per inference of each timed model at its smallest batch where the host has
    counters for this EP, else why not (never an estimate)."""
    if cfg.energy_seconds == 0:
        return energy.unavailable("not measured: --energy-seconds 0")
    counters, reason = energy.energy_counters(ep_name)
    if not counters:
        return energy.unavailable(reason or "not available here: no energy counter to read")
    measured = {}
    for label, session in sessions.items():
        if not feeds.get(label):
            continue
        batch = min(feeds[label])
        feed = feeds[label][batch]
        log(f"{label} on {ep_name}: energy over {2 * cfg.energy_seconds:g} s (idle, then running)")
        measured[label] = energy.measure_energy(
            counters, lambda s=session, f=feed: s.run(None, f), batch, cfg.energy_seconds
        )
    return {"available": any(m.get("available") for m in measured.values()), "models": measured}


def _graph_memories(models: list[BenchModel], batches, log) -> dict[str, list[dict]]:
    """Per model and batch, its weights by dtype and activation peak read from its graph."""
    memories = {}
    for model in models:
        try:
            memories[model.label] = [m.to_dict() for m in graph_memories(model.path, batches)]
        except Exception as e:  # a figure missing for one model must not stop the benchmark
            log(f"{model.label}: its graph's memory could not be read ({_one_line(e)})")
    return memories


def _prepare_feeds(cfg, models, sessions, log) -> tuple[dict, dict, set]:
    """Per model, the fixed input of each batch size its session ran once; the error of each
    that did not; and the models whose outputs on those inputs hold NaN or Inf."""
    feeds: dict[str, dict[int, dict]] = {}
    failed: dict[tuple[str, int], str] = {}
    broken: set[str] = set()
    for model in models:
        if model.label not in sessions:
            continue
        feeds[model.label] = {}
        for batch in cfg.batches:
            try:
                feed = model.inputs(batch)
                outputs = sessions[model.label].run(None, feed)
            except Exception as e:
                failed[model.label, batch] = _one_line(e)
                log(f"{model.label} at batch {batch}: {_one_line(e)}")
                continue
            feeds[model.label][batch] = feed
            if any(_non_finite(o) for o in outputs):
                broken.add(model.label)
    return feeds, failed, broken


def _non_finite(output) -> bool:
    """Whether an output tensor holds NaN or Inf (maps and sequences are not looked into)."""
    return (
        isinstance(output, np.ndarray)
        and output.dtype.kind == "f"
        and not np.isfinite(output).all()
    )


def _own_peaks(cfg, ep, models, feeds: dict, log) -> dict[str, dict[int, float]]:
    """Each model's own peak memory per batch, each measured in a process of its own."""
    peaks = {}
    for model in models:
        if not feeds.get(model.label):
            continue
        try:
            peaks[model.label] = own_peak_mb(model.path, ep.name, cfg.threads, feeds[model.label])
        except Exception as e:  # a figure missing from one row must not stop the benchmark
            log(f"{model.label} on {ep.name}: its own peak memory was not measured ({e})")
    return peaks


def _warn_non_finite(label: str, ep: str, score, on_timed_inputs: bool, log) -> None:
    if score is not None and score.non_finite:
        log(
            f"warning: {label} on {ep} gives NaN/Inf outputs for {score.non_finite} of "
            f"{score.samples} validation samples: its accuracy is meaningless (argmax of NaN); "
            "check its weights and the data's preprocessing"
        )
    elif score is None and on_timed_inputs:
        log(
            f"warning: {label} on {ep} gives NaN/Inf outputs on the timed inputs: it is timed "
            "as it is, but check its weights (pass --data or --cache to score it)"
        )


def _time_interleaved(cfg, sessions, feeds: dict, batch: int, log) -> dict:
    """Per model: latency statistics over all rounds and the spread of per-round medians."""
    labels = [label for label in feeds if batch in feeds[label]]
    times: dict[str, list[np.ndarray]] = {label: [] for label in labels}
    for _ in range(cfg.rounds):
        for label in labels:
            times[label].append(
                time_session(
                    sessions[label], feeds[label][batch], cfg.runs, cfg.warmup, cfg.min_seconds
                )
            )
    result = {}
    for label in labels:
        stats = summarize(np.concatenate(times[label]), batch)
        spread = [float(np.median(t)) * 1e3 for t in times[label]]
        result[label] = {
            **{k: round(v, 5) if isinstance(v, float) else v for k, v in stats.items()},
            "round_p50_ms": [round(s, 5) for s in spread],
            "round_spread": round((max(spread) - min(spread)) / stats["p50_ms"], 4),
        }
        log(
            f"{label} batch {batch}: p50 {stats['p50_ms']:.3f} ms, "
            f"{stats['throughput']:.0f} samples/s"
        )
    return result


def _eval_batches(cfg: BenchConfig, model: BenchModel):
    n = len(model.data.eval)
    if cfg.eval_samples is not None:
        n = min(n, cfg.eval_samples)
    return model.data.batches(model.data.eval, 256, np.arange(n))


def _mobile_row(cfg, ep_name: str, model: BenchModel, base: dict, log) -> dict:
    from onnxkd.bench.mobile import mobile_analysis

    try:
        analysis = mobile_analysis(model.path, ep_name, (cfg.out_dir / ep_name).resolve())
    except Exception as e:
        return {**base, "status": "error", "error": _one_line(e)}
    log(
        f"{model.label} on {ep_name}: not timed (no {ep_name} on this host); onnxruntime's "
        f"usability check says {analysis['verdict']}, {analysis['supported_nodes']}/"
        f"{analysis['total_nodes']} nodes in {analysis['partitions']} partition(s)"
    )
    return {**base, "status": "not timed", "mobile": analysis}


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
