"""--amp auto picks bfloat16 only where the hardware runs it fast (CPU flags, CUDA compute capability, mocked);
the MPS decisions (mocked); ISM stays float32 under autocast."""

import os

import pytest
import torch

from idml import build_model
from idml.device import runtime
from idml.device.runtime import Runtime, build_runtime, resolve_amp, resolve_device, sum_dtype, synchronize
from idml.errors import ConfigError

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


@pytest.fixture
def fake_gpus(monkeypatch):
    """Four mocked CUDA GPUs of the given compute capability; records what the runtime asks of them."""
    calls: list[tuple[str, object]] = []

    def install(capability: tuple[int, int]):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))

        def capability_of(device=None):
            calls.append(("capability", device))
            return capability
        monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)

        def emulation_counts(*args, **kwargs):
            raise AssertionError("is_bf16_supported counts emulation and allocates on the current GPU")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulation_counts)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
        return calls
    return install


@pytest.mark.parametrize(("capability", "expected"), [
    ((7, 5), torch.float16),  # T4: bf16 is only emulated
    ((7, 0), torch.float16),  # V100
    ((8, 0), torch.bfloat16),  # A100
    ((8, 6), torch.bfloat16),
    ((9, 0), torch.bfloat16),  # H100
])
def test_auto_on_cuda_follows_the_compute_capability(fake_gpus, capability, expected):
    fake_gpus(capability)
    assert resolve_amp("auto", torch.device("cuda", 1)) is expected


def test_each_rank_sets_its_gpu_before_asking_its_capability(fake_gpus, monkeypatch):
    calls = fake_gpus((7, 5))
    monkeypatch.setenv("LOCAL_RANK", "2")
    rt = build_runtime("auto", "auto", None)
    gpu2 = torch.device("cuda", 2)
    assert rt.device == gpu2 and rt.amp_dtype is torch.float16 and rt.channels_last
    assert calls == [("set_device", gpu2), ("capability", gpu2)]  # never GPU 0, never before set_device
    assert torch.backends.cudnn.benchmark and rt.fused_optimizer


def test_deterministic_turns_cudnn_autotuning_off(fake_gpus, monkeypatch):
    fake_gpus((9, 0))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        build_runtime("cuda", "auto", None, deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == runtime.CUBLAS_DETERMINISTIC
    finally:
        torch.use_deterministic_algorithms(False)


# -- Apple silicon (MPS), mocked --------------------------------------------------------------------
@pytest.fixture
def fake_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


def test_auto_picks_mps_and_fp16_there(fake_mps):
    mps = torch.device("mps")
    assert resolve_device("auto") == mps and resolve_device("mps") == mps
    assert resolve_amp("auto", mps) is torch.float16  # MPS's native half type
    assert resolve_amp("fp16", mps) is torch.float16  # allowed on MPS, not only on CUDA
    assert resolve_amp("bf16", mps) is torch.bfloat16 and resolve_amp("off", mps) is None
    rt = Runtime(mps, torch.float16, False)
    assert rt.grad_scaler().is_enabled() and not rt.fused_optimizer
    assert sum_dtype(mps) is torch.float32  # MPS has no float64
    assert sum_dtype(CPU) is torch.float64 and sum_dtype(CUDA) is torch.float64


def test_mps_asked_for_but_missing(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device mps was given but no Apple MPS device"):
        resolve_device("mps")


def test_synchronize_waits_on_the_right_device(monkeypatch):
    waited: list[str] = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(str(device)))
    for device in (torch.device("mps"), torch.device("cuda", 1), CPU):
        synchronize(device)
    assert waited == ["mps", "cuda:1"]


def test_explicit_choices_and_the_scaler(cpuinfo):
    cpuinfo("")
    assert resolve_amp("off", CUDA) is None
    assert resolve_amp("bf16", CPU) is torch.bfloat16  # asked for explicitly: honoured even if slow
    assert resolve_amp("fp16", CUDA) is torch.float16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_amp("fp16", CPU)
    assert not Runtime(CPU, torch.bfloat16, False).grad_scaler().is_enabled()  # only fp16 scales


# -- the default memory format ------------------------------------------------------------------------
def never_asked() -> bool:
    raise AssertionError("the network was traced although the memory format did not depend on it")


@pytest.mark.parametrize(("device", "dtype", "network", "expected"), [
    (CUDA, torch.bfloat16, never_asked, True),
    (CUDA, None, never_asked, True),
    (torch.device("mps"), torch.float16, never_asked, False),
    (CPU, None, never_asked, True),  # float32 on the CPU: channels_last on AVX2 and AVX-512 alike
    (CPU, torch.bfloat16, lambda: True, True),  # under bfloat16 the network decides
    (CPU, torch.bfloat16, lambda: False, False),
    (CPU, torch.bfloat16, None, True),  # no network given (e.g. only the precision was asked for)
])
def test_the_default_memory_format(device, dtype, network, expected):
    assert runtime.default_channels_last(device, dtype, network) is expected


@pytest.mark.parametrize("flags", ["", "avx512f avx512_bf16"])
def test_a_given_memory_format_is_kept_and_the_default_follows_the_network(cpuinfo, flags):
    cpuinfo(flags)
    for given in (True, False):
        assert build_runtime("cpu", "auto", given, network_prefers_channels_last=never_asked).channels_last is given
    bf16 = flags != ""
    assert build_runtime("cpu", "auto", None, network_prefers_channels_last=lambda: False).channels_last is not bf16
    assert build_runtime("cpu", "auto", None, network_prefers_channels_last=lambda: True).channels_last


def test_ism_runs_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = build_model("resnet", "cifar10", depth=8, bottleneck=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.dtype == torch.bfloat16  # the backbone and fc did run in bfloat16
    assert out.train_logits.dtype == torch.float32
