"""The script torchrun runs for a test job (IDML_ENTRY): train.py, where rank 0 of the job's first
start asks SLURM to preempt the job (its warning signal, to the batch shell) when it first enters
validation or a checkpoint write (IDML_TEST_PREEMPT_IN), and stays there until the signal, forwarded
by the batch shell, srun and torchrun, has reached it: so the signal arrives inside that phase."""

from __future__ import annotations

import functools
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"


def preempt_and_wait() -> None:
    subprocess.run(["scancel", "--signal=USR1", "--batch", os.environ["SLURM_JOB_ID"]], check=True, timeout=60)
    control = getattr(signal.getsignal(signal.SIGUSR1), "__self__", None)  # idml's StopControl, when installed
    deadline = time.monotonic() + 60
    while control is not None and not control.signum and time.monotonic() < deadline:
        time.sleep(0.05)


def once_on_rank_0_of_the_first_start(function):
    done: list[bool] = []

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        first_start = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
        if not done and first_start and os.environ.get("RANK") == "0":
            done.append(True)
            preempt_and_wait()
        return function(*args, **kwargs)

    return wrapper


def main() -> None:
    import idml.training.checkpoints as checkpoints
    import idml.training.trainer as trainer

    place = os.environ["IDML_TEST_PREEMPT_IN"]
    if place == "validation":
        trainer.Trainer.validate = once_on_rank_0_of_the_first_start(trainer.Trainer.validate)
    elif place == "checkpoint":
        checkpoints.save_checkpoint = once_on_rank_0_of_the_first_start(checkpoints.save_checkpoint)
    else:
        raise SystemExit(f"IDML_TEST_PREEMPT_IN must be validation or checkpoint, not {place!r}")
    sys.argv = [str(TRAIN_PY), *sys.argv[1:]]
    runpy.run_path(str(TRAIN_PY), run_name="__main__")


if __name__ == "__main__":
    main()
