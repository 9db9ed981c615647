"""`onnxkd quantize`: the command; the work is in `onnxkd.quantize.ptq`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli_options import workdir_option


@click.command("quantize")
@click.argument("model", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="INT8 model path [default: MODEL.int8.onnx beside the model].",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="The cache the model was distilled from [default: the one its metadata names].",
)
@click.option("--data", help="Calibration/validation data, for a model with no onnxkd cache.")
@click.option(
    "--target",
    type=click.Choice(["auto", "x86", "arm"]),
    default="auto",
    show_default=True,
    help="x86: uint8 activations, int8 weights (U8S8); arm: int8 both (S8S8); auto: this host.",
)
@click.option(
    "--calibration",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
)
@click.option("--calib-samples", type=click.IntRange(1), default=512, show_default=True)
@click.option("--calib-batch", type=click.IntRange(1), default=32, show_default=True)
@click.option(
    "--percentile", type=click.FloatRange(0, 100, min_open=True), default=99.999, show_default=True
)
@click.option(
    "--calib-memory-mb",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    help="Activations held at once during calibration (entropy/percentile keep them all).",
)
@click.option("--per-tensor", is_flag=True, help="Per-tensor weights instead of per-channel.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim.")
@click.option(
    "--max-drop",
    type=click.FloatRange(0),
    metavar="POINTS",
    help="Accuracy-aware: keep the most sensitive nodes in float until INT8 loses at most "
    "this many accuracy points.",
)
@click.option(
    "--max-excluded",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="Accuracy-aware mode gives up after keeping this many nodes float.",
)
@click.option(
    "--eval-samples", type=click.IntRange(1), help="Validation samples to score [default: all]."
)
@click.option("--threads", type=click.IntRange(1), help="onnxruntime intra-op threads.")
@workdir_option
def quantize_cmd(
    model,
    out,
    cache,
    data,
    target,
    calibration,
    calib_samples,
    calib_batch,
    percentile,
    calib_memory_mb,
    per_tensor,
    no_simplify,
    max_drop,
    max_excluded,
    eval_samples,
    threads,
    workdir,
):
    """Quantize a student to INT8 (onnxruntime static, QDQ) and check its accuracy."""
    from onnxkd.quantize.config import QuantizeConfig
    from onnxkd.quantize.ptq import quantize

    cfg = QuantizeConfig(
        model=model,
        out=out,
        workdir=workdir,
        cache=cache,
        data=data,
        target=target,
        calibration=calibration,
        calib_samples=calib_samples,
        calib_batch=calib_batch,
        percentile=percentile,
        calib_memory_mb=calib_memory_mb,
        per_channel=not per_tensor,
        simplify=not no_simplify,
        max_drop=max_drop,
        max_excluded=max_excluded,
        eval_samples=eval_samples,
        threads=threads,
    )
    result = quantize(cfg, log=lambda s: click.echo(s, err=True))
    r = result.report
    rows = [("", "float", "int8")]
    rows.append(
        ("accuracy", f"{100 * r['float_accuracy']:.2f}%", f"{100 * r['int8_accuracy']:.2f}%")
    )
    rows.append(("agreement", "", f"{100 * r['int8_agreement']:.2f}%"))
    rows.append(("size", f"{r['float_bytes'] / 1e6:.3f} MB", f"{r['int8_bytes'] / 1e6:.3f} MB"))
    p50 = r["batch1_p50_ms"]
    rows.append(("batch-1 p50", f"{p50['float']:.3f} ms", f"{p50['int8']:.3f} ms"))
    for row in rows:
        click.echo(f"{row[0]:12} {row[1]:>12} {row[2]:>12}")
    if r["excluded_nodes"]:
        click.echo(f"kept float: {', '.join(r['excluded_nodes'])}")
    click.echo(f"int8:   {result.model}")
    click.echo(f"report: {result.report_path}")
