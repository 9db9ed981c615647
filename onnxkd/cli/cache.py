"""`onnxkd cache-teacher`, `cache-info` and `cache-merge`: the work is in `onnxkd.cache`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli.options import (
    CommaList,
    Finite,
    FloatList,
    NameChoice,
    Shard,
    Size,
    log,
    progress_bar,
    workdir_option,
    workers_option,
)
from onnxkd.providers import EP_NAMES


@click.command("cache-teacher")
@click.argument("teacher", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--data",
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
    type=Finite(0, 1, min_open=True, max_open=True),
    help="Split by a seeded random holdout of this fraction (the test split) even "
    "where the data has its own split. Data without one uses 0.2.",
)
@click.option("--split-seed", type=int, default=0, show_default=True)
@click.option("--x-key", help=".npz array holding the samples of the chosen split.")
@click.option("--y-key", help=".npz array holding the labels of the chosen split.")
@click.option(
    "--image-size",
    type=Size(),
    help="Image folders: squash every image to HxW (not keeping the aspect ratio). Without "
    "it, photos of other sizes than the teacher's are resized and centre-cropped (--crop-pct).",
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Image folders: leave out images that do not decode (each is decoded once per "
    "workspace to find them; the count and paths go into the manifest) instead of stopping "
    "at the first.",
)
@click.option(
    "--verify-data",
    is_flag=True,
    help="Image folders and file lists: rehash every file instead of trusting the "
    "workspace's record of it while its size and times are unchanged.",
)
@workers_option("and cutting their views")
@click.option("--eval/--no-eval", "eval_split", default=True, show_default=True)
@click.option(
    "--views",
    type=click.IntRange(1),
    help="Augmented views per sample (about one per planned student epoch) [default: 10 for "
    "a teacher of images, 1 for one of feature vectors or with --augment none].",
)
@click.option(
    "--augment",
    type=NameChoice("onnxkd.data.augment:POLICIES", listed=True),
    help="Augmentation policy of the views [default: none for 1 view, crop for more, "
    "random-resized-crop for photos resized by the photo transform; use crop-flip for "
    "natural images of one small size].",
)
@click.option("--pad", type=click.IntRange(0), help="Crop padding in pixels [default: side/8].")
@click.option(
    "--mix",
    type=NameChoice("onnxkd.data.augment:MIXES", listed=True),
    help="Mix each view with another sample's view, as the teacher then sees it: mixup "
    "(blend by λ), cutmix (paste a box), or mixup-cutmix (one of them per view) [default: "
    "none]; partner, λ and box are stored per view and the label term mixes by the same λ.",
)
@click.option(
    "--mixup-alpha", type=Finite(0, min_open=True), help="MixUp's λ ~ Beta(α, α) [default: 0.8]."
)
@click.option(
    "--cutmix-alpha", type=Finite(0, min_open=True), help="CutMix's Beta α [default: 1.0]."
)
@click.option("--mix-prob", type=Finite(0, 1), help="Share of views mixed [default: 1].")
@click.option(
    "--mix-switch-prob",
    type=Finite(0, 1),
    help="mixup-cutmix: share of mixed views that are CutMix [default: 0.5].",
)
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
@click.option(
    "--features",
    type=CommaList(),
    help="Comma-separated intermediate tensor names to cache too.",
)
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
    type=Finite(),
    help="Multiply raw values by this [default: the teacher's metadata spec, else 1/255 for "
    "8-bit images, the data's own range where known]. Like --mean, --std, --layout and "
    "--size, it overrides the teacher's metadata spec, and the summary says so.",
)
@click.option(
    "--crop-pct",
    type=Finite(0, 1, min_open=True),
    help="Photos: resize the shorter side to size / crop-pct, then crop the centre [default: "
    "the teacher's timm or Hugging Face config beside it, else 0.875].",
)
@click.option(
    "--interpolation",
    type=NameChoice("onnxkd.data.photo:INTERPOLATION_NAMES", listed=True),
    help="Photos: resampling filter of the resize [default: the teacher's config, else bilinear].",
)
@click.option("--mean", type=FloatList(), help="Per-channel mean subtracted after scaling.")
@click.option("--std", type=FloatList(), help="Per-channel std divided after the mean.")
@click.option(
    "--accept-low-accuracy",
    is_flag=True,
    help="Cache even when the teacher scores near chance (or far below the accuracy its "
    "metadata records) on the labelled data, or the data's values contradict the input spec: "
    "a warning, recorded in the manifest, instead of an error.",
)
@click.option(
    "--ep",
    default="cpu",
    show_default=True,
    help=f"Execution provider: {', '.join(EP_NAMES)}.",
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
    help="Write slice i of n [default: the launcher's: torchrun's RANK/WORLD_SIZE, or a Slurm "
    "array's SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT]; the cache completes when every "
    "slice is written.",
)
@click.option("--overwrite", is_flag=True, help="Replace a cache made from other inputs.")
@workdir_option
def cache_teacher_cmd(**settings):
    """Run TEACHER (.onnx) once over the data and cache its soft targets."""
    from onnxkd.cache.build import cache_teacher
    from onnxkd.cache.settings import cache_config
    from onnxkd.cache.summary import summarize

    if settings["data"] is None:
        from onnxkd.data.loaders import ACCEPTED

        raise click.UsageError(f"missing --data, the data to run the teacher on; {ACCEPTED}")
    result = cache_teacher(cache_config(**settings), log=log, progress=progress_bar)
    click.echo(summarize(result.path, result.manifest, result.seconds))


@click.command("cache-info")
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
    reader = CacheReader(path, check_arrays=False)  # verified below, listing every problem
    click.echo(summarize(path, reader.manifest))
    if verify:
        problems = reader.verify()
        if problems:
            for p in problems:
                click.echo(f"problem: {p}", err=True)
            raise click.exceptions.Exit(1)
        click.echo("integrity: every array matches its shape, dtype and sha256")


@click.command("cache-merge")
@click.argument("cache", type=click.Path(exists=True, file_okay=False, path_type=Path))
def cache_merge_cmd(cache):
    """Complete a sharded CACHE once every shard has written its slice."""
    from onnxkd.cache.shards import merge_shards
    from onnxkd.cache.summary import summarize

    click.echo(summarize(cache, merge_shards(cache)))


COMMANDS = (cache_teacher_cmd, cache_info_cmd, cache_merge_cmd)
