"""`bench`: every model on every execution provider and batch size, timed the same way.

For each EP, sessions for all models are created first; then, per batch size, the models are
timed in interleaved rounds (A B C A B C …) so that a noisy neighbour slows them alike, and the
spread between rounds is reported. An EP that is not available gives an error row (or, asked
for alone, an error); CoreML and NNAPI, which cannot run on this kind of host, give
onnxruntime's static usability analysis and an ORT-format file instead, marked as not timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxkd.bench import measure, report
from onnxkd.bench.config import BenchConfig
from onnxkd.bench.host import host_info
from onnxkd.bench.models import (
    BenchModel,
    attach_data,
    label_models,
    teacher_outputs,
    workspace_models,
)
from onnxkd.bench.timing import summarize, time_session
from onnxkd.errors import ProviderError
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
    if cfg.accuracy:
        attach_data(models, cfg.workdir, cfg.cache, cfg.data, log)
    static = {m.label: _static_facts(m) for m in models}
    rows: list[dict] = []
    for ep_name in eps:
        rows += _bench_ep(cfg, ep_name, models, static, log)
    if len(eps) == 1 and rows and all(r["status"] == "error" for r in rows):
        raise ProviderError(f"nothing could be timed on {eps[0]}: {rows[0]['error']}")
    noisy = [f"{r['model']}/{r['ep']}/b{r['batch']}" for r in rows if r.get("cv", 0) > cfg.cv_warn]
    if noisy:
        log(
            f"warning: run-to-run variation above CV {cfg.cv_warn} for {', '.join(noisy)}: "
            "trust p50 over the mean, close other programs, or raise --rounds/--min-seconds"
        )
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "format": 1,
        "host": host_info(cfg.threads),
        "config": cfg.to_dict(),
        "models": {
            m.label: {"path": str(m.path), **static[m.label], "data": _origin(m)} for m in models
        },
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    paths = report.write_all(document, out)
    return BenchResult(rows, paths["json"], paths["markdown"], paths.get("plot"))


def _static_facts(model: BenchModel) -> dict:
    return {
        "size_bytes": model.path.stat().st_size,
        "parameters": measure.parameter_count(model.path),
    }


def _origin(model: BenchModel) -> str | None:
    return model.data.origin if model.data else None


def _bench_ep(cfg, ep_name: str, models: list[BenchModel], static: dict, log) -> list[dict]:
    base = [{"model": m.label, "ep": ep_name, **static[m.label]} for m in models]
    try:
        ep = resolve_provider(ep_name)
    except ProviderError as e:
        if ep_name in MOBILE_EPS:
            return [_mobile_row(cfg, ep_name, m, b, log) for m, b in zip(models, base, strict=True)]
        log(f"{ep_name}: {e}")
        return [{**b, "status": "error", "error": str(e)} for b in base]
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
    result = []
    for batch in cfg.batches:
        timed = _time_interleaved(cfg, models, sessions, batch, log)
        for model in models:
            row = {**rows[model.label], "batch": batch}
            if model.label in timed:
                row.update(timed[model.label])
            elif row["status"] == "ok":
                row.update(status="error", error=timed.get(f"!{model.label}", "not timed"))
            result.append(row)
    for model in models:
        if cfg.accuracy and model.data is not None and model.label in sessions:
            acc = measure.accuracy(sessions[model.label], _eval_batches(cfg, model), model.output)
            for row in result:
                if row["model"] == model.label and row["ep"] == ep_name:
                    row["accuracy"] = round(acc, 5)
    return result


def _time_interleaved(cfg, models, sessions, batch: int, log) -> dict:
    """Per model: latency statistics over all rounds, the spread of per-round medians, and the
    peak memory of the process while it ran."""
    feeds, times, peaks, spread = {}, {}, {}, {}
    for model in models:
        if model.label not in sessions:
            continue
        try:
            feeds[model.label] = model.inputs(batch)
            sessions[model.label].run(None, feeds[model.label])
        except Exception as e:
            times[f"!{model.label}"] = _one_line(e)
            log(f"{model.label} at batch {batch}: {_one_line(e)}")
    labels = [m.label for m in models if m.label in feeds]
    for label in labels:
        times[label], peaks[label], spread[label] = [], 0, []
    for _ in range(cfg.rounds):
        for label in labels:
            with measure.PeakMemory() as memory:
                t = time_session(
                    sessions[label], feeds[label], cfg.runs, cfg.warmup, cfg.min_seconds
                )
            times[label].append(t)
            peaks[label] = max(peaks[label], memory.peak)
            spread[label].append(float(np.median(t)) * 1e3)
    result = {k: v for k, v in times.items() if k.startswith("!")}
    for label in labels:
        stats = summarize(np.concatenate(times[label]), batch)
        result[label] = {
            **{k: round(v, 5) if isinstance(v, float) else v for k, v in stats.items()},
            "round_p50_ms": [round(s, 5) for s in spread[label]],
            "round_spread": round((max(spread[label]) - min(spread[label])) / stats["p50_ms"], 4),
            "peak_rss_mb": round(peaks[label] / 2**20, 1),
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
