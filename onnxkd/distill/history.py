"""A run's per-epoch record: `metrics.jsonl` and the `curves.png` plot drawn from it."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_metrics(path: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the history kept in the checkpoint, so the file never holds
    an epoch that the checkpoint does not (or misses one it does) after a kill and resume."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for row in history:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def plot_curves(path: Path, history: list[dict], title: str) -> None:
    """Training loss, validation accuracy, teacher agreement and KL against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] + 1 for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    if "val_kl" in history[0]:
        left.plot(
            epochs, [row["val_kl"] for row in history], marker="s", label="val KL(teacher‖student)"
        )
    left.set_xlabel("epoch")
    left.set_title("loss")
    left.legend()
    right.plot(
        epochs, [100 * row["val_accuracy"] for row in history], marker="o", label="student accuracy"
    )
    if "val_agreement" in history[0]:
        right.plot(
            epochs,
            [100 * row["val_agreement"] for row in history],
            marker="s",
            label="top-1 agreement with teacher",
        )
    if history and history[0].get("teacher_accuracy") is not None:
        right.axhline(
            100 * history[0]["teacher_accuracy"], color="grey", ls="--", label="teacher accuracy"
        )
    right.set_xlabel("epoch")
    right.set_ylabel("%")
    right.set_title("validation")
    right.legend(loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
