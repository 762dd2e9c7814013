"""``idml export`` and ``idml predict --model`` without their optional packages: one line naming the
extra to install, before any other work (the checkpoint or model named need not even exist)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from expect import one_error_line
from runs import run_idml

ONNX_EXPORT = ["export", "--format", "onnx", "--output", "m.onnx"]


@pytest.mark.parametrize(("hidden", "argv", "fragment"), [
    ("onnxscript", ONNX_EXPORT, "--format onnx needs idml[onnx] (onnxscript is not installed)"),
    ("onnx", ONNX_EXPORT, "--format onnx needs idml[onnx] (onnx is not installed)"),
    ("onnxruntime", ONNX_EXPORT, "needs idml[onnx] (onnxruntime is not installed)"),
    ("safetensors", ["export", "--format", "safetensors", "--output", "m.safetensors"],
     "--format safetensors needs idml[safetensors] (safetensors is not installed): pip install -e '.[safetensors]'"),
    ("onnxruntime", ["predict", "--model", "m.onnx", "x.png"],
     "idml predict --model FILE.onnx needs idml[onnx] (onnxruntime is not installed): pip install -e '.[onnx]'"),
    ("safetensors", ["predict", "--model", "m.safetensors", "x.png"], "pip install -e '.[safetensors]'"),
])
def test_a_missing_extra_is_one_line_before_any_work(hidden: str, argv: list[str], fragment: str, tmp_path: Path,
                                                     monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, hidden, None)  # import and find_spec both see it as absent
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.png").write_bytes(b"")  # predict lists its images first; nothing reads them
    if argv[0] == "export":
        argv = [*argv, "--checkpoint", "no_such_checkpoint.pth.tar"]
    code, out, err = run_idml(argv, capsys)
    one_error_line(err, fragment, "pip install -e '.[", code=code)
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_export_is_listed_in_the_help(capsys) -> None:
    code, out, _ = run_idml(["--help"], capsys)
    assert code == 0 and "export: a checkpoint as an ONNX, TorchScript or safetensors file" in " ".join(out.split())
