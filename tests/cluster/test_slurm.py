"""examples/slurm/cpu-gloo.sbatch on a real SLURM: a one-node cluster on this machine
(examples/slurm/local-cluster.sh: munged, slurmctld, slurmd). Each test submits that very script
(2 Gloo processes, the digits data), preempts the job with SLURM's warning signal at a chosen moment
(mid-epoch, during validation, during a checkpoint write, right after a requeue), lets it requeue
itself, and checks that it resumed from the checkpoint it wrote and ends with the weights of a job
that was never interrupted; a requeue after the last epoch must not train again.

Where SLURM cannot start (no root, slurm-wlm or munge not installed) these tests skip with one line
saying why; under CI=true they fail instead, since CI installs both (.ci/run).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runs import REPO, assert_same_weights, load, subprocess_env

SCRIPT = REPO / "examples" / "slurm" / "cpu-gloo.sbatch"
LOCAL_CLUSTER = REPO / "examples" / "slurm" / "local-cluster.sh"
PREEMPT_INSIDE = Path(__file__).resolve().parent / "preempt_inside.py"
#: a job's run: 2 epochs of ResNet-8 on digits, 23 steps of 2 x 32 images each, a checkpoint every 5 steps
SETTINGS = {"IDML_EPOCHS": "2", "IDML_DEPTH": "8", "IDML_SAVE_EVERY": "5"}
WAIT_S = 600  # a job that does not reach the awaited state by then fails the test (a loaded machine is slow)
STEP_LINE = re.compile(r"^Epoch: \[(\d+)/2\]\[(\d+)/\d+\]", re.M)
STOPPED = re.compile(r"idml train: stopped by signal 10; saved (\S+) \(resumes at epoch (\d+), step (\d+)\)")


def slurm_problem() -> str | None:
    """Why a local SLURM cannot run here, or None once it runs."""
    if os.geteuid() != 0:
        return "the SLURM tests start a local cluster, which needs root"
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed: apt-get install -y slurm-wlm munge"
    proc = subprocess.run(["bash", str(LOCAL_CLUSTER)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["local-cluster.sh failed"])[-1]
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = slurm_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the SLURM tests, but: {problem}")
    pytest.skip(f"no local SLURM: {problem}")


class Job:
    """A submitted job: its id, its output file, and its state as ``scontrol show job`` reports it."""

    def __init__(self, out: Path, name: str, **env: str) -> None:
        self.log = out / f"{name}.out"
        self.run_dir = out / name
        job_env = subprocess_env() | SETTINGS | env | {
            "IDML_PYTHON": sys.executable, "IDML_OUTPUT_DIR": str(out), "IDML_EXPNAME": name}
        proc = subprocess.run(["sbatch", "--parsable", f"--output={self.log}", str(SCRIPT)], cwd=REPO,
                              env=job_env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        self.id = proc.stdout.strip().split(";")[0]

    def state(self) -> dict[str, str]:
        """The job's fields; none while the controller is too busy to answer within a minute (a loaded
        machine), so that a wait asks again until its own deadline."""
        try:
            proc = subprocess.run(["scontrol", "show", "job", "-o", self.id], capture_output=True, text=True,
                                  timeout=60)
        except subprocess.TimeoutExpired:
            return {}
        return dict(item.split("=", 1) for item in proc.stdout.split() if "=" in item)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done():
            if time.monotonic() > deadline:
                pytest.fail(f"job {self.id}: not {what} after {WAIT_S} s ({self.state().get('JobState')}):\n"
                            f"{self.text()[-3000:]}")
            time.sleep(0.1)

    def wait_for_state(self, state: str, restarts: int = 0) -> None:
        def reached() -> bool:
            now = self.state()
            if now.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") and state != now["JobState"]:
                pytest.fail(f"job {self.id} ended {now['JobState']}:\n{self.text()[-3000:]}")
            return now.get("JobState") == state and int(now.get("Restarts", 0)) >= restarts
        self.wait(f"{state} after {restarts} requeue(s)", reached)

    def wait_for_step(self, epoch: int, step: int) -> None:
        self.wait(f"at step {step} of epoch {epoch}",
                  lambda: any((int(e), int(s)) >= (epoch, step) for e, s in STEP_LINE.findall(self.text())))

    def preempt(self) -> None:
        """What ``#SBATCH --signal=B:USR1@60`` does before the time limit: SIGUSR1 to the batch shell."""
        subprocess.run(["scancel", "--signal=USR1", "--batch", self.id], check=True, timeout=60)

    def start_now(self, restarts: int) -> None:
        """A requeued job waits for its begin time (about 2 minutes): start it now, or rather 2 s from now.

        slurmd revokes the credential of the job's previous start when it is requeued, with a time in
        whole seconds; a start within that second is refused ("Job credential revoked") and the job
        FAILS. SLURM's own delay avoids that; so must a test that shortens it."""
        self.wait_for_state("PENDING", restarts)
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"JobId={self.id}", "StartTime=now"], check=True, timeout=60)

    def preempt_mid_epoch(self) -> None:
        """Preempt at step 3 of epoch 0 (the stop comes a few steps later) and start the requeued job."""
        self.wait_for_step(0, 3)
        self.preempt()
        self.start_now(restarts=1)

    def checkpoint(self) -> dict:
        return load(self.run_dir / "checkpoint.pth.tar")


