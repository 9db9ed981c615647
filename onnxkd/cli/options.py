"""What the commands share: option types, the group that turns errors into one line, the
`--config` file's defaults, the progress bar and the log.

Nothing here imports a stage: a stage's names (students, losses, calibration methods) are looked
up only when a value is checked, so that every `--help` imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import click

from onnxkd.errors import OnnxkdError

RESUME_HINTS = {
    "distill": "`onnxkd distill --resume` continues the run from its last finished epoch",
    "prune": "`onnxkd prune --resume` continues the step it was in",
    "sweep": "`onnxkd sweep --resume` keeps the finished runs and continues the others",
}


def workers_option(what: str):
    """`--workers`: the threads that decode photos, for `what` this command does with them."""
    return click.option(
        "--workers",
        type=click.IntRange(1),
        help=f"Threads decoding photos {what} [default: one per core, at most 8].",
    )


workdir_option = click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default="onnxkd-out",
    show_default=True,
    help="Workspace folder whose state.json records the latest artifacts.",
)


def log(message: str) -> None:
    """Progress and notes go to stderr, so that stdout holds only the summary."""
    click.echo(message, err=True)


class OnnxkdGroup(click.Group):
    """Turns every error into one line on stderr (see `onnxkd.cli.errors`): exit 1 for a user
    error, 70 for a bug (its traceback saved to a file), 130 on Ctrl-C."""

    def invoke(self, ctx: click.Context):
        from onnxkd.cli import errors

        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            # distill keeps every finished epoch but starts a new run unless told to resume
            how = RESUME_HINTS.get(ctx.invoked_subcommand, "rerun the same command to resume")
            click.echo(f"interrupted; {how}", err=True)
            ctx.exit(130)
        except Exception as e:
            message = errors.user_message(e)
            if message is not None:
                click.echo(f"error: {message}", err=True)
                ctx.exit(errors.EXIT_USER_ERROR)
            if errors.debugging():
                raise
            click.echo(f"error: {errors.internal_error_message(e)}", err=True)
            ctx.exit(errors.EXIT_INTERNAL_ERROR)


def _finite(value: float, param, ctx) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number", ctx=ctx, param=param)
    return value


class Finite(click.FloatRange):
    """A float option (optionally within a range, like `click.FloatRange`) that refuses NaN
    and infinity: a range check alone lets NaN through, since every comparison with NaN is
    false."""

    name = "float"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):  # TOML's true is not the number 1
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        _finite(number, param, ctx)
        return super().convert(number, param, ctx)


class FloatList(click.ParamType):
    """`0.5,0.5,0.5` on the command line; a number or an array in a `--config` file."""

    name = "FLOATS"

    def convert(self, value, param, ctx):
        items = value if isinstance(value, (tuple, list)) else str(value).split(",")
        try:
            numbers = tuple(float(v) for v in items)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        for number in numbers:
            _finite(number, param, ctx)
        return numbers


class Size(click.ParamType):
    """`32` or `32x32` on the command line; a number or `[h, w]` in a `--config` file."""

    name = "HxW"

    def convert(self, value, param, ctx):
        try:
            if isinstance(value, (tuple, list)):
                parts = [int(v) for v in value]
            else:
                parts = [int(v) for v in str(value).lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts *= 2
        if len(parts) != 2 or min(parts) < 1:
            self.fail(f"{value!r} is not a size like 32 or 32x32", param, ctx)
        return tuple(parts)


class Shard(click.ParamType):
    """`i/n` on the command line; `"i/n"` or `[i, n]` in a `--config` file."""

    name = "i/n"

    def convert(self, value, param, ctx):
        try:
            parts = value if isinstance(value, (tuple, list)) else str(value).split("/")
            i, n = (int(v) for v in parts)
        except (ValueError, TypeError):
            self.fail(f"{value!r} is not a shard like 0/4", param, ctx)
        if not (n >= 1 and 0 <= i < n):
            self.fail(f"shard {value!r} needs 0 <= i < n", param, ctx)
        return (i, n)


class CommaList(click.ParamType):
    """`a,b,c` as a tuple, each item converted by `item`; an array in a `--config` file."""

    name = "list"

    def __init__(self, item: Callable = str) -> None:
        self.item = item

    def convert(self, value, param, ctx):
        values = value if isinstance(value, (tuple, list)) else str(value).split(",")
        try:
            items = tuple(self.item(str(v).strip()) for v in values if str(v).strip())
        except ValueError:
            self.fail(
                f"{value!r} is not a comma-separated list of {self.item.__name__}", param, ctx
            )
        if not items:
            self.fail("give at least one value", param, ctx)
        return items


def parse_value(text: str):
    """A command-line value as the type it reads as: int, float, bool, JSON, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


