"""What the ranks of a torchrun job must agree on, on the CPU with Gloo: validation shards one batch
apart end together (no hang), and ``--resume auto`` without a shared filesystem refuses to start
when the nodes would resume different points."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_distributed import evaluate_alone

from idml.data.loaders import InMemoryLoader
from idml.training.resume import resume_disagreement
from runs import (
    TRAIN_PY,
    learnable_cifar,
    load,
    one_thread,  # noqa: F401 - autouse fixture
    run_cli,
    subprocess_env,
    train_args,
)

TIMEOUT_S = 240  # a hang is reported as a failure after this long, not waited out


def run_torchrun(script: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 script args``; on a hang, kill the job's process group and fail."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script),
               *args]
    proc = subprocess.Popen(command, env=subprocess_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the 2-process run hung for {TIMEOUT_S} s:\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# -- 3: validation shards of unequal length -----------------------------------------------------
def test_the_validation_shards_of_this_test_differ_by_one_batch() -> None:
    """17 images over 2 ranks in batches of 8: rank 0 has 9 images (2 batches), rank 1 has 8 (1)."""
    images, labels = torch.zeros(17, 3, 4, 4, dtype=torch.uint8), torch.arange(17)
    steps = [len(InMemoryLoader(images, labels, 8, train=False, rank=r, world_size=2)) for r in (0, 1)]
    assert steps == [2, 1]


@pytest.mark.slow
def test_unequal_validation_shards_end_together_and_count_each_image_once(tmp_path: Path) -> None:
    data = learnable_cifar(tmp_path / "data", n_test=17)
    proc = run_torchrun(TRAIN_PY, train_args(data, tmp_path / "runs", "uneven", "--epochs", "1", "--no-verbose"))
    assert proc.returncode == 0, proc.stderr
    line = re.search(r"^\* Epoch: \[0/1\]\s+Top 1-err ([\d.]+)\s+Top 5-err ([\d.]+)\s+Test Loss ([\d.]+)",
                     proc.stdout, re.M)
    assert line, proc.stdout
    err1, err5, loss = evaluate_alone(load(tmp_path / "runs" / "uneven" / "checkpoint.pth.tar"), data)
    printed = [float(x) for x in line.groups()]
    assert printed[:2] == [round(err1, 3), round(err5, 3)]  # 17 images, each counted once
    assert printed[2] == pytest.approx(loss, abs=2e-3)


# -- 4: --resume auto without a shared filesystem -----------------------------------------------
def test_resume_disagreement_names_what_each_rank_would_do() -> None:
    same = ("runs/x/checkpoint.pth.tar", 3, 0)
    assert resume_disagreement([same, same]) is None
    assert resume_disagreement([(None, 0, 0)] * 3) is None
    message = resume_disagreement([same, (None, 0, 0), same])
    assert message is not None and "\n" not in message
    assert "ranks 0,2: runs/x/checkpoint.pth.tar at epoch 3, step 0; rank 1: no checkpoint" in message
    assert "epoch 2, step 5" in resume_disagreement([same, ("runs/x/checkpoint.pth.tar", 2, 5)])


def node_launcher(tmp_path: Path) -> Path:
    """A torchrun script that gives each rank its own working folder ``nodes/node<RANK>``: with a
    relative --output_dir, every rank sees the same checkpoint path but its own file, as separate
    machines without a shared filesystem do."""
    script = tmp_path / "per_node_train.py"
    script.write_text(textwrap.dedent(f"""
        import os, runpy, sys
        os.chdir(os.path.join({str(tmp_path / "nodes")!r}, "node" + os.environ["RANK"]))
        sys.argv = [{str(TRAIN_PY)!r}, *sys.argv[1:]]
        runpy.run_path({str(TRAIN_PY)!r}, run_name="__main__")
    """), encoding="utf-8")
    for rank in (0, 1):
        (tmp_path / "nodes" / f"node{rank}").mkdir(parents=True)
    return script


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, the checkpoint of a 1-epoch single-process run)."""
    root = tmp_path_factory.mktemp("resume-agreement")
    data = learnable_cifar(root / "data")
    code, _, err = run_cli(train_args(data, root / "runs", "run", "--epochs", "1", "--no-verbose"), _NoCapture())
    assert code == 0, err
    return data, root / "runs" / "run" / "checkpoint.pth.tar"


class _NoCapture:
    """``run_cli`` wants capsys (module-scoped fixtures cannot have it): output goes to the terminal."""

    def readouterr(self) -> tuple[str, str]:
        return "", ""


