"""errors.one_line: the line a user sees of any exception, and the messages built with it."""

from pathlib import Path

import pytest

from idml.config import parse_train_args
from idml.errors import ConfigError, DataError, one_line


def test_the_first_line_of_a_multi_line_message() -> None:
    exc = RuntimeError("Error(s) in loading state_dict:\n\tsize mismatch for fc.weight: [10, 64] vs [4, 64]")
    assert one_line(exc) == "Error(s) in loading state_dict:"


def test_a_dataloader_workers_traceback_gives_the_original_message() -> None:
    text = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in f\nidml.errors.DataError: cannot read image a.jpg (truncated)')
    assert one_line(DataError(text)) == "cannot read image a.jpg (truncated)"


def test_an_empty_message_names_the_exception() -> None:
    assert one_line(ValueError("  \n ")) == "ValueError"


def test_a_bad_yaml_config_names_the_yaml_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 0.1\nepochs: 3: 4\n")
    with pytest.raises(ConfigError) as info:
        parse_train_args(["--config", str(path)])
    assert "mapping values are not allowed here" in str(info.value) and "\n" not in str(info.value)
