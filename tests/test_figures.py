"""Where a figure is written (idml.figures): the name printed is the file written, and a name that
holds no file name is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from expect import one_line_message
from idml.errors import IdmlError
from idml.figures import figure_path

FORMATS = {"png": "Portable Network Graphics", "pdf": "Portable Document Format", "svg": "Scalable Vector Graphics"}


@pytest.mark.parametrize(("asked", "written", "fmt"), [
    ("curves.png", "curves.png", "png"), ("curves.PDF", "curves.PDF", "pdf"), ("curves", "curves.png", "png"),
    ("curves.", "curves..png", "png"), ("a/b.jpg", "a/b.jpg.png", "png"), (".png", ".png.png", "png"),
])
def test_the_path_returned_is_the_file_written(asked: str, written: str, fmt: str) -> None:
    assert figure_path(asked, FORMATS) == (Path(written), fmt)


@pytest.mark.parametrize("asked", ["", ".", "/", "runs/.."])
def test_a_path_without_a_file_name_is_one_line(asked: str) -> None:
    with pytest.raises(IdmlError) as info:
        figure_path(asked, FORMATS)
    one_line_message(info, "names a folder, not a file", "curves.png")
