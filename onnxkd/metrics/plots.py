"""Pictures of the figures in `calibration` and `per_class`: a reliability diagram and a
confusion matrix. Each is written to a temporary name and renamed, so a plot is whole or absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxkd.figures import pyplot, save_figure
from onnxkd.metrics.calibration import Reliability


def reliability_diagram(curves: dict[str, Reliability], eces: dict[str, float], path: Path) -> Path:
    """Accuracy against confidence per bin for each model (one line each, the diagonal is
    perfect calibration), and below it how many samples each bin holds."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    width = None
    for i, (label, curve) in enumerate(curves.items()):
        colour = plt.cm.tab10(i % 10)
        points = [
            (f, a)
            for f, a, c in zip(curve.confidence, curve.accuracy, curve.counts, strict=True)
            if c
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            top.plot(
                xs, ys, marker="o", color=colour, label=f"{label} (ECE {100 * eces[label]:.1f}%)"
            )
        centres = (np.array(curve.edges[:-1]) + np.array(curve.edges[1:])) / 2
        width = width or (curve.edges[1] - curve.edges[0]) / (len(curves) + 1)
        offset = (i - (len(curves) - 1) / 2) * width
        bottom.bar(centres + offset, curve.counts, width=width, color=colour, alpha=0.8)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy in bin")
    top.set_title("reliability (equal-width bins of top-1 confidence)")
    top.grid(alpha=0.3)
    top.legend(fontsize="small", loc="upper left")
    bottom.set_xlabel("top-1 confidence")
    bottom.set_ylabel("samples")
    bottom.set_yscale("symlog")
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_plot(counts: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (each row: where the samples of that class went),
    with the counts printed where the matrix is small enough to read them."""
    plt = pyplot()
    k = len(names)
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    share = counts / totals
    size = min(12.0, 2.5 + 0.45 * k)
    fig, axis = plt.subplots(figsize=(size, size * 0.85))
    image = axis.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    axis.text(
                        j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=colour
                    )
        axis.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        axis.set_yticks(range(k), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    fig.tight_layout()
    return save_figure(fig, path)
