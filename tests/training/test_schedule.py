"""The two official step schedules (docs/training.md) at their boundary epochs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from idml.training.trainer import learning_rate

LR = 0.25


@pytest.mark.parametrize(
    ("epochs", "epoch", "factor"),
    [
        (300, 0, 1.0), (300, 149, 1.0), (300, 150, 0.1), (300, 224, 0.1), (300, 225, 0.01), (300, 299, 0.01),
        (1, 0, 1.0),  # E/2 = 0.5: epoch 0 is still before it
        (2, 0, 1.0), (2, 1, 0.1),  # 3E/4 = 1.5
        (4, 1, 1.0), (4, 2, 0.1), (4, 3, 0.01),
        (7, 3, 1.0), (7, 4, 0.1), (7, 5, 0.1), (7, 6, 0.01),  # E/2 = 3.5, 3E/4 = 5.25
        (90, 44, 1.0), (90, 45, 0.1), (90, 67, 0.1), (90, 68, 0.01),  # 3E/4 = 67.5
    ],
)
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "digits"])
def test_cifar_schedule(dataset: str, epochs: int, epoch: int, factor: float) -> None:
    assert learning_rate(LR, dataset, epoch, epochs) == pytest.approx(LR * factor, rel=1e-12)


@pytest.mark.parametrize(
    ("epochs", "epoch", "factor"),
    [
        (300, 0, 1.0), (300, 74, 1.0), (300, 75, 0.1), (300, 149, 0.1), (300, 150, 0.01),
        (300, 224, 0.01), (300, 225, 0.001), (300, 299, 0.001),
        (90, 0, 1.0), (90, 29, 1.0), (90, 30, 0.1), (90, 59, 0.1), (90, 60, 0.01), (90, 89, 0.01),
        (1, 0, 1.0),
        (301, 29, 1.0), (301, 30, 0.1), (301, 75, 0.01),  # only E == 300 uses the 75-epoch period
    ],
)
def test_imagenet_schedule(epochs: int, epoch: int, factor: float) -> None:
    assert learning_rate(LR, "imagenet", epoch, epochs) == pytest.approx(LR * factor, rel=1e-12)


def test_trainer_sets_the_schedule_on_the_optimizer(tmp_path) -> None:
    import torch

    from idml.config import TrainConfig
    from idml.device.runtime import Runtime
    from idml.training.trainer import Trainer

    cfg = TrainConfig(dataset="cifar10", epochs=4, lr=LR, output_dir=str(tmp_path))
    model = torch.nn.Linear(2, 2)
    classes = SimpleNamespace(class_names=[str(c) for c in range(10)])  # all the trainer reads of its data here
    trainer = Trainer(cfg, model, data=classes, runtime=Runtime(torch.device("cpu"), None, False))
    group = trainer.optimizer.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4
    for epoch, factor in enumerate((1.0, 1.0, 0.1, 0.01)):
        trainer.set_lr(epoch)
        assert group["lr"] == pytest.approx(LR * factor)
