"""Model construction: the official models' parameter counts, tiny training steps, bad depths."""

from __future__ import annotations

import pytest
import torch

import idml
from idml.errors import ConfigError


def count_parameters(*args, **kwargs) -> int:
    """Parameters of ``idml.build_model(...)``, built on the meta device (no memory, no init, no forward)."""
    with torch.device("meta"):
        model = idml.build_model(*args, **kwargs)
    return sum(p.numel() for p in model.parameters())


# (net_type, dataset, depth, alpha, bottleneck), without the uncertainty layer, with it (None = D*K+K more), D
OFFICIAL_PARAMETER_COUNTS = [
    (("pyramidnet", "cifar10", 200, 240, True), 26_752_702, 26_883_902, 1024),
    (("pyramidnet", "cifar100", 200, 240, True), 26_844_952, 26_976_152, 1024),
    (("pyramidnet", "cifar100", 272, 200, True), 26_288_692, 26_399_412, None),
    (("pyramidnet", "cifar10", 110, 48, False), 1_772_706, 1_781_026, None),
    (("resnet", "imagenet", 50, 300, True), 25_557_032, 26_606_120, 2048),
    (("resnet", "imagenet", 18, 300, True), 11_689_512, 11_952_168, None),
    (("resnet", "cifar10", 110, 300, True), 1_147_738, None, 256),
    (("resnet", "cifar10", 20, 300, False), 272_474, None, 64),
    (("pyramidnet", "imagenet", 200, 300, True), 62_368_168, None, 1456),
]
UNCERTAINTY_DIM = {"cifar10": 128, "cifar100": 128, "imagenet": 512}


def row_id(row) -> str:
    net, dataset, depth, alpha, bottleneck = row[0]
    return f"{net}{depth}-a{alpha:g}-{'bottleneck' if bottleneck else 'basic'}-{dataset}"


@pytest.mark.parametrize("row", OFFICIAL_PARAMETER_COUNTS, ids=row_id)
def test_parameter_counts_match_reference(row) -> None:
    (net, dataset, depth, alpha, bottleneck), without, with_ism, width = row
    settings = {"alpha": alpha, "bottleneck": bottleneck}
    assert count_parameters(net, dataset, depth, ism=False, **settings) == without
    k = UNCERTAINTY_DIM[dataset]
    if width is not None:
        with torch.device("meta"):
            assert idml.build_model(net, dataset, depth, **settings).backbone.num_features == width
    expected = with_ism if with_ism is not None else without + width * k + k
    assert count_parameters(net, dataset, depth, **settings) == expected


def test_uncertainty_dim_and_num_classes_are_honoured() -> None:
    base = count_parameters("resnet", "cifar10", 20, bottleneck=False, ism=False)
    assert count_parameters("resnet", "cifar10", 20, bottleneck=False, uncertainty_dim=7) == base + 64 * 7 + 7
    assert count_parameters("resnet", "cifar10", 20, bottleneck=False, ism=False, num_classes=12) == base + 2 * 65


TINY_MODELS = {
    "cifar-resnet-basic": (("resnet", "cifar10", 8), {"bottleneck": False}, 32, 10),
    "cifar-resnet-bottleneck": (("resnet", "cifar100", 11), {"bottleneck": True}, 32, 100),
    "cifar-pyramidnet-basic": (("pyramidnet", "cifar10", 8), {"alpha": 12, "bottleneck": False}, 32, 10),
    "cifar-pyramidnet-bottleneck": (("pyramidnet", "cifar10", 11), {"alpha": 12, "bottleneck": True}, 32, 10),
    "imagenet-resnet18": (("resnet", "imagenet", 18), {"num_classes": 7}, 64, 7),
    "imagenet-pyramidnet18": (("pyramidnet", "imagenet", 18), {"alpha": 16, "num_classes": 7}, 64, 7),
}


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_forward_backward(name: str) -> None:
    args, kwargs, size, classes = TINY_MODELS[name]
    torch.manual_seed(0)
    model = idml.build_model(*args, **kwargs)
    out = model(torch.randn(2, 3, size, size))
    assert out.logits.shape == out.train_logits.shape == (2, classes)
    assert out.uncertainty.shape[0] == 2
    loss = torch.nn.functional.cross_entropy(out.train_logits, torch.tensor([0, 1]))
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"


def test_conv_init_is_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    model = idml.build_model("resnet", "imagenet", 18, ism=False)
    conv = model.backbone.layer4[0].conv2  # 512 x 512 x 3 x 3
    expected = (2.0 / (3 * 3 * 512)) ** 0.5
    assert abs(conv.weight.std().item() / expected - 1) < 0.02
    assert torch.all(model.backbone.bn1.weight == 1) and torch.all(model.backbone.bn1.bias == 0)


@pytest.mark.parametrize(
    ("args", "kwargs", "valid"),
    [
        (("pyramidnet", "cifar10", 33), {"bottleneck": True}, ["11", "20", "29", "9n+2"]),
        (("pyramidnet", "cifar10", 33), {"bottleneck": False}, ["8", "14", "20", "6n+2"]),
        (("resnet", "cifar100", 21), {"bottleneck": False}, ["8", "14", "20", "6n+2"]),
        (("resnet", "cifar10", 2), {}, ["11", "20", "9n+2"]),
        (("resnet", "imagenet", 42), {}, ["18", "34", "50", "101", "152", "200"]),
        (("pyramidnet", "imagenet", 110), {}, ["18", "34", "50", "101", "152", "200"]),
    ],
)
def test_impossible_depth_lists_valid_ones(args, kwargs, valid) -> None:
    with pytest.raises(ConfigError) as info:
        idml.build_model(*args, **kwargs)
    message = str(info.value)
    assert str(args[2]) in message and "\n" not in message
    for depth in valid:
        assert depth in message


def test_unknown_net_type_and_dataset() -> None:
    with pytest.raises(ConfigError, match=r"net_type.*pyramidnet.*resnet"):
        idml.build_model("densenet", "cifar10", 20)
    with pytest.raises(ConfigError, match=r"dataset.*cifar10.*cifar100.*imagenet.*digits"):
        idml.build_model("resnet", "mnist", 20)


def test_names_are_case_insensitive_and_digits_is_cifar_sized() -> None:
    assert count_parameters("ResNet", "CIFAR10", 20, bottleneck=False) == count_parameters(
        "resnet", "digits", 20, bottleneck=False)
