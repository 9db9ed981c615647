"""`onnxkd students`: the student registry, the names `distill --student` takes, and with
`--taps SPEC` the feature taps of one student (a registry name or a custom one)."""

from __future__ import annotations

import click


@click.command("students")
@click.option(
    "--taps",
    "spec",
    metavar="NAME|FILE.py:FACTORY",
    help="List this student's feature taps (the names --hint/--attention/--rkd/--crd take) "
    "with each one's output shape, instead of the registry.",
)
@click.option("--size", type=click.IntRange(1), default=32, show_default=True, help="Image side.")
@click.option("--channels", type=click.IntRange(1), default=3, show_default=True)
@click.option("--classes", type=click.IntRange(2), default=10, show_default=True)
def students_cmd(spec, size, channels, classes):
    """List the student architectures, or one student's feature taps."""
    if spec is None:
        from onnxkd.students import STUDENTS

        for name in STUDENTS.names():
            doc = (STUDENTS.get(name).__doc__ or "").strip().splitlines()
            click.echo(f"{name:22} {doc[0] if doc else ''}")
        return
    from onnxkd.students.taps import feature_taps

    taps = feature_taps(spec, size, channels, classes)
    width = max(len(t.name) for t in taps)
    kind = max(len(t.module_type) for t in taps)
    click.echo(f"{'TAP':{width}}  {'MODULE':{kind}}  OUTPUT (batch 1, {size}x{size}x{channels})")
    for tap in taps:
        click.echo(f"{tap.name:{width}}  {tap.module_type:{kind}}  {tap.shape}")


COMMANDS = (students_cmd,)
