"""idml eval and idml predict run the network with its training run's device settings (autocast dtype,
memory format), through the same runtime as training; --amp overrides the precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from idml.device.runtime import resolve_amp
from idml.inference import load_trained_model, run_model
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec

CPU = torch.device("cpu")


RESNET8 = ModelSpec("resnet", "cifar10", 8, 0.0, False, 10, True, 16, 5.0)


def save_checkpoint(path: Path, spec: ModelSpec = RESNET8, **config) -> Path:
    torch.manual_seed(0)
    model = build_from_spec(spec)
    torch.save({"model": spec.to_dict(), "state_dict": model.state_dict(), "mean": [0.5] * 3, "std": [0.25] * 3,
                "input_size": 32, "class_names": [str(c) for c in range(10)], "config": config}, path)
    return path


def test_the_training_precision_and_memory_format_are_used(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "bf16.pth.tar", amp="bf16", channels_last=True)
    trained = load_trained_model(path, CPU)
    assert trained.runtime is not None and trained.runtime.amp_dtype is torch.bfloat16
    assert trained.runtime.channels_last
    conv = next(m for m in trained.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32)
    seen: list[torch.dtype] = []
    trained.model.head.fc.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    logits = run_model(trained, [images]).logits
    assert seen == [torch.bfloat16]  # the head ran under bfloat16 autocast, as in training's validation

    full = load_trained_model(path, CPU, amp="off")  # --amp off: float32
    assert full.runtime.amp_dtype is None
    exact = run_model(full, [images]).logits
    assert abs(logits - exact).max() < 0.1 and not (logits == exact).all()


@pytest.mark.parametrize(("config", "expected"), [
    ({"amp": "off", "channels_last": None}, None),  # what the CPU test runs train with
    ({}, None),  # an older checkpoint without its settings: float32 as before
    ({"amp": "fp16"}, "auto"),  # trained with fp16 on a GPU: the CPU has no fp16 autocast, auto instead
])
def test_saved_settings_this_device_cannot_run(tmp_path: Path, config: dict, expected: str | None) -> None:
    trained = load_trained_model(save_checkpoint(tmp_path / "c.pth.tar", **config), CPU)
    assert trained.runtime.amp_dtype is (None if expected is None else resolve_amp(expected, CPU))
    # the default: channels_last on the CPU in float32, and under bfloat16 for this ResNet (widths 16, 32, 64)
    assert trained.runtime.channels_last


def test_a_narrow_pyramidnet_runs_in_nchw_under_bfloat16(tmp_path: Path) -> None:
    """No memory format saved: the network decides, as in training (see idml.models.layout)."""
    spec = ModelSpec("pyramidnet", "cifar10", 20, 12.0, False, 10, True, 16, 5.0)  # widths 17 to 28
    path = save_checkpoint(tmp_path / "p.pth.tar", spec, amp="bf16")
    assert not load_trained_model(path, CPU).runtime.channels_last
    assert load_trained_model(path, CPU, amp="off").runtime.channels_last  # float32: channels_last
