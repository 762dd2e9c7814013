"""The code blocks of the project's documentation (README.md and docs/*.md), which tests run or check."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
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
    return [shlex.split(line.partition(prefix)[2]) for line in lines if prefix in line]


def run_block(block: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    """A documentation block run by bash in ``cwd``, with this checkout's ``src`` (or ``pythonpath``)
    first on the path, single-threaded (:func:`runs.subprocess_env`)."""
    from runs import subprocess_env

    path = pythonpath or str(ROOT / "src")
    env = subprocess_env() | {"PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(["bash", "-e", "-c", block], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
