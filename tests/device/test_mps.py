"""What runs differently on Apple silicon (MPS), checked on the CPU with the device's limits mocked:
no float64 (the meter's sums), no torch.frexp (the ISM's scale), MPS's memory statistics."""

from __future__ import annotations

import pytest
import torch

import idml.training.trainer as trainer_module
from idml.device.memory import PeakMemory
from idml.ism import common_scale, introspective_logits
from idml.training.trainer import Meter


def frexp_scale(x: torch.Tensor) -> torch.Tensor:
    """The scale as torch.frexp gives it: 2**(e - 1) for x = m * 2**e, m in [0.5, 1)."""
    _, exponent = torch.frexp(x)
    return torch.ldexp(torch.ones_like(x), exponent - 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_power_of_two_scale_equals_frexps_exactly(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    info = torch.finfo(dtype)
    exponents = torch.randint(-120, 120, (3000,), generator=gen)
    values = torch.rand(3000, generator=gen, dtype=torch.float64) * 2.0 ** exponents
    powers = 2.0 ** torch.arange(-126, 127, dtype=torch.float64)
    edge = torch.cat([powers, powers * (1 - 2 ** -20), powers * (1 + 2 ** -20)])
    special = torch.tensor([info.tiny, info.max, 1.0, 1.5, 2.0 - info.eps], dtype=torch.float64)
    for x in torch.cat([values, edge, special]).to(dtype).clamp_min(info.tiny):
        got = common_scale(x.view(1))
        assert torch.equal(got, frexp_scale(x)), (x, got)
        assert 1 <= x / got < 2


def test_the_ism_runs_without_torch_frexp(monkeypatch) -> None:
    """MPS has no frexp kernel: the ISM must not need it, and still matches the frexp-based result."""
    gen = torch.Generator().manual_seed(1)
    s, f, p, u = (torch.randn(shape, generator=gen) * 1e3 for shape in ((4, 3), (4, 5), (3, 5), (4, 2)))
    expected = introspective_logits(s, f, p, u)

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("The operator 'aten::frexp.Tensor_out' is not implemented for MPS")
    monkeypatch.setattr(torch, "frexp", no_kernel)
    assert torch.equal(introspective_logits(s, f, p, u), expected)


def test_the_meter_sums_in_float32_where_float64_is_missing(monkeypatch) -> None:
    monkeypatch.setattr(trainer_module, "sum_dtype", lambda device: torch.float32)
    saved = torch.tensor([12.5, 7.0, 9.0, 10.0], dtype=torch.float64)  # a checkpoint's sums, from a GPU run
    meter = Meter(torch.device("cpu"), saved)
    assert meter.sums.dtype == torch.float32 and saved.dtype == torch.float64
    logits = torch.tensor([[3.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 1.0, 0.0, 0.0, 0.0]])
    meter.update(torch.tensor(0.5), logits, torch.tensor([0, 2]), step=4)
    assert meter.last.tolist() == [1.0, 1.0, 2.0, 2.0]  # loss * n, top-1 hits, top-5 hits, images
    assert meter.images == 12 and meter.average().loss == pytest.approx(13.5 / 12)
    assert meter.first_nonfinite_step(distributed=False) is None


def test_peak_memory_on_mps_uses_its_allocation_counter(monkeypatch) -> None:
    allocated = iter([1000, 5000])
    waited: list[bool] = []
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: next(allocated))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append(True))
    memory = PeakMemory(torch.device("mps"))
    memory.start()
    assert memory.stop() == 4000 and len(waited) == 2
    assert "MPS current_allocated_memory" in memory.source and "not a peak" in memory.source
