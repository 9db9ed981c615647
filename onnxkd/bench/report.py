"""Bench output: `bench.json` (stable keys), `bench.md`, `pareto.png` and the terminal table."""

from __future__ import annotations

import json
from pathlib import Path

from onnxkd import splits
from onnxkd.bench import quality_report, resources_report
from onnxkd.figures import pyplot, save_figure
from onnxkd.files import write_json_atomic

# What a finished run leaves in its folder. bench.json is written last: when it is there, the
# rest of the result is too.
RESULT_FILES = (
    "bench.json",
    "bench.md",
    "pareto.png",
    *quality_report.PLOTS,
    resources_report.PLOT,
)
MEMORY_NOTE = (
    "own peak MB: the resident memory a fresh process adds by loading this model alone and "
    "running it at this batch (its peak less its size just before the session was created)"
)
THROUGHPUT_NOTE = "samples/s: the batch over the median (p50) latency"

COLUMNS = (
    ("model", "model"),
    ("ep", "EP"),
    ("batch", "batch"),
    ("accuracy", "acc %"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("cv", "CV"),
    ("throughput", "samples/s"),
    ("peak_rss_added_mb", "own peak MB"),
    ("size_bytes", "size MB"),
    ("parameters", "params"),
    ("on_ep", "on EP"),
)


def cells(row: dict) -> dict[str, str]:
    """One row's values as text, with a status in place of numbers that were not measured."""
    out = {"model": row["model"], "ep": row["ep"], "batch": str(row.get("batch", "-"))}
    acc = row.get("accuracy")
    out["accuracy"] = f"{100 * acc:.2f}" if acc is not None else "-"
    out["size_bytes"] = f"{row['size_bytes'] / 1e6:.3f}"
    out["parameters"] = _count(row["parameters"])
    if row["status"] == "ok":
        out.update(
            p50_ms=f"{row['p50_ms']:.3f}",
            p99_ms=f"{row['p99_ms']:.3f}",
            cv=f"{row['cv']:.2f}",
            throughput=f"{row['throughput']:.0f}",
            peak_rss_added_mb=_megabytes(row.get("peak_rss_added_mb")),
        )
        share = row.get("placement", {}).get("share_on_ep")
        out["on_ep"] = f"{100 * share:.0f}%" if share is not None else "-"
    else:
        status = "not timed" if row["status"] == "not timed" else "error"
        for key in ("p50_ms", "p99_ms", "cv", "throughput", "peak_rss_added_mb", "on_ep"):
            out[key] = status if key == "p50_ms" else "-"
    return out


def table(rows: list[dict]) -> str:
    """A plain-text table for the terminal."""
    texts = [cells(r) for r in rows]
    widths = {k: max(len(h), *(len(t[k]) for t in texts)) for k, h in COLUMNS}
    lines = [
        "  ".join(h.rjust(widths[k]) if k != "model" else h.ljust(widths[k]) for k, h in COLUMNS)
    ]
    for t in texts:
        lines.append(
            "  ".join(
                t[k].rjust(widths[k]) if k != "model" else t[k].ljust(widths[k]) for k, _ in COLUMNS
            )
        )
    return "\n".join(lines)


def markdown(document: dict) -> str:
    host = document["host"]
    lines = [
        "# onnxkd bench",
        "",
        f"Host: {host['cpu']}, {host['logical_cores']} logical cores, ISA "
        f"{' '.join(host['isa_flags']) or 'n/a'}; onnxruntime {host['onnxruntime']}, intra-op "
        f"threads: {host['intra_op_threads']}.",
        f"Latency: {document['config']['rounds']} interleaved rounds of at least "
        f"{document['config']['runs']} runs (and {document['config']['min_seconds']} s) after "
        f"{document['config']['warmup']} warm-up runs; outputs fetched each run; "
        f"{THROUGHPUT_NOTE}.",
        f"{MEMORY_NOTE[0].upper()}{MEMORY_NOTE[1:]}.",
        f"Accuracy (acc %): on the {splits.described(quality_report.split_name(document))}.",
        "",
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in document["rows"]:
        c = cells(row)
        lines.append("| " + " | ".join(c[k] for k, _ in COLUMNS) + " |")
    errors = [r for r in document["rows"] if r["status"] == "error"]
    mobile = [r for r in document["rows"] if r["status"] == "not timed"]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {r['model']} on {r['ep']}: {r['error']}" for r in errors]
    if mobile:
        lines += ["", "## Not timed: static analysis for mobile EPs", ""]
        for r in mobile:
            m = r["mobile"]
            lines.append(
                f"- {r['model']} on {r['ep']}: nothing was timed (no {r['ep']} on this host). "
                f"onnxruntime's usability check: **{m['verdict']}**, {m['supported_nodes']}/"
                f"{m['total_nodes']} nodes in {m['partitions']} partition(s); unsupported ops: "
                f"{', '.join(m['unsupported_ops']) or 'none'}; ORT format: `{m['ort_model']}`."
            )
            lines += [f"  - {note}" for note in m.get("notes", [])]
    lines += resources_report.memory_lines(document)
    lines += resources_report.energy_lines(document)
    lines += quality_report.markdown_lines(document)
    return "\n".join(lines) + "\n"


def pareto_y_axis(document: dict) -> str:
    """What pareto.png's y axis plots: accuracy on the split bench scored, or parameters
    when some model had no data to score."""
    rows = [r for r in document["rows"] if r["status"] == "ok"]
    batch = min((r["batch"] for r in rows), default=None)  # the batch the plot shows
    if rows and all(r.get("accuracy") is not None for r in rows if r["batch"] == batch):
        return f"{quality_report.split_name(document)} accuracy (%)"
    return "parameters (M, no data to score)"


def pareto_plot(document: dict, path: Path) -> Path | None:
    """Accuracy against p50 latency (smallest batch) per EP, and accuracy against size.

    One colour per model in both panels, one marker per EP."""
    rows = [r for r in document["rows"] if r["status"] == "ok"]
    if not rows:
        return None
    plt = pyplot()
    batch = min(r["batch"] for r in rows)
    rows = [r for r in rows if r["batch"] == batch]
    scored = all(r.get("accuracy") is not None for r in rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    colour = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    eps = list(dict.fromkeys(r["ep"] for r in rows))
    marker = {ep: "osD^v<>p*h"[i % 10] for i, ep in enumerate(eps)}

    def y_of(r: dict) -> float:
        return 100 * r["accuracy"] if scored else r["parameters"] / 1e6

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    # A legend, not labels beside the points: models of equal accuracy and close latency (an
    # INT8 student next to its float one) would print their labels over each other.
    for r in rows:
        label = f"{r['model']} ({r['ep']})" if len(eps) > 1 else r["model"]
        left.scatter(
            r["p50_ms"],
            y_of(r),
            s=70,
            color=colour[r["model"]],
            marker=marker[r["ep"]],
            label=label,
            alpha=0.85,
        )
    for m in models:
        r = next(r for r in rows if r["model"] == m)
        right.scatter(r["size_bytes"] / 1e6, y_of(r), s=70, color=colour[m], label=m, alpha=0.85)
    ylabel = pareto_y_axis(document)
    ys = [y_of(r) for r in rows]
    for axis, xs, xlabel in (
        (left, [r["p50_ms"] for r in rows], f"p50 latency at batch {batch} (ms)"),
        (right, [r["size_bytes"] / 1e6 for r in rows], "size on disk (MB)"),
    ):
        _axis(axis, xs, xlabel, ylabel)
        _y_limits(axis, ys, ceiling=100.0 if scored else None)
        axis.legend(fontsize="small", loc="best")
    left.set_title(f"latency on {', '.join(eps)}")
    right.set_title("size")
    fig.tight_layout()
    return save_figure(fig, path)


def _axis(axis, xs: list[float], xlabel: str, ylabel: str) -> None:
    """Log x only when values span more than a decade."""
    from matplotlib import ticker

    low, high = min(xs), max(xs)
    if high > 10 * low:
        axis.set_xscale("log")
        axis.set_xlim(low / 1.5, high * 1.5)
        # matplotlib labels the minor ticks of a log axis under two decades wide as
        # "2x10^-2", and they run into each other: plain numbers at 1-2-5 steps instead
        steps = (1.0, 2.0, 5.0) if high < 100 * low else (1.0,)
        axis.xaxis.set_major_locator(ticker.LogLocator(subs=steps))
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        pad = (high - low) or high or 1.0
        axis.set_xlim(max(0.0, low - 0.2 * pad), high + 0.2 * pad)
        axis.locator_params(axis="x", nbins=5)  # long tick labels such as 0.0225 collide
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)


def _y_limits(axis, ys: list[float], ceiling: float | None) -> None:
    """Room around the points, but no accuracy axis above 100%."""
    low, high = min(ys), max(ys)
    pad = max(0.5, 0.25 * (high - low))
    top = high + pad if ceiling is None else min(ceiling + 0.2, high + pad)
    axis.set_ylim(low - 2 * pad, top)


def write_all(document: dict, out: Path) -> dict[str, Path]:
    """bench.json, bench.md and pareto.png in `out`, each written whole or not at all.

    An earlier result's bench.json goes first and the new one comes last, so an interrupted
    run never leaves a complete-looking result mixing old and new files; an old plot the new
    result has none for is removed.
    """
    paths = {"json": out / "bench.json", "markdown": out / "bench.md"}
    paths["json"].unlink(missing_ok=True)
    # what the figure's axis says, kept beside the figures it plots
    document["plots"] = {"pareto": {"y_axis": pareto_y_axis(document)}}
    tmp = paths["markdown"].with_name("bench.md.tmp")
    tmp.write_text(markdown(document))
    tmp.replace(paths["markdown"])
    plot = pareto_plot(document, out / "pareto.png")
    if plot:
        paths["plot"] = plot
    else:
        (out / "pareto.png").unlink(missing_ok=True)
    paths.update(quality_report.write_plots(document, out))
    memory = resources_report.memory_plot(document, out / resources_report.PLOT)
    if memory:
        paths["memory_plot"] = memory
    else:
        (out / resources_report.PLOT).unlink(missing_ok=True)
    write_json_atomic(paths["json"], json.loads(json.dumps(document, default=str)))
    return paths


def _megabytes(mb: float | None) -> str:
    return "-" if mb is None else f"{mb:.1f}" if mb < 10 else f"{mb:.0f}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"
