"""`onnxkd ondevice`: the commands; the work is in `onnxkd.ondevice.api`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli.options import Finite, log, workdir_option

env_option = click.option(
    "--env",
    type=click.Path(path_type=Path),
    help="The onnxruntime-training environment (a virtualenv folder or its python) "
    "[default: $ONNXKD_ONDEVICE_ENV, else .venv-ondevice in the onnxkd clone or here; "
    "`bash .ci/setup-ondevice` builds it].",
)


@click.group("ondevice")
def ondevice_cmd():
    """Keep distilling on a device that has only onnxruntime: training artifacts with a KD
    loss, and training from cached teacher targets with onnxruntime-training."""


@ondevice_cmd.command("artifacts")
@click.argument("student", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Artifacts folder [default: an `ondevice` folder beside the student].",
)
@click.option("--alpha", type=Finite(0, 1), default=0.9, show_default=True)
@click.option("--temperature", "-T", type=Finite(0, min_open=True), default=4.0, show_default=True)
@click.option(
    "--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True
)
@click.option("--weight-decay", type=Finite(0), default=0.0, show_default=True)
@click.option(
    "--freeze-prefix",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    metavar="N",
    help="Freeze the first N parameters in graph order (the stem first).",
)
@click.option(
    "--freeze",
    multiple=True,
    metavar="PREFIX",
    help="Freeze parameters whose name or module path starts with PREFIX (e.g. stem, "
    "stage1). Repeatable.",
)
@click.option("--overwrite", is_flag=True, help="Replace artifacts already in the folder.")
@env_option
@workdir_option
def artifacts_cmd(env, **settings):
    """Generate onnxruntime training artifacts for STUDENT (.onnx) [default: the
    workspace's latest student] with the loss (1-α)·CE + α·T²·KL on cached teacher scores."""
    from onnxkd.ondevice.api import make_artifacts
    from onnxkd.ondevice.config import ArtifactsConfig
    from onnxkd.ondevice.summary import summarize_artifacts

    cfg = ArtifactsConfig(**settings)
    click.echo(summarize_artifacts(*make_artifacts(cfg, log=log, env=env)))


@ondevice_cmd.command("train")
@click.argument("artifacts", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache of teacher targets [default: the workspace's latest].",
)
@click.option("--data", help="The data the cache was made from, if it moved.")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder [default: ARTIFACTS/run]; a rerun continues after its last epoch.",
)
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option(
    "--lr",
    type=Finite(0, min_open=True),
    help="Peak learning rate [default: 1e-4 AdamW, 0.005 SGD, for fine-tuning a trained "
    "student; a weak one learns faster with more].",
)
@click.option(
    "--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), help="onnxruntime intra-op threads.")
@click.option("--restart", is_flag=True, help="Start the run over instead of resuming it.")
@env_option
@workdir_option
def train_cmd(env, **settings):
    """Train the student in ARTIFACTS on cached teacher targets with onnxruntime-training,
    then export it for inference (`onnxkd quantize` and `onnxkd bench` take it)."""
    from onnxkd.ondevice.api import train_on_device
    from onnxkd.ondevice.config import TrainConfig
    from onnxkd.ondevice.summary import summarize_training

    click.echo(summarize_training(train_on_device(TrainConfig(**settings), log=log, env=env)))


COMMANDS = (ondevice_cmd,)
