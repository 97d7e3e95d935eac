"""Fenced code blocks of the Markdown docs, and the markers that tell the docs tests what to do with them.

A marker is an HTML comment (invisible on a rendered page) on the line right above a fence; several may
be stacked:

    <!-- docs: illustrative: <why it is not run> -->   shown, not run (placeholders, another machine…)
    <!-- docs: file <path> -->                         written to <path> in the work directory
    <!-- docs: expect <text> -->                       the page's output must contain <text>

Blocks in a shell language (sh, bash, shell) are commands and Python blocks are programs: each is run
unless marked illustrative or as a file. Blocks in other languages (json, toml, yaml, none) show data
or output and are not run.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

SHELL = frozenset({"sh", "bash", "shell"})
PYTHON = frozenset({"python", "py"})
_FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*docs:\s*(illustrative|file|expect)\b:?\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    illustrative: str = ""  # the reason, when marked illustrative
    file: str = ""
    expect: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def is_code(self) -> bool:
        """A command or a program a user would run (or a file they would write)."""
        return self.lang in SHELL or self.lang in PYTHON


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the markers above it. Raises on an unclosed fence."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        _, fence, lang = match.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: code block is never closed")
        block = Block(path, i + 1, lang.lower(), textwrap.dedent("\n".join(lines[i + 1:end])) + "\n")
        _apply_markers(block, lines, i)
        found.append(block)
        i = end + 1
    return found


def _apply_markers(block: Block, lines: list[str], fence_index: int) -> None:
    j = fence_index - 1
    while j >= 0:
        marker = _MARKER.match(lines[j])
        if not marker:
            break
        kind, value = marker.groups()
        if kind == "illustrative":
            if not value:
                raise ValueError(f"{block.where}: an illustrative marker needs a reason")
            block.illustrative = value
        elif kind == "file":
            block.file = value
        else:
            block.expect.append(value.strip('"'))
        j -= 1
