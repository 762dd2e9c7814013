"""Each option of the modern recipe against its definition in docs/recipe.md: the EMA after N steps,
the learning rate at given steps, accumulation against one large batch, label smoothing on both
halves of a mixed batch, gradient clipping, and --init_from."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from expect import one_line_message
from idml.config import TrainConfig, setting_problem
from idml.data.loaders import InMemoryLoader
from idml.data.types import DataBundle
from idml.device.runtime import Runtime
from idml.errors import ConfigError, IdmlError
from idml.ism import IntrospectiveClassifier, ISMHead
from idml.mixing import MixedBatch, mixed_cross_entropy
from idml.models.registry import build_model
from idml.training.init_from import init_from
from idml.training.schedule import Schedule, accumulation, learning_rate
from idml.training.trainer import Meter, Trainer
from runs import load, one_thread, run_cli, tiny_cifar, train_args  # noqa: F401 - autouse fixture

CPU = torch.device("cpu")
RUNTIME = Runtime(CPU, None, False)


def tiny_net(batchnorm: bool = False, classes: int = 3) -> IntrospectiveClassifier:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 6, 3, padding=1)]
    layers += [nn.BatchNorm2d(6)] if batchnorm else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
    backbone = nn.Sequential(*layers)
    backbone.num_features = 6
    return IntrospectiveClassifier(backbone, ISMHead(6, classes, uncertainty_dim=4))


def bundle(n: int, batch_size: int, classes: int = 3, seed: int = 0) -> DataBundle:
    """In-memory uint8 data; no augmentation (so that batching alone differs between runs)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    loader = InMemoryLoader(images, labels, batch_size, train=True)
    val = InMemoryLoader(images, labels, batch_size, train=False)
    as_float = lambda x, rng=None: x.float() / 255  # noqa: E731
    return DataBundle(loader, val, val, [str(c) for c in range(classes)], (0.0,) * 3, (1.0,) * 3, 8, as_float, as_float)


