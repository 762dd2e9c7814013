"""Writing a run's checkpoints: ``checkpoint.pth.tar`` and ``model_best.pth.tar`` in its folder.

Rank 0 writes (every rank agrees on the outcome, so a failed write stops them all with one line);
diverged weights are never written; the best model goes first, so that a crash between the two
writes leaves a checkpoint that redoes the epoch, never one that records a best model the best
file does not hold. :class:`RunCheckpoints` remembers what it wrote, for the run's messages.
"""

from __future__ import annotations

from pathlib import Path

from idml.checkpoint.health import weights_problem
from idml.checkpoint.io import save_checkpoint
from idml.checkpoint.schema import BEST_NAME, CHECKPOINT_NAME, Checkpoint
from idml.device.runtime import Runtime
from idml.errors import NonFiniteLossError
from idml.training.distributed import run_agreed


class RunCheckpoints:
    """The checkpoints of one run folder: writes them, and says what was saved last."""

    def __init__(self, run_dir: Path, rt: Runtime) -> None:
        self.run_dir, self.rt = run_dir, rt
        #: what a stop or a failure message says was saved last
        self.last = "nothing was saved yet"
        #: the files this run wrote (to report only those)
        self.written: list[Path] = []

    def write(self, ckpt: Checkpoint, is_best: bool) -> None:
        """Write ``ckpt`` as the run's checkpoint (and its best model when ``is_best``); all ranks call it."""
        path = self.run_dir / CHECKPOINT_NAME

        def write() -> None:
            if not self.rt.is_main:
                return
            problem = weights_problem(ckpt.state_dict)
            if problem is not None:
                raise NonFiniteLossError(
                    f"the weights diverged ({problem}); stopped without saving them ({self.last}): "
                    "lower --lr (or try --amp off) and continue with --resume auto"
                )
            for target in ([self.run_dir / BEST_NAME] if is_best else []) + [path]:
                self.written.append(save_checkpoint(ckpt, target))

        run_agreed(write, self.rt)
        self.last = f"{path} (resumes at epoch {ckpt.epoch}, step {ckpt.step})"
