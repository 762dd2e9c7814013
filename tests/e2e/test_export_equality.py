"""Proven equal: for every model family, each exported format's outputs on the test images equal what
``idml eval`` computes for the same images, within the tolerance docs/export.md states (float32:
1e-4 relative on probabilities and on the uncertainty score, with 1e-6 absolute for values below
1 %; 1e-4 relative + 1e-4 on logits).

The exported files are read here with their own libraries (onnxruntime, torch.jit, safetensors plus
``build_from_spec``), not through idml's readers, so that a fault shared by the writer and the reader
cannot hide. The checkpoints come from real (one short epoch) ``idml train`` runs; the channels_last
+ bfloat16 one is compared with ``idml eval --amp off``, the float32 computation the export keeps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import safetensors.torch
import torch

import tiny_models
from idml.data.build import build_data
from idml.evaluation import EvalRequest, data_request, evaluate
from idml.inference import load_trained_model
from idml.metrics import softmax
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec
from runs import run_idml

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
CPU = torch.device("cpu")


@pytest.fixture(scope="module", params=list(tiny_models.FAMILIES))
def family(request, tmp_path_factory) -> dict:
    """A trained checkpoint of one family, what idml eval computes on its test images, and the images."""
    if request.param == "timm":
        pytest.importorskip("timm")
    root = tmp_path_factory.mktemp(request.param)
    checkpoint = tiny_models.train(root, request.param)
    evaluation = EvalRequest(str(checkpoint), data_dir=str(root / "data"), amp="off", device="cpu", workers=0)
    report, outputs, targets = evaluate(evaluation)
    trained = load_trained_model(checkpoint, CPU, amp="off")
    data = build_data(data_request(evaluation, trained, trained.dataset), CPU)
    images = torch.cat([batch for batch, _ in data.test]).cpu()
    assert images.dtype == torch.uint8 and len(images) == len(targets)
    assert np.ptp(outputs.logits, axis=0).max() > 1e-3, "degenerate outputs would make the comparison empty"
    return {"name": request.param, "checkpoint": checkpoint, "report": report, "outputs": outputs,
            "images": images, "root": root}


def exported_outputs(fmt: str, path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The three outputs of an exported file, read with the format's own library."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, {"images": images.numpy()}), strict=True))
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            logits, probabilities, uncertainty = module(images)
        return {"logits": logits.numpy(), "probabilities": probabilities.numpy(), "uncertainty": uncertainty.numpy()}
    config = json.loads(path.with_suffix(".json").read_text())
    model = build_from_spec(ModelSpec(**config["model"])).eval()
    model.load_state_dict(safetensors.torch.load_file(str(path)))
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((images.float() / 255 - mean) / std).logits.double().numpy()
    probabilities = softmax(logits / (config["temperature"] or 1.0))
    return {"logits": logits, "probabilities": probabilities, "uncertainty": 1 - softmax(logits).max(axis=1)}


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_every_format_equals_idml_eval(family: dict, fmt: str, capsys) -> None:
    output = family["root"] / f"model{SUFFIX[fmt]}"
    code, _, err = run_idml(["export", "--checkpoint", str(family["checkpoint"]), "--format", fmt,
                             "--output", str(output)], capsys)
    assert code == 0, err
    got = exported_outputs(fmt, output, family["images"])
    outputs, report = family["outputs"], family["report"]
    temperature = report["temperature"] or 1.0
    np.testing.assert_allclose(got["logits"], outputs.logits, rtol=1e-4, atol=1e-4)
    probabilities = softmax(outputs.logits / temperature)
    np.testing.assert_allclose(got["probabilities"], probabilities, rtol=1e-4, atol=1e-6)
    likely = probabilities >= 0.01  # where decisions are made: purely relative
    np.testing.assert_allclose(got["probabilities"][likely], probabilities[likely], rtol=1e-4, atol=0)
    np.testing.assert_allclose(got["uncertainty"], outputs.scores()["msp"], rtol=1e-4, atol=1e-6)
    targets_err = 100.0 * np.mean(got["logits"].argmax(axis=1) != outputs.logits.argmax(axis=1))
    assert targets_err == 0.0  # the same class for every test image
    if fmt == "torchscript":  # the metadata, as the extra file idml.json
        extra = {"idml.json": ""}
        torch.jit.load(str(output), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra["idml.json"])
        assert meta["class_names"] == report["classes"] and meta["temperature"] == report["temperature"]
        assert meta["score"] == "msp" and len(meta["checkpoint_sha256"]) == 64
    if fmt == "onnx":  # float32 weights, whatever the training precision and memory format
        kinds = {t.data_type for t in onnx.load(str(output)).graph.initializer}
        assert onnx.TensorProto.BFLOAT16 not in kinds and onnx.TensorProto.FLOAT16 not in kinds


def test_the_runs_cover_what_the_issue_names(family: dict) -> None:
    """Each family's checkpoint is what its name says (a temperature where a validation split fitted one)."""
    trained = load_trained_model(family["checkpoint"], CPU)
    name = family["name"]
    expected = {"resnet-imagenet": ("resnet", 72), "folder-48": ("resnet", 48), "torchvision": ("torchvision:", 32),
                "timm": ("timm:", 32), "pyramidnet": ("pyramidnet", 32)}.get(name, ("resnet", 32))
    assert trained.spec.net_type.startswith(expected[0]) and trained.input_size == expected[1]
    if name == "resnet-imagenet":  # the ImageNet stem: a 7x7 convolution of stride 2
        assert next(m for m in trained.model.modules() if isinstance(m, torch.nn.Conv2d)).kernel_size == (7, 7)
    if name == "bf16-channels_last":
        assert trained.config["amp"] == "bf16" and trained.config["channels_last"] is True
    if name == "resnet-cifar":
        assert family["report"]["temperature"] is not None  # the graph divides by a fitted temperature
