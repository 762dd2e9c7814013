"""The code blocks of the project's documentation (README.md and docs/*.md), which tests run or check."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def doc_files() -> list[Path]:
    """README.md first, then every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def section(text: str, heading: str) -> str:
    """The body of the level-2 section whose heading starts with ``heading``."""
    return text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]


def code_blocks(language: str, text: str | None = None) -> list[str]:
    """Every fenced block of ``language`` in ``text`` (default: all documentation files)."""
    texts = [text] if text is not None else [p.read_text(encoding="utf-8") for p in doc_files()]
    return [block for t in texts for block in re.findall(rf"```{language}\n(.*?)```", t, flags=re.DOTALL)]


def commands(prefix: str, text: str | None = None) -> list[list[str]]:
    """The arguments after ``prefix`` of every command containing it in the bash blocks."""
    lines = "\n".join(code_blocks("bash", text)).replace("\\\n", " ").splitlines()
    return [shlex.split(line.partition(prefix)[2]) for line in lines if prefix in line and not line.startswith("#")]


def reading_order() -> list[Path]:
    """README.md, then the pages of docs/ in the order its documentation table lists them (the
    order a reader meets them), then any page the table does not list."""
    readme = ROOT / "README.md"
    listed = re.findall(r"\]\((docs/[\w.-]+\.md)\)", section(readme.read_text(encoding="utf-8"), "Documentation"))
    pages = [ROOT / name for name in dict.fromkeys(listed)]
    return [readme, *pages, *(p for p in doc_files()[1:] if p not in pages)]


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: ``number`` counts the page's blocks from 1."""

    page: Path
    number: int
    language: str
    text: str
    #: where the page asks the reader to save the block ("Save this as `PATH`" just before it)
    saved_as: str | None = None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)} block {self.number} ({self.language})"

    @property
    def needs(self) -> str | None:
        """The block's ``# needs ...`` line (data, hardware or a setting a fresh clone lacks), or None."""
        first = self.text.lstrip().splitlines()[0] if self.text.strip() else ""
        return first[2:] if first.startswith("# needs ") else None

    @property
    def not_run(self) -> bool:
        """A block that needs hardware this machine lacks says it is not run by the docs test."""
        return self.needs is not None and "not run by the docs test" in self.needs

    def commands(self) -> list[str]:
        """The block's commands: continuation lines joined, comment lines dropped."""
        lines = self.text.replace("\\\n", " ").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def page_blocks(page: Path) -> list[Block]:
    """The bash and python blocks of ``page``, in order (output and layout blocks have no language),
    and the ``python3`` blocks the page asks the reader to save as a file."""
    text = page.read_text(encoding="utf-8")
    blocks, start = [], 0
    for match in re.finditer(r"```(\w*)\n(.*?)```", text, flags=re.DOTALL):
        language, body = match.groups()
        saved = re.findall(r"Save this as `([^`]+)`", text[start:match.start()])  # in the text just before it
        start = match.end()
        if language in ("bash", "python") or (language == "python3" and saved):
            blocks.append(Block(page, len(blocks) + 1, language, body, saved[-1] if saved else None))
    return blocks


def run_block(block: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """A documentation block run by bash in ``cwd``, with this checkout's ``src`` (or ``pythonpath``)
    first on the path, single-threaded (:func:`runs.subprocess_env`)."""
    from runs import subprocess_env

    path = pythonpath or str(ROOT / "src")
    env = subprocess_env() | {"PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(["bash", "-e", "-c", block], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
