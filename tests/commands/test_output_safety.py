"""What the commands print stays what it claims to be: file and class names cannot forge rows or
lines, a diverged model gives one line instead of NaN probabilities or a scikit-learn traceback,
and a reader that goes away (``idml eval | head``) ends the command quietly."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import fake_data
from expect import one_error_line
from idml.checkpoint.schema import BEST_NAME
from idml.cli import main as cli_main
from idml.errors import printable
from runs import REPO, load, one_thread, subprocess_env, train_args  # noqa: F401 - autouse fixture
from runs import run_idml as cli

HOSTILE_NAMES = ["new\nline.png", "carriage\rreturn.png", "esc\x1b[31mred.png", "tab\there.png"]




@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("trained")
    fake_data.make_cifar10(root / "data", n_train=40, n_test=10)
    assert cli_main(["train", *train_args(root / "data", root / "runs", "run", "--epochs", "1", "--no-verbose")]) == 0
    return {"data": root / "data", "best": root / "runs" / "run" / BEST_NAME, "root": root}


@pytest.fixture(scope="module")
def hostile_folder(trained: dict) -> Path:
    folder = trained["root"] / "hostile"
    folder.mkdir()
    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()
    for name in [*HOSTILE_NAMES, "plain.png"]:
        Image.fromarray(pixels).save(folder / name, format="PNG")
    Image.fromarray(pixels).save(os.fsdecode(bytes(folder) + b"/not-utf8-\xff.png"), format="PNG")
    return folder


def test_printable_escapes_controls_and_undecodable_bytes_and_keeps_the_rest() -> None:
    assert printable("été/数据 a.png") == "été/数据 a.png"
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("x\x1b[31m\x00\u2028") == "x\\x1b[31m\\x00\\u2028"
    assert printable(os.fsdecode(b"bad-\xff.png")) == "bad-\\xff.png"


def test_hostile_file_names_cannot_forge_rows_in_table_or_csv(trained, hostile_folder, capsys) -> None:
    n = len(HOSTILE_NAMES) + 2
    base = ["predict", "--checkpoint", str(trained["best"]), str(hostile_folder), "--topk", "2"]
    code, table, err = cli([*base, "--format", "table"], capsys)
    assert code == 0, err
    assert len(table.splitlines()) == 1 + n
    assert "new\\nline.png" in table and "\x1b" not in table and "\\xff" in table
    code, out, err = cli([*base, "--format", "csv"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 1 + n
    assert sum("carriage\\rreturn.png" in row["file"] for row in csv.DictReader(io.StringIO(out))) == 1
    code, out, err = cli([*base, "--format", "json"], capsys)  # JSON escapes by itself, names kept exact
    assert code == 0, err
    assert {Path(r["file"]).name for r in json.loads(out)} >= set(HOSTILE_NAMES)


def test_an_error_naming_a_hostile_file_stays_one_line(trained, tmp_path, capsys) -> None:
    bad = tmp_path / "broken\nname.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, out, err = cli(["predict", "--checkpoint", str(trained["best"]), str(bad)], capsys)
    assert out == ""
    one_error_line(err, "broken\\nname.png", code=code)


def diverged_copy(best: Path, folder: Path) -> Path:
    state = load(best)
    key = next(k for k, v in state["state_dict"].items() if k.endswith("conv1.weight"))
    state["state_dict"][key] = torch.full_like(state["state_dict"][key], float("nan"))
    path = folder / "diverged.pth.tar"
    torch.save(state, path)
    return path


def test_eval_and_predict_of_a_diverged_model_give_one_line(trained, hostile_folder, tmp_path, capsys) -> None:
    path = diverged_copy(trained["best"], tmp_path)
    for argv in (["eval", "--checkpoint", str(path), "--data_dir", str(trained["data"])],
                 ["eval", "--checkpoint", str(path), "--data_dir", str(trained["data"]), "--json"],
                 ["predict", "--checkpoint", str(path), str(hostile_folder / "plain.png")]):
        code, out, err = cli(argv, capsys)
        assert out == ""
        line = one_error_line(err, code=code)
        assert "NaN" in line or "diverged" in line


@pytest.mark.parametrize("argv", [["predict", "--checkpoint", "{best}", "{folder}"],
                                  ["eval", "--checkpoint", "{best}", "--data_dir", "{data}"],
                                  ["plot", "{run}", "--out", "{tmp}/curves.png"]])
def test_a_reader_that_leaves_ends_the_command_quietly(trained, hostile_folder, tmp_path, argv) -> None:
    """``idml eval | head``: status 141 (killed by SIGPIPE, as for any writer), nothing on stderr."""
    argv = [a.format(best=trained["best"], folder=hostile_folder, data=trained["data"], run=trained["best"].parent,
                     tmp=tmp_path) for a in argv]
    env = subprocess_env() | {"PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "idml", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # like ``| head`` having exited before the first line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert err == ""
