"""`onnxkd students`: the student registry, the names `distill --student` takes."""

from __future__ import annotations

import click


@click.command("students")
def students_cmd():
    """List the student architectures."""
    from onnxkd.students import STUDENTS

    for name in STUDENTS.names():
        doc = (STUDENTS.get(name).__doc__ or "").strip().splitlines()
        click.echo(f"{name:22} {doc[0] if doc else ''}")


COMMANDS = (students_cmd,)
