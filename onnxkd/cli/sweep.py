"""`onnxkd sweep`: the work is in `onnxkd.sweep.runner`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli.options import (
    CommaList,
    Finite,
    KeyValue,
    log,
    parse_value,
    to_dict,
    workdir_option,
)


class TrialSpec(click.ParamType):
    """`"student=resnet8 alpha=0.5"` (space-separated KEY=VALUE) as a dict; a `--config`
    file's `trials` array gives tables instead."""

    name = "TRIAL"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return dict(value)
        trial = {}
        for pair in str(value).split():
            key, sep, text = pair.partition("=")
            if not sep or not key.isidentifier():
                self.fail(
                    f"{pair!r} in {value!r} is not KEY=VALUE, e.g. student=resnet8", param, ctx
                )
            trial[key] = parse_value(text)
        return trial


def to_grid(ctx, param, pairs) -> dict:
    """`alpha=0.5,0.9` pairs as {setting: values}; a --config table's arrays as they are."""
    grid = {}
    for key, value in pairs or ():
        if isinstance(value, list | tuple):
            grid[key] = tuple(value)
        elif isinstance(value, str):
            grid[key] = tuple(parse_value(v.strip()) for v in value.split(",") if v.strip())
        else:
            grid[key] = (value,)
    return grid


@click.command("sweep")
@click.option(
    "--trial",
    "trials",
    type=TrialSpec(),
    multiple=True,
    help="One trial's distill settings (and `prune=TARGET`), e.g. \"student=resnet8 "
    'alpha=0.5". Repeatable; with none, one trial of the defaults and --set.',
)
@click.option(
    "--grid",
    type=KeyValue(),
    multiple=True,
    callback=to_grid,
    help="A setting and its values, applied to every trial: student=resnet8,mobilenetv2_w050, "
    "alpha=0.5,0.9, prune=none,params=0.5. Repeatable: the grid is their product.",
)
@click.option(
    "--set",
    "base",
    type=KeyValue(),
    multiple=True,
    callback=to_dict,
    help="A distill setting shared by every trial, e.g. epochs=10. Repeatable.",
)
@click.option("--seeds", type=CommaList(int), default="0", show_default=True)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="The cache every trial distils from [default: the workspace's latest].",
)
@click.option(
    "--prune-epochs",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="KD fine-tuning epochs of a pruned trial.",
)
@click.option(
    "--quantize/--no-quantize",
    default=True,
    show_default=True,
    help="PTQ every model, to rank INT8 beside FP32.",
)
@click.option("--ep", default="cpu", show_default=True, help="Execution provider for latency.")
@click.option("--latency-threads", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--budget-ms",
    type=Finite(0, min_open=True),
    help="Choose the most accurate model whose batch-1 latency is at most this.",
)
@click.option(
    "--budget-mb",
    type=Finite(0, min_open=True),
    help="Choose the most accurate model whose file is at most this many MB.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Trials trained at once, each in its own process (one GPU each where there are several).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="Threads in all, split between the jobs [default: every core].",
)
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), help="Sweep folder.")
@click.option("--resume", is_flag=True, help="Continue the workspace's (or -o's) sweep.")
@click.option("--overwrite", is_flag=True, help="Replace the sweep in -o.")
@workdir_option
def sweep_cmd(**settings):
    """Distil many students from one cache, prune, quantize and time them; rank them and
    choose the most accurate within a latency or size budget."""
    from onnxkd.errors import OnnxkdError
    from onnxkd.sweep.config import SweepConfig
    from onnxkd.sweep.runner import sweep

    result = sweep(SweepConfig(**settings), log=log)
    click.echo(result.markdown)
    click.echo(f"leaderboard: {result.out / 'leaderboard.md'}")
    click.echo(f"results:     {result.out / 'sweep.json'}")
    if (result.out / "pareto.png").exists():
        click.echo(f"pareto:      {result.out / 'pareto.png'}")
    if result.failures:
        raise OnnxkdError(
            f"{len(result.failures)} run(s) did not finish ({'; '.join(result.failures)}); "
            "their logs are in the sweep's logs/; `onnxkd sweep --resume` retries them"
        )
    if result.choice["chosen"] is None:
        raise OnnxkdError(result.choice["why"])


COMMANDS = (sweep_cmd,)
