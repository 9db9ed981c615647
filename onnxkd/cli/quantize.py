"""`onnxkd quantize`: the command; the work is in `onnxkd.quantize.ptq`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli.options import Finite, NameChoice, log, workdir_option, workers_option
from onnxkd.quantize.config import REDUCE_RANGE_CHOICES, TARGET_CHOICES


@click.command("quantize")
@click.argument(
    "model", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="INT8 model path [default: MODEL.int8.onnx beside the model]; its report goes "
    "beside it (.json).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing INT8 model and report at the output path (without it, "
    "quantize refuses).",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="The cache the model was distilled from [default: the one its metadata names].",
)
@click.option(
    "--data", help="Calibration (train split) and test data, for a model with no onnxkd cache."
)
@click.option(
    "--target",
    type=click.Choice(TARGET_CHOICES),
    default="auto",
    show_default=True,
    help="x86: uint8 activations, int8 weights (U8S8); arm: int8 both (S8S8); auto: this host.",
)
@click.option(
    "--reduce-range",
    type=click.Choice(REDUCE_RANGE_CHOICES),
    default="auto",
    show_default=True,
    help="7-bit weights, for x86 CPUs without VNNI (AVX2, AVX-512F), whose U8S8 int8 products "
    "saturate at full range; auto: when this host is one.",
)
@click.option(
    "--calibration",
    type=NameChoice("onnxkd.quantize.calibration:CALIBRATIONS", listed=True),
    default="minmax",
    show_default=True,
)
@click.option("--calib-samples", type=click.IntRange(1), default=512, show_default=True)
@click.option("--calib-batch", type=click.IntRange(1), default=32, show_default=True)
@click.option("--percentile", type=Finite(0, 100, min_open=True), default=99.999, show_default=True)
@click.option(
    "--calib-memory-mb",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    help="Activations held at once during calibration (entropy/percentile keep them all).",
)
@click.option(
    "--per-channel/--per-tensor",
    default=True,
    show_default=True,
    help="Weights quantized per output channel, or per tensor.",
)
@click.option(
    "--simplify/--no-simplify", default=True, show_default=True, help="Simplify with onnxsim."
)
@click.option(
    "--max-drop",
    type=Finite(0),
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
    "--eval-samples", type=click.IntRange(1), help="Test-split samples to score [default: all]."
)
@click.option("--threads", type=click.IntRange(1), help="onnxruntime intra-op threads.")
@workers_option("for calibration and accuracy")
@workdir_option
def quantize_cmd(**settings):
    """Quantize a student to INT8 (onnxruntime static, QDQ) and check its accuracy."""
    from onnxkd.quantize.config import QuantizeConfig
    from onnxkd.quantize.ptq import quantize
    from onnxkd.quantize.summary import summarize

    click.echo(summarize(quantize(QuantizeConfig(**settings), log=log)))


COMMANDS = (quantize_cmd,)
