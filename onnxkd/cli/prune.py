"""`onnxkd prune`: the work is in `onnxkd.prune.runner`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli.options import Finite, log, workdir_option
from onnxkd.prune.config import DEFAULT_EPOCHS, IMPORTANCES


@click.command("prune")
@click.argument("init", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--target",
    default="",
    help="params=RATIO or macs=RATIO (the share of the student's to keep, e.g. params=0.3), "
    "or latency=MS (onnxruntime batch-1 latency on this CPU, e.g. latency=1.5ms).",
)
@click.option("--steps", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=DEFAULT_EPOCHS,
    show_default=True,
    help="KD fine-tuning epochs after each step, from the run's cache.",
)
@click.option("--importance", type=click.Choice(IMPORTANCES), default="l2", show_default=True)
@click.option(
    "--round-to",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Keep channel counts multiples of this (fast kernels); 1: any count.",
)
@click.option("--global-pruning", is_flag=True, help="Rank channels across layers.")
@click.option(
    "--lr", type=Finite(0, min_open=True), help="[default: the run's learning rate x 0.2]"
)
@click.option("--batch-size", type=click.IntRange(1), help="[default: the run's]")
@click.option("--seed", type=int, help="[default: the run's]")
@click.option("--latency-threads", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--teacher-cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Fine-tune from this cache instead of the run's own: another teacher's targets over "
    "the same samples, e.g. the unpruned student's (`onnxkd cache-teacher RUN/student.onnx "
    "--data …`).",
)
@click.option(
    "-o", "--out", type=click.Path(file_okay=False, path_type=Path), help="Prune run folder."
)
@click.option("--resume", is_flag=True, help="Continue the workspace's (or -o's) prune run.")
@click.option("--overwrite", is_flag=True, help="Replace the prune run in -o.")
@click.option("--threads", type=click.IntRange(1), help="torch threads.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@workdir_option
def prune_cmd(**settings):
    """Prune a distilled student's channels (Torch-Pruning) to a target, with KD fine-tuning.

    INIT is a finished distill run folder [default: the workspace's latest run]. The result
    is a run folder that `quantize` and `bench` take.
    """
    from onnxkd.prune.config import PruneConfig
    from onnxkd.prune.runner import prune

    if settings["round_to"] == 1:
        settings["round_to"] = None
    result = prune(PruneConfig(**settings), log=log)
    for step in result.steps:
        click.echo(
            f"step {step['step']}: {step['params'] / 1e6:.3f} M params, "
            f"{step['macs'] / 1e6:.1f} M MACs, test accuracy {100 * step['test_accuracy']:.2f}%"
        )
    click.echo(f"pruned student: {result.export['onnx']}")


COMMANDS = (prune_cmd,)
