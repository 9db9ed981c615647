"""The `onnxkd` command line: one module per command group, each command thin (parse, build
the stage's config, call one library function, print the summary it returns).

Stage modules are imported inside the commands so that `onnxkd --help` (and every `--help`)
imports neither torch nor onnxruntime; tests/test_cli_help.py checks it for every command.
"""

from __future__ import annotations

from pathlib import Path

import click

from onnxkd import __version__
from onnxkd.cli import bench, cache, distill, ondevice, prune, quantize, run, students, sweep
from onnxkd.cli.options import OnnxkdGroup, config_defaults

__all__ = ["main"]


@click.group(cls=OnnxkdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxkd")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file whose [command] tables fill option defaults (keys are the options' names, "
    "as in recipes); flags override it.",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Knowledge distillation around ONNX: cache a teacher's soft targets, train a small
    student on them, quantize it, and benchmark it where it will run."""
    ctx.default_map = config_defaults(ctx, config)


for _module in (cache, distill, students, prune, sweep, quantize, bench, run, ondevice):
    for _command in _module.COMMANDS:
        main.add_command(_command)
