"""The quality part of bench.md (calibration, per-class damage) and its two pictures:
`reliability.png` for every scored model, `confusion.png` for the model a user would ship."""

from __future__ import annotations

from pathlib import Path

from onnxkd import splits
from onnxkd.metrics.calibration import Reliability

PLOTS = ("reliability.png", "confusion.png")
CALIBRATION_NOTE = (
    "ECE: share-weighted mean |accuracy - confidence| of the top-1 prediction over 15 bins, "
    "equal-width (of confidence) and equal-mass (of samples); NLL in nats; Brier: mean squared "
    "distance to the one-hot label, summed over classes (0 best, 2 worst)"
)


def first_scored(document: dict) -> tuple[str, dict] | None:
    """The first EP with quality figures, and its figures per model in the rows' order
    (bench.json stores its keys sorted)."""
    for ep, qualities in document.get("quality", {}).items():
        if qualities:
            return ep, in_model_order(document, qualities)
    return None


def split_name(document: dict) -> str:
    """The split bench scored on, as bench.json records it (results written before it did
    were scored on the test split too)."""
    return document.get("split", {}).get("name", splits.TEST)


def in_model_order(document: dict, per_model: dict) -> dict:
    """`per_model` with its models in the order bench ran them (teacher, student, INT8)."""
    order = [*dict.fromkeys(r["model"] for r in document["rows"]), *per_model]
    return {label: per_model[label] for label in dict.fromkeys(order) if label in per_model}


def markdown_lines(document: dict) -> list[str]:
    found = first_scored(document)
    if found is None:
        return []
    ep, qualities = found
    split = split_name(document)
    lines = ["", f"## Calibration ({split} split, {ep})", "", f"{CALIBRATION_NOTE}.", ""]
    lines += [
        "| model | accuracy | mean confidence | ECE equal-width | ECE equal-mass | NLL | Brier |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, q in qualities.items():
        lines.append(_calibration_row(label, q["calibration"]))
        scaled = q.get("temperature_scaled")
        if scaled:
            lines.append(
                _calibration_row(f"{label}, T = {scaled['temperature']:.3f}", scaled["calibration"])
            )
        unscaled = q.get("without_temperature")
        if unscaled:
            lines.append(_calibration_row(f"{label}, without T", unscaled["calibration"]))
    for label, q in qualities.items():
        drift = q.get("against", {}).get("calibration_drift")
        if drift:
            ref = q["against"]["reference"]
            lines.append(
                f"\n{label} against {ref}: ECE {_signed(100 * drift['ece_equal_width'])} points "
                f"(equal-width), {_signed(100 * drift['ece_equal_mass'])} (equal-mass), NLL "
                f"{_signed(drift['nll'], 4)}, Brier {_signed(drift['brier'], 4)}, confidence "
                f"{_signed(100 * drift['mean_confidence'])} points."
            )
        fitted = q.get("temperature_scaled") or q.get("without_temperature")
        if fitted:
            how = (
                "is applied in its graph (its row above is with it; `without T` is before)"
                if fitted.get("applied")
                else "is stored in its metadata, not applied (the `T =` row applies it)"
            )
            lines.append(
                f"\n{label}'s temperature {fitted['temperature']:.3f} was fitted on "
                f"{fitted['fitted_on']}, not on these samples, and {how}."
            )
    lines += ["", "![reliability](reliability.png)"]
    lines += _per_class_lines(ep, qualities, document.get("shipped"), split)
    return lines


def _per_class_lines(ep: str, qualities: dict, shipped: str | None, split: str) -> list[str]:
    labels = list(qualities)
    names = qualities[labels[0]]["class_names"]
    lines = ["", f"## Per-class accuracy ({split} split, {ep})", ""]
    if len(names) <= 30:
        lines += ["| class | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        for k, name in enumerate(names):
            cells = [_percent(qualities[m]["per_class_accuracy"][k]) for m in labels]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    else:
        lines.append(f"{len(names)} classes: per-class accuracy is in bench.json.")
    for label, q in qualities.items():
        against = q.get("against")
        if not against:
            continue
        if "note" in against:
            lines.append(f"\n{label} against {against['reference']}: {against['note']}.")
            continue
        worst = ", ".join(
            f"{c['name']} {_signed(-c['lost_points'], 1)}"
            for c in against["worst_classes"]
            if c["lost_points"] > 0
        )
        lines.append(
            f"\n{label} against {against['reference']}: the mean class lost "
            f"{against['mean_lost_points']:.2f} points; most lost: {worst or 'none'}."
        )
        for c in against["flagged_classes"]:
            lines.append(
                f"\n**Warning: class {c['name']} lost {c['lost_points']:.1f} points under {label}, "
                f"{c['excess_points']:.1f} more than the average class (standard error "
                f"{c['standard_error_points']:.1f}, {c['samples']} samples)**: a failure top-1 "
                f"hides; check that class's samples and what {label} was made from."
            )
    shipped = shipped_label(qualities, shipped)
    if shipped and "confusion" in qualities[shipped]:
        lines += [f"\nConfusion matrix of {shipped}, the model that ships:"]
        lines += ["", "![confusion](confusion.png)"]
    return lines


def shipped_label(qualities: dict, preferred: str | None) -> str | None:
    if preferred in qualities:
        return preferred
    for role in ("quantized", "student"):
        if role in qualities:
            return role
    return list(qualities)[-1] if qualities else None


def write_plots(document: dict, out: Path) -> dict[str, Path]:
    """reliability.png and confusion.png when there are figures for them; old ones removed."""
    from onnxkd.metrics import plots

    written: dict[str, Path] = {}
    found = first_scored(document)
    for name in PLOTS:
        (out / name).unlink(missing_ok=True)
    if found is None:
        return written
    _, qualities = found
    curves = {
        label: Reliability(**{k: tuple(v) if isinstance(v, list) else v for k, v in curve.items()})
        for label, q in qualities.items()
        for curve in [q["reliability"]["width"]]
    }
    eces = {label: q["calibration"]["ece_equal_width"] for label, q in qualities.items()}
    written["reliability"] = plots.reliability_diagram(curves, eces, out / "reliability.png")
    shipped = shipped_label(qualities, document.get("shipped"))
    if shipped and "confusion" in qualities[shipped]:
        import numpy as np

        written["confusion"] = plots.confusion_plot(
            np.asarray(qualities[shipped]["confusion"]),
            qualities[shipped]["class_names"],
            f"{shipped}: confusion on the {split_name(document)} split",
            out / "confusion.png",
        )
    return written


def _calibration_row(label: str, c: dict) -> str:
    return (
        f"| {label} | {100 * c['accuracy']:.2f}% | {100 * c['mean_confidence']:.2f}% | "
        f"{100 * c['ece_equal_width']:.2f}% | {100 * c['ece_equal_mass']:.2f}% | "
        f"{c['nll']:.4f} | {c['brier']:.4f} |"
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}"
