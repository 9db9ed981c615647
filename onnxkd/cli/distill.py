"""`onnxkd distill` and `onnxkd losses`: the work is in `onnxkd.distill.trainer`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli.options import (
    Finite,
    KeyValue,
    NameChoice,
    StudentChoice,
    log,
    to_dict,
    workdir_option,
    workers_option,
)
from onnxkd.distill.config import OPTIMIZERS
from onnxkd.distill.schedule import SHAPES


@click.command("distill")
@click.option(
    "--student",
    type=StudentChoice(),
    help="Student architecture: a name from `onnxkd students`, your own FILE.py:FACTORY or "
    "package.module:FACTORY (called with num_classes=, in_chans=, input_size=; it returns an "
    "nn.Module), or timm:NAME (pip install onnxkd[timm]) [default: mobilenetv2; with --qat, "
    "the float run's].",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache folder [default: the workspace's latest; with --qat, the float run's].",
)
@click.option(
    "--unlabeled",
    type=click.Path(file_okay=False, path_type=Path),
    multiple=True,
    help="A cache of the same teacher whose samples train without labels, on the teacher's "
    "targets alone (α 1 there); validation and test stay --cache's. Repeatable.",
)
@click.option(
    "--data",
    help="The data the cache was made from, if it moved (checked by "
    "fingerprint) [default: as recorded in the cache].",
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    help="[default: 30; with --qat, 5; with --resume, the run's own count]",
)
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True)
@click.option(
    "--lr",
    type=Finite(0, min_open=True),
    help="Peak learning rate [default: 0.05 SGD (0.01 with --loss dkd) / 2e-3 AdamW, x "
    "batch/128; x 0.1 with --qat].",
)
@click.option("--weight-decay", type=Finite(0), help="[default: 5e-4 SGD / 0.05 AdamW]")
@click.option("--warmup-epochs", type=Finite(0), default=1.0, show_default=True)
@click.option(
    "--loss",
    type=NameChoice("onnxkd.distill.losses:LOSSES"),
    default="kd",
    show_default=True,
    help="Distillation loss (see `onnxkd losses`): kd: (1-α)·CE + α·T²·KL; kd_topk: the "
    "same from top-k targets; dkd: decoupled KD; ce: no teacher (scratch baseline).",
)
@click.option(
    "--loss-arg",
    "loss_args",
    type=KeyValue(),
    multiple=True,
    callback=to_dict,
    help="An argument of the --loss by name, e.g. beta=2.0 (values read as numbers, "
    "true/false or JSON where they parse). Repeatable.",
)
@click.option("--alpha", type=Finite(0, 1), default=0.9, show_default=True)
@click.option("--temperature", "-T", type=Finite(0, min_open=True), default=4.0, show_default=True)
@click.option(
    "--alpha-end",
    type=Finite(0, 1),
    help="α at the end of training, reached by --alpha-schedule from --alpha.",
)
@click.option(
    "--alpha-schedule",
    type=click.Choice(SHAPES),
    default="constant",
    show_default=True,
    help="How α moves from --alpha to --alpha-end over training (step by step).",
)
@click.option(
    "--temperature-end",
    type=Finite(0, min_open=True),
    help="T at the end of training, reached by --temperature-schedule.",
)
@click.option(
    "--temperature-schedule",
    type=click.Choice(SHAPES),
    default="constant",
    show_default=True,
    help="How T moves from --temperature to --temperature-end over training.",
)
@click.option(
    "--alpha-warmup-epochs",
    type=Finite(0),
    help="Ramp the distillation term up from 0 over this many epochs (KD: α; DKD: its "
    "TCKD + NCKD part, as in the DKD paper's warm-up) [default: KD none; DKD 1/12 of "
    "--epochs, the paper's 20 of 240].",
)
@click.option("--dkd-beta", type=Finite(0), default=8.0, show_default=True)
@click.option("--label-smoothing", type=Finite(0, 1), default=0.0)
@click.option(
    "--hint",
    "hints",
    multiple=True,
    metavar="STUDENT:TEACHER",
    help="FitNets hint: a student stage (stage1…, embedding, or a module path) "
    "regressed through a 1x1 adapter onto a cached teacher feature. Repeatable.",
)
@click.option("--hint-weight", type=Finite(0), default=1.0, show_default=True)
@click.option(
    "--attention",
    multiple=True,
    metavar="STUDENT:TEACHER",
    help="Attention transfer between a student stage and a teacher feature.",
)
@click.option("--attention-weight", type=Finite(0), default=1000.0, show_default=True)
@click.option("--rkd", metavar="STUDENT:TEACHER", help="Relational KD on embeddings.")
@click.option(
    "--crd",
    metavar="STUDENT:TEACHER",
    help="Contrastive representation distillation (CRD): a student embedding (e.g. "
    "embedding) against a cached teacher feature, with memory banks over the training samples.",
)
@click.option("--crd-weight", type=Finite(0), default=0.8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--val-fraction",
    type=Finite(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of the training samples held back (by --seed) to choose the best epoch on; "
    "the test split is then measured once, on the chosen model. 0: choose on the test split "
    "(reported as a selected maximum).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--bf16", is_flag=True, help="bf16 autocast on CPU (AMP is automatic on CUDA).")
@click.option("--channels-last", is_flag=True, help="Channels-last memory format.")
@click.option("--threads", type=click.IntRange(1), help="torch intra-op threads.")
@workers_option("and cutting their views for the next batch")
@click.option(
    "--online",
    is_flag=True,
    help="Baseline: run the teacher live through "
    "onnxruntime on a fresh view each batch instead of reading the cache.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the workspace's latest run (or --out) after its last finished epoch; "
    "--epochs, --device, --threads, --workers, --data, --channels-last, --bf16, --export and "
    "--fit-temperature, --apply-temperature "
    "may change, "
    "other settings must be the run's.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the run already in --out (a run folder only; other folders are never emptied).",
)
@click.option(
    "--export/--no-export",
    default=True,
    show_default=True,
    help="Export the best epoch to ONNX and check it against torch.",
)
@click.option(
    "--fit-temperature",
    is_flag=True,
    help="Fit one temperature to the student's logits on the validation split and store it "
    "in student.onnx's metadata: bench and quantize then report calibration with and without "
    "it (the graph, and so every prediction, is unchanged).",
)
@click.option(
    "--apply-temperature",
    is_flag=True,
    help="Fit the temperature as --fit-temperature does and divide the exported logits by it "
    "in the graph, so the deployed model's softmax gives calibrated probabilities; the "
    "metadata says it is applied.",
)
@click.option(
    "--qat",
    is_flag=True,
    help="Quantization-aware training: continue a float run (--init) with int8 fake "
    "quantization on the same cached targets and export student.int8.onnx "
    "[epochs default 5, lr 0.1x].",
)
@click.option(
    "--init",
    type=click.Path(exists=True, path_type=Path),
    metavar="FILE|RUN_DIR",
    help="Start from these weights: a .safetensors or weights-only .pt state dict, or a run "
    "folder's best student, matched by name and shape (a classifier of another class count "
    "is re-initialised; what was loaded is printed). With --qat: the float run to continue "
    "[default: the workspace's latest run].",
)
@click.option(
    "--architecture",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A pruned student's architecture.json (written by `onnxkd prune`): train that "
    "network, with --student its base.",
)
@click.option(
    "--init-weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Start from these weights (a state dict of the student, e.g. a run's best.pt).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder [default: a new folder under the workspace's runs/].",
)
@workdir_option
def distill_cmd(**settings):
    """Train a student on the cached teacher targets and export it to ONNX.

    With --qat, fine-tune a trained float student with fake quantization instead and export
    an int8 model that onnxruntime runs with integer kernels.
    """
    from onnxkd.distill.config import DistillConfig
    from onnxkd.distill.summary import summarize
    from onnxkd.distill.trainer import distill

    cfg = DistillConfig(**settings)
    click.echo(summarize(distill(cfg, log=log, given=_given(click.get_current_context()))))


def _given(ctx: click.Context) -> set[str]:
    """The options set on the command line or by a --config file, not left at their default:
    what a resumed run compares with its record."""
    defaults = (click.core.ParameterSource.DEFAULT, None)
    return {name for name in ctx.params if ctx.get_parameter_source(name) not in defaults}


@click.command("losses")
def losses_cmd():
    """List the distillation losses (`distill --loss`)."""
    from onnxkd.distill.losses import LOSSES

    for name in LOSSES.names():
        doc = (LOSSES.get(name).__doc__ or "").strip().splitlines()
        click.echo(f"{name:22} {doc[0] if doc else ''}")


COMMANDS = (distill_cmd, losses_cmd)
