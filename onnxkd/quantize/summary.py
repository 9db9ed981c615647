"""A quantization report in a few lines for the terminal: float against int8 (no onnxruntime)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnxkd.quantize.ptq import QuantizeResult


def summarize(result: QuantizeResult) -> str:
    """Accuracy, agreement, size and batch-1 latency of the float and int8 models, the nodes
    kept in float, and where the model and its report are."""
    r = result.report
    p50 = r["batch1_p50_ms"]
    rows = [
        ("", "float", "int8"),
        ("accuracy", f"{100 * r['float_accuracy']:.2f}%", f"{100 * r['int8_accuracy']:.2f}%"),
        ("agreement", "", f"{100 * r['int8_agreement']:.2f}%"),
        ("size", f"{r['float_bytes'] / 1e6:.3f} MB", f"{r['int8_bytes'] / 1e6:.3f} MB"),
        ("batch-1 p50", f"{p50['float']:.3f} ms", f"{p50['int8']:.3f} ms"),
    ]
    quality = r.get("quality")
    if quality:
        f, q = quality["float"]["calibration"], quality["int8"]["calibration"]
        rows += [
            (
                "ECE (15 bins)",
                f"{100 * f['ece_equal_width']:.2f}%",
                f"{100 * q['ece_equal_width']:.2f}%",
            ),
            ("NLL", f"{f['nll']:.4f}", f"{q['nll']:.4f}"),
            ("Brier", f"{f['brier']:.4f}", f"{q['brier']:.4f}"),
        ]
    memory = r.get("memory") or {}
    if all(isinstance(memory.get(m), list) for m in ("float", "int8")):
        f, q = memory["float"][0], memory["int8"][0]
        rows += [
            ("weights", f"{f['weights_mb']:.3f} MB", f"{q['weights_mb']:.3f} MB"),
            (
                "activations@1",
                f"{f['peak_activations_mb']:.3f} MB",
                f"{q['peak_activations_mb']:.3f} MB",
            ),
        ]
    lines = [f"{a:13} {b:>12} {c:>12}" for a, b, c in rows]
    for c in (quality or {}).get("flagged_classes", []):
        lines.append(
            f"warning: class {c['name']} lost {c['lost_points']:.1f} points under INT8, "
            f"{c['excess_points']:.1f} more than the average class ({c['samples']} samples)"
        )
    if r.get("weight_bits") == 7:
        lines.append("weights: 7-bit (--reduce-range: for x86 without VNNI)")
    if r["excluded_nodes"]:
        lines.append(f"kept float: {', '.join(r['excluded_nodes'])}")
    lines += [f"int8:   {result.model}", f"report: {result.report_path}"]
    return "\n".join(lines)
