"""The `onnxkd` command line: parse, build a config, call one library function, print.

Stage modules are imported inside the commands so that `onnxkd --help` (and every `--help`)
imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from onnxkd import __version__
from onnxkd.cli_options import workdir_option
from onnxkd.errors import OnnxkdError

RESUME_HINTS = {
    "distill": "`onnxkd distill --resume` continues the run from its last finished epoch",
}


class OnnxkdGroup(click.Group):
    """Turns user errors into one line on stderr: exit 1 for runtime errors, 130 on Ctrl-C."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OnnxkdError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            # distill keeps every finished epoch but starts a new run unless told to resume
            how = RESUME_HINTS.get(ctx.invoked_subcommand, "rerun the same command to resume")
            click.echo(f"interrupted; {how}", err=True)
            ctx.exit(130)


class FloatList(click.ParamType):
    name = "FLOATS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)


class Size(click.ParamType):
    name = "HxW"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parts = [int(v) for v in str(value).lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts *= 2
        if len(parts) != 2 or min(parts) < 1:
            self.fail(f"{value!r} is not a size like 32 or 32x32", param, ctx)
        return tuple(parts)


class Shard(click.ParamType):
    name = "i/n"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            i, n = (int(v) for v in str(value).split("/"))
        except ValueError:
            self.fail(f"{value!r} is not a shard like 0/4", param, ctx)
        if not (n >= 1 and 0 <= i < n):
            self.fail(f"shard {value!r} needs 0 <= i < n", param, ctx)
        return (i, n)


def _torchrun_shard() -> tuple[int, int]:
    """Rank and world size from torchrun's environment, so each rank caches its slice."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else (0, 1)


def _config_defaults(ctx: click.Context, path: Path | None) -> dict | None:
    """Option defaults per command from a TOML file: `[cache-teacher]` then `views = 10`.
    Unknown commands or options are usage errors naming the valid ones."""
    if path is None:
        return None
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise click.BadParameter(f"{path} is not readable TOML: {e}", param_hint="--config") from e
    group = ctx.command
    defaults = {}
    for name, table in data.items():
        command = group.commands.get(name) if isinstance(table, dict) else None
        if command is None:
            raise click.BadParameter(
                f"{path}: [{name}] is not a command table; commands: {', '.join(group.commands)}",
                param_hint="--config",
            )
        valid = {p.name for p in command.params}
        options = {key.replace("-", "_"): value for key, value in table.items()}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise click.BadParameter(
                f"{path}: [{name}] has unknown options {unknown}; valid: {sorted(valid)}",
                param_hint="--config",
            )
        defaults[name] = options
    return defaults


@click.group(cls=OnnxkdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxkd")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file whose [command] tables fill option defaults; flags override it.",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Knowledge distillation around ONNX: cache a teacher's soft targets, train a small
    student on them, quantize it, and benchmark it where it will run."""
    ctx.default_map = _config_defaults(ctx, config)


@main.command("cache-teacher")
@click.argument("teacher", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    help="digits, an MNIST IDX folder, a CIFAR-10 python "
    "folder, an .npz file, or an image folder (one subfolder per class).",
)
@click.option(
    "--split",
    type=click.Choice(["train", "test"]),
    default="train",
    show_default=True,
    help="Split to cache with its views; the other one is cached too (one clean view) "
    "for validation unless --no-eval.",
)
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Split by a seeded random holdout of this fraction (the test split) even "
    "where the data has its own split. Data without one uses 0.2.",
)
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--x-key", help=".npz array holding the samples of the chosen split.")
@click.option("--y-key", help=".npz array holding the labels of the chosen split.")
@click.option("--image-size", type=Size(), help="Image folders: resize every image to HxW.")
@click.option("--eval/--no-eval", "eval_split", default=True, show_default=True)
@click.option(
    "--views",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Augmented views per sample (about one per planned student epoch).",
)
@click.option(
    "--augment",
    type=click.Choice(["none", "crop", "crop-flip", "strong"]),
    default=None,
    help="Augmentation policy of the views [default: none for 1 view, "
    "crop for more; use crop-flip for natural images].",
)
@click.option("--pad", type=click.IntRange(0), help="Crop padding in pixels [default: side/8].")
@click.option("--seed", type=int, default=0, show_default=True, help="Augmentation seed.")
@click.option(
    "--topk",
    type=click.IntRange(1),
    help="Store only the top-k classes (log-probs, indices and the residual mass) instead of all.",
)
@click.option(
    "--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True
)
@click.option("--teacher-output", help="Teacher output holding class scores, when it has several.")
@click.option("--features", help="Comma-separated intermediate tensor names to cache too.")
@click.option(
    "--feature-pool",
    type=click.Choice(["none", "avg"]),
    default="none",
    show_default=True,
    help="avg: global average pool features over spatial axes.",
)
@click.option(
    "--layout",
    type=click.Choice(["NCHW", "NHWC", "NHW", "flat"]),
    help="Teacher input layout, when its shape does not make it obvious.",
)
@click.option("--size", type=Size(), help="Teacher input size HxW, when its shape is dynamic.")
@click.option(
    "--scale",
    type=float,
    help="Multiply raw values by this [default: 1/255 for "
    "8-bit images, the data's own range where known].",
)
@click.option("--mean", type=FloatList(), help="Per-channel mean subtracted after scaling.")
@click.option("--std", type=FloatList(), help="Per-channel std divided after the mean.")
@click.option(
    "--ep",
    default="cpu",
    show_default=True,
    help="Execution provider: cpu, cuda, tensorrt, openvino, dml, coreml, nnapi, …",
)
@click.option("--threads", type=click.IntRange(1), help="onnxruntime intra-op threads.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache folder [default: a folder in the workspace named after the inputs].",
)
@click.option(
    "--shard",
    type=Shard(),
    help="Write slice i of n (torchrun's RANK/WORLD_SIZE "
    "are used when set); the cache completes when every slice is written.",
)
@click.option("--overwrite", is_flag=True, help="Replace a cache made from other inputs.")
@workdir_option
def cache_teacher_cmd(
    teacher,
    data,
    split,
    holdout,
    split_seed,
    x_key,
    y_key,
    image_size,
    eval_split,
    views,
    augment,
    pad,
    seed,
    topk,
    dtype,
    teacher_output,
    features,
    feature_pool,
    layout,
    size,
    scale,
    mean,
    std,
    ep,
    threads,
    batch_size,
    out,
    shard,
    overwrite,
    workdir,
):
    """Run TEACHER (.onnx) once over the data and cache its soft targets."""
    from onnxkd.cache.build import CacheConfig, cache_teacher
    from onnxkd.data.source import DataRef
    from onnxkd.teacher.input_spec import SpecOptions

    cfg = CacheConfig(
        teacher=teacher,
        data=DataRef(
            data,
            split=split,
            holdout=holdout,
            split_seed=split_seed,
            x_key=x_key,
            y_key=y_key,
            image_size=image_size,
        ),
        out=out,
        workdir=workdir,
        eval_split=eval_split,
        views=views,
        augment=augment or ("none" if views == 1 else "crop"),
        pad=pad,
        seed=seed,
        topk=topk,
        dtype=dtype,
        teacher_output=teacher_output,
        features=tuple(f.strip() for f in features.split(",") if f.strip()) if features else (),
        feature_pool=feature_pool,
        spec=SpecOptions(layout, size, scale, mean, std),
        ep=ep,
        threads=threads,
        batch_size=batch_size,
        shard=shard or _torchrun_shard(),
        overwrite=overwrite,
    )
    result = cache_teacher(cfg, log=lambda s: click.echo(s, err=True), progress=_progress_bar)
    from onnxkd.cache.summary import summarize

    click.echo(summarize(result.path, result.manifest, result.seconds))


