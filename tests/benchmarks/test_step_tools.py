"""benchmarks/step_bounds.py and benchmarks/step_profile.py on a tiny PyramidNet, and their parsers."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = ["--depth", "8", "--alpha", "4", "--batch_size", "4", "--steps", "1", "--warmup", "1"]


def load(monkeypatch, name: str):
    """A benchmarks/ script as a module (its folder on sys.path, as when it is run as a script)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delenv("IDML_OFFICIAL_DIR", raising=False)
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # spawned workers import it by this name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_step_bounds_without_a_checkout_compares_with_default(monkeypatch, capsys):
    step_bounds = load(monkeypatch, "step_bounds")
    assert step_bounds.main([*TINY, "--json"]) == 0
    captured = capsys.readouterr()
    assert "no checkout of the official code" in captured.err and "against idml's default" in captured.err
    result = json.loads(captured.out)
    labels = [r["variant"] for r in result["results"]]
    assert labels == ["default", "bf16-channels_last", "default no-BN", "bf16-channels_last no-BN"]
    assert set(result["ratios"]) == {f"{label} / default" for label in labels[1:]}
    assert all(r > 0 for r in result["ratios"].values())
    bounds = [r for r in result["results"] if r["variant"].endswith("no-BN")]
    assert all("replaced by the identity" in r["settings"] for r in bounds)


def test_a_folder_without_the_official_code_is_an_error(monkeypatch, tmp_path, capsys):
    step_bounds = load(monkeypatch, "step_bounds")
    assert step_bounds.main([*TINY, "--official", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "holds no train.py and pyramidnet.py" in err


def test_the_bound_runner_makes_batchnorm_the_identity(monkeypatch):
    step_bounds = load(monkeypatch, "step_bounds")
    monkeypatch.setattr(torch.nn.BatchNorm2d, "forward", torch.nn.BatchNorm2d.forward)  # restored afterwards
    official = load(monkeypatch, "official_step")
    cfg = official.official_config(official.parse(TINY)[1])
    runner = step_bounds.without_batchnorm_runner(cfg, "default")
    runner.run_turn(0)  # the step runs
    bn = torch.nn.BatchNorm2d(3)
    x = torch.randn(2, 3, 4, 4)
    assert bn(x) is x and torch.equal(bn.running_mean, torch.zeros(3))


def test_onednn_verbose_lines_are_summed_per_kernel_kind(monkeypatch):
    step_profile = load(monkeypatch, "step_profile")
    lines = [
        "onednn_verbose,v1,info,cpu,isa:Intel AVX-512",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512,forward_training,src:bf16,,alg,mb4,1.5",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:bf16,,,2x3,0.25",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512,backward_data,src:bf16,,alg,mb4,2.5",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,jit:avx512,forward,src,,,,0.1",
        "a line oneDNN did not print",
    ]
    assert step_profile.onednn_times(lines, steps=2) == {"convolution": (1.0, 2.0), "reorder": (0.5, 0.125)}


@pytest.mark.slow
@pytest.mark.parametrize("onednn", [False, True])
def test_step_profile_prints_a_table(monkeypatch, capfd, onednn):
    step_profile = load(monkeypatch, "step_profile")
    flags = ["--net_type", "pyramidnet", "--dataset", "cifar10", "--depth", "8", "--alpha", "4",
             "--no-bottleneck", "--batch_size", "4", "--device", "cpu"]
    assert step_profile.main(["default", "--steps", "1", *(["--onednn"] if onednn else []), *flags]) == 0
    out = capfd.readouterr().out
    assert "# default: cpu" in out
    if onednn:
        assert "convolution" in out and "onednn_verbose" not in out  # summed, not echoed
    else:
        assert "all operators (self time)" in out and "aten::" in out


def test_checkpoint_cost_times_the_real_step_checkpoint(monkeypatch, tmp_path):
    checkpoint_cost = load(monkeypatch, "checkpoint_cost")
    flags = ["--net_type", "resnet", "--depth", "8", "--no-bottleneck", "--batch_size", "16"]
    result = checkpoint_cost.measure(flags, tmp_path, rounds=2)
    path = tmp_path / "ckpt" / "checkpoint.pth.tar"
    saved = torch.load(path, weights_only=True)
    assert (saved["epoch"], saved["step"]) == (0, 3)  # the position of the last step checkpoint timed
    assert saved["optimizer"]["state"]  # with the momentum buffers, as a real step checkpoint
    assert result["checkpoint_mb"] == round(path.stat().st_size / 2**20, 1)
    assert result["save_s_median"] > 0 and result["step_s_median"] > 0
