"""The one safe write (idml.files): atomic replacement, and never through a symbolic link."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from expect import one_line_message
from idml.errors import IdmlError
from idml.files import atomic_write, open_for_lock, open_to_read, remove_stale_temps, write_text


def test_a_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = write_text(tmp_path / "a.txt", "old")
    write_text(path, "new")
    assert path.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_a_planted_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious")
    link = tmp_path / "config.yaml"
    link.symlink_to(target)
    with pytest.raises(IdmlError) as info:
        write_text(link, "overwritten?")
    one_line_message(info, str(link), "symbolic link", "remove it")
    assert target.read_text() == "precious" and link.is_symlink()


def test_a_dangling_link_is_refused_too(tmp_path: Path) -> None:
    link = tmp_path / "metrics.csv"
    link.symlink_to(tmp_path / "elsewhere" / "new-file")
    with pytest.raises(IdmlError, match="symbolic link"):
        write_text(link, "x")
    assert not (tmp_path / "elsewhere").exists()


def test_a_lock_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious")
    (tmp_path / ".lock").symlink_to(target)
    with pytest.raises(IdmlError, match="symbolic link"):
        open_for_lock(tmp_path / ".lock")
    assert target.read_text() == "precious"


@pytest.mark.parametrize("plant", ["hard link", "named pipe"])
def test_a_lock_file_that_is_a_hard_link_or_not_a_file_is_refused(tmp_path: Path, plant: str) -> None:
    """The lock is written in place (its owner's pid): through a planted hard link that would
    overwrite another file."""
    target = tmp_path / "victim"
    target.write_text("precious")
    lock = tmp_path / ".lock"
    os.link(target, lock) if plant == "hard link" else os.mkfifo(lock)
    with pytest.raises(IdmlError) as info:
        open_for_lock(lock)
    one_line_message(info, str(lock), plant.split()[-1] if plant == "hard link" else "not a regular file",
                     "remove it")
    assert target.read_text() == "precious"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = write_text(tmp_path / "a.txt", "old")

    def fail(fh) -> None:
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(IdmlError) as info:
        atomic_write(path, fail)
    one_line_message(info, "No space left on device", "previous file, if any, is intact")
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_stale_temps_are_removed_but_not_through_links(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint.pth.tar.123.0.tmp").write_bytes(b"partial")
    outside = tmp_path / "outside"
    outside.write_text("keep")
    (tmp_path / ".planted.tmp").symlink_to(outside)
    remove_stale_temps(tmp_path)
    assert not (tmp_path / ".checkpoint.pth.tar.123.0.tmp").exists()
    assert outside.read_text() == "keep"


@pytest.mark.parametrize("what", ["checkpoint", "model"])
def test_a_named_pipe_to_read_is_refused_not_waited_on(tmp_path: Path, what: str) -> None:
    """--checkpoint, --init_from and --model read through open_to_read: a named pipe under the name
    is one line, where a plain open() waited forever for a writer."""
    pipe = tmp_path / "m.onnx"
    os.mkfifo(pipe)

    def hung(*_args) -> None:
        raise TimeoutError("open_to_read waited 20 s on a named pipe")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(IdmlError) as info:
            open_to_read(pipe, what)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    one_line_message(info, f"{what} {pipe} is a named pipe or a device, not a {what} file")
    with pytest.raises(IdmlError) as info:
        open_to_read(tmp_path, what)
    one_line_message(info, f"{what} {tmp_path} is a folder, not a {what} file")
