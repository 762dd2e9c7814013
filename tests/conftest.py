import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fake_data


@pytest.fixture(scope="module")
def tiny_cifar_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs.tiny_cifar (160 training images), made once for the module whose runs all read it."""
    from runs import tiny_cifar

    return tiny_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    fake_data.make_cifar10(tmp_path)
    return tmp_path


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    fake_data.make_cifar100(tmp_path)
    return tmp_path


@pytest.fixture
def imagenet_dir(tmp_path: Path) -> Path:
    fake_data.make_imagenet(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """The tests' tensors are tiny: one thread is fastest, and several threads slow to a crawl when
    other processes share the cores (subprocesses get OMP_NUM_THREADS=1 for the same reason)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """CPU runs cache their timed memory format in the user's cache folder: the tests' go to a
    folder of their own (inherited by the runs they start as subprocesses), never to ~/.cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))


@pytest.fixture(autouse=True, scope="session")
def _untimed_memory_format() -> None:
    """No timing of the CPU memory format in the suite's runs (subprocesses inherit it): the rule
    decides, so that two runs of a test compared bit for bit train in the same format whatever a
    timing on shared cores would find, and no run pays for one. The tests of the timing turn it
    back on (tests/training/test_format_trial.py, the DDP and bench tests that exercise it)."""
    os.environ["IDML_MEMORY_FORMAT_TRIAL"] = "off"
