"""Who may write a run folder: one live run at a time (a lock), and only the run it belongs to.

``<output_dir>/<expname>`` holds one run's checkpoints, metrics.csv and config.yaml. Two things
must never write into a folder that holds another run's files:

* a second ``idml train`` with the same ``--expname`` while the first still runs: rank 0 holds
  an exclusive ``flock`` on ``<run>/.lock`` for the run's whole life, and a second run is refused
  with one line. The kernel releases the lock when its process ends, however it ends (kill -9
  included), so a stale lock never blocks a later run;
* a run resumed from a checkpoint that lies outside the folder (``--resume other/run/x.pth.tar``):
  that is another run's continuation, so the folder's earlier run is moved aside, as a fresh run
  moves it, instead of being overwritten and mixed into its metrics.csv.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from idml.errors import IdmlError
from idml.files import open_for_lock

LOCK_NAME = ".lock"


def belongs_to(checkpoint: Path, run_dir: Path) -> bool:
    """Whether ``checkpoint`` is one of ``run_dir``'s own files (symbolic links resolved)."""
    try:
        return checkpoint.resolve().parent == run_dir.resolve()
    except OSError:  # a loop of links: not provably the same folder
        return False


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run_dir>/.lock``, holding the owner's pid."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        try:
            self.fd = open_for_lock(self.path)
        except OSError as exc:
            raise IdmlError(f"cannot write to {run_dir}: {exc.strerror or exc}; choose another --output_dir") from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = self._owner()
            os.close(self.fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise IdmlError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
            raise IdmlError(
                f"{run_dir} is in use by another idml train{owner}: wait for it to end, stop it, "
                "or choose another --expname"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def _owner(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            pid = int(os.pread(self.fd, 32, 0).decode("ascii").strip())
            return f" (pid {pid})"
        return ""

    def release(self) -> None:
        """Unlock (the file stays: removing it would let a third run lock a fresh inode meanwhile)."""
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1
