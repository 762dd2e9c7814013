"""The optional parts: pyproject.toml's extras are the ones idml names in its messages, and a command
that needs a missing part stops before any work with one line naming the extra."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from doc_blocks import ROOT
from expect import one_error_line
from idml.extras import ALL, DEV, EXTRAS, missing
from runs import one_thread, run_idml, tiny_cifar  # noqa: F401 - autouse fixture

tomllib = pytest.importorskip("tomllib")


def declared() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]


def extras_of(requirements: list[str]) -> set[str]:
    """The extras a list of requirements pulls in through ``idml[...]``."""
    return {name for req in requirements if req.startswith("idml[") for name in req[5:-1].split(",")}


def test_the_extras_of_pyproject_are_the_ones_idml_names() -> None:
    extras = declared()
    assert set(extras) - {ALL, DEV} == set(EXTRAS)
    for name, extra in EXTRAS.items():  # each installs the packages whose absence its message reports
        for package in extra.packages:
            assert any(re.match(rf"{re.escape(package)}\b", req) for req in extras[name]), (name, package)
    assert extras_of(extras[ALL]) == set(EXTRAS)  # all = every optional part
    in_dev = {name for name, extra in EXTRAS.items() if extra.in_dev}
    assert extras_of(extras[DEV]) == in_dev and {"pytest", "ruff"} <= {re.split(r"[<>=]", r)[0] for r in extras[DEV]}


def test_the_base_install_has_what_every_command_needs() -> None:
    """matplotlib (idml plot, idml eval --plot) is a dependency, not an extra."""
    base = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert any(req.startswith("matplotlib") for req in base)


def hide(monkeypatch, module: str) -> None:
    """Make ``module`` impossible to import here, as if it were not installed."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)


SMALL_NET = ["--net_type", "resnet", "--depth", "8", "--no-bottleneck"]


@pytest.mark.parametrize(("module", "argv", "extra", "what"), [
    ("tensorboard", [*SMALL_NET, "--tensorboard"], "tensorboard", "--tensorboard"),
    ("timm", ["--net_type", "timm:resnet18"], "timm", "--net_type timm:resnet18"),
    ("datasets", [*SMALL_NET, "--dataset", "hf:anywhere"], "hf", "--dataset hf:<path>"),
])
def test_a_missing_part_stops_training_before_any_work(module, argv, extra, what, monkeypatch, capsys,
                                                        tmp_path: Path) -> None:
    hide(monkeypatch, module)
    data = tiny_cifar(tmp_path / "data")
    base = ["--dataset", "cifar10", "--device", "cpu"]
    code, out, err = run_idml(["train", *base, *argv, "--data_dir", str(data), "--output_dir", str(tmp_path / "o")],
                              capsys)
    line = one_error_line(err, f"{what} needs idml[{extra}]", f"pip install -e '.[{extra}]'", code=code)
    assert line == f"idml train: error: {missing(extra, what)}"
    assert out == "" and not (tmp_path / "o").exists()  # before any work: nothing printed, nothing written


def test_a_missing_part_stops_the_benchmark_before_any_work(monkeypatch, capsys) -> None:
    hide(monkeypatch, "timm")
    code, out, err = run_idml(["bench", "--net_type", "timm:resnet18", "--dataset", "cifar10", "--device", "cpu"],
                              capsys)
    one_error_line(err, "needs idml[timm]", code=code, prefix="idml bench: error:")
    assert out == ""


def test_plots_without_matplotlib_stop_before_any_work(monkeypatch, capsys, tmp_path: Path) -> None:
    hide(monkeypatch, "matplotlib")
    # a checkpoint that does not exist: the evaluation would fail on it, so failing on matplotlib
    # instead proves the check comes first
    code, _, err = run_idml(["eval", "--checkpoint", str(tmp_path / "none.pth.tar"), "--plot", "x.png"], capsys)
    one_error_line(err, "plots need matplotlib", "pip install -e .", code=code, prefix="idml eval: error:")
    code, _, err = run_idml(["plot", str(tmp_path / "no_run"), "--out", str(tmp_path / "x.png")], capsys)
    one_error_line(err, "plots need matplotlib", code=code, prefix="idml plot: error:")


def test_each_missing_part_is_named_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in [*EXTRAS, ALL, DEV]:
        assert f'pip install -e ".[{name}]"' in readme, name