class KeyValue(click.ParamType):
    """`key=value` as `(key, value)`, the value parsed by `parse_value`; a `--config` file gives
    a table instead."""

    name = "KEY=VALUE"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return tuple(value)  # a --config table's item, already typed by TOML
        key, sep, text = str(value).partition("=")
        if not sep or not key.strip().isidentifier():
            self.fail(f"{value!r} is not KEY=VALUE, e.g. beta=2.0", param, ctx)
        return key.strip(), parse_value(text.strip())


def to_dict(ctx: click.Context, param: click.Parameter, pairs) -> dict:
    """Callback for a repeatable KeyValue option: the pairs as a dict, the last one winning."""
    return dict(pairs or ())


class NameChoice(click.ParamType):
    """A name from a registry or a tuple of names in a stage module, imported only when a value
    is checked: the module may import torch, and `--help` must not.

    `source` is "module:attribute". With `listed`, `--help` shows the names (import a module
    free of torch and onnxruntime only: tests/test_cli_help.py checks); otherwise it shows
    `metavar` and the option's help says where the names are listed.
    """

    def __init__(self, source: str, metavar: str = "NAME", listed: bool = False) -> None:
        self.source = source
        self.metavar = metavar
        self.listed = listed
        self.name = metavar.lower()

    def _names(self):
        module, _, attribute = self.source.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def names(self) -> list[str]:
        names = self._names()
        return list(names.names() if hasattr(names, "names") else names)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return f"[{'|'.join(self.names())}]" if self.listed else self.metavar

    def convert(self, value, param, ctx):
        names = self._names()
        if hasattr(names, "get"):  # a Registry: its error lists the close matches
            try:
                names.get(value)
            except OnnxkdError as e:
                self.fail(str(e), param, ctx)
        elif value not in names:
            self.fail(f"{value!r} is not one of {', '.join(names)}", param, ctx)
        return value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(n) for n in self.names() if n.startswith(incomplete)]


class StudentChoice(NameChoice):
    """`--student`: a registry name, or a custom student (`FILE.py:FACTORY`,
    `package.module:FACTORY`, `timm:NAME`) checked to name something buildable."""

    def __init__(self) -> None:
        super().__init__("onnxkd.students:STUDENTS", metavar="NAME|FILE.py:FACTORY")

    def convert(self, value, param, ctx):
        if ":" not in value:
            return super().convert(value, param, ctx)
        from onnxkd.students.custom import check_student_spec

        try:
            check_student_spec(value)
        except OnnxkdError as e:
            self.fail(str(e), param, ctx)
        return value


def config_defaults(ctx: click.Context, path: Path | None) -> dict | None:
    """Option defaults per command from a TOML file: `[cache-teacher]` then `views = 10`;
    `[ondevice.train]` for a subcommand. Keys are the options' names, which are the stage
    config's field names (as in recipes). Unknown commands or options are usage errors naming
    the valid ones."""
    if path is None:
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise click.BadParameter(
            f"{path} is not a text file (a TOML file of options): {e.reason}", param_hint="--config"
        ) from e
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise click.BadParameter(f"{path} is not readable TOML: {e}", param_hint="--config") from e
    return _command_defaults(ctx.command, data, path, "")


def _command_defaults(group: click.Group, data: dict, path: Path, prefix: str) -> dict:
    defaults = {}
    for name, table in data.items():
        command = group.commands.get(name) if isinstance(table, dict) else None
        if command is None:
            raise click.BadParameter(
                f"{path}: [{prefix}{name}] is not a command table; commands: "
                f"{', '.join(group.commands)}",
                param_hint="--config",
            )
        if isinstance(command, click.Group):
            defaults[name] = _command_defaults(command, table, path, f"{prefix}{name}.")
            continue
        valid = {p.name for p in command.params}
        # A table (loss_args) fills a repeatable KEY=VALUE option as its pairs.
        options = {
            key.replace("-", "_"): list(value.items()) if isinstance(value, dict) else value
            for key, value in table.items()
        }
        unknown = sorted(set(options) - valid)
        if unknown:
            raise click.BadParameter(
                f"{path}: [{prefix}{name}] has unknown options {unknown}; valid: {sorted(valid)}",
                param_hint="--config",
            )
        defaults[name] = options
    return defaults


def progress_bar(total: int, done: int) -> Callable[[int], None]:
    """A tqdm bar on stderr (hidden when stderr is not a terminal); returns its `tick(n)`."""
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
