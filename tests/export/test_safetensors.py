"""The safetensors export: weights only plus a JSON that rebuilds the model (load_safetensors_model),
--ema, and hostile weight and JSON files (one line each, huge declared tensors refused before any
allocation)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

import tiny_models
from expect import one_error_line, one_line_message
from idml.checkpoint.io import load_checkpoint
from idml.errors import IdmlError
from idml.export import safetensors as exported_weights
from idml.export.safetensors import load_safetensors_model
from idml.inference import load_trained_model, run_model
from runs import run_idml

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("safetensors")
    tiny_models.FAMILIES["resnet-ema"] = ("cifar", [*tiny_models.FAMILIES["resnet-cifar"][1], "--model_ema", "0.9"])
    try:
        checkpoint = tiny_models.train(root, "resnet-ema")
    finally:
        del tiny_models.FAMILIES["resnet-ema"]
    from idml.cli import main

    paths = {}
    for name, extra in (("plain", []), ("ema", ["--ema"])):
        paths[name] = root / f"{name}.safetensors"
        assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--output",
                     str(paths[name]), *extra]) == 0
    images = root / "images"
    images.mkdir()
    import numpy as np
    from PIL import Image

    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    return {"root": root, "checkpoint": checkpoint, "images": images, **paths}


def test_weights_only_and_a_json_that_rebuilds_the_model(exported: dict) -> None:
    ckpt = load_checkpoint(exported["checkpoint"])
    data = exported["plain"].read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    assert set(header) - {"__metadata__"} == set(ckpt.state_dict)  # tensors, nothing else
    saved = safetensors.torch.load_file(exported["plain"])
    assert all(torch.equal(saved[k], v) for k, v in ckpt.state_dict.items())
    config = json.loads(exported["plain"].with_suffix(".json").read_text())
    assert config["model"] == ckpt.spec.to_dict() and config["weights"] == "model"
    assert config["weights_sha256"] == hashlib.sha256(data).hexdigest()
    trained, metadata = load_safetensors_model(exported["plain"], CPU)
    rebuilt = trained.model.state_dict()
    assert all(torch.equal(rebuilt[k], v) for k, v in saved.items())
    assert trained.class_names == ckpt.class_names and trained.temperature == ckpt.temperature
    assert metadata.checkpoint_sha256 == hashlib.sha256(exported["checkpoint"].read_bytes()).hexdigest()
    images = torch.randn(5, 3, 32, 32)
    reference = load_trained_model(exported["checkpoint"], CPU, amp="off")
    assert (run_model(trained, [images]).logits == run_model(reference, [images]).logits).all()


def test_ema_exports_the_averaged_weights(exported: dict) -> None:
    ckpt = load_checkpoint(exported["checkpoint"])
    ema = safetensors.torch.load_file(exported["ema"])
    plain = safetensors.torch.load_file(exported["plain"])
    assert all(torch.equal(ema[k], v) for k, v in ckpt.ema["state_dict"].items())
    assert any(not torch.equal(ema[k], plain[k]) for k in plain)
    assert json.loads(exported["ema"].with_suffix(".json").read_text())["weights"] == "ema"


def test_predict_model_equals_predict_checkpoint(exported: dict, capsys) -> None:
    code, want, err = run_idml(["predict", "--checkpoint", str(exported["checkpoint"]), str(exported["images"]),
                                "--format", "json", "--score", "u_norm2"], capsys)
    assert code == 0, err
    code, got, err = run_idml(["predict", "--model", str(exported["plain"]), str(exported["images"]), "--format",
                               "json", "--score", "u_norm2"], capsys)
    assert code == 0, err
    assert got == want  # the same network and code: every digit equal, ISM scores included


# -- hostile files -------------------------------------------------------------------------------------

def forge(exported: dict, tmp_path: Path, weights: bytes | None = None, **json_changes) -> Path:
    """A copy of the export with other weights bytes and/or JSON fields; the JSON's weights SHA-256 is
    recomputed (what someone who knows the format would do) unless it is among the changes."""
    data = exported["plain"].read_bytes() if weights is None else weights
    config = json.loads(exported["plain"].with_suffix(".json").read_text())
    config["weights_sha256"] = hashlib.sha256(data).hexdigest()
    config |= json_changes
    path = tmp_path / "forged.safetensors"
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps(config))
    return path


def raw_file(header: dict, body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def test_a_header_declaring_huge_tensors_is_refused_before_loading(exported: dict, tmp_path: Path,
                                                                    monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(exported_weights.safetensors.torch, "load", never)
    huge = {"w": {"dtype": "F32", "shape": [100_000, 100_000, 1000], "data_offsets": [0, 4 * 10**13]}}
    path = forge(exported, tmp_path, raw_file(huge, b"\0" * 64))
    with pytest.raises(IdmlError) as info:
        load_safetensors_model(path, CPU)
    one_line_message(info, "declares 40000000000000 bytes", "refusing to allocate")
    lying_length = struct.pack("<Q", 2**60) + b"{}"
    with pytest.raises(IdmlError) as info:
        load_safetensors_model(forge(exported, tmp_path, lying_length), CPU)
    one_line_message(info, "header declares 1152921504606846976 bytes of JSON")
    overlapping = {"a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
                   "b": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}
    with pytest.raises(IdmlError) as info:
        load_safetensors_model(forge(exported, tmp_path, raw_file(overlapping, b"\0" * 64)), CPU)
    one_line_message(info, "declares 128 bytes of tensors, the file holds 64")


def truncated(e: dict) -> bytes:
    data = e["plain"].read_bytes()
    return data[: len(data) - 1000]


def wrong_shape(e: dict) -> bytes:
    weights = safetensors.torch.load_file(e["plain"])
    name = next(k for k, v in weights.items() if v.ndim == 4)
    weights[name] = torch.zeros(1, 1, 1, 1)
    return safetensors.torch.save(weights)


def settings(e: dict) -> dict:
    return json.loads(e["plain"].with_suffix(".json").read_text())["model"]


HOSTILE = {
    "a truncated weights file": (lambda e: {"weights": truncated(e)}, "the file holds"),
    "weights of another shape": (lambda e: {"weights": wrong_shape(e)}, "weights do not fit the saved model settings"),
    "a JSON of another export": (lambda e: {"weights_sha256": "0" * 64}, "SHA-256 differs"),
    "a JSON lying about the preparation": (lambda e: {"preparation": "imagenet"}, "its model settings say 'cifar'"),
    "a JSON lying about the input size": (lambda e: {"input_size": 48}, "input_size 48 does not match"),
    "a JSON of the wrong types": (lambda e: {"class_names": "cat"}, "field class_names must be"),
    "a JSON without model settings": (lambda e: {"model": None}, "lacks the model settings"),
    "model settings of the wrong types": (lambda e: {"model": settings(e) | {"depth": -3}}, "field model.depth must"),
    "model settings that are not a dict": (lambda e: {"model": [1, 2]}, "field model must be"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_safetensors_exports_are_one_line(exported: dict, case: str, tmp_path: Path, capsys) -> None:
    make, fragment = HOSTILE[case]
    changes = make(exported)
    path = forge(exported, tmp_path, **changes)
    code, out, err = run_idml(["predict", "--model", str(path), str(exported["images"])], capsys)
    one_error_line(err, fragment, code=code)
    assert out == ""


@pytest.mark.parametrize(("text", "fragment"), [("{not json", "not JSON"), ("[" * 100_000, "not JSON"),
                                                ("[]", "not a JSON object"), ("x" * (5 * 2**20), "more than")])
def test_malformed_json_is_one_line(exported: dict, text: str, fragment: str, tmp_path: Path, capsys) -> None:
    path = forge(exported, tmp_path)
    path.with_suffix(".json").write_text(text)
    code, out, err = run_idml(["predict", "--model", str(path), str(exported["images"])], capsys)
    one_error_line(err, fragment, code=code)
    assert out == ""


def test_a_missing_json_is_one_line(exported: dict, tmp_path: Path, capsys) -> None:
    path = forge(exported, tmp_path)
    path.with_suffix(".json").unlink()
    code, out, err = run_idml(["predict", "--model", str(path), str(exported["images"])], capsys)
    one_error_line(err, "forged.json does not exist", code=code)
    assert out == ""