def trainer(tmp_path: Path, model: nn.Module, data: DataBundle | None = None, runtime: Runtime = RUNTIME,
            **settings) -> Trainer:
    cfg = TrainConfig(**({"dataset": "cifar10", "epochs": 2, "lr": 0.1, "output_dir": str(tmp_path),
                          "verbose": False, "batch_size": 4} | settings))
    return Trainer(cfg, model, data, runtime)


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# -- EMA --------------------------------------------------------------------------------------------
def test_ema_after_n_steps_is_the_recursive_formula(tmp_path: Path) -> None:
    decay, steps = 0.8, 7
    model = tiny_net(batchnorm=True)
    t = trainer(tmp_path, model, bundle(28, 4), model_ema=decay, epochs=1)
    history = [[p.double() for p in params(model)]]  # ema_0 = the weights at the start
    bn_history = [model.backbone[1].running_mean.double().clone()]
    t.data.train.set_epoch(0)
    meter = Meter(CPU)
    for step, (images, targets) in enumerate(t.data.train):
        t.train_step(images, targets, np.random.default_rng(step), meter, step)
        history.append([p.double() for p in params(model)])
        bn_history.append(model.backbone[1].running_mean.double().clone())
    assert len(history) == steps + 1 and t.ema.updates == steps
    expected = history[0]
    for weights in history[1:]:
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights, strict=True)]
    for got, want in zip(t.ema.module.parameters(), expected, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(next(t.ema.module.parameters()).double(), history[-1][0])  # not the raw weights
    running = bn_history[0]
    for value in bn_history[1:]:
        running = decay * running + (1 - decay) * value
    torch.testing.assert_close(t.ema.module.backbone[1].running_mean.double(), running, rtol=1e-5, atol=1e-6)
    assert int(t.ema.module.backbone[1].num_batches_tracked) == steps  # integer buffers are copied


def test_ema_is_evaluated_saved_and_can_be_best(tmp_path: Path, capsys) -> None:
    data = tiny_cifar(tmp_path / "data")
    code, out, err = run_cli(train_args(data, tmp_path, "ema", "--epochs", "1", "--model_ema", "0.5",
                                        "--no-verbose"), capsys)
    assert code == 0, err
    assert "* EMA Epoch: [0/1]" in out
    state = load(tmp_path / "ema" / "checkpoint.pth.tar")
    assert state["ema"]["decay"] == 0.5 and state["ema"]["updates"] == 20
    assert state["ema"]["state_dict"].keys() == state["state_dict"].keys()
    assert state["best_weights"] in ("model", "ema")
    ema_err = float(out.split("* EMA Epoch: [0/1]\t Top 1-err ")[1].split()[0])
    raw_err = float(out.split("* Epoch: [0/1]\t Top 1-err ")[2].split()[0])  # [1] is the training line
    assert state["best_err1"] == pytest.approx(min(ema_err, raw_err), abs=1e-3)
    assert state["best_weights"] == ("ema" if ema_err < raw_err else "model")


# -- schedules --------------------------------------------------------------------------------------
def test_warmup_then_cosine_at_given_steps() -> None:
    lr, epochs, steps_per_epoch = 0.2, 10, 5  # T = 50 steps, W = 2 epochs = 10 steps
    s = Schedule(lr, "cifar10", epochs, "cosine", warmup_epochs=2)
    at = lambda b: s.at(b // steps_per_epoch, b % steps_per_epoch, steps_per_epoch)  # noqa: E731
    assert at(0) == pytest.approx(lr / 10)
    assert at(4) == pytest.approx(lr * 5 / 10)
    assert at(9) == pytest.approx(lr)
    assert at(10) == pytest.approx(lr)  # cosine starts at its top
    assert at(30) == pytest.approx(lr / 2)  # half-way through the 40 cosine steps
    assert at(49) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    values = [at(b) for b in range(50)]
    assert values[9:] == sorted(values[9:], reverse=True)


def test_cosine_without_warmup_and_fractional_warmup() -> None:
    s = Schedule(1.0, "imagenet", 4, "cosine")
    assert s.at(0, 0, 10) == 1.0 and s.at(2, 0, 10) == pytest.approx(0.5)
    half = Schedule(1.0, "cifar10", 4, "cosine", warmup_epochs=0.5)  # round(0.5 * 10) = 5 warmup steps
    assert [half.at(0, b, 10) for b in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_step_schedule_is_the_official_one_at_every_step(dataset: str) -> None:
    s = Schedule(0.1, dataset, 300, "step")
    assert not s.per_step
    for epoch in (0, 74, 75, 149, 150, 224, 225, 299):
        for step in (0, 3, 9):
            assert s.at(epoch, step, 10) == learning_rate(0.1, dataset, epoch, 300)


def test_step_schedule_after_warmup() -> None:
    s = Schedule(0.1, "cifar10", 8, "step", warmup_epochs=1)  # 8 epochs: x0.1 from epoch 4, x0.01 from 6
    assert s.per_step
    assert s.at(0, 0, 4) == pytest.approx(0.025) and s.at(0, 3, 4) == pytest.approx(0.1)
    assert s.at(1, 0, 4) == 0.1 and s.at(4, 2, 4) == pytest.approx(0.01) and s.at(6, 0, 4) == pytest.approx(0.001)


def test_a_cosine_run_logs_the_rate_of_each_epochs_last_step(tmp_path: Path, capsys) -> None:
    data = tiny_cifar(tmp_path / "data")
    code, _, err = run_cli(train_args(data, tmp_path, "cos", "--epochs", "2", "--sched", "cosine",
                                      "--warmup_epochs", "0.5", "--no-verbose"), capsys)
    assert code == 0, err
    rows = (tmp_path / "cos" / "metrics.csv").read_text().splitlines()[1:]
    s = Schedule(0.05, "cifar10", 2, "cosine", 0.5)
    for epoch, row in enumerate(rows):
        assert float(row.split(",")[1]) == pytest.approx(s.at(epoch, 19, 20), rel=1e-5)


# -- gradient accumulation --------------------------------------------------------------------------
def test_accumulation_groups() -> None:
    assert [accumulation(s, 7, 3) for s in range(7)] == [
        (True, False, 1 / 3), (False, False, 1 / 3), (False, True, 1 / 3),
        (True, False, 1 / 3), (False, False, 1 / 3), (False, True, 1 / 3),
        (True, True, 1.0),  # the short last group of the epoch: its own mean
    ]
    assert all(accumulation(s, 5, 1) == (True, True, 1.0) for s in range(5))


def run_epochs(tmp_path: Path, batchnorm: bool, batch_size: int, accum: int, epochs: int = 2) -> nn.Module:
    model = tiny_net(batchnorm)
    t = trainer(tmp_path / f"{batch_size}x{accum}", model, bundle(24, batch_size), grad_accum_steps=accum,
                epochs=epochs, momentum=0.9, weight_decay=1e-3)
    for epoch in range(epochs):
        t.train_epoch(epoch)
    return model


def test_accumulated_gradients_equal_one_large_batch_without_batchnorm(tmp_path: Path) -> None:
    """4 batches of 3, accumulated, give the update of one batch of 12 (same images, same order)."""
    large = run_epochs(tmp_path, batchnorm=False, batch_size=12, accum=1)
    accumulated = run_epochs(tmp_path, batchnorm=False, batch_size=3, accum=4)
    for a, b in zip(large.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain_small = run_epochs(tmp_path, batchnorm=False, batch_size=3, accum=1)
    assert not torch.allclose(next(plain_small.parameters()), next(large.parameters()), atol=1e-4)


def test_with_batchnorm_accumulation_is_not_the_large_batch(tmp_path: Path) -> None:
    """The documented difference: BatchNorm normalises each batch of 3 with its own statistics."""
    large = run_epochs(tmp_path, batchnorm=True, batch_size=12, accum=1, epochs=1)
    accumulated = run_epochs(tmp_path, batchnorm=True, batch_size=3, accum=4, epochs=1)
    assert not torch.allclose(next(large.parameters()), next(accumulated.parameters()), atol=1e-5)


# -- label smoothing --------------------------------------------------------------------------------
def smoothed_ce(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    classes = logits.shape[1]
    q = (1 - eps) * F.one_hot(targets, classes).double() + eps / classes
    return -(q * logits.double().log_softmax(1)).sum(1).mean()


def test_label_smoothing_applies_to_both_halves_of_a_mixed_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    y_a, y_b = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 2, 1, 0, 2, 2])
    batch = MixedBatch(torch.zeros(6), y_a, y_b, 0.3)
    expected = 0.3 * smoothed_ce(logits, y_a, 0.2) + 0.7 * smoothed_ce(logits, y_b, 0.2)
    assert mixed_cross_entropy(logits, batch, 0.2).double() == pytest.approx(float(expected), rel=1e-6)
    assert mixed_cross_entropy(logits, batch, 0.0) == pytest.approx(
        float(0.3 * smoothed_ce(logits, y_a, 0) + 0.7 * smoothed_ce(logits, y_b, 0)), rel=1e-6)


def test_the_trainer_smooths_the_introspective_logits_of_a_mixed_batch(tmp_path: Path) -> None:
    model = tiny_net()
    t = trainer(tmp_path, model, bundle(8, 8), label_smoothing=0.25, mixup_alpha=1.0, mixup_prob=1.0)
    images, targets = next(iter(t.data.train))
    batch = t.prepare_batch(images, targets, np.random.default_rng(7))
    assert batch.lam < 1 and not torch.equal(batch.targets_a, batch.targets_b)
    with torch.no_grad():
        z = model(batch.images).train_logits
    expected = batch.lam * smoothed_ce(z, batch.targets_a, 0.25) + (1 - batch.lam) * smoothed_ce(
        z, batch.targets_b, 0.25)
    meter = Meter(CPU)
    t.train_step(images, targets, np.random.default_rng(7), meter)
    assert meter.average().loss == pytest.approx(float(expected), rel=1e-5)


# -- gradient clipping ------------------------------------------------------------------------------
def one_step_update(tmp_path: Path, clip: float, runtime: Runtime = RUNTIME) -> tuple[float, float]:
    """(norm of the unclipped gradient, norm of the SGD update / lr) of one step."""
    model = tiny_net()
    data = bundle(8, 8)
    images, targets = next(iter(data.train))
    reference = tiny_net()
    reference.load_state_dict(model.state_dict())
    out = reference(images.float() / 255)
    mixed_cross_entropy(out.train_logits, MixedBatch(images, targets, targets, 1.0)).backward()
    grad_norm = torch.norm(torch.stack([p.grad.norm() for p in reference.parameters()])).item()
    t = trainer(tmp_path, model, data, runtime, clip_grad_norm=clip, momentum=0.0, weight_decay=0.0, lr=0.5)
    before = params(model)
    t.train_step(images, targets, np.random.default_rng(0), Meter(CPU))
    update = torch.norm(torch.stack([(a - b).norm() for a, b in zip(params(model), before, strict=True)]))
    return grad_norm, update.item() / 0.5


def test_clip_grad_norm_caps_the_update(tmp_path: Path) -> None:
    grad_norm, free = one_step_update(tmp_path, 0.0)
    assert free == pytest.approx(grad_norm, rel=1e-4)
    _, clipped = one_step_update(tmp_path, grad_norm / 4)
    assert clipped == pytest.approx(grad_norm / 4, rel=1e-3)
    _, loose = one_step_update(tmp_path, grad_norm * 4)
    assert loose == pytest.approx(grad_norm, rel=1e-4)


def test_clip_grad_norm_unscales_first_under_a_grad_scaler(tmp_path: Path) -> None:
    """With fp16's GradScaler (loss x 65536) the clip still applies to the true gradient."""
    scaled = Runtime(CPU, None, False)
    scaled_scaler = torch.amp.GradScaler("cpu", enabled=True)
    grad_norm, _ = one_step_update(tmp_path, 0.0)

    class ScaledRuntime(Runtime):
        def grad_scaler(self) -> torch.amp.GradScaler:
            return scaled_scaler

    runtime = ScaledRuntime(scaled.device, None, False)
    _, clipped = one_step_update(tmp_path, grad_norm / 4, runtime)
    assert scaled_scaler.get_scale() == 65536.0  # the scaler was in use
    assert clipped == pytest.approx(grad_norm / 4, rel=1e-3)


# -- init_from --------------------------------------------------------------------------------------
def test_init_from_an_idml_checkpoint_with_other_classes_keeps_a_fresh_head(tmp_path: Path) -> None:
    source = build_model("resnet", "cifar10", 8, bottleneck=False)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    path = tmp_path / "ten.pth.tar"
    torch.save({"state_dict": source.state_dict(), "model": {"dataset": "cifar10"}}, path)
    target = build_model("resnet", "cifar10", 8, bottleneck=False, num_classes=3)
    fresh_head = target.head.fc.weight.detach().clone()
    report = init_from(target, path)
    assert torch.equal(target.backbone.stem[0].weight, source.backbone.stem[0].weight)
    assert torch.equal(target.head.uncertainty.weight, source.head.uncertainty.weight)
    assert torch.equal(target.head.fc.weight, fresh_head)
    assert report.missing == ["head.fc.weight", "head.fc.bias"] and report.unexpected == []
    line = report.line(path)
    assert "head starts fresh" in line and "10 classes, this run 3" in line and "\n" not in line


def test_init_from_torchvision_weights_saved_with_torch_save(tmp_path: Path) -> None:
    import torchvision

    tv = torchvision.models.resnet18(weights=None, num_classes=3)
    state = tv.state_dict() | {"extra.weight": torch.ones(2)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "tv.pth")
    target = build_model("torchvision:resnet18", "folder", 0, num_classes=3)
    report = init_from(target, tmp_path / "tv.pth")
    assert torch.equal(target.backbone.net.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert torch.equal(target.head.fc.weight, tv.fc.weight)  # same classes: the classifier is taken
    assert report.unexpected == ["extra.weight"]
    assert set(report.missing) == {"head.uncertainty.weight", "head.uncertainty.bias"}
    other = build_model("torchvision:resnet18", "folder", 0, num_classes=5)
    assert "has 3 classes, this run 5" in init_from(other, tmp_path / "tv.pth").line("tv.pth")


def test_init_from_refuses_files_without_weights_or_with_code(tmp_path: Path) -> None:
    model = tiny_net()
    torch.save({"epoch": 3}, tmp_path / "none.pth")
    with pytest.raises(IdmlError) as info:
        init_from(model, tmp_path / "none.pth")
    one_line_message(info, "holds no state_dict")
    (tmp_path / "code.pth").write_bytes(pickle.dumps(Path("x")))
    with pytest.raises(IdmlError) as info:
        init_from(model, tmp_path / "code.pth")
    one_line_message(info, "code.pth")
    torch.save({"unrelated.weight": torch.ones(7, 7)}, tmp_path / "other.pth")
    with pytest.raises(IdmlError) as info:
        init_from(model, tmp_path / "other.pth")
    one_line_message(info, "none of its 1 tensors fits this model")


def test_init_from_in_a_run_prints_what_it_loaded(tmp_path: Path, capsys) -> None:
    data = tiny_cifar(tmp_path / "data")
    assert run_cli(train_args(data, tmp_path, "first", "--epochs", "1", "--no-verbose"), capsys)[0] == 0
    first = tmp_path / "first" / "checkpoint.pth.tar"
    code, out, err = run_cli(train_args(data, tmp_path, "second", "--epochs", "1", "--init_from", str(first)),
                             capsys)
    assert code == 0, err
    assert f"=> init_from {first}: loaded" in out
    assert code == 0 and "missing" not in out.split("init_from")[1].splitlines()[0]


@pytest.mark.parametrize(("flag", "value", "fragment"), [
    ("model_ema", 1.0, "--model_ema must be a number in [0, 1) (got 1.0)"),
    ("sched", "linear", "--sched must be one of step, cosine"),
    ("warmup_epochs", -1.0, "--warmup_epochs must be a number in [0, 100000] (got -1.0)"),
    ("warmup_epochs", 1e308, "--warmup_epochs must be a number in [0, 100000] (got 1e+308)"),
    ("grad_accum_steps", 0, "--grad_accum_steps must be an integer in [1, 1000000000] (got 0)"),
    ("label_smoothing", 1.0, "--label_smoothing must be a number in [0, 1) (got 1.0)"),
    ("clip_grad_norm", -1.0, "--clip_grad_norm must be 0 (off) or a number >= 1e-06 (got -1.0)"),
    ("init_from", " ", "--init_from must be the path of a weights file (got ' ')"),
])
def test_bad_recipe_values_are_one_line(flag: str, value, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(dataset="cifar10", epochs=2, **{flag: value})
    one_line_message(info, fragment)


@pytest.mark.parametrize("value", [5e-324, 1e-320, 1e-9, 1e-6, 1.0, 1e30])
def test_every_accepted_clip_grad_norm_keeps_the_gradients(value: float) -> None:
    """--clip_grad_norm scales the (float32) gradients by MAX / norm: a MAX the settings accept must
    not scale them to zero (1e-320 would, and the run would silently stop learning)."""
    if setting_problem("clip_grad_norm", value) is not None:
        return
    weight = nn.Parameter(torch.ones(3))
    weight.grad = torch.full((3,), 10.0)
    nn.utils.clip_grad_norm_([weight], value)
    assert (weight.grad > 0).all() and torch.isfinite(weight.grad).all(), value
