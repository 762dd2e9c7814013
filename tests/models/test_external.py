"""Other backbones (torchvision:<name>, timm:<name>) with the ISM head, and the README's Python API."""

import contextlib
import io
import re

import pytest
import torch
from torch import nn

import fake_data
import idml
from doc_blocks import code_blocks
from idml.checkpoint.io import load_checkpoint
from idml.checkpoint.schema import CHECKPOINT_NAME
from idml.cli import main as cli_main
from idml.config import parse_train_args
from idml.errors import ConfigError
from idml.models.external import SOURCES, Source
from idml.models.spec import EXTERNAL_SOURCES, ExternalSource
from idml.training.run_log import read_metrics


def test_torchvision_backbone_trains_one_step_through_the_cli(tmp_path):
    fake_data.make_cifar10(tmp_path / "data")
    argv = ["train", "--net_type", "torchvision:mobilenet_v3_small", "--dataset", "cifar10", "--epochs", "1",
            "--batch_size", "20", "--mixup_alpha", "1", "--mixup_prob", "1", "--data_dir", str(tmp_path / "data"),
            "--output_dir", str(tmp_path / "runs"), "--expname", "mnv3", "--device", "cpu", "--amp", "off",
            "--no-verbose"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_main(argv) == 0
    run = tmp_path / "runs" / "mnv3"
    state = load_checkpoint(run / CHECKPOINT_NAME)
    assert state.model["net_type"] == "torchvision:mobilenet_v3_small"
    assert state.state_dict["head.uncertainty.weight"].shape == (128, 1024)  # K x D of the feature extractor
    assert len(read_metrics(run / "metrics.csv")) == 1
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the checkpoint rebuilds the same network for evaluation
        assert cli_main(["eval", "--checkpoint", str(run / CHECKPOINT_NAME), "--data_dir", str(tmp_path / "data"),
                         "--device", "cpu"]) == 0
    assert "10 test images" in out.getvalue()


@pytest.mark.parametrize(("net_type", "message"), [
    ("torchvision:no_such_net", "has no model"),
    ("keras:resnet50", "use torchvision:<name> or timm:<name>"),
    ("torchvision:squeezenet1_0", "no nn.Linear classifier"),
])
def test_bad_external_backbones_are_config_errors(net_type, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        idml.build_model(net_type, "cifar10", depth=0)


def test_backbone_that_cannot_take_the_input_size_is_refused(monkeypatch):
    """Like a ViT fixed at 224x224 on CIFAR: refused with one line before training."""
    fixed_size = Source(lambda name: nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 8)), lambda: ["fixed224"])
    monkeypatch.setitem(SOURCES, "fake", fixed_size)
    monkeypatch.setitem(EXTERNAL_SOURCES, "fake", ExternalSource("torch"))
    with pytest.raises(ConfigError, match="fake:fixed224 cannot run on 32x32 images"):
        idml.build_model("fake:fixed224", "cifar10", depth=0)
    assert idml.build_model("fake:fixed224", "imagenet", depth=0).backbone.num_features == 8


def test_timm_backbone_with_ism_head():
    timm = pytest.importorskip("timm")
    name = "resnet10t" if timm.is_model("resnet10t") else "resnet18"
    assert parse_train_args(["--net_type", f"timm:{name}", "--dataset", "digits"]).net_type == f"timm:{name}"
    model = idml.build_model(f"timm:{name}", "digits", depth=0)
    out = model(torch.randn(4, 3, 32, 32))
    torch.nn.functional.cross_entropy(out.train_logits, torch.tensor([0, 1, 2, 3])).backward()
    assert out.logits.shape == (4, 10) and out.uncertainty.shape == (4, 128)
    assert model.head.uncertainty.weight.grad is not None


def test_readme_python_examples_run():
    """Every ```python block of the documentation (README.md, docs/) runs as written."""
    blocks = code_blocks("python")
    assert any("IntrospectiveClassifier(" in b for b in blocks)
    for block in blocks:
        exec(compile(block, "documentation", "exec"), {})
