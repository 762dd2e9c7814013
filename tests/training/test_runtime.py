"""--amp auto picks bfloat16 only where the hardware runs it fast; ISM stays float32 under autocast."""

import pytest
import torch

from idml import build_model
from idml.errors import ConfigError
from idml.training import runtime
from idml.training.runtime import Runtime, resolve_amp

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Write a fake /proc/cpuinfo with the given flags and make the runtime read it."""
    def write(flags: str):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n", encoding="utf-8")
        monkeypatch.setattr(runtime, "CPUINFO", path)
        runtime.cpu_has_fast_bf16.cache_clear()
    yield write
    runtime.cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize(("flags", "expected"), [
    ("", None), ("avx512f avx512bw", None),
    ("avx512f avx512_bf16", torch.bfloat16), ("amx_tile amx_bf16", torch.bfloat16),
])
def test_auto_on_cpu_follows_the_cpu_flags(cpuinfo, flags, expected):
    cpuinfo(flags)
    assert resolve_amp("auto", CPU) is expected


def test_unreadable_cpuinfo_means_no_fast_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "missing")
    runtime.cpu_has_fast_bf16.cache_clear()
    try:
        assert resolve_amp("auto", CPU) is None
    finally:
        runtime.cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize(("bf16_ok", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_is_bf16_or_fp16(monkeypatch, bf16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert resolve_amp("auto", CUDA) is expected


def test_explicit_choices_and_the_scaler(cpuinfo):
    cpuinfo("")
    assert resolve_amp("off", CUDA) is None
    assert resolve_amp("bf16", CPU) is torch.bfloat16  # asked for explicitly: honoured even if slow
    assert resolve_amp("fp16", CUDA) is torch.float16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_amp("fp16", CPU)
    assert not Runtime(CPU, torch.bfloat16, False).grad_scaler().is_enabled()  # only fp16 scales


def test_ism_runs_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = build_model("resnet", "cifar10", depth=8, bottleneck=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.dtype == torch.bfloat16  # the backbone and fc did run in bfloat16
    assert out.train_logits.dtype == torch.float32
