"""benchmarks/official_step.py without a checkout of the official code: one line, exit 2."""

import importlib.util
from pathlib import Path

import pytest

from expect import one_error_line

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "official_step.py"


@pytest.fixture
def official_step(monkeypatch):
    monkeypatch.delenv("IDML_OFFICIAL_DIR", raising=False)
    spec = importlib.util.spec_from_file_location("official_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_checkout_says_so(official_step, capsys):
    assert official_step.main([]) == 2
    one_error_line(capsys.readouterr().err, "no checkout of the official IDML classification code", "--official",
                   "IDML_OFFICIAL_DIR")


def test_a_folder_without_the_official_code_says_so(official_step, tmp_path, capsys):
    (tmp_path / "train.py").write_text("# not the official code\n")
    assert official_step.main(["--official", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, str(tmp_path), "holds no train.py and pyramidnet.py")


def test_the_code_folder_is_found_in_a_clone_of_the_repository(official_step, tmp_path):
    code = tmp_path / "image_classification" / "code"
    code.mkdir(parents=True)
    for name in ("train.py", "pyramidnet.py"):
        (code / name).write_text("")
    assert official_step.find_code(str(tmp_path)) == code.resolve()
    assert official_step.find_code(str(code)) == code.resolve()
