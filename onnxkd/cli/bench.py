"""`onnxkd bench`: the command; the work is in `onnxkd.bench.runner`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli.options import CommaList, Finite, log, workdir_option, workers_option
from onnxkd.providers import EP_NAMES


@click.command("bench")
@click.argument("models", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--ep",
    "eps",
    type=CommaList(),
    default="cpu",
    show_default=True,
    help=f"Execution providers, comma-separated: {', '.join(EP_NAMES)}.",
)
@click.option("--batch", "batches", type=CommaList(int), default="1,8,32", show_default=True)
@click.option(
    "--runs",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Timed runs per round (at least).",
)
@click.option(
    "--min-seconds",
    type=Finite(0),
    default=0.5,
    show_default=True,
    help="Time each round for at least this long.",
)
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True)
@click.option(
    "--energy-seconds",
    type=Finite(0),
    default=2.0,
    show_default=True,
    help="Where the host has energy counters (RAPL, NVML): run each model this long at the "
    "smallest batch, after as long idle, for joules per inference; 0 skips it.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Interleaved rounds (A B A B …); their spread is reported.",
)
@click.option("--threads", type=click.IntRange(1), help="onnxruntime intra-op threads.")
@workers_option("for the accuracy pass")
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache whose test split (its eval section) scores the models.",
)
@click.option("--data", help="Data whose test split scores models with no onnxkd cache.")
@click.option(
    "--accuracy/--no-accuracy",
    default=True,
    show_default=True,
    help="Score validation accuracy too (--no-accuracy: time only).",
)
@click.option("--eval-samples", type=click.IntRange(1), help="Validation samples to score.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="A name for each of MODELS, in order, for tables and plots [default: file names]. "
    "Repeatable.",
)
@click.option(
    "--made-from",
    "made_from",
    multiple=True,
    callback=lambda ctx, param, values: tuple(_pair(v) for v in values),
    metavar="MODEL=SOURCE",
    help="Measure MODEL's calibration drift and class losses against SOURCE, the model it was "
    "distilled or quantized from (labels as in the table). Repeatable [default: the "
    "workspace's roles, else the first model].",
)
@click.option(
    "--cv-warn",
    type=Finite(0),
    default=0.15,
    show_default=True,
    help="Warn when a row's coefficient of variation is above this.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder [default: WORKDIR/bench/EPS].",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an earlier result in the output folder (without it, bench refuses).",
)
@workdir_option
def bench_cmd(**settings):
    """Latency, throughput, memory, size and accuracy per model, EP and batch size.

    Throughput is the batch over the median latency. "own peak MB" is each model's own peak
    memory: what a fresh process adds by loading that model alone and running it at that batch.
    """
    from onnxkd.bench.config import BenchConfig
    from onnxkd.bench.runner import bench
    from onnxkd.bench.summary import summarize

    click.echo(summarize(bench(BenchConfig(**settings), log=log)))


def _pair(text: str) -> tuple[str, str]:
    model, sep, source = text.partition("=")
    if not sep or not model.strip() or not source.strip():
        raise click.BadParameter(f"{text!r} is not MODEL=SOURCE", param_hint="--made-from")
    return model.strip(), source.strip()


COMMANDS = (bench_cmd,)
