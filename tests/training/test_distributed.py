"""DDP with torchrun on the CPU (Gloo): disjoint shards, validation over every sample exactly once,
a clean stop on SIGTERM that every rank agrees on, and an exact resume."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

import fake_data
from idml.data.augment import Normalize
from idml.data.cifar import load_cifar
from idml.data.loaders import InMemoryLoader, ResumableSampler
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec
from runs import (
    TRAIN_PY,
    assert_same_weights,
    learnable_cifar,
    load,
    one_thread,  # noqa: F401 - autouse fixture
    subprocess_env,
    train_args,
)

EPOCHS = ["--epochs", "2"]
VAL_LINE = re.compile(r"^\* Epoch: \[1/2\]\s+Top 1-err ([\d.]+)\s+Top 5-err ([\d.]+)\s+Test Loss ([\d.]+)", re.M)


def torchrun(args: list[str], **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(TRAIN_PY), *args]
    return subprocess.Popen(command, env=subprocess_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


# -- shards --------------------------------------------------------------------------------------
def test_training_shards_are_disjoint_and_validation_covers_each_sample_once() -> None:
    labels = torch.arange(45)
    images = torch.zeros(45, 3, 4, 4, dtype=torch.uint8)
    seen_train, seen_val = [], []
    for rank in range(2):
        train = InMemoryLoader(images, labels, 4, train=True, seed=3, rank=rank, world_size=2)
        train.set_epoch(5)
        seen_train.append(torch.cat([y for _, y in train]).tolist())
        val = InMemoryLoader(images, labels, 4, train=False, rank=rank, world_size=2)
        seen_val += torch.cat([y for _, y in val]).tolist()
    assert not set(seen_train[0]) & set(seen_train[1]) and len(seen_train[0]) == len(seen_train[1]) == 22
    assert sorted(seen_val) == list(range(45))


def test_resumable_sampler_skips_whole_batches_and_tags_the_epoch() -> None:
    inner = DistributedSampler(range(40), num_replicas=2, rank=1, shuffle=True, seed=7)
    sampler = ResumableSampler(inner, batch_size=4)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start_step=2)
    assert list(sampler) == full[8:] and len(sampler) == len(full) - 8
    assert {epoch for epoch, _ in full} == {3}


# -- torchrun ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """An uninterrupted 2-process, 2-epoch run: (data, run folder, stdout)."""
    root = tmp_path_factory.mktemp("ddp")
    data = learnable_cifar(root / "data")
    proc = torchrun(train_args(data, root / "runs", "ref", *EPOCHS, "--no-verbose"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return data, root / "runs" / "ref", out


def evaluate_alone(checkpoint: dict, data: Path) -> tuple[float, float, float]:
    """Top-1/top-5 error (%) and loss of the checkpoint's model over the whole validation set."""
    model = build_from_spec(ModelSpec(**checkpoint["model"]))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    images, labels = load_cifar("cifar10", data)["test"]
    with torch.no_grad():
        logits = model(Normalize(checkpoint["mean"], checkpoint["std"], torch.device("cpu"))(images)).logits
    top5 = logits.topk(5, dim=1).indices
    err1 = 100.0 * (1 - (top5[:, 0] == labels).double().mean().item())
    err5 = 100.0 * (1 - (top5 == labels[:, None]).any(dim=1).double().mean().item())
    return err1, err5, torch.nn.functional.cross_entropy(logits, labels).item()


@pytest.mark.slow
def test_two_process_validation_equals_a_single_process_evaluation(reference) -> None:
    data, run, out = reference
    assert out.count("Epoch: [1/2]") == 2, out  # only rank 0 prints: one training and one validation line
    printed = [float(x) for x in VAL_LINE.search(out).groups()]
    err1, err5, loss = evaluate_alone(load(run / "checkpoint.pth.tar"), data)
    assert printed[:2] == [round(err1, 3), round(err5, 3)]
    assert printed[2] == pytest.approx(loss, abs=2e-3)
    assert 0 < err1 < 90  # the model learnt something: the comparison is not trivially "all wrong"


@pytest.mark.slow
def test_sigterm_under_torchrun_then_resume_is_bit_exact(reference, tmp_path: Path) -> None:
    data, run, _ = reference
    args = train_args(data, tmp_path, "run", *EPOCHS)
    proc = torchrun(args)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Epoch: [0/2][3/10]"):
            proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
            break
    _, err = proc.communicate(timeout=300)
    assert "stopped by signal 15" in err and "--resume auto" in err, err
    stopped = load(tmp_path / "run" / "checkpoint.pth.tar")
    assert len(stopped["ranks"]) == 2 and (stopped["epoch"], stopped["step"]) < (2, 0)

    resumed = torchrun([*args, "--resume", "auto", "--no-verbose"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_same_weights(load(tmp_path / "run" / "checkpoint.pth.tar"), load(run / "checkpoint.pth.tar"))


@pytest.mark.slow
def test_an_error_on_one_rank_stops_every_rank_with_status_2(tmp_path: Path) -> None:
    """One corrupt training image lands in one rank's shard: both ranks exit 2, one line, no hang."""
    fake_data.make_imagenet(tmp_path)
    victim = next((tmp_path / "imagenet-1k" / "train" / "n01443537").iterdir())
    victim.write_bytes(victim.read_bytes()[:100])
    proc = torchrun(["--dataset", "imagenet", "--net_type", "resnet", "--depth", "18", "--batch_size", "6",
                     "--device", "cpu", "--amp", "off", "--workers", "0", "--epochs", "1",
                     "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "runs")])
    _, err = proc.communicate(timeout=300)
    ours = [line for line in err.splitlines() if line.startswith("idml train")]
    assert len(ours) == 1 and re.match(rf"idml train: error: rank [01]: cannot read image {victim}", ours[0]), err
    # torchrun's per-rank report: the rank that failed exits 2; the other exits 2 too, except that on
    # a heavily loaded machine torchrun's own SIGTERM can reach it before it has exited (-15).
    codes = re.findall(r"^\s+exitcode\s+: (-?\d+)", err, re.M)
    assert len(codes) == 2 and "2" in codes and set(codes) <= {"2", "-15"}, err
