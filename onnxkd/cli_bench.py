"""`onnxkd bench`: the command; the work is in `onnxkd.bench.runner`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli_options import workdir_option


class CommaList(click.ParamType):
    """`a,b,c` as a tuple, each item converted by `item`."""

    name = "list"

    def __init__(self, item=str) -> None:
        self.item = item

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(self.item(v.strip()) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(
                f"{value!r} is not a comma-separated list of {self.item.__name__}", param, ctx
            )
        if not items:
            self.fail("give at least one value", param, ctx)
        return items


@click.command("bench")
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--ep",
    "eps",
    type=CommaList(),
    default="cpu",
    show_default=True,
    help="Execution providers, comma-separated (cpu, cuda, tensorrt, openvino, coreml, nnapi…).",
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
    type=click.FloatRange(0),
    default=0.5,
    show_default=True,
    help="Time each round for at least this long.",
)
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Interleaved rounds (A B A B …); their spread is reported.",
)
@click.option("--threads", type=click.IntRange(1), help="onnxruntime intra-op threads.")
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache whose validation split scores the models.",
)
@click.option("--data", help="Validation data for models with no onnxkd cache.")
@click.option("--no-accuracy", is_flag=True, help="Time only; skip validation accuracy.")
@click.option("--eval-samples", type=click.IntRange(1), help="Validation samples to score.")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder [default: WORKDIR/bench].",
)
@workdir_option
def bench_cmd(
    models,
    eps,
    batches,
    runs,
    min_seconds,
    warmup,
    rounds,
    threads,
    cache,
    data,
    no_accuracy,
    eval_samples,
    out,
    workdir,
):
    """Latency, throughput, memory, size and accuracy per model, EP and batch size."""
    from onnxkd.bench.config import BenchConfig
    from onnxkd.bench.report import table
    from onnxkd.bench.runner import bench

    cfg = BenchConfig(
        models=tuple(models),
        eps=eps,
        batches=batches,
        runs=runs,
        min_seconds=min_seconds,
        warmup=warmup,
        rounds=rounds,
        threads=threads,
        workdir=workdir,
        out=out,
        cache=cache,
        data=data,
        accuracy=not no_accuracy,
        eval_samples=eval_samples,
    )
    result = bench(cfg, log=lambda s: click.echo(s, err=True))
    click.echo(table(result.rows))
    if any(r["status"] == "not timed" for r in result.rows):
        click.echo(
            "not timed: no such EP on this host; see bench.md for onnxruntime's static "
            "analysis and the ORT-format files"
        )
    click.echo(
        f"results: {result.json_path}, {result.markdown_path}"
        + (f", {result.plot_path}" if result.plot_path else "")
    )
