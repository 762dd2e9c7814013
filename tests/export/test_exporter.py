"""What idml export refuses before it works or writes: bad requests, a planted link, the checkpoint
itself as the output; and a refused export writes nothing and keeps the file already there."""

from __future__ import annotations

from pathlib import Path

import pytest

import tiny_models
from expect import one_error_line
from runs import run_idml


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_models.train(tmp_path_factory.mktemp("exporter"), "resnet-cifar")


@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_a_planted_symlink_is_refused_before_any_work(checkpoint: Path, fmt: str, tmp_path: Path, capsys) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    output = tmp_path / f"model.{fmt}"
    planted = output if fmt == "onnx" else output.with_suffix(".json")  # safetensors writes a .json too
    planted.symlink_to(victim)
    code, out, err = run_idml(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--output", str(output)],
                              capsys)
    one_error_line(err, f"refusing to write {planted}: it is a symbolic link", code=code)
    assert victim.read_text() == "precious" and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["victim.txt", planted.name])


def test_a_refused_export_writes_nothing_and_keeps_the_old_file(checkpoint: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "model.onnx"
    output.write_bytes(b"previous export")
    code, _, err = run_idml(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--opset", "11",
                             "--output", str(output)], capsys)
    one_error_line(err, "--opset 11 cannot express", code=code)
    assert output.read_bytes() == b"previous export" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--format", "onnx", "--output", "{tmp}/model.pt"], "must end in .onnx for --format onnx"),
    (["--format", "safetensors", "--output", "{tmp}/no/such/folder/m.safetensors"], "does not exist"),
    (["--format", "torchscript", "--output", "{tmp}/m.pt", "--opset", "18"], "--opset applies to --format onnx only"),
    (["--format", "torchscript", "--output", "{checkpoint}"], "must end in .pt"),
    (["--format", "onnx", "--output", "{tmp}/m.onnx", "--opset", "3"], "must be an integer in [7, 99] (got 3)"),
    (["--format", "onnx", "--output", "{tmp}/m.onnx", "--ema"], "holds no EMA of the weights"),
    (["--format", "onnx", "--output", "{tmp}/m.onnx", "--score", "u_norm2"], "--score"),
])
def test_bad_export_requests_are_one_line(checkpoint: Path, tmp_path: Path, args: list[str], fragment: str,
                                          capsys) -> None:
    argv = [a.format(tmp=tmp_path, checkpoint=checkpoint) for a in args]
    code, out, err = run_idml(["export", "--checkpoint", str(checkpoint), *argv], capsys)
    one_error_line(err, fragment, code=code)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_the_checkpoint_is_never_overwritten(checkpoint: Path, capsys) -> None:
    before = checkpoint.read_bytes()
    copy = checkpoint.with_name("model.pt")
    copy.write_bytes(before)
    code, _, err = run_idml(["export", "--checkpoint", str(copy), "--format", "torchscript", "--output", str(copy)],
                            capsys)
    one_error_line(err, "is the checkpoint itself", code=code)
    assert copy.read_bytes() == before


def test_a_gray_checkpoint_mean_is_applied_to_the_three_channels(tmp_path: Path, capsys) -> None:
    """A checkpoint may store one mean and std for all channels; the export states all three."""
    import json

    import onnxruntime
    import torch

    from idml.models.registry import build_from_spec
    from idml.models.spec import ModelSpec

    spec = ModelSpec("resnet", "cifar10", 8, bottleneck=False, num_classes=10, uncertainty_dim=16)
    torch.manual_seed(0)
    checkpoint = tmp_path / "gray.pth.tar"
    torch.save({"model": spec.to_dict(), "state_dict": build_from_spec(spec).state_dict(), "mean": [0.4],
                "std": [0.2], "input_size": 32, "class_names": [str(c) for c in range(10)]}, checkpoint)
    output = tmp_path / "gray.onnx"
    code, _, err = run_idml(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(output)],
                            capsys)
    assert code == 0, err
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["idml"])
    assert meta["mean"] == pytest.approx([0.4] * 3) and meta["std"] == pytest.approx([0.2] * 3)
