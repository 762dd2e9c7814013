"""The learning-rate schedule of a run, as a function of the epoch."""

from __future__ import annotations


def learning_rate(base_lr: float, dataset: str, epoch: int, epochs: int) -> float:
    """The official step schedules, for epoch ``epoch`` (counted from 0) of ``epochs``.

    CIFAR-style data: x0.1 from epoch E/2 and again from 3E/4. ImageNet: x0.1 every 75 epochs
    when E == 300, every 30 epochs otherwise.
    """
    if dataset == "imagenet":
        period = 75 if epochs == 300 else 30
        return base_lr * 0.1 ** (epoch // period)
    return base_lr * 0.1 ** (epoch >= epochs * 0.5) * 0.1 ** (epoch >= epochs * 0.75)
