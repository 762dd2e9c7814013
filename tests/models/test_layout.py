"""Whether a network trains in channels_last under bfloat16 on the CPU (idml.models.layout)."""

import pytest
import torch
from torch import nn

from idml.config import TrainConfig
from idml.models import layout
from idml.models.external import FeatureBackbone
from idml.models.layout import channels_last_under_bf16, is_slow_width, slow_batchnorm_share


def spec_of(**settings):
    return TrainConfig(**{"dataset": "cifar10", **settings}).model_spec


def test_slow_widths_are_narrow_and_not_multiples_of_16():
    assert [c for c in range(1, 70) if is_slow_width(c)] == [c for c in range(1, 32) if c % 16]


@pytest.mark.parametrize(("settings", "low", "high", "channels_last"), [
    # measured faster in NCHW under bfloat16 (benchmarks/RESULTS.md)
    ({"net_type": "pyramidnet", "depth": 110, "alpha": 48, "bottleneck": False}, 0.55, 0.65, False),
    ({"net_type": "pyramidnet", "depth": 56, "alpha": 24, "bottleneck": False}, 0.8, 0.9, False),
    # measured faster in channels_last, or as fast
    ({"net_type": "pyramidnet", "depth": 110, "alpha": 84, "bottleneck": False}, 0.2, 0.25, True),
    ({"net_type": "pyramidnet", "depth": 200, "alpha": 240}, 0.0, 0.02, True),  # the paper's CIFAR network
    ({"net_type": "resnet", "depth": 56, "bottleneck": False}, 0.0, 0.0, True),  # widths 16, 32, 64
    ({"net_type": "resnet", "dataset": "imagenet", "depth": 50}, 0.0, 0.0, True),
    # not measured: the rule applied
    ({"net_type": "pyramidnet", "dataset": "imagenet", "depth": 18, "alpha": 48}, 0.0, 0.0, True),
    ({"net_type": "resnet", "dataset": "digits", "depth": 20, "bottleneck": False}, 0.0, 0.0, True),
    ({"net_type": "resnet", "dataset": "folder", "input_size": 48, "depth": 20, "bottleneck": False}, 0.0, 0.0, True),
    ({"net_type": "torchvision:shufflenet_v2_x0_5", "dataset": "folder", "input_size": 64},
     0.55, 0.65, False),  # another library's network is traced too
])
def test_known_networks(settings, low, high, channels_last):
    spec = spec_of(**settings)
    assert low <= slow_batchnorm_share(spec) <= high
    assert channels_last_under_bf16(spec) is channels_last


def test_the_trace_runs_on_the_meta_device_only(monkeypatch):
    """Nothing is allocated or computed: a real convolution would fail here."""
    real = nn.Conv2d._conv_forward

    def meta_only(self, x, weight, bias):
        assert x.device.type == "meta", "a real convolution ran"
        return real(self, x, weight, bias)

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", meta_only)
    assert slow_batchnorm_share(spec_of(net_type="resnet", depth=20, bottleneck=False)) == 0.0


@pytest.mark.parametrize("error", [RuntimeError("Storage size calculation overflowed"), NotImplementedError("meta")])
def test_a_network_that_cannot_be_traced_gets_channels_last(monkeypatch, error):
    """Only a speed setting depends on the trace: it never stops a run (the real build reports problems)."""
    def failing(spec):
        raise error

    monkeypatch.setattr(layout, "build_backbone", failing)
    spec = spec_of(net_type="pyramidnet", depth=110, alpha=48, bottleneck=False)
    assert slow_batchnorm_share(spec) is None and channels_last_under_bf16(spec)


def test_a_network_without_batchnorm_has_no_slow_share(monkeypatch):
    plain = FeatureBackbone(nn.Sequential(nn.Conv2d(3, 17, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 17)
    monkeypatch.setattr(layout, "build_backbone", lambda spec: plain)
    assert slow_batchnorm_share(spec_of(net_type="resnet", depth=20, bottleneck=False)) == 0.0


def test_impossible_settings_reach_the_real_error(tmp_path, capsys):
    """A network too large even to trace: idml train still prints its one-line settings error."""
    from idml import cli

    code = cli.main(["train", "--dataset", "digits", "--net_type", "pyramidnet", "--depth", "110", "--alpha", "1e9",
                     "--no-bottleneck", "--amp", "bf16", "--device", "cpu", "--epochs", "1",
                     "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert torch.get_default_device().type == "cpu"  # the trace left no meta default behind
