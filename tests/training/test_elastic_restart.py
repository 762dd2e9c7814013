"""torchrun --max-restarts: after ``kill -9`` of one worker the restarted group joins (a store of its
own for each generation, see idml.training.rendezvous), resumes from the last step checkpoint and
ends with the weights of an uninterrupted run (Gloo on the CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from idml.training import rendezvous
from runs import (
    assert_same_weights,
    load,
    one_thread,  # noqa: F401 - autouse fixture
    subprocess_env,
    torchrun_command,
    torchrun_reference,
    train_args,
)

EPOCHS = ["--epochs", "2"]
TIMEOUT_S = 300  # a hang in the restarted group is reported as a failure after this long


@pytest.fixture(scope="module")
def reference(tiny_cifar_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted 2-process run (10 steps per epoch, 2 epochs): its final checkpoint."""
    return torchrun_reference(tiny_cifar_data, tmp_path_factory.mktemp("reference"), *EPOCHS)


def workers(agent_pid: int) -> dict[int, int]:
    """torchrun's workers, rank -> pid (from /proc: its children and their RANK)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        ranks = [int(item[5:]) for item in env if item.startswith(b"RANK=")]
        if parent == agent_pid and ranks:
            found[ranks[0]] = int(stat.parent.name)
    return found


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (which run in sessions of their own)."""
    for pid in workers(proc.pid).values():
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize(("victim", "resume"), [(1, ["--resume", "auto"]), (0, [])],
                         ids=["rank1-resume-auto", "rank0-no-resume-flag"])
def test_kill_9_of_a_worker_under_max_restarts_resumes_and_ends_identical(
    tiny_cifar_data, reference, tmp_path: Path, victim: int, resume: list[str]
) -> None:
    args = train_args(tiny_cifar_data, tmp_path, "run", *EPOCHS, "--no-verbose", "--save_every_steps", "3", *resume)
    proc = subprocess.Popen(torchrun_command(args, "--max-restarts=1"), env=subprocess_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    checkpoint = tmp_path / "run" / "checkpoint.pth.tar"
    deadline = time.monotonic() + TIMEOUT_S
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(workers(proc.pid)[victim], signal.SIGKILL)  # just after the first step checkpoint
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_job(proc)
        out, err = proc.communicate()
        pytest.fail(f"the restarted group hung for {TIMEOUT_S} s:\n{out[-2000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    assert "connectFullMesh" not in err
    assert f"=> resuming {checkpoint} at epoch 0, step" in out, out
    if not resume:
        assert "=> torchrun restarted this run (restart 1): it continues as with --resume auto" in out
    assert_same_weights(load(checkpoint), reference)


# -- the store of a generation ------------------------------------------------------------------
def test_a_rank_that_reads_the_dead_generations_port_waits_for_the_live_one(monkeypatch) -> None:
    """The agent's store still names the port of a store that is gone (the previous generation's rank 0):
    rank 1 is refused there, reads the key again and joins the store rank 0 publishes a moment later."""
    agent = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    dead = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    agent.set(rendezvous.PORT_KEY, f"{dead.port} token-of-the-dead-generation")
    del dead  # its process is gone: the port now refuses connections
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    timeout = timedelta(seconds=60)
    joined: dict[int, dist.Store] = {}

    def join(rank: int) -> None:
        joined[rank] = rendezvous.generation_store(rank, 2, timeout)

    rank1 = threading.Thread(target=join, args=(1,))
    rank1.start()
    time.sleep(3 * rendezvous.CONNECT_ATTEMPT_S)  # rank 1 tries the dead port first
    join(0)
    rank1.join(timeout=60)
    assert not rank1.is_alive()
    joined[0].set("written by rank 0", "of this generation")
    assert joined[1].get("written by rank 0") == b"of this generation"  # one store, the live one


def test_a_port_taken_by_another_store_is_not_joined(monkeypatch) -> None:
    """The dead store's port now belongs to some other store (another job's): its token differs."""
    other = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    other.set(rendezvous.TOKEN_KEY, "another job's token")
    assert rendezvous._client_if_live("127.0.0.1", other.port, "our token", 2) is None
    assert rendezvous._client_if_live("127.0.0.1", other.port, "another job's token", 2) is not None


def test_without_torchruns_agent_store_init_process_group_keeps_its_own_rendezvous(monkeypatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert rendezvous.generation_store(0, 2, timedelta(seconds=5)) is None
