import torch

from idml.config import parse_train_args
from idml.data.build import build_data
from idml.data.noise import symmetric_label_noise
from idml.data.types import DataRequest
from idml.errors import ConfigError


def test_exact_share_moves_to_another_class() -> None:
    labels = torch.arange(1000) % 10
    noisy = symmetric_label_noise(labels, 0.4, 10, seed=3)
    changed = noisy != labels
    assert changed.sum().item() == 400
    assert noisy.min() >= 0 and noisy.max() < 10
    # every wrong class is about equally likely: the shift is uniform over 1..9
    shifts = (noisy[changed] - labels[changed]).remainder(10)
    assert shifts.min() >= 1 and torch.bincount(shifts, minlength=10)[1:].min() > 20


def test_same_seed_same_noise_other_seed_other_noise() -> None:
    labels = torch.arange(500) % 10
    a = symmetric_label_noise(labels, 0.2, 10, seed=1)
    assert torch.equal(a, symmetric_label_noise(labels, 0.2, 10, seed=1))
    assert not torch.equal(a, symmetric_label_noise(labels, 0.2, 10, seed=2))


def test_only_training_labels_are_corrupted() -> None:
    clean = build_data(DataRequest("digits", "unused", 64), torch.device("cpu"))
    noisy = build_data(DataRequest("digits", "unused", 64, label_noise=0.2), torch.device("cpu"))
    assert torch.equal(noisy.test.labels, clean.test.labels)
    assert (noisy.train.labels != clean.train.labels).sum().item() == round(0.2 * 1437)


def test_flag_is_validated() -> None:
    for bad in (["--dataset", "digits", "--label_noise", "1"], ["--dataset", "imagenet", "--label_noise", "0.2"]):
        try:
            parse_train_args([*bad, "--net_type", "resnet", "--depth", "20"])
        except ConfigError as exc:
            assert "--label_noise" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
