"""From measured trials to a leaderboard, a Pareto front and a choice within a budget.

Every trial gives two candidate models, its FP32 student and its INT8 one. A candidate's
accuracy is the mean ± std over seeds; the choice and the front use validation accuracy (the
held-back training samples each run chose its epoch on), and the figures reported beside them
are the test split's, which nothing here was chosen on.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from onnxkd.sweep.config import PRECISIONS


def candidates(entries: list[dict], latency: dict[str, float]) -> list[dict]:
    """One candidate per trial and precision with every seed's figures gathered.

    `entries`: per trial and seed, {"trial", "name", "seed", "eval" (None: failed)};
    `latency`: batch-1 p50 ms by model path.
    """
    by_key: dict[tuple[str, str], list[dict]] = {}
    names = {}
    for entry in entries:
        names[entry["trial"]] = entry["name"]
        report = entry.get("eval")
        for precision in PRECISIONS:
            model = report and report["models"].get(precision)
            if model:
                by_key.setdefault((entry["trial"], precision), []).append(
                    {**model, "params": report["params"], "ms": latency.get(model["path"])}
                )
    out = []
    for (trial, precision), runs in by_key.items():
        timed = [r["ms"] for r in runs if r["ms"] is not None]
        out.append(
            {
                "trial": trial,
                "name": names[trial],
                "precision": precision,
                "seeds": len(runs),
                "val_mean": _mean([r["val_accuracy"] for r in runs]),
                "val_std": _std([r["val_accuracy"] for r in runs]),
                "test_mean": _mean([r["test_accuracy"] for r in runs]),
                "test_std": _std([r["test_accuracy"] for r in runs]),
                "latency_ms": statistics.median(timed) if timed else None,
                "mb": _mean([r["bytes"] / 1e6 for r in runs]),
                "params": _mean([r["params"] for r in runs]),
            }
        )
    return sorted(out, key=lambda c: (-c["val_mean"], c["latency_ms"] or 0.0))


def pareto_front(cands: list[dict]) -> list[dict]:
    """The candidates no other is at least as fast and as accurate (validation) as, and
    strictly better in one."""
    timed = [c for c in cands if c["latency_ms"] is not None]

    def dominated(c: dict) -> bool:
        return any(
            d["latency_ms"] <= c["latency_ms"]
            and d["val_mean"] >= c["val_mean"]
            and (d["latency_ms"] < c["latency_ms"] or d["val_mean"] > c["val_mean"])
            for d in timed
        )

    return sorted((c for c in timed if not dominated(c)), key=lambda c: c["latency_ms"])


def choose(cands: list[dict], budget_ms: float | None, budget_mb: float | None) -> dict:
    """The most accurate candidate (validation mean; ties: the faster) within the budget, and
    a sentence saying why; `chosen` is None when nothing fits."""
    limits = []
    if budget_ms is not None:
        limits.append(f"{budget_ms:g} ms")
    if budget_mb is not None:
        limits.append(f"{budget_mb:g} MB")

    def fits(c: dict) -> bool:
        if budget_ms is not None and (c["latency_ms"] is None or c["latency_ms"] > budget_ms):
            return False
        return budget_mb is None or c["mb"] <= budget_mb

    within = [c for c in cands if fits(c)]
    budget = " and ".join(limits) if limits else None
    if not within:
        fastest = min(
            (c for c in cands if c["latency_ms"] is not None),
            key=lambda c: c["latency_ms"],
            default=None,
        )
        smallest = min(cands, key=lambda c: c["mb"], default=None)
        why = f"no model of the {len(cands)} meets {budget or 'the budget'}"
        if fastest:
            why += f"; the fastest is {_label(fastest)} at {fastest['latency_ms']:.3f} ms"
        if smallest:
            why += f", the smallest {_label(smallest)} at {smallest['mb']:.3f} MB"
        return {"chosen": None, "budget": budget, "why": why, "within": 0}
    best = min(within, key=lambda c: (-c["val_mean"], c["latency_ms"] or 0.0))
    why = (
        f"{_label(best)}: validation {_pct(best, 'val')}, test {_pct(best, 'test')}, "
        f"{_ms(best)}, {best['mb']:.3f} MB; "
        + (
            f"the most accurate on validation of the {len(within)} of {len(cands)} models "
            f"within {budget}"
            if budget
            else f"the most accurate on validation of all {len(cands)} models (no budget given)"
        )
    )
    better = [c for c in cands if c["val_mean"] > best["val_mean"] and not fits(c)]
    if better:
        top = max(better, key=lambda c: c["val_mean"])
        why += (
            f"; {len(better)} more accurate model(s) are over it, the best {_label(top)} "
            f"(validation {_pct(top, 'val')}, {_ms(top)}, {top['mb']:.3f} MB)"
        )
    return {"chosen": best, "budget": budget, "why": why, "within": len(within)}


def trial_rows(cands: list[dict], front: list[dict]) -> list[dict]:
    """One row per trial: its FP32 and INT8 candidates side by side."""
    on_front = {(c["trial"], c["precision"]) for c in front}
    rows: dict[str, dict] = {}
    for c in cands:
        row = rows.setdefault(c["trial"], {"trial": c["trial"], "name": c["name"]})
        row[c["precision"]] = {**c, "front": (c["trial"], c["precision"]) in on_front}
    return sorted(
        rows.values(),
        key=lambda r: -max(r[p]["val_mean"] for p in PRECISIONS if p in r),
    )


def markdown(rows: list[dict], choice: dict, ep: str, threads: int) -> str:
    """The leaderboard as a Markdown table, with the choice and how to read it."""
    head = (
        "| trial | seeds | params | FP32 val | FP32 test | INT8 test | FP32 MB | INT8 MB | "
        f"FP32 ms | INT8 ms | INT8 speed-up |\n|{'---|' * 11}"
    )
    lines = [head]
    for r in rows:
        f, q = r.get("fp32"), r.get("int8")
        first = f or q
        speed = (
            f"{f['latency_ms'] / q['latency_ms']:.2f}x"
            if f and q and f["latency_ms"] and q["latency_ms"]
            else "-"
        )
        cells = [
            r["name"],
            str(first["seeds"]),
            f"{first['params'] / 1e6:.3f} M",
            _pct(f, "val"),
            _pct(f, "test") + _star(f),
            _pct(q, "test") + _star(q),
            _mb(f),
            _mb(q),
            _ms(f, unit=False),
            _ms(q, unit=False),
            speed,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    chosen = (
        "**Chosen:** " + choice["why"] if choice["chosen"] else "**No choice:** " + choice["why"]
    )
    notes = (
        f"Accuracy: mean ± std over seeds (onnxruntime). Latency: batch-1 p50 on {ep}, "
        f"{threads} thread(s), all models timed in interleaved rounds after training. "
        "* marks a model on the Pareto front (latency against validation accuracy); the choice "
        "and the front use validation accuracy, and test accuracy is reported, never chosen on."
    )
    return "\n".join(lines) + "\n\n" + chosen + "\n\n" + notes + "\n"


def plot(cands: list[dict], front: list[dict], choice: dict, path: Path, budget_ms) -> Path:
    """Test accuracy against batch-1 latency for every model, the front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 5))
    marker = {"fp32": "o", "int8": "^"}
    for precision in PRECISIONS:
        pts = [c for c in cands if c["precision"] == precision and c["latency_ms"] is not None]
        if pts:
            ax.errorbar(
                [c["latency_ms"] for c in pts],
                [100 * c["test_mean"] for c in pts],
                yerr=[100 * c["test_std"] for c in pts],
                fmt=marker[precision],
                capsize=3,
                label=precision.upper(),
            )
    if front:
        ax.plot(
            [c["latency_ms"] for c in front],
            [100 * c["test_mean"] for c in front],
            "k--",
            lw=1,
            label="Pareto front (on validation)",
        )
    for c in cands:
        if c["latency_ms"] is not None:
            ax.annotate(
                c["name"] + (" (INT8)" if c["precision"] == "int8" else ""),
                (c["latency_ms"], 100 * c["test_mean"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    best = choice.get("chosen")
    if best and best["latency_ms"] is not None:
        ax.scatter(
            [best["latency_ms"]],
            [100 * best["test_mean"]],
            s=220,
            facecolors="none",
            edgecolors="red",
            label="chosen",
        )
    if budget_ms is not None:
        ax.axvline(budget_ms, color="red", lw=0.8, ls=":", label=f"budget {budget_ms:g} ms")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("batch-1 latency, ms (log)")
    ax.set_ylabel("test accuracy, % (mean ± std over seeds)")
    ax.set_title("sweep: test accuracy against batch-1 latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(c: dict) -> str:
    return f"{c['name']} ({c['precision'].upper()})"


def _pct(c: dict | None, split: str) -> str:
    if not c:
        return "-"
    if c["seeds"] < 2:  # one seed has no spread to show
        return f"{100 * c[f'{split}_mean']:.2f}%"
    return f"{100 * c[f'{split}_mean']:.2f} ± {100 * c[f'{split}_std']:.2f}%"


def _ms(c: dict | None, unit: bool = True) -> str:
    if not c or c["latency_ms"] is None:
        return "-"
    return f"{c['latency_ms']:.3f}" + (" ms" if unit else "")


def _mb(c: dict | None) -> str:
    return f"{c['mb']:.3f}" if c else "-"


def _star(c: dict | None) -> str:
    return " *" if c and c.get("front") else ""


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else 0.0


def _std(values: list[float]) -> float:
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0
