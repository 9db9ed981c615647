"""The docs hold together (issue 30): every relative link in the markdown points at a file that
exists (and, for `#anchor` links into a markdown file, at one of its headings, slugged as GitHub
does), the examples marked as runnable run, and the README stays a short front page.

A fenced block is runnable when the line above its fence is `<!-- runs in tests -->`; every
line in it must be an `onnxkd …` command that finishes in seconds (`--help`, `students`,
`losses`). Each runs as `python -m onnxkd …` in an empty folder and must exit 0.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    ROOT / "benchmarks" / "README.md",
    *sorted(ROOT.glob("pipelines/*.md")),
    *sorted(ROOT.glob("docs/**/*.md")),
]
README_MAX_LINES = 250
RUNS_MARKER = "<!-- runs in tests -->"

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks, inline code removed."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, INLINE_CODE.sub("", line)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a markdown file, duplicates numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines_with_code(path):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def prose_lines_with_code(path: Path) -> list[tuple[int, str]]:
    """(line number, text) outside fenced blocks, inline code kept (headings need it)."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((number, line))
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link outside code."""
    found = []
    for number, line in prose_lines(path):
        for m in LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            found.append((number, target))
    return found


def broken(path: Path, target: str) -> str | None:
    """Why a relative link from `path` does not resolve, or None when it does."""
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    if not dest.exists():
        return f"{file_part} does not exist"
    if anchor and dest.suffix == ".md" and (dest.is_dir() or anchor.lower() not in anchors(dest)):
        return f"{file_part or dest.name} has no heading #{anchor}"
    return None


LINKS = [(path, line, target) for path in DOCS for line, target in links(path)]


@pytest.mark.parametrize(
    ("path", "line", "target"),
    LINKS,
    ids=[f"{p.relative_to(ROOT)}:{line}:{t}" for p, line, t in LINKS],
)
def test_each_relative_link_resolves(path, line, target):
    why = broken(path, target)
    assert why is None, f"{path.relative_to(ROOT)}:{line}: link ({target}): {why}"


def test_the_docs_have_links_and_the_link_check_catches_a_broken_one(tmp_path):
    assert len(LINKS) > 50
    page = tmp_path / "page.md"
    page.write_text(
        "# A `page` (one): its title\n\n## Done\n\n## Done\n\n"
        "[ok](#a-page-one-its-title) [dup](#done-1) [gone](missing.md) [bad](#nowhere)\n"
        "[web](https://example.com/x) `[code](not-a-link.md)`\n\n```\n[fenced](nope.md)\n```\n"
    )
    found = links(page)
    assert [t for _, t in found] == ["#a-page-one-its-title", "#done-1", "missing.md", "#nowhere"]
    assert [broken(page, t) is None for _, t in found] == [True, True, False, False]


def runnable_blocks(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, command lines) of each fenced block marked to run in tests."""
    lines = path.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != RUNS_MARKER:
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        assert fence in ("```bash", "```sh", "```console", "```shell"), (
            f"{path.relative_to(ROOT)}:{i + 1}: {RUNS_MARKER} must sit right above a "
            f"```bash, ```sh or ```console fence, not {fence!r}"
        )
        body = []
        for text in lines[i + 2 :]:
            if text.strip().startswith("```"):
                break
            if text.strip():
                body.append(text.strip().removeprefix("$ "))
        blocks.append((i + 3, body))
    return blocks


RUNNABLE = [
    (path, line, command)
    for path in sorted(ROOT.glob("docs/**/*.md"))
    for line, body in runnable_blocks(path)
    for command in body
]


def test_the_docs_mark_runnable_examples():
    commands = {c for _, _, c in RUNNABLE}
    assert {"onnxkd --help", "onnxkd students", "onnxkd losses"} <= commands
    assert len(commands) >= 12, commands


@pytest.mark.parametrize(
    ("path", "line", "command"),
    RUNNABLE,
    ids=[f"{p.relative_to(ROOT)}:{line}:{c}" for p, line, c in RUNNABLE],
)
def test_each_runnable_example_exits_0(path, line, command, tmp_path):
    where = f"{path.relative_to(ROOT)}:{line}"
    words = shlex.split(command)
    assert words[0] == "onnxkd", f"{where}: a runnable block holds only onnxkd commands: {command}"
    done = subprocess.run(
        [sys.executable, "-m", "onnxkd", *words[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{where}: {command} exited {done.returncode}\n{done.stderr}"
    assert done.stdout.strip(), f"{where}: {command} printed nothing"
    assert not any(tmp_path.iterdir()), f"{where}: {command} wrote into the folder it ran in"


def test_the_readme_is_a_short_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