@pytest.fixture
def jobs(slurm, tmp_path: Path) -> Iterator[Callable[..., Job]]:
    """Submit jobs into this test's folder; whatever is still queued or running is cancelled after the test."""
    submitted: list[Job] = []

    def submit(name: str = "digits", **env: str) -> Job:
        submitted.append(Job(tmp_path, name, **env))
        return submitted[-1]

    yield submit
    for job in submitted:
        subprocess.run(["scancel", job.id], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def reference(slurm, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The final checkpoint of the same script's job, never interrupted."""
    job = Job(tmp_path_factory.mktemp("slurm-reference"), "digits")
    job.wait_for_state("COMPLETED")
    assert "idml: requeueing" not in job.text()
    return job.checkpoint()


def stop_position(job: Job, nth: int = 0) -> tuple[int, int]:
    """Where the ``nth`` stop of the job said its checkpoint resumes: (epoch, step)."""
    stops = STOPPED.findall(job.text())
    assert len(stops) > nth, job.text()[-3000:]
    path, epoch, step = stops[nth]
    assert Path(path) == job.run_dir / "checkpoint.pth.tar"
    return int(epoch), int(step)


def assert_resumed_from(job: Job, position: tuple[int, int]) -> None:
    """The log line that proves a requeued start continued the checkpoint the stop wrote."""
    line = f"=> resuming {job.run_dir / 'checkpoint.pth.tar'} at epoch {position[0]}, step {position[1]}"
    assert line in job.text(), job.text()[-3000:]


def results(run_dir: Path) -> dict[str, str]:
    """The hashes of what a run produced: checkpoints and metrics.csv (not config.yaml, rewritten by every
    start, nor the lock, which holds the last holder's pid)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name != "config.yaml"}


@pytest.mark.slow
def test_preempted_mid_epoch_requeues_resumes_and_a_requeue_after_the_end_trains_nothing(jobs, reference) -> None:
    job = jobs()
    job.preempt_mid_epoch()
    job.wait_for_state("COMPLETED", restarts=1)
    epoch, step = stop_position(job)
    assert epoch == 0 and 0 < step < 23, "not stopped mid-epoch"
    assert "idml: requeueing job" in job.text()
    assert_resumed_from(job, (epoch, step))
    assert_same_weights(job.checkpoint(), reference)

    finished = results(job.run_dir)
    assert {"checkpoint.pth.tar", "model_best.pth.tar", "metrics.csv"} <= finished.keys()
    subprocess.run(["scontrol", "requeue", job.id], check=True, timeout=60)  # after the last epoch
    job.start_now(restarts=2)
    job.wait_for_state("COMPLETED", restarts=2)
    assert "=> nothing to train: the checkpoint already finished 2 of --epochs 2" in job.text()
    assert results(job.run_dir) == finished
    assert job.text().count("Epoch: [1/2][22/") == 1  # the last epoch was trained once


@pytest.mark.slow
def test_a_second_preemption_right_after_the_requeue(jobs, reference) -> None:
    job = jobs()
    job.preempt_mid_epoch()
    job.wait("started again", lambda: "start 2 on" in job.text())
    job.preempt()  # at once: torchrun and the training processes are still starting
    job.start_now(restarts=2)
    job.wait_for_state("COMPLETED", restarts=2)
    assert job.text().count("idml: requeueing job") == 2
    assert_resumed_from(job, stop_position(job))
    assert_same_weights(job.checkpoint(), reference)


@pytest.mark.slow
@pytest.mark.parametrize("place", ["validation", "checkpoint"])
def test_a_preemption_during_validation_or_a_checkpoint_write(jobs, reference, place: str) -> None:
    """Rank 0 asks SLURM for the warning signal while it validates or writes a checkpoint, and waits
    there until the signal has reached it (tests/cluster/preempt_inside.py)."""
    job = jobs(IDML_ENTRY=str(PREEMPT_INSIDE), IDML_TEST_PREEMPT_IN=place)
    job.start_now(restarts=1)
    job.wait_for_state("COMPLETED", restarts=1)
    epoch, step = stop_position(job)
    if place == "validation":  # validation finished and the epoch's checkpoint was written
        assert (epoch, step) == (1, 0)
    else:  # the first step checkpoint (after step 5) was written whole, then the run stopped
        assert epoch == 0 and step >= 5
    assert_resumed_from(job, (epoch, step))
    assert_same_weights(job.checkpoint(), reference)
