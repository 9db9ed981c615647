"""Every command's `--help`, found by walking the click group (a new command is covered with no
new test code), and none of them imports torch or onnxruntime."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from onnxkd.cli import main

HEAVY = ("torch", "onnxruntime")


def command_paths(group: click.Group = main, prefix: tuple[str, ...] = ()) -> list[tuple]:
    """The top level and every command and subcommand, as the words that name it."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


PATHS = command_paths()


def test_the_walk_finds_commands_and_subcommands():
    assert {("distill",), ("cache-teacher",), ("ondevice", "train"), ()} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "onnxkd" for p in PATHS])
def test_help_works(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(('main', *path))} ")
    command = main
    for name in path:
        command = command.commands[name]
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[-1] in result.output or param.opts[0] in result.output


def test_no_help_imports_torch_or_onnxruntime():
    # One fresh interpreter for all: after each --help, the heavy modules must still be absent,
    # so the first command that pulls one in is the one named.
    code = (
        "import sys\n"
        "from onnxkd.cli import main\n"
        f"for path in {PATHS!r}:\n"
        "    try:\n"
        "        main([*path, '--help'], prog_name='onnxkd')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (path, e.code)\n"
        f"    heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "    if heavy:\n"
        '        sys.exit(f\'{" ".join(path) or "onnxkd"} --help imports {heavy}\')\n'
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("Usage: onnxkd") == len(PATHS)


def test_the_console_script_help_imports_neither(tmp_path):
    # As a user runs it: `python -m onnxkd --help`, checked from inside by an audit hook on
    # imports, since the process exits in click.
    code = (
        "import sys, runpy\n"
        f"heavy = {HEAVY!r}\n"
        "def hook(event, args):\n"
        "    if event == 'import' and args[0].split('.')[0] in heavy:\n"
        "        print('imported', args[0], file=sys.stderr); sys.stderr.flush()\n"
        "sys.addaudithook(hook)\n"
        "sys.argv = ['onnxkd', '--help']\n"
        "runpy.run_module('onnxkd', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage: onnxkd" in out.stdout, out.stderr[-2000:]
    assert "imported" not in out.stderr
