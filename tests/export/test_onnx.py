"""The ONNX file: its interface, dynamic batch, metadata, the --opset refusal, and hostile files.

Every hostile file is given to ``idml predict --model`` and must stop it with one line and exit
status 2 before any prediction; the edited files that keep a valid graph digest are what someone
who knows the format would write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

import tiny_models
from expect import one_error_line, one_line_message
from idml.errors import IdmlError
from idml.export.metadata import METADATA_KEY
from idml.export.onnx import graph_sha256, load_onnx
from idml.models import external
from idml.models.spec import EXTERNAL_SOURCES, ExternalSource
from runs import run_idml


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("onnx")
    checkpoint = tiny_models.train(root, "resnet-cifar")
    output = root / "model.onnx"
    from idml.cli import main

    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(output)]) == 0
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(images / f"{i}.png")
    return {"root": root, "checkpoint": checkpoint, "path": output, "bytes": output.read_bytes(), "images": images}


def predict_model(path: Path, images: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return run_idml(["predict", "--model", str(path), str(images), *extra], capsys)


def test_interface_metadata_and_dynamic_batch(exported: dict) -> None:
    model = onnx.load(str(exported["path"]))
    (image_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in image_input.type.tensor_type.shape.dim]
    assert image_input.name == "images" and image_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert isinstance(dims[0], str) and dims[1:] == [3, 32, 32]  # the batch is a named, free dimension
    assert [o.name for o in model.graph.output] == ["logits", "probabilities", "uncertainty"]
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    state = torch.load(exported["checkpoint"], weights_only=True)
    import hashlib

    assert meta["checkpoint_sha256"] == hashlib.sha256(exported["checkpoint"].read_bytes()).hexdigest()
    assert meta["class_names"] == state["class_names"] and meta["input_size"] == 32
    assert meta["mean"] == pytest.approx(state["mean"]) and meta["std"] == pytest.approx(state["std"])
    assert meta["temperature"] == pytest.approx(state["temperature"]) and meta["score"] == "msp"
    import idml

    assert meta["idml_version"] == idml.__version__ and meta["preparation"] == "cifar"
    session = onnxruntime.InferenceSession(str(exported["path"]), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(1).integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    whole = session.run(None, {"images": batch})
    for n in (1, 3):
        part = session.run(None, {"images": batch[:n]})
        for a, b in zip(part, whole, strict=True):
            np.testing.assert_allclose(a, b[:n], rtol=1e-5, atol=1e-6)
    logits, probabilities, uncertainty = whole
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(uncertainty, 1 - np.exp(logits - logits.max(1, keepdims=True)).max(1)
                               / np.exp(logits - logits.max(1, keepdims=True)).sum(1), rtol=1e-4)


def test_another_score_as_the_uncertainty_output(exported: dict, tmp_path: Path, capsys) -> None:
    output = tmp_path / "energy.onnx"
    code, _, err = run_idml(["export", "--checkpoint", str(exported["checkpoint"]), "--format", "onnx", "--score",
                             "energy", "--output", str(output)], capsys)
    assert code == 0, err
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    logits, _, energy = session.run(None, {"images": np.zeros((2, 3, 32, 32), np.uint8)})
    np.testing.assert_allclose(energy, -np.log(np.exp(logits.astype(np.float64)).sum(axis=1)), rtol=1e-12)
    assert json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])["score"] == "energy"


def test_predict_model_prints_what_predict_checkpoint_prints(exported: dict, capsys) -> None:
    for fmt in ("table", "csv"):
        code, from_checkpoint, err = run_idml(["predict", "--checkpoint", str(exported["checkpoint"]),
                                               str(exported["images"]), "--format", fmt, "--amp", "off"], capsys)
        assert code == 0, err
        code, from_model, err = predict_model(exported["path"], exported["images"], capsys, "--format", fmt)
        assert code == 0, err
        assert from_model == from_checkpoint  # same files, classes, rounded numbers and layout
    code, out, _ = run_idml(["predict", "--checkpoint", str(exported["checkpoint"]), str(exported["images"]),
                             "--format", "json", "--score", "entropy"], capsys)
    code2, out2, _ = predict_model(exported["path"], exported["images"], capsys, "--format", "json", "--score",
                                   "entropy")
    want, got = json.loads(out), json.loads(out2)
    assert code == code2 == 0 and [r["file"] for r in got] == [r["file"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["score"] == b["score"] == "entropy" and a["uncertainty"] == pytest.approx(b["uncertainty"], rel=1e-4)
        assert [t["class"] for t in a["topk"]] == [t["class"] for t in b["topk"]]
        assert [t["probability"] for t in a["topk"]] == pytest.approx([t["probability"] for t in b["topk"]], rel=1e-4)


def test_predict_model_refuses_what_an_onnx_model_cannot_do(exported: dict, capsys) -> None:
    code, _, err = predict_model(exported["path"], exported["images"], capsys, "--score", "u_norm2")
    one_error_line(err, "--score u_norm2 needs the checkpoint", "msp, entropy, max_logit, energy", code=code)
    code, _, err = predict_model(exported["path"], exported["images"], capsys, "--ema")
    one_error_line(err, "--ema", code=code)
    code, _, err = predict_model(exported["root"] / "model.pt", exported["images"], capsys)
    one_error_line(err, "ending in .onnx or .safetensors", code=code)


# -- hostile files ------------------------------------------------------------------------------------

def edited(exported: dict, edit, keep_digest: bool = True) -> onnx.ModelProto:
    """The exported model after ``edit(model)``, its graph digest recomputed unless told otherwise."""
    model = onnx.ModelProto()
    model.ParseFromString(exported["bytes"])
    edit(model)
    props = {p.key: p.value for p in model.metadata_props}
    if keep_digest and METADATA_KEY in props:
        meta = json.loads(props[METADATA_KEY])
        if isinstance(meta, dict):
            meta["graph_sha256"] = graph_sha256(model)
            onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    return model


def set_meta(**changes):
    def edit(model: onnx.ModelProto) -> None:
        meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
        onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta | changes)})
    return edit


def set_raw_meta(text: str):
    return lambda model: onnx.helper.set_model_props(model, {METADATA_KEY: text})


def flip_weight_byte(data: bytes) -> bytes:
    """One byte flipped inside the largest weight tensor's raw data (the protobuf still parses)."""
    model = onnx.ModelProto()
    model.ParseFromString(data)
    largest = max(model.graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    at = data.index(largest) + len(largest) // 2
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


def external_data(model: onnx.ModelProto) -> None:
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")


def rename_input(model: onnx.ModelProto) -> None:
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 48


HOSTILE = {
    "truncated": (lambda e: e["bytes"][: len(e["bytes"]) // 2], "not an ONNX file, or truncated or corrupt"),
    "empty": (lambda e: b"", "no graph"),
    "random bytes": (lambda e: np.random.default_rng(0).bytes(5000), "cannot use"),
    "a flipped weight byte": (lambda e: flip_weight_byte(e["bytes"]), "SHA-256 differs"),
    "metadata lying about the input size": (lambda e: edited(e, set_meta(input_size=48)).SerializeToString(),
                                            "its metadata says 48x48 RGB images but the graph takes"),
    "metadata lying about the classes": (lambda e: edited(e, set_meta(class_names=["a", "b"])).SerializeToString(),
                                         "its metadata names 2 classes"),
    "a graph input of another size": (lambda e: edited(e, rename_input).SerializeToString(), "the graph takes"),
    "metadata that is not JSON": (lambda e: edited(e, set_raw_meta("{'input_size': 32"), False).SerializeToString(),
                                  "idml metadata is malformed (not JSON"),
    "deeply nested metadata": (lambda e: edited(e, set_raw_meta("[" * 100_000), False).SerializeToString(),
                               "idml metadata is malformed"),
    "metadata of the wrong types": (lambda e: edited(e, set_meta(temperature=-1.0)).SerializeToString(),
                                    "field temperature must be"),
    "metadata without a field": (lambda e: edited(e, set_raw_meta("{}"), False).SerializeToString(),
                                 "field class_names is missing"),
    "no metadata": (lambda e: edited(e, lambda m: m.ClearField("metadata_props"), False).SerializeToString(),
                    "carries no idml metadata"),
    "external data": (lambda e: edited(e, external_data).SerializeToString(), "refers to external data files"),
    "a removed output": (lambda e: edited(e, lambda m: m.graph.output.pop()).SerializeToString(), "its graph returns"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_onnx_files_are_one_line(exported: dict, case: str, tmp_path: Path, capsys) -> None:
    make, fragment = HOSTILE[case]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(make(exported))
    code, out, err = predict_model(bad, exported["images"], capsys)
    one_error_line(err, fragment, code=code)
    assert out == ""


def test_images_of_the_wrong_size_type_or_mode(exported: dict, tmp_path: Path, capsys) -> None:
    model = load_onnx(exported["path"])
    for bad in (np.zeros((2, 3, 48, 48), np.uint8), np.zeros((2, 3, 32, 32), np.float32),
                np.zeros((2, 1, 32, 32), np.uint8), np.zeros((3, 32, 32), np.uint8)):
        with pytest.raises(IdmlError) as info:
            model.run(bad)
        one_line_message(info, "takes uint8 RGB images N x 3 x 32 x 32")


def test_predict_model_reads_images_through_idmls_one_opener(exported: dict, tmp_path: Path, capsys) -> None:
    """--model decodes files as --checkpoint does: a 16-bit image is scaled by its bit depth (the
    prediction of its 8-bit twin, not of a clipped, white picture), and a PostScript file named
    .png is refused, never handed to Ghostscript."""
    dark = (np.arange(32 * 32).reshape(32, 32) * 7 % 3000).astype(np.uint16)
    Image.fromarray(dark).save(tmp_path / "sixteen_bit.png")
    Image.fromarray(np.rint(dark / 257).astype(np.uint8)).save(tmp_path / "eight_bit.png")
    rows = {}
    for name in ("sixteen_bit.png", "eight_bit.png"):
        code, out, err = predict_model(exported["path"], tmp_path / name, capsys, "--format", "json")
        assert code == 0, err
        (row,) = json.loads(out)
        rows[name] = (row["topk"], row["uncertainty"])
    assert rows["sixteen_bit.png"] == rows["eight_bit.png"]
    (tmp_path / "photo.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n%%EOF\n")
    code, out, err = predict_model(exported["path"], tmp_path / "photo.png", capsys)
    one_error_line(err, "photo.png", "not an image in a format idml reads", code=code)
    assert out == ""


def test_a_low_opset_is_refused_naming_the_operators(exported: dict, tmp_path: Path, capsys) -> None:
    output = tmp_path / "low.onnx"
    code, out, err = run_idml(["export", "--checkpoint", str(exported["checkpoint"]), "--format", "onnx",
                               "--opset", "13", "--output", str(output)], capsys)
    one_error_line(err, "--opset 13 cannot express this network", "ReduceMax (opset 18)", "use --opset 18",
                   code=code)
    assert not output.exists() and out == ""
    code, out, err = run_idml(["export", "--checkpoint", str(exported["checkpoint"]), "--format", "onnx",
                               "--opset", "20", "--output", str(output)], capsys)
    assert code == 0, err
    assert next(o.version for o in onnx.load(str(output)).opset_import if o.domain == "") == 20
    code, out, err = run_idml(["export", "--checkpoint", str(exported["checkpoint"]), "--format", "onnx",
                               "--opset", "40", "--output", str(tmp_path / "future.onnx")], capsys)
    one_error_line(err, "--opset 40: torch.onnx", "wrote opset 18 instead", code=code)
    assert not (tmp_path / "future.onnx").exists()


class _ValueDependent(torch.nn.Module):
    """A backbone whose code branches on its input's values: torch.export cannot capture it, and
    torch.jit.trace would silently keep one branch."""

    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        if not pooled.is_meta and pooled.mean() > 0:  # idml sizes networks on the meta device first
            return pooled * 2
        return pooled - 1


@pytest.mark.parametrize(("fmt", "fragment"), [("onnx", "torch.onnx cannot export --net_type fake:branchy"),
                                               ("torchscript", "computes different")])
def test_a_backbone_that_cannot_be_exported_is_refused(fmt: str, fragment: str, tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    monkeypatch.setitem(external.SOURCES, "fake", external.Source(lambda name: _ValueDependent(), lambda: ["branchy"]))
    monkeypatch.setitem(EXTERNAL_SOURCES, "fake", ExternalSource("torch", ""))
    from idml.models.registry import build_from_spec
    from idml.models.spec import ModelSpec

    spec = ModelSpec("fake:branchy", "cifar10", 1, num_classes=10, uncertainty_dim=4)
    model = build_from_spec(spec)
    checkpoint = tmp_path / "branchy.pth.tar"
    torch.save({"model": spec.to_dict(), "state_dict": model.state_dict(), "mean": [0.5] * 3, "std": [0.25] * 3,
                "input_size": 32, "class_names": [str(c) for c in range(10)]}, checkpoint)
    output = tmp_path / f"branchy{'.onnx' if fmt == 'onnx' else '.pt'}"
    code, out, err = run_idml(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--output", str(output)],
                              capsys)
    one_error_line(err, fragment, code=code)
    assert not output.exists() and out == ""