def _progress_bar(total: int, done: int):
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        initial=done,
        unit="sample-view",
        file=sys.stderr,
        disable=None,
        dynamic_ncols=True,
        leave=False,
    )

    def tick(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return tick


@main.command("cache-info")
@click.argument("cache", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Check every array's shape, dtype and checksum.",
)
@workdir_option
def cache_info_cmd(cache, verify, workdir):
    """Summarize CACHE (default: the workspace's latest) and verify its arrays."""
    from onnxkd.cache.reader import CacheReader
    from onnxkd.cache.summary import summarize
    from onnxkd.workspace import Workspace

    path = cache or Workspace(workdir).latest("cache")
    reader = CacheReader(path)
    click.echo(summarize(path, reader.manifest))
    if verify:
        problems = reader.verify()
        if problems:
            for p in problems:
                click.echo(f"problem: {p}", err=True)
            raise click.exceptions.Exit(1)
        click.echo("integrity: every array matches its shape, dtype and sha256")


@main.command("cache-merge")
@click.argument("cache", type=click.Path(exists=True, file_okay=False, path_type=Path))
def cache_merge_cmd(cache):
    """Complete a sharded CACHE once every shard has written its slice."""
    from onnxkd.cache.build import finalize
    from onnxkd.cache.reader import incomplete_status
    from onnxkd.cache.summary import summarize
    from onnxkd.errors import CacheError

    manifest = finalize(cache)
    if manifest is None:
        raise CacheError(f"cache {cache} still misses shards ({incomplete_status(cache)})")
    click.echo(summarize(cache, manifest))


@main.command("distill")
@click.option(
    "--student",
    help="Student architecture (see `onnxkd students`) [default: mobilenetv2; with --qat, "
    "the float run's].",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache folder [default: the workspace's latest; with --qat, the float run's].",
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
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    help="Peak learning rate [default: 0.05 SGD / 2e-3 AdamW, x batch/128; x 0.1 with --qat].",
)
@click.option("--weight-decay", type=click.FloatRange(0), help="[default: 5e-4 SGD / 0.05 AdamW]")
@click.option("--warmup-epochs", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option(
    "--loss",
    type=click.Choice(["kd", "kd_topk", "dkd", "ce"]),
    default="kd",
    show_default=True,
    help="kd: (1-α)·CE + α·T²·KL; kd_topk: the same from top-k "
    "targets; dkd: decoupled KD; ce: no teacher (scratch baseline).",
)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option(
    "--temperature", "-T", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True
)
@click.option(
    "--alpha-warmup-epochs",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Ramp the distillation term up from 0 over this many epochs (KD: α; DKD: its "
    "TCKD + NCKD part, as in the DKD paper's warm-up).",
)
@click.option("--dkd-beta", type=click.FloatRange(0), default=8.0, show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=0.0)
@click.option(
    "--hint",
    "hints",
    multiple=True,
    metavar="STUDENT:TEACHER",
    help="FitNets hint: a student stage (stage1…, embedding, or a module path) "
    "regressed through a 1x1 adapter onto a cached teacher feature. Repeatable.",
)
@click.option("--hint-weight", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option(
    "--attention",
    multiple=True,
    metavar="STUDENT:TEACHER",
    help="Attention transfer between a student stage and a teacher feature.",
)
@click.option("--attention-weight", type=click.FloatRange(0), default=1000.0, show_default=True)
@click.option("--rkd", metavar="STUDENT:TEACHER", help="Relational KD on embeddings.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--bf16", is_flag=True, help="bf16 autocast on CPU (AMP is automatic on CUDA).")
@click.option("--channels-last", is_flag=True, help="Channels-last memory format.")
@click.option("--threads", type=click.IntRange(1), help="torch intra-op threads.")
@click.option(
    "--online",
    is_flag=True,
    help="Baseline: run the teacher live through "
    "onnxruntime on a fresh view each batch instead of reading the cache.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the workspace's latest run (or --out) after its last finished epoch.",
)
@click.option("--no-export", is_flag=True, help="Skip the ONNX export of the best epoch.")
@click.option(
    "--qat",
    is_flag=True,
    help="Quantization-aware training: continue a float run (--init) with int8 fake "
    "quantization on the same cached targets and export student.int8.onnx "
    "[epochs default 5, lr 0.1x].",
)
@click.option(
    "--init",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="RUN_DIR",
    help="With --qat: the float run to start from [default: the workspace's latest run].",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder [default: a new folder under the workspace's runs/].",
)
@workdir_option
def distill_cmd(
    student,
    cache,
    data,
    epochs,
    batch_size,
    optimizer,
    lr,
    weight_decay,
    warmup_epochs,
    loss,
    alpha,
    temperature,
    alpha_warmup_epochs,
    dkd_beta,
    label_smoothing,
    hints,
    hint_weight,
    attention,
    attention_weight,
    rkd,
    seed,
    device,
    bf16,
    channels_last,
    threads,
    online,
    resume,
    no_export,
    qat,
    init,
    out,
    workdir,
):
    """Train a student on the cached teacher targets and export it to ONNX.

    With --qat, fine-tune a trained float student with fake quantization instead and export
    an int8 model that onnxruntime runs with integer kernels.
    """
    from onnxkd.distill.config import DistillConfig
    from onnxkd.distill.trainer import distill
    from onnxkd.students import STUDENTS

    if student is not None:
        STUDENTS.get(student)  # an unknown name fails here, before any data is opened
    cfg = DistillConfig(
        student=student,
        cache=cache,
        data=data,
        workdir=workdir,
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        loss=loss,
        alpha=alpha,
        temperature=temperature,
        alpha_warmup_epochs=alpha_warmup_epochs,
        dkd_beta=dkd_beta,
        label_smoothing=label_smoothing,
        hints=tuple(hints),
        hint_weight=hint_weight,
        attention=tuple(attention),
        attention_weight=attention_weight,
        rkd=rkd,
        seed=seed,
        device=device,
        bf16=bf16,
        channels_last=channels_last,
        threads=threads,
        online=online,
        resume=resume,
        export=not no_export,
        qat=qat,
        init=init,
    )
    result = distill(cfg, log=lambda s: click.echo(s, err=True))
    click.echo(f"run:     {result.run_dir}")
    if result.export:
        e = result.export
        quantized = "int8_ops" in e  # a QAT run, also when resumed without --qat
        label = "int8:   " if quantized else "student:"
        click.echo(
            f"{label} {e['onnx']} (best epoch {e['best_epoch'] + 1}; "
            f"onnxruntime accuracy {100 * e['onnxruntime_accuracy']:.2f}%, teacher "
            f"{100 * e['teacher_accuracy']:.2f}%; max |onnx - torch| "
            f"{e['max_abs_diff']:.1e})"
        )
        if quantized:
            click.echo(
                f"         {e['int8_ops']} ops on onnxruntime int8 kernels; top-1 agreement "
                f"with torch fake quantization {100 * e['top1_agreement']:.2f}%"
            )


@main.command("students")
def students_cmd():
    """List the student architectures."""
    from onnxkd.students import STUDENTS

    for name in STUDENTS.names():
        doc = (STUDENTS.get(name).__doc__ or "").strip().splitlines()
        click.echo(f"{name:22} {doc[0] if doc else ''}")


def _add_stage_commands() -> None:
    from onnxkd.cli_bench import bench_cmd
    from onnxkd.cli_ondevice import ondevice_cmd
    from onnxkd.cli_quantize import quantize_cmd
    from onnxkd.cli_run import run_cmd

    main.add_command(quantize_cmd)
    main.add_command(bench_cmd)
    main.add_command(run_cmd)
    main.add_command(ondevice_cmd)


_add_stage_commands()

if __name__ == "__main__":
    main()
