"""Assembling a run (idml.training.setup): the run folder is checked before anything is read or
written. A symbolic link planted in a shared --output_dir, as the run folder itself or under any
name idml writes in it, is refused with one line and its target is never touched; a user's own
linked --output_dir keeps working; metrics.csv history is never lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import fake_data
from expect import one_error_line
from idml.extras import installed
from idml.training.run_log import METRICS_NAME, read_metrics
from runs import one_thread, run_cli, run_idml, train_args  # noqa: F401 - one_thread: autouse fixture

QUIET = ["--no-verbose", "--epochs", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    fake_data.make_cifar10(root, n_train=40, n_test=10)
    return root


def victim(tmp_path: Path) -> tuple[Path, Path]:
    """A file and a folder outside the run folder that a planted link points at."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious.txt").write_text("precious")
    return folder / "precious.txt", folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


#: name in the run folder -> where its link points ("file", "folder", "dangling")
PLANTS = {
    ".lock": "file", "config.yaml": "dangling", "metrics.csv": "file", "checkpoint.pth.tar": "folder",
    "model_best.pth.tar": "dangling", "tensorboard": "folder",
}


def plant(link: Path, kind: str, target_file: Path, target_folder: Path) -> None:
    link.symlink_to({"file": target_file, "folder": target_folder, "dangling": target_folder / "new"}[kind])


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
@pytest.mark.parametrize("name", sorted(PLANTS))
def test_a_link_planted_in_the_run_folder_is_refused(data, tmp_path, capsys, name: str, resume: bool) -> None:
    target_file, target_folder = victim(tmp_path)
    out = tmp_path / "runs"
    args = train_args(data, out, "run", *QUIET)
    if resume:
        assert run_cli(args, capsys)[0] == 0
    else:
        (out / "run").mkdir(parents=True)
    if os.path.lexists(out / "run" / name):
        (out / "run" / name).unlink()
    plant(out / "run" / name, PLANTS[name], target_file, target_folder)
    before = snapshot(target_folder)
    code, _, err = run_cli([*args, "--epochs", "2", "--tensorboard", *(["--resume", "auto"] if resume else [])],
                           capsys)
    one_error_line(err, f"refusing to write {out / 'run' / name}: it is a symbolic link", "remove it", code=code)
    assert snapshot(target_folder) == before and not (target_folder / "new").exists()
    assert (out / "run" / name).is_symlink() and not (out / "run.1").exists()


@pytest.mark.parametrize("kind", ["folder", "dangling"])
def test_a_run_folder_that_is_a_link_is_refused(data, tmp_path, capsys, kind: str) -> None:
    target_file, target_folder = victim(tmp_path)
    (tmp_path / "runs").mkdir()
    plant(tmp_path / "runs" / "run", kind, target_file, target_folder)
    before = snapshot(target_folder)
    code, _, err = run_cli(train_args(data, tmp_path / "runs", "run", *QUIET), capsys)
    one_error_line(err, "it is a symbolic link", "give --output_dir the real folder", code=code)
    assert snapshot(target_folder) == before and not (target_folder / "new").exists()


def test_a_linked_output_dir_of_your_own_works(data, tmp_path, capsys) -> None:
    real = tmp_path / "scratch"
    real.mkdir()
    (tmp_path / "runs").symlink_to(real)
    code, _, err = run_cli(train_args(data, tmp_path / "runs", "run", *QUIET), capsys)
    assert code == 0, err
    assert (real / "run" / "checkpoint.pth.tar").is_file()


def test_an_earlier_run_is_never_moved_onto_a_planted_name(data, tmp_path, capsys) -> None:
    """A dangling link planted as runs/run.1 (where the earlier run would be moved) is left alone."""
    target_file, target_folder = victim(tmp_path)
    args = train_args(data, tmp_path / "runs", "run", *QUIET)
    assert run_cli(args, capsys)[0] == 0
    plant(tmp_path / "runs" / "run.1", "dangling", target_file, target_folder)
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "moved it to" in out and (tmp_path / "runs" / "run.2" / "checkpoint.pth.tar").is_file()
    assert (tmp_path / "runs" / "run.1").is_symlink() and not (target_folder / "new").exists()


@pytest.mark.skipif(not installed("tensorboard"), reason="tensorboard not installed")
def test_tensorboard_event_files_get_names_nobody_can_plant_in_advance(data, tmp_path, capsys) -> None:
    args = train_args(data, tmp_path, "run", *QUIET, "--tensorboard")
    assert run_cli(args, capsys)[0] == 0
    assert run_cli([*args, "--epochs", "2", "--resume", "auto"], capsys)[0] == 0
    names = [p.name for p in (tmp_path / "run" / "tensorboard").iterdir()]
    assert len(names) == 2 and all(len(name.rsplit(".", 1)[-1]) == 16 for name in names), names


# -- metrics.csv: nothing that was there is lost ----------------------------------------------------
UNREADABLE = {
    "a comment line": lambda text: "# my notes\n" + text,
    "a field over 128 KiB": lambda text: text + "3," + "9" * 200_000 + "\n",
    "a foreign file": lambda text: "\x00\xff binary junk",
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_an_unreadable_metrics_csv_is_kept_aside_on_resume(data, tmp_path, capsys, case: str) -> None:
    args = train_args(data, tmp_path, "run", "--no-verbose", "--epochs", "2")
    assert run_cli(args, capsys)[0] == 0
    path = tmp_path / "run" / METRICS_NAME
    damaged = UNREADABLE[case](path.read_text())
    path.write_text(damaged)
    code, out, err = run_cli([*args, "--epochs", "3", "--resume", "auto"], capsys)
    assert code == 0, err
    assert "could not be read" in out and "kept as" in out and "metrics.csv.bad-1" in out
    assert (tmp_path / "run" / "metrics.csv.bad-1").read_text() == damaged  # the history, as it was
    assert [row["epoch"] for row in read_metrics(path)] == [2]

    (tmp_path / "plot").mkdir()  # idml plot of such a file: one line
    (tmp_path / "plot" / METRICS_NAME).write_text(damaged)
    code, _, err = run_idml(["plot", str(tmp_path / "plot"), "--out", str(tmp_path / "c.png")], capsys)
    one_error_line(err, "metrics.csv", code=code)


def test_rows_of_redone_epochs_are_kept_aside(data, tmp_path, capsys) -> None:
    """Resuming from an earlier checkpoint of the folder trains its later epochs again: their old rows
    stay in metrics.csv.old-1, and the rows before stay in metrics.csv."""
    args = train_args(data, tmp_path, "run", "--no-verbose", "--epochs", "3")
    assert run_cli(args, capsys)[0] == 0
    (tmp_path / "run" / "first.pth.tar").write_bytes((tmp_path / "run" / "checkpoint.pth.tar").read_bytes())
    before = (tmp_path / "run" / METRICS_NAME).read_bytes()
    code, _, _ = run_cli(train_args(data, tmp_path, "first", "--no-verbose", "--epochs", "1"), capsys)
    assert code == 0
    (tmp_path / "run" / "one.pth.tar").write_bytes((tmp_path / "first" / "checkpoint.pth.tar").read_bytes())
    code, out, err = run_cli([*args, "--resume", str(tmp_path / "run" / "one.pth.tar")], capsys)
    assert code == 0, err
    assert "held epoch(s) 1, 2 that this run trains again from epoch 1" in out, out
    assert (tmp_path / "run" / "metrics.csv.old-1").read_bytes() == before
    assert [row["epoch"] for row in read_metrics(tmp_path / "run" / METRICS_NAME)] == [0, 1, 2]