def place_checkpoint(tmp_path: Path, rank: int, checkpoint: Path, epoch: int | None = None) -> Path:
    target = tmp_path / "nodes" / f"node{rank}" / "runs" / "run" / "checkpoint.pth.tar"
    target.parent.mkdir(parents=True)
    if epoch is None:
        shutil.copy(checkpoint, target)
    else:
        torch.save(load(checkpoint) | {"epoch": epoch}, target)
    return target


def resume_args(data: Path, epochs: int = 3) -> list[str]:
    return train_args(data, Path("runs"), "run", "--epochs", str(epochs), "--no-verbose", "--resume", "auto")


@pytest.mark.slow
def test_resume_auto_refuses_when_only_rank_0_has_the_checkpoint(tmp_path: Path, one_epoch_checkpoint) -> None:
    data, checkpoint = one_epoch_checkpoint
    script = node_launcher(tmp_path)
    kept = place_checkpoint(tmp_path, 0, checkpoint)
    before = kept.read_bytes()
    proc = run_torchrun(script, resume_args(data))
    ours = [line for line in proc.stderr.splitlines() if line.startswith("idml train")]
    assert len(ours) == 1, proc.stderr
    assert re.fullmatch(r"idml train: error: the ranks do not agree where to resume: rank 0: "
                        r"runs/run/checkpoint\.pth\.tar at epoch 1, step 0; rank 1: no checkpoint .*", ours[0])
    assert proc.returncode != 0 and kept.read_bytes() == before  # nothing written or moved
    assert not (tmp_path / "nodes" / "node1" / "runs").exists()


@pytest.mark.slow
def test_resume_auto_refuses_different_epochs_and_accepts_the_same_checkpoint(
    tmp_path: Path, one_epoch_checkpoint
) -> None:
    data, checkpoint = one_epoch_checkpoint
    script = node_launcher(tmp_path)
    place_checkpoint(tmp_path, 0, checkpoint)
    stale = place_checkpoint(tmp_path, 1, checkpoint, epoch=0)
    proc = run_torchrun(script, resume_args(data))
    assert proc.returncode != 0
    assert "rank 0: runs/run/checkpoint.pth.tar at epoch 1, step 0; rank 1: runs/run/checkpoint.pth.tar at " \
           "epoch 0, step 0" in proc.stderr, proc.stderr

    shutil.copy(checkpoint, stale)  # now both nodes hold the same checkpoint: the run resumes
    proc = run_torchrun(script, resume_args(data, epochs=2))
    assert proc.returncode == 0, proc.stderr
    assert "=> resuming runs/run/checkpoint.pth.tar at epoch 1, step 0" in proc.stdout
    assert load(tmp_path / "nodes" / "node0" / "runs" / "run" / "checkpoint.pth.tar")["epoch"] == 2


# -- the memory format: nodes of different CPUs ----------------------------------------------------
@pytest.mark.slow
def test_ranks_that_would_choose_different_memory_formats_take_rank_0s(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``--amp auto`` reads each node's own CPU flags, and which memory format is faster depends on
    the CPU and the precision: here rank 0's timing finds NCHW faster, while rank 1 (float32, the
    rule for untimed runs: channels_last) would have chosen channels_last. DDP refuses parameters
    of different layouts, so every rank must take rank 0's choice, and only rank 0 times."""
    monkeypatch.delenv("IDML_MEMORY_FORMAT_TRIAL", raising=False)  # the suite's runs do not time; this one does
    data = learnable_cifar(tmp_path / "data")
    script = tmp_path / "mixed_cpus.py"
    script.write_text(textwrap.dedent(f"""
        import os, runpy, sys
        from idml.device import autotune, runtime
        bf16_node = os.environ["RANK"] == "0"
        runtime.cpu_has_fast_bf16 = lambda: bf16_node  # rank 0: an AVX-512 BF16 node; rank 1: AVX2 only
        real_timing = autotune.time_formats

        def nchw_wins(*args, **kwargs):
            assert bf16_node, "only rank 0 times the memory formats"
            timing = real_timing(*args, **kwargs)
            timing.channels_last = False
            return timing

        autotune.time_formats = nchw_wins
        sys.argv = [{str(TRAIN_PY)!r}, *sys.argv[1:]]
        runpy.run_path({str(TRAIN_PY)!r}, run_name="__main__")
    """), encoding="utf-8")
    args = train_args(data, tmp_path / "runs", "mixed", "--epochs", "1", "--no-verbose", "--amp", "auto",
                      "--net_type", "pyramidnet", "--depth", "20", "--alpha", "12", "--no-bottleneck")
    proc = run_torchrun(script, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "=> memory format: NCHW (timed over " in proc.stdout and "bfloat16 autocast, NCHW" in proc.stdout
    saved = load(tmp_path / "runs" / "mixed" / "checkpoint.pth.tar")["config"]
    assert saved["channels_last"] is False  # the format the run trained in is recorded
