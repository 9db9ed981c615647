"""The running-cost part of bench.md: memory while running (weights, activation peak, measured
peak, and which dominates), `memory.png`, and energy per inference or why there is none."""

from __future__ import annotations

from pathlib import Path

from onnxkd.bench.quality_report import in_model_order
from onnxkd.figures import pyplot, save_figure

PLOT = "memory.png"
MEMORY_NOTE = (
    "weights: the initializers' bytes (parameters × dtype); activation peak: the largest sum of "
    "tensors live at once when the graph runs in order at that batch, each freed after its "
    "last use (an estimate: onnxruntime fuses nodes, reuses buffers and rounds its arena up); "
    "own peak: measured, what a fresh process adds by loading the model and running it there"
)


def measured_peaks(document: dict) -> tuple[str | None, dict[tuple[str, int], float]]:
    """The first EP with measured peaks, and its own-peak MB per (model, batch)."""
    for ep in dict.fromkeys(r["ep"] for r in document["rows"]):
        peaks = {
            (r["model"], r["batch"]): r["peak_rss_added_mb"]
            for r in document["rows"]
            if r["ep"] == ep and r.get("peak_rss_added_mb") is not None
        }
        if peaks:
            return ep, peaks
    return None, {}


def memory_rows(document: dict) -> list[dict]:
    """Per model and batch: weights, activation peak, measured peak and what dominates."""
    _, peaks = measured_peaks(document)
    rows = []
    for label, memories in in_model_order(document, document.get("graph_memory", {})).items():
        for m in memories:
            rows.append({"model": label, **m, "own_peak_mb": peaks.get((label, m["batch"]))})
    return rows


def memory_lines(document: dict) -> list[str]:
    rows = memory_rows(document)
    if not rows:
        return []
    ep, _ = measured_peaks(document)
    lines = ["", "## Memory while running", "", f"{MEMORY_NOTE[0].upper()}{MEMORY_NOTE[1:]}."]
    lines += [
        "",
        f"| model | batch | weights MB | activation peak MB | own peak MB ({ep or '-'}) | "
        "dominated by |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        dtypes = ", ".join(f"{k} {v:.3f}" for k, v in r["weights_mb_by_dtype"].items() if v)
        peak = f"{r['peak_activations_mb']:.3f}"
        if r["unknown_tensors"]:
            peak = f">= {peak} ({r['unknown_tensors']} tensors of unknown size)"
        own = "-" if r["own_peak_mb"] is None else f"{r['own_peak_mb']:.1f}"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['weights_mb']:.3f} ({dtypes or 'none'}) | "
            f"{peak} | {own} | {r['dominated_by'] or 'unknown'} |"
        )
    lines += _dominance_lines(rows)
    notes = {n for r in rows for n in r["notes"]}
    lines += [f"\n- {n}" for n in sorted(notes)]
    lines += ["", f"![memory]({PLOT})"]
    return lines


def _dominance_lines(rows: list[dict]) -> list[str]:
    """One sentence per model: which dominates at its smallest and largest batch."""
    lines = []
    for label in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == label), key=lambda r: r["batch"])
        low, high = mine[0], mine[-1]
        what = f"\n{label}: {low['dominated_by'] or 'unknown'} dominate at batch {low['batch']}"
        if high is not low:
            what += f", {high['dominated_by'] or 'unknown'} at batch {high['batch']}"
        lines.append(what + ".")
    return lines


def energy_lines(document: dict) -> list[str]:
    energies = document.get("energy", {})
    if not energies:
        return []
    lines = ["", "## Energy per inference", ""]
    for ep, found in energies.items():
        if not found.get("available"):
            lines.append(f"- {ep}: {found['reason']}.")
            continue
        lines += [
            f"On {ep}:",
            "",
            "| model | batch | J/inference | J/inference above idle | W | idle W |",
            "|---|---|---|---|---|---|",
        ]
        limits = set()
        for label, m in in_model_order(document, found["models"]).items():
            if not m.get("available"):
                lines.append(f"| {label} | - | {m['reason']} | - | - | - |")
                continue
            above = m["joules_per_inference_above_idle"]
            lines.append(
                f"| {label} | {m['batch']} | {m['joules_per_inference']:.4g} | "
                f"{'-' if above is None else f'{above:.4g}'} | {_watts(m['watts'])} | "
                f"{_watts(m['idle_watts'])} |"
            )
            limits.add(m["limits"])
        lines += [f"\nLimits: {text}." for text in sorted(limits)]
    return lines


def memory_plot(document: dict, path: Path) -> Path | None:
    """Per model, weights and activation peak at each batch as stacked bars, the measured
    own peak as a marker: which part dominates is seen at a glance."""
    rows = memory_rows(document)
    if not rows:
        return None
    plt = pyplot()
    names = [f"{r['model']}\nbatch {r['batch']}" for r in rows]
    x = range(len(rows))
    weights = [r["weights_mb"] for r in rows]
    activations = [r["peak_activations_mb"] for r in rows]
    fig, axis = plt.subplots(figsize=(max(5, 1.1 * len(rows) + 2), 4))
    axis.bar(x, weights, color="tab:blue", label="weights")
    axis.bar(x, activations, bottom=weights, color="tab:orange", label="activation peak")
    measured = [(i, r["own_peak_mb"]) for i, r in enumerate(rows) if r["own_peak_mb"] is not None]
    if measured:
        axis.scatter(
            [i for i, _ in measured],
            [mb for _, mb in measured],
            marker="_",
            s=600,
            color="black",
            label="own peak (measured)",
            zorder=3,
        )
    axis.set_xticks(list(x), names, fontsize="small")
    axis.set_ylabel("MB")
    axis.set_title("memory while running")
    axis.legend(fontsize="small")
    axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _watts(w: float | None) -> str:
    return "-" if w is None else f"{w:.1f}"
