"""Every command block of README.md and docs/*.md, run as a new user would: in a copy of the
repository, in the order a reader meets them (README.md, then the pages in the order of its
documentation table), in a shell where the environment is active, as the README's first section
asks. Nothing may be written outside what .gitignore covers.

In CI (the default), training commands get ``--epochs 1`` and ``idml bench`` ``--steps 1
--warmup 1 --batch_size 2 --isolation none`` appended, as the README and docs/benchmarks.md say
for a quick try;
``IDML_DOCS_FULL=1`` runs every block exactly as written instead (tens of minutes on a CPU).

What a fresh clone cannot do is replaced, and said here: the environment is this test's Python
(``.venv/bin/idml``, ``python``, ``pip``, ``torchrun`` and ``activate`` are small scripts; ``pip
install -e '.[extra]'`` checks that the extra exists and is installed instead of downloading it),
and ``python3 -m venv .venv`` is skipped. Blocks starting with ``# needs ...`` need data, hardware
or a setting this machine lacks: each of their commands must stop with exactly one line on stderr,
naming what is missing, or the block says it is not run by the docs test (skipped, with its reason).
Python blocks are the API examples that tests/models/test_external.py runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from doc_blocks import ROOT, Block, page_blocks, reading_order
from runs import subprocess_env

FULL = os.environ.get("IDML_DOCS_FULL") == "1"
#: what a quick try appends, per command (the README: "Add --epochs 1 to any training command")
QUICK = {"idml train": ["--epochs", "1"], "python train.py": ["--epochs", "1"],
         "idml bench": ["--steps", "1", "--warmup", "1", "--batch_size", "2", "--isolation", "none"]}
#: the README's test block is this suite itself
SELF = "python -m pytest"
TIMEOUT = 3600 if FULL else 900


@dataclass
class Ran:
    """What one block (or one command of a ``# needs`` block) did."""

    block: Block
    command: str
    code: int | None
    out: str = ""
    err: str = ""
    skipped: str = ""
    seconds: float = 0.0


def quick(line: str) -> str:
    """``line`` with the quick-try flags appended to the command that takes them."""
    parts = line.split(" && ")
    for i, part in enumerate(parts):
        for command, extra in QUICK.items():
            if part.lstrip().startswith(command):
                parts[i] = f"{part} {' '.join(extra)}"
    return " && ".join(parts)


def as_run(block: Block) -> str:
    """The block's text as this test runs it: set-up that the scratch environment replaces, and
    (unless FULL) the quick-try flags."""
    text = block.text.replace("python3 -m venv .venv", "test -d .venv")
    if FULL:
        return text
    return "\n".join(quick(line) for line in text.replace("\\\n", " ").splitlines())


def copy_repository(dest: Path) -> None:
    """The files of a fresh clone (tracked and not ignored), committed in a new git repository."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=docs-test", "-c", "user.email=docs-test@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "fresh clone"]):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)


FAKE_PIP = '''import re, sys, tomllib, importlib.util
from pathlib import Path
args = sys.argv[1:]
if args[:2] != ["install", "-e"] or len(args) != 3:
    sys.exit(f"docs test: pip {' '.join(args)} is not what the docs run")
extras = re.fullmatch(r"\\.(?:\\[([\\w,-]+)\\])?", args[2])
if extras is None:
    sys.exit(f"docs test: pip install -e {args[2]}: not the checkout")
declared = tomllib.loads(Path("pyproject.toml").read_text())["project"]["optional-dependencies"]
for name in filter(None, (extras.group(1) or "").split(",")):
    if name not in declared:
        sys.exit(f"docs test: pyproject.toml declares no extra {name!r}")
print(f"docs test: idml{args[2][1:]} is this test's environment")
'''


def make_environment(repo: Path) -> None:
    """``.venv`` of the scratch repository: scripts that run this test's Python on the copy's src/."""
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (repo / ".venv" / "fake_pip.py").write_text(FAKE_PIP)
    scripts = {"python": "", "python3": "", "idml": " -m idml", "torchrun": " -m torch.distributed.run",
               "pip": f' "{repo / ".venv" / "fake_pip.py"}"'}
    for name, tail in scripts.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}"{tail} "$@"\n')
        script.chmod(0o755)
    (bin_dir / "activate").write_text(f'VIRTUAL_ENV="{repo / ".venv"}"\nexport VIRTUAL_ENV\n'
                                      'PATH="$VIRTUAL_ENV/bin:$PATH"\nexport PATH\n')


def shell(repo: Path, block: Block, command: str, text: str) -> Ran:
    """Run ``text`` (``command`` as the page writes it) as a reader would, in an active environment."""
    env = subprocess_env() | {"PYTHONPATH": str(repo / "src")}
    env.pop("VIRTUAL_ENV", None)
    env.pop("NODE0", None)
    start = time.perf_counter()
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", f"source .venv/bin/activate\n{text}"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    return Ran(block, command, done.returncode, done.stdout, done.stderr, seconds=time.perf_counter() - start)


def run_block(repo: Path, block: Block) -> list[Ran]:
    if block.saved_as is not None:  # the reader saves it, as the page asks
        (repo / block.saved_as).parent.mkdir(parents=True, exist_ok=True)
        (repo / block.saved_as).write_text(block.text, encoding="utf-8")
        return [Ran(block, f"save as {block.saved_as}", 0)]
    if block.language == "python":
        return [Ran(block, "", None, skipped="a Python API example: tests/models/test_external.py runs it")]
    if SELF in block.text:
        return [Ran(block, "", None, skipped="this test suite itself: CI runs it as the suite")]
    if block.not_run:
        return [Ran(block, "", None, skipped=block.needs or "")]
    if block.needs is None:
        return [shell(repo, block, block.text, as_run(block))]
    # each command must stop at once, with one line naming what it lacks
    return [shell(repo, block, command, command if FULL else quick(command)) for command in block.commands()]


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> tuple[Path, list[Ran]]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the docs test copies the repository with git")
    repo = tmp_path_factory.mktemp("docs") / "idml"
    repo.mkdir()
    copy_repository(repo)
    make_environment(repo)
    results = [ran for page in reading_order() for block in page_blocks(page) for ran in run_block(repo, block)]
    for ran in results:  # what a reader of the test log wants to know
        print(f"{ran.block.name}: " + (f"skipped: {ran.skipped}" if ran.skipped else
                                        f"exit {ran.code} in {ran.seconds:.0f} s"))
    return repo, results


def what_it_lacks(needs: str) -> list[str]:
    """The names in a ``# needs`` line that the one-line failure must name (folders, variables)."""
    return re.findall(r"data/[\w.-]+|/path/[\w/.-]+|\b[A-Z][A-Z]*[0-9]\b", needs)


def problems(ran: Ran) -> str | None:
    """Why a block (or command) did not do what its page says, or None."""
    if ran.skipped:
        return None
    if ran.block.needs is None:
        return None if ran.code == 0 else f"exit {ran.code}: {ran.err[-2000:] or ran.out[-2000:]}"
    if ran.command.startswith(("pip ", "mkdir ")):
        return None if ran.code == 0 else f"{ran.command}: exit {ran.code}: {ran.err}"
    lines = ran.err.strip().splitlines()
    if ran.code == 0 or len(lines) != 1 or "Traceback" in ran.err:
        return f"{ran.command}: expected one line on stderr and a failure, got exit {ran.code}: {ran.err[-2000:]}"
    names = what_it_lacks(ran.block.needs)
    if names and not any(name in lines[0] for name in names):
        return f"{ran.command}: the line names none of {names}: {lines[0]}"
    return None


@pytest.mark.slow
def test_every_block_runs_as_its_page_says(walk) -> None:
    _, results = walk
    failed = [f"{ran.block.name}: {problem}" for ran in results if (problem := problems(ran))]
    assert not failed, "\n\n".join(failed)
    ran = {ran.block.name for ran in results if not ran.skipped}
    assert len(ran) >= 20, ran  # the walk really ran the pages' blocks


@pytest.mark.slow
def test_the_docs_write_nothing_outside_what_git_ignores(walk) -> None:
    repo, _ = walk
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", f"written outside .gitignore:\n{status}"
    for made in ("runs/digits_quickstart/model_best.pth.tar", "figures/compare.png", "data/my_images/val/circle"):
        assert (repo / made).exists(), made  # the blocks did run, writing where the pages say


@pytest.mark.slow
def test_the_own_images_walkthrough_prints_what_its_page_quotes(walk) -> None:
    _, results = walk
    by_name = {ran.block.name: ran for ran in results}
    out = by_name["docs/own-data.md block 2 (bash)"].out
    page = (ROOT / "docs" / "own-data.md").read_text(encoding="utf-8")
    quoted = re.search(r"`(=> data: folder data/my_images:.*?)`", page, flags=re.S)[1]
    assert " ".join(quoted.split()) in out  # the first line of the run is the one the page quotes
    assert re.search(r"^dataset\s+folder \(75 test images, 3 classes; ISM on\)$", out, flags=re.M)  # idml eval
    assert "top-5" not in out.split("checkpoint   ")[1]  # 3 classes: no top-5 error
    table = out[out.index("file ") :].splitlines()  # idml predict
    assert table[0].split() == ["file", "uncertainty", "(msp)", "top-1", "top-2", "top-3"]
    assert len(table) == 26 and all(row.startswith("data/my_images/val/circle/") for row in table[1:])


@pytest.mark.slow
def test_the_input_pipeline_measurement_prints_both_pipelines(walk) -> None:
    """docs/input-pipeline.md's way to measure a machine: its photos, then idml's pipeline timed
    beside the official one."""
    repo, results = walk
    bench = next(ran for ran in results if "--input_pipeline" in ran.command)
    assert len(list((repo / "data" / "photos" / "imagenet-1k" / "train").rglob("*.JPEG"))) == 256
    assert re.search(r"^idml\s+[\d.]+\s+[\d.]+", bench.out, re.M) and "idml / official:" in bench.out


@pytest.mark.slow
def test_plot_stars_the_epoch_of_the_best_model(walk) -> None:
    """The epoch idml plot names is the one model_best.pth.tar holds."""
    from idml.checkpoint.io import load_checkpoint

    repo, results = walk
    plotted = next(ran for ran in results if "figures/curves.png" in ran.command).out
    epoch = int(re.search(r"^digits_quickstart: best epoch (\d+)", plotted, flags=re.M)[1])
    best = load_checkpoint(repo / "runs" / "digits_quickstart" / "model_best.pth.tar")
    assert best.best_epoch == epoch == best.epoch - 1


def test_every_page_is_in_the_reading_order_and_every_needs_line_names_what_it_lacks() -> None:
    pages = reading_order()
    assert pages[0].name == "README.md" and sorted(pages[1:]) == sorted((ROOT / "docs").glob("*.md"))
    for page in pages:
        for block in page_blocks(page):
            if block.needs is not None and not block.not_run:
                assert what_it_lacks(block.needs), f"{block.name}: say what is missing: {block.needs}"
