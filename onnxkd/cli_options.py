"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

workdir_option = click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default="onnxkd-out",
    show_default=True,
    help="Workspace folder whose state.json records the latest artifacts.",
)
