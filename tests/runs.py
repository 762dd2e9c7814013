"""Helpers for tests that run ``idml train`` on tiny data, in this process or as a subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import fake_data

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "train.py"
#: A tiny CIFAR-10 ResNet run: 160 training images in batches of 8 = 20 steps per epoch.
TINY = ["--dataset", "cifar10", "--net_type", "resnet", "--depth", "8", "--no-bottleneck",
        "--batch_size", "8", "--device", "cpu", "--amp", "off", "--workers", "0", "--lr", "0.05"]
STEPS_PER_EPOCH = 20


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Single-threaded like the subprocesses: on 2 shared cores extra threads only contend (a tiny
    run took 27 s with 2 threads against 1.7 s with 1), and bitwise comparisons need equal threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


def tiny_cifar(root: Path) -> Path:
    fake_data.make_cifar10(root, n_train=160, n_test=40)
    return root


def train_args(data: Path, out: Path, expname: str, *extra: str) -> list[str]:
    return [*TINY, "--data_dir", str(data), "--output_dir", str(out), "--expname", expname, *extra]


def uninterrupted_run(data: Path, out: Path, *extra: str) -> dict:
    """The final checkpoint of a tiny run trained start to end in this process (the reference that
    resumed runs must equal, bit for bit)."""
    from idml.commands.train import main as train_main

    with single_thread():
        assert train_main(train_args(data, out, "ref", *extra, "--no-verbose")) == 0
    return load(out / "ref" / "checkpoint.pth.tar")


def subprocess_env() -> dict[str, str]:
    """The test's environment, single-threaded (2 shared cores: threads only contend) and unbuffered."""
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_train(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TRAIN_PY), *args], env=subprocess_env(), text=True, **kwargs)


def run_train_process(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN_PY), *args], env=subprocess_env(), text=True,
                          capture_output=True, timeout=timeout)


def torchrun_command(args: list[str], *launcher_flags: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node=2 [launcher_flags] train.py ARGS`` with this Python."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *launcher_flags,
            str(TRAIN_PY), *args]


def torchrun_reference(data: Path, out: Path, *extra: str) -> dict:
    """The final checkpoint of a 2-process torchrun run trained start to end (the reference of the
    multi-process resume tests)."""
    proc = subprocess.run(torchrun_command(train_args(data, out, "ref", *extra, "--no-verbose")),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return load(out / "ref" / "checkpoint.pth.tar")


def load(path: Path) -> dict:
    """A checkpoint file as the plain dict torch.save wrote (not checked: tests tamper with it)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_state(state: dict, path: Path) -> Path:
    """Write a (possibly tampered) checkpoint dict as idml writes its files."""
    from idml.files import atomic_write

    return atomic_write(path, lambda fh: torch.save(state, fh))



def assert_same_weights(a: dict, b: dict) -> None:
    """Every tensor of the two checkpoints' state_dicts and optimiser states is bitwise equal."""
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key
    momentum_a = a["optimizer"]["state"]
    momentum_b = b["optimizer"]["state"]
    assert momentum_a.keys() == momentum_b.keys()
    for key in momentum_a:
        assert torch.equal(momentum_a[key]["momentum_buffer"], momentum_b[key]["momentum_buffer"]), key
    assert (a["epoch"], a["step"], a["best_err1"], a["best_err5"]) == (b["epoch"], b["step"], b["best_err1"],
                                                                     b["best_err5"])


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def run_idml(argv: list[str], capsys) -> tuple[int, str, str]:
    """``idml ARGV`` in this process: (exit code, stdout, stderr)."""
    from idml.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors exit through the parser
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``python train.py ARGS`` in this process: (exit code, stdout, stderr)."""
    return run_idml(["train", *args], capsys)


#: a verbose tiny run's per-step line: "Epoch: [epoch/2][step/20]"
PROGRESS = re.compile(r"^Epoch: \[(\d+)/2\]\[(\d+)/20\]")


def kill_after(proc: subprocess.Popen, epoch: int, step: int, delay: float) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after it printed step ``step`` of ``epoch``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        match = PROGRESS.match(line)
        if match and (int(match[1]), int(match[2])) >= (epoch, step):
            time.sleep(delay)
            proc.kill()
            break
    proc.communicate(timeout=120)


def sigkill_at_a_random_step_then_resume(args: list[str], run_dir: Path) -> None:
    """Run ``idml train ARGS`` (which must save every step, 2 epochs), SIGKILL it at a random step
    and moment, check where it stopped, then resume it to the end with ``--resume auto``.

    The kill's (epoch, step, delay) come from a seed that every failure message names; set
    ``IDML_KILL_SEED`` to that seed to replay the same kill.
    """
    import random
    import signal

    seed = int(os.environ.get("IDML_KILL_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    epoch, step, delay = rng.randint(0, 1), rng.randint(2, STEPS_PER_EPOCH - 4), rng.uniform(0, 0.05)
    replay = f"(killed at epoch {epoch}, step {step}, +{delay:.3f} s; replay with IDML_KILL_SEED={seed})"
    print(replay)  # pytest shows a failed test's output: later checks of the caller name the seed too

    proc = start_train(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    kill_after(proc, epoch, step, delay)
    assert proc.returncode == -signal.SIGKILL, replay
    killed_at = load(run_dir / "checkpoint.pth.tar")
    assert (killed_at["epoch"], killed_at["step"]) < (2, 0), f"killed too late to test a resume {replay}"
    resumed = run_train_process([*args, "--resume", "auto", "--no-verbose"])
    assert resumed.returncode == 0, f"{resumed.stderr} {replay}"
    assert f"at epoch {killed_at['epoch']}, step {killed_at['step']}" in resumed.stdout, replay



def signal_at(monkeypatch: pytest.MonkeyPatch, sig: int, epoch: int, step: int) -> None:
    """Deliver ``sig`` to this process while step ``step`` of ``epoch`` runs."""
    import idml.training.trainer

    original = idml.training.trainer.step_rng

    def step_rng(seed: int, e: int, s: int, rank: int):
        if (e, s) == (epoch, step):
            os.kill(os.getpid(), sig)
        return original(seed, e, s, rank)

    monkeypatch.setattr(idml.training.trainer, "step_rng", step_rng)


def learnable_cifar(root: Path, n_train: int = 160, n_test: int = 45) -> Path:
    """A tiny CIFAR-10 whose classes differ in brightness, so a model learns something in an epoch
    and its validation error says more than "always the same class" (``n_test`` odd: uneven shards)."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, size=n)
        noise = rng.integers(0, 60, size=(n, 3072))
        return {"data": (noise + labels[:, None] * 20).astype(np.uint8), "labels": labels.tolist()}

    for i in range(1, 6):
        fake_data.write_pickle(folder / f"data_batch_{i}", batch(n_train // 5), py2=False)
    fake_data.write_pickle(folder / "test_batch", batch(n_test), py2=False)
    fake_data.write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}, py2=False)
    return root


def fake_venv(folder: Path) -> None:
    """``.venv/bin/python`` and ``.venv/bin/idml`` of this checkout, as ``pip install -e .`` makes them."""
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, tail in (("python", ""), ("idml", " -m idml")):  # scripts: a symlink would leave the venv
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}"{tail} "$@"\n')
        script.chmod(0o755)
