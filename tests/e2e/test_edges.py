"""Settings at the edges of their rules, through the whole life of a run: train, eval, predict, resume
and a second fresh run over the folder. These values once passed validation and then broke (a
traceback at the first step, NaN with advice that could not help, a folder that could not be moved
aside); every setting's edges are also walked through config.yaml and a checkpoint in
tests/checkpoint/test_schema.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fake_data
from expect import one_error_line
from runs import one_thread, run_idml  # noqa: F401 - one_thread: autouse fixture

NET = ["--net_type", "resnet", "--depth", "8", "--no-bottleneck", "--device", "cpu", "--amp", "off", "-j", "0",
       "--no-verbose", "--epochs", "1"]
DIGITS = ["--dataset", "digits", "--batch_size", "256"]

EDGES = {
    "momentum at its bound": [*DIGITS, "--momentum", "1"],
    "weight decay at its bound": [*DIGITS, "--wd", "1"],
    "smallest ism_lambda": [*DIGITS, "--ism_lambda", "1e-6"],
    "largest ism_lambda": [*DIGITS, "--ism_lambda", "1e6"],
    "smallest std, largest mean": ["--dataset", "folder", "--batch_size", "8", "--mean", "1", "0", "0.5",
                                   "--std", "0.001", "1", "0.001"],
    "largest seed": [*DIGITS, "--seed", str(2**32 - 1)],
    "input size 8": ["--dataset", "folder", "--batch_size", "8", "--input_size", "8"],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_data.make_image_folder(tmp_path_factory.mktemp("folder"), per_class=8, val_per_class=2, size=(16, 16))


@pytest.mark.parametrize("case", sorted(EDGES))
def test_a_run_at_the_edges_lives_its_whole_life(folder, tmp_path, capsys, case: str) -> None:
    args = [*NET, *EDGES[case], "--data_dir", str(folder), "--output_dir", str(tmp_path), "--expname", "edge"]
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "x.png")
    checkpoint = str(tmp_path / "edge" / "checkpoint.pth.tar")
    for argv in (["train", *args], ["eval", "--checkpoint", checkpoint, "--device", "cpu", "-j", "0"],
                 ["predict", "--checkpoint", checkpoint, str(tmp_path / "x.png"), "--device", "cpu"],
                 ["train", *args, "--epochs", "2", "--resume", "auto"]):
        code, _, err = run_idml(argv, capsys)
        assert code == 0, (argv[0], err)


def test_the_longest_expname_can_be_moved_aside(tmp_path, capsys) -> None:
    """255 characters passed the rule, and a second run could not move the first to <name>.1 (256)."""
    args = ["train", *NET, *DIGITS, "--output_dir", str(tmp_path), "--expname", "x" * 240]
    assert run_idml(args, capsys)[0] == 0
    code, out, err = run_idml(args, capsys)
    assert code == 0 and "moved it to" in out, err
    code, _, err = run_idml([*args[:-1], "x" * 241], capsys)
    one_error_line(err, "--expname must be a plain folder name of at most 240 characters", code=code)


@pytest.mark.parametrize(("flag", "value"), [("--lr", "1e308"), ("--momentum", "1e308"), ("--wd", "1e308"),
                                             ("--ism_lambda", "5e-324"), ("--std", "5e-324"), ("--mean", "123.7"),
                                             ("--dist_timeout", "1e-9")])
def test_values_that_broke_a_run_are_refused_at_the_start(tmp_path, capsys, flag: str, value: str) -> None:
    values = [value] * 3 if flag in ("--mean", "--std") else [value]
    dataset = ["--dataset", "folder", "--data_dir", str(tmp_path)] if flag in ("--mean", "--std") else DIGITS
    code, _, err = run_idml(["train", *NET, *dataset, "--output_dir", str(tmp_path), flag, *values], capsys)
    one_error_line(err, f"{'--weight-decay' if flag == '--wd' else flag} must be", code=code)
    assert not (tmp_path / "TEST").exists()
