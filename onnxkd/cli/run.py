"""`onnxkd run`: the command; the work is in `onnxkd.pipeline.runner`."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd.cli.options import log, workdir_option


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@workdir_option
def run_cmd(recipe, workdir):
    """Run a pipeline recipe: cache -> distill -> [qat] -> [quantize] -> bench -> report.

    Stages whose outputs are up to date for the same inputs are skipped, so a rerun after an
    interruption redoes only what is missing."""
    from onnxkd.pipeline.report import summarize
    from onnxkd.pipeline.runner import run_pipeline

    click.echo(summarize(run_pipeline(recipe, workdir, log=log)))


COMMANDS = (run_cmd,)
