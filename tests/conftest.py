import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import datasets


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    datasets.make_cifar10(tmp_path)
    return tmp_path


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    datasets.make_cifar100(tmp_path)
    return tmp_path


@pytest.fixture
def imagenet_dir(tmp_path: Path) -> Path:
    datasets.make_imagenet(tmp_path)
    return tmp_path
